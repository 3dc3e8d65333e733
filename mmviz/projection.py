"""Projections of embedding vectors to 2-D / 3-D for plotting: PCA, UMAP and DOSNES.

Each estimator follows scikit-learn's fit / transform / fit_transform, takes a `seed` and is
deterministic for a given seed (on one machine and device). `project_pairs` projects images
and captions *jointly* (one fit on the stacked rows), so the modality gap stays visible, and
`cached_layout` keeps finished layouts in the workspace under `layouts/<key>.npz`.

DOSNES (Lu, Corander, Yang, "Doubly Stochastic Neighbor Embedding on Spheres", Pattern
Recognition Letters 2019) is implemented here in torch: Gaussian affinities made doubly
stochastic by Sinkhorn scaling, then symmetric t-SNE in 3-D with every point pulled back
onto a sphere after each step. The result is a set of unit vectors: a globe to look at.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

# progress(step, total): called now and then during a fit.
Progress = Callable[[int, int], None]

METHODS = ("gap2", "pca2", "pca3", "umap2", "umap3", "dosnes")
# Most points a method is fitted on; the rest of a larger set is placed with transform().
# PCA is cheap at any size; UMAP's fit grows ~n log n but its memory and time get long past
# tens of thousands; DOSNES is dense O(n^2) per step (2,000 points: ~8-10 s on 2 CPU cores).
DEFAULT_MAX_FIT = {"gap": None, "pca": None, "umap": 20000, "dosnes": 2000}
LAYOUT_FORMAT = 1


def _unit_rows(x) -> np.ndarray:
    """float32 rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array (n, d), got shape {x.shape}")
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _torch_device(device):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------------------
# PCA


class PCA:
    """Principal components by SVD of the covariance matrix (float64, accumulated in chunks
    so a 100k x 512 set never needs a float64 copy). State is plain arrays: `mean_` (d,),
    `components_` (k, d), `explained_variance_` (k,). Signs are fixed so the largest-magnitude
    entry of each component is positive, which makes the result independent of LAPACK.
    `seed` is accepted for a uniform interface; PCA is deterministic anyway."""

    def __init__(self, n_components: int = 2, seed: int = 0):
        self.n_components = int(n_components)
        self.seed = seed
        self.mean_: np.ndarray | None = None
        self.components_: np.ndarray | None = None
        self.explained_variance_: np.ndarray | None = None

    def fit(self, x, chunk: int = 16384) -> "PCA":
        x = np.asarray(x)
        n, d = x.shape
        if not 1 <= self.n_components <= min(n, d):
            raise ValueError(f"n_components={self.n_components} needs 1..{min(n, d)} for data of shape {x.shape}")
        mean = x.mean(axis=0, dtype=np.float64)
        cov = np.zeros((d, d))
        for s in range(0, n, chunk):
            xc = x[s:s + chunk].astype(np.float64) - mean
            cov += xc.T @ xc
        cov /= max(n - 1, 1)
        _, s, vt = np.linalg.svd(cov, hermitian=True)  # symmetric PSD: SVD == eigendecomposition
        comps = vt[:self.n_components]
        big = np.argmax(np.abs(comps), axis=1)
        comps *= np.sign(comps[np.arange(len(comps)), big])[:, None]
        self.mean_, self.components_, self.explained_variance_ = mean, comps, s[:self.n_components]
        return self

    def transform(self, x) -> np.ndarray:
        if self.components_ is None:
            raise RuntimeError("PCA is not fitted")
        x = np.asarray(x)
        return ((x.astype(np.float64) - self.mean_) @ self.components_.T).astype(np.float32)

    def fit_transform(self, x) -> np.ndarray:
        return self.fit(x).transform(x)


