"""Visual question answering on frozen CLIP tokens: answer heads (bilinear attention networks
and two simpler fusions) in `mmviz.vqa.model`, data in `.data`, training in `.train`, and
`VQAHead` (`.head`) to ask a trained head about an image from a notebook or the app."""
from .head import BUILTIN_VQA_DIR, VQAAnswer, VQAHead
from .model import (BAN, HEADS, BilinearAttention, BilinearPool, ConcatMLP, FCNet, Hadamard, make_head,
                    soft_score, vqa_loss)

__all__ = ["BAN", "BUILTIN_VQA_DIR", "HEADS", "BilinearAttention", "BilinearPool", "ConcatMLP", "FCNet", "Hadamard",
           "VQAAnswer", "VQAHead", "make_head", "soft_score", "vqa_loss"]
