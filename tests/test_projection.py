"""Projections: PCA, DOSNES (and its Sinkhorn affinities), UMAP, joint image-text layouts
and the workspace's layout cache. Data is small and seeded; the one UMAP fit (numba's
~15 s first compile) is shared by a module fixture."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from mmviz.projection import (DEFAULT_MAX_FIT, DOSNES, PCA, UMAP, LazyEstimator, Layout, cached_layout,
                              calibrate_width, doubly_stochastic, dosnes_affinities, layout_path, project_pairs,
                              resolve_max_fit)
from mmviz.store import Workspace

# DOSNES on a few hundred points is many tiny ops: one thread avoids fighting for cores.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def clusters(n_per=75, k=4, d=32, spread=0.35, seed=0):
    """k well-separated unit-ish centres with Gaussian spread: (x, labels, centres)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), n_per)
    x = centres[labels] + spread * rng.normal(size=(len(labels), d)) / np.sqrt(d)
    return x.astype(np.float32), labels, centres


def gapped_pairs(n=100, captions=1, d=32, seed=0):
    """Images and `captions` texts per image, sharing a concept, offset apart (a modality gap)."""
    rng = np.random.default_rng(seed)
    concept = rng.normal(size=(n, d))
    gap = np.zeros(d)
    gap[0] = 5.0
    images = concept + gap + 0.3 * rng.normal(size=(n, d))
    texts = np.repeat(concept, captions, axis=0) - gap + 0.3 * rng.normal(size=(n * captions, d))
    unit = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(images), unit(texts)


def geodesic(a, b):
    return np.arccos(np.clip(a @ b.T, -1.0, 1.0))


# -- PCA -------------------------------------------------------------------------------


def test_pca_hand_checked_rectangle():
    # Corners of a 4 x 2 rectangle centred at (1, 2), its long side along u = (0.6, 0.8).
    u, v, mean = np.array([0.6, 0.8]), np.array([-0.8, 0.6]), np.array([1.0, 2.0])
    ab = np.array([[2, 1], [2, -1], [-2, 1], [-2, -1]], dtype=float)
    x = mean + ab[:, :1] * u + ab[:, 1:] * v
    pca = PCA(2).fit(x)
    np.testing.assert_allclose(pca.mean_, mean, atol=1e-12)
    # variances (n - 1 = 3): 4 * 2^2 / 3 and 4 * 1^2 / 3; signs: largest entry positive
    np.testing.assert_allclose(pca.explained_variance_, [16 / 3, 4 / 3], atol=1e-9)
    np.testing.assert_allclose(pca.components_, [u, -v], atol=1e-9)
    np.testing.assert_allclose(pca.transform(x), ab * [1, -1], atol=1e-6)
    np.testing.assert_allclose(pca.transform([[1.6, 2.8]]), [[1.0, 0.0]], atol=1e-6)  # mean + u


def test_pca_matches_sklearn_up_to_sign():
    from sklearn.decomposition import PCA as SkPCA

    rng = np.random.default_rng(1)
    x = (rng.normal(size=(200, 20)) * np.linspace(3, 0.1, 20)).astype(np.float32)
    ours, ref = PCA(3).fit(x), SkPCA(3).fit(x)
    signs = np.sign((ours.components_ * ref.components_).sum(1))
    np.testing.assert_allclose(ours.components_, ref.components_ * signs[:, None], atol=1e-5)
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-5)
    new = rng.normal(size=(7, 20))
    np.testing.assert_allclose(ours.transform(new), ref.transform(new) * signs, atol=1e-4)
    assert np.array_equal(PCA(3, seed=5).fit_transform(x), ours.transform(x))


# -- DOSNES affinities -----------------------------------------------------------------


def test_sinkhorn_makes_a_symmetric_matrix_doubly_stochastic():
    rng = np.random.default_rng(2)
    a = rng.random((60, 60)) ** 4  # skewed, so rows start far from equal sums
    k = torch.from_numpy(a + a.T)
    p, rounds, err = doubly_stochastic(k, tol=1e-9)
    assert err < 1e-9 and rounds < 1000
    np.testing.assert_allclose(p.sum(0).numpy(), 1.0, atol=1e-8)
    np.testing.assert_allclose(p.sum(1).numpy(), 1.0, atol=1e-8)
    np.testing.assert_allclose(p.numpy(), p.numpy().T, atol=1e-12)
    # a diagonal scaling of K: P / K is an outer product d d^T
    ratio = (p / k).numpy()
    np.testing.assert_allclose(ratio, np.outer(ratio[0], ratio[:, 0]) / ratio[0, 0], rtol=1e-8)


