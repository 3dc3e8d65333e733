"""Linear projections: PCA and the gap-axis view (GapPCA), fitted and applied in row chunks
so a memmapped set of millions of rows is never copied whole."""
from __future__ import annotations

import numpy as np

from .rows import CHUNK, Rows


def _mean(rows: Rows, chunk: int) -> np.ndarray:
    """float64 mean of the rows, chunk by chunk."""
    total = np.zeros(rows.shape[1])
    for _, block in rows.chunks(chunk):
        total += block.sum(0, dtype=np.float64)
    return total / max(len(rows), 1)


def _group_sums(rows: Rows, chunk: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 sums of the rows where `mask` is true and of the others, in one pass."""
    sums = np.zeros((2, rows.shape[1]))
    for s, block in rows.chunks(chunk):
        m = mask[s:s + len(block)]
        sums[0] += block[m].sum(0, dtype=np.float64)
        sums[1] += block[~m].sum(0, dtype=np.float64)
    return sums[0], sums[1]


def _scatter(rows: Rows, mean: np.ndarray, chunk: int) -> np.ndarray:
    """sum over rows of (x - mean)(x - mean)^T in float64, chunk by chunk."""
    d = rows.shape[1]
    out = np.zeros((d, d))
    for _, block in rows.chunks(chunk):
        xc = block.astype(np.float64)
        xc -= mean  # in place: one float64 copy of the chunk, not two
        out += xc.T @ xc
    return out


def _sign_fixed(components: np.ndarray) -> np.ndarray:
    """Each row flipped so its largest-magnitude entry is positive: independent of LAPACK."""
    big = np.argmax(np.abs(components), axis=1)
    return components * np.sign(components[np.arange(len(components)), big])[:, None]


class PCA:
    """Principal components by SVD of the covariance matrix (float64, accumulated in chunks
    so a large or memmapped set never needs a float64 copy). State is plain arrays: `mean_`
    (d,), `components_` (k, d), `explained_variance_` (k,). Signs are fixed so the
    largest-magnitude entry of each component is positive, which makes the result
    independent of LAPACK. `seed` is accepted for a uniform interface; PCA is deterministic.
    `fit` and `transform` take an array (a memmap is read in chunks) or a `Rows`."""

    def __init__(self, n_components: int = 2, seed: int = 0):
        self.n_components = int(n_components)
        self.seed = seed
        self.mean_: np.ndarray | None = None
        self.components_: np.ndarray | None = None
        self.explained_variance_: np.ndarray | None = None

    def fit(self, x, chunk: int = CHUNK) -> "PCA":
        rows = Rows.of(x)
        n, d = rows.shape
        if not 1 <= self.n_components <= min(n, d):
            raise ValueError(f"n_components={self.n_components} needs 1..{min(n, d)} for data of shape {rows.shape}")
        mean = _mean(rows, chunk)
        cov = _scatter(rows, mean, chunk) / max(n - 1, 1)
        _, s, vt = np.linalg.svd(cov, hermitian=True)  # symmetric PSD: SVD == eigendecomposition
        self.mean_, self.components_ = mean, _sign_fixed(vt[:self.n_components])
        self.explained_variance_ = s[:self.n_components]
        return self

    def transform(self, x, chunk: int = CHUNK) -> np.ndarray:
        if self.components_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        rows = Rows.of(x)
        out = np.empty((len(rows), len(self.components_)), dtype=np.float32)
        for s, block in rows.chunks(chunk):
            xc = block.astype(np.float64)
            xc -= self.mean_
            out[s:s + len(block)] = xc @ self.components_.T
        return out

    def fit_transform(self, x) -> np.ndarray:
        return self.fit(x).transform(x)


class GapPCA(PCA):
    """A 2-D view whose horizontal axis is the modality gap: component 1 is the unit gap
    direction (image mean minus text mean), component 2 the first principal direction of the
    points once that direction is projected out. Plain PCA often hides the gap, because it
    is nearly orthogonal to the directions either modality varies in (Zhang et al., "Connect,
    Collapse, Corrupt", ICLR 2024); here it is the x axis by construction. Fit with the
    modality of each row: `fit(x, is_image)`, or `fit(Rows(images, texts))`, where the
    parts say it. State is PCA's (mean_, components_, explained_variance_)."""

    def __init__(self, n_components: int = 2, seed: int = 0):
        super().__init__(n_components=2, seed=seed)

    def fit(self, x, is_image=None, chunk: int = CHUNK) -> "GapPCA":
        rows = Rows.of(x)
        if is_image is None and len(rows.parts) == 2:
            is_image = np.arange(len(rows)) < rows.offsets[1]
        if is_image is None or np.all(is_image) or not np.any(is_image):
            raise ValueError("GapPCA needs rows of both modalities: fit(x, is_image) or fit(Rows(images, texts))")
        is_image = np.asarray(is_image, dtype=bool)
        n_img = int(is_image.sum())
        img_sum, txt_sum = _group_sums(rows, chunk, is_image)
        gap = img_sum / n_img - txt_sum / (len(rows) - n_img)
        g = gap / max(np.linalg.norm(gap), 1e-12)
        mean = (img_sum + txt_sum) / len(rows)
        cov = _scatter(rows, mean, chunk) / max(len(rows) - 1, 1)
        # The covariance with the gap direction projected out is P C P (P = I - g g^T):
        # projecting each centred row first gives the same matrix, one pass fewer.
        proj = np.eye(len(g)) - np.outer(g, g)
        w, v = np.linalg.eigh(proj @ cov @ proj)
        pc = _sign_fixed(v[:, -1][None])[0]
        self.mean_, self.components_ = mean, np.stack([g, pc])
        self.explained_variance_ = np.array([g @ cov @ g, pc @ cov @ pc])
        return self

    def fit_transform(self, x, is_image=None) -> np.ndarray:
        return self.fit(x, is_image).transform(x)
