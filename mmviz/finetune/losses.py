"""Fine-tuning losses for CLIP-style dual encoders, in torch and differentiable.

Every function takes the embeddings of one GLOBAL batch (already all-gathered when training is
distributed, see distributed.py): images I and texts T, (B, D) L2-normalised rows, pair i =
(I_i, T_i), and s the logit scale, the multiplier 1/temperature (already exponentiated).
CE(Z) below is the mean over rows i of -log softmax(Z_i)_i.

- info_nce (CLIP; Radford et al., "Learning Transferable Visual Models From Natural Language
  Supervision", ICML 2021), the symmetric InfoNCE:

      L_clip = 1/2 [ CE(s I T^T) + CE(s T I^T) ]

- m2_mix (Oh et al., "Geodesic Multi-Modal Mixup for Robust Fine-Tuning", NeurIPS 2023): hard
  negatives made by mixing each pair on the sphere, m_j = slerp(I_j, T_j, lam), which replace
  the other modality's negatives while the positive stays the real pair:

      L_m2 = -1/(2B) sum_i [ log e^{s I_i.T_i} / (e^{s I_i.T_i} + sum_{j!=i} e^{s I_i.m_j})
                           + log e^{s T_i.I_i} / (e^{s T_i.I_i} + sum_{j!=i} e^{s T_i.m_j}) ]

  On gapped data m_j sits between the modalities, closer to either anchor than the other
  modality is, so these negatives are harder (transforms.mixed_negative_cosines measures it).

- unimodal_mix (the same paper's uni-modal mixes, V-Mix and L-Mix): mixup within one modality
  with soft targets, X~_i = slerp(X_i, X_perm(i), lam), the target of X~_i being lam on its own
  partner and 1 - lam on perm(i)'s (see unimodal_mix for how this follows the paper's code).

- embedding_noise (C3; Zhang et al., "Connect, Collapse, Corrupt: Learning Cross-Modal Tasks
  with Uni-Modal Data", ICLR 2024): x + N(0, sigma^2 I), re-normalised, during training.

FinetuneLoss combines them as configured by LossConfig; random draws (noise, lam) come from a
torch.Generator so that every process of a distributed run draws the same ones.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from . import UNIMODAL
from .config import LossConfig  # here too: the losses are configured by it

EPS = 1e-12
MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(log-scale) here: temperature never below 0.01


# ----------------------------------------------------------------------------------------
# geodesic mixup


def _orthogonal(a):
    """A unit vector orthogonal to each unit row of a: the coordinate axis least aligned with
    the row minus its projection on it (the same fixed choice as transforms._orthogonal)."""
    axis = torch.zeros_like(a).scatter_(-1, a.abs().argmin(-1, keepdim=True), 1.0)
    return F.normalize(axis - (axis * a).sum(-1, keepdim=True) * a, dim=-1, eps=EPS)


def slerp(a, b, lam):
    """Geodesic mixup, the torch twin of transforms.slerp:

        slerp(a, b, lam) = sin(lam theta) / sin(theta) a + sin((1 - lam) theta) / sin(theta) b,
        theta = arccos(a . b),

    so lam = 1 gives a and lam = 0 gives b. a, b (B, D) unit rows (taken as given); lam a
    number or a (B,) tensor. Computed as cos(phi) a + sin(phi) e, phi = (1 - lam) theta, e the
    unit direction of b's part orthogonal to a: always unit and never NaN, also in the
    gradient. For a = b it returns a; for antipodal rows it turns through a fixed direction
    orthogonal to a.
    """
    lam = torch.as_tensor(lam, dtype=a.dtype, device=a.device)
    dot = (a * b).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    ortho = b - dot * a
    size = ortho.norm(dim=-1, keepdim=True)
    theta = torch.atan2(size, dot)
    # equal rows (theta ~ 0, e unused) or antipodal ones (any orthogonal direction will do)
    e = torch.where(size > 1e-9, ortho / size.clamp_min(EPS), _orthogonal(a))
    phi = (1.0 - lam[..., None]) * theta
    return F.normalize(torch.cos(phi) * a + torch.sin(phi) * e, dim=-1, eps=EPS)


# ----------------------------------------------------------------------------------------
# the loss terms


def _same_with_diagonal(same, n: int, device):
    """(n, n) bool: True where captions i and j are the same text; a caption is always the same
    as itself. None means every caption is distinct."""
    eye = torch.eye(n, dtype=torch.bool, device=device)
    return eye if same is None else same.to(device=device, dtype=torch.bool) | eye


def _positive_share(same, n: int, device, dtype):
    """Soft targets: each row spreads 1 evenly over the captions that are the same text."""
    share = _same_with_diagonal(same, n, device).to(dtype)
    return share / share.sum(1, keepdim=True)


def info_nce(images, texts, logit_scale, same=None):
    """Symmetric InfoNCE of CLIP, 1/2 [CE(s I T^T) + CE(s T I^T)]. images, texts (B, D)
    L2-normalised; logit_scale a scalar (1/temperature, already exponentiated). same: optional
    (B, B) bool, True where captions i and j are the same text: then all of them are positives
    with equal weight (soft targets): a small world repeats captions like "a red circle" within
    a batch, and they are not negatives of each other (the builtin model is trained with this
    too). Returns the mean of the image->text and text->image cross-entropies."""
    logits = logit_scale * images @ texts.T
    if same is None:
        target = torch.arange(len(images), device=images.device)
    else:
        target = _positive_share(same, len(images), images.device, logits.dtype)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2  # target is symmetric


def m2_mix(images, texts, lam, logit_scale, same=None):
    """m2-mix term (Oh et al., NeurIPS 2023). m_j = slerp(I_j, T_j, lam_j) (lam a number or
    (B,)). Image row i: positive s cos(I_i, T_i) at column i, negatives s cos(I_i, m_j), j != i;
    text row i: positive s cos(T_i, I_i), negatives s cos(T_i, m_j), j != i. Cross-entropy with
    the diagonal as target, mean of both sides. Where same[i, j] (j != i) column j is dropped
    from row i's denominator: a mix of the same caption is not a negative.

    The paper's code (changdaeoh/multimodal-mixup, main.py) builds the same matrices, with one
    lam per batch; with its --sep_scale the whole term (positives too) uses its own fixed
    temperature, which is what LossConfig.m2_temperature does."""
    n = len(images)
    mixed = slerp(images, texts, lam)
    eye = torch.eye(n, dtype=torch.bool, device=images.device)
    not_negative = _same_with_diagonal(same, n, images.device) & ~eye
    paired = logit_scale * (images * texts).sum(-1)
    target = torch.arange(n, device=images.device)

    def side(anchors):
        logits = torch.where(eye, paired[:, None], logit_scale * anchors @ mixed.T)
        return F.cross_entropy(logits.masked_fill(not_negative, float("-inf")), target)

    return (side(images) + side(texts)) / 2


def _mixup_term(mixed, others, lam, perm, same, logit_scale):
    """Mixup with soft targets: rows mixed_i = slerp(x_i, x_perm(i), lam_i) against the other
    modality's embeddings `others`, target lam_i on i's partner(s) and 1 - lam_i on perm(i)'s,
    both directions (others as anchors: the targets' columns, normalised to sum to 1, a no-op
    when lam is one number)."""
    n = len(mixed)
    lam = torch.as_tensor(lam, dtype=mixed.dtype, device=mixed.device).expand(n)[:, None]
    share = _positive_share(same, n, mixed.device, mixed.dtype)
    target = lam * share + (1 - lam) * share[perm]
    logits = logit_scale * mixed @ others.T
    target_back = target.T / target.T.sum(1, keepdim=True).clamp_min(EPS)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target_back)) / 2


def unimodal_mix(images, texts, lam, logit_scale, which="image", perm=None, same=None):
    """Uni-modal geodesic mixes of the m2-mix paper (its V-Mix and L-Mix; lam ~ Beta(2, 2) by
    default in LossConfig). perm defaults to a roll by one (j -> j + 1 mod B).

    which="image": I~_i = slerp(I_i, I_perm(i), lam_i), scored against every text, s cos(I~_i,
    T_j); the target of row i is lam_i on T_i and 1 - lam_i on T_perm(i) (mixup's mixed label),
    and symmetrically each text's target spreads over the mixes that contain its image. Loss =
    1/2 [CE(s I~ T^T, Y) + CE(s T I~^T, Y^T)], Y_ij = lam_i [j = i] + (1 - lam_i) [j = perm(i)].
    which="text": the same with T~_i = slerp(T_i, T_perm(i), lam_i) against the images.
    which="both": the mean of the two, with the same lam.
    With `same`, Y spreads lam_i over the captions equal to caption i and 1 - lam_i over those
    equal to caption perm(i).

    How this follows the paper: its code (changdaeoh/multimodal-mixup, main.py, --vmix and
    --lmix, with calc_mix_loss) mixes within a modality and trains the mix as a partial positive
    of both partners with soft targets lam I + (1 - lam) flip(I), both directions (clip_loss); it
    does not use uni-modal mixes as hard negatives. Differences: the paper pairs i with B-1-i
    (flip, pass perm=torch.arange(B).flip(0) for it) while we roll by one, which in a shuffled
    batch is the same in distribution and has no fixed point for odd B; its L-Mix matrix is the
    transpose of ours, which for the flip pairing gives the same loss; it draws one lam per
    batch (so do we in FinetuneLoss), and weights V-Mix and L-Mix separately (we average); its
    public m3-mix script draws that lam from Beta(0.5, 0.5) (--betavariate), set
    LossConfig.unimodal_alpha=0.5 to match."""
    if which not in UNIMODAL[1:]:
        raise ValueError(f"which must be one of {UNIMODAL[1:]}, got {which!r}")
    n = len(images)
    perm = torch.roll(torch.arange(n, device=images.device), -1) if perm is None else torch.as_tensor(perm)
    if perm.shape != (n,):
        raise ValueError(f"perm must be a permutation of {n} indices, got shape {tuple(perm.shape)}")
    terms = []
    if which in ("image", "both"):
        terms.append(_mixup_term(slerp(images, images[perm], lam), texts, lam, perm, same, logit_scale))
    if which in ("text", "both"):
        terms.append(_mixup_term(slerp(texts, texts[perm], lam), images, lam, perm, same, logit_scale))
    return sum(terms) / len(terms)


def embedding_noise(x, sigma, generator=None, renormalise=True):
    """C3's corrupt during training: x + N(0, sigma^2 I), the noise drawn from `generator`
    (a CPU generator for a CUDA x is fine: the noise is moved), re-normalised by default.
    sigma = 0 returns x itself (the same object)."""
    if sigma == 0:
        return x
    draw_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, dtype=draw_dtype, device=device).to(x)
    noisy = x + sigma * noise
    return F.normalize(noisy, dim=-1, eps=EPS) if renormalise else noisy


def _beta(alpha: float, generator=None) -> float:
    """One lam ~ Beta(alpha, alpha), reproducible from a torch.Generator: torch's Beta sampler
    takes no generator, so the generator gives a 62-bit seed for numpy's beta."""
    device = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(2**62, (1,), generator=generator, device=device))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def logit_scale_param(temperature: float | None, init: float = 1 / 0.07, learnable: bool = True):
    """The log of the logit scale, CLIP's convention: the caller uses
    logit_scale = param.exp().clamp(max=MAX_LOGIT_SCALE).

    temperature None: starts at log(init) (CLIP's 1/0.07), a torch.nn.Parameter to train with
    the towers when learnable, else a plain tensor. temperature tau: a fixed tensor log(1/tau)
    (never learned, `learnable` is ignored), e.g. the paper's tau = 0.01."""
    if temperature is not None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        return torch.tensor(math.log(1.0 / temperature))
    log_scale = torch.tensor(math.log(init))
    return torch.nn.Parameter(log_scale) if learnable else log_scale


