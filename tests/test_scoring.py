"""Caption scores: MID / PMI / I against a literal float64 implementation, their exact identities
and invariances, shrinkage, streaming, CLIP-S / RefCLIP-S by hand, agreement statistics by hand,
and true captions against foils on the shapes demo."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mmviz import scoring
from mmviz.scoring import GaussianReference, MutualInformationDivergence, RegularisedWarning

D, N, M = 8, 200, 150


def correlated(n: int, d: int = D, seed: int = 0, offset: float = 3.0):
    """(x, y): n rows of d-d x and y drawn from one random joint Gaussian (all coordinates correlated)."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).standard_normal((2 * d, 2 * d))
    z = rng.standard_normal((n, 2 * d)) @ mix + offset
    return z[:, :d], z[:, d:]


def literal(x, y, x0, y0):
    """The formulas of the MID paper / reference code written out: explicit inverses and slogdet,
    C about the reference mean over M - 1. Returns (I, MID, PMI)."""
    z, z0 = np.hstack([x, y]), np.hstack([x0, y0])
    logdet, trace, dist = {}, {}, {}
    for k, (a, a0) in {"x": (x, x0), "y": (y, y0), "z": (z, z0)}.items():
        mu = a.mean(axis=0)
        s = (a - mu).T @ (a - mu) / (len(a) - 1)
        c = (a0 - mu).T @ (a0 - mu) / (len(a0) - 1)
        inv = np.linalg.inv(s)
        sign, logdet[k] = np.linalg.slogdet(s)
        assert sign > 0
        trace[k] = np.trace(inv @ c)
        dist[k] = np.einsum("ij,jk,ik->i", a0 - mu, inv, a0 - mu)
    i = 0.5 * (logdet["x"] + logdet["y"] - logdet["z"])
    return i, i + 0.5 * (trace["x"] + trace["y"] - trace["z"]), i + 0.5 * (dist["x"] + dist["y"] - dist["z"])


@pytest.fixture(scope="module")
def data():
    x, y = correlated(N, seed=0)
    x0, y0 = correlated(M, seed=1)
    x0 = x0 + 0.3  # candidates off the reference distribution, so MID != I
    return x, y, x0, y0


# -----------------------------------------------------------------------------------------
# MID, PMI, I against the literal formulas

@pytest.mark.parametrize("form", ["general", "text-to-image"])
def test_mid_pmi_and_i_equal_the_literal_float64_formulas(data, form):
    x, y, x0, y0 = data
    if form == "text-to-image":  # the reference code's setting: y0 = y, so C_y = S_y
        x0, y0 = correlated(N, seed=2)[0] + 0.3, y
    i, mid, pmi = literal(x, y, x0, y0)
    assert scoring.mutual_information(x, y) == pytest.approx(i, rel=1e-9, abs=0)
    assert scoring.mid(x, y, x0, y0) == pytest.approx(mid, rel=1e-9, abs=0)
    np.testing.assert_allclose(scoring.pmi(x, y, x0, y0), pmi, rtol=1e-9, atol=1e-9)
    assert abs(mid - i) > 0.1  # the candidates really differ from the references


def test_mid_of_the_references_against_themselves_is_i(data):
    x, y, _, _ = data
    assert scoring.mid(x, y, x, y) == pytest.approx(scoring.mutual_information(x, y), rel=0, abs=1e-9)


def test_mean_pmi_relates_to_mid_exactly(data):
    x, y, x0, y0 = data
    g = GaussianReference().fit(x, y)
    assert not g.regularised_ and g.eps_used_ == 0.0 and (g.n_, g.dim_x_, g.dim_y_) == (N, D, D)
    assert g.pmi(x0, y0).mean() - g.mi_ == pytest.approx((M - 1) / M * (g.mid(x0, y0) - g.mi_), rel=1e-9)


