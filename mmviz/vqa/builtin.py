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
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..models import BUILTIN_DIR
from ..store import atomic_write_json
from .data import (FeatureCache, VQAExample, box_patches, patch_boxes, question_boxes, shapes_examples,
                   shapes_region_targets)
from . import HEADS

if TYPE_CHECKING:  # .train loads torch: imported where used, so the CLI's parser can read DEFAULTS
    from .train import TrainResult

VQA_DIR = BUILTIN_DIR / "vqa"
CLIP_MODEL = "builtin:shapes"
# Sized for about 20 minutes on 2 CPU cores (features, then the three heads). The last five
# settings are for relation questions (README, VQA section): word input embeddings, patch
# coordinates, attended positions, attention supervised with the object boxes of every question
# that names objects (weight 0.1; glimpse g on the g-th object) and 3 more relation questions per
# training scene. Without supervision no seed learnt relations (0.47, the majority answer).
DEFAULTS = dict(n_train=2000, n_val=500, seed=2, epochs=20, hidden=128, glimpses=2, batch_size=64, lr=2e-3,
                word_inputs=True, grid_coords=8.0, attended_xy=True, attention_weight=0.1, extra_relations=3)
MOST = 0.5  # "most of the attention mass": more than this share of it on the object's box


def save_head(result: TrainResult, folder: str | Path, clip_model: str) -> Path:
    """`train.save` plus the spec of the CLIP model whose tokens the head reads, as
    `clip_model` in config.json (the app loads that model to answer with the head)."""
    from .train import save

    folder = save(result, folder)
    doc = json.loads((folder / "config.json").read_text("utf-8"))
    atomic_write_json(folder / "config.json", {**doc, "clip_model": clip_model})
    return folder


def _summary(rows: list[tuple[float, float, bool]]) -> dict:
    mass = np.array([r[0] for r in rows])
    chance = np.array([r[1] for r in rows])
    correct = np.array([r[2] for r in rows])
    return {"n": len(rows), "fraction_most_on_box": float(np.mean(mass > MOST)) if rows else 0.0,
            "mean_mass_on_box": float(mass.mean()) if rows else 0.0,
            "chance": float(chance.mean()) if rows else 0.0,
            "accuracy": float(correct.mean()) if rows else 0.0}


def grounding(result_or_model, vocab, scenes, examples: list[VQAExample], features, image_size: int = 64) -> dict:
    """Where BAN looks on the validation questions about one object, and on relation questions.

    `examples` are `shapes_examples(scenes)` (one per question, scene order) and `features`
    their `(v, v_mask, q, q_mask)`.

    One object: the attention (G, R, L) of each question, summed over words and averaged over
    glimpses, is a distribution over the R patches; its mass on the patches overlapping the
    object's box is compared with chance, the box's share of the patches (what a uniform map
    would put there). "overall" and "by_type" {type: ...} each hold n, fraction_most_on_box
    (share of questions with more than `MOST` of the mass on the box), mean_mass_on_box, chance
    and the head's accuracy on those questions.

    Relations ("is the A left of the B?"): "relation" holds n, the accuracy, and per glimpse the
    mean mass on the subject's (A) and on the object's (B) box, with chances: a head whose
    glimpse 0 finds A and glimpse 1 finds B has bound the two phrases to their objects.
    """
    from .train import TrainResult, answer

    model = result_or_model.model if isinstance(result_or_model, TrainResult) else result_or_model
    vocab = result_or_model.vocab if isinstance(result_or_model, TrainResult) and vocab is None else vocab
    pairs = [(s, q) for s in scenes for q in s.questions]
    if len(pairs) != len(examples):
        raise ValueError(f"{len(examples)} examples for {len(pairs)} questions of the scenes")
    keep = [i for i, (_, q) in enumerate(pairs) if len(q.objects) == 1 or q.type == "relation"]
    for i in keep:
        if pairs[i][1].question != examples[i].question:
            raise ValueError(f"example {i} is {examples[i].question!r}, the scene asks {pairs[i][1].question!r}")
    rows: dict[str, list[tuple[float, float, bool]]] = {}
    rel_mass, rel_chance, rel_correct = [], [], []  # (G, 2) subject/object mass per glimpse, (2,), bool
    if keep:
        top, att = answer(model, vocab, *(np.asarray(f)[keep] for f in features), top=1)
        if att is None:
            raise ValueError("grounding needs a head with attention (BAN)")
        per_glimpse = att.sum(axis=3)  # (N, G, R): words summed
        patches = patch_boxes(per_glimpse.shape[2], image_size)
        for j, i in enumerate(keep):
            scene, q = pairs[i]
            correct = top[j][0][0] == examples[i].answer
            on = [box_patches(b, patches) for b in question_boxes(scene, q)]
            if q.type == "relation":
                rel_mass.append([[float(m[o].sum()) for o in on] for m in per_glimpse[j]])
                rel_chance.append([float(o.mean()) for o in on])
                rel_correct.append(correct)
            else:
                rows.setdefault(q.type, []).append((float(per_glimpse[j].mean(0)[on[0]].sum()), float(on[0].mean()),
                                                    correct))
    out = {"threshold": MOST, "overall": _summary([r for t in sorted(rows) for r in rows[t]]),
           "by_type": {t: _summary(rows[t]) for t in sorted(rows)}}
    if rel_mass:
        mass, chance = np.array(rel_mass), np.array(rel_chance)  # (N, G, 2), (N, 2)
        out["relation"] = {"n": len(rel_mass), "accuracy": float(np.mean(rel_correct)),
                           "glimpses": [{"subject": float(mass[:, g, 0].mean()), "object": float(mass[:, g, 1].mean())}
                                        for g in range(mass.shape[1])],
                           "chance": {"subject": float(chance[:, 0].mean()), "object": float(chance[:, 1].mean())}}
    return out


