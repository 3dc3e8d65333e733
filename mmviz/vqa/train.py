"""Training an answer head on cached frozen-encoder tokens, saving it, and answering with it.

Plain on purpose (one loop, no framework): the inputs are the `(v, v_mask, q, q_mask)` arrays
that `FeatureCache.features` returns, so the encoder never runs here and an epoch is one pass of
a small head over tensors in memory. The recipe follows BAN's reference code: soft VQA targets,
binary cross-entropy over the answer vocabulary (`vqa_loss`), Adamax, gradient norm clipped to
0.25.

A trained head is a folder: `model.safetensors` (the state dict; loading it never unpickles),
`vocab.json`, `config.json` (the TrainConfig plus the token widths dv, dq the head was built
for) and `history.json` (the per-epoch metrics).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..store import atomic_write_bytes, atomic_write_json
from .data import AnswerVocab, VQAExample, soft_targets, vqa_accuracy
from .model import attention_supervision_loss, make_head, vqa_loss

# progress(epoch, epochs, metrics) after each epoch; metrics is that epoch's history entry.
TrainProgress = Callable[[int, int, dict], None]

Features = tuple  # (v (N, R, dv), v_mask (N, R), q (N, L, dq), q_mask (N, L)) numpy arrays


@dataclass
class TrainConfig:
    head: str = "ban"  # one of model.HEADS
    hidden: int = 128
    glimpses: int = 2  # BAN only
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3  # Adamax, as BAN
    seed: int = 0
    min_count: int = 1  # answer vocabulary: answers seen at least this often in training ...
    max_answers: int = 3000  # ... and at most this many of them
    # Where-questions (see model.BAN and embed.text_tokens): 0 / False is the plain BAN.
    word_inputs: bool = False  # word features are text_tokens(inputs=True): last layer + input embeddings
    grid_coords: float = 0.0  # BAN: patch (x, y) times this appended to each region
    attended_xy: bool = False  # BAN: each glimpse's attended (x, y) into the classifier
    attention_weight: float = 0.0  # BAN: weight of attention_supervision_loss where region targets are given


@dataclass
class TrainResult:
    model: torch.nn.Module  # in eval mode
    vocab: AnswerVocab
    history: list[dict]  # per epoch: epoch, train_loss, val_accuracy, val_by_type
    val_by_type: dict[str, float]  # the last epoch's validation accuracy per question type
    majority_by_type: dict[str, float]  # baseline: most frequent training answer of the type, on val
    config: TrainConfig = field(default_factory=TrainConfig)
    dims: tuple[int, int] = (0, 0)  # (dv, dq): the token widths the head was built for

    @property
    def val_accuracy(self) -> float:
        return self.history[-1]["val_accuracy"] if self.history else 0.0

    @property
    def majority_accuracy(self) -> float:
        return self.history[-1]["majority_accuracy"] if self.history else 0.0


def _head_kwargs(config: TrainConfig) -> dict:
    kw = {"hidden": config.hidden}
    if config.head == "ban":
        kw.update(glimpses=config.glimpses, grid_coords=config.grid_coords, attended_xy=config.attended_xy)
    return kw


def _call(model: torch.nn.Module, tensors, rows=None):
    """model(v, q, v_mask, q_mask) on the (v, v_mask, q, q_mask) tensors (the cache's order
    differs from the heads'), optionally on `rows` only."""
    v, v_mask, q, q_mask = tensors if rows is None else (t[rows] for t in tensors)
    return model(v, q, v_mask, q_mask)


def _tensors(features: Features) -> tuple[torch.Tensor, ...]:
    v, v_mask, q, q_mask = features
    return (torch.as_tensor(np.asarray(v), dtype=torch.float32), torch.as_tensor(np.asarray(v_mask), dtype=torch.bool),
            torch.as_tensor(np.asarray(q), dtype=torch.float32), torch.as_tensor(np.asarray(q_mask), dtype=torch.bool))


@torch.no_grad()
def _forward_all(model: torch.nn.Module, tensors, batch_size: int = 256):
    """(logits (N, A), attention (N, ...) or None) in eval mode, batch by batch."""
    model.eval()
    logits, atts = [], []
    n = tensors[0].shape[0]
    for s in range(0, n, batch_size):
        lg, att = _call(model, tensors, slice(s, s + batch_size))
        logits.append(lg)
        atts.append(att)
    if not logits:
        return torch.zeros(0, 0), None
    att = torch.cat(atts) if atts[0] is not None else None
    return torch.cat(logits), att


def _by_type(predicted: list[str], examples: list[VQAExample]) -> dict[str, float]:
    """vqa_accuracy of the predictions per question type, types sorted."""
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.question_type, []).append(i)
    return {t: vqa_accuracy([predicted[i] for i in idx], [examples[i].answers for i in idx])
            for t, idx in sorted(groups.items())}


