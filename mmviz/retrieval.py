"""Cosine retrieval between embedded images and captions: top-k, recall@k, where each true
partner ranks, and the captions that retrieve worst (queries from free text or an image are
embedded by mmviz.queries).

Vectors are numpy arrays (n, d), memory maps included; rows are L2-normalised inside (zero rows
stay zero, so they give cosine 0 to everything, never NaN). Nearest neighbours are exact. The
keys are streamed in blocks of KEY_ROWS rows, each converted to unit float32 rows, scored
against the queries (torch, chunked over queries, on CUDA when available) and merged into a
running top-k, so a million float16 keys never become one float32 copy. faiss's IndexFlatIP
serves many keys that fit in memory (it copies them); plain numpy is the reference.

One or two queries against a memory map of float16 keys (a text query on a large set) take a
faster exact route: float16 scores first (the products are memory-bound; converting a million
rows to float32 is what costs), then the float32 cosines of the few keys those scores cannot
rule out (see `_topk_coarse`).

Captions may be several per image: `text_owner[j]` is the row of `images` that caption j
describes; None means one caption per image, in the same order. recall_at_k, partner_ranks and
worst_pairs take `queries=N` to use a seeded sample of N queries against ALL keys: on a million
pairs the full n x n scores are 10^12 products (an hour on 2 cores), a sample of 10,000 a
hundredth of that.
"""
from __future__ import annotations

import numbers
import os
from collections import OrderedDict
from typing import Callable

import numpy as np
import torch

from .arrays import gather_rows, release_pages, rows_per_chunk
from .geometry.streaming import _device
from .sphere import EPS, normalise

FAISS_MIN_KEYS = 50_000  # backend="auto" uses faiss (when importable) for at least this many keys ...
FAISS_MAX_BYTES = 2 ** 29  # ... that take at most this much as float32 (IndexFlatIP holds a copy)
BLOCK = 2 ** 25  # most query x key scores held at once (128 MB in float32), whatever `chunk` says
IN_MEMORY_BYTES = 2 ** 28  # a set whose images and captions take at most this as float32 is scored whole
COARSE_MAX_QUERIES = 2  # float16 products are slow on CPU (~2 GFLOPS): worth it for one or two queries
COARSE_TOL = 2e-3  # bound on |float16 cosine - float32 cosine|; measured at most 2.7e-4 (512-d CLIP-like)
COARSE_MAX_CANDIDATES = 65_536  # more keys than this within the bound: score every key in float32
RANK_TIE = 1e-6  # a key within this of a query's own score ties with it (never ranks above it): the
#   own score comes from another product, and float32 sums of the same vectors in another order can
#   differ in the last bits, which must not put a duplicate of the own caption above it
DEFAULT_QUERIES = 10_000  # recall@k over all queries up to this many, else a seeded sample of this many

Progress = Callable[[int, int], None]  # progress(done, total)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _unit(x) -> np.ndarray:
    """Contiguous float32 rows of unit length; a zero row stays zero. For small arrays and
    chunks: never call it on a whole large set."""
    return np.ascontiguousarray(normalise(np.asarray(x, dtype=np.float32)))


def _matrix(x) -> np.ndarray:
    """x as an array without copying it (a memory map stays one)."""
    return x if isinstance(x, np.ndarray) else np.asarray(x)


def _block_rows(dim: int) -> int:
    """Rows per block of keys (and of queries): 32 MB of float32 (16,384 rows at 512-d)."""
    return rows_per_chunk(dim)


def query_sample(n: int, queries: int | None, seed: int = 0) -> np.ndarray:
    """Sorted rows of the queries to use: all n (queries None or >= n), else a seeded sample of
    `queries` of them. The same (n, queries, seed) always gives the same rows."""
    if queries is None or queries >= n:
        return np.arange(n)
    if queries < 1:
        raise ValueError(f"queries must be at least 1, got {queries}")
    return np.sort(np.random.default_rng(seed).choice(n, size=int(queries), replace=False))


def default_queries(n: int) -> int | None:
    """The number of recall queries used when none is asked for: all (None) up to
    DEFAULT_QUERIES, else DEFAULT_QUERIES."""
    return None if n <= DEFAULT_QUERIES else DEFAULT_QUERIES


# -----------------------------------------------------------------------------
# keys in blocks

