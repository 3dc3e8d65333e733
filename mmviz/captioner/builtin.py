"""The captioners shipped with the builtin model, and the finding they reproduce: C3's table.

`mmviz builtin train-captioner` reproduces assets/builtin-shapes/captioners/: it generates the
shapes world (seed 0: training scenes, and the 1,000 test scenes that `builtin:shapes` was
scored on and never trained on), encodes them with `builtin:shapes`, trains each variant on the
training captions' text vectors with every seed, captions the test images from their image
vectors, and scores the captions against each image's own captions. Seed 0 of each variant is
saved (float16, about 1 MB each); metrics.json holds every seed's scores, their mean, and the
gap as the decoder sees it (`input_geometry`).
"""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..models import BUILTIN_DIR, BUILTIN_SPEC
from ..store import atomic_write_json
from . import variants as V
from .evaluate import evaluate
from .train import CaptionData, Captioner, CaptionerConfig, fit

CAPTIONER_DIR = BUILTIN_DIR / "captioners"
# Sized for about 25 minutes on 2 CPU cores: 10 trainings (5 variants x 2 seeds) of 625 steps.
DEFAULTS = dict(n_train=4000, n_test=1000, world_seed=0, seeds=(0, 1), epochs=5, batch_size=128)
TABLE = ("bleu4", "cider", "rouge_l", "clip_s", "mid", "exact_match")


def builtin_folder(variant: str) -> Path:
    return CAPTIONER_DIR / V.check(variant)


def load_builtin(variant: str, tokenizer=None) -> Captioner:
    folder = builtin_folder(variant)
    if not (folder / "model.safetensors").exists():
        raise ValueError(f"no builtin {variant} captioner in {folder}: run `mmviz builtin train-captioner`")
    return Captioner.load(folder, tokenizer)


def shapes_data(loaded, scenes) -> CaptionData:
    """The scenes encoded by `loaded` (the builtin model): images, captions, their vectors."""
    from ..builtin import encode_scenes

    visual = loaded.model.visual
    images, texts, owner = encode_scenes(loaded.model, loaded.tokenizer, scenes, visual.image_mean, visual.image_std)
    return CaptionData(texts, owner, [c for s in scenes for c in s.captions], images, [s.id for s in scenes])


def input_geometry(data: CaptionData, captioner: Captioner, noise_samples: int = 2000) -> dict:
    """How far the images' inputs sit from their captions' training inputs, in the decoder's
    input space: the mean cosine of each image's input with its own captions' (noise-free)
    training inputs, the distance between the two clouds' centres, and, for the corrupting
    variants, the mean cosine of a caption's noisy input with its clean one (how wide the
    neighbourhood the decoder learnt to read is)."""
    variant = captioner.variant
    mean_t = torch.as_tensor(captioner.text_mean, dtype=torch.float32)
    texts = torch.as_tensor(np.asarray(data.texts, dtype=np.float32))
    owner = torch.as_tensor(np.asarray(data.owner, dtype=np.int64))
    clean_variant = {"corrupt": "c1", "c3": "collapse"}.get(variant, variant)
    images = torch.as_tensor(np.asarray(data.images, dtype=np.float32))
    train_in = V.training_input(clean_variant, texts, images[owner], mean_t)
    infer_in = captioner.inputs(data.images)
    out = {"image_to_own_captions_cos": float((infer_in[owner] * train_in).sum(1).mean()),
           "centre_distance": float((infer_in.mean(0) - train_in.mean(0)).norm())}
    if V.corrupts(variant):
        g = torch.Generator().manual_seed(0)
        sample = train_in[:noise_samples]
        noisy = V.training_input("corrupt", sample, None, mean_t, captioner.info["training"]["noise_variance"], g)
        out["noisy_to_clean_cos"] = float((noisy * sample).sum(1).mean())
    return out


def _row(ev) -> dict:
    return {k: round(float(ev.corpus[k]), 4) for k in ("bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l", "clip_s",
                                                        "refclip_s", "mid", "exact_match")}