def majority_answers(train_examples: list[VQAExample]) -> tuple[dict[str, str], str]:
    """(most frequent training answer per question type, most frequent overall): the blind
    baseline a head must beat. Ties go to the answer seen first."""
    per_type: dict[str, Counter] = {}
    for ex in train_examples:
        if ex.answer:
            per_type.setdefault(ex.question_type, Counter())[ex.answer] += 1
    overall = Counter(ex.answer for ex in train_examples if ex.answer)
    return ({t: c.most_common(1)[0][0] for t, c in per_type.items()},
            overall.most_common(1)[0][0] if overall else "")


def train(train_examples: list[VQAExample], val_examples: list[VQAExample], features_train: Features,
          features_val: Features, config: TrainConfig | None = None,
          progress: TrainProgress | None = None, region_targets: np.ndarray | None = None) -> TrainResult:
    """Train `config.head` on the training features, validating after every epoch.

    `region_targets` (N, G', R), one per training example, with `config.attention_weight` > 0
    and the BAN head: add attention_weight * attention_supervision_loss (rows of zeros leave a
    glimpse free; `data.shapes_region_targets` makes them for the shapes world).

    Deterministic for a given seed on one machine and thread count: the weights, dropout and
    the shuffling all draw from seeded generators.
    """
    config = config or TrainConfig()
    if len(train_examples) != len(features_train[0]) or len(val_examples) != len(features_val[0]):
        raise ValueError(f"{len(train_examples)} training / {len(val_examples)} validation examples for "
                         f"{len(features_train[0])} / {len(features_val[0])} feature rows")
    torch.manual_seed(config.seed)  # weights and dropout
    np.random.seed(config.seed)
    shuffle = torch.Generator().manual_seed(config.seed)  # its own stream: batches do not depend on the model

    vocab = AnswerVocab.build(train_examples, config.min_count, config.max_answers)
    if len(vocab) == 0:
        raise ValueError("no training answers to learn")
    # Soft targets from all human answers (ten in VQA v2); answers outside the vocabulary get
    # no target, so such questions only teach "none of these".
    targets = torch.from_numpy(np.stack([soft_targets(ex.answers, vocab) for ex in train_examples]))
    tr, va = _tensors(features_train), _tensors(features_val)
    supervise = region_targets is not None and config.attention_weight > 0
    if supervise:
        if config.head != "ban":
            raise ValueError(f"attention supervision needs the ban head, not {config.head}")
        region_targets = torch.as_tensor(np.asarray(region_targets), dtype=torch.float32)
        if region_targets.shape[0] != len(train_examples) or region_targets.shape[-1] != tr[0].shape[1] \
                or region_targets.shape[1] > config.glimpses:
            raise ValueError(f"region targets {tuple(region_targets.shape)} do not fit {len(train_examples)} training "
                             f"examples with {config.glimpses} glimpses over {tr[0].shape[1]} regions")
    dv, dq = tr[0].shape[-1], tr[2].shape[-1]
    model = make_head(config.head, dv, dq, len(vocab), **_head_kwargs(config))
    opt = torch.optim.Adamax(model.parameters(), lr=config.lr)

    # The baseline does not change with training: score it once.
    majority, fallback = majority_answers(train_examples)
    blind = [majority.get(ex.question_type, fallback) for ex in val_examples]
    majority_by_type = _by_type(blind, val_examples)
    majority_all = vqa_accuracy(blind, [ex.answers for ex in val_examples])

    history: list[dict] = []
    n = len(train_examples)
    for epoch in range(1, config.epochs + 1):
        model.train()
        total, total_att, seen = 0.0, 0.0, 0
        for idx in torch.randperm(n, generator=shuffle).split(config.batch_size):
            logits, att = _call(model, tr, idx)
            answer_loss = loss = vqa_loss(logits, targets[idx])
            if supervise:
                att_loss = attention_supervision_loss(att, region_targets[idx])
                total_att += att_loss.item() * len(idx)
                loss = answer_loss + config.attention_weight * att_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # BAN clips the gradient norm at 0.25: its bilinear products make early gradients spiky.
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()
            total += answer_loss.item() * len(idx)  # train_loss: the answer loss alone
            seen += len(idx)
        logits, _ = _forward_all(model, va)
        predicted = [vocab[i] for i in logits.argmax(1).tolist()] if len(val_examples) else []
        metrics = {"epoch": epoch, "train_loss": total / max(seen, 1),
                   "val_accuracy": vqa_accuracy(predicted, [ex.answers for ex in val_examples]),
                   "val_by_type": _by_type(predicted, val_examples),
                   "majority_accuracy": majority_all}
        if supervise:
            metrics["attention_loss"] = total_att / max(seen, 1)
        history.append(metrics)
        if progress:
            progress(epoch, config.epochs, metrics)
    model.eval()
    return TrainResult(model, vocab, history, history[-1]["val_by_type"] if history else {}, majority_by_type,
                       config, (int(dv), int(dq)))