_NORMS: OrderedDict = OrderedDict()  # memory-mapped keys -> their row norms, for _topk_coarse
_NORMS_KEPT = 8


def _norms_key(keys) -> tuple | None:
    """What names a memory-mapped file's rows (None for other arrays: nothing is kept)."""
    name = getattr(keys, "filename", None)
    if not isinstance(keys, np.memmap) or not name:
        return None
    try:
        mtime = os.stat(name).st_mtime_ns
    except OSError:
        return None
    return str(name), int(keys.offset), tuple(keys.shape), str(keys.dtype), mtime


def _key_blocks(keys: np.ndarray, rows: int):
    """(start, unit float32 block, its rows' norms) over the keys, `rows` at a time. The norms
    of a memory map are kept (a few MB) once a pass has read them all."""
    name = _norms_key(keys)
    norms = [] if name is not None and name not in _NORMS else None
    for start in range(0, len(keys), rows):
        x = np.array(keys[start:start + rows], dtype=np.float32)  # a fresh copy, scaled in place
        n = np.sqrt(np.einsum("ij,ij->i", x, x))  # 3x faster than np.linalg.norm here
        if norms is not None:
            norms.append(n)
        x *= (1.0 / np.maximum(n, EPS))[:, None]
        yield start, x, n
    if norms is not None:
        _NORMS[name] = np.concatenate(norms) if norms else np.zeros(0, np.float32)
        while len(_NORMS) > _NORMS_KEPT:
            _NORMS.popitem(last=False)
    release_pages(keys)  # a whole pass read: let its pages go from the resident set


