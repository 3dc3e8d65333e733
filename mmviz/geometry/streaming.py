"""How mmviz.geometry reads its inputs: checked as real 2-D arrays, streamed ROWS rows at a
time (normalised to unit length chunk by chunk, in float64, pages of memory maps let go as
they are read), with one range of rows per worker thread, and the m x m Gram blocks of the
O(n^2) metrics. The metrics themselves are in mmviz.geometry (the package's __init__).

The knobs below are module attributes read at call time, so a test can shrink them."""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ..arrays import gather_rows, release_pages

ROWS = 2048  # rows per chunk: 8 MB in float64 at d = 512, small enough for malloc to reuse (no page faults)
BLOCK = 2 ** 24  # entries per block of an m x m product (128 MB in float64), so max_n = 100k still fits
RELEASE_EVERY = 16  # chunks a pass reads from a memory map before letting its pages go (32 to 64 MB at d = 512)
WORKERS = max(1, min(8, os.cpu_count() or 1))  # threads for the streaming passes on CPU (see _by_rows)
CPU_NUMPY = True  # on CPU run the products with numpy's BLAS (see _gram_add); False: torch everywhere


# -----------------------------------------------------------------------------
# input handling

def _device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _numpy(device: torch.device | None) -> bool:
    """Whether the products run in numpy (CPU) rather than torch (CUDA, or CPU_NUMPY off)."""
    return device is None or (device.type == "cpu" and CPU_NUMPY)


def _array(x, name: str) -> np.ndarray:
    """x as a 2-D real numeric numpy array (no copy when it already is one)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()  # np.asarray cannot read CUDA tensors, tensors needing grad, or bfloat16
        x = x.float() if x.dtype == torch.bfloat16 else x
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected a real numeric array, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n, d), got shape {x.shape}")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name}: need at least 2 rows of at least 1 dimension, got shape {x.shape}")
    return x


def _pair(images, texts) -> tuple[np.ndarray, np.ndarray]:
    x, y = _array(images, "images"), _array(texts, "texts")
    if x.shape != y.shape:
        raise ValueError(f"images and texts must have the same shape (row i of each is pair i), "
                         f"got {x.shape} and {y.shape}")
    return x, y


def _unit(rows: np.ndarray, name: str, offset: int = 0) -> np.ndarray:
    """A float64 copy of rows scaled to unit length; `offset` only numbers rows in errors."""
    out = np.array(rows, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))
    bad = ~np.isfinite(norms)  # a NaN or inf anywhere in a row makes its norm non-finite
    if bad.any():
        raise ValueError(f"{name}: row {offset + int(np.flatnonzero(bad)[0])} contains NaN or inf")
    if (norms == 0).any():
        raise ValueError(f"{name}: row {offset + int(np.flatnonzero(norms == 0)[0])} is all zeros (no direction)")
    out /= norms[:, None]
    return out


def _subsample(n: int, max_n: int, seed: int) -> np.ndarray | None:
    """Sorted indices of max_n of the n rows (seeded), or None when all n are used."""
    if max_n < 2:
        raise ValueError(f"max_n must be at least 2, got {max_n}")
    if n <= max_n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=max_n, replace=False))


def _rows(x: np.ndarray, idx: np.ndarray | None, name: str) -> np.ndarray:
    """The unit rows idx of x (all rows if idx is None). Scattered rows of a memory map fault in
    the pages around each: gather_rows lets them go again (1.8 GB of a 2 GB map at 1M pairs)."""
    return _unit(x if idx is None else gather_rows(x, idx), name)


# -----------------------------------------------------------------------------
# streaming passes over the rows: sums, Gram matrices, paired cosines

def _by_rows(fn, n: int, device: torch.device | None) -> list:
    """[fn(start, stop)] over contiguous row ranges, one per worker thread, each thread with a
    single-threaded BLAS. OpenBLAS's own threads busy-wait for each other: with another process
    on one of the 2 cores of the dev machine, a tall X^T X took 3.2 s with 2 BLAS threads against
    0.8 s with 1. One range per Python thread scales either way (numpy releases the GIL in BLAS
    and in the elementwise work). CUDA: one range, the GPU does the parallel work."""
    k = WORKERS if _numpy(device) and n >= 2 * ROWS else 1
    edges = np.linspace(0, n, k + 1).astype(int)
    with threadpool_limits(1, "blas"):
        if k == 1:
            return [fn(0, n)]
        with ThreadPoolExecutor(k) as pool:
            return list(pool.map(fn, edges[:-1], edges[1:]))


def _let_go(chunk: int, *arrays) -> None:
    """Every RELEASE_EVERY chunks of a pass, drop the pages read so far from memory-mapped
    inputs: they stay in the page cache but no longer count in this process's memory, which
    otherwise grows by the whole file (2 GB for 1M x 512 float16) during a pass."""
    if chunk % RELEASE_EVERY == RELEASE_EVERY - 1:
        release_pages(*(a for a in arrays if a is not None))


def _gram_add(g, c: np.ndarray, device: torch.device | None):
    """g += c^T c. On CPU numpy's BLAS runs `c.T @ c` as a symmetric rank-k update (half the
    flops): 3x faster than torch's float64 matmul on the 2-core dev machine."""
    if _numpy(device):
        g += c.T @ c
    else:
        ct = torch.as_tensor(c, device=device)
        g += ct.T @ ct