def test_pmi_and_mid_are_invariant_to_an_affine_map_of_x(data):
    x, y, x0, y0 = data
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((D, D)) + 3 * np.eye(D), rng.standard_normal(D) * 10
    assert abs(np.linalg.det(a)) > 1
    np.testing.assert_allclose(scoring.pmi(x @ a + b, y, x0 @ a + b, y0), scoring.pmi(x, y, x0, y0), rtol=1e-9, atol=1e-9)
    assert scoring.mid(x @ a + b, y, x0 @ a + b, y0) == pytest.approx(scoring.mid(x, y, x0, y0), rel=1e-9)
    assert scoring.mutual_information(x @ a + b, y) == pytest.approx(scoring.mutual_information(x, y), rel=1e-9)


def gaussian_pairs(rho: float, n: int = 20_000, d: int = 4, seed: int = 0):
    """x ~ N(0, I); y = rho x + sqrt(1 - rho^2) e: correlation rho per coordinate pair, so
    I = -d/2 log(1 - rho^2) exactly."""
    rng = np.random.default_rng(seed)
    x, e = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    return x, rho * x + np.sqrt(1 - rho ** 2) * e


def test_i_is_zero_for_independent_data_and_grows_with_correlation():
    mis = [scoring.mutual_information(*gaussian_pairs(rho)) for rho in (0.0, 0.3, 0.6, 0.9)]
    assert 0 <= mis[0] < 1e-2  # estimation bias ~ d^2 / (2 n) = 4e-4
    assert all(a < b for a, b in zip(mis, mis[1:])), mis


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_i_approaches_the_closed_form_for_jointly_gaussian_data(rho):
    expected = -4 / 2 * np.log(1 - rho ** 2)
    assert scoring.mutual_information(*gaussian_pairs(rho)) == pytest.approx(expected, rel=0.03)


# -----------------------------------------------------------------------------------------
# shrinkage

def test_few_references_shrink_with_a_warning_and_stay_finite(data):
    x, y, x0, y0 = data
    with pytest.warns(RegularisedWarning, match=r"N = 16 references, D = 8 \+ 8 = 16"):
        g = GaussianReference().fit(x[:16], y[:16])
    assert g.regularised_ and g.eps_used_ == 1e-3
    assert np.isfinite(g.mi_) and np.isfinite(g.mid(x0, y0)) and np.isfinite(g.pmi(x0, y0)).all()
    # S + eps tr(S)/p I, for each of x, y, z
    s = np.cov(x[:16].T)
    np.testing.assert_allclose(g.cov_x_, s + 1e-3 * np.trace(s) / D * np.eye(D), rtol=1e-12)


def test_shrink_never_with_too_few_references_raises(data):
    x, y, _, _ = data
    with pytest.raises(ValueError, match="cannot be full rank"):
        GaussianReference(shrink="never").fit(x[:16], y[:16])


@pytest.mark.parametrize("rho_candidates", [0.6, 0.3])
def test_shrink_always_on_well_conditioned_full_rank_data_changes_mid_only_a_little(rho_candidates):
    """eps is relative to the AVERAGE variance, so on ill-conditioned data (the `data` fixture:
    mean / smallest eigenvalue ~1600) eps = 1e-3 moves MID by ~12%; here (ratio ~4) MID moves by
    measured 1e-4 (candidates like the references) and 0.007 (less correlated ones), I = 1.78."""
    x, y = gaussian_pairs(0.6, n=2000, d=8)
    x0, y0 = gaussian_pairs(rho_candidates, n=500, d=8, seed=1)
    g = GaussianReference().fit(x, y)
    with pytest.warns(RegularisedWarning):
        shrunk = GaussianReference(shrink="always").fit(x, y).mid(x0, y0)
    assert shrunk != g.mid(x0, y0) and abs(shrunk - g.mid(x0, y0)) < 0.01 * g.mi_, (g.mid(x0, y0), shrunk)