class GapPCA(PCA):
    """A 2-D view whose horizontal axis is the modality gap: component 1 is the unit gap
    direction (image mean minus text mean), component 2 the first principal direction of the
    points once that direction is projected out. Plain PCA often hides the gap, because it
    is nearly orthogonal to the directions either modality varies in (Zhang et al., "Connect,
    Collapse, Corrupt", ICLR 2024); here it is the x axis by construction. Fit with the
    modality of each row: `fit(x, is_image)`. State is PCA's (mean_, components_)."""

    def __init__(self, n_components: int = 2, seed: int = 0):
        super().__init__(n_components=2, seed=seed)

    def fit(self, x, is_image=None, chunk: int = 16384) -> "GapPCA":
        x = np.asarray(x)
        if is_image is None or np.all(is_image) or not np.any(is_image):
            raise ValueError("GapPCA needs rows of both modalities: fit(x, is_image)")
        is_image = np.asarray(is_image, dtype=bool)
        gap = x[is_image].mean(0, dtype=np.float64) - x[~is_image].mean(0, dtype=np.float64)
        g = gap / max(np.linalg.norm(gap), 1e-12)
        mean = x.mean(0, dtype=np.float64)
        cov = np.zeros((x.shape[1], x.shape[1]))
        for s in range(0, len(x), chunk):
            xc = x[s:s + chunk].astype(np.float64) - mean
            xc -= np.outer(xc @ g, g)  # remove the gap direction, then take the top component
            cov += xc.T @ xc
        w, v = np.linalg.eigh(cov / max(len(x) - 1, 1))
        pc = v[:, -1] * np.sign(v[np.argmax(np.abs(v[:, -1])), -1])
        self.mean_, self.components_ = mean, np.stack([g, pc])
        proj = (x.astype(np.float64) - mean) @ self.components_.T
        self.explained_variance_ = proj.var(0, ddof=1)
        return self

    def fit_transform(self, x, is_image=None) -> np.ndarray:
        return self.fit(x, is_image).transform(x)


# ----------------------------------------------------------------------------------------
# UMAP


class UMAP:
    """umap-learn behind the same interface. Imported lazily: the first fit in a process pays
    numba's compilation (~14 s on 2 cores). With a seed umap runs single-threaded and gives
    the same layout each time; `transform` places new points with umap's own transform."""

    def __init__(self, n_components: int = 2, n_neighbors: int = 15, min_dist: float = 0.1,
                 metric: str = "cosine", seed: int = 0):
        self.n_components, self.n_neighbors = int(n_components), int(n_neighbors)
        self.min_dist, self.metric, self.seed = float(min_dist), metric, seed
        self.model_ = None

    def fit(self, x) -> "UMAP":
        import warnings

        import umap

        x = np.asarray(x, dtype=np.float32)
        # umap cannot have more neighbours than points; tiny sets still get a layout.
        k = max(2, min(self.n_neighbors, len(x) - 1))
        self.model_ = umap.UMAP(n_components=self.n_components, n_neighbors=k, min_dist=self.min_dist,
                                metric=self.metric, random_state=self.seed)
        with warnings.catch_warnings():
            # "n_jobs overridden to 1 by setting random_state": the price of determinism, known.
            warnings.filterwarnings("ignore", message=".*n_jobs value.*")
            warnings.filterwarnings("ignore", message=".*random_state.*")
            self.model_.fit(x)
        return self

    @property
    def embedding_(self) -> np.ndarray:
        return np.asarray(self.model_.embedding_, dtype=np.float32)

    def transform(self, x) -> np.ndarray:
        if self.model_ is None:
            raise RuntimeError("UMAP is not fitted")
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*n_jobs value.*")
            return np.asarray(self.model_.transform(np.asarray(x, dtype=np.float32)), dtype=np.float32)

    def fit_transform(self, x) -> np.ndarray:
        return self.fit(x).embedding_


# ----------------------------------------------------------------------------------------
# DOSNES


def squared_distances(x):
    """Squared Euclidean distances between rows of a torch tensor, clamped at 0."""
    import torch

    sq = (x * x).sum(1)
    d2 = torch.addmm(sq[:, None] + sq[None, :], x, x.T, alpha=-2)
    return d2.clamp_(min=0)