def _moments(x: np.ndarray, y: np.ndarray | None = None, gram: bool = False,
             device: torch.device | None = None) -> dict:
    """One pass over the rows of x (and y), normalising ROWS at a time. Returns n, sx = sum of
    unit rows, gx = their Gram matrix X^T X (if gram); with y also sy, gy and cos (n,), the
    paired cosines. Every row is checked on the way (NaN, inf, zero rows raise)."""
    n, d = x.shape
    cos = np.empty(n) if y is not None else None

    def part(start: int, stop: int) -> dict:
        zeros = (lambda: np.zeros((d, d))) if _numpy(device) else (
            lambda: torch.zeros((d, d), dtype=torch.float64, device=device))
        out = {"sx": np.zeros(d), "gx": zeros() if gram else None}
        if y is not None:
            out.update(sy=np.zeros(d), gy=zeros() if gram else None)
        for chunk, s in enumerate(range(start, stop, ROWS)):
            _let_go(chunk, x, y)
            e = min(s + ROWS, stop)
            xc = _unit(x[s:e], "images" if y is not None else "x", s)
            out["sx"] += xc.sum(0)
            if gram:
                _gram_add(out["gx"], xc, device)
            if y is not None:
                yc = _unit(y[s:e], "texts", s)
                out["sy"] += yc.sum(0)
                cos[s:e] = np.einsum("ij,ij->i", xc, yc)  # ranges are disjoint: no two threads write a row
                if gram:
                    _gram_add(out["gy"], yc, device)
        return out

    parts = _by_rows(part, n, device)
    release_pages(x, y)
    out = {"n": n, "cos": cos}
    for k, v in parts[0].items():
        if v is not None:
            v = sum(p[k] for p in parts)
            v = v.cpu().numpy() if isinstance(v, torch.Tensor) else v
        out[k] = v
    return out


# -----------------------------------------------------------------------------
# the m x m blocks of the O(n^2) metrics

def _blocks(a: np.ndarray, b: np.ndarray, device: torch.device):
    """Yield (start, a[start:stop] @ b.T as a float64 tensor), blocks of at most BLOCK entries.
    With max_n <= 4096 this is one block, and for a is b the CPU product is a syrk."""
    step = max(1, BLOCK // len(b))
    bt = None if _numpy(device) else torch.as_tensor(b, device=device)
    for s in range(0, len(a), step):
        if _numpy(device):
            yield s, torch.from_numpy(a[s:s + step] @ b.T)
        else:
            yield s, torch.as_tensor(a[s:s + step], device=device) @ bt.T


def _drop_diagonal(g: torch.Tensor, start: int) -> torch.Tensor:
    """Set entries (r, start + r) of a row block to -inf in place: u == v (or pair i with itself)."""
    r = torch.arange(len(g), device=g.device)
    g[r, start + r] = -math.inf
    return g


def _kernel_exponent(g: torch.Tensor, t: float) -> torch.Tensor:
    """-t ||u - v||^2 = -t (2 - 2 u.v) for unit u, v, from the cosines g (in place). Clamped at 0
    because rounding can make 2 - 2 u.v slightly negative for (nearly) equal vectors."""
    return g.mul_(2 * t).sub_(2 * t).clamp_(max=0.0)


def _logsumexp_(e: torch.Tensor) -> float:
    """log sum exp(e), overwriting e (no second m x m buffer). -inf entries count as 0."""
    top = e.max()
    if top == -math.inf:
        return -math.inf
    return float(top + torch.log(e.sub_(top).exp_().sum()))


def _self_logsum(a: np.ndarray, t: float, device: torch.device) -> float:
    """log sum over ordered pairs u != v of rows of a of exp(-t ||u - v||^2), via log-sum-exp so
    a large t cannot underflow to log(0)."""
    total = -math.inf
    for s, g in _blocks(a, a, device):
        total = float(np.logaddexp(total, _logsumexp_(_drop_diagonal(_kernel_exponent(g, t), s))))
    return total


def _cross(a: np.ndarray, b: np.ndarray, t: float | None, device: torch.device) -> tuple[float, np.ndarray]:
    """Over all (i, j): log sum of exp(-t ||a_i - b_j||^2) (if t is given), and for every i the
    hardest negative max_{j != i} cos(a_i, b_j)."""
    total, hardest = -math.inf, []
    for s, g in _blocks(a, b, device):
        r = torch.arange(len(g), device=g.device)
        own = g[r, s + r].clone()  # the max skips the pairs themselves, the kernel sum does not
        hardest.append(_drop_diagonal(g, s).max(dim=1).values.cpu().numpy())
        if t is not None:
            g[r, s + r] = own
            total = float(np.logaddexp(total, _logsumexp_(_kernel_exponent(g, t))))
    return total, np.concatenate(hardest)


def _check_t(t: float) -> float:
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"t must be a positive finite number, got {t}")
    return float(t)