def test_degenerate_references_raise_a_clear_error(data):
    x, y, _, _ = data
    x = x.copy()
    x[:, 1] = x[:, 0]  # rank-deficient x despite N > 2D
    # Without the pivot check, I = 3.8: finite and meaningless. "never" refuses; "auto" shrinks and says why.
    with pytest.raises(ValueError, match="references are degenerate.*more .*references or shrink='always'"):
        GaussianReference(shrink="never").fit(x, y)
    with pytest.warns(RegularisedWarning, match="span fewer dimensions"):
        g = GaussianReference().fit(x, y)
    assert g.regularised_ and np.isfinite(g.mi_)
    with pytest.raises(ValueError, match="degenerate"), pytest.warns(RegularisedWarning):
        GaussianReference(shrink="always").fit(np.zeros((20, 3)), np.ones((20, 3)))  # tr(S) = 0: nothing to shrink by


@pytest.mark.parametrize("call, match", [
    (lambda x, y: scoring.mid(x, y[:-1], x, y), "same number of rows"),
    (lambda x, y: scoring.mid(x[:, :3], y, x, y), r"dimensions \(8, 8\) but the references \(3, 8\)"),
    (lambda x, y: scoring.mid(x[:1], y[:1], x, y), "at least 2 row"),
    (lambda x, y: scoring.mid(x, y, x[:1], y[:1]), "at least 2 row"),
    (lambda x, y: scoring.pmi(x, y, x[0], y[0]), "2-D"),
    (lambda x, y: scoring.pmi(np.where(x > 2.5, np.nan, x), y, x, y), "NaN or inf"),
    (lambda x, y: scoring.pmi(x, y, np.where(x > 2.5, np.inf, x), y), "NaN or inf"),
    (lambda x, y: GaussianReference(shrink="sometimes"), "shrink must be"),
    (lambda x, y: GaussianReference().pmi(x, y), "not fitted"),
])
def test_bad_input_raises_value_error(data, call, match):
    x, y, _, _ = data
    with pytest.raises(ValueError, match=match):
        call(x, y)


# -----------------------------------------------------------------------------------------
# streaming

def test_streaming_mid_in_uneven_batches_equals_mid(data):
    x, y, x0, y0 = data
    metric = MutualInformationDivergence()
    for a, b in [(0, 7), (7, 8), (8, 120), (120, N)]:
        metric.update_reference(x[a:b], y[a:b])
    for a, b in [(0, 1), (1, 64), (64, M)]:
        metric.update(x0[a:b], y0[a:b])
    assert metric.compute() == pytest.approx(scoring.mid(x, y, x0, y0), rel=1e-9)
    assert not metric.regularised
    metric.reset()
    metric.update_reference(x[:16], y[:16])
    metric.update(x0, y0)
    with pytest.warns(RegularisedWarning):
        shrunk = metric.compute()
    assert metric.regularised
    with pytest.warns(RegularisedWarning):
        assert shrunk == pytest.approx(GaussianReference().fit(x[:16], y[:16]).mid(x0, y0), rel=1e-9)
    with pytest.raises(ValueError, match=r"earlier batches \(8, 8\)"):
        metric.update(x0[:, :3], y0)
    metric.reset()
    with pytest.raises(ValueError, match="at least 2 reference"):
        metric.compute()


def test_streaming_clip_scores_equal_the_functional_means():
    rng = np.random.default_rng(3)
    img, cap = rng.standard_normal((50, 6)), rng.standard_normal((50, 6))
    refs, owner = rng.standard_normal((120, 6)), np.r_[np.arange(50), rng.integers(0, 50, 70)]
    clip, ref = scoring.CLIPScore(), scoring.RefCLIPScore()
    for a, b in [(0, 3), (3, 31), (31, 50)]:
        clip.update(img[a:b], cap[a:b])
        keep = (owner >= a) & (owner < b)
        ref.update(img[a:b], cap[a:b], refs[keep], owner[keep] - a)
    assert clip.compute() == pytest.approx(scoring.clip_s(img, cap).mean(), rel=1e-12)
    assert ref.compute() == pytest.approx(scoring.refclip_s(img, cap, refs, owner).mean(), rel=1e-12)
    assert clip.count == 50 and 0 < clip.compute() < 2.5
    clip.reset()
    with pytest.raises(ValueError, match="no rows"):
        clip.compute()