def test_dosnes_affinities_doubly_stochastic_with_zero_diagonal():
    x, _, _ = clusters(30, 3, seed=4)
    xt = torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True)).double()
    p, h, info = dosnes_affinities(xt, tol=1e-8)
    n = len(x)
    p = p.numpy()
    assert info["error"] < 1e-8 and h > 0
    assert np.all(np.diag(p) == 0) and np.all(p >= 0)
    np.testing.assert_allclose(p, p.T, atol=1e-15)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(p.sum(1) * n, 1.0, atol=1e-6)  # doubly stochastic, scaled by 1/n
    np.testing.assert_allclose(p.sum(0) * n, 1.0, atol=1e-6)
    # bandwidth multiplies the calibrated width; perplexity=None makes it absolute
    _, h2, _ = dosnes_affinities(xt, bandwidth=2.0)
    assert h2 == pytest.approx(2 * h)
    assert dosnes_affinities(xt, bandwidth=1.0, perplexity=None)[1] == 1.0


def test_calibrated_width_gives_the_asked_perplexity():
    x, _, _ = clusters(50, 4, seed=6)
    xt = torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True)).double()
    from mmviz.projection import _shifted_distances

    d2 = _shifted_distances(xt)
    for perplexity in (5.0, 30.0):
        h = calibrate_width(d2, perplexity)
        p = torch.softmax(-d2 / h, dim=1)
        entropy = float(torch.special.entr(p).sum(1).mean())
        assert np.exp(entropy) == pytest.approx(perplexity, rel=1e-3)


# -- DOSNES layout ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def four_clusters(one_torch_thread):
    x, labels, centres = clusters()
    steps = []
    est = DOSNES(seed=0, progress=lambda i, n: steps.append((i, n)))
    y = est.fit_transform(x)
    return x, labels, centres, est, y, steps


def test_dosnes_rows_are_unit_vectors(four_clusters):
    x, _, _, est, y, _ = four_clusters
    assert y.shape == (len(x), 3) and y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(y.astype(np.float64), axis=1), 1.0, atol=1e-6)
    assert np.isfinite(y).all()


def test_dosnes_keeps_neighbours_near(four_clusters):
    from sklearn.manifold import trustworthiness

    x, _, _, _, y, _ = four_clusters
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert trustworthiness(xn, y, n_neighbors=10) > 0.85


def test_dosnes_separates_two_clusters():
    x, labels, _ = clusters(100, 2, seed=3)
    y = DOSNES(seed=0).fit_transform(x)
    g = geodesic(y, y)
    same = labels[:, None] == labels[None, :]
    off_diag = ~np.eye(len(x), dtype=bool)
    within, between = g[same & off_diag].mean(), g[~same].mean()
    assert within * 5 < between, (within, between)


def test_dosnes_reports_progress_to_the_end(four_clusters):
    *_, est, _, steps = four_clusters
    assert steps and steps[-1] == (est.max_iter, est.max_iter)
    assert [s for s, _ in steps] == sorted(s for s, _ in steps)
    assert 250 < est.n_iter_ <= est.max_iter and np.isfinite(est.kl_divergence_)


def test_dosnes_deterministic_and_scale_free():
    x, _, _ = clusters(40, 3, seed=8)
    a = DOSNES(max_iter=300, seed=3).fit_transform(x)
    b = DOSNES(max_iter=300, seed=3).fit_transform(2.0 * x)  # x2 renormalises to the same bits
    assert np.array_equal(a, b)
    c = DOSNES(max_iter=300, seed=4, init="random").fit_transform(x)
    d = DOSNES(max_iter=300, seed=4, init="random").fit_transform(x)
    e = DOSNES(max_iter=300, seed=5, init="random").fit_transform(x)
    assert np.array_equal(c, d) and not np.allclose(c, e)


def test_dosnes_transform_of_fitted_points_lands_on_them(four_clusters):
    x, _, _, est, y, _ = four_clusters
    placed = est.transform(x)
    np.testing.assert_allclose(np.linalg.norm(placed, axis=1), 1.0, atol=1e-6)
    angle = np.arccos(np.clip((placed * y).sum(1), -1, 1))
    assert np.median(angle) < 0.02 and angle.max() < 0.1


def test_dosnes_transform_puts_new_points_in_their_cluster(four_clusters):
    x, labels, centres, est, y, _ = four_clusters
    rng = np.random.default_rng(11)
    new_labels = rng.integers(0, len(centres), 40)
    new = centres[new_labels] + 0.35 * rng.normal(size=(40, x.shape[1])) / np.sqrt(x.shape[1])
    placed = est.transform(new)
    means = np.stack([y[labels == c].mean(0) for c in range(len(centres))])
    assert np.array_equal((placed @ means.T).argmax(1), new_labels)


def test_dosnes_rejects_other_dimensions():
    with pytest.raises(ValueError):
        DOSNES(n_components=2)