def _row_blocks(n: int, n_keys: int, chunk: int):
    """(start, stop) over n query rows, at most `chunk` and BLOCK / n_keys at a time."""
    rows = max(1, min(chunk, BLOCK // max(n_keys, 1)))
    for start in range(0, n, rows):
        yield start, min(start + rows, n)


class _Scores:
    """queries[a:b] @ block.T on a device, into one buffer reused by every call (fresh 100+ MB
    allocations cost page faults, ~10% here): use each result before asking for the next."""

    def __init__(self, dev: torch.device):
        self.dev, self.buf = dev, None

    def __call__(self, q: torch.Tensor, kt: torch.Tensor) -> torch.Tensor:
        size = len(q) * len(kt)
        if self.buf is None or self.buf.numel() < size:
            self.buf = torch.empty(size, dtype=torch.float32, device=self.dev)
        return torch.mm(q, kt.T, out=self.buf[:size].view(len(q), len(kt)))


def _merge(best_v, best_i, v, i, k: int):
    """The k best of two (rows, *) lists of scores and indices, best first."""
    if best_v is None:
        return v, i
    v, i = torch.cat([best_v, v], dim=1), torch.cat([best_i, i], dim=1)
    top = v.topk(min(k, v.shape[1]), dim=1)
    return top.values, torch.gather(i, 1, top.indices)


# -----------------------------------------------------------------------------
# top-k backends: unit float32 queries in, (scores, indices) out, best first

def _topk_blocked(q: np.ndarray, keys: np.ndarray, k: int, chunk: int, device, rows: int,
                  progress: Progress | None = None, done: int = 0, total: int = 0):
    """Exact top-k of unit queries q over `keys` (any array), one key block at a time."""
    dev = _device(device)
    qt = torch.from_numpy(q).to(dev)
    scores = _Scores(dev)
    best_v = best_i = None
    for start, kb, _ in _key_blocks(keys, rows):
        kt = torch.from_numpy(kb).to(dev)
        vs, ix = [], []
        for a, b in _row_blocks(len(q), len(kb), chunk):
            top = scores(qt[a:b], kt).topk(min(k, len(kb)), dim=1)
            vs.append(top.values)
            ix.append(top.indices + start)
        best_v, best_i = _merge(best_v, best_i, torch.cat(vs), torch.cat(ix), k)
        if progress:
            progress(done + len(q) * (start + len(kb)), total)
    return best_v.cpu().numpy(), best_i.cpu().numpy().astype(np.int64)


def _topk_coarse(q: np.ndarray, keys: np.ndarray, k: int, rows: int, norms: np.ndarray):
    """Exact top-k of one or two unit queries over float16 keys whose norms are known, or None.

    Float16 scores s16 = fl16(q) . key cost a memory-bound pass and are within COARSE_TOL of the
    float32 cosine (q's rounding and the output's rounding are each at most 2^-11 relative:
    < 1e-3 for unit q; torch accumulates in float32). Every key of the true top k then has
    s16 >= (the k-th best s16) - 2 COARSE_TOL, so those candidates, rescored in float32, give
    the exact answer. None when more than COARSE_MAX_CANDIDATES keys qualify (ties galore)."""
    q16 = torch.from_numpy(q).to(torch.float16)
    inv = torch.from_numpy(1.0 / np.maximum(norms, EPS).astype(np.float32))
    run = None  # (Q, <= k) best float16 scores so far
    found: list[list[np.ndarray]] = [[] for _ in q]
    count = 0
    for start in range(0, len(keys), rows):
        block = torch.from_numpy(np.array(keys[start:start + rows]))
        approx = (block @ q16.T).float().T * inv[start:start + len(block)]  # (Q, rows)
        top = approx.topk(min(k, approx.shape[1]), dim=1).values
        run = top if run is None else torch.cat([run, top], 1).topk(min(k, run.shape[1] + top.shape[1]), 1).values
        floor = run[:, -1] - 2 * COARSE_TOL if run.shape[1] == k else torch.full((len(q),), -np.inf)
        for i in range(len(q)):
            hit = torch.nonzero(approx[i] >= floor[i]).ravel().numpy() + start
            found[i].append(hit)
            count += len(hit)
        if count > 4 * COARSE_MAX_CANDIDATES:
            return None
    release_pages(keys)
    cand = [np.concatenate(f) for f in found]
    union = np.unique(np.concatenate(cand))
    if len(union) > COARSE_MAX_CANDIDATES:
        return None
    exact = q @ _unit(gather_rows(keys, union)).T  # (Q, candidates), float32 cosines
    out_s, out_i = [], []
    for i in range(len(q)):
        pos = np.searchsorted(union, cand[i])
        top = torch.from_numpy(exact[i, pos]).topk(min(k, len(pos)))
        out_s.append(top.values.numpy())
        out_i.append(union[pos][top.indices.numpy()])
    return np.stack(out_s).astype(np.float32), np.stack(out_i).astype(np.int64)


def _topk_numpy(q: np.ndarray, keys: np.ndarray, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    scores, idx = [], []
    for start, stop in _row_blocks(len(q), len(keys), chunk):
        sims = q[start:stop] @ keys.T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        scores.append(np.take_along_axis(sims, top, axis=1))
        idx.append(top)
    return np.concatenate(scores), np.concatenate(idx).astype(np.int64)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise RuntimeError("backend='faiss' needs faiss: pip install faiss-cpu") from None
    return faiss


def _topk_faiss(q: np.ndarray, keys: np.ndarray, k: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """IndexFlatIP (exact inner product: cosine on unit rows) over keys that fit in memory;
    larger key sets block by block (faiss.knn per block, merged)."""
    faiss = _faiss()
    if len(keys) * keys.shape[1] * 4 <= FAISS_MAX_BYTES:
        index = faiss.IndexFlatIP(keys.shape[1])
        index.add(_unit(keys))
        scores, idx = index.search(q, k)
        return scores.astype(np.float32), idx.astype(np.int64)
    best_v = best_i = None
    for start, kb, _ in _key_blocks(keys, rows):
        s, i = faiss.knn(q, kb, min(k, len(kb)), faiss.METRIC_INNER_PRODUCT)
        best_v, best_i = _merge(best_v, best_i, torch.from_numpy(s), torch.from_numpy(i.astype(np.int64) + start), k)
    return best_v.numpy().astype(np.float32), best_i.numpy()


def _drop_self(scores: np.ndarray, idx: np.ndarray, k: int, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """From k + 1 neighbours per row keep k: all but the row's own index (rows numbered from
    `first`), or (when a tie with a duplicate pushed it out of the k + 1) all but the last."""
    keep = idx != (first + np.arange(len(idx)))[:, None]
    keep[keep.all(axis=1), -1] = False
    return scores[keep].reshape(len(idx), k), idx[keep].reshape(len(idx), k)


def topk(queries, keys, k: int, *, chunk: int = 4096, device="auto", backend: str = "auto",
         exclude_self: bool = False, block_rows: int | None = None,
         progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k: (scores (Q, k) float32, indices (Q, k) int64), best first, k clipped to
    len(keys) (to len(keys) - 1 with exclude_self).

    backend: "auto" (faiss when installed, len(keys) >= FAISS_MIN_KEYS and the keys fit in
    FAISS_MAX_BYTES as float32; else torch), "torch" (keys in blocks of `block_rows` rows, default
    32 MB of float32, each scored against the queries chunked over queries on `device`, "auto"
    = CUDA when available else CPU: at most `chunk` queries, and never more than BLOCK scores,
    at a time), "faiss" (IndexFlatIP, or faiss.knn per key block for keys over
    FAISS_MAX_BYTES; RuntimeError when faiss is not installed), "numpy" (a plain argsort of
    the whole score matrix: the reference, for small inputs). Exact ties may come out in a
    different order per backend. exclude_self=True (queries and keys the same set) drops each
    query's own row: image->image and text->text neighbours. A 1-D query (d,) gives (k,)
    arrays. Queries, too, are read in blocks of `block_rows`; `progress(done, total)` counts query x
    key rows scored (torch).
    """
    single = np.ndim(queries) == 1
    queries, keys = _matrix(queries), _matrix(keys)
    queries = queries[None] if single else queries
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries {queries.shape} and keys {keys.shape} must be (n, d) arrays of the same d")
    if exclude_self and len(queries) != len(keys):
        raise ValueError(f"exclude_self needs the queries to be the keys: {len(queries)} queries, {len(keys)} keys")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if backend not in ("auto", "torch", "faiss", "numpy"):
        raise ValueError(f"backend must be 'auto', 'torch', 'faiss' or 'numpy', got {backend!r}")
    k = min(int(k), len(keys) - int(exclude_self))
    fetch = k + int(exclude_self)  # one more, so the query's own row can be dropped
    rows = block_rows or _block_rows(keys.shape[1])
    if backend == "auto":
        fits = len(keys) * keys.shape[1] * 4 <= FAISS_MAX_BYTES
        backend = "faiss" if len(keys) >= FAISS_MIN_KEYS and fits and faiss_available() else "torch"
    if k <= 0 or len(queries) == 0:
        z = (len(queries), max(k, 0))
        scores, idx = np.zeros(z, np.float32), np.zeros(z, np.int64)
        return (scores[0], idx[0]) if single else (scores, idx)
    out_s, out_i = [], []
    for qs in range(0, len(queries), rows):  # a block of queries at a time, each against every key
        q = _unit(queries[qs:qs + rows])
        if backend == "numpy":
            s, i = _topk_numpy(q, _unit(keys), fetch, chunk)
        elif backend == "faiss":
            s, i = _topk_faiss(q, keys, fetch, rows)
        else:
            norms = _NORMS.get(_norms_key(keys)) if len(q) <= COARSE_MAX_QUERIES and keys.dtype == np.float16 else None
            got = _topk_coarse(q, keys, fetch, rows, norms) if norms is not None and not exclude_self else None
            s, i = got if got is not None else _topk_blocked(q, keys, fetch, chunk, device, rows, progress,
                                                             qs * len(keys), len(queries) * len(keys))
        if exclude_self and k > 0:
            s, i = _drop_self(s, i, k, first=qs)
        out_s.append(s)
        out_i.append(i)
    scores, idx = np.concatenate(out_s), np.concatenate(out_i)
    return (scores[0], idx[0]) if single else (scores, idx)


# -----------------------------------------------------------------------------
# recall and ranks of the true partners

def _pairs(images, texts, text_owner) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The image and caption arrays (not copied) and each caption's image row, checked."""
    images, texts = _matrix(images), _matrix(texts)
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


def _small(images: np.ndarray, texts: np.ndarray) -> bool:
    return (len(images) + len(texts)) * images.shape[1] * 4 <= IN_MEMORY_BYTES


def _topk_both_ways(a: np.ndarray, b: np.ndarray, k: int, chunk: int = 4096,
                    device="auto") -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k nearest rows of b for each row of a, and of a for each row of b, best
    first, from one pass over the a x b scores (unit rows in, both in memory): each block's
    rows give a's top k, and its columns' top k are merged into a running top k per row of b.
    Half the products of two `topk` calls, for recall in both directions on small sets."""
    ka, kb = min(k, len(b)), min(k, len(a))
    dev = _device(device)
    scores, bt = _Scores(dev), torch.from_numpy(b).to(dev)
    rows, best_v, best_i = [], None, None
    for start, stop in _row_blocks(len(a), len(b), chunk):
        sims = scores(torch.from_numpy(a[start:stop]).to(dev), bt)
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


def recall_at_k(images, texts, k=(1, 5, 10), text_owner=None, *, queries: int | None = None, seed: int = 0,
                device="auto", progress: Progress | None = None) -> dict:
    """Image->text and text->image recall@k.

    `text_owner[j]` is the row of `images` that caption j describes; None means one caption per
    image (texts[i] describes images[i]). Image->text: a hit at k when ANY of the image's
    captions is among its k nearest captions (an image without captions never hits).
    Text->image: a hit when the caption's own image is among its k nearest images.
    k an int -> {"i2t": float, "t2i": float}; several -> {"i2t": {k: float}, "t2i": {k: float}}.

    queries=N: the image queries are `query_sample(len(images), N, seed)` and the caption
    queries `query_sample(len(texts), N, seed)`, each searched against ALL keys: exactly the
    full recall restricted to those queries. None: every query. Large sets are read in key
    blocks (memory stays bounded); `progress(done, total)` counts query x key rows scored.
    """
    images, texts, owner = _pairs(images, texts, text_owner)
    ks = [k] if isinstance(k, numbers.Integral) else [int(v) for v in k]
    if not ks or min(ks) < 1:
        raise ValueError(f"k must be positive, got {k}")
    qi, qt = query_sample(len(images), queries, seed), query_sample(len(texts), queries, seed)
    whole = len(qi) == len(images) and len(qt) == len(texts)
    if whole and _small(images, texts) and not (faiss_available() and max(len(images), len(texts)) >= FAISS_MIN_KEYS):
        i2t_idx, t2i = _topk_both_ways(_unit(images), _unit(texts), max(ks), device=device)
    else:
        total = (len(qi) * len(texts) + len(qt) * len(images))
        i2t_idx = topk(gather_rows(images, qi) if not whole else images, texts, max(ks), device=device, progress=progress and (
            lambda d, t: progress(d, total)))[1]
        t2i = topk(gather_rows(texts, qt) if not whole else texts, images, max(ks), device=device, progress=progress and (
            lambda d, t: progress(len(qi) * len(texts) + d, total)))[1]
    i2t_hit = owner[i2t_idx] == qi[:, None]  # owners of the retrieved captions
    t2i_hit = t2i == owner[qt][:, None]
    out = {"i2t": {v: float(i2t_hit[:, :v].any(axis=1).mean()) if len(qi) else 0.0 for v in ks},
           "t2i": {v: float(t2i_hit[:, :v].any(axis=1).mean()) if len(qt) else 0.0 for v in ks}}
    return {d: r[k] for d, r in out.items()} if isinstance(k, numbers.Integral) else out


def _own_scores(queries: np.ndarray, keys: np.ndarray, rows: np.ndarray, pairs: tuple[np.ndarray, np.ndarray]):
    """Per query row in `rows`, the best cosine to its own keys (-inf when it has none).
    `pairs` = (position in rows, key index) of every (query, own key) pair."""
    own = np.full(len(rows), -np.inf, np.float32)
    qpos, kidx = pairs
    step = 65_536
    for s in range(0, len(qpos), step):
        p, j = qpos[s:s + step], kidx[s:s + step]
        order = np.argsort(j, kind="stable")  # memory maps read fastest in order
        kj = _unit(gather_rows(keys, j[order]))
        qv = _unit(gather_rows(queries, rows[p[order]]))
        np.maximum.at(own, p[order], np.einsum("ij,ij->i", qv, kj))
    return own


def _rank_pass(queries: np.ndarray, keys: np.ndarray, query_label: np.ndarray, key_label: np.ndarray,
               rows: np.ndarray, chunk: int, device, progress: Progress | None = None,
               done: int = 0, total: int = 0) -> dict[str, np.ndarray]:
    """For the query rows `rows`: their own keys are those with key_label == query_label. rank:
    1 + the keys not their own more similar than their best own key by more than RANK_TIE (0
    when they have none); own: that best cosine; best / best_score: their nearest key. Own
    scores come from a gather of the own pairs; then keys are read in blocks, so memory stays
    bounded whatever their number."""
    n = len(rows)
    if n == 0 or len(keys) == 0:  # no keys: no query has an own one (rank 0), nor a nearest
        return {"rank": np.zeros(n, np.int64), "own": np.full(n, -np.inf, np.float32),
                "best": np.full(n, -1, np.int64), "best_score": np.full(n, -np.inf, np.float32)}
    ql = query_label[rows]
    order = np.argsort(key_label, kind="stable")
    lo = np.searchsorted(key_label[order], ql, side="left")
    hi = np.searchsorted(key_label[order], ql, side="right")
    qpos = np.repeat(np.arange(n), hi - lo)
    kidx = order[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])] if len(qpos) else np.zeros(0, np.int64)
    own = _own_scores(queries, keys, rows, (qpos, kidx))
    has_own = hi > lo
    norms = _NORMS.get(_norms_key(keys)) if n <= COARSE_MAX_QUERIES and keys.dtype == np.float16 else None
    got = _rank_coarse(_unit(gather_rows(queries, rows)), keys, norms, ql, key_label, own) if norms is not None else None
    if got is not None:
        if progress:
            progress(done + n * len(keys), total)
        above, best_i, best_v = got
        return {"rank": np.where(has_own, 1 + above, 0).astype(np.int64), "own": own, "best": best_i,
                "best_score": best_v}
    dev = _device(device)
    scores = _Scores(dev)
    q_unit = torch.from_numpy(_unit(gather_rows(queries, rows))).to(dev)
    own_t, ql_t = torch.from_numpy(own).to(dev), torch.from_numpy(ql).to(dev)
    above = torch.zeros(n, dtype=torch.int64, device=dev)
    best_v = torch.full((n,), -torch.inf, device=dev)
    best_i = torch.full((n,), -1, dtype=torch.int64, device=dev)
    for start, kb, _ in _key_blocks(keys, _block_rows(keys.shape[1])):
        kt = torch.from_numpy(kb).to(dev)
        kl = torch.from_numpy(key_label[start:start + len(kb)]).to(dev)
        for a, b in _row_blocks(n, len(kb), chunk):
            sims = scores(q_unit[a:b], kt)
            mine = kl[None, :] == ql_t[a:b, None]
            above[a:b] += ((sims > own_t[a:b, None] + RANK_TIE) & ~mine).sum(dim=1)
            m = sims.max(dim=1)
            better = m.values > best_v[a:b]
            best_v[a:b] = torch.where(better, m.values, best_v[a:b])
            best_i[a:b] = torch.where(better, m.indices + start, best_i[a:b])
        if progress:
            progress(done + n * (start + len(kb)), total)
    rank = np.where(has_own, 1 + above.cpu().numpy(), 0).astype(np.int64)
    return {"rank": rank, "own": own, "best": best_i.cpu().numpy(), "best_score": best_v.cpu().numpy()}


def _rank_coarse(q: np.ndarray, keys: np.ndarray, norms: np.ndarray, ql: np.ndarray, key_label: np.ndarray,
                 own: np.ndarray):
    """_rank_pass for one or two unit queries over float16 keys of known norms, from float16
    scores (see _topk_coarse: within COARSE_TOL of the float32 cosine): a key scoring more than
    own + RANK_TIE + COARSE_TOL is above, one scoring less than own + RANK_TIE - COARSE_TOL is
    not, and only those in between are scored again in float32; likewise the nearest key among
    those within 2 COARSE_TOL of the best float16 score. (above, best, best_score), or None
    when too many keys need rescoring."""
    q16 = torch.from_numpy(q).to(torch.float16)
    inv = (1.0 / np.maximum(norms, EPS)).astype(np.float32)
    rows = _block_rows(keys.shape[1])
    n = len(q)
    above = np.zeros(n, np.int64)
    line = own + RANK_TIE
    best_a = np.full(n, -np.inf, np.float32)
    unsure: list[list[np.ndarray]] = [[] for _ in range(n)]
    near_best: list[list[np.ndarray]] = [[] for _ in range(n)]
    count = 0
    for start in range(0, len(keys), rows):
        block = torch.from_numpy(np.array(keys[start:start + rows]))
        approx = (block @ q16.T).float().T.numpy() * inv[start:start + len(block)]  # (n, rows)
        other = key_label[start:start + len(block)][None, :] != ql[:, None]
        for i in range(n):
            a, m = approx[i], other[i]
            above[i] += np.count_nonzero((a > line[i] + COARSE_TOL) & m)
            band = np.flatnonzero((a >= line[i] - COARSE_TOL) & (a <= line[i] + COARSE_TOL) & m)
            best_a[i] = max(best_a[i], a.max())
            near = np.flatnonzero(a >= best_a[i] - 2 * COARSE_TOL)
            unsure[i].append(band + start)
            near_best[i].append(near + start)
            count += len(band) + len(near)
        if count > COARSE_MAX_CANDIDATES:
            return None
    release_pages(keys)
    best_i, best_v = np.zeros(n, np.int64), np.zeros(n, np.float32)
    for i in range(n):
        band = np.concatenate(unsure[i])
        if len(band):
            above[i] += int(np.count_nonzero(_unit(gather_rows(keys, band)) @ q[i] > line[i]))
        near = np.unique(np.concatenate(near_best[i]))
        exact = _unit(gather_rows(keys, near)) @ q[i]
        best_i[i], best_v[i] = near[int(exact.argmax())], exact.max()
    return above, best_i, best_v


def partner_ranks(images, texts, text_owner=None, *, rows=None, chunk: int = 4096, device="auto",
                  progress: Progress | None = None) -> dict:
    """Where each true partner ranks (1 = first), chunked (no whole n x m matrix).

    "i2t": (n,) int64, for image i: 1 + the number of captions not its own that are strictly
    more similar to it than its most similar own caption; an image with no caption gets 0.
    "t2i": (m,) int64, for caption j: 1 + the number of images strictly more similar to it
    than its own image. Without ties, (ranks["i2t"] <= k).mean() equals recall_at_k's i2t at k
    (when every image has a caption) and likewise for t2i.

    rows: only these image rows and their captions (one pair on a large set: a pass over the
    keys instead of n of them); then "i2t" is (len(rows),), "t2i" holds the ranks of the
    captions listed in "captions" (theirs, in caption order).
    """
    images, texts, owner = _pairs(images, texts, text_owner)
    img_rows = np.arange(len(images)) if rows is None else np.asarray(rows, dtype=np.int64)
    txt_rows = np.arange(len(texts)) if rows is None else np.flatnonzero(np.isin(owner, img_rows))
    image_label = np.arange(len(images))
    total = len(img_rows) * len(texts) + len(txt_rows) * len(images)
    i2t = _rank_pass(images, texts, image_label, owner, img_rows, chunk, device, progress, 0, total)["rank"]
    t2i = _rank_pass(texts, images, owner, image_label, txt_rows, chunk, device, progress,
                     len(img_rows) * len(texts), total)["rank"]
    out = {"i2t": i2t.astype(np.int64), "t2i": t2i.astype(np.int64)}
    if rows is not None:
        out["captions"] = txt_rows
    return out


def worst_pairs(images, texts, text_owner=None, limit: int = 50, *, queries: int | None = None, seed: int = 0,
                device="auto", progress: Progress | None = None):
    """The `limit` captions whose own image ranks worst for them (text->image rank, highest
    first; ties: lower cosine to the own image first), as a DataFrame with columns caption (row
    into texts), image (its owner row), t2i_rank, own_cosine, best_image (the image it is most
    similar to) and best_cosine. A quick way to find captions that describe another image.
    queries=N: the worst among a seeded sample of N captions (`query_sample`), each ranked
    against ALL images."""
    import pandas as pd

    images, texts, owner = _pairs(images, texts, text_owner)
    rows = query_sample(len(texts), queries, seed)
    total = len(rows) * len(images)
    r = _rank_pass(texts, images, owner, np.arange(len(images)), rows, 4096, device, progress, 0, total)
    order = np.lexsort((r["own"], -r["rank"]))[:limit]  # the last key sorts first
    caption = rows[order]
    return pd.DataFrame({"caption": caption, "image": owner[caption], "t2i_rank": r["rank"][order].astype(np.int64),
                         "own_cosine": r["own"][order], "best_image": r["best"][order].astype(np.int64),
                         "best_cosine": r["best_score"][order]})
