"""Train a captioner on text embeddings, save it, load it back.

The decoder never sees an image in training (except the "paired" oracle): each step reads a
batch of captions' text vectors, turned into the variant's input (`variants.training_input`),
and learns their tokens with teacher forcing and cross-entropy. A folder given to `fit` gets a
checkpoint (weights and AdamW state, safetensors) every `checkpoint_every` steps and at the end,
and a rerun resumes from it: batches and noise are functions of (seed, step), so the resumed run
sees what the whole one would have.

Saved captioners are a folder: model.safetensors (decoder weights in float16, the means in
float32) and config.json (variant, decoder shape, vocabulary, CLIP model and fingerprint, the
training settings). Nothing is pickled.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..run_folder import config_from_dict
from ..store import atomic_write_json
from . import variants as V
from .model import CaptionDecoder, DecoderShape
from .vocab import CaptionVocab, tokenizer_kind

FORMAT = "mmviz-captioner/1"
MIN_CAPTIONS = 64  # fewer and the decoder learns nothing worth decoding


class Cancelled(Exception):
    """Training was asked to stop; its checkpoint is saved."""


@dataclass
class CaptionerConfig:
    variant: str = "c3"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    width: int = 128
    layers: int = 2
    heads: int = 4
    prefix: int = 4
    max_tokens: int = 32
    dropout: float = 0.0
    noise_variance: float = V.NOISE_VARIANCE
    checkpoint_every: int = 200

    def __post_init__(self):
        V.check(self.variant)
        for name in ("epochs", "batch_size", "width", "layers", "heads", "prefix", "max_tokens", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        if not self.noise_variance >= 0:
            raise ValueError(f"noise_variance must be >= 0, got {self.noise_variance}")

    @classmethod
    def from_dict(cls, d: dict) -> "CaptionerConfig":
        return config_from_dict(cls, d, "captioner")


@dataclass
class CaptionData:
    """Captions with their text vectors, and the images they describe. `owner[j]` is the image
    row of caption j; `images` may be None for a text-only set (then no "paired" variant)."""

    texts: np.ndarray  # (M, d)
    owner: np.ndarray  # (M,)
    captions: list[str]
    images: np.ndarray | None = None  # (N, d)
    ids: list[str] = field(default_factory=list)  # image ids, for tables

    def subset(self, rows) -> "CaptionData":
        """The images `rows` (in that order) with all their captions, owners renumbered."""
        rows = np.asarray(rows, dtype=np.int64)
        where = np.full(int(self.owner.max()) + 1 if len(self.owner) else 0, -1, dtype=np.int64)
        where[rows[rows < len(where)]] = np.flatnonzero(rows < len(where))
        keep = np.flatnonzero(where[self.owner] >= 0)
        keep = keep[np.argsort(where[self.owner[keep]], kind="stable")]
        return CaptionData(np.asarray(self.texts[keep]), where[self.owner[keep]], [self.captions[j] for j in keep],
                           None if self.images is None else np.asarray(self.images[rows]),
                           [self.ids[r] for r in rows] if self.ids else [])

    def references(self) -> list[list[str]]:
        refs: list[list[str]] = [[] for _ in range(len(self.images) if self.images is not None
                                                     else int(self.owner.max()) + 1)]
        for j, o in enumerate(self.owner):
            refs[int(o)].append(self.captions[j])
        return refs


def split_images(n: int, test_fraction: float = 0.2, seed: int = 0, max_test: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): a seeded split by image, each image with all its captions."""
    order = np.random.default_rng([seed, 11]).permutation(n)
    n_test = min(max_test, max(1, int(round(n * test_fraction))))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def check_trainable(data: CaptionData, variant: str, what: str = "this set") -> None:
    """A clear error, before any work, when the data cannot train the variant."""
    if len(data.captions) < MIN_CAPTIONS:
        raise ValueError(f"{what} has {len(data.captions)} training captions; a captioner needs at least "
                         f"{MIN_CAPTIONS}. Import more captions (or use a larger share for training)")
    if variant == "paired" and data.images is None:
        raise ValueError(f"the paired variant trains on image embeddings and {what} has none; pick another variant")