# -- joint projection ------------------------------------------------------------------


def test_project_pairs_stacks_and_places_the_rest():
    images, texts = gapped_pairs(100, captions=2)  # 100 images, 200 captions
    layout = project_pairs(images, texts, "dosnes", params={"max_iter": 300}, seed=1, max_fit=180)
    assert isinstance(layout, Layout)
    assert layout.image_xy.shape == (100, 3) and layout.text_xy.shape == (200, 3)
    assert len(layout.fit_index) == 180 and np.all(np.diff(layout.fit_index) > 0) and layout.fit_index.max() < 300
    assert layout.method == "dosnes" and layout.seed == 1 and layout.params == {"max_iter": 300}
    stacked = np.vstack([layout.image_xy, layout.text_xy])
    est = layout.estimator
    assert np.array_equal(stacked[layout.fit_index], est.embedding_)  # fitted rows: the fit itself
    rest = np.setdiff1d(np.arange(300), layout.fit_index)
    x = np.vstack([images, texts])
    np.testing.assert_allclose(stacked[rest], est.transform(x[rest]), atol=1e-6)  # the rest: placed
    np.testing.assert_allclose(np.linalg.norm(stacked, axis=1), 1.0, atol=1e-6)
    # the modality gap survives: images and captions on opposite sides of the globe
    assert geodesic(layout.image_xy.mean(0, keepdims=True), layout.text_xy.mean(0, keepdims=True)) > 1.0
    # the same sample for the same seed
    assert np.array_equal(project_pairs(images, texts, "pca2", seed=1, max_fit=180).fit_index, layout.fit_index)


def test_project_pairs_pca_fits_images_and_texts_together():
    images, texts = gapped_pairs(50, captions=3)
    layout = project_pairs(images, texts, "pca2")
    assert len(layout.fit_index) == 200  # PCA has no fit limit by default
    joint = PCA(2).fit_transform(np.vstack([images, texts]))
    np.testing.assert_allclose(np.vstack([layout.image_xy, layout.text_xy]), joint, atol=1e-6)
    # the first component is the gap: images on one side, captions on the other
    side = np.sign(layout.image_xy[0, 0])
    assert np.all(np.sign(layout.image_xy[:, 0]) == side) and np.all(np.sign(layout.text_xy[:, 0]) == -side)
    assert project_pairs(images, texts, "pca3").image_xy.shape == (50, 3)


def test_max_fit_defaults_and_bad_method():
    assert DEFAULT_MAX_FIT == {"gap": None, "pca": None, "umap": 20000, "dosnes": 2000}
    assert resolve_max_fit("dosnes") == 2000 and resolve_max_fit("umap2") == 20000
    assert resolve_max_fit("pca3") is None and resolve_max_fit("dosnes", 50) == 50
    images, texts = gapped_pairs(5)
    with pytest.raises(ValueError, match="unknown projection"):
        project_pairs(images, texts, "tsne")
    with pytest.raises(ValueError):
        project_pairs(images, texts[:, :4], "pca2")


# -- layout cache ----------------------------------------------------------------------


def test_layout_cache_hit_miss_and_placing(tmp_path):
    ws = Workspace(tmp_path / "ws")
    images, texts = gapped_pairs(60, captions=2)
    parts = {"dataset": "abc", "model": "m1"}
    params = {"max_iter": 300}
    first, hit = cached_layout(ws, parts, images, texts, "dosnes", params, seed=0)
    assert not hit and first.key
    path = layout_path(ws, first.key)
    assert path.is_dir() and path.parent == ws.home / "layouts"
    # plain .npy arrays and a JSON note; the fitted rows are read back from the inputs
    assert {p.name for p in path.iterdir()} == {"image_xy.npy", "text_xy.npy", "fit_index.npy", "meta.json"}

    # A hit reads the stored layout; its speed goal (< 0.5 s) is checked in bench/projection.py.
    again, hit = cached_layout(ws, parts, images, texts, "dosnes", params, seed=0)
    assert hit and isinstance(again.image_xy, np.memmap) and isinstance(again.text_xy, np.memmap)
    assert np.array_equal(again.image_xy, first.image_xy) and np.array_equal(again.text_xy, first.text_xy)
    assert np.array_equal(again.fit_index, first.fit_index)
    new = images[:5] + 0.01
    np.testing.assert_allclose(again.estimator.transform(new), first.estimator.transform(new), atol=1e-6)

    # anything in the key changes: a miss
    assert not cached_layout(ws, parts, images, texts, "dosnes", params, seed=1)[1]
    assert not cached_layout(ws, parts, images, texts, "dosnes", {"max_iter": 250}, seed=0)[1]
    assert not cached_layout(ws, {**parts, "model": "m2"}, images, texts, "dosnes", params, seed=0)[1]
    assert not cached_layout(ws, parts, images, texts[::-1], "dosnes", params, seed=0)[1]
    assert sorted(p.name[:1] != "." for p in (ws.home / "layouts").iterdir()) == [True] * 5  # no temporary left


