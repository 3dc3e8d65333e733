"""DOSNES: doubly stochastic neighbour embedding on the sphere (Lu, Corander, Yang, "Doubly
Stochastic Neighbor Embedding on Spheres", Pattern Recognition Letters 2019), in torch:
Gaussian affinities made doubly stochastic by Sinkhorn scaling, then symmetric t-SNE in 3-D
with every point pulled back onto a sphere after each step. The result is a set of unit
vectors: a globe to look at."""
from __future__ import annotations

import math

import numpy as np

from .pca import PCA
from .placement import KnnPlacement
from .progress import Progress, as_progress
from .rows import unit_rows
from .threads import TorchThreads


def _torch_device(device):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def perplexity_affinities(d2, perplexity: float = 30.0, bandwidth: float = 1.0, steps: int = 50):
    """t-SNE's conditional affinities, one kernel width per point: row i is a Gaussian
    exp(-d2_ij / h_i) over its 3 * perplexity nearest rows (zero elsewhere and on the
    diagonal, which `d2` must hold at +inf), normalised to sum 1, with h_i found by bisection
    on log h_i so that the row's entropy is log(perplexity), then multiplied by `bandwidth`
    (1: exactly that perplexity). Returns the dense (n, n) conditional matrix and the widths
    used (n,). As in van der Maaten's Barnes-Hut t-SNE, the neighbour lists keep the cost
    O(n * 3 * perplexity) per bisection step."""
    import torch

    n = d2.shape[0]
    perplexity = max(min(float(perplexity), (n - 1) / 3), 1.0 + 1e-6)  # no more neighbours than there are
    k = min(n - 1, int(3 * perplexity) + 1)
    near, idx = torch.topk(d2, k, dim=1, largest=False)
    near = near - near[:, :1]  # a row shift leaves the row's distribution as it is, without underflow
    target = math.log(perplexity)
    lo = torch.full((n, 1), math.log(1e-10), dtype=d2.dtype, device=d2.device)
    hi = torch.full((n, 1), math.log(1e4), dtype=d2.dtype, device=d2.device)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        wide = torch.special.entr(torch.softmax(-near / mid.exp(), dim=1)).sum(1, keepdim=True) > target
        hi, lo = torch.where(wide, mid, hi), torch.where(wide, lo, mid)
    h = float(bandwidth) * (0.5 * (lo + hi)).exp()
    cond = torch.zeros_like(d2).scatter_(1, idx, torch.softmax(-near / h, dim=1))
    return cond, h[:, 0]


def dosnes_affinities(x, bandwidth: float = 1.0, perplexity: float | None = 30.0, tol: float = 1e-5,
                      max_iter: int = 1000, calibration: str = "point"):
    """DOSNES input affinities of unit rows `x` (a torch tensor; float64 advised): a symmetric
    Gaussian kernel with a zero diagonal, Sinkhorn-scaled to doubly stochastic, symmetrised
    and normalised to sum 1. The kernel:
      calibration="point": t-SNE's per-point widths (perplexity_affinities, each width times
        `bandwidth`), symmetrised as (P_j|i + P_i|j) / 2, then scaled;
      calibration="global": one width for all, exp(-||x_i - x_j||^2 / h) with
        h = bandwidth * calibrate_width(perplexity);
      perplexity=None: h = bandwidth itself (the paper's absolute kernel).
    Returns (P, h, info): h the width (the median one for "point"), info = {"rounds",
    "error"} of the Sinkhorn scaling."""
    if calibration not in ("point", "global"):
        raise ValueError(f"calibration must be 'point' or 'global', not {calibration!r}")
    if perplexity and calibration == "point":
        d2 = squared_distances(x).fill_diagonal_(float("inf"))
        cond, widths = perplexity_affinities(d2, perplexity, bandwidth)
        k, h = 0.5 * (cond + cond.T), float(widths.median())
    else:
        d2 = _shifted_distances(x)
        h = float(bandwidth) * (calibrate_width(d2, perplexity) if perplexity else 1.0)
        k = (-d2 / h).exp_()  # exp(-inf) = 0: the diagonal is zero before scaling
    p, rounds, err = doubly_stochastic(k, tol, max_iter)
    p = 0.5 * (p + p.T)  # symmetric already up to rounding; t-SNE's P must be exactly so
    return p / p.sum(), h, {"rounds": rounds, "error": err}


