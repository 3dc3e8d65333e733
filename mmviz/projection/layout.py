"""Joint layouts of images and captions: one fit on the stacked rows (so the modality gap
stays visible), on a seeded sample when the set is large, the rest placed in chunks."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .dosnes import DOSNES
from .pca import PCA, GapPCA
from .progress import Progress, as_progress
from .rows import CHUNK, Rows
from .umap import UMAP

METHODS = ("gap2", "pca2", "pca3", "umap2", "umap3", "dosnes")
# Most points a method is fitted on; the rest of a larger set is placed with transform().
# PCA is fitted on every row, in chunks (2M x 512 float16: 80 s on 2 cores, then 26 s to
# project them); UMAP's fit grows ~n log n but its memory and time get long past tens of
# thousands; DOSNES is dense O(n^2) per step (2,000 points: seconds on 2 CPU cores).
DEFAULT_MAX_FIT = {"gap": None, "pca": None, "umap": 20000, "dosnes": 2000}
NAMES = {"gap": "the gap axis", "pca": "PCA", "umap": "UMAP", "dosnes": "DOSNES"}


class LazyEstimator:
    """Stands in for an estimator that a layout cache hit did not rebuild. The first
    `transform` builds it (UMAP and DOSNES: from the fitted rows, read back from the inputs
    by the layout's fit_index, and their cached positions; no refit)."""

    def __init__(self, build: Callable[[], object]):
        self._build, self._estimator = build, None

    @property
    def estimator(self):
        if self._estimator is None:
            self._estimator = self._build()
        return self._estimator

    @property
    def fitted(self) -> bool:
        return self._estimator is not None

    def transform(self, x, *args, **kwargs) -> np.ndarray:
        return self.estimator.transform(x, *args, **kwargs)


@dataclass
class Layout:
    """Coordinates of one joint projection: `image_xy` (n, dims) and `text_xy` (m, dims)
    float32, rows of the images / texts given (read-only memmaps after a cache hit).
    `fit_index` says which rows of the stacked [images; texts] the estimator was fitted on
    (the others were placed with its transform). `estimator.transform` places new vectors in
    the same layout (a LazyEstimator after a cache hit)."""

    image_xy: np.ndarray
    text_xy: np.ndarray
    method: str
    params: dict
    seed: int
    fit_index: np.ndarray
    estimator: object = None
    seconds: float = 0.0  # time the projection took when it was computed
    key: str = ""  # layout cache key, when it came through cached_layout

    @property
    def dims(self) -> int:
        return int(self.image_xy.shape[1])


def family(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}; choose from {', '.join(METHODS)}")
    return method.rstrip("23")


def resolve_max_fit(method: str, max_fit="auto") -> int | None:
    """`max_fit` as used: "auto" -> DEFAULT_MAX_FIT for the method, None -> no limit."""
    return DEFAULT_MAX_FIT[family(method)] if max_fit == "auto" else (None if max_fit is None else int(max_fit))


def make_estimator(method: str, params: dict | None = None, seed: int = 0, progress: Progress | None = None):
    params = dict(params or {})
    fam = family(method)
    if fam == "gap":
        return GapPCA(seed=seed, **params)
    if fam == "pca":
        return PCA(n_components=int(method[-1]), seed=seed, **params)
    if fam == "umap":
        return UMAP(n_components=int(method[-1]), seed=seed, **params)
    return DOSNES(seed=seed, progress=progress, **params)


def fit_rows(n: int, max_fit: int | None, seed: int) -> np.ndarray:
    """Indices (sorted) of the rows to fit: all, or a seeded sample of max_fit of them."""
    if max_fit is None or n <= max_fit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_fit, replace=False))


def pair_rows(images, texts) -> Rows:
    """Rows(images, texts), checked: two 2-D arrays of the same width."""
    shapes = [np.shape(images), np.shape(texts)]
    if any(len(s) != 2 for s in shapes) or shapes[0][1] != shapes[1][1]:
        raise ValueError(f"images and texts must be (n, d) and (m, d), got {shapes[0]} and {shapes[1]}")
    return Rows(images, texts)


def fit_estimator(est, rows: Rows, idx: np.ndarray, chunk: int = CHUNK):
    """Fit `est` on the stacked rows at `idx` (all of them: read in chunks, never gathered)."""
    if len(idx) == len(rows) and isinstance(est, PCA):
        return est.fit(rows, chunk=chunk)  # GapPCA reads each row's modality from the two parts
    sample = rows.take(idx)
    if isinstance(est, GapPCA):
        return est.fit(sample, rows.part_of(idx) == 0)
    return est.fit(sample)