def _shifted_distances(x):
    """Squared distances with the diagonal at +inf and entry (i, j) lowered by the mean of
    rows i's and j's nearest-neighbour distances. exp(-d / h) of this is D K D for a positive
    diagonal D, which Sinkhorn scaling absorbs (same doubly stochastic result), but no row
    underflows to all zeros however small h is, and symmetry is kept."""
    d2 = squared_distances(x)
    d2.fill_diagonal_(float("inf"))
    m = d2.min(dim=1, keepdim=True).values
    return d2.sub_(0.5 * (m + m.T))


def calibrate_width(d2, perplexity: float = 30.0, rows: int = 500, steps: int = 24) -> float:
    """The one kernel width h at which rows of exp(-d2 / h), each normalised to sum 1, have a
    mean entropy of log(perplexity): t-SNE's perplexity, but global, since DOSNES uses one h
    for all points (Sinkhorn then evens out the density). Bisection on log h over an evenly
    spaced subset of rows, so the cost stays O(rows * n)."""
    import torch

    n = d2.shape[0]
    perplexity = min(float(perplexity), (n - 1) / 3)  # cannot ask for more neighbours than there are
    sub = d2[torch.linspace(0, n - 1, min(rows, n), device=d2.device).long()]
    sub = sub - sub.min(dim=1, keepdim=True).values  # row shift: same row distribution, no underflow
    target = math.log(max(perplexity, 1.0 + 1e-6))
    lo, hi = math.log(1e-8), math.log(1e4)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        p = torch.softmax(-sub / math.exp(mid), dim=1)
        entropy = float(torch.special.entr(p).sum(1).mean())  # entr(0) = 0: the diagonal drops out
        if entropy > target:
            hi = mid
        else:
            lo = mid
    return math.exp(0.5 * (lo + hi))


def doubly_stochastic(k, tol: float = 1e-5, max_iter: int = 1000):
    """Sinkhorn-Knopp scaling of a symmetric non-negative matrix K to P = diag(d) K diag(d)
    whose rows and columns all sum to 1 (within `tol`, as the largest |row sum - 1|).

    For a symmetric K the row and the column scaling are the same vector at the solution;
    the update d <- sqrt(d / (K d)) is the geometric mean of one row-normalisation step and
    the column-normalisation step after it. It reaches the same P as plain alternation but
    without its slow back-and-forth on clustered data (2,000 CLIP-like points: tens to a
    few hundred rounds, where plain alternation often needed over 1,000 to reach 1e-6).
    Returns (P, rounds, error)."""
    import torch

    d = torch.ones(k.shape[0], dtype=k.dtype, device=k.device)
    err, rounds = float("inf"), 0
    for rounds in range(1, max_iter + 1):
        kd = k @ d
        err = float((d * kd - 1).abs().max())  # row sums of diag(d) K diag(d), minus 1
        if err < tol:
            break
        d = torch.sqrt(d / kd.clamp(min=1e-300))
    return d[:, None] * k * d[None, :], rounds, err


def dosnes_affinities(x, bandwidth: float = 1.0, perplexity: float | None = 30.0, tol: float = 1e-5,
                      max_iter: int = 1000):
    """DOSNES input affinities of unit rows `x` (a torch tensor; float64 advised): Gaussian
    kernel exp(-||x_i - x_j||^2 / h) with a zero diagonal, Sinkhorn-scaled to doubly
    stochastic, symmetrised and normalised to sum 1. h = bandwidth * calibrate_width(perplexity),
    or h = bandwidth itself when perplexity is None (the paper's absolute kernel).
    Returns (P, h, info) with info = {"rounds", "error"} of the Sinkhorn scaling."""
    d2 = _shifted_distances(x)
    h = float(bandwidth) * (calibrate_width(d2, perplexity) if perplexity else 1.0)
    k = (-d2 / h).exp_()  # exp(-inf) = 0: the diagonal is zero before scaling
    p, rounds, err = doubly_stochastic(k, tol, max_iter)
    p = 0.5 * (p + p.T)  # symmetric already up to rounding; t-SNE's P must be exactly so
    return p / p.sum(), h, {"rounds": rounds, "error": err}