# ----------------------------------------------------------------------------------------
# the configured total


class FinetuneLoss(torch.nn.Module):
    """Total loss = info_nce + [m2mix] w_e * m2_mix + [unimodal] unimodal_weight * unimodal_mix,
    all on the embeddings after the optional C3 noise; w_e = m2_weight * m2_decay**epoch.

    Random draws, in this order, all from `generator` (the global torch RNG when None): the
    noise on images, then on texts (each only if configured), then one m2-mix lam, then one
    uni-modal lam (one lam per batch, as in the paper's code). The same generator state gives
    the same loss, so every process of a distributed run, holding the same gathered batch and
    a generator seeded alike, computes the same loss."""

    def __init__(self, config: LossConfig):
        super().__init__()
        self.config = config

    def forward(self, images, texts, logit_scale, same=None, epoch=0, generator=None):
        """images, texts (B, D) L2-normalised, the GLOBAL batch. Returns (loss, parts), parts
        the floats "loss", "clip", and when active "m2mix", "m2_weight", "unimodal"."""
        cfg = self.config
        if "image" in cfg.noise_modalities:
            images = embedding_noise(images, cfg.noise, generator)
        if "text" in cfg.noise_modalities:
            texts = embedding_noise(texts, cfg.noise, generator)
        clip = info_nce(images, texts, logit_scale, same)
        loss, parts = clip, {"clip": clip.item()}
        if cfg.loss == "m2mix":
            weight = cfg.m2_weight * cfg.m2_decay ** epoch
            m2_scale = logit_scale if cfg.m2_temperature is None else 1.0 / cfg.m2_temperature
            m2 = m2_mix(images, texts, _beta(cfg.m2_alpha, generator), m2_scale, same)
            loss = loss + weight * m2
            parts.update(m2mix=m2.item(), m2_weight=weight)
        if cfg.unimodal != "none":
            uni = unimodal_mix(images, texts, _beta(cfg.unimodal_alpha, generator), logit_scale,
                               which=cfg.unimodal, same=same)
            loss = loss + cfg.unimodal_weight * uni
            parts["unimodal"] = uni.item()
        parts["loss"] = loss.item()
        return loss, parts