def _accuracy_table(result: TrainResult) -> dict:
    return {"overall": result.val_accuracy, **result.val_by_type}


def train_builtin(out: str | Path = VQA_DIR, n_train: int | None = None, n_val: int | None = None,
                  seed: int | None = None, epochs: int | None = None, hidden: int | None = None,
                  glimpses: int | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Train the three heads on the shapes world under `builtin:shapes`, save the BAN head and
    metrics.json into `out`, and return the metrics. `progress(line)` hears about each stage
    and epoch (print will do). Unset arguments take DEFAULTS."""
    import torch

    from .. import synthetic
    from ..models import load_model
    from .train import TrainConfig, TrainResult, _by_type, majority_answers, train

    given = dict(n_train=n_train, n_val=n_val, seed=seed, epochs=epochs, hidden=hidden, glimpses=glimpses)
    cfg = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    say = progress or (lambda line: None)
    t0 = time.time()
    world = synthetic.make_world(cfg["n_train"], cfg["n_val"], 0, seed=cfg["seed"])
    # More relation questions for training only: validation keeps the world's own mix.
    extra = synthetic.add_relation_questions(world["train"], cfg["extra_relations"], seed=cfg["seed"])
    loaded = load_model(CLIP_MODEL, device="cpu")
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mmviz-vqa-") as tmp:
        train_ex = shapes_examples(world["train"], Path(tmp) / "images")
        val_ex = shapes_examples(world["val"], Path(tmp) / "images")
        say(f"{len(world['train'])} training scenes ({len(train_ex)} questions), {len(world['val'])} validation "
            f"scenes ({len(val_ex)} questions; {extra} extra relation questions in training); computing "
            f"{CLIP_MODEL} tokens")
        cache = FeatureCache(Path(tmp) / "home", loaded.fingerprint, word_inputs=cfg["word_inputs"])
        f_train, f_val = cache.features(loaded, train_ex), cache.features(loaded, val_ex)
    seconds["data_and_features"] = round(time.time() - t0, 1)

    # Every head reads the same features; the position options and the attention supervision are
    # BAN's (the other two have no regions left after pooling, nor maps).
    targets = shapes_region_targets(world["train"], f_train[0].shape[1], cfg["glimpses"], synthetic.QUESTION_TYPES)
    results: dict[str, TrainResult] = {}
    for head in HEADS:
        t1 = time.time()
        where = (dict(grid_coords=cfg["grid_coords"], attended_xy=cfg["attended_xy"],
                      attention_weight=cfg["attention_weight"]) if head == "ban" else {})
        config = TrainConfig(head=head, hidden=cfg["hidden"], glimpses=cfg["glimpses"], epochs=cfg["epochs"],
                             batch_size=cfg["batch_size"], lr=cfg["lr"], seed=cfg["seed"],
                             word_inputs=cfg["word_inputs"], **where)

        def epoch_done(e: int, n: int, m: dict, head=head) -> None:
            types = "  ".join(f"{t} {a:.3f}" for t, a in m["val_by_type"].items())
            say(f"{head} epoch {e}/{n}: loss {m['train_loss']:.4f}, val {m['val_accuracy']:.3f} ({types})")

        results[head] = train(train_ex, val_ex, f_train, f_val, config, progress=epoch_done,
                              region_targets=targets if head == "ban" else None)
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
        "settings": dict(cfg),
        "questions": {"train": len(train_ex), "val": len(val_ex), "extra_relation_train": extra},
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