class DOSNES:
    """Doubly stochastic neighbour embedding on the sphere S^2.

    Input rows are re-normalised to unit length. Affinities are exp(-||x_i - x_j||^2 / h),
    zero diagonal, Sinkhorn-scaled to doubly stochastic, symmetrised, normalised to sum 1.

    The kernel width: h = bandwidth * h_30, h_30 being the width at which kernel rows have a
    mean perplexity of `perplexity` (30, t-SNE's default). Why not the reference code's
    absolute h = 1: it was set for raw Gaussian data with squared distances in the tens;
    between unit vectors they lie in [0, 4] (CLIP pairs mostly 0.5-1.8), and h = 1 gives
    every point a perplexity near n: P is almost uniform and the layout mostly noise
    (trustworthiness 0.87 on 500 real CLIP pairs, against 0.96 calibrated). `bandwidth`
    stays a unitless knob (smaller: more local); `perplexity=None` makes h = bandwidth,
    the paper's absolute kernel.

    The layout minimises KL(P || Q), Q_ij proportional to (1 + ||y_i - y_j||^2)^-1 in 3-D,
    by gradient descent with gains and momentum (0.5, then 0.8 from step 250) as in van der
    Maaten's t-SNE, P exaggerated for the first 100 steps. After every step the points are
    centred and projected onto a sphere of their mean radius: that is what the authors'
    tsne_p_sphere.m does, and it matters, since on a sphere of radius 1 no two points are
    more than 2 apart and the Student-t kernel could not pull clusters apart. The result is
    that sphere scaled to radius 1. After the momentum switch the KL divergence is checked
    every 50 steps and the run stops when it improved by less than `tol` (relative) since
    the last check.

    Cost: dense n x n work per step, ~8 s for 2,000 points on 2 CPU cores (bench/projection.py).
    On a CPU shared with other busy processes torch's OpenMP threads can slow this loop many
    times over; torch.set_num_threads(1) is then the faster choice.

    `transform(new)` places each row from its `n_neighbors_place` nearest fitted rows
    (cosine): their layout positions averaged with the fit's kernel weights, then projected
    onto the sphere. A fitted point lands at (or very near) its own position.
    """

    def __init__(self, n_components: int = 3, bandwidth: float = 1.0, max_iter: int = 1000,
                 learning_rate: float | None = None, early_exaggeration: float = 4.0,
                 exaggeration_iter: int = 100, momentum: float = 0.5, final_momentum: float = 0.8,
                 momentum_switch_iter: int = 250, init: str = "pca", tol: float = 1e-3,
                 seed: int = 0, device=None, progress: Progress | None = None,
                 n_neighbors_place: int = 10, perplexity: float | None = 30.0,
                 sinkhorn_tol: float = 1e-5):
        if n_components != 3:
            raise ValueError("DOSNES embeds on the sphere S^2: n_components must be 3")
        if init not in ("pca", "random"):
            raise ValueError(f"init must be 'pca' or 'random', not {init!r}")
        self.n_components = 3
        self.bandwidth, self.max_iter, self.learning_rate = float(bandwidth), int(max_iter), learning_rate
        self.early_exaggeration, self.exaggeration_iter = float(early_exaggeration), int(exaggeration_iter)
        self.momentum, self.final_momentum = float(momentum), float(final_momentum)
        self.momentum_switch_iter, self.init, self.tol = int(momentum_switch_iter), init, float(tol)
        self.seed, self.device, self.progress = seed, device, progress
        self.n_neighbors_place, self.perplexity = int(n_neighbors_place), perplexity
        self.sinkhorn_tol = float(sinkhorn_tol)
        # fitted state (plain arrays, so a layout file can rebuild the estimator)
        self.x_: np.ndarray | None = None  # (n, d) unit rows that were fitted
        self.embedding_: np.ndarray | None = None  # (n, 3) unit vectors
        self.h_: float | None = None  # kernel width used
        self.n_iter_ = 0
        self.kl_divergence_ = float("nan")
        self.sinkhorn_ = {}  # {"rounds", "error"} of the Sinkhorn scaling

    # -- fitting ------------------------------------------------------------------------

    def _init_layout(self, x: np.ndarray) -> np.ndarray:
        """Start points on a tiny sphere (radius 1e-4, as t-SNE's 1e-4 * randn start): PCA
        directions keep the global arrangement (and make the run seed-independent up to
        ties); random directions come from the seed."""
        n = len(x)
        if self.init == "pca" and n > 3 and x.shape[1] >= 3:
            y = PCA(3).fit_transform(x).astype(np.float64)
            # a whisper of seeded noise breaks exact ties (duplicate rows) without moving much
            y += np.random.default_rng(self.seed).normal(scale=1e-6 * (y.std() + 1e-12), size=y.shape)
        else:
            y = np.random.default_rng(self.seed).normal(size=(n, 3))
        y -= y.mean(0)
        y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return 1e-4 * y

    def fit(self, x) -> "DOSNES":
        import torch

        x = _unit_rows(x)
        n = len(x)
        if n < 2:
            self.x_, self.embedding_, self.h_ = x, np.tile([[0.0, 0.0, 1.0]], (n, 1)).astype(np.float32), 1.0
            return self
        dev = _torch_device(self.device)
        # float64 for the affinities: a small h makes kernel values span hundreds of orders
        # of magnitude. The optimisation runs in float32: half the memory traffic, and its
        # quantities (Student-t kernels, gradients) need no more.
        xt = torch.from_numpy(x).to(dev, torch.float64)
        p, h, self.sinkhorn_ = dosnes_affinities(xt, self.bandwidth, self.perplexity, self.sinkhorn_tol)
        del xt
        # Entries below 1e-30 carry no weight but would turn into float32 denormals, which
        # many x86 CPUs handle far more slowly than normal numbers.
        p = torch.where(p < 1e-30, torch.zeros_like(p), p)
        y = self._optimise(p.to(torch.float32), x, dev)
        self.x_, self.embedding_, self.h_ = x, y, float(h)
        return self

    def _optimise(self, p, x: np.ndarray, dev) -> np.ndarray:
        import torch

        n = p.shape[0]
        total = self.max_iter
        lr = self.learning_rate if self.learning_rate is not None else max(n / self.early_exaggeration / 4, 50.0)
        # P log P is constant: KL = const - sum P log Q. Computed once, for the stopping rule.
        const = float((p * torch.log(p.clamp(min=1e-30))).sum())
        y = torch.from_numpy(self._init_layout(x)).to(dev, torch.float32)
        inc = torch.zeros_like(y)
        gains = torch.ones_like(y)
        ones = torch.ones(n, 1, device=dev)
        num = torch.empty(n, n, device=dev)
        work = torch.empty(n, n, device=dev)
        pe = p * self.early_exaggeration if self.exaggeration_iter > 0 else p
        momentum = self.momentum
        last_kl, it = None, 0
        for it in range(1, total + 1):
            if it == self.exaggeration_iter + 1:
                pe = p
            if it == self.momentum_switch_iter + 1:
                momentum = self.final_momentum
            # All points lie on one sphere of radius r, so ||y_i - y_j||^2 = 2 r^2 - 2 y_i.y_j:
            # one matmul gives the Student-t denominators without a broadcast add.
            r2 = float((y * y).sum(1).mean())
            torch.addmm(torch.full((1, 1), 1 + 2 * r2, device=dev), y, y.T, alpha=-2, out=num)
            num.reciprocal_()
            num.fill_diagonal_(0)
            s = float(num.sum())
            # Gradient of KL: 4 sum_j (p_ij - q_ij) num_ij (y_i - y_j), q_ij = num_ij / s.
            # Written as two passes over n x n (the CPU time here is memory traffic).
            torch.add(pe, num, alpha=-1.0 / s, out=work)
            work.mul_(num)
            ly = work @ torch.cat([y, ones], 1)  # [L y | row sums of L] in one pass over L
            grad = 4 * (ly[:, 3:] * y - ly[:, :3])
            # van der Maaten's gains: grow where the step keeps direction, shrink where it flips.
            same = (grad > 0) == (inc > 0)
            gains = torch.where(same, gains * 0.8, gains + 0.2).clamp_(min=0.01)
            inc = momentum * inc - lr * gains * grad
            y = y + inc
            # back onto the sphere: centre, then every point to the mean radius
            y = y - y.mean(0)
            norms = y.norm(dim=1, keepdim=True).clamp_(min=1e-12)
            y = y * (norms.mean() / norms)
            if self.progress and (it % 10 == 0 or it == total):
                self.progress(it, total)
            if it % 50 == 0 and it > max(self.exaggeration_iter, self.momentum_switch_iter):
                # KL of the layout this step started from (num is still its kernel)
                kl = const - float((p * torch.log((num / s).clamp_(min=1e-30))).sum())
                self.kl_divergence_ = kl
                if last_kl is not None and last_kl - kl < self.tol * abs(last_kl):
                    break
                last_kl = kl
        self.n_iter_ = it
        if self.progress and it < total:
            self.progress(total, total)  # stopped early: the bar still ends full
        y = y / y.norm(dim=1, keepdim=True).clamp_(min=1e-12)
        return y.cpu().numpy().astype(np.float32)

    def fit_transform(self, x) -> np.ndarray:
        self.fit(x)
        return self.embedding_.copy()

    # -- placing new points -------------------------------------------------------------

    def transform(self, x, chunk: int = 4096) -> np.ndarray:
        if self.embedding_ is None:
            raise RuntimeError("DOSNES is not fitted")
        x = _unit_rows(x)
        k = max(1, min(self.n_neighbors_place, len(self.x_)))
        out = np.empty((len(x), 3), dtype=np.float32)
        for s in range(0, len(x), chunk):
            sim = x[s:s + chunk] @ self.x_.T  # cosine similarity, rows are unit
            nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            near = np.take_along_axis(sim, nn, axis=1)
            # the fit's own kernel: ||a - b||^2 = 2 - 2 cos for unit rows, shifted by the nearest
            d2 = 2 - 2 * near
            w = np.exp(-(d2 - d2.min(1, keepdims=True)) / self.h_)
            pos = (w[:, :, None] * self.embedding_[nn]).sum(1)
            norm = np.linalg.norm(pos, axis=1, keepdims=True)
            # neighbours on opposite sides can cancel: then take the nearest one's position
            best = nn[np.arange(len(nn)), near.argmax(1)]
            pos = np.where(norm > 1e-6, pos / np.maximum(norm, 1e-12), self.embedding_[best])
            out[s:s + chunk] = pos
        return out


