"""Caption scores from paired embeddings: CLIP-S, RefCLIP-S, MID and PMI, plus their agreement
with human judgements (Kendall tau, pairwise accuracy, ROC AUC).

Inputs are numpy arrays, rows paired by index (row i of `cand_x` goes with row i of `cand_y`),
used as given: nothing is normalised inside (the cosines of CLIP-S normalise by definition).
Everything is computed in float64. Degenerate input (wrong shapes, too few rows, NaN/inf, an
all-zero vector for a cosine) raises ValueError; no function returns NaN or inf.

CLIP-S (Hessel et al., 2021, "CLIPScore: A Reference-free Evaluation Metric for Image
Captioning"): CLIP-S(image, caption) = w * max(cos(image, caption), 0), w = 2.5.
RefCLIP-S: the harmonic mean of CLIP-S(image, caption) and max(max_r cos(caption, r), 0) over
the caption's references r (w only in the CLIP-S part).

MID (Kim et al., NeurIPS 2022, "Mutual Information Divergence: A Unified Metric for Multimodal
Generative Models"). Reference pairs (x, y), N rows; candidate pairs (x0, y0), M rows;
z = [x; y] per row. Each of x, y, z is modelled as a Gaussian fitted to the references:
    mean_x, S_x = (x - mean_x)^T (x - mean_x) / (N - 1)           (likewise y, z)
    I       = 1/2 [logdet S_x + logdet S_y - logdet S_z]           Gaussian mutual information
    d_x^2(v) = (v - mean_x)^T S_x^-1 (v - mean_x)                  squared Mahalanobis distance
    PMI_i   = I + 1/2 [d_x^2(x0_i) + d_y^2(y0_i) - d_z^2(z0_i)]    per candidate pair
    C_x     = (x0 - mean_x)^T (x0 - mean_x) / (M - 1)              about the REFERENCE mean
    MID     = I + 1/2 [tr(S_x^-1 C_x) + tr(S_y^-1 C_y) - tr(S_z^-1 C_z)]
            = I + sum_i [d_x^2 + d_y^2 - d_z^2](i) / (2 (M - 1))   (set level)
so mean(PMI) - I = (M - 1) / M * (MID - I). This is what the reference code
(naver-ai/mid.metric, `_compute_pmi`) computes; either side may be the generated one (captions
for caption evaluation, images for text-to-image). Log-determinants come from the Cholesky
factors (2 sum log diag L) and distances from triangular solves, O(M D^2) in row chunks: no
M x M or N x N matrix is ever formed.

Shrinkage. With N <= dim_x + dim_y references the joint covariance S_z cannot be full rank.
Then (shrink="auto"; or always with shrink="always") each of S_x, S_y, S_z is replaced by
    S + eps * (tr(S) / p) * I       (p its dimension; eps relative to the average variance)
and a RegularisedWarning says so (N, D, eps); `regularised_` records it. shrink="never" raises
instead. A covariance is degenerate when its Cholesky factorisation fails or a pivot L_ii^2
falls below 1e-8 S_ii (a coordinate is a linear combination of the others up to 1 part in 10^8
of its variance, which float32 features cannot resolve; rounding would let such a direction
dominate I). Learned features often span fewer dimensions than they have (the builtin model's
128-d captions span 64), and an image with several captions is one point repeated: "auto"
then shrinks too, with the same warning. If the shrunk covariances are still degenerate:
ValueError.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg, stats

CHUNK = 2 ** 22  # most float64 entries (32 MB) of one block of candidate rows in flight
SHRINK = ("auto", "always", "never")
PIVOT_TOL = 1e-8  # Cholesky pivots L_ii^2 below this share of S_ii count as singular (see _cholesky)


class RegularisedWarning(UserWarning):
    """The covariances were shrunk towards a multiple of the identity (see the module doc)."""


# -----------------------------------------------------------------------------
# input checks

def _array(x, name: str, min_rows: int = 1) -> np.ndarray:
    """x as a 2-D real numeric numpy array (no copy when it already is one)."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected a real numeric array, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n, d), got shape {x.shape}")
    if x.shape[0] < min_rows or x.shape[1] < 1:
        raise ValueError(f"{name}: need at least {min_rows} row(s) of at least 1 dimension, got shape {x.shape}")
    return x


