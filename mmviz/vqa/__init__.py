"""Visual question answering on frozen CLIP tokens: answer heads (bilinear attention networks
and two simpler fusions) in `mmviz.vqa.model`, data in `.data`, training in `.train`, and
`VQAHead` (`.head`) to ask a trained head about an image from a notebook or the app.

The names below load their module (and torch) when first used, not with the package: the
command line names the heads while it builds its parser, and `mmviz list` should not wait
seconds for torch."""
from __future__ import annotations

import importlib

HEADS = ("ban", "concat", "hadamard")  # the answer heads of .model

_LAZY = {"BUILTIN_VQA_DIR": "head", "VQAAnswer": "head", "VQAHead": "head",
         **{name: "model" for name in ("BAN", "BilinearAttention", "BilinearPool", "ConcatMLP", "FCNet", "Hadamard",
                                       "make_head", "soft_score", "vqa_loss")}}

__all__ = ["HEADS", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