# ----------------------------------------------------------------------------------------
# Joint projection of images and captions


class LazyEstimator:
    """Stands in for an estimator that a layout cache hit did not rebuild (UMAP: refitting
    costs seconds, and most views never place new points). The first `transform` refits it
    with the same rows, parameters and seed, so it places points against the same layout
    (umap-learn is deterministic for a seed on one machine)."""

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

    def transform(self, x) -> np.ndarray:
        return self.estimator.transform(x)


@dataclass
class Layout:
    """Coordinates of one joint projection. `image_xy[i]` / `text_xy[j]` are rows of the
    images / texts given; `fit_index` says which rows of vstack([images, texts]) the
    estimator was fitted on (the others were placed with its transform). `estimator.transform`
    places new vectors in the same layout (a LazyEstimator after a UMAP cache hit)."""

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


def _family(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}; choose from {', '.join(METHODS)}")
    return method.rstrip("23")


def resolve_max_fit(method: str, max_fit="auto") -> int | None:
    """`max_fit` as used: "auto" -> DEFAULT_MAX_FIT for the method, None -> no limit."""
    return DEFAULT_MAX_FIT[_family(method)] if max_fit == "auto" else (None if max_fit is None else int(max_fit))


def make_estimator(method: str, params: dict | None = None, seed: int = 0, progress: Progress | None = None):
    params = dict(params or {})
    family = _family(method)
    if family == "gap":
        return GapPCA(seed=seed, **params)
    if family == "pca":
        return PCA(n_components=int(method[-1]), seed=seed, **params)
    if family == "umap":
        return UMAP(n_components=int(method[-1]), seed=seed, **params)
    return DOSNES(seed=seed, progress=progress, **params)


