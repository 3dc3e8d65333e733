"""Projections at scale: kNN placement, chunked reading of float16 memmaps without full copies,
the memory-mapped layout cache, the 3-D draw sample, progress stages, the UMAP backend
choice and DOSNES's thread count. Small seeded data; no UMAP fit (numba) in this file."""
from __future__ import annotations

import hashlib
import json
import sys
import tracemalloc
import types
from pathlib import Path

import numpy as np
import pytest

from mmviz import projection
from mmviz.projection import (DOSNES, KnnPlacement, Rows, array_digest, cached_layout, knn_positions, layout_path,
                              project_pairs, sample_for_3d)
from mmviz.store import Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def unit(a):
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def clustered(n_images=400, n_texts=600, d=24, k=5, seed=0):
    """Unit image and caption rows around k shared centres, captions shifted (a gap)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    gap = np.zeros(d)
    gap[0] = 2.0
    images = centres[rng.integers(0, k, n_images)] + 0.4 * rng.normal(size=(n_images, d))
    texts = centres[rng.integers(0, k, n_texts)] + 0.4 * rng.normal(size=(n_texts, d)) + gap
    return unit(images), unit(texts)


# -- kNN placement ---------------------------------------------------------------------


def test_knn_placement_hand_computed():
    keys = np.eye(3, dtype=np.float32)  # three fitted rows, orthogonal
    positions = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]], dtype=np.float32)
    place = KnnPlacement(n_neighbors=2, temperature=0.1).fit(keys, positions)
    # a fitted row lands exactly on its own position
    np.testing.assert_array_equal(place.transform(keys), positions)
    # halfway between rows 0 and 1 (cosine 0.7071 to both, 0 to row 2): the midpoint
    np.testing.assert_allclose(place.transform([[1.0, 1.0, 0.0]]), [[1.0, 0.0]], atol=1e-6)
    # 30 degrees from row 0 towards row 1: cosines 0.8660 and 0.5; weights 1 and
    # exp((0.5 - 0.8660) / 0.1) = 0.02573, so x = 2 * 0.02573 / 1.02573 = 0.05017
    a = np.deg2rad(30)
    np.testing.assert_allclose(place.transform([[np.cos(a), np.sin(a), 0.0]]), [[0.05017, 0.0]], atol=1e-5)
    # scale does not matter (cosine), and k is clipped to the fitted rows
    np.testing.assert_allclose(KnnPlacement(10, 0.1).fit(keys, positions).transform([[5.0, 5.0, 5.0]]),
                               [[2 / 3, 4 / 3]], atol=1e-5)


def test_knn_placement_on_the_sphere_renormalises():
    keys = np.eye(3, dtype=np.float32)
    on_sphere = np.eye(3, dtype=np.float32)
    place = KnnPlacement(2, 0.1, sphere=True).fit(keys, on_sphere)
    np.testing.assert_allclose(place.transform([[1.0, 1.0, 0.0]]), [[0.70710677, 0.70710677, 0.0]], atol=1e-6)
    # two neighbours on opposite poles cancel out: the nearest one's position instead
    scores = np.array([[0.8, 0.8 - 1e-9]], dtype=np.float32)
    poles = np.array([[0, 0, 1.0], [0, 0, -1.0]], dtype=np.float32)
    np.testing.assert_allclose(knn_positions(scores, np.array([[0, 1]]), poles, 0.1, sphere=True), [[0, 0, 1.0]])


def test_chunked_placement_equals_unchunked():
    images, texts = clustered()
    positions = np.random.default_rng(1).normal(size=(len(images), 2)).astype(np.float32)
    whole = KnnPlacement(10, chunk=10 ** 6).fit(images, positions).transform(texts)
    steps = []
    chunked = KnnPlacement(10, chunk=7).fit(images, positions).transform(texts, progress=lambda d, t: steps.append(d))
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    assert steps[-1] == len(texts) and steps == sorted(steps) and len(steps) == -(-len(texts) // 7)


def test_project_pairs_same_in_chunks_and_fitted_rows_keep_their_fit():
    images, texts = clustered(150, 250)
    params = {"max_iter": 300}
    a = project_pairs(images, texts, "dosnes", params, seed=2, max_fit=200)
    b = project_pairs(images, texts, "dosnes", params, seed=2, max_fit=200, chunk=33)
    assert np.array_equal(a.fit_index, b.fit_index)
    np.testing.assert_allclose(b.image_xy, a.image_xy, atol=1e-6)
    np.testing.assert_allclose(b.text_xy, a.text_xy, atol=1e-6)
    stacked = np.vstack([a.image_xy, a.text_xy])
    assert np.array_equal(stacked[a.fit_index], a.estimator.embedding_)
    # the placed rows: on the sphere, each next to its nearest fitted row
    rest = np.setdiff1d(np.arange(400), a.fit_index)
    x = np.vstack([images, texts])
    nearest = a.fit_index[np.argmax(x[rest] @ x[a.fit_index].T, axis=1)]
    np.testing.assert_allclose(np.linalg.norm(stacked[rest], axis=1), 1.0, atol=1e-6)
    assert np.median((stacked[rest] * stacked[nearest]).sum(1)) > 0.95


# -- float16 memmaps, no full copies ---------------------------------------------------


@pytest.fixture
def memmapped(tmp_path):
    """Images (40,000 x 128) and texts (60,000 x 128) as float16 .npy files, memory-mapped:
    25.6 MB on disk, 51.2 MB as float32."""
    rng = np.random.default_rng(3)
    out = []
    for name, n, shift in (("images", 40000, 1.5), ("texts", 60000, -1.5)):
        a = np.lib.format.open_memmap(tmp_path / f"{name}.npy", mode="w+", dtype=np.float16, shape=(n, 128))
        for s in range(0, n, 10000):
            block = rng.normal(size=(min(10000, n - s), 128))
            block[:, 0] += shift
            a[s:s + len(block)] = unit(block)
        a.flush()
        del a
        out.append(np.load(tmp_path / f"{name}.npy", mmap_mode="r"))
    return out


def test_float16_memmap_is_read_in_chunks_never_whole(memmapped, monkeypatch):
    images, texts = memmapped
    input_f32 = (images.size + texts.size) * 4
    biggest = []
    real_concatenate, real_vstack = np.concatenate, np.vstack

    def watch(real):
        def wrapped(arrays, *args, **kwargs):
            biggest.append(sum(np.asarray(a).nbytes for a in arrays))
            return real(arrays, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(np, "concatenate", watch(real_concatenate))
    monkeypatch.setattr(np, "vstack", watch(real_vstack))
    results = {}
    for method, params, max_fit in (("pca2", None, "auto"), ("gap2", None, "auto"),
                                    ("dosnes", {"max_iter": 250}, 300)):
        tracemalloc.start()
        layout = project_pairs(images, texts, method, params, seed=0, max_fit=max_fit, chunk=2048)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # outputs (100,000 x 2-3 float32, the fit index) and a few chunks: far below the input
        assert peak < input_f32 / 4, (method, peak, input_f32)
        results[method] = layout
    assert max(biggest, default=0) < input_f32 / 20  # no concatenation of anything near the inputs
    monkeypatch.undo()
    # the same numbers as from float32 arrays in memory
    im32, tx32 = np.asarray(images, np.float32), np.asarray(texts, np.float32)
    for method in ("pca2", "gap2"):
        ref = project_pairs(im32, tx32, method)
        np.testing.assert_allclose(results[method].image_xy, ref.image_xy, atol=1e-5)
        np.testing.assert_allclose(results[method].text_xy, ref.text_xy, atol=1e-5)
    gap = results["gap2"]  # the gap on x: the centroids differ there by the gap's length
    dx = gap.image_xy[:, 0].mean(dtype=np.float64) - gap.text_xy[:, 0].mean(dtype=np.float64)
    assert dx == pytest.approx(np.linalg.norm(im32.mean(0, dtype=np.float64) - tx32.mean(0, dtype=np.float64)),
                               rel=1e-4)


def test_rows_gathers_sorted_indices_across_parts():
    a = np.arange(12, dtype=np.float16).reshape(4, 3)
    b = 100 + np.arange(9, dtype=np.float64).reshape(3, 3)
    rows = Rows(a, b)
    assert len(rows) == 7 and rows.shape == (7, 3) and rows.dtype == np.float64
    np.testing.assert_array_equal(rows.take([1, 3, 4, 6]), np.vstack([a, b])[[1, 3, 4, 6]])
    np.testing.assert_array_equal(rows.part_of([0, 3, 4, 6]), [0, 0, 1, 1])
    assert [(s, len(c)) for s, c in rows.chunks(3)] == [(0, 3), (3, 1), (4, 3)]  # never across parts
    assert Rows(a).take([0, 2]).dtype == np.float32
    with pytest.raises(ValueError, match="sorted"):
        rows.take([3, 1])
    with pytest.raises(ValueError, match="width"):
        Rows(a, np.zeros((2, 4)))


def test_array_digest_is_the_float32_digest_read_in_chunks(memmapped):
    images, _ = memmapped
    part = images[:3000]
    expected = hashlib.sha256(repr(part.shape).encode() + np.ascontiguousarray(part, np.float32).tobytes())
    assert array_digest(part, chunk=700) == expected.hexdigest() == array_digest(np.asarray(part, np.float64))


# -- the layout cache ------------------------------------------------------------------


def test_cache_round_trip_is_memory_mapped_and_damage_is_a_miss(tmp_path, memmapped):
    ws = Workspace(tmp_path / "ws")
    images, texts = memmapped[0][:3000], memmapped[1][:4000]
    args = (ws, {"dataset": "h", "model": "m"}, images, texts, "dosnes", {"max_iter": 250}, 0)
    first, hit = cached_layout(*args, max_fit=300, identifies_data=True)
    assert not hit
    again, hit = cached_layout(*args, max_fit=300, identifies_data=True)
    assert hit and isinstance(again.image_xy, np.memmap) and not again.image_xy.flags.writeable
    for name in ("image_xy", "text_xy", "fit_index"):
        assert np.array_equal(getattr(again, name), getattr(first, name))
    new = unit(np.random.default_rng(0).normal(size=(5, 128)))
    assert not again.estimator.fitted  # rebuilt only when asked to place
    np.testing.assert_allclose(again.estimator.transform(new), first.estimator.transform(new), atol=1e-6)

    folder = layout_path(ws, first.key)
    damage = [
        lambda: (folder / "text_xy.npy").write_bytes((folder / "text_xy.npy").read_bytes()[:-12]),  # truncated
        lambda: (folder / "image_xy.npy").unlink(),
        lambda: (folder / "meta.json").write_text("{"),
        lambda: (folder / "fit_index.npy").write_bytes(b"\x93NUMPY garbage"),
    ]
    for spoil in damage:
        spoil()
        redone, hit = cached_layout(*args, max_fit=300, identifies_data=True)
        assert not hit and np.array_equal(redone.text_xy, first.text_xy)
        assert cached_layout(*args, max_fit=300, identifies_data=True)[1]  # rewritten whole
    # a half-written layout (a temporary folder that was never renamed) is not a layout
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_identifies_data_skips_hashing_the_vectors(tmp_path, monkeypatch):
    from mmviz.projection import cache

    ws = Workspace(tmp_path / "ws")
    images, texts = clustered(40, 60)
    with_digest, _ = cached_layout(ws, {"d": 1}, images, texts, "pca2")
    monkeypatch.setattr(cache, "array_digest", lambda *a, **k: pytest.fail("hashed the vectors"))
    named, hit = cached_layout(ws, {"d": 1}, images, texts, "pca2", identifies_data=True)
    assert not hit and named.key != with_digest.key
    assert cached_layout(ws, {"d": 1}, images, texts, "pca2", identifies_data=True)[1]
    # the shapes still count: other sizes under the same name are another layout
    assert not cached_layout(ws, {"d": 1}, images[:30], texts, "pca2", identifies_data=True)[1]


def test_saved_layout_is_complete_json_and_arrays(tmp_path):
    ws = Workspace(tmp_path / "ws")
    images, texts = clustered(30, 50)
    layout, _ = cached_layout(ws, {"d": 2}, images, texts, "pca3")
    folder = layout_path(ws, layout.key)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["method"] == "pca3" and (meta["n_images"], meta["n_texts"], meta["dims"]) == (30, 50, 3)
    assert {p.name for p in folder.iterdir()} == {"meta.json", "image_xy.npy", "text_xy.npy", "fit_index.npy",
                                                  "pca_mean.npy", "pca_components.npy", "pca_explained_variance.npy"}


# -- the 3-D draw sample ---------------------------------------------------------------


def test_sample_for_3d_keeps_pairs_and_the_limit():
    rng = np.random.default_rng(0)
    owner = np.sort(rng.integers(0, 1000, 4800))  # 1,000 images, 0 to ~12 captions each
    img, txt = sample_for_3d(1000, 4800, limit=2000, seed=1, text_owner=owner)
    assert len(img) + len(txt) == 2000
    assert np.all(np.diff(img) > 0) and np.all(np.diff(txt) > 0)
    assert np.isin(owner[txt], img).all()  # every drawn caption's image is drawn
    # whole pairs: a drawn image that has captions drawn has all of them drawn
    drawn_with_captions = np.unique(owner[txt])
    assert np.array_equal(np.sort(np.flatnonzero(np.isin(owner, drawn_with_captions))), txt)
    again = sample_for_3d(1000, 4800, limit=2000, seed=1, text_owner=owner)
    other = sample_for_3d(1000, 4800, limit=2000, seed=2, text_owner=owner)
    assert np.array_equal(again[0], img) and not np.array_equal(other[0], img)
    # without owners: independent samples in proportion
    img, txt = sample_for_3d(1000, 3000, limit=400, seed=0)
    assert (len(img), len(txt)) == (100, 300) and len(np.unique(txt)) == 300 and txt.max() < 3000
    # everything when it fits
    img, txt = sample_for_3d(10, 20, limit=30)
    assert np.array_equal(img, np.arange(10)) and np.array_equal(txt, np.arange(20))


# -- progress --------------------------------------------------------------------------


def test_progress_stages_and_the_older_two_argument_form():
    images, texts = clustered(150, 250)
    seen = []
    project_pairs(images, texts, "dosnes", {"max_iter": 260}, max_fit=200,
                  progress=lambda done, total, stage: seen.append((done, total, stage)))
    stages = list(dict.fromkeys(s for _, _, s in seen))
    assert stages == ["fitting DOSNES on 200 points", "DOSNES on 200 points: optimisation step", "placing 200 points"]
    assert seen[-1] == (200, 200, "placing 200 points")
    pairs = []
    project_pairs(images, texts, "pca2", progress=lambda done, total: pairs.append((done, total)), chunk=100)
    assert pairs[-1] == (400, 400) and (0, 1) in pairs


# -- UMAP backend: cuML when importable and a GPU is there -----------------------------


def test_umap_uses_cuml_when_importable_with_a_gpu(monkeypatch):
    from mmviz.projection import umap as umap_module

    calls = []

    class FakeCumlUMAP:
        def __init__(self, **kwargs):
            calls.append(kwargs)

        def fit_transform(self, x):
            return types.SimpleNamespace(get=lambda: x[:, :2] * 2)  # like a cupy array: .get() to the host

    fake = types.ModuleType("cuml")
    fake.manifold = types.ModuleType("cuml.manifold")
    fake.manifold.UMAP = FakeCumlUMAP
    monkeypatch.setitem(sys.modules, "cuml", fake)
    monkeypatch.setitem(sys.modules, "cuml.manifold", fake.manifold)
    x = clustered(20, 20, d=8)[0]

    monkeypatch.setattr(umap_module, "_cuda_devices", lambda: 1)
    assert projection.umap_backend() == "cuml"
    est = projection.UMAP(2, n_neighbors=5, seed=3).fit(x)
    assert est.backend_ == "cuml" and calls == [{"n_components": 2, "n_neighbors": 5, "min_dist": 0.1,
                                                 "metric": "cosine", "random_state": 3}]
    np.testing.assert_array_equal(est.embedding_, x[:, :2] * 2)
    np.testing.assert_array_equal(est.transform(x[:3]), x[:3, :2] * 2)  # kNN placement onto itself
    assert projection.umap_backend("umap-learn") == "umap-learn"

    monkeypatch.setattr(umap_module, "_cuda_devices", lambda: 0)  # cuML installed, no GPU
    assert projection.umap_backend() == "umap-learn"
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        projection.umap_backend("cuml")
    monkeypatch.setitem(sys.modules, "cuml", None)  # not installed: the import fails
    monkeypatch.setitem(sys.modules, "cuml.manifold", None)
    monkeypatch.setattr(umap_module, "_cuda_devices", lambda: 1)
    assert projection.umap_backend() == "umap-learn"
    with pytest.raises(RuntimeError, match="pip install cuml-cu12"):
        projection.umap_backend("cuml")
    with pytest.raises(ValueError):
        projection.umap_backend("gpu")


# -- DOSNES's threads ------------------------------------------------------------------


def test_free_cores_counts_what_other_processes_leave(monkeypatch):
    from mmviz.projection import threads

    clock = {"t": 0.0, "busy": 0.0, "own": 0.0}
    monkeypatch.setattr(threads, "busy_seconds", lambda: clock["busy"])
    monkeypatch.setattr(threads, "own_seconds", lambda: clock["own"])
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    window = threads.CpuWindow()

    def after(seconds, busy, own):
        clock["t"] += seconds
        clock["busy"] += busy
        clock["own"] += own
        return window.free_cores()

    assert after(1.0, busy=1.0, own=1.0) == 2  # only we were busy
    assert after(1.0, busy=2.0, own=1.0) == 1  # another process held a core
    assert after(1.0, busy=2.0, own=1.5) == 1  # ... half of it, while our threads fought it for one
    assert after(1.0, busy=1.2, own=1.0) == 2  # a little noise
    assert after(2.0, busy=4.0, own=0.0) == 1  # both cores taken: still one thread
    assert after(0.01, busy=0.0, own=0.0) is None  # too short a window to say


def test_torch_threads_are_set_and_restored():
    import torch

    before = torch.get_num_threads()
    with projection.TorchThreads(2) as t:
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before and t.used == [2]
    with projection.TorchThreads("auto", probe_s=0.06) as t:  # never more than the count it found
        assert 1 <= torch.get_num_threads() <= before
    assert torch.get_num_threads() == before
    est = DOSNES(max_iter=260, threads=1).fit(clustered(30, 30)[0])
    assert est.threads_used_ == [1]


# -- DOSNES affinities: per-point perplexity ------------------------------------------


def test_per_point_widths_give_each_row_the_asked_perplexity():
    import torch

    from mmviz.projection.dosnes import perplexity_affinities, squared_distances

    x = torch.from_numpy(np.vstack(clustered(60, 90, d=16))).double()  # clusters of unequal density
    d2 = squared_distances(x).fill_diagonal_(float("inf"))
    for perplexity in (5.0, 15.0):
        cond, widths = perplexity_affinities(d2, perplexity)
        c = cond.numpy()
        entropy = -np.sum(np.where(c > 0, c * np.log(np.where(c > 0, c, 1)), 0), axis=1)
        np.testing.assert_allclose(np.exp(entropy), perplexity, rtol=1e-6)  # every row, not just on average
        np.testing.assert_allclose(c.sum(1), 1.0, atol=1e-12)
        assert np.all(np.diag(c) == 0) and np.all((c > 0).sum(1) <= int(3 * perplexity) + 1)
        assert widths.max() > 1.5 * widths.min()  # the widths differ with the local density
        # bandwidth multiplies the calibrated widths
        np.testing.assert_allclose(perplexity_affinities(d2, perplexity, bandwidth=2.0)[1].numpy(),
                                   2 * widths.numpy(), rtol=1e-12)


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "modality-gap-features" / "features_clip.npy"


@pytest.mark.skipif(not REAL.is_file(), reason="real CLIP features not present")
def test_dosnes_matches_umap_on_real_clip_features():
    """500 COCO pairs (1,000 points), stacked as bench/projection.py stacks them: DOSNES's
    trustworthiness (k = 10) at least UMAP 3-D's measured 0.963 less 0.001 (DOSNES gives
    0.965; the former global-width affinities gave 0.959). The 2,000-point check (0.980
    against 0.976) takes too long for the suite (~30 s): it is a goal in bench/projection.py."""
    from sklearn.manifold import trustworthiness

    f = np.load(REAL).astype(np.float32)
    x = unit(np.vstack([f[0], f[1]]))
    y = DOSNES(seed=0).fit_transform(x)
    assert trustworthiness(x, y, n_neighbors=10, metric="cosine") >= 0.962