class Captioner:
    """A trained decoder with everything needed to caption: vocabulary, tokenizer, means."""

    def __init__(self, decoder: CaptionDecoder, vocab: CaptionVocab, tokenizer, info: dict,
                 text_mean: np.ndarray, image_mean: np.ndarray | None):
        self.decoder, self.vocab, self.tokenizer, self.info = decoder.eval(), vocab, tokenizer, info
        self.text_mean, self.image_mean = text_mean, image_mean

    @property
    def variant(self) -> str:
        return self.info["variant"]

    @property
    def clip_model(self) -> str:
        return self.info.get("clip_model", "")

    def inputs(self, images) -> torch.Tensor:
        mean = None if self.image_mean is None else torch.as_tensor(self.image_mean, dtype=torch.float32)
        return V.inference_input(self.variant, torch.as_tensor(np.asarray(images), dtype=torch.float32), mean)

    def caption(self, images, beam: int = 1, batch: int = 512) -> list[str]:
        """One caption per image vector (N, d). A collapse captioner trained without image
        vectors subtracts the mean of the images given here instead: pass them all at once."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 2 or images.shape[1] != self.decoder.shape.embed_dim:
            raise ValueError(f"the captioner reads {self.decoder.shape.embed_dim}-d vectors, got shape {images.shape}")
        x = self.inputs(images)
        out: list[str] = []
        for i in range(0, len(x), batch):
            for ids in self.decoder.generate(x[i:i + batch], beam=beam):
                out.append(self.vocab.decode(self.tokenizer, ids))
        return out

    def check_model(self, model: str, fingerprint: str | None = None) -> None:
        """ValueError unless the vectors to caption come from the model this captioner read."""
        same = fingerprint == self.info.get("clip_fingerprint") if fingerprint and self.info.get("clip_fingerprint") \
            else model == self.clip_model
        if not same:
            raise ValueError(f"this captioner was trained under {self.clip_model!r} but the vectors come from "
                             f"{model!r}: their spaces differ. Caption with vectors of {self.clip_model!r}, or train "
                             f"a captioner under {model!r}")

    def save(self, folder: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"decoder.{k}": v.detach().to(torch.float16).contiguous() for k, v in self.decoder.state_dict().items()}
        tensors["mean.text"] = torch.as_tensor(self.text_mean, dtype=torch.float32)
        if self.image_mean is not None:
            tensors["mean.image"] = torch.as_tensor(self.image_mean, dtype=torch.float32)
        tmp = folder / ".model.safetensors.tmp"
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
        os.replace(tmp, folder / "model.safetensors")
        atomic_write_json(folder / "config.json", {**self.info, "format": FORMAT,
                                                   "decoder": self.decoder.shape.to_dict(), "vocab": self.vocab.tokens})
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, tokenizer=None) -> "Captioner":
        """The captioner saved in `folder`. `tokenizer` (the CLIP model's) may be set later, before
        captioning: checking the model first needs none."""
        from safetensors import safe_open

        folder = Path(folder)
        try:
            info = json.loads((folder / "config.json").read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{folder}: not a captioner folder (config.json unreadable: {e})") from None
        if info.get("format") != FORMAT:
            raise ValueError(f"{folder}: not an mmviz captioner (format {info.get('format')!r}, expected {FORMAT})")
        vocab = CaptionVocab(info["vocab"])
        decoder = CaptionDecoder(DecoderShape(**info["decoder"]))
        state, means = {}, {}
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            for k in f.keys():
                if k.startswith("decoder."):
                    state[k[len("decoder."):]] = f.get_tensor(k).float()
                else:
                    means[k] = f.get_tensor(k).double().numpy()
        decoder.load_state_dict(state)
        info = {k: v for k, v in info.items() if k not in ("decoder", "vocab")}
        return cls(decoder, vocab, tokenizer, info, means["mean.text"], means.get("mean.image"))

    def roundtrip(self) -> "Captioner":
        """This captioner as saved (float16 weights) and loaded: what users get."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="mmviz-captioner-") as tmp:
            return Captioner.load(self.save(tmp), self.tokenizer)


def _mean(x: np.ndarray) -> np.ndarray:
    total = np.zeros(x.shape[1])
    for i in range(0, len(x), 65536):
        total += np.asarray(x[i:i + 65536], dtype=np.float64).sum(0)
    return total / len(x)


def noise_generator(seed: int, step: int) -> torch.Generator:
    """The corrupt noise of one step: a function of (seed, step), so a resumed run draws the same."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def fit(data: CaptionData, tokenizer, config: CaptionerConfig, *, clip_model: str = "", clip_fingerprint: str = "",
        folder: str | os.PathLike | None = None, progress: Callable[[dict], None] | None = None,
        should_stop: Callable[[], bool] | None = None, extra_info: dict | None = None) -> Captioner:
    """Train a captioner on `data` (its training split). `progress(row)` hears each step
    ({"step", "steps", "epoch", "loss", "lr", "seconds"}); `should_stop()` is asked before each
    step and, if true, the checkpoint is saved and Cancelled raised (with a folder)."""
    from ..finetune.train import load_checkpoint, lr_at, save_checkpoint

    check_trainable(data, config.variant)
    tokenizer_kind(tokenizer)
    folder = Path(folder) if folder is not None else None
    vocab = CaptionVocab.build(tokenizer, data.captions)
    sequences = torch.as_tensor(vocab.encode(tokenizer, data.captions, config.max_tokens))
    max_tokens = int((sequences != 0).sum(1).max()) - 2  # the longest caption, up to config.max_tokens
    sequences = sequences[:, :max_tokens + 2]
    texts = torch.as_tensor(np.asarray(data.texts, dtype=np.float32))
    owner = torch.as_tensor(np.asarray(data.owner, dtype=np.int64))
    images = None if data.images is None else torch.as_tensor(np.asarray(data.images, dtype=np.float32))
    text_mean = _mean(np.asarray(data.texts))
    image_mean = None if data.images is None else _mean(np.asarray(data.images))
    t_mean = torch.as_tensor(text_mean, dtype=torch.float32)

    torch.manual_seed(config.seed)
    shape = DecoderShape(texts.shape[1], len(vocab), config.width, config.layers, config.heads, config.prefix,
                         max_tokens, config.dropout)
    decoder = CaptionDecoder(shape)
    opt = torch.optim.AdamW(decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))
    per_epoch = max(1, len(sequences) // config.batch_size)
    steps = config.epochs * per_epoch
    step = load_checkpoint(folder, decoder, opt) if folder is not None else 0
    resumed_from = step
    t0, losses = time.time(), []
    orders: dict[int, np.ndarray] = {}
    while step < steps:
        if should_stop is not None and should_stop():
            if folder is not None:
                save_checkpoint(folder, decoder, opt, step)
            raise Cancelled(f"captioner training stopped at step {step} of {steps}; checkpoint saved")
        epoch, k = divmod(step, per_epoch)
        if epoch not in orders:
            orders = {epoch: np.random.default_rng([config.seed, epoch]).permutation(len(sequences))}
        idx = torch.as_tensor(orders[epoch][k * config.batch_size:(k + 1) * config.batch_size])
        x = V.training_input(config.variant, texts[idx], None if images is None else images[owner[idx]], t_mean,
                             config.noise_variance, noise_generator(config.seed, step))
        batch = sequences[idx]
        batch = batch[:, :int((batch != 0).sum(1).max())]  # no all-PAD columns
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, config.lr, config.warmup)
        decoder.train()
        loss = decoder.loss(x, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        if progress is not None:
            progress({"step": step, "steps": steps, "epoch": step / per_epoch, "loss": losses[-1],
                      "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 2)})
        if folder is not None and (step % config.checkpoint_every == 0 or step == steps):
            save_checkpoint(folder, decoder, opt, step)
    info = {"variant": config.variant, "clip_model": clip_model, "clip_fingerprint": clip_fingerprint,
            "tokenizer": tokenizer_kind(tokenizer), "training": asdict(config), "steps": steps,
            "resumed_from": resumed_from, "train_captions": len(data.captions),
            "train_images": None if data.images is None else len(data.images),
            "final_loss": float(np.mean(losses[-20:])) if losses else None,
            "train_seconds": round(time.time() - t0, 1), "parameters": sum(p.numel() for p in decoder.parameters()),
            **(extra_info or {})}
    return Captioner(decoder.eval(), vocab, tokenizer, info, text_mean, image_mean)


def train_on_captions(captions: list[str], model, config: CaptionerConfig | None = None,
                      progress: Callable[[dict], None] | None = None, **settings) -> Captioner:
    """A captioner from captions alone, under any open_clip model (a spec or a LoadedModel):
    only its text tower runs, so no image is needed to train. Without image vectors there is
    no training-image mean: a collapse or c3 captioner subtracts the mean of the images it is
    given to caption, and the paired variant is unavailable."""
    from ..embed import encode_texts
    from ..models import LoadedModel, load_model

    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    config = config or CaptionerConfig(**settings)
    check_trainable(CaptionData(np.zeros((len(captions), 1)), np.arange(len(captions)), list(captions)),
                    config.variant, "this caption list")  # before the text tower runs
    texts = encode_texts(loaded, list(captions))
    data = CaptionData(texts, np.arange(len(captions)), list(captions))
    return fit(data, loaded.tokenizer, config, clip_model=loaded.name, clip_fingerprint=loaded.fingerprint,
               progress=progress)
