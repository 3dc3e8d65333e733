"""Cosine retrieval between embedded images and captions: top-k, recall@k, where each true
partner ranks, the captions that retrieve worst, and queries from free text or an image.

Vectors are numpy arrays (n, d); rows are L2-normalised inside (zero rows stay zero, so they
give cosine 0 to everything, never NaN). Nearest neighbours are exact: torch (chunked over
queries, on CUDA when available), faiss's IndexFlatIP when installed and the keys are many,
or plain numpy as a reference. Captions may be several per image: `text_owner[j]` is the row
of `images` that caption j describes; None means one caption per image, in the same order.
"""
from __future__ import annotations

import io
import numbers
from pathlib import Path

import numpy as np
import torch

from .geometry import _device
from .sphere import normalise

FAISS_MIN_KEYS = 50_000  # backend="auto" uses faiss (when importable) for at least this many keys
BLOCK = 2 ** 25  # most query x key scores held at once (128 MB in float32), whatever `chunk` says


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _unit(x) -> np.ndarray:
    """Contiguous float32 rows of unit length; a zero row stays zero."""
    return np.ascontiguousarray(normalise(np.asarray(x, dtype=np.float32)))


def _row_blocks(n: int, n_keys: int, chunk: int):
    """(start, stop) over n query rows, at most `chunk` and BLOCK / n_keys at a time."""
    rows = max(1, min(chunk, BLOCK // max(n_keys, 1)))
    for start in range(0, n, rows):
        yield start, min(start + rows, n)


def _score_blocks(queries: np.ndarray, keys: np.ndarray, chunk: int, dev: torch.device):
    """(start, stop, queries[start:stop] @ keys.T) on `dev`, block by block. The scores land in
    one buffer reused by every block (fresh 100+ MB allocations cost page faults, ~10% here):
    use each block before asking for the next."""
    kt = torch.from_numpy(keys).to(dev)
    buf = None
    for start, stop in _row_blocks(len(queries), len(keys), chunk):
        if buf is None:
            buf = torch.empty((stop - start, len(keys)), dtype=torch.float32, device=dev)
        yield start, stop, torch.mm(torch.from_numpy(queries[start:stop]).to(dev), kt.T, out=buf[:stop - start])


# -----------------------------------------------------------------------------
# top-k backends: unit float32 rows in, (scores, indices) out, best first

def _topk_torch(q: np.ndarray, keys: np.ndarray, k: int, chunk: int, device) -> tuple[np.ndarray, np.ndarray]:
    scores, idx = [], []
    for _, _, sims in _score_blocks(q, keys, chunk, _device(device)):
        top = sims.topk(k, dim=1)
        scores.append(top.values.cpu().numpy())
        idx.append(top.indices.cpu().numpy())
    return np.concatenate(scores), np.concatenate(idx)


def _topk_numpy(q: np.ndarray, keys: np.ndarray, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    scores, idx = [], []
    for start, stop in _row_blocks(len(q), len(keys), chunk):
        sims = q[start:stop] @ keys.T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        scores.append(np.take_along_axis(sims, top, axis=1))
        idx.append(top)
    return np.concatenate(scores), np.concatenate(idx).astype(np.int64)


def _topk_faiss(q: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        import faiss
    except ImportError:
        raise RuntimeError("backend='faiss' needs faiss: pip install faiss-cpu") from None
    index = faiss.IndexFlatIP(keys.shape[1])  # exact inner product: cosine on unit rows
    index.add(keys)
    scores, idx = index.search(q, k)
    return scores.astype(np.float32), idx.astype(np.int64)


def _drop_self(scores: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From k + 1 neighbours per row keep k: all but the row's own index, or (when a tie with a
    duplicate pushed it out of the k + 1) all but the last."""
    keep = idx != np.arange(len(idx))[:, None]
    keep[keep.all(axis=1), -1] = False
    return scores[keep].reshape(len(idx), k), idx[keep].reshape(len(idx), k)


def topk(queries, keys, k: int, *, chunk: int = 4096, device="auto", backend: str = "auto",
         exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k: (scores (Q, k) float32, indices (Q, k) int64), best first, k clipped to
    len(keys) (to len(keys) - 1 with exclude_self).

    backend: "auto" (faiss when installed and len(keys) >= FAISS_MIN_KEYS, else torch),
    "torch" (chunked over queries on `device`, "auto" = CUDA when available else CPU: at most
    `chunk` queries, and never more than BLOCK scores, at a time), "faiss" (IndexFlatIP on the
    normalised float32 rows; RuntimeError when faiss is not installed), "numpy" (a plain
    argsort, the reference). Exact ties may come out in a different order per backend.
    exclude_self=True (queries and keys the same set) drops each query's own row: image->image
    and text->text neighbours. A 1-D query (d,) gives (k,) arrays.
    """
    single = np.ndim(queries) == 1
    q, keys = _unit(np.atleast_2d(queries)), _unit(keys)
    if q.ndim != 2 or keys.ndim != 2 or q.shape[1] != keys.shape[1]:
        raise ValueError(f"queries {q.shape} and keys {keys.shape} must be (n, d) arrays of the same d")
    if exclude_self and len(q) != len(keys):
        raise ValueError(f"exclude_self needs the queries to be the keys: {len(q)} queries, {len(keys)} keys")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if backend not in ("auto", "torch", "faiss", "numpy"):
        raise ValueError(f"backend must be 'auto', 'torch', 'faiss' or 'numpy', got {backend!r}")
    k = min(int(k), len(keys) - int(exclude_self))
    fetch = k + int(exclude_self)  # one more, so the query's own row can be dropped
    if backend == "auto":
        backend = "faiss" if len(keys) >= FAISS_MIN_KEYS and faiss_available() else "torch"
    if k <= 0 or len(q) == 0:
        scores, idx = np.zeros((len(q), max(k, 0)), np.float32), np.zeros((len(q), max(k, 0)), np.int64)
    elif backend == "torch":
        scores, idx = _topk_torch(q, keys, fetch, chunk, device)
    elif backend == "numpy":
        scores, idx = _topk_numpy(q, keys, fetch, chunk)
    else:
        scores, idx = _topk_faiss(q, keys, fetch)
    if exclude_self and k > 0:
        scores, idx = _drop_self(scores, idx, k)
    return (scores[0], idx[0]) if single else (scores, idx)


# -----------------------------------------------------------------------------
# recall and ranks of the true partners

def _pairs(images, texts, text_owner) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit image and caption rows and each caption's image row, checked."""
    images, texts = _unit(images), _unit(texts)
    if images.ndim != 2 or texts.ndim != 2 or images.shape[1] != texts.shape[1]:
        raise ValueError(f"images {images.shape} and texts {texts.shape} must be (n, d) arrays of the same d")
    if text_owner is None:
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts for {len(images)} images: with text_owner=None each image needs "
                             "exactly one caption (texts[i] describes images[i]); pass text_owner otherwise")
        return images, texts, np.arange(len(images))
    owner = np.asarray(text_owner)
    if owner.shape != (len(texts),) or (owner.dtype.kind not in "iu" and len(owner)):  # [] reads as float
        raise ValueError(f"text_owner must be {len(texts)} integer image rows, one per text, got {owner.dtype} "
                         f"{owner.shape}")
    if len(owner) and (owner.min() < 0 or owner.max() >= len(images)):
        raise ValueError(f"text_owner holds rows outside 0..{len(images) - 1}")
    return images, texts, owner.astype(np.int64)


def _topk_both_ways(a: np.ndarray, b: np.ndarray, k: int, chunk: int = 4096,
                    device="auto") -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k nearest rows of b for each row of a, and of a for each row of b, best
    first, from one pass over the a x b scores (unit rows in): each block's rows give a's top k,
    and its columns' top k are merged into a running top k per row of b. Half the products of
    two `topk` calls, for recall in both directions."""
    ka, kb = min(k, len(b)), min(k, len(a))
    rows, best_v, best_i = [], None, None
    for start, stop, sims in _score_blocks(a, b, chunk, _device(device)):
        rows.append(sims.topk(ka, dim=1).indices.cpu().numpy())
        v, i = sims.topk(min(kb, stop - start), dim=0)  # (<= k, len(b)): this block's best per column
        i = i + start
        if best_v is not None:
            v, i = torch.cat([best_v, v]), torch.cat([best_i, i])
            top = v.topk(min(kb, len(v)), dim=0)
            v, i = top.values, torch.gather(i, 0, top.indices)
        best_v, best_i = v, i  # new tensors: the score buffer is reused by the next block
    empty = np.zeros((0, ka), dtype=np.int64)
    cols = best_i.T.cpu().numpy() if best_i is not None else np.zeros((len(b), 0), dtype=np.int64)
    return (np.concatenate(rows) if rows else empty), cols


def recall_at_k(images, texts, k=(1, 5, 10), text_owner=None, *, device="auto") -> dict:
    """Image->text and text->image recall@k.

    `text_owner[j]` is the row of `images` that caption j describes; None means one caption per
    image (texts[i] describes images[i]). Image->text: a hit at k when ANY of the image's
    captions is among its k nearest captions (an image without captions never hits).
    Text->image: a hit when the caption's own image is among its k nearest images.
    k an int -> {"i2t": float, "t2i": float}; several -> {"i2t": {k: float}, "t2i": {k: float}}.
    """
    images, texts, owner = _pairs(images, texts, text_owner)
    ks = [k] if isinstance(k, numbers.Integral) else [int(v) for v in k]
    if not ks or min(ks) < 1:
        raise ValueError(f"k must be positive, got {k}")
    if faiss_available() and max(len(images), len(texts)) >= FAISS_MIN_KEYS:
        i2t_idx, t2i = topk(images, texts, max(ks), device=device)[1], topk(texts, images, max(ks), device=device)[1]
    else:
        i2t_idx, t2i = _topk_both_ways(images, texts, max(ks), device=device)
    i2t = owner[i2t_idx]  # owners of the retrieved captions
    i2t_hit = i2t == np.arange(len(images))[:, None]
    t2i_hit = t2i == owner[:, None]
    out = {"i2t": {v: float(i2t_hit[:, :v].any(axis=1).mean()) for v in ks},
           "t2i": {v: float(t2i_hit[:, :v].any(axis=1).mean()) for v in ks}}
    return {d: r[k] for d, r in out.items()} if isinstance(k, numbers.Integral) else out


def _rank_pass(queries: np.ndarray, keys: np.ndarray, query_label: np.ndarray, key_label: np.ndarray,
               chunk: int, device) -> dict[str, np.ndarray]:
    """Per query: its own keys are those with key_label == query_label. rank: 1 + the keys
    strictly more similar than its best own key (0 when it has none); own: that best cosine;
    best / best_score: its nearest key. The own score is read from the same product it is
    compared with, so rounding cannot move a key past it."""
    n = len(queries)
    if n == 0 or len(keys) == 0:  # no keys: no query has an own one (rank 0), nor a nearest
        return {"rank": np.zeros(n, np.int64), "own": np.full(n, -np.inf, np.float32),
                "best": np.full(n, -1, np.int64), "best_score": np.full(n, -np.inf, np.float32)}
    dev = _device(device)
    kl = torch.from_numpy(key_label).to(dev)
    cols = [[], [], [], []]
    for start, stop, sims in _score_blocks(queries, keys, chunk, dev):
        mine = kl[None, :] == torch.from_numpy(query_label[start:stop]).to(dev)[:, None]
        own = sims.masked_fill(~mine, -torch.inf).amax(dim=1)
        rank = torch.where(mine.any(dim=1), 1 + (sims > own[:, None]).sum(dim=1), 0)
        best = sims.max(dim=1)
        for col, v in zip(cols, (rank, own, best.indices, best.values)):
            col.append(v.cpu().numpy())
    return dict(zip(("rank", "own", "best", "best_score"), map(np.concatenate, cols)))


def partner_ranks(images, texts, text_owner=None, *, chunk: int = 4096, device="auto") -> dict:
    """Where each true partner ranks (1 = first), chunked (no whole n x m matrix).

    "i2t": (n,) int64, for image i: 1 + the number of captions not its own that are strictly
    more similar to it than its most similar own caption; an image with no caption gets 0.
    "t2i": (m,) int64, for caption j: 1 + the number of images strictly more similar to it
    than its own image. Without ties, (ranks["i2t"] <= k).mean() equals recall_at_k's i2t at k
    (when every image has a caption) and likewise for t2i.
    """
    images, texts, owner = _pairs(images, texts, text_owner)
    rows = np.arange(len(images))
    i2t = _rank_pass(images, texts, rows, owner, chunk, device)["rank"]
    t2i = _rank_pass(texts, images, owner, rows, chunk, device)["rank"]
    return {"i2t": i2t.astype(np.int64), "t2i": t2i.astype(np.int64)}


def worst_pairs(images, texts, text_owner=None, limit: int = 50, *, device="auto"):
    """The `limit` captions whose own image ranks worst for them (text->image rank, highest
    first; ties: lower cosine to the own image first), as a DataFrame with columns caption (row
    into texts), image (its owner row), t2i_rank, own_cosine, best_image (the image it is most
    similar to) and best_cosine. A quick way to find captions that describe another image."""
    import pandas as pd

    images, texts, owner = _pairs(images, texts, text_owner)
    r = _rank_pass(texts, images, owner, np.arange(len(images)), 4096, device)
    order = np.lexsort((r["own"], -r["rank"]))[:limit]  # the last key sorts first
    return pd.DataFrame({"caption": order, "image": owner[order], "t2i_rank": r["rank"][order].astype(np.int64),
                         "own_cosine": r["own"][order], "best_image": r["best"][order].astype(np.int64),
                         "best_cosine": r["best_score"][order]})


# -----------------------------------------------------------------------------
# queries: free text or an image, embedded under a loaded model (mmviz.models.LoadedModel)

def text_query(loaded, text: str) -> np.ndarray:
    """(d,) unit vector of free text, as the dataset's captions are embedded."""
    from .embed import encode_texts

    if not text or not text.strip():
        raise ValueError("the text query is empty")
    return encode_texts(loaded, [text])[0]


def open_query_image(image):
    """A PIL image, path or bytes as an upright RGB PIL image, refused (ValueError) when larger
    than the import limits allow (read from the header, before the pixels are decoded)."""
    from PIL import Image, ImageOps

    from .data import ImportLimits, check_image

    limits = ImportLimits.from_env()
    if isinstance(image, Image.Image):
        w, h = image.size
        if w * h > limits.max_pixels:
            raise ValueError(f"query image {w}x{h} = {w * h:,} pixels > limit {limits.max_pixels:,}; "
                             "raise MMVIZ_MAX_PIXELS to allow")
        return ImageOps.exif_transpose(image).convert("RGB")
    source = image if isinstance(image, bytes) else Path(image)
    meta, reason, detail = check_image(source, limits)  # the bounds every imported image gets
    if meta is None:
        raise ValueError(f"query image refused ({reason}): {detail}")
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        return ImageOps.exif_transpose(im).convert("RGB")  # as the embedding engine reads files


def image_query(loaded, image) -> np.ndarray:
    """(d,) unit vector of an image (PIL image, path or bytes), as the dataset's images are
    embedded. Images over ImportLimits.max_pixels (MMVIZ_MAX_PIXELS) raise ValueError."""
    im = open_query_image(image)
    with torch.inference_mode():
        x = loaded.preprocess(im).unsqueeze(0).to(loaded.device, dtype=loaded.dtype)
        feats = loaded.model.encode_image(x)
        return torch.nn.functional.normalize(feats.float(), dim=-1)[0].cpu().numpy()