# -----------------------------------------------------------------------------------------
# CLIP-S and RefCLIP-S by hand

def test_clip_s_by_hand_with_a_negative_cosine_clipped():
    images = np.array([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    captions = np.array([[2.0, 0.0], [-1.0, 1.0], [4.0, 3.0]])  # cosines 1, -1/sqrt(2), 24/25
    np.testing.assert_allclose(scoring.clip_s(images, captions), [2.5, 0.0, 2.5 * 0.96], rtol=1e-12)
    np.testing.assert_allclose(scoring.clip_s(images, captions, w=1.0), [1.0, 0.0, 0.96], rtol=1e-12)
    with pytest.raises(ValueError, match="all-zero"):
        scoring.clip_s(np.zeros((1, 2)), captions[:1])


def test_refclip_s_by_hand():
    images = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    captions = np.array([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    references = np.array([[0.0, 1.0], [1.0, 2.0], [1.0, 0.0], [-1.0, 0.0]])
    ref_index = np.array([0, 0, 1, 2])
    # row 0: CLIP-S a = 2.5 cos([1,0],[1,1]) = 2.5/sqrt(2); best reference cosine
    #        b = max(cos([1,1],[0,1]), cos([1,1],[1,2])) = max(1/sqrt(2), 3/sqrt(10)) = 3/sqrt(10)
    a, b = 2.5 / np.sqrt(2), 3 / np.sqrt(10)
    # row 1: a = 2.5 cos([0,1],[1,0]) = 0 -> 0 (reference cosine 1); row 2: a = 2.5, reference
    # cosine -1 clipped to b = 0 -> 0
    np.testing.assert_allclose(scoring.refclip_s(images, captions, references, ref_index),
                               [2 * a * b / (a + b), 0.0, 0.0], rtol=1e-12)
    assert 2 * a * b / (a + b) == pytest.approx(1.234737, abs=1e-6)
    with pytest.raises(ValueError, match="2 of 3 rows have no reference"):
        scoring.refclip_s(images, captions, references[:2], ref_index[:2])
    with pytest.raises(ValueError, match=r"ref_index must be in \[0, 3\)"):
        scoring.refclip_s(images, captions, references, np.array([0, 1, 2, 3]))


# -----------------------------------------------------------------------------------------
# agreement with humans, by hand

def test_kendall_tau_b_and_c_with_ties_by_hand():
    metric, human = [1, 2, 2, 3, 5], [2, 1, 3, 3, 4]
    # 10 pairs: (0,1) discordant; (1,2) tied in metric only; (2,3) tied in human only; the other
    # 7 concordant. tau-b = (7 - 1) / sqrt((10 - 1)(10 - 1)) = 2/3.
    # tau-c = 2 (7 - 1) / (n^2 (m - 1)/m), n = 5, m = min(4 distinct, 4 distinct) = 4: 12 / 18.75 = 0.64
    assert scoring.kendall_tau(metric, human) == pytest.approx(2 / 3, abs=1e-12)
    assert scoring.kendall_tau(metric, human, variant="c") == pytest.approx(0.64, abs=1e-12)
    assert scoring.kendall_tau(metric, human, "c") == pytest.approx(stats.kendalltau(metric, human, variant="c").statistic)
    with pytest.raises(ValueError, match="NaN"):
        scoring.kendall_tau([1, np.nan, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="constant"):
        scoring.kendall_tau([1, 1, 1], [1, 2, 3])


def test_pairwise_accuracy_counts_a_metric_tie_as_half():
    # metric prefers a, b, (tie), b; humans a, a, b, b -> 1 + 0 + 1/2 + 1 = 2.5 of 4
    acc = scoring.pairwise_accuracy([0.9, 0.2, 0.5, 0.7], [0.1, 0.4, 0.5, 0.8], [True, True, False, False])
    assert acc == 0.625


def test_roc_auc_by_hand():
    # pairs correct > foil: 0.9 > both, 0.8 > both, 0.4 > 0.3 only: 5 of 6
    assert scoring.roc_auc([0.9, 0.8, 0.4], [0.5, 0.3]) == pytest.approx(5 / 6, abs=1e-12)
    assert scoring.roc_auc([0.5, 1.0], [0.5]) == pytest.approx(0.75)  # a tie counts 1/2


# -----------------------------------------------------------------------------------------
# the shapes demo: true first captions against their foils (one colour or shape word swapped)

@pytest.fixture(scope="module")
def demo(tmp_path_factory, one_torch_thread):
    """200 scenes embedded with the builtin model (128-d): images, all 800 captions with their
    owners, first captions and foils (made from the first caption in this seeded set)."""
    from conftest import embedded_demo
    from mmviz.embed import encode_texts
    from mmviz.models import load_model

    ds, emb = embedded_demo(tmp_path_factory.mktemp("scoring-demo"), n=200)
    table = ds.table()
    assert list(table["id"]) == emb.ids and table["foil"].notna().all()
    foils = encode_texts(load_model("builtin:shapes"), list(table["foil"]))
    return emb.image, emb.text, emb.text_owner, emb.paired_text, foils


def test_pmi_and_clip_s_rank_true_captions_above_foils(demo):
    image, text, owner, first, foils = demo
    assert image.shape == (200, 128) and text.shape == (800, 128)
    # references: all (image, caption) pairs, N = 800 > 256, but the features span fewer
    # dimensions than they have (see the next test), so they need shrinking
    with pytest.warns(RegularisedWarning, match="N = 800 references"):
        g = GaussianReference(shrink="always").fit(image[owner], text)
    auc_pmi = scoring.roc_auc(g.pmi(image, first), g.pmi(image, foils))  # measured 0.998
    auc_clip = scoring.roc_auc(scoring.clip_s(image, first), scoring.clip_s(image, foils))  # measured 0.960
    assert auc_pmi > 0.9 and auc_clip > 0.85, (auc_pmi, auc_clip)
    assert g.mid(image, first) > g.mid(image, foils) + 20  # measured 27.4 against -27.4
    # references without the scored captions (captions 2-4 of each image): measured 0.988
    rest = np.setdiff1d(np.arange(len(text)), np.unique(owner, return_index=True)[1])
    with pytest.warns(RegularisedWarning):
        held_out = GaussianReference(shrink="always").fit(image[owner[rest]], text[rest])
    assert scoring.roc_auc(held_out.pmi(image, first), held_out.pmi(image, foils)) > 0.9


def test_builtin_features_are_degenerate_without_shrinking(demo):
    """The builtin model's 200 images span ~127 of 128 dimensions (one eigenvalue ~1e-14 of the
    largest) and its captions 64: at N = 800 > 256 shrink='never' says the references are
    degenerate instead of returning numbers dominated by rounding, and 'auto' shrinks."""
    image, text, owner, first, foils = demo
    with pytest.raises(ValueError, match=r"covariance of x \(128-d, from 800 references\) is singular"):
        GaussianReference(shrink="never").fit(image[owner], text)
    with pytest.warns(RegularisedWarning, match="N = 800 references.*span fewer dimensions"):
        g = GaussianReference().fit(image[owner], text)
    assert g.regularised_ and g.eps_used_ == 1e-3
    assert scoring.roc_auc(g.pmi(image, first), g.pmi(image, foils)) > 0.9


def test_pmi_on_the_auto_regularised_path_still_ranks_true_captions_above_foils(demo):
    image, _, _, first, foils = demo
    with pytest.warns(RegularisedWarning, match="N = 120 references"):  # 120 <= 128 + 128
        g = GaussianReference().fit(image[:120], first[:120])
    assert g.regularised_
    auc = scoring.roc_auc(g.pmi(image, first), g.pmi(image, foils))  # measured 0.949 (80 images unseen)
    assert auc > 0.85, auc
