"""The fine-tuning losses against hand-written loop references, their limits, and the config."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmviz import transforms
from mmviz.finetune.losses import (FinetuneLoss, LossConfig, embedding_noise, info_nce, logit_scale_param, m2_mix,
                                   slerp, unimodal_mix)

SCALE = 3.0  # a mild logit scale keeps the loop references' exp() well inside float64


def unit_rows(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def pairs(n=5, d=3, seed=0):
    return unit_rows(n, d, seed), unit_rows(n, d, seed + 100)


def same_captions(labels):
    labels = torch.tensor(labels)
    return labels[:, None] == labels[None, :]


def cos(a, b):
    return float(sum(x * y for x, y in zip(a.tolist(), b.tolist())))


def soft_cross_entropy(scores, weights):
    """-sum_j w_j log softmax(scores)_j, by explicit sums."""
    log_z = math.log(sum(math.exp(s) for s in scores))
    return -sum(w * (s - log_z) for s, w in zip(scores, weights))


def loop_info_nce(images, texts, s, same=None):
    n = len(images)
    eq = [[i == j or (same is not None and bool(same[i, j])) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        weights = [float(eq[i][j]) / sum(eq[i]) for j in range(n)]
        total += soft_cross_entropy([s * cos(images[i], texts[j]) for j in range(n)], weights)
        total += soft_cross_entropy([s * cos(texts[i], images[j]) for j in range(n)], weights)
    return total / (2 * n)


def loop_m2_mix(images, texts, lam, s, same=None):
    """m2-mix by its formula, with the mixes from numpy's transforms.slerp."""
    n = len(images)
    mixed = torch.as_tensor(transforms.slerp(images.numpy(), texts.numpy(), lam))
    total = 0.0
    for anchors in (images, texts):
        for i in range(n):
            positive = math.exp(s * cos(images[i], texts[i]))
            negatives = sum(math.exp(s * cos(anchors[i], mixed[j])) for j in range(n)
                            if j != i and not (same is not None and bool(same[i, j])))
            total += -math.log(positive / (positive + negatives))
    return total / (2 * n)


def loop_unimodal(images, texts, lam, s, which, perm, same=None):
    """Mixup with soft targets by explicit loops; lam a number or one per row."""
    n = len(images)
    lams = [float(lam)] * n if np.ndim(lam) == 0 else [float(v) for v in lam]
    eq = [[i == j or (same is not None and bool(same[i, j])) for j in range(n)] for i in range(n)]
    source, others = (images, texts) if which == "image" else (texts, images)
    mixed = torch.as_tensor(transforms.slerp(source.numpy(), source[perm].numpy(), np.array(lams)))
    # y[i][j]: how much of mix i belongs to partner j
    y = [[lams[i] * eq[i][j] / sum(eq[i]) + (1 - lams[i]) * eq[perm[i]][j] / sum(eq[perm[i]]) for j in range(n)]
         for i in range(n)]
    total = 0.0
    for i in range(n):
        total += soft_cross_entropy([s * cos(mixed[i], others[j]) for j in range(n)], y[i])
        back = [y[j][i] for j in range(n)]  # partner i's share of each mix, scaled to sum to 1
        total += soft_cross_entropy([s * cos(others[i], mixed[j]) for j in range(n)], [w / sum(back) for w in back])
    return total / (2 * n)


# ----------------------------------------------------------------------------------------
# slerp


def test_slerp_matches_numpy_transforms_slerp():
    a, b = pairs(6, 4, seed=1)
    lam = torch.tensor([0.0, 0.1, 0.35, 0.5, 0.9, 1.0], dtype=torch.float64)
    got = slerp(a, b, lam)
    want = transforms.slerp(a.numpy(), b.numpy(), lam.numpy())
    assert np.abs(got.numpy() - want).max() < 1e-10
    assert torch.allclose(got.norm(dim=-1), torch.ones(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(slerp(a, b, 1.0), a, atol=1e-12) and torch.allclose(slerp(a, b, 0.0), b, atol=1e-12)
    scalar = slerp(a, b, 0.3)
    assert np.abs(scalar.numpy() - transforms.slerp(a.numpy(), b.numpy(), 0.3)).max() < 1e-10


def test_slerp_equal_and_antipodal_rows_stay_finite_with_finite_gradients():
    a = unit_rows(3, 4, seed=2)
    b = torch.stack([a[0], -a[1], unit_rows(1, 4, seed=3)[0]]).clone()
    a.requires_grad_(True)
    b.requires_grad_(True)
    lam = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)
    out = slerp(a, b, lam)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], a[0], atol=1e-12)  # a == b returns a
    assert torch.allclose(out.norm(dim=-1), torch.ones(3, dtype=torch.float64), atol=1e-12)
    # antipodal: half way round (lam = 0.5) is orthogonal to both, and numpy agrees on the direction
    assert abs(float(out[1].detach() @ a[1].detach())) < 1e-12
    want = transforms.slerp(a.detach().numpy(), b.detach().numpy(), lam.numpy())
    assert np.abs(out.detach().numpy() - want).max() < 1e-10
    (out * torch.arange(12, dtype=torch.float64).reshape(3, 4)).sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


