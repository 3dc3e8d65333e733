"""Visual question answering on frozen CLIP tokens: answer heads (bilinear attention networks
and two simpler fusions) in `mmviz.vqa.model`."""
from .model import (BAN, HEADS, BilinearAttention, BilinearPool, ConcatMLP, FCNet, Hadamard, make_head,
                    soft_score, vqa_loss)

__all__ = ["BAN", "HEADS", "BilinearAttention", "BilinearPool", "ConcatMLP", "FCNet", "Hadamard", "make_head",
           "soft_score", "vqa_loss"]