class DOSNES:
    """Doubly stochastic neighbour embedding on the sphere S^2.

    Input rows are re-normalised to unit length. Affinities: a Gaussian kernel with a zero
    diagonal, made doubly stochastic by Sinkhorn scaling, symmetrised, normalised to sum 1;
    then a Student-t layout on a sphere.

    Two departures from the paper (Lu, Corander, Yang 2019), both for the affinities:
    1. The kernel is calibrated per point, as in t-SNE, not one absolute width: row i is
       exp(-||x_i - x_j||^2 / h_i) over its 3 * perplexity nearest rows, h_i chosen so the
       row's perplexity is `perplexity`; the kernel is (P_j|i + P_i|j) / 2 and Sinkhorn
       then makes it doubly stochastic, as the paper does with its kernel. The paper's
       absolute h = 1 was set for raw Gaussian data with squared distances in the tens;
       between unit vectors they lie in [0, 4] (CLIP pairs mostly 0.5-1.8), and h = 1 gives
       every point a perplexity near n: trustworthiness 0.87 on 500 real CLIP pairs. One
       global width calibrated to perplexity 30 (`calibration="global"`, this class's
       default until now) gave 0.959 there, but only 0.942 on 2,000 points (those pairs
       twice: a duplicate per point) where UMAP 3-D reaches 0.976: one width is too wide
       where points are dense and too narrow where sparse, and Sinkhorn's rescaling does
       not make up for it. Per point, at perplexity 30: 0.976 (2,000) and 0.965 (1,000).
    2. Perplexity 15, not t-SNE's 30: trustworthiness (k = 10) 0.980 against UMAP's 0.976
       on those 2,000 points, 0.980 against 0.976 with jittered instead of exact duplicates,
       0.985 against 0.982 on CLIP + ConVIRT pairs (2,000), 0.965 against 0.963 on the
       1,000 (perplexity 30: 0.976, 0.975, 0.984, 0.965; the neighbour lists matter too:
       the same calibration over all n rows gave 0.960). NOTES-projection-scale.md has the
       table; bench/projection.py measures it.
    `bandwidth` multiplies every calibrated width (a unitless knob, smaller: more local);
    `perplexity=None` makes the kernel exp(-||x_i - x_j||^2 / bandwidth), the paper's.

    The layout minimises KL(P || Q), Q_ij proportional to (1 + ||y_i - y_j||^2)^-1 in 3-D,
    by gradient descent with gains and momentum (0.5, then 0.8 from step 250) as in van der
    Maaten's t-SNE, P exaggerated for the first 100 steps (t-SNE's 12 for 250 steps did no
    better: 0.972 against 0.976 at perplexity 30; nor did 1,500 steps). After every step
    the points are centred and projected onto a sphere of their mean radius: that is what
    the authors' tsne_p_sphere.m does, and it matters, since on a sphere of radius 1 no
    two points are more than 2 apart and the Student-t kernel could not pull clusters
    apart. The result is that sphere scaled to radius 1. After the momentum switch the KL
    divergence is checked every 50 steps and the run stops when it improved by less than
    `tol` (relative) since the last check.

    Cost: dense n x n work per step, seconds for 2,000 points on 2 CPU cores
    (bench/projection.py). torch's OpenMP threads spin at every step until all arrive, so
    one core taken by another process slowed the loop 3.6x; threads="auto" (TorchThreads)
    runs it on the cores other processes leave idle, re-checked every 100 steps; an int
    fixes the count, None leaves torch's setting. Results are reproducible for a seed and a
    thread count (sums in another order round differently).

    `transform(new)` places each row at the mean of its `n_neighbors_place` nearest fitted
    rows' positions, weighted by exp(cos / place_temperature), back on the sphere
    (KnnPlacement). A fitted point lands exactly on its own position.
    """

    def __init__(self, n_components: int = 3, bandwidth: float = 1.0, max_iter: int = 1000,
                 learning_rate: float | None = None, early_exaggeration: float = 4.0,
                 exaggeration_iter: int = 100, momentum: float = 0.5, final_momentum: float = 0.8,
                 momentum_switch_iter: int = 250, init: str = "pca", tol: float = 1e-3,
                 seed: int = 0, device=None, progress: Progress | None = None,
                 n_neighbors_place: int = 10, perplexity: float | None = 15.0,
                 sinkhorn_tol: float = 1e-5, threads="auto", place_temperature: float = 0.01,
                 calibration: str = "point"):
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
        self.sinkhorn_tol, self.threads = float(sinkhorn_tol), threads
        self.place_temperature, self.calibration = float(place_temperature), calibration
        # fitted state (plain arrays, so a layout file can rebuild the estimator)
        self.x_: np.ndarray | None = None  # (n, d) unit rows that were fitted
        self.embedding_: np.ndarray | None = None  # (n, 3) unit vectors
        self.h_: float | None = None  # kernel width used
        self.n_iter_ = 0
        self.kl_divergence_ = float("nan")
        self.sinkhorn_ = {}  # {"rounds", "error"} of the Sinkhorn scaling
        self.threads_used_: list[int] = []  # torch thread counts the fit ran with, in order
        self.placement_: KnnPlacement | None = None

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
        x = unit_rows(x)
        n = len(x)
        if n < 2:
            return self.restore(x, np.tile([[0.0, 0.0, 1.0]], (n, 1)), 1.0)
        with TorchThreads(self.threads) as threads:
            self._fit(x, threads)
        self.threads_used_ = threads.used
        return self

    def _fit(self, x: np.ndarray, threads: TorchThreads) -> None:
        import torch

        dev = _torch_device(self.device)
        # float64 for the affinities: a small h makes kernel values span hundreds of orders
        # of magnitude. The optimisation runs in float32: half the memory traffic, and its
        # quantities (Student-t kernels, gradients) need no more.
        xt = torch.from_numpy(x).to(dev, torch.float64)
        p, h, self.sinkhorn_ = dosnes_affinities(xt, self.bandwidth, self.perplexity, self.sinkhorn_tol,
                                                 calibration=self.calibration)
        del xt
        # Entries below 1e-30 carry no weight but would turn into float32 denormals, which
        # many x86 CPUs handle far more slowly than normal numbers.
        p = torch.where(p < 1e-30, torch.zeros_like(p), p)
        y = self._optimise(p.to(torch.float32), x, dev, threads)
        self.restore(x, y, h)

    def restore(self, x, embedding, h: float) -> "DOSNES":
        """Fitted state from the fitted rows, their unit positions and the kernel width (a
        cached layout): all that placing new points needs."""
        self.x_, self.embedding_, self.h_ = unit_rows(x), np.asarray(embedding, dtype=np.float32), float(h)
        if len(self.x_):
            self.placement_ = KnnPlacement(self.n_neighbors_place, self.place_temperature,
                                           sphere=True).fit(self.x_, self.embedding_)
        return self

    def _optimise(self, p, x: np.ndarray, dev, threads: TorchThreads) -> np.ndarray:
        import torch

        report = as_progress(self.progress)
        stage = f"DOSNES on {len(x):,} points: optimisation step"

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
            if report and (it % 10 == 0 or it == total):
                report(it, total, stage)
            if it % 100 == 0:
                threads.recheck()
            if it % 50 == 0 and it > max(self.exaggeration_iter, self.momentum_switch_iter):
                # KL of the layout this step started from (num is still its kernel)
                kl = const - float((p * torch.log((num / s).clamp_(min=1e-30))).sum())
                self.kl_divergence_ = kl
                if last_kl is not None and last_kl - kl < self.tol * abs(last_kl):
                    break
                last_kl = kl
        self.n_iter_ = it
        if report and it < total:
            report(total, total, stage)  # stopped early: the bar still ends full
        y = y / y.norm(dim=1, keepdim=True).clamp_(min=1e-12)
        return y.cpu().numpy().astype(np.float32)

    def fit_transform(self, x) -> np.ndarray:
        self.fit(x)
        return self.embedding_.copy()

    # -- placing new points -------------------------------------------------------------

    def transform(self, x, progress: Progress | None = None) -> np.ndarray:
        if self.placement_ is None:
            raise RuntimeError("DOSNES is not fitted")
        return self.placement_.transform(x, progress)