def train_builtin(out: str | Path = CAPTIONER_DIR, progress: Callable[[str], None] | None = None,
                  variants: tuple[str, ...] = V.VARIANTS, **overrides) -> dict:
    """Train every variant with every seed, save seed 0's captioners and metrics.json into
    `out`, and return the metrics. `progress(line)` hears each stage and every 100 steps."""
    from .. import synthetic
    from ..embed import encode_texts
    from ..models import load_model

    cfg = {**DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    say = progress or (lambda line: None)
    out = Path(out)
    t0 = time.time()
    loaded = load_model(BUILTIN_SPEC, device="cpu")
    world = synthetic.make_world(cfg["n_train"], 0, cfg["n_test"], seed=cfg["world_seed"])
    say(f"encoding {len(world['train'])} training and {len(world['test'])} test scenes with {BUILTIN_SPEC}")
    train_data, test_data = shapes_data(loaded, world["train"]), shapes_data(loaded, world["test"])
    gap = float(np.linalg.norm(test_data.images.mean(0) - test_data.texts.mean(0)))
    say(f"test split: {len(test_data.images)} images, {len(test_data.captions)} reference captions; "
        f"gap (distance between the modality centres) {gap:.3f}")

    def encode(texts: list[str]) -> np.ndarray:
        return encode_texts(loaded, texts)

    runs: dict[str, dict[str, dict]] = {}
    geometry: dict[str, dict] = {}
    samples: dict[str, list] = {}
    for variant in variants:
        for seed in cfg["seeds"]:
            config = CaptionerConfig(variant=variant, epochs=cfg["epochs"], batch_size=cfg["batch_size"], seed=seed)

            def step(row: dict, variant=variant, seed=seed) -> None:
                if row["step"] % 100 == 0 or row["step"] == row["steps"]:
                    say(f"{variant} seed {seed}: step {row['step']}/{row['steps']}, loss {row['loss']:.3f}")

            captioner = fit(train_data, loaded.tokenizer, config, clip_model=BUILTIN_SPEC,
                            clip_fingerprint=loaded.fingerprint, progress=step,
                            extra_info={"dataset": f"shapes world (seed {cfg['world_seed']}, train split, "
                                                   f"{cfg['n_train']} scenes)"}).roundtrip()
            ev = evaluate(captioner, test_data, encode)
            runs.setdefault(variant, {})[str(seed)] = {**_row(ev), "final_loss": round(captioner.info["final_loss"], 4),
                                                       "train_seconds": captioner.info["train_seconds"]}
            say(f"{variant} seed {seed}: BLEU-4 {ev.corpus['bleu4']:.3f}, CIDEr-D {ev.corpus['cider']:.3f}, "
                f"exact {ev.corpus['exact_match']:.3f}")
            if seed == cfg["seeds"][0]:
                captioner.save(out / variant)
                geometry[variant] = input_geometry(test_data, captioner)
                samples[variant] = ev.table.head(8)[["id", "caption"]].to_dict("records")
    mean = {v: {k: round(float(np.mean([r[k] for r in runs[v].values()])), 4) for k in next(iter(runs[v].values()))}
            for v in runs}
    spread = {v: {k: round(float(np.std([r[k] for r in runs[v].values()])), 4) for k in TABLE} for v in runs}
    metrics = {
        "clip_model": BUILTIN_SPEC,
        "settings": {**cfg, "seeds": list(cfg["seeds"])},
        "test": {"images": len(test_data.images), "references": len(test_data.captions),
                 "references_per_image": round(len(test_data.captions) / len(test_data.images), 2)},
        "gap": round(gap, 4),
        "mean": mean,
        "std": spread,
        "runs": runs,
        "input_geometry": geometry,
        "samples": samples,
        "seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
    atomic_write_json(out / "metrics.json", metrics)
    say(f"wrote {out} in {metrics['seconds']:.0f} s")
    return metrics