# ----------------------------------------------------------------------------------------
# info_nce


def test_info_nce_matches_loops():
    images, texts = pairs(5, 3, seed=4)
    got = float(info_nce(images, texts, SCALE))
    assert abs(got - loop_info_nce(images, texts, SCALE)) < 1e-12


def test_info_nce_with_same_captions_matches_loops():
    images, texts = pairs(5, 3, seed=5)
    same = same_captions([0, 1, 0, 2, 1])
    got = float(info_nce(images, texts, torch.tensor(SCALE, dtype=torch.float64), same))
    assert abs(got - loop_info_nce(images, texts, SCALE, same)) < 1e-12
    assert abs(got - float(info_nce(images, texts, SCALE))) > 1e-3  # the soft targets matter


# ----------------------------------------------------------------------------------------
# m2_mix


@pytest.mark.parametrize("lam", [0.3, [0.1, 0.5, 0.9, 0.2]])
def test_m2_mix_matches_loop_reference(lam):
    images, texts = pairs(4, 3, seed=6)
    lam_t = torch.as_tensor(lam, dtype=torch.float64)
    got = float(m2_mix(images, texts, lam_t, SCALE))
    assert abs(got - loop_m2_mix(images, texts, np.asarray(lam), SCALE)) < 1e-12


def test_m2_mix_same_captions_are_not_negatives():
    images, texts = pairs(5, 3, seed=7)
    same = same_captions([0, 1, 0, 2, 1])
    got = float(m2_mix(images, texts, 0.4, SCALE, same))
    assert abs(got - loop_m2_mix(images, texts, 0.4, SCALE, same)) < 1e-12
    assert abs(got - float(m2_mix(images, texts, 0.4, SCALE))) > 1e-3


def test_m2_mix_limits():
    """lam = 0: m_j = T_j, so the image side is CLIP's image side and the text side has
    text-text negatives; lam = 1: m_j = I_j, the mirror image."""
    images, texts = pairs(5, 3, seed=8)
    target = torch.arange(5)
    eye = torch.eye(5, dtype=torch.bool)
    paired = SCALE * (images * texts).sum(-1)

    def with_positive(anchors, negatives):  # diagonal: the real pair; off it: anchors . negatives
        return torch.where(eye, paired[:, None], SCALE * anchors @ negatives.T)

    image_clip = F.cross_entropy(SCALE * images @ texts.T, target)
    text_clip = F.cross_entropy(SCALE * texts @ images.T, target)
    at_zero = (image_clip + F.cross_entropy(with_positive(texts, texts), target)) / 2
    at_one = (F.cross_entropy(with_positive(images, images), target) + text_clip) / 2
    assert abs(float(m2_mix(images, texts, 0.0, SCALE)) - float(at_zero)) < 1e-12
    assert abs(float(m2_mix(images, texts, 1.0, SCALE)) - float(at_one)) < 1e-12


