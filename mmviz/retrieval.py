"""Cosine retrieval between embedded images and captions, and recall@k."""
from __future__ import annotations

import numpy as np
import torch


def _topk_indices(queries: np.ndarray, keys: np.ndarray, k: int, chunk: int = 4096,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """Indices (Q, k) of the k keys with the highest cosine to each query, best first.
    Chunked over queries so a Q x K matrix never sits in memory whole."""
    k = min(k, len(keys))
    kt = torch.as_tensor(np.ascontiguousarray(keys), dtype=torch.float32, device=device)
    kt = torch.nn.functional.normalize(kt, dim=1)
    out = []
    for start in range(0, len(queries), chunk):
        q = torch.as_tensor(np.ascontiguousarray(queries[start:start + chunk]), dtype=torch.float32, device=device)
        sims = torch.nn.functional.normalize(q, dim=1) @ kt.T
        out.append(sims.topk(k, dim=1).indices.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def recall_at_k(image: np.ndarray, text: np.ndarray, text_owner: np.ndarray,
                ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, dict[int, float]]:
    """Image->text and text->image recall@k with several captions per image.

    `text_owner[j]` is the row of `image` that caption j describes. Image->text: a hit at k
    when any of the image's captions is among its k nearest captions. Text->image: a hit
    when the caption's own image is among its k nearest images.
    """
    text_owner = np.asarray(text_owner)
    kmax = max(ks)
    i2t = text_owner[_topk_indices(image, text, kmax)]  # owners of the retrieved captions
    t2i = _topk_indices(text, image, kmax)
    rows = np.arange(len(image))[:, None]
    out: dict[str, dict[int, float]] = {"i2t": {}, "t2i": {}}
    for k in ks:
        out["i2t"][k] = float((i2t[:, :k] == rows).any(axis=1).mean())
        out["t2i"][k] = float((t2i[:, :k] == text_owner[:, None]).any(axis=1).mean())
    return out