def fit_rows(n: int, max_fit: int | None, seed: int) -> np.ndarray:
    """Indices (sorted) of the rows to fit: all, or a seeded sample of max_fit of them."""
    if max_fit is None or n <= max_fit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_fit, replace=False))


def _stack(images, texts) -> np.ndarray:
    images, texts = np.asarray(images, dtype=np.float32), np.asarray(texts, dtype=np.float32)
    if images.ndim != 2 or texts.ndim != 2 or images.shape[1] != texts.shape[1]:
        raise ValueError(f"images and texts must be (n, d) and (m, d), got {images.shape} and {texts.shape}")
    return np.concatenate([images, texts])


def project_pairs(images, texts, method: str, params: dict | None = None, seed: int = 0,
                  max_fit="auto", progress: Progress | None = None) -> Layout:
    """Project images (n, d) and texts (m, d) together with `method` (one of METHODS).

    They are always fitted as one set, so the distance between the modalities shows. With
    more than `max_fit` rows in all ("auto": DEFAULT_MAX_FIT), the estimator is fitted on a
    seeded sample of that many and the rest are placed with its transform.
    `progress(step, total)` follows DOSNES's steps; PCA and UMAP report start and end only.
    """
    t0 = time.perf_counter()
    x = _stack(images, texts)
    n_img = len(np.asarray(images))
    limit = resolve_max_fit(method, max_fit)
    idx = fit_rows(len(x), limit, seed)
    est = make_estimator(method, params, seed, progress)
    family = _family(method)
    if progress and family != "dosnes":
        progress(0, 1)
    # The gap view needs each fitted row's modality; the others fit on the points alone.
    fitted = est.fit_transform(x[idx], idx < n_img) if family == "gap" else est.fit_transform(x[idx])
    coords = np.empty((len(x), fitted.shape[1]), dtype=np.float32)
    coords[idx] = fitted
    rest = np.setdiff1d(np.arange(len(x)), idx, assume_unique=True)
    if len(rest):
        coords[rest] = est.transform(x[rest])
    if progress and family != "dosnes":
        progress(1, 1)
    return Layout(image_xy=coords[:n_img], text_xy=coords[n_img:], method=method, params=dict(params or {}),
                  seed=seed, fit_index=idx, estimator=est, seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------
# Layout cache: <workspace>/layouts/<key>.npz


def array_digest(*arrays) -> str:
    """sha256 of arrays' shapes and float32 bytes (dtype-independent, like store.content_hash)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a, dtype=np.float32)
        h.update(repr(a.shape).encode())
        h.update(a.reshape(-1))  # hashlib reads the buffer in place: no bytes copy of a big set
    return h.hexdigest()


def layout_key(key_parts: dict, method: str, params: dict | None, seed: int, max_fit: int | None,
               data_digest: str) -> str:
    spec = {"format": LAYOUT_FORMAT, "parts": key_parts, "method": method, "params": params or {},
            "seed": seed, "max_fit": max_fit, "data": data_digest}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def layout_path(ws, key: str) -> Path:
    return Path(ws.home) / "layouts" / f"{key}.npz"


def _save_layout(path: Path, layout: Layout) -> None:
    from .store import atomic_write_bytes

    arrays = {
        "format": np.array(LAYOUT_FORMAT), "method": np.array(layout.method),
        "params": np.array(json.dumps(layout.params, sort_keys=True, default=str)),
        "seed": np.array(layout.seed), "seconds": np.array(layout.seconds),
        "image_xy": layout.image_xy, "text_xy": layout.text_xy, "fit_index": layout.fit_index.astype(np.int64),
    }
    est = layout.estimator
    if isinstance(est, PCA):
        arrays.update(pca_mean=est.mean_, pca_components=est.components_, pca_variance=est.explained_variance_)
    elif isinstance(est, DOSNES):
        arrays.update(dosnes_x=est.x_, dosnes_y=est.embedding_, dosnes_h=np.array(est.h_))
    # UMAP: nothing; its model is a graph of Python objects, refitted lazily instead (never pickled).
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _load_layout(path: Path, key: str, method: str, params: dict | None, seed: int,
                 refit: Callable[[], object]) -> Layout:
    with np.load(path, allow_pickle=False) as z:
        if int(z["format"]) != LAYOUT_FORMAT or str(z["method"]) != method:
            raise ValueError(f"{path.name}: not a layout of this format and method")
        layout = Layout(image_xy=z["image_xy"], text_xy=z["text_xy"], method=method, params=dict(params or {}),
                        seed=seed, fit_index=z["fit_index"], seconds=float(z["seconds"]), key=key)
        family = _family(method)
        if family in ("pca", "gap"):
            est = make_estimator(method, params, seed)
            est.mean_, est.components_, est.explained_variance_ = z["pca_mean"], z["pca_components"], z["pca_variance"]
        elif family == "dosnes":
            est = make_estimator(method, params, seed)
            est.x_, est.embedding_, est.h_ = z["dosnes_x"], z["dosnes_y"], float(z["dosnes_h"])
        else:
            est = LazyEstimator(refit)
    layout.estimator = est
    return layout


def cached_layout(ws, key_parts: dict, images, texts, method: str, params: dict | None = None, seed: int = 0,
                  progress: Progress | None = None, max_fit="auto") -> tuple[Layout, bool]:
    """`project_pairs` through the workspace's layout cache. Returns (layout, hit).

    The key is sha256 of `key_parts` (say {"dataset": content hash, "model": fingerprint}),
    method, params, seed, the max_fit in force and a digest of the input arrays, so the
    same request on the same vectors is a hit and anything else is a miss. A hit reads one
    .npz: coordinates at once; PCA and DOSNES come back ready to place new points; UMAP comes
    back as a LazyEstimator that refits (seconds, plus numba's compile on first use in a
    process) only when something asks it to transform. An unreadable file counts as a miss
    and is rewritten.
    """
    limit = resolve_max_fit(method, max_fit)
    key = layout_key(key_parts, method, params, seed, limit, array_digest(images, texts))
    path = layout_path(ws, key)

    def refit():
        x = _stack(images, texts)
        idx = fit_rows(len(x), limit, seed)
        est = make_estimator(method, params, seed)
        return est.fit(x[idx], idx < len(np.asarray(images))) if _family(method) == "gap" else est.fit(x[idx])

    if path.is_file():
        try:
            return _load_layout(path, key, method, params, seed, refit), True
        except (OSError, ValueError, KeyError):
            pass  # truncated or foreign file: compute again and replace it
    layout = project_pairs(images, texts, method, params, seed, max_fit=limit, progress=progress)
    layout.key = key
    _save_layout(path, layout)
    return layout, False