def gapped_pairs(n=64, d=16, gap=2.0, seed=0):
    """Pairs sharing a random direction, images pushed by +c and texts by -c: a modality gap."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, d, generator=g, dtype=torch.float64)
    c = torch.zeros(d, dtype=torch.float64)
    c[0] = gap
    images = F.normalize(shared + c + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    texts = F.normalize(shared - c + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return images, texts


def test_mixed_negatives_are_harder_on_gapped_data():
    images, texts = gapped_pairs()
    lam = 0.5
    mixed = slerp(images, texts, lam)
    off = ~torch.eye(len(images), dtype=torch.bool)
    image_text = (images @ texts.T)[off].mean()
    image_mixed = (images @ mixed.T)[off].mean()
    text_image = (texts @ images.T)[off].mean()
    text_mixed = (texts @ mixed.T)[off].mean()
    # measured (seed 0): image_text = text_image -0.183, image_mixed -0.014, text_mixed 0.014;
    # seeds 0-4 all within 0.01 of these
    assert image_mixed > image_text + 0.1 and text_mixed > text_image + 0.1
    numpy_view = transforms.mixed_negative_cosines(images.numpy(), texts.numpy(), lam)
    assert abs(numpy_view["image_mixed"].mean() - float(image_mixed)) < 1e-10
    # harder negatives, higher loss (measured: m2-mix 1.62 vs CLIP 0.61 at scale 10; seeds 0-4: 1.50-1.68
    # vs 0.49-0.71)
    assert float(m2_mix(images, texts, lam, 10.0)) > float(info_nce(images, texts, 10.0)) + 0.5


# ----------------------------------------------------------------------------------------
# unimodal_mix


@pytest.mark.parametrize("which", ["image", "text"])
@pytest.mark.parametrize("with_same", [False, True])
def test_unimodal_mix_matches_loop_reference(which, with_same):
    images, texts = pairs(5, 3, seed=9)
    same = same_captions([0, 1, 0, 2, 1]) if with_same else None
    roll = [1, 2, 3, 4, 0]
    got = float(unimodal_mix(images, texts, 0.35, SCALE, which=which, same=same))  # default perm: roll by one
    assert abs(got - loop_unimodal(images, texts, 0.35, SCALE, which, roll, same)) < 1e-12
    flip = [4, 3, 2, 1, 0]  # the paper's pairing
    got_flip = float(unimodal_mix(images, texts, 0.35, SCALE, which=which, perm=torch.tensor(flip), same=same))
    assert abs(got_flip - loop_unimodal(images, texts, 0.35, SCALE, which, flip, same)) < 1e-12


def test_unimodal_mix_both_is_the_mean():
    images, texts = pairs(5, 3, seed=10)
    both = unimodal_mix(images, texts, 0.6, SCALE, which="both")
    parts = [unimodal_mix(images, texts, 0.6, SCALE, which=w) for w in ("image", "text")]
    assert abs(float(both) - float(sum(parts) / 2)) < 1e-14
    with pytest.raises(ValueError, match="which"):
        unimodal_mix(images, texts, 0.6, SCALE, which="audio")


@pytest.mark.parametrize("which", ["image", "text"])
def test_unimodal_mix_limits_are_info_nce(which):
    """lam = 1: no mixing, targets the identity: CLIP. lam = 0: mix i is x_perm(i) with target
    perm(i): CLIP with the rows permuted, the same number."""
    images, texts = pairs(5, 3, seed=11)
    same = same_captions([0, 1, 0, 2, 1])
    for s in (None, same):
        clip = float(info_nce(images, texts, SCALE, s))
        assert abs(float(unimodal_mix(images, texts, 1.0, SCALE, which=which, same=s)) - clip) < 1e-12
        assert abs(float(unimodal_mix(images, texts, 0.0, SCALE, which=which, same=s)) - clip) < 1e-12


@pytest.mark.parametrize("which", ["image", "text"])
def test_unimodal_mix_with_a_lam_per_row(which):
    """A lam per row: the backward targets are scaled to sum to 1; equal lams give the scalar form."""
    images, texts = pairs(5, 3, seed=12)
    same = same_captions([0, 1, 0, 2, 1])
    lams = [0.1, 0.9, 0.5, 0.3, 0.7]
    got = float(unimodal_mix(images, texts, torch.tensor(lams, dtype=torch.float64), SCALE, which=which, same=same))
    assert abs(got - loop_unimodal(images, texts, lams, SCALE, which, [1, 2, 3, 4, 0], same)) < 1e-12
    equal = torch.full((5,), 0.3, dtype=torch.float64)
    scalar = float(unimodal_mix(images, texts, 0.3, SCALE, which=which))
    assert abs(float(unimodal_mix(images, texts, equal, SCALE, which=which)) - scalar) < 1e-14


# ----------------------------------------------------------------------------------------
# embedding_noise


def test_embedding_noise_zero_is_identity():
    x = unit_rows(4, 3, seed=13)
    assert embedding_noise(x, 0.0) is x


def test_embedding_noise_statistics_and_reproducibility():
    x = torch.zeros(2000, 50, dtype=torch.float64)
    sigma = 0.2
    noisy = embedding_noise(x, sigma, torch.Generator().manual_seed(0), renormalise=False)
    assert abs(float(noisy.mean())) < 0.005  # 100k draws: standard error 0.0006
    assert abs(float(noisy.std()) - sigma) < 0.005
    again = embedding_noise(x, sigma, torch.Generator().manual_seed(0), renormalise=False)
    other = embedding_noise(x, sigma, torch.Generator().manual_seed(1), renormalise=False)
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)
    y = unit_rows(10, 8, seed=14)
    renormalised = embedding_noise(y, sigma, torch.Generator().manual_seed(0))
    assert torch.allclose(renormalised.norm(dim=-1), torch.ones(10, dtype=torch.float64), atol=1e-12)
    assert not torch.allclose(renormalised, y)


# ----------------------------------------------------------------------------------------
# FinetuneLoss and LossConfig


def test_finetune_loss_clip_equals_info_nce():
    images, texts = pairs(6, 4, seed=15)
    loss, parts = FinetuneLoss(LossConfig())(images, texts, SCALE, generator=torch.Generator().manual_seed(0))
    assert float(loss) == float(info_nce(images, texts, SCALE))
    assert set(parts) == {"loss", "clip"} and parts["loss"] == parts["clip"] == float(loss)


def test_finetune_loss_is_deterministic_given_the_generator():
    images, texts = pairs(6, 4, seed=16)
    fn = FinetuneLoss(LossConfig(loss="m2mix", unimodal="both", noise=0.1, noise_modalities=("image", "text")))

    def run(seed):
        return fn(images, texts, SCALE, generator=torch.Generator().manual_seed(seed))

    (a, pa), (b, pb), (c, _) = run(3), run(3), run(4)
    assert float(a) == float(b) and pa == pb
    assert abs(float(a) - float(c)) > 1e-6
    assert set(pa) == {"loss", "clip", "m2mix", "m2_weight", "unimodal"}
    # without noise a different seed still changes lam, hence the m2-mix term
    quiet = FinetuneLoss(LossConfig(loss="m2mix"))
    la, _ = quiet(images, texts, SCALE, generator=torch.Generator().manual_seed(3))
    lb, _ = quiet(images, texts, SCALE, generator=torch.Generator().manual_seed(4))
    assert abs(float(la) - float(lb)) > 1e-6


def test_finetune_loss_total_is_the_weighted_sum_and_the_m2_weight_decays():
    images, texts = pairs(6, 4, seed=17)
    fn = FinetuneLoss(LossConfig(loss="m2mix", m2_weight=0.5, m2_decay=0.8, unimodal="image", unimodal_weight=0.25,
                                 m2_temperature=0.2))
    for epoch in range(4):
        loss, parts = fn(images, texts, SCALE, epoch=epoch, generator=torch.Generator().manual_seed(0))
        assert parts["m2_weight"] == pytest.approx(0.5 * 0.8 ** epoch, rel=1e-15)
        total = parts["clip"] + parts["m2_weight"] * parts["m2mix"] + 0.25 * parts["unimodal"]
        assert float(loss) == pytest.approx(total, rel=1e-12)


def test_finetune_loss_fixed_m2_temperature_is_used():
    images, texts = pairs(6, 4, seed=18)
    # the same generator seed draws the same lam
    fixed_tau = FinetuneLoss(LossConfig(loss="m2mix", m2_temperature=0.5))
    shared_scale = FinetuneLoss(LossConfig(loss="m2mix"))
    _, fixed = fixed_tau(images, texts, SCALE, generator=torch.Generator().manual_seed(5))
    _, shared = shared_scale(images, texts, 2.0, generator=torch.Generator().manual_seed(5))
    assert fixed["m2mix"] == pytest.approx(shared["m2mix"], rel=1e-12)  # scale 1/0.5 = 2 either way


def test_finetune_loss_gradients_reach_the_inputs():
    base_i, base_t = pairs(6, 4, seed=19)
    images, texts = base_i.clone().requires_grad_(True), base_t.clone().requires_grad_(True)
    log_scale = logit_scale_param(None)
    scale = log_scale.exp().clamp(max=100)
    fn = FinetuneLoss(LossConfig(loss="m2mix", unimodal="both", noise=0.05))
    loss, _ = fn(images, texts, scale, generator=torch.Generator().manual_seed(0))
    loss.backward()
    for grad in (images.grad, texts.grad, log_scale.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_logit_scale_param():
    learnable = logit_scale_param(None)
    assert isinstance(learnable, torch.nn.Parameter)
    assert float(learnable.detach().exp()) == pytest.approx(1 / 0.07)
    frozen = logit_scale_param(None, init=20.0, learnable=False)
    assert not isinstance(frozen, torch.nn.Parameter) and float(frozen.exp()) == pytest.approx(20.0)
    fixed = logit_scale_param(0.01)
    assert not fixed.requires_grad and float(fixed.exp()) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="temperature"):
        logit_scale_param(0.0)


@pytest.mark.parametrize("field, value", [
    ("loss", "triplet"), ("m2_alpha", 0.0), ("m2_weight", -1.0), ("m2_temperature", 0.0), ("m2_decay", 1.5),
    ("unimodal", "audio"), ("unimodal_alpha", -2.0), ("unimodal_weight", float("nan")), ("noise", -0.1),
    ("noise_modalities", ("audio",)), ("noise_modalities", ()),
])
def test_loss_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"LossConfig.{field} must be"):
        LossConfig(**{field: value})


def test_loss_config_accepts_lists_and_a_single_modality():
    assert LossConfig(noise_modalities=["image", "text"]).noise_modalities == ("image", "text")
    assert LossConfig(noise_modalities="image").noise_modalities == ("image",)
