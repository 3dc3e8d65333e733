"""What the decoder is conditioned on, per variant: C3's connect, collapse and corrupt.

The decoder learns from text embeddings and is then given image embeddings (connect). The two
sit apart on the sphere (the modality gap), so:
- c1 (connect): train on t, caption from i.
- collapse: train on norm(t - mean_t), caption from norm(i - mean_i): each modality's mean
  removed, the constant part of the gap gone. mean_t is the training captions' mean and mean_i
  the training images' (or, for a text-only set, the mean of the images being captioned).
- corrupt: train on norm(t + n), n ~ N(0, sigma^2 I), caption from i: the decoder learns to
  read a neighbourhood of each text, wide enough to hold the image's embedding.
- c3: both, collapse then corrupt.
- paired: train on the caption's own image embedding, caption from i: the oracle, which sees
  the inference modality in training.

Noise convention: sigma^2 = 0.016 is a variance per coordinate, as in CapDec's code and C3
(`mmviz.transforms.C3_SIGMA`), not a total. The noise's norm therefore grows as
sqrt(0.016 d): about 1.43 for the builtin model's 128-d vectors and 2.86 for ViT-B/32's 512,
which is what those papers trained with; a total-variance convention would shrink it to 0.13
at every d, too little to cover a gap of length 0.5 to 1.
"""
from __future__ import annotations

import torch

from ..transforms import C3_SIGMA

VARIANTS = ("c1", "collapse", "corrupt", "c3", "paired")
LABELS = {"c1": "connect (C1)", "collapse": "collapse", "corrupt": "corrupt", "c3": "C3 (collapse + corrupt)",
          "paired": "paired (oracle)"}
NOISE_VARIANCE = C3_SIGMA ** 2


def check(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown captioner variant {variant!r}: use one of {', '.join(VARIANTS)}")
    return variant


def collapses(variant: str) -> bool:
    return variant in ("collapse", "c3")


def corrupts(variant: str) -> bool:
    return variant in ("corrupt", "c3")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def training_input(variant: str, texts: torch.Tensor, images: torch.Tensor | None, text_mean: torch.Tensor,
                   noise_variance: float = NOISE_VARIANCE, generator: torch.Generator | None = None) -> torch.Tensor:
    """What the decoder reads in training for a batch: texts (B, d) are the captions' vectors,
    images (B, d) their images' (needed by "paired" only)."""
    if variant == "paired":
        if images is None:
            raise ValueError("the paired variant trains on image embeddings: the set has none")
        return _unit(images)
    x = _unit(texts - text_mean) if collapses(variant) else _unit(texts)
    if corrupts(variant):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype) * noise_variance ** 0.5
        x = _unit(x + noise.to(x.device))
    return x


def inference_input(variant: str, images: torch.Tensor, image_mean: torch.Tensor | None) -> torch.Tensor:
    """What the decoder reads to caption images (N, d)."""
    if collapses(variant):
        mean = image_mean if image_mean is not None else images.mean(0)
        return _unit(images - mean)
    return _unit(images)