def test_layout_cache_pca_and_a_damaged_file(tmp_path):
    ws = Workspace(tmp_path / "ws")
    images, texts = gapped_pairs(40)
    first, hit = cached_layout(ws, {"d": 1}, images, texts, "pca3")
    assert not hit
    again, hit = cached_layout(ws, {"d": 1}, images, texts, "pca3")
    assert hit and np.array_equal(again.text_xy, first.text_xy)
    np.testing.assert_allclose(again.estimator.transform(texts[:3]), first.text_xy[:3], atol=1e-6)
    (layout_path(ws, first.key) / "text_xy.npy").write_bytes(b"not a npy file")
    redone, hit = cached_layout(ws, {"d": 1}, images, texts, "pca3")
    assert not hit and np.array_equal(redone.text_xy, first.text_xy)
    assert cached_layout(ws, {"d": 1}, images, texts, "pca3")[1]  # rewritten whole


# -- UMAP (one fit for the whole file: numba compiles on first use) --------------------


@pytest.fixture(scope="module")
def umap_layouts(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("umap-ws"))
    images, texts = gapped_pairs(150)
    args = (ws, {"dataset": "u"}, images, texts, "umap3", {"n_neighbors": 10}, 0)
    first, hit1 = cached_layout(*args, max_fit=200)  # fits 200 of 300, places 100 with umap's transform
    again, hit2 = cached_layout(*args, max_fit=200)
    return images, texts, first, hit1, again, hit2


def test_umap_layout_fits_places_and_caches(umap_layouts):
    images, texts, first, hit1, again, hit2 = umap_layouts
    assert not hit1 and hit2
    assert first.image_xy.shape == (150, 3) and first.text_xy.shape == (150, 3)
    assert isinstance(first.estimator, UMAP) and len(first.fit_index) == 200
    assert np.isfinite(first.image_xy).all() and np.isfinite(first.text_xy).all()
    assert np.array_equal(again.image_xy, first.image_xy) and np.array_equal(again.text_xy, first.text_xy)
    # the gap: image and caption clouds apart relative to their own size
    spread = np.vstack([first.image_xy, first.text_xy]).std(0).mean()
    assert np.linalg.norm(first.image_xy.mean(0) - first.text_xy.mean(0)) > spread


def test_umap_cache_hit_refits_lazily_and_deterministically(umap_layouts):
    images, texts, first, _, again, _ = umap_layouts
    lazy = again.estimator
    assert isinstance(lazy, LazyEstimator) and not lazy.fitted  # the hit did not refit
    placed = lazy.transform(images[:5])  # the second (and last) UMAP fit of this file
    assert lazy.fitted
    # same rows, parameters and seed: the refit reproduces the cached layout exactly
    stacked = np.vstack([first.image_xy, first.text_xy])
    assert np.array_equal(lazy.estimator.embedding_, stacked[first.fit_index])
    np.testing.assert_allclose(placed, first.estimator.transform(images[:5]), atol=1e-5)


def test_gap_axis_view_puts_the_gap_on_x(tmp_path):
    """GapPCA: x is the unit gap direction, so the modality means differ on x by exactly the
    gap length; y is orthogonal to it; the layout survives the cache with its state."""
    from mmviz.geometry import gap_length
    from mmviz.projection import GapPCA

    rng = np.random.default_rng(4)
    base = rng.normal(size=(200, 32))
    shift = np.zeros(32)
    shift[5] = 1.5  # a constant offset in a direction the data barely varies in
    images = base + shift
    texts = base + 0.1 * rng.normal(size=(200, 32))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    layout = project_pairs(images, texts, "gap2")
    est = layout.estimator
    assert isinstance(est, GapPCA)
    assert np.allclose(est.components_ @ est.components_.T, np.eye(2), atol=1e-9)
    dx = layout.image_xy[:, 0].mean() - layout.text_xy[:, 0].mean()
    assert dx == pytest.approx(gap_length(images, texts), rel=1e-4)
    assert abs(layout.image_xy[:, 1].mean() - layout.text_xy[:, 1].mean()) < 0.1 * dx
    ws = Workspace(tmp_path / "ws")
    first, hit1 = cached_layout(ws, {"d": 1}, images, texts, "gap2")
    again, hit2 = cached_layout(ws, {"d": 1}, images, texts, "gap2")
    assert (hit1, hit2) == (False, True)
    assert np.allclose(again.estimator.transform(texts[:5]), first.text_xy[:5], atol=1e-6)
    with pytest.raises(ValueError, match="both modalities"):
        GapPCA().fit(images)