def save(result: TrainResult, folder: str | os.PathLike) -> Path:
    """Write the trained head to `folder` (created if needed); each file is replaced atomically."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # safetensors holds tensors only: no code runs when it is read back. contiguous() because
    # safetensors refuses views; clone() so no two entries share storage.
    state = {k: v.detach().contiguous().clone() for k, v in result.model.state_dict().items()}
    atomic_write_bytes(folder / "model.safetensors", save(state))  # temp file + os.replace
    result.vocab.save(folder / "vocab.json")
    dv, dq = result.dims
    atomic_write_json(folder / "config.json", {**asdict(result.config), "dv": dv, "dq": dq,
                                               "num_answers": len(result.vocab)})
    atomic_write_json(folder / "history.json", result.history)
    return folder


def load(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, AnswerVocab, TrainConfig]:
    """(model in eval mode, vocab, config) from a folder written by `save`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    doc = json.loads((folder / "config.json").read_text("utf-8"))
    known = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in doc.items() if k in known})
    vocab = AnswerVocab.load(folder / "vocab.json")
    model = make_head(config.head, int(doc["dv"]), int(doc["dq"]), len(vocab), **_head_kwargs(config))
    model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)))  # strict: keys must match
    model.to(device).eval()
    return model, vocab, config


def answer(model: torch.nn.Module, vocab: AnswerVocab, v, v_mask, q, q_mask, top: int = 5):
    """(per example the `top` answers as (answer, probability) best first, attention maps).

    Probabilities are sigmoids of the logits, not a softmax: the head is trained with one binary
    cross-entropy per answer, so each is its own estimate of "this answer is right" and they need
    not sum to 1. Attention is BAN's (N, G, R, L) maps as a numpy array, None for heads without.
    """
    device = next(model.parameters()).device
    tensors = [t.to(device) for t in _tensors((v, v_mask, q, q_mask))]
    logits, att = _forward_all(model, tensors)
    k = min(top, len(vocab))
    probs, idx = torch.sigmoid(logits).topk(k, dim=1)  # sorted, descending
    answers = [[(vocab[i], float(p)) for i, p in zip(row_i, row_p)]
               for row_i, row_p in zip(idx.tolist(), probs.tolist())]
    return answers, (att.cpu().numpy() if att is not None else None)
