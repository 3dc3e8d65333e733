"""mmviz.geometry: values worked out by hand, invariances, limiting cases, subsampling, bad input,
and the real embeddings behind Liang et al.'s Figure 1 checked against plain numpy."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from mmviz import geometry as G

FEATURES = Path(__file__).resolve().parents[2] / "shared/data/modality-gap-features"
R5 = math.sqrt(5)


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def sphere(rng, n: int, d: int) -> np.ndarray:
    """n points uniform on the unit sphere in d dimensions."""
    return unit(rng.standard_normal((n, d)))


def orthogonal(rng, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# -----------------------------------------------------------------------------
# By hand: images are the basis vectors e1, e2, e3 of R^3, text i is (2 e_i + e_{i+1}) / sqrt 5
# (indices mod 3). Given unnormalised (scaled) to check the re-normalisation.
#   cos(x_i, y_i) = 2/sqrt5 = 0.894, cos(x_i, y_{i-1}) = 1/sqrt5 = 0.447, cos(x_i, y_{i+1}) = 0
#   cos(y_i, y_j) = (2 e_i + e_{i+1}).(2 e_j + e_{j+1}) / 5 = 2/5 for every i != j
IMAGES3 = np.eye(3) * np.array([[1.0], [3.0], [0.5]])
TEXTS3 = np.array([[2.0, 1, 0], [0, 2, 1], [1, 0, 2]]) * 7.0


def test_hand_gap_alignment_cosines():
    # mean image = (1,1,1)/3, mean text = (3,3,3)/(3 sqrt5) = (1,1,1)/sqrt5
    # gap = (1/3 - 1/sqrt5)(1,1,1), length sqrt3 |1/3 - 1/sqrt5| = 1.732 * 0.1139 = 0.1973
    np.testing.assert_allclose(G.gap_vector(IMAGES3, TEXTS3), np.full(3, 1 / 3 - 1 / R5), atol=1e-15)
    assert G.gap_length(IMAGES3, TEXTS3) == pytest.approx(math.sqrt(3) * (1 / R5 - 1 / 3), abs=1e-15)
    np.testing.assert_allclose(G.paired_cosines(IMAGES3, TEXTS3), [2 / R5] * 3, atol=1e-15)
    # ||x_i - y_i||^2 = 2 - 2 * 2/sqrt5 = 0.2111 for every pair
    assert G.alignment(IMAGES3, TEXTS3) == pytest.approx(2 - 4 / R5, abs=1e-15)
    # unpaired, row-major without the diagonal: (x1,y2)=0 (x1,y3)=1/sqrt5 (x2,y1)=1/sqrt5 (x2,y3)=0 ...
    np.testing.assert_allclose(G.unpaired_cosines(IMAGES3, TEXTS3), [0, 1 / R5, 1 / R5, 0, 0, 1 / R5], atol=1e-15)
    # three values 1/sqrt5 and three 0: mean 1/(2 sqrt5), std 1/(2 sqrt5)
    s = G.cosine_summary(IMAGES3, TEXTS3)
    assert s == pytest.approx({"paired_mean": 2 / R5, "paired_std": 0.0,
                               "unpaired_mean": 1 / (2 * R5), "unpaired_std": 1 / (2 * R5)}, abs=1e-12)


def test_hand_relative_alignment():
    # each image: own text 2/sqrt5, hardest other text 1/sqrt5 -> margin 1/sqrt5 = 0.447
    assert G.relative_alignment(IMAGES3, TEXTS3) == pytest.approx(1 / R5, abs=1e-15)
    # swapping roles: text y_i = (2 e_i + e_{i+1})/sqrt5 against images: own 2/sqrt5, hardest
    # other e_{i+1}: 1/sqrt5 -> also 1/sqrt5
    assert G.relative_alignment(TEXTS3, IMAGES3) == pytest.approx(1 / R5, abs=1e-15)
    # 2 pairs in 2-D pointing opposite ways: own cosine -1, other 0 -> margin -1
    assert G.relative_alignment([[1, 0], [0, 1]], [[-1, 0], [0, -1]]) == pytest.approx(-1.0)


def test_hand_uniformity():
    # images: every pair of basis vectors is at squared distance 2 -> log mean exp(-2 * 2) = -4
    assert G.uniformity(IMAGES3) == pytest.approx(-4.0, abs=1e-12)
    assert G.uniformity(IMAGES3, t=1) == pytest.approx(-2.0, abs=1e-12)
    # texts: cos 2/5 between any two -> squared distance 2 - 4/5 = 6/5 -> -2 * 6/5 = -2.4
    assert G.uniformity(TEXTS3) == pytest.approx(-2.4, abs=1e-12)
    # union of the 6 points, 30 ordered pairs: 6 within images (e^-4), 6 within texts (e^-2.4),
    # 18 across = 2 x (3 at cos 2/sqrt5, 3 at 1/sqrt5, 3 at 0), squared distance 2 - 2 cos
    k = lambda cos: math.exp(-2 * (2 - 2 * cos))  # noqa: E731
    total = 6 * math.exp(-4) + 6 * math.exp(-2.4) + 6 * (k(2 / R5) + k(1 / R5) + k(0))
    assert G.union_uniformity(IMAGES3, TEXTS3) == pytest.approx(math.log(total / 30), abs=1e-12)


def test_hand_spectrum_effective_dimension_vendi():
    # images e1, e2, e3: mean (1,1,1)/3, covariance I/3 - 11^T/9: eigenvalues 1/3, 1/3, 0
    np.testing.assert_allclose(G.spectrum(IMAGES3), [1 / 3, 1 / 3, 0], atol=1e-15)
    # p = (1/2, 1/2) -> exp(entropy) = exp(log 2) = 2
    assert G.effective_dimension(IMAGES3) == pytest.approx(2.0, abs=1e-12)
    # Vendi: X^T X / 3 = I/3, eigenvalues (1/3, 1/3, 1/3) -> exp(log 3) = 3
    assert G.vendi_score(IMAGES3) == pytest.approx(3.0, abs=1e-12)
    # stacked 6 points: 2n = 6, common mean (1/3 + 1/sqrt5)/2 (1,1,1); the trace is 1 - ||mean||^2
    joint = G.joint_spectrum(IMAGES3, TEXTS3)
    assert joint.sum() == pytest.approx(1 - 3 * ((1 / 3 + 1 / R5) / 2) ** 2, abs=1e-12)
    assert list(joint) == sorted(joint, reverse=True)


def test_hand_c3():
    # d_i = e_i - (2 e_i + e_{i+1})/sqrt5; c = gap = (1/3 - 1/sqrt5)(1,1,1)
    # constant fraction = ||c||^2 / mean ||d_i||^2 = 3 (1/sqrt5 - 1/3)^2 / (2 - 4/sqrt5)
    c3 = G.c3_decomposition(IMAGES3, TEXTS3)
    c2 = 3 * (1 / R5 - 1 / 3) ** 2
    assert c3["constant_length"] == pytest.approx(math.sqrt(c2), abs=1e-15)
    assert c3["constant_fraction"] == pytest.approx(c2 / (2 - 4 / R5), abs=1e-12)
    # every ||d_i - c|| is the same by symmetry: mean ||d_i||^2 - ||c||^2 = ||eps_i||^2
    assert c3["residual_norm"] == pytest.approx(math.sqrt(2 - 4 / R5 - c2), abs=1e-12)
    # c is along (1,1,1); both modalities vary only in the plane orthogonal to (1,1,1)
    # (each set is a rotation-symmetric triangle around that axis), so c is orthogonal to them
    assert c3["orthogonality"] == pytest.approx(1.0, abs=1e-12)
    # halves of 1 and 2 pairs, by symmetry any one against the other two, say d_1 vs (d_2 + d_3)/2.
    # With a = 1 - 2/sqrt5, b = 1/sqrt5: d_1 = (a, -b, 0), d_2 = (0, a, -b), d_3 = (-b, 0, a),
    # d_2 + d_3 = (-b, a, a - b), d_1.(d_2 + d_3) = -2ab: three pairs cannot agree on a direction
    a, b = 1 - 2 / R5, 1 / R5
    cos = -2 * a * b / math.sqrt((a * a + b * b) * (b * b + a * a + (a - b) ** 2))
    assert c3["direction_consistency"] == pytest.approx(cos, abs=1e-12)


# -----------------------------------------------------------------------------
# Properties

@pytest.fixture(scope="module")
def paired():
    """300 pairs in 16-D: texts are noisy copies of images, pushed apart by a gap."""
    rng = np.random.default_rng(1)
    x = sphere(rng, 300, 16)
    shift = np.zeros(16)
    shift[0] = 0.8
    y = unit(x + 0.4 * rng.standard_normal(x.shape) / 4 + shift)
    return unit(x - shift / 2), y


def test_rotation_invariance(paired):
    x, y = paired
    q = orthogonal(np.random.default_rng(2), x.shape[1])
    for f in (G.gap_length, G.alignment, G.relative_alignment, G.union_uniformity,
              lambda a, b: G.uniformity(a), lambda a, b: G.uniformity(b),
              lambda a, b: G.effective_dimension(a), lambda a, b: G.vendi_score(b),
              lambda a, b: G.c3_decomposition(a, b)["orthogonality"]):
        assert f(x @ q, y @ q) == pytest.approx(f(x, y), rel=1e-9, abs=1e-12)


def test_spread_set_is_more_uniform_than_a_clustered_one():
    rng = np.random.default_rng(3)
    spread = sphere(rng, 500, 32)
    clustered = unit(np.eye(32)[0] + 0.1 * rng.standard_normal((500, 32)))
    assert G.uniformity(spread) < G.uniformity(clustered) - 1.0


def test_relative_alignment_paired_vs_shuffled():
    rng = np.random.default_rng(4)
    x = sphere(rng, 400, 32)
    assert G.relative_alignment(x, x) > 0.3  # own text at cosine 1, nothing else that close
    y = unit(x + 0.3 * rng.standard_normal(x.shape) / math.sqrt(32))
    assert G.relative_alignment(x, y) > 0
    assert G.relative_alignment(x, y[rng.permutation(400)]) < -0.2  # own text is a random one


def test_k_orthogonal_clusters():
    # k tight equal clusters around orthonormal directions. Vendi (uncentred): k equal eigenvalues
    # 1/k -> k. Effective dimension (centred): the k centres span k - 1 directions -> k - 1, which
    # is within 10% of k for k = 16. Noise sd 0.003 per coordinate adds about 1% to both.
    rng = np.random.default_rng(5)
    k, d, per = 16, 64, 40
    x = unit(np.repeat(np.eye(d)[:k], per, axis=0) + 0.003 * rng.standard_normal((k * per, d)))
    ed, vs = G.effective_dimension(x), G.vendi_score(x)
    assert abs(ed - (k - 1)) < 0.03 * (k - 1) and abs(ed - k) < 0.1 * k
    assert abs(vs - k) < 0.03 * k


def test_linear_separability():
    rng = np.random.default_rng(6)
    # two caps: around +e1 and around -e1, spread 0.3 per coordinate in 16-D
    e1 = np.eye(16)[0]
    x = unit(e1 + 0.3 * rng.standard_normal((300, 16)))
    y = unit(-e1 + 0.3 * rng.standard_normal((300, 16)))
    assert G.linear_separability(x, y) > 0.99
    # identical distributions: chance; 5-fold accuracy over 800 samples has sd about 0.018
    a, b = sphere(rng, 400, 8), sphere(rng, 400, 8)
    assert abs(G.linear_separability(a, b) - 0.5) < 0.08


def test_c3_recovers_a_constant_orthogonal_shift():
    # Images x_i = a u_i + b e_d with u_i random unit vectors orthogonal to e_d (a^2 + b^2 = 1).
    # Texts y_i = normalise(x_i + shift + noise), shift = -2b e_d: x_i + shift = a u_i - b e_d is
    # already a unit vector, so the truth is c = -shift = 2b e_d, orthogonal to how both vary.
    rng = np.random.default_rng(7)
    n, d, a, b, sigma = 2000, 16, 0.8, 0.6, 0.05
    u = np.zeros((n, d))
    u[:, :-1] = sphere(rng, n, d - 1)
    x = a * u + b * np.eye(d)[-1]
    shift = -2 * b * np.eye(d)[-1]
    y = unit(x + shift + sigma * rng.standard_normal((n, d)))
    c3 = G.c3_decomposition(x, y)
    # ||c|| = 1.2; the noise averages out to ~sigma / sqrt(n) per coordinate, and renormalising
    # a vector of norm sqrt(1 + d sigma^2) shrinks y by ~2% in length, changing c by < 0.02
    assert c3["constant_length"] == pytest.approx(2 * b, abs=0.03)
    assert c3["constant_length"] == pytest.approx(G.gap_length(x, y), abs=1e-12)
    assert c3["direction_consistency"] > 0.999
    assert c3["orthogonality"] > 0.99
    # residual ~ the noise, sigma sqrt(d) = 0.2; constant fraction ~ 1.44 / (1.44 + 0.04)
    assert 0.1 < c3["residual_norm"] < 0.3
    assert c3["constant_fraction"] > 0.95
    # shuffling the text of each pair does not move c but adds a lot of residual
    shuffled = G.c3_decomposition(x, y[rng.permutation(n)])
    assert shuffled["constant_length"] == pytest.approx(c3["constant_length"], abs=1e-12)
    assert shuffled["constant_fraction"] < 0.6


def test_subsampling_above_max_n_stays_close():
    rng = np.random.default_rng(8)
    n, m, d = 3000, 1000, 32
    x = sphere(rng, n, d)
    y = unit(x + 0.5 * rng.standard_normal((n, d)) / math.sqrt(d))
    idx = G._subsample(n, m, 0)
    assert len(idx) == m and len(np.unique(idx)) == m
    # Kicks in above max_n: exactly the metric of the seeded subsample, different from the full one,
    # and changes with the seed.
    assert G.uniformity(x, max_n=m) == pytest.approx(G.uniformity(x[idx], max_n=m), abs=1e-12)
    assert G.relative_alignment(x, y, max_n=m) == pytest.approx(G.relative_alignment(x[idx], y[idx]), abs=1e-12)
    assert G.uniformity(x, max_n=m) != G.uniformity(x, max_n=n)
    assert G.uniformity(x, max_n=m, seed=1) != G.uniformity(x, max_n=m)
    assert G.uniformity(x, max_n=n) == G.uniformity(x)  # n <= max_n: exact

    # Uniformity: the subsample mean of k(u, v) = exp(-2 ||u - v||^2) is an unbiased U-statistic;
    # its standard error is about 2 sd(h) / sqrt(m) * sqrt(1 - m/n) with h(u) the mean of k(u, .)
    # over the full set (Hoeffding's first-order term). Allow 4 standard errors.
    kern = np.exp(-2 * np.clip(2 - 2 * x @ x.T, 0, None))
    np.fill_diagonal(kern, 0)
    h = kern.sum(1) / (n - 1)
    se = 2 * h.std() / math.sqrt(m) * math.sqrt(1 - m / n)
    assert abs(math.exp(G.uniformity(x, max_n=m)) - math.exp(G.uniformity(x))) < 4 * se

    # Relative alignment: anchor sampling (sd of the per-pair margins / sqrt m, finite-population
    # corrected) plus an upward bias, since each max runs over 999 instead of 2999 negatives.
    # Unpaired cosines have sd ~ 1/sqrt(d); the expected max of N such values grows like
    # sd sqrt(2 ln N), so the bias is ~ (sqrt(2 ln 2999) - sqrt(2 ln 999)) / sqrt(d) = 0.05.
    cos = x @ y.T
    own = np.diag(cos).copy()
    np.fill_diagonal(cos, -np.inf)
    margins = own - cos.max(1)
    full, sub = G.relative_alignment(x, y), G.relative_alignment(x, y, max_n=m)
    assert full == pytest.approx(margins.mean(), abs=1e-12)
    assert sub >= margins[idx].mean() - 1e-12  # fewer negatives can only lower each max
    bias = (math.sqrt(2 * math.log(n - 1)) - math.sqrt(2 * math.log(m - 1))) / math.sqrt(d)
    assert abs(sub - full) < 4 * margins.std() / math.sqrt(m) * math.sqrt(1 - m / n) + 1.5 * bias
    assert sub - full > 0  # the bias shows


def test_unpaired_cosines_sample_and_exact_summary():
    rng = np.random.default_rng(9)
    x, y = sphere(rng, 400, 8), sphere(rng, 400, 8)
    cos = x @ y.T
    off = cos[~np.eye(400, dtype=bool)]
    vals = G.unpaired_cosines(x, y)  # 400 * 399 = 159,600 > 100,000: a sample
    assert vals.shape == (G.UNPAIRED_VALUES,)
    # every value is one of the unpaired cosines (nearest in the sorted list), none twice
    srt = np.sort(off)
    pos = np.clip(np.searchsorted(srt, vals), 1, len(srt) - 1)
    assert np.minimum(abs(srt[pos] - vals), abs(srt[pos - 1] - vals)).max() < 1e-12
    assert len(np.unique(vals)) == len(vals)
    np.testing.assert_array_equal(vals, G.unpaired_cosines(x, y))  # seeded
    small = G.unpaired_cosines(x[:50], y[:50])
    np.testing.assert_allclose(small, cos[:50, :50][~np.eye(50, dtype=bool)], atol=1e-14)
    s = G.cosine_summary(x, y)
    assert s["unpaired_mean"] == pytest.approx(off.mean(), abs=1e-14)
    assert s["unpaired_std"] == pytest.approx(off.std(), abs=1e-12)
    assert s["paired_std"] == pytest.approx(np.diag(cos).std(), abs=1e-14)


def test_all_metrics_matches_the_functions(paired):
    x, y = paired
    m = G.all_metrics(x, y, seed=3, max_n=200)  # 300 pairs: the n^2 metrics subsample
    assert list(m) == list(G.METRICS)
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())
    assert all(len(label) > 0 and len(meaning) > 10 for label, meaning in G.METRICS.values())
    c3 = G.c3_decomposition(x, y, seed=3)
    expected = {
        "gap_length": G.gap_length(x, y), "paired_cosine_mean": G.paired_cosines(x, y).mean(),
        "unpaired_cosine_mean": G.cosine_summary(x, y)["unpaired_mean"],
        "linear_separability": G.linear_separability(x, y, seed=3),
        **{f"c3_{k}": v for k, v in c3.items()},
        "uniformity_image": G.uniformity(x, max_n=200, seed=3), "uniformity_text": G.uniformity(y, max_n=200, seed=3),
        "uniformity_union": G.union_uniformity(x, y, max_n=200, seed=3), "alignment": G.alignment(x, y),
        "relative_alignment": G.relative_alignment(x, y, max_n=200, seed=3),
        "effective_dimension_image": G.effective_dimension(x), "effective_dimension_text": G.effective_dimension(y),
        "effective_dimension_joint": G._exp_entropy(G.joint_spectrum(x, y)),
        "vendi_image": G.vendi_score(x), "vendi_text": G.vendi_score(y),
        "vendi_joint": G.vendi_score(np.concatenate([x, y])),
    }
    assert m == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_analyse_gives_the_standalone_spectra_and_cosines(paired):
    """What analyse() hands out beside the metrics is exactly what the standalone functions give."""
    x, y = paired
    found = G.analyse(x, y, seed=3, max_n=40)  # 40 pairs: 1,560 unpaired cosines, all of them
    assert found.metrics == G.all_metrics(x, y, seed=3, max_n=40)
    np.testing.assert_allclose(found.spectra["images"], G.spectrum(x), rtol=0, atol=1e-14)
    np.testing.assert_allclose(found.spectra["texts"], G.spectrum(y), rtol=0, atol=1e-14)
    np.testing.assert_allclose(found.spectra["joint"], G.joint_spectrum(x, y), rtol=0, atol=1e-14)
    np.testing.assert_array_equal(found.paired, G.paired_cosines(x, y))
    np.testing.assert_array_equal(found.unpaired, G.unpaired_cosines(x, y, max_n=40, seed=3))
    assert len(found.unpaired) == 40 * 39
    # above UNPAIRED_VALUES the seeded sample of cells is the same one too
    big_x, big_y = sphere(np.random.default_rng(5), 400, 8), sphere(np.random.default_rng(6), 400, 8)
    np.testing.assert_array_equal(G.analyse(big_x, big_y, seed=2).unpaired, G.unpaired_cosines(big_x, big_y, seed=2))


def test_inputs_any_float_array_and_chunked(paired, monkeypatch):
    x, y = paired
    ref = G.all_metrics(x, y)
    # float32 torch tensors (one needing grad), roughly normalised: same values to float32 precision
    xt = torch.tensor(x * 3, dtype=torch.float32, requires_grad=True)
    got = G.all_metrics(xt, torch.tensor(y, dtype=torch.float32))
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-5)
    # chunking (rows and n x n blocks) changes nothing but rounding
    monkeypatch.setattr(G.streaming, "ROWS", 7)
    monkeypatch.setattr(G.streaming, "BLOCK", 1000)
    assert G.all_metrics(x, y, device="cpu") == pytest.approx(ref, rel=1e-10, abs=1e-12)
    # the torch code path (what CUDA runs) on CPU tensors: same float64 results
    monkeypatch.setattr(G.streaming, "CPU_NUMPY", False)
    assert G.all_metrics(x, y) == pytest.approx(ref, rel=1e-10, abs=1e-12)


def test_bad_input():
    ok = np.eye(3)
    cases = [
        (lambda: G.gap_length(ok, np.eye(3, 4)), "same shape"),
        (lambda: G.gap_length(ok[:1], ok[:1]), "at least 2 rows"),
        (lambda: G.alignment(ok[0], ok[0]), "2-D"),
        (lambda: G.uniformity(np.ones((2, 2, 2))), "2-D"),
        (lambda: G.all_metrics(np.where(ok == 1, np.nan, ok), ok), "NaN or inf"),
        (lambda: G.uniformity(np.array([[1.0, 0], [np.inf, 1]])), "row 1 contains NaN or inf"),
        (lambda: G.paired_cosines(ok, np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 1]])), "row 1 is all zeros"),
        (lambda: G.spectrum(np.array([["a", "b"], ["c", "d"]])), "real numeric"),
        (lambda: G.uniformity(ok, t=0), "positive"),
        (lambda: G.uniformity(ok, max_n=1), "max_n"),
        (lambda: G.linear_separability(ok, ok, folds=5), "folds"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    # a bad row outside the subsample is still caught
    big = sphere(np.random.default_rng(0), 50, 4)
    big[-1, 0] = np.nan
    with pytest.raises(ValueError, match="row 49"):
        G.relative_alignment(big, big, max_n=10)


def test_degenerate_but_valid_input_gives_numbers():
    # identical rows and identical modalities: no gap, no variation -- zeros, not NaN
    x = np.tile([1.0, 2.0, 2.0], (5, 1))
    m = G.all_metrics(x, x)
    assert all(math.isfinite(v) for v in m.values())
    assert m["gap_length"] == 0 and m["alignment"] == 0 and m["effective_dimension_image"] == 0
    assert m["vendi_image"] == pytest.approx(1.0) and m["uniformity_image"] == pytest.approx(0.0, abs=1e-12)


# -----------------------------------------------------------------------------
# Real embeddings (Liang et al. 2022, Figure 1): every model, trained or random, has a gap

FEATURE_FILES = sorted(FEATURES.glob("features_*.npy")) if FEATURES.is_dir() else []
needs_features = pytest.mark.skipif(not FEATURE_FILES, reason=f"shared features not present at {FEATURES}")


@needs_features
@pytest.mark.parametrize("path", FEATURE_FILES, ids=lambda p: p.stem)
def test_every_model_has_a_gap(path):
    raw = np.load(path)
    assert raw.dtype == np.float32 and raw.ndim == 3 and raw.shape[0] == 2
    assert G.gap_length(raw[0], raw[1]) > 0.1
    assert G.linear_separability(raw[0], raw[1]) > 0.9


@needs_features
def test_clip_features_against_plain_numpy():
    raw = np.load(FEATURES / "features_clip.npy")
    x = raw[0].astype(np.float64)
    y = raw[1].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    gap = np.linalg.norm(x.mean(axis=0) - y.mean(axis=0))
    align = np.mean(np.sum((x - y) ** 2, axis=1))

    def uniformity(z):  # Wang & Isola's formula over the n (n - 1) / 2 distinct pairs
        return np.log(np.mean(np.exp(-2 * pdist(z, "sqeuclidean"))))

    def erank(z):
        lam = np.linalg.eigvalsh(np.cov(z, rowvar=False, bias=True))
        p = lam[lam > 0] / lam[lam > 0].sum()
        return np.exp(-np.sum(p * np.log(p)))

    assert G.gap_length(raw[0], raw[1]) == pytest.approx(gap, abs=1e-6)
    assert G.alignment(raw[0], raw[1]) == pytest.approx(align, abs=1e-6)
    assert G.uniformity(raw[0]) == pytest.approx(uniformity(x), abs=1e-6)
    assert G.uniformity(raw[1]) == pytest.approx(uniformity(y), abs=1e-6)
    assert G.effective_dimension(raw[0]) == pytest.approx(erank(x), abs=1e-6)
    assert G.effective_dimension(raw[1]) == pytest.approx(erank(y), abs=1e-6)
    assert 0.8 < gap < 0.9  # 0.85 here; the paper reports 0.82 for CLIP on COCO