def _pair(a, b, names: tuple[str, str], min_rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    a, b = _array(a, names[0], min_rows), _array(b, names[1], min_rows)
    if len(a) != len(b):
        raise ValueError(f"{names[0]} and {names[1]} must have the same number of rows (row i of each is "
                         f"pair i), got {len(a)} and {len(b)}")
    return a, b


def _finite(v: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(v).all():
        raise ValueError(f"{what} contains NaN or inf")
    return v


def _joined(x: np.ndarray, y: np.ndarray, what: str):
    """(start, stop, z) with z = [x; y] rows start:stop in float64, a block of CHUNK entries at a time."""
    rows = max(1, CHUNK // (x.shape[1] + y.shape[1]))
    for start in range(0, len(x), rows):
        stop = min(start + rows, len(x))
        z = np.hstack([x[start:stop], y[start:stop]]).astype(np.float64, copy=False)
        yield start, stop, _finite(z, what)


# -----------------------------------------------------------------------------
# Gaussian statistics

class _Moments:
    """Count, sum and sum of outer products of rows z, in float64, about a shift point (the first
    batch's mean) so that sum (z - c)(z - c)^T does not cancel catastrophically."""

    def __init__(self):
        self.n, self.shift, self.sum, self.outer = 0, None, None, None

    def update(self, z: np.ndarray) -> None:
        if self.shift is None:
            self.shift = z.mean(axis=0)
            self.sum, self.outer = np.zeros(z.shape[1]), np.zeros((z.shape[1], z.shape[1]))
        d = z - self.shift
        self.n += len(z)
        self.sum += d.sum(axis=0)
        self.outer += d.T @ d

    def mean(self) -> np.ndarray:
        return self.shift + self.sum / self.n

    def scatter(self, about: np.ndarray) -> np.ndarray:
        """sum (z - about)(z - about)^T, from the shifted sums."""
        delta = about - self.shift
        return self.outer - np.outer(self.sum, delta) - np.outer(delta, self.sum) + self.n * np.outer(delta, delta)


def _sq_dist(chol: np.ndarray, centred: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each centred row v: |L^-1 v|^2 = v^T S^-1 v, S = L L^T."""
    w = linalg.solve_triangular(chol, centred.T, lower=True, check_finite=False)
    return np.einsum("ij,ij->j", w, w)


class GaussianReference:
    """Gaussian statistics of reference pairs (x, y), fitted once and reused for many candidate
    sets: means, covariances (N - 1), their Cholesky factors and the mutual information
    mi_ = I = 1/2 [logdet S_x + logdet S_y - logdet S_z] (formulas in the module doc).

    eps: shrinkage strength, relative to the average variance: S + eps * (tr(S) / p) * I.
    shrink: "auto" shrinks when N <= dim_x + dim_y (S_z cannot be full rank) or when the exact
    covariances are degenerate anyway (repeated images, features spanning fewer dimensions than
    they have); "always"; or "never" (then such references raise ValueError). Shrinking emits
    RegularisedWarning and sets regularised_.
    """

    def __init__(self, eps: float = 1e-3, shrink: str = "auto"):
        if shrink not in SHRINK:
            raise ValueError(f"shrink must be one of {SHRINK}, got {shrink!r}")
        if not (np.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a positive finite number, got {eps}")
        self.eps, self.shrink = float(eps), shrink

    def fit(self, ref_x, ref_y) -> "GaussianReference":
        x, y = _pair(ref_x, ref_y, ("ref_x", "ref_y"), min_rows=2)
        mom = _Moments()
        for _, _, z in _joined(x, y, "references"):
            mom.update(z)
        return self._fit_moments(mom, x.shape[1], y.shape[1])

    def _fit_moments(self, mom: _Moments, dim_x: int, dim_y: int) -> "GaussianReference":
        self.__dict__.pop("mi_", None)  # a fit that fails leaves the instance unfitted
        n, p = mom.n, dim_x + dim_y
        self.n_, self.dim_x_, self.dim_y_ = n, dim_x, dim_y
        self.mean_z_ = mom.mean()
        self.mean_x_, self.mean_y_ = self.mean_z_[:dim_x], self.mean_z_[dim_x:]
        cov = mom.scatter(self.mean_z_) / (n - 1)
        covs = {"x": cov[:dim_x, :dim_x], "y": cov[dim_x:, dim_x:], "z": cov}
        self.regularised_ = self.shrink == "always" or (self.shrink == "auto" and n <= p)
        if n <= p and not self.regularised_:
            raise ValueError(f"{n} references for joint dimension D = {dim_x} + {dim_y} = {p}: the joint "
                             f"covariance cannot be full rank with N <= D; use more than {p} references or "
                             f"shrink='auto'")
        why = f"N = {n} references, D = {dim_x} + {dim_y} = {p}"
        chols = None
        if not self.regularised_:
            try:
                chols = {k: self._cholesky(covs[k], k) for k in "xyz"}
            except ValueError:
                if self.shrink == "never":
                    raise
                # Rank-deficient although N > D: repeated rows (an image with several captions
                # counts once) or features that span fewer dimensions than they have.
                self.regularised_ = True
                why += "; the references span fewer dimensions than that (repeated or collinear rows)"
        self.eps_used_ = self.eps if self.regularised_ else 0.0
        if self.regularised_:
            warnings.warn(f"MID: covariances shrunk, S + eps * tr(S)/p * I with eps = {self.eps:g} "
                          f"({why}, shrink={self.shrink!r})", RegularisedWarning, stacklevel=3)
            covs = {k: s + self.eps * np.trace(s) / len(s) * np.eye(len(s)) for k, s in covs.items()}
            chols = {k: self._cholesky(covs[k], k) for k in "xyz"}
        self.cov_x_, self.cov_y_, self.cov_z_ = covs["x"], covs["y"], covs["z"]
        self.chol_x_, self.chol_y_, self.chol_z_ = chols["x"], chols["y"], chols["z"]
        logdet = {k: 2 * np.log(np.diag(L)).sum() for k, L in zip("xyz", (self.chol_x_, self.chol_y_, self.chol_z_))}
        self.mi_ = float(_finite(0.5 * (logdet["x"] + logdet["y"] - logdet["z"]), "mutual information"))
        return self

    def _cholesky(self, s: np.ndarray, name: str) -> np.ndarray:
        """L with S = L L^T; a failed factorisation or a pivot L_ii^2 < PIVOT_TOL * S_ii (coordinate i a
        linear combination of the others up to rounding) means degenerate references: ValueError."""
        try:
            chol = np.linalg.cholesky(s)
            ok = (np.diag(chol) ** 2 >= PIVOT_TOL * np.diag(s)).all()
        except np.linalg.LinAlgError:
            ok = False
        if not ok:
            hint = "a larger eps" if self.regularised_ else "shrink='always' (or a larger eps)"
            raise ValueError(f"the references are degenerate: the covariance of {name} ({len(s)}-d, from "
                             f"{self.n_} references) is singular to working precision; use more (and more "
                             f"varied) references or {hint}")
        return chol

    def _check_candidates(self, cand_x, cand_y, min_rows: int) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(self, "mi_"):
            raise ValueError("GaussianReference is not fitted: call fit(ref_x, ref_y) first")
        x0, y0 = _pair(cand_x, cand_y, ("cand_x", "cand_y"), min_rows)
        if (x0.shape[1], y0.shape[1]) != (self.dim_x_, self.dim_y_):
            raise ValueError(f"candidates have dimensions ({x0.shape[1]}, {y0.shape[1]}) but the references "
                             f"({self.dim_x_}, {self.dim_y_})")
        return x0, y0

    def _distances(self, x0: np.ndarray, y0: np.ndarray) -> np.ndarray:
        """(3, M): d_x^2, d_y^2, d_z^2 of each candidate pair, a chunk of rows at a time."""
        out = np.empty((3, len(x0)))
        dx = self.dim_x_
        for start, stop, z in _joined(x0, y0, "candidates"):
            z -= self.mean_z_
            out[0, start:stop] = _sq_dist(self.chol_x_, z[:, :dx])
            out[1, start:stop] = _sq_dist(self.chol_y_, z[:, dx:])
            out[2, start:stop] = _sq_dist(self.chol_z_, z)
        return out

    def pmi(self, cand_x, cand_y) -> np.ndarray:
        """(M,) PMI_i = I + 1/2 [d_x^2(x0_i) + d_y^2(y0_i) - d_z^2(z0_i)]."""
        d = self._distances(*self._check_candidates(cand_x, cand_y, 1))
        return _finite(self.mi_ + 0.5 * (d[0] + d[1] - d[2]), "PMI")

    def mid(self, cand_x, cand_y) -> float:
        """MID = I + 1/2 sum_k tr(S_k^-1 C_k) signed (+x, +y, -z) = I + sum_i [d_x^2 + d_y^2 - d_z^2] / (2 (M - 1))."""
        d = self._distances(*self._check_candidates(cand_x, cand_y, 2))
        return float(_finite(self.mi_ + (d[0].sum() + d[1].sum() - d[2].sum()) / (2 * (d.shape[1] - 1)), "MID"))

    def _mid_from_second_moment(self, c: np.ndarray) -> float:
        """MID from C_z (the candidates' second moment about the reference mean, / (M - 1)); C_x, C_y
        are its diagonal blocks. tr(S^-1 C) by Cholesky solves."""
        dx = self.dim_x_
        tr = [np.trace(linalg.cho_solve((L, True), block, check_finite=False))
              for L, block in ((self.chol_x_, c[:dx, :dx]), (self.chol_y_, c[dx:, dx:]), (self.chol_z_, c))]
        return float(_finite(self.mi_ + 0.5 * (tr[0] + tr[1] - tr[2]), "MID"))


def mutual_information(ref_x, ref_y) -> float:
    """Gaussian mutual information I = 1/2 [logdet S_x + logdet S_y - logdet S_z] of the references."""
    return GaussianReference().fit(ref_x, ref_y).mi_


def mid(ref_x, ref_y, cand_x, cand_y) -> float:
    """Mutual Information Divergence of candidate pairs under references (Kim et al., 2022)."""
    return GaussianReference().fit(ref_x, ref_y).mid(cand_x, cand_y)


def pmi(ref_x, ref_y, cand_x, cand_y) -> np.ndarray:
    """(M,) point-wise mutual information of each candidate pair under the references."""
    return GaussianReference().fit(ref_x, ref_y).pmi(cand_x, cand_y)


class MutualInformationDivergence:
    """MID over batches, torchmetrics-style: update_reference(x, y) and update(cand_x, cand_y) any
    number of times, then compute(). Keeps only sufficient statistics (counts, sums and sums of
    outer products of z = [x; y], float64, about each stream's first-batch mean): O(D^2) memory.
    compute() equals mid() on all rows at once. eps and shrink as for GaussianReference;
    `regularised` says whether the last compute() shrank."""

    def __init__(self, eps: float = 1e-3, shrink: str = "auto"):
        GaussianReference(eps, shrink)  # validates eps and shrink
        self.eps, self.shrink = eps, shrink
        self.reset()

    def reset(self) -> None:
        self._ref, self._cand, self._dims, self.regularised = _Moments(), _Moments(), None, False

    def _add(self, mom: _Moments, x, y, names: tuple[str, str]) -> None:
        x, y = _pair(x, y, names)
        if self._dims is None:
            self._dims = (x.shape[1], y.shape[1])
        elif (x.shape[1], y.shape[1]) != self._dims:
            raise ValueError(f"{names[0]}, {names[1]} have dimensions ({x.shape[1]}, {y.shape[1]}), "
                             f"earlier batches {self._dims}")
        for _, _, z in _joined(x, y, f"{names[0]}, {names[1]}"):
            mom.update(z)

    def update_reference(self, x, y) -> None:
        self._add(self._ref, x, y, ("x", "y"))

    def update(self, cand_x, cand_y) -> None:
        self._add(self._cand, cand_x, cand_y, ("cand_x", "cand_y"))

    def compute(self) -> float:
        if self._ref.n < 2 or self._cand.n < 2:
            raise ValueError(f"need at least 2 reference and 2 candidate pairs, got {self._ref.n} and {self._cand.n}")
        g = GaussianReference(self.eps, self.shrink)._fit_moments(self._ref, *self._dims)
        self.regularised = g.regularised_
        return g._mid_from_second_moment(self._cand.scatter(g.mean_z_) / (self._cand.n - 1))


# -----------------------------------------------------------------------------
# CLIP-S and RefCLIP-S

def _cosines(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> np.ndarray:
    """Cosine of each row pair, float64; an all-zero or non-finite row raises."""
    a, b = _finite(a.astype(np.float64), names[0]), _finite(b.astype(np.float64), names[1])
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same dimension, got {a.shape[1]} and {b.shape[1]}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    for name, norm in zip(names, (na, nb)):
        if (norm == 0).any():
            raise ValueError(f"{name}: {int((norm == 0).sum())} all-zero row(s) have no direction (cosine undefined)")
    return np.einsum("ij,ij->i", a, b) / (na * nb)


def clip_s(images, captions, w: float = 2.5) -> np.ndarray:
    """(n,) CLIP-S_i = w * max(cos(images_i, captions_i), 0) (Hessel et al., 2021; w = 2.5)."""
    img, cap = _pair(images, captions, ("images", "captions"))
    return w * np.maximum(_cosines(img, cap, ("images", "captions")), 0.0)


def refclip_s(images, captions, references, ref_index, w: float = 2.5) -> np.ndarray:
    """(n,) RefCLIP-S_i = H(CLIP-S_i, max(max_{k: ref_index[k] == i} cos(captions_i, references_k), 0)),
    H(a, b) = 2ab / (a + b) the harmonic mean, H(a, 0) = 0 (Hessel et al., 2021: w only in CLIP-S).
    references (K, d) are reference-caption embeddings, ref_index (K,) the row each belongs to.
    Every row needs at least one reference, else ValueError."""
    img, cap = _pair(images, captions, ("images", "captions"))
    refs = _array(references, "references")
    idx = np.asarray(ref_index)
    if idx.ndim != 1 or len(idx) != len(refs) or idx.dtype.kind not in "iu":
        raise ValueError(f"ref_index must be a 1-D integer array with one entry per reference ({len(refs)}), "
                         f"got shape {idx.shape} and dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= len(cap):
        raise ValueError(f"ref_index must be in [0, {len(cap)}), got values in [{idx.min()}, {idx.max()}]")
    best = np.full(len(cap), -np.inf)
    np.maximum.at(best, idx, _cosines(cap[idx], refs, ("captions", "references")))
    missing = int(np.isinf(best).sum())
    if missing:
        raise ValueError(f"{missing} of {len(cap)} rows have no reference (ref_index never names them)")
    a, b = clip_s(img, cap, w), np.maximum(best, 0.0)
    total = a + b
    return np.where(total > 0, 2 * a * b / np.where(total > 0, total, 1.0), 0.0)


class _MeanScore:
    """Streaming mean of a per-row score: update(...) adds the batch's sum and count."""

    def __init__(self, w: float = 2.5):
        self.w = w
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def _add(self, scores: np.ndarray) -> None:
        self.total += float(scores.sum())
        self.count += len(scores)

    def compute(self) -> float:
        if self.count == 0:
            raise ValueError(f"{type(self).__name__}: no rows yet, call update first")
        return self.total / self.count


class CLIPScore(_MeanScore):
    """Mean CLIP-S over batches: update(images, captions), compute()."""

    def update(self, images, captions) -> None:
        self._add(clip_s(images, captions, self.w))


class RefCLIPScore(_MeanScore):
    """Mean RefCLIP-S over batches: update(images, captions, references, ref_index) with ref_index
    naming rows of this batch, compute()."""

    def update(self, images, captions, references, ref_index) -> None:
        self._add(refclip_s(images, captions, references, ref_index, self.w))


# -----------------------------------------------------------------------------
# agreement with human judgements

def _vector(v, name: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {v.shape}")
    return _finite(v, name)


def kendall_tau(metric, human, variant: str = "b") -> float:
    """Kendall's tau-b (ties corrected) or tau-c (Stuart's, for rating scales) between metric
    scores and human judgements (scipy.stats.kendalltau)."""
    if variant not in ("b", "c"):
        raise ValueError(f"variant must be 'b' or 'c', got {variant!r}")
    m, h = _vector(metric, "metric"), _vector(human, "human")
    if len(m) != len(h) or len(m) < 2:
        raise ValueError(f"metric and human need the same length >= 2, got {len(m)} and {len(h)}")
    tau = stats.kendalltau(m, h, variant=variant).statistic
    if not np.isfinite(tau):
        raise ValueError("Kendall tau is undefined: metric or human is constant")
    return float(tau)


def pairwise_accuracy(score_a, score_b, human_prefers_a) -> float:
    """Share of caption pairs (a, b) where the metric prefers the caption humans preferred
    (Pascal-50S style); a metric tie counts 1/2."""
    a, b = _vector(score_a, "score_a"), _vector(score_b, "score_b")
    h = np.asarray(human_prefers_a)
    if h.ndim != 1 or not (len(a) == len(b) == len(h)) or len(a) == 0:
        raise ValueError(f"score_a, score_b and human_prefers_a need the same non-zero length, "
                         f"got {len(a)}, {len(b)} and shape {h.shape}")
    if not np.isin(h, (0, 1)).all():
        raise ValueError("human_prefers_a must be booleans (or 0/1)")
    h = h.astype(bool)
    return float(np.where(a == b, 0.5, (a > b) == h).mean())


def roc_auc(correct, foils) -> float:
    """Area under the ROC curve for telling correct captions (label 1) from foils (label 0) by
    score: the Mann-Whitney U / (n_correct n_foils), i.e. P(correct > foil) + P(tie) / 2."""
    c, f = _vector(correct, "correct"), _vector(foils, "foils")
    if len(c) == 0 or len(f) == 0:
        raise ValueError(f"need at least one correct and one foil score, got {len(c)} and {len(f)}")
    ranks = stats.rankdata(np.concatenate([c, f]))  # average ranks: a tie counts 1/2
    return float((ranks[:len(c)].sum() - len(c) * (len(c) + 1) / 2) / (len(c) * len(f)))
