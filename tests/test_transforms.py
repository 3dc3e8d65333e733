"""Collapse, Corrupt, Shift and slerp: limits, invariances and hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from mmviz import geometry
from mmviz.transforms import (C3_SIGMA, Collapse, Corrupt, Shift, beta_ratios, evaluate, linear_mix, make,
                              metric_table, mixed_negative_cosines, slerp)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def gapped(n=400, d=32, gap=0.8, seed=0, m=None):
    """Unit images and texts, each modality in its own cone: paired rows share a concept."""
    rng = np.random.default_rng(seed)
    mu = unit(rng.normal(size=d))
    concept = rng.normal(size=(n, d)) / np.sqrt(d)
    images = unit(concept + gap * mu + 0.3 * rng.normal(size=(n, d)) / np.sqrt(d))
    texts = unit(concept - gap * mu + 0.3 * rng.normal(size=(n, d)) / np.sqrt(d))
    return images.astype(np.float32), texts.astype(np.float32)


# ------------------------------------------------------------------------- Collapse

def test_collapse_closes_the_gap():
    im, tx = gapped()
    assert geometry.gap_length(im, tx) > 0.8
    ci, ct = Collapse().fit_transform(im, tx)
    assert geometry.gap_length(ci, ct) < 0.05
    np.testing.assert_allclose(np.linalg.norm(ci, axis=1), 1, atol=1e-6)
    assert ci.dtype == np.float32


def test_collapse_without_renormalising_removes_the_means_exactly_and_is_idempotent():
    im, tx = gapped()
    ci, ct = Collapse(renormalise=False).fit_transform(im, tx)
    np.testing.assert_allclose(ci.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(ct.mean(0), 0, atol=1e-6)
    again = Collapse(renormalise=False).fit_transform(ci, ct)
    np.testing.assert_allclose(again[0], ci, atol=1e-6)
    np.testing.assert_allclose(again[1], ct, atol=1e-6)


def test_collapse_renormalised_is_idempotent_to_within_the_leftover_mean():
    im, tx = gapped()
    once = Collapse().fit_transform(im, tx)
    twice = Collapse().fit_transform(*once)
    assert np.abs(twice[0] - once[0]).max() < 0.05
    assert geometry.gap_length(*twice) <= geometry.gap_length(*once) + 1e-6


def test_collapse_applies_the_fitted_means_to_new_points():
    im, tx = gapped()
    c = Collapse(renormalise=False).fit(im[:200], tx[:200])
    new_i, new_t = c.transform(im[200:], tx[200:])
    np.testing.assert_allclose(new_i, im[200:] - im[:200].mean(0), atol=1e-6)
    np.testing.assert_allclose(new_t, tx[200:] - tx[:200].mean(0), atol=1e-6)


def test_partial_collapse_closes_the_gap_in_proportion():
    im, tx = gapped()
    np.testing.assert_allclose(Collapse(strength=0).fit_transform(im, tx)[0], im, atol=1e-6)
    half_i, half_t = Collapse(strength=0.5, renormalise=False).fit_transform(im, tx)
    np.testing.assert_allclose(half_i.mean(0) - half_t.mean(0), 0.5 * (im.mean(0) - tx.mean(0)), atol=1e-6)
    gaps = [geometry.gap_length(*Collapse(strength=s).fit_transform(im, tx)) for s in (0, 0.25, 0.5, 0.75, 1)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 0.05
    with pytest.raises(ValueError, match="strength"):
        Collapse(strength=1.5)


def test_collapse_takes_different_numbers_of_images_and_captions():
    im, tx = gapped()
    ci, ct = Collapse().fit_transform(im[:100], tx)
    assert ci.shape == (100, 32) and ct.shape == (400, 32)


def test_collapse_hand_example():
    # Images (1,0),(0,1): mean (.5,.5); texts (-1,0),(-1,0): mean (-1,0).
    ci, ct = Collapse(renormalise=False).fit_transform(np.array([[1.0, 0], [0, 1]]), np.array([[-1.0, 0], [-1, 0]]))
    np.testing.assert_allclose(ci, [[0.5, -0.5], [-0.5, 0.5]])
    np.testing.assert_allclose(ct, 0)
    ci, ct = Collapse().fit_transform(np.array([[1.0, 0], [0, 1]]), np.array([[-1.0, 0], [-1, 0]]))
    np.testing.assert_allclose(ci, [[2 ** -0.5, -2 ** -0.5], [-2 ** -0.5, 2 ** -0.5]])
    np.testing.assert_array_equal(ct, 0)  # nothing left: zero rows stay zero, never NaN


def test_errors_are_clear():
    with pytest.raises(RuntimeError, match="not fitted"):
        Collapse().transform(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="3-d but texts are 4-d"):
        Collapse().fit(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="fitted on 3-d"):
        Collapse().fit(np.ones((2, 3)), np.ones((2, 3))).transform(np.ones((2, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        Collapse().fit(np.full((2, 3), np.nan), np.ones((2, 3)))
    with pytest.raises(ValueError, match="sigma"):
        Corrupt(sigma=-1)


# ------------------------------------------------------------------------- Corrupt

def test_corrupt_with_zero_sigma_is_the_identity():
    rng = np.random.default_rng(0)
    im, tx = rng.normal(size=(5, 4)), rng.normal(size=(7, 4))  # not unit: still untouched
    ci, ct = Corrupt(sigma=0).fit_transform(im, tx)
    np.testing.assert_array_equal(ci, im)
    np.testing.assert_array_equal(ct, tx)


def test_corrupt_noise_is_seeded_and_has_the_asked_size():
    im, tx = gapped(n=2000, d=64)
    a = Corrupt(sigma=0.1, seed=3, renormalise=False).fit_transform(im, tx)
    b = Corrupt(sigma=0.1, seed=3, renormalise=False).fit_transform(im, tx)
    c = Corrupt(sigma=0.1, seed=4, renormalise=False).fit_transform(im, tx)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[0], c[0])
    noise = np.concatenate([(a[0] - im).ravel(), (a[1] - tx).ravel()])
    assert abs(noise.std() - 0.1) < 0.002 and abs(noise.mean()) < 0.002
    assert abs(C3_SIGMA ** 2 - 0.016) < 1e-12


def test_corrupt_renormalises_and_lowers_paired_cosine():
    im, tx = gapped(n=500, d=64)
    ci, ct = Corrupt(sigma=0.3, seed=0).fit_transform(im, tx)
    np.testing.assert_allclose(np.linalg.norm(ci, axis=1), 1, atol=1e-5)
    assert geometry.paired_cosines(ci, ct).mean() < geometry.paired_cosines(im, tx).mean() - 0.1


def test_corrupt_one_modality_only():
    im, tx = gapped()
    ci, ct = Corrupt(sigma=0.2, modalities=("text",)).fit_transform(im, tx)
    np.testing.assert_allclose(ci, im, atol=1e-6)  # re-normalised unit rows: unchanged
    assert not np.allclose(ct, tx)


# ------------------------------------------------------------------------- Shift

def test_shift_by_the_gap_length_brings_the_centres_together():
    im, tx = gapped()
    s = Shift(0).fit(im, tx)
    before = geometry.gap_length(im, tx)
    assert s.gap_length_ == pytest.approx(before, rel=1e-5)
    si, st = Shift(before).fit_transform(im, tx)
    assert geometry.gap_length(si, st) < 0.25 * before
    raw_i, raw_t = Shift(before, renormalise=False).fit_transform(im, tx)
    np.testing.assert_allclose(raw_i.mean(0), raw_t.mean(0), atol=1e-5)  # before re-normalising: they meet


def test_negative_shift_widens_the_gap_and_zero_is_identity():
    im, tx = gapped(gap=0.3)
    before = geometry.gap_length(im, tx)
    assert geometry.gap_length(*Shift(-0.5).fit_transform(im, tx)) > before + 0.1
    zi, zt = Shift(0).fit_transform(im, tx)
    np.testing.assert_allclose(zi, im, atol=1e-6)
    np.testing.assert_allclose(zt, tx, atol=1e-6)


def test_shift_hand_example():
    # Image mean (0, 1), text mean (0, -1): gap direction (0, 1). lam = 1 moves images by -0.5
    # and texts by +0.5 along it.
    si, st = Shift(1.0, renormalise=False).fit_transform(np.array([[0.0, 1]]), np.array([[0.0, -1]]))
    np.testing.assert_allclose(si, [[0, 0.5]])
    np.testing.assert_allclose(st, [[0, -0.5]])


# ------------------------------------------------------------------------- slerp

def random_pairs(n=200, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return unit(rng.normal(size=(n, d))), unit(rng.normal(size=(n, d)))


def test_slerp_stays_on_the_sphere_and_hits_both_ends():
    a, b = random_pairs()
    lam = np.random.default_rng(1).uniform(size=len(a))
    np.testing.assert_allclose(np.linalg.norm(slerp(a, b, lam), axis=1), 1, atol=1e-12)
    np.testing.assert_allclose(slerp(a, b, 1.0), a, atol=1e-12)
    np.testing.assert_allclose(slerp(a, b, 0.0), b, atol=1e-12)


def test_slerp_is_symmetric():
    a, b = random_pairs()
    lam = np.random.default_rng(2).uniform(size=len(a))
    np.testing.assert_allclose(slerp(a, b, lam), slerp(b, a, 1 - lam), atol=1e-12)


def test_slerp_matches_the_sine_formula_and_splits_the_angle():
    a, b = random_pairs()
    lam = 0.3
    theta = np.arccos(np.clip((a * b).sum(1, keepdims=True), -1, 1))
    formula = (np.sin(lam * theta) * a + np.sin((1 - lam) * theta) * b) / np.sin(theta)
    m = slerp(a, b, lam)
    np.testing.assert_allclose(m, formula, atol=1e-10)
    # Angles: (1 - lam) theta from a, lam theta from b.
    np.testing.assert_allclose(np.arccos(np.clip((m * a).sum(1), -1, 1)), (1 - lam) * theta[:, 0], atol=1e-6)
    np.testing.assert_allclose(np.arccos(np.clip((m * b).sum(1), -1, 1)), lam * theta[:, 0], atol=1e-6)


def test_slerp_hand_example():
    # A quarter circle from e2 to e1: lam = 1/3 sits 60 degrees from e1 (a), 30 from e2 (b).
    m = slerp([1.0, 0], [0.0, 1], 1 / 3)
    np.testing.assert_allclose(m, [np.cos(np.pi / 3), np.sin(np.pi / 3)], atol=1e-12)


def test_slerp_equals_normalised_linear_mix_for_tiny_angles():
    a, _ = random_pairs(n=50)
    rng = np.random.default_rng(3)
    b = unit(a + 1e-6 * rng.normal(size=a.shape))
    lam = rng.uniform(size=len(a))
    np.testing.assert_allclose(slerp(a, b, lam), linear_mix(a, b, lam), atol=1e-12)


def test_slerp_never_returns_nan():
    a, _ = random_pairs(n=20)
    for b in (a, -a, unit(-a + 1e-9), unit(a + 1e-15)):
        for lam in (0.0, 0.25, 0.5, 1.0):
            m = slerp(a, b, lam)
            assert np.isfinite(m).all()
            np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1, atol=1e-9)
    np.testing.assert_allclose(slerp(a, a, 0.4), a, atol=1e-12)
    # Antipodal: half-way is orthogonal to both ends, and the ends are still hit.
    half = slerp(a, -a, 0.5)
    np.testing.assert_allclose((half * a).sum(1), 0, atol=1e-9)
    np.testing.assert_allclose(slerp(a, -a, 0.0), -a, atol=1e-9)
    assert np.isfinite(slerp(np.zeros(4), np.ones(4), 0.5)).all()


def test_slerp_path_broadcasts():
    a, b = random_pairs(n=1)
    lams = np.linspace(0, 1, 11)
    path = slerp(a, b, lams)
    assert path.shape == (11, 16)
    np.testing.assert_allclose(path[0], b[0], atol=1e-12)
    np.testing.assert_allclose(path[-1], a[0], atol=1e-12)
    steps = np.arccos(np.clip((path[1:] * path[:-1]).sum(1), -1, 1))
    np.testing.assert_allclose(steps, steps[0], atol=1e-9)  # constant speed along the arc


def test_linear_mix_chord_and_beta_ratios():
    chord = linear_mix([1.0, 0], [0.0, 1], 0.5, renormalise=False)
    np.testing.assert_allclose(chord, [0.5, 0.5])
    assert np.isfinite(linear_mix([1.0, 0], [-1.0, 0], 0.5)).all()
    lam = beta_ratios(20000, alpha=0.5, seed=0)
    assert lam.min() >= 0 and lam.max() <= 1
    assert abs(lam.mean() - 0.5) < 0.01 and abs(lam.var() - 0.125) < 0.005  # Beta(a,a): var 1/(4(2a+1))
    np.testing.assert_array_equal(lam, beta_ratios(20000, alpha=0.5, seed=0))
    assert beta_ratios(20000, alpha=2.0, seed=0).var() == pytest.approx(0.05, abs=0.003)


def test_mixed_negatives_are_harder_on_gapped_data():
    im, tx = gapped(n=300)
    c = mixed_negative_cosines(im, tx, 0.5)
    assert c["image_text"].shape == (300 * 299,) and c["paired"].shape == (300,)
    assert c["image_mixed"].mean() > c["image_text"].mean() + 0.2
    assert c["text_mixed"].mean() > c["text_image"].mean() + 0.2
    # lam = 0: the mix is the text itself, so the image side sees CLIP's negatives exactly.
    c0 = mixed_negative_cosines(im, tx, 0.0)
    np.testing.assert_allclose(c0["image_mixed"], c0["image_text"], atol=1e-6)


# ------------------------------------------------------------------------- factory and judging

def test_make_builds_each_transform_and_rejects_unknown_names():
    assert isinstance(make("collapse"), Collapse)
    assert make("corrupt", sigma=0.2, seed=5).sigma == 0.2
    assert make("shift", lam=0.7).lam == 0.7
    with pytest.raises(ValueError, match="choose from collapse, corrupt, shift"):
        make("whiten")


def test_evaluate_and_metric_table_before_and_after_collapse():
    im, tx = gapped(n=300)
    owner = np.repeat(np.arange(150), 2)  # two captions per image for the first 150 images
    images = im[:150]
    before = evaluate(images, tx, owner)
    assert list(before)[:len(geometry.METRICS)] == list(geometry.METRICS)
    assert before["gap_length"] == pytest.approx(geometry.gap_length(images, tx[::2]), abs=1e-9)
    # Recall over all captions: a hit when either caption of the image is retrieved.
    sims = images @ tx.T
    hits = (owner[np.argsort(-sims, axis=1)[:, :5]] == np.arange(150)[:, None]).any(1).mean()
    assert before["i2t_r5"] == pytest.approx(hits)
    after = evaluate(*Collapse().fit_transform(images, tx), owner)
    table = metric_table(before, after)
    row = table.set_index("key").loc["gap_length"]
    # Fitted on all captions, measured on each image's first: sampling noise of 150 rows remains.
    assert row["after"] < 0.1 < 0.5 < row["before"] and row["change"] == pytest.approx(row["after"] - row["before"])
    assert len(table) == len(geometry.METRICS) + 6
    with pytest.raises(ValueError, match="1 images have no caption"):
        evaluate(im[:151], tx, owner)
