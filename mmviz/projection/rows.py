"""Reading (n, d) vector arrays without copying them whole.

Inputs may be large read-only memmaps, possibly float16: 1M image and 1M caption rows of 512
float32 would be 4 GB, so nothing here concatenates them or converts one whole. `Rows` sees
images and texts as the one stacked set the projections fit on (row i < n_images is
images[i], the rest are texts), reads it in float32 chunks, and gathers a sample by sorted
index from each part separately (sorted, a memmap reads each page once, front to back).
"""
from __future__ import annotations

import numpy as np

from ..arrays import gather_rows, release_pages

CHUNK = 16384  # rows read at once: 16k x 512 float32 = 32 MB


def unit_rows(x) -> np.ndarray:
    """float32 rows scaled to unit length (zero rows stay zero). For one chunk or sample: it
    converts the whole of `x`."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array (n, d), got shape {x.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))[:, None]
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


class Rows:
    """Several (n_i, d) arrays seen as one stacked (sum n_i, d) set, never stacked in memory.
    `Rows(images, texts)`: the joint set of a projection; `Rows(x)`: one array. Arrays are
    kept as given (a memmap stays a memmap); reads return float32 (float64 when an input is
    float64 or integer: exact inputs stay exact)."""

    def __init__(self, *parts):
        arrays = [p if isinstance(p, np.ndarray) else np.asarray(p) for p in parts]
        if not arrays:
            raise ValueError("Rows needs at least one array")
        for a in arrays:
            if a.ndim != 2:
                raise ValueError(f"expected 2-D arrays (n, d), got shape {a.shape}")
        if len({a.shape[1] for a in arrays}) != 1:
            raise ValueError("arrays must share their width d, got shapes "
                             + " and ".join(str(a.shape) for a in arrays))
        self.parts = arrays
        self.dtype = np.result_type(np.float32, *[a.dtype for a in arrays])
        self.offsets = np.cumsum([0] + [len(a) for a in arrays])

    @classmethod
    def of(cls, x) -> "Rows":
        return x if isinstance(x, Rows) else cls(x)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), int(self.parts[0].shape[1])

    def chunks(self, size: int = CHUNK):
        """(start, block) in row order, blocks of `self.dtype`; a block never spans two parts.
        A memory map's pages are let go after each block: a pass would otherwise leave the
        whole file counted in the process's memory (2 GB for 1M x 512 float16 pairs)."""
        for part, offset in zip(self.parts, self.offsets):
            for s in range(0, len(part), size):
                yield int(offset) + s, np.asarray(part[s:s + size], dtype=self.dtype)
                release_pages(part)  # the caller is done with the block

    def take(self, idx) -> np.ndarray:
        """Rows (of `self.dtype`) at the sorted, distinct stacked indices `idx`."""
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) > 1 and np.any(np.diff(idx) <= 0):
            raise ValueError("Rows.take needs sorted, distinct indices")
        if len(idx) and (idx[0] < 0 or idx[-1] >= len(self)):
            raise IndexError(f"row index out of range 0..{len(self) - 1}")
        out = np.empty((len(idx), self.shape[1]), dtype=self.dtype)
        bounds = np.searchsorted(idx, self.offsets)
        for part, offset, lo, hi in zip(self.parts, self.offsets, bounds[:-1], bounds[1:]):
            if hi > lo:
                out[lo:hi] = gather_rows(part, idx[lo:hi] - offset)  # lets a map's pages go as it reads
        return out

    def part_of(self, idx) -> np.ndarray:
        """Which part each stacked index belongs to (0: images, 1: texts for Rows(images, texts))."""
        return np.searchsorted(self.offsets, np.asarray(idx), side="right") - 1