def project_pairs(images, texts, method: str, params: dict | None = None, seed: int = 0,
                  max_fit="auto", progress: Progress | None = None, chunk: int = CHUNK) -> Layout:
    """Project images (n, d) and texts (m, d) together with `method` (one of METHODS).

    They are always fitted as one set, so the distance between the modalities shows. With
    more than `max_fit` rows in all ("auto": DEFAULT_MAX_FIT), the estimator is fitted on a
    seeded sample of that many (gathered by sorted index from each input) and the rest are
    placed with its transform, `chunk` rows at a time: inputs may be memmaps of any float
    dtype and are never copied whole. `progress(done, total, stage)` (or the older
    `progress(done, total)`) follows each stage: "fitting UMAP on 20,000 points", DOSNES's
    steps, "placing 1,980,000 points" / "projecting ..." by rows.
    """
    t0 = time.perf_counter()
    rows = pair_rows(images, texts)
    n, n_img = len(rows), int(rows.offsets[1])
    fam, limit = family(method), resolve_max_fit(method, max_fit)
    idx = fit_rows(n, limit, seed)
    report = as_progress(progress) or (lambda done, total, stage: None)
    est = make_estimator(method, params, seed, progress)

    fit_stage = f"fitting {NAMES[fam]} on {len(idx):,} points"
    report(0, 1, fit_stage)
    fit_estimator(est, rows, idx, chunk)
    report(1, 1, fit_stage)
    dims = est.n_components
    coords = np.empty((n, dims), dtype=np.float32)
    if fam in ("pca", "gap"):  # linear: every row through the same map, the fitted ones too
        placed = np.ones(n, dtype=bool)
        stage = f"projecting {n:,} points"
    else:
        coords[idx] = est.embedding_
        placed = np.ones(n, dtype=bool)
        placed[idx] = False
        stage = f"placing {n - len(idx):,} points"
    total, done = int(placed.sum()), 0
    for s, block in rows.chunks(chunk):
        todo = placed[s:s + len(block)]
        if todo.any():
            coords[s:s + len(block)][todo] = est.transform(block[todo] if not todo.all() else block)
            done += int(todo.sum())
            report(done, total, stage)
    return Layout(image_xy=coords[:n_img], text_xy=coords[n_img:], method=method, params=dict(params or {}),
                  seed=seed, fit_index=idx, estimator=est, seconds=time.perf_counter() - t0)


def sample_for_3d(n_images: int, n_texts: int, limit: int = 50_000, seed: int = 0,
                  text_owner=None) -> tuple[np.ndarray, np.ndarray]:
    """Which rows a 3-D view draws when it cannot draw them all: (image rows, caption rows),
    sorted, at most `limit` in all, seeded. Everything when it fits.

    With `text_owner` (caption j describes image text_owner[j]) whole pairs are kept: images
    are taken in a seeded random order, each with all its captions, while they fit, so
    every drawn caption has its image drawn (and the lines joining them can be drawn); room
    left over goes to more images, drawn without their captions. Without it, images and
    captions are sampled independently, each in proportion to its count."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if n_images + n_texts <= limit:
        return np.arange(n_images), np.arange(n_texts)
    rng = np.random.default_rng(seed)
    if text_owner is None:
        k_img = int(round(limit * n_images / (n_images + n_texts)))
        k_txt = limit - k_img
        return (np.sort(rng.choice(n_images, k_img, replace=False)),
                np.sort(rng.choice(n_texts, k_txt, replace=False)))
    owner = np.asarray(text_owner, dtype=np.int64)
    if owner.shape != (n_texts,):
        raise ValueError(f"text_owner must hold {n_texts} image rows, got shape {owner.shape}")
    cost = 1 + np.bincount(owner, minlength=n_images)  # an image and all its captions
    order = rng.permutation(n_images)
    fits = np.cumsum(cost[order]) <= limit
    take = np.zeros(n_images, dtype=bool)
    take[order[fits]] = True
    captions = np.flatnonzero(take[owner])
    room = limit - int(take.sum()) - len(captions)
    take[order[~fits][:room]] = True  # in the same seeded order
    return np.flatnonzero(take), captions
