"""What a fine-tuning run does (FinetuneConfig, with the loss's LossConfig), its train and
validation split, and where runs live: everything about a run short of training it.

No torch here, so that listing runs, validating a configuration and creating a run folder
(`mmviz runs`, `mmviz finetune` before it launches, the app's Fine-tune page) load fast.
Training is train.py; the folder's files are mmviz.run_folder."""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ..run_folder import config_from_dict, make_run_folder
from ..store import Workspace, has_image
from . import LOSSES, TRAINABLE, UNIMODAL


@dataclass
class LossConfig:
    """What the loss adds to InfoNCE (losses.py builds FinetuneLoss from it)."""

    loss: str = "clip"  # "clip" or "m2mix"
    m2_alpha: float = 0.5  # lam ~ Beta(alpha, alpha) for the cross-modal mix
    m2_weight: float = 1.0
    m2_temperature: float | None = None  # None: the CLIP logit scale; else a fixed tau (scale 1/tau)
    m2_decay: float = 1.0  # weight at epoch e = m2_weight * m2_decay**e (the paper's --schedule uses 1/(e+1))
    unimodal: str = "none"  # "none" | "image" | "text" | "both"
    unimodal_alpha: float = 2.0
    unimodal_weight: float = 1.0
    noise: float = 0.0  # C3 noise sigma on the embeddings during training
    noise_modalities: tuple[str, ...] = ("text",)  # C3 trains with noisy text; "image" and/or "text"

    def __post_init__(self):
        def check(ok, field, allowed, value):
            if not ok:
                raise ValueError(f"LossConfig.{field} must be {allowed}, got {value!r}")

        check(self.loss in LOSSES, "loss", f"one of {LOSSES}", self.loss)
        check(self.unimodal in UNIMODAL, "unimodal", f"one of {UNIMODAL}", self.unimodal)
        for field in ("m2_alpha", "unimodal_alpha"):
            value = getattr(self, field)
            check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, field, "> 0", value)
        for field in ("m2_weight", "unimodal_weight", "noise"):
            value = getattr(self, field)
            check(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, field, ">= 0", value)
        check(0 <= self.m2_decay <= 1, "m2_decay", "in [0, 1]", self.m2_decay)
        tau = self.m2_temperature
        check(tau is None or (math.isfinite(tau) and tau > 0), "m2_temperature", "None or > 0", tau)
        self.noise_modalities = (self.noise_modalities,) if isinstance(self.noise_modalities, str) \
            else tuple(self.noise_modalities)
        check(len(self.noise_modalities) > 0 and set(self.noise_modalities) <= {"image", "text"},
              "noise_modalities", "a non-empty tuple of 'image' and/or 'text'", self.noise_modalities)


@dataclass
class FinetuneConfig:
    """What a run does. The loss fields are LossConfig's (above)."""

    dataset: str
    model: str = "builtin:shapes"
    loss: str = "clip"  # "clip" (plain InfoNCE) or "m2mix"
    trainable: str = "all"  # "proj" (output projections), "last" (the last `last_blocks` blocks of both towers) or "all"
    last_blocks: int = 1
    steps: int = 200
    batch_size: int = 128  # global: split over the processes of a distributed run
    lr: float = 1e-4
    warmup: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    temperature: float | None = None  # None: train CLIP's logit scale from the model's value; a number fixes it
    seed: int = 0
    val_fraction: float = 0.2  # of the images (with all their captions): the before/after split
    max_val: int = 2000  # at most this many validation images
    eval_every: int = 0  # steps between validation passes; 0 = once per epoch
    checkpoint_every: int = 50
    amp: bool = True  # mixed precision, on CUDA only
    device: str | None = None
    m2_alpha: float = 0.5
    m2_weight: float = 1.0
    m2_temperature: float | None = None
    m2_decay: float = 1.0
    unimodal: str = "none"
    unimodal_alpha: float = 2.0
    unimodal_weight: float = 1.0
    noise: float = 0.0
    noise_modalities: tuple[str, ...] = ("text",)

    def __post_init__(self):
        self.noise_modalities = tuple(self.noise_modalities)
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {', '.join(TRAINABLE)}, got {self.trainable!r}")
        for name in ("steps", "batch_size", "last_blocks", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2: a contrastive loss needs negatives")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (or None to learn it), got {self.temperature}")
        self.loss_config()  # validates the loss fields

    def loss_config(self) -> LossConfig:
        names = {f.name for f in fields(LossConfig)}
        return LossConfig(**{k: v for k, v in asdict(self).items() if k in names})

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        return config_from_dict(cls, d, "fine-tuning")


@dataclass
class Split:
    """Rows of the dataset table used for training and for validation (before/after)."""

    train: np.ndarray
    val: np.ndarray


def split_rows(n: int, val_fraction: float, seed: int, max_val: int) -> Split:
    """A seeded split of n images (each with all its captions) into train and validation."""
    order = np.random.default_rng([seed, 7]).permutation(n)
    n_val = min(max_val, max(1, int(round(n * val_fraction))))
    if n - n_val < 2:
        raise ValueError(f"{n} images are too few to fine-tune on: at least 2 must remain for training "
                         f"after {n_val} for validation")
    return Split(np.sort(order[n_val:]), np.sort(order[:n_val]))


def runs_dir(home: str | os.PathLike | Workspace) -> Path:
    ws = home if isinstance(home, Workspace) else Workspace(home)
    return ws.home / "runs"


def new_run_id(config: FinetuneConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", config.dataset)[:40]
    return f"{stamp}-{config.loss}-{name}"


def preflight(home, config: FinetuneConfig) -> None:
    """Fail fast, before a process is started, with what would stop the run early: a missing
    dataset, too few images for the batch, a model whose weights are not here."""
    from ..models import parse_spec, resolve

    ws = home if isinstance(home, Workspace) else Workspace(home)
    if not ws.exists(config.dataset):
        raise ValueError(f"no dataset {config.dataset!r} in {ws.home}")
    ds = ws.open(config.dataset)
    n = int(has_image(ds.table()).sum())
    if n == 0:
        raise ValueError(f"dataset {ds.name} has no images: fine-tuning needs image files, not only vectors")
    split = split_rows(n, config.val_fraction, config.seed, config.max_val)
    if len(split.train) < config.batch_size:
        raise ValueError(f"batch size {config.batch_size} is larger than the {len(split.train)} training images of "
                         f"{ds.name} (after holding out {len(split.val)} for validation); lower the batch size")
    resolve(parse_spec(config.model), download=False)  # raises ModelSpecError / ModelUnavailable in seconds


def create_run(home, config: FinetuneConfig, run_id: str | None = None) -> Path:
    """Make the run folder with config.json and status "created"; returns it."""
    return make_run_folder(runs_dir(home), run_id or new_run_id(config), asdict(config))


def read_config(folder: str | os.PathLike) -> FinetuneConfig:
    return FinetuneConfig.from_dict(json.loads((Path(folder) / "config.json").read_text("utf-8")))
