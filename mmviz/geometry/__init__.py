"""Geometry of paired image-text embeddings: the modality gap and its kin.

Every function takes paired arrays `images` (n, d) and `texts` (n, d), row i of each forming
pair i (or one array where the metric is per modality). Inputs may be any real arrays (numpy,
torch tensors, lists); rows are re-normalised to unit length inside and everything is computed
in float64, so float16 / float32 inputs that are only roughly normalised give the same answer.

Cost. The rows are streamed ROWS at a time (normalised chunk by chunk, never copied whole), so
memory beyond the inputs is O(ROWS d + d^2). O(n d) and O(n d^2) quantities (gap, cosines,
alignment, spectra, Vendi, C3) are exact for every n: the d x d Gram matrix X^T X carries what
they need. Metrics over all n^2 pairs of points (uniformity, relative alignment, the
unpaired-cosine histogram) are exact when n <= max_n and otherwise computed on a seeded random
subsample of max_n pairs; the same seed picks the same pairs in every function, so values from
one call agree with another. The big products run on `device` ("auto": CUDA if available,
else CPU), always in float64.

Degenerate input (shape mismatch, fewer than 2 rows, NaN/inf, an all-zero row, non-numeric
data) raises ValueError; no function returns NaN.

    streaming.py   reading the inputs: checks, the chunked passes (sums, Gram matrices, paired
                   cosines) over threads, the m x m blocks of the O(n^2) metrics
    (here)         the metrics built on them, and all_metrics / analyse
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from ..arrays import release_pages
from . import streaming
from .streaming import (_array, _by_rows, _check_t, _cross, _device, _let_go, _moments, _pair, _rows, _self_logsum,
                        _subsample, _unit)

MAX_N = 4096  # pairs for the O(n^2) metrics: 3 Gram blocks of 4096^2 keep all_metrics < 5 s on 2 CPU cores
UNPAIRED_VALUES = 100_000  # most unpaired cosines returned for a histogram
C3_VARIANCE = 0.9  # c3 orthogonality: principal directions holding this share of a modality's variance
SEPARABILITY_MAX_N = 5000  # linear_separability's default subsample, also used by all_metrics


# -----------------------------------------------------------------------------
# spectra

def _covariance(total: np.ndarray, gram: np.ndarray, n: int) -> np.ndarray:
    """Population covariance (1/n) sum (x - mu)(x - mu)^T = X^T X / n - mu mu^T."""
    mu = total / n
    return gram / n - np.outer(mu, mu)


def _eig_desc(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, rounding negatives clipped to 0) and eigenvectors of symmetric m."""
    with threadpool_limits(1, "blas"):  # d x d is small; 2 busy-waiting BLAS threads made it 40x slower under load
        w, v = np.linalg.eigh((m + m.T) / 2)
    return np.clip(w[::-1], 0.0, None), v[:, ::-1]


def _eigvals_desc(m: np.ndarray) -> np.ndarray:
    """_eig_desc without the eigenvectors (faster)."""
    with threadpool_limits(1, "blas"):
        w = np.linalg.eigvalsh((m + m.T) / 2)
    return np.clip(w[::-1], 0.0, None)


def _exp_entropy(w: np.ndarray) -> float:
    """exp(-sum p log p) with p = w / sum(w); 0.0 when there is no variance at all."""
    total = w.sum()
    if total <= 1e-12:  # identical rows: the covariance is rounding noise, not structure
        return 0.0
    p = w[w > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def spectrum(x, *, device: str = "auto") -> np.ndarray:
    """Eigenvalues of the covariance of the unit-normalised rows, descending, shape (d,).

    Sigma = (1/n) sum_i (x_i - mu)(x_i - mu)^T with mu the mean row (population covariance,
    1/n rather than 1/(n-1)); for unit rows trace(Sigma) = 1 - ||mu||^2. Computed through the
    d x d Gram matrix X^T X, so O(n d^2) and exact for every n. Tiny negative eigenvalues from
    rounding are clipped to 0. Contrastive embeddings typically vary along few directions, in a
    narrow cone (Liang et al., "Mind the Gap", NeurIPS 2022).
    """
    mo = _moments(_array(x, "x"), gram=True, device=_device(device))
    return _eigvals_desc(_covariance(mo["sx"], mo["gx"], mo["n"]))


def joint_spectrum(images, texts, *, device: str = "auto") -> np.ndarray:
    """spectrum() of the 2n stacked rows [images; texts] around their common mean.

    Unlike the per-modality spectra this includes the between-modality variance, ||c||^2 / 4
    along the gap c = mean image - mean text, so a large gap shows up as a leading direction.
    """
    mo = _moments(*_pair(images, texts), gram=True, device=_device(device))
    return _eigvals_desc(_covariance(mo["sx"] + mo["sy"], mo["gx"] + mo["gy"], 2 * mo["n"]))


def effective_dimension(x, *, device: str = "auto") -> float:
    """Effective rank (Roy & Vetterli, "The effective rank: a measure of effective
    dimensionality", EUSIPCO 2007) of the covariance of the unit-normalised rows:

        erank = exp(H(p)),  H(p) = -sum_k p_k log p_k,  p_k = lambda_k / sum_j lambda_j,

    with lambda the eigenvalues from spectrum(). Between 1 (all variation along one direction)
    and d (isotropic). The covariance is centred, so k tight equal clusters around k orthonormal
    directions give about k - 1 (their centres span a (k-1)-dimensional affine set). Returns 0.0
    when all rows are identical (no variation at all).
    """
    return _exp_entropy(spectrum(x, device=device))


def vendi_score(x, *, device: str = "auto") -> float:
    """Vendi score (Friedman & Dieng, "The Vendi Score: A Diversity Evaluation Metric for
    Machine Learning", TMLR 2023) with the cosine kernel and order q = 1:

        VS = exp(-sum_k lambda_k log lambda_k),  lambda = eigenvalues of K / n,  K_ij = cos(x_i, x_j).

    K / n = X X^T / n (unit rows) has the same non-zero eigenvalues as the d x d matrix
    X^T X / n, which is what is decomposed: O(n d^2), exact for every n. The eigenvalues sum to
    1. Between 1 (all rows equal) and min(n, d); k orthonormal equal-size clusters give k.
    Unlike effective_dimension() the kernel is not centred.
    """
    mo = _moments(_array(x, "x"), gram=True, device=_device(device))
    return _exp_entropy(_eigvals_desc(mo["gx"] / mo["n"]))


# -----------------------------------------------------------------------------
# gap, cosines, alignment

def gap_vector(images, texts) -> np.ndarray:
    """Modality gap vector (Liang et al., "Mind the Gap: Understanding the Modality Gap in
    Multi-modal Contrastive Representation Learning", NeurIPS 2022):

        Delta = (1/n) sum_i x_i - (1/n) sum_i y_i   (unit-normalised rows), shape (d,).
    """
    mo = _moments(*_pair(images, texts))
    return (mo["sx"] - mo["sy"]) / mo["n"]


def gap_length(images, texts) -> float:
    """||Delta||, the Euclidean norm of gap_vector() (Liang et al., NeurIPS 2022). In [0, 2];
    0 when both modalities share a centre. CLIP on 500 COCO pairs (features_clip.npy, the data
    behind the paper's Figure 1) gives 0.85; the paper reports 0.82 for CLIP on COCO."""
    return float(np.linalg.norm(gap_vector(images, texts)))


def paired_cosines(images, texts) -> np.ndarray:
    """cos(x_i, y_i) for every pair i, shape (n,)."""
    return _moments(*_pair(images, texts))["cos"]


def unpaired_cosines(images, texts, max_n: int = MAX_N, seed: int = 0) -> np.ndarray:
    """cos(x_i, y_j) for i != j, for a histogram against paired_cosines().

    The pairs used are all n when n <= max_n, else the seeded subsample of max_n pairs that the
    other O(n^2) metrics use (same seed, same pairs). Of their m (m - 1) unpaired cosines, all
    are returned (row-major order) when there are at most UNPAIRED_VALUES = 100,000 of them,
    otherwise a seeded uniform sample without replacement of 100,000 of them. For the exact
    mean and standard deviation over all n (n - 1) values use cosine_summary().
    """
    x, y = _pair(images, texts)
    _moments(x, y)  # checks every row, not only the sampled ones
    idx = _subsample(len(x), max_n, seed)
    return _unpaired_sample(_rows(x, idx, "images"), _rows(y, idx, "texts"), seed)


def _unpaired_sample(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """unpaired_cosines() of the unit rows a, b (the pairs already picked)."""
    m = len(a)
    if m * (m - 1) <= UNPAIRED_VALUES:
        return (a @ b.T)[~np.eye(m, dtype=bool)]
    # Flat index k over the m (m - 1) off-diagonal cells in row-major order:
    # row i = k // (m - 1), column j = r or r + 1 (skipping the diagonal), r = k % (m - 1).
    k = np.random.default_rng([seed, 1]).choice(m * (m - 1), size=UNPAIRED_VALUES, replace=False)  # own stream
    i, r = np.divmod(k, m - 1)
    j = r + (r >= i)
    # ROWS cells at a time: a[i] and b[j] whole would be 2 x 410 MB of float64 at d = 512
    step = streaming.ROWS
    return np.concatenate([np.einsum("ij,ij->i", a[i[s:s + step]], b[j[s:s + step]]) for s in range(0, len(i), step)])


def _unpaired_mean_std(mo: dict) -> tuple[float, float]:
    """Exact mean and std of cos(x_i, y_j) over all i != j from one _moments pass:
    sum_{i,j} x_i.y_j = sx.sy and sum_{i,j} (x_i.y_j)^2 = <X^T X, Y^T Y>_F; minus the i = j terms."""
    cos, n = mo["cos"], mo["n"]
    count = n * (n - 1)
    mean = (mo["sx"] @ mo["sy"] - cos.sum()) / count
    if mo["gx"] is None:
        return float(mean), 0.0
    sq = ((mo["gx"] * mo["gy"]).sum() - (cos ** 2).sum()) / count
    return float(mean), float(np.sqrt(max(sq - mean ** 2, 0.0)))


def cosine_summary(images, texts, max_n: int = MAX_N, seed: int = 0, *, device: str = "auto") -> dict[str, float]:
    """Mean and (population) standard deviation of paired cosines cos(x_i, y_i) and of unpaired
    cosines cos(x_i, y_j), i != j. Keys: paired_mean, paired_std, unpaired_mean, unpaired_std.

    The unpaired moments are exact over all n (n - 1) values for every n, through
        sum_{i != j} x_i.y_j = (sum_i x_i).(sum_j y_j) - sum_i x_i.y_i,
        sum_{i != j} (x_i.y_j)^2 = <X^T X, Y^T Y>_F - sum_i (x_i.y_i)^2,
    so max_n and seed are accepted for a call signature like the other metrics' but not needed.
    The difference of the two means is the contrast retrieval relies on; a modality gap lowers
    both (Liang et al., "Mind the Gap", NeurIPS 2022).
    """
    mo = _moments(*_pair(images, texts), gram=True, device=_device(device))
    mean, std = _unpaired_mean_std(mo)
    return {"paired_mean": float(mo["cos"].mean()), "paired_std": float(mo["cos"].std()),
            "unpaired_mean": mean, "unpaired_std": std}


def alignment(images, texts) -> float:
    """Alignment (Wang & Isola, "Understanding Contrastive Representation Learning through
    Alignment and Uniformity on the Hypersphere", ICML 2020), alpha = 2:

        align = (1/n) sum_i ||x_i - y_i||^2 = (1/n) sum_i (2 - 2 cos(x_i, y_i)),

    in [0, 4]; lower is better (0 = every pair coincides).
    """
    return float(np.mean(2.0 - 2.0 * paired_cosines(images, texts)))


# -----------------------------------------------------------------------------
# O(n^2) metrics (subsampled above max_n)

def uniformity(x, t: float = 2, max_n: int = MAX_N, seed: int = 0, *, device: str = "auto") -> float:
    """Uniformity (Wang & Isola, ICML 2020) of one set of unit vectors:

        unif = log( (1 / (m (m - 1))) sum_{u != v} exp(-t ||u - v||^2) ),

    over all ordered pairs of distinct rows (duplicated vectors still count as distinct rows).
    In [-4t, 0]; lower = more uniformly spread over the sphere. Exact when n <= max_n, otherwise
    over a seeded random subsample of max_n rows: the mean inside the log is then an unbiased
    estimate of the full one. Evaluated with log-sum-exp, so a large t cannot underflow.
    """
    x = _array(x, "x")
    t = _check_t(t)
    _moments(x)  # checks every row, not only the sampled ones
    a = _rows(x, _subsample(len(x), max_n, seed), "x")
    m = len(a)
    return _self_logsum(a, t, _device(device)) - math.log(m * (m - 1))


def _union_uniformity(m: int, lse_a: float, lse_b: float, lse_ab: float) -> float:
    """Uniformity of the 2m points [a; b] from the three blocks: the ordered pairs are those
    within a, within b, and the m^2 cross pairs counted twice (u in a, v in b and the reverse)."""
    total = np.logaddexp(np.logaddexp(lse_a, lse_b), math.log(2) + lse_ab)
    return float(total - math.log(2 * m * (2 * m - 1)))


def union_uniformity(images, texts, t: float = 2, max_n: int = MAX_N, seed: int = 0, *,
                     device: str = "auto") -> float:
    """uniformity() of the 2n points [images; texts] as one set (Wang & Isola, ICML 2020).

    A modality gap makes the union less uniform (higher) than either modality alone. Exact when
    n <= max_n pairs, otherwise over the seeded subsample of max_n pairs (2 max_n points).
    """
    x, y = _pair(images, texts)
    t = _check_t(t)
    dev = _device(device)
    _moments(x, y)
    idx = _subsample(len(x), max_n, seed)
    a, b = _rows(x, idx, "images"), _rows(y, idx, "texts")
    return _union_uniformity(len(a), _self_logsum(a, t, dev), _self_logsum(b, t, dev), _cross(a, b, t, dev)[0])


def relative_alignment(images, texts, max_n: int = MAX_N, seed: int = 0, *, device: str = "auto") -> float:
    """Relative alignment: the paired cosine's margin over the hardest unpaired one, the
    cross-modal alignment measure used beside uniformity in m2-mix (Oh et al., "Geodesic
    Multi-Modal Mixup for Robust Fine-Tuning", NeurIPS 2023):

        RA = (1/m) sum_i [ cos(x_i, y_i) - max_{j != i} cos(x_i, y_j) ],

    images as anchors. In [-2, 2]; higher is better; > 0 means the average image is closer to its
    own text than to any other. Both terms are cosines of the same image with texts, so a gap
    that lowers all image-text cosines alike cancels out.
    Exact when n <= max_n; otherwise over the seeded subsample of max_n pairs, i and j both
    ranging over the subsample. Each max then runs over fewer negatives, so the estimate is
    biased upwards, by about the difference between the expected maximum of n - 1 and of
    max_n - 1 unpaired cosines.
    """
    x, y = _pair(images, texts)
    _moments(x, y)
    idx = _subsample(len(x), max_n, seed)
    a, b = _rows(x, idx, "images"), _rows(y, idx, "texts")
    hardest = _cross(a, b, None, _device(device))[1]
    return float(np.mean(np.einsum("ij,ij->i", a, b) - hardest))


# -----------------------------------------------------------------------------
# linear separability and C3

def linear_separability(images, texts, folds: int = 5, seed: int = 0, max_n: int = SEPARABILITY_MAX_N) -> float:
    """Cross-validated accuracy of a logistic regression telling image vectors from text vectors.

    The 2m unit vectors (m = min(n, max_n) pairs, a seeded subsample above max_n) are labelled by
    modality and split into `folds` stratified, shuffled folds (seed); the result is the mean
    held-out accuracy of sklearn's LogisticRegression (L2, C = 1) on the vectors scaled by
    sqrt(d). The scaling gives coordinates unit variance on average, so C = 1 means the same in
    every dimension and lbfgs converges in a few iterations; unlike per-feature standardising it
    keeps the result rotation invariant. 0.5 = a hyperplane cannot tell the modalities apart,
    1.0 = perfectly separable. Liang et al. ("Mind the Gap", NeurIPS 2022) find near-perfect
    separability for every contrastive model, trained or at random init.
    """
    x, y = _pair(images, texts)
    _moments(x, y)
    return _separability(x, y, folds, seed, max_n)


def _separability(x: np.ndarray, y: np.ndarray, folds: int, seed: int, max_n: int) -> float:
    from sklearn.linear_model import LogisticRegression  # sklearn is slow to import; only here
    from sklearn.model_selection import StratifiedKFold

    idx = _subsample(len(x), max_n, seed)
    m = len(x) if idx is None else len(idx)
    if not 2 <= folds <= m:
        raise ValueError(f"folds must be between 2 and the number of pairs used ({m}), got {folds}")
    feats = np.concatenate([_rows(x, idx, "images"), _rows(y, idx, "texts")]) * math.sqrt(x.shape[1])
    labels = np.r_[np.ones(m, dtype=int), np.zeros(m, dtype=int)]
    accs = []
    with threadpool_limits(1, "blas"):  # lbfgs makes many small BLAS calls; see _by_rows
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(feats, labels):
            clf = LogisticRegression(max_iter=1000).fit(feats[train], labels[train])
            accs.append(clf.score(feats[test], labels[test]))
    return float(np.mean(accs))


def _top_directions(w: np.ndarray, v: np.ndarray, share: float) -> np.ndarray:
    """Leading eigenvectors holding `share` of the variance (none when there is no variance)."""
    if w.sum() <= 1e-12:
        return v[:, :0]
    k = int(np.searchsorted(np.cumsum(w) / w.sum(), share) + 1)
    return v[:, :min(k, len(w))]


def _c3(x: np.ndarray, y: np.ndarray, mo: dict, seed: int, eig_x: tuple, eig_y: tuple) -> dict[str, float]:
    """c3_decomposition() from the raw rows, their _moments (with Gram) and covariance eigensystems."""
    n = mo["n"]
    c = (mo["sx"] - mo["sy"]) / n
    c_len = float(np.linalg.norm(c))
    mean_sq = float(np.mean(2.0 - 2.0 * mo["cos"]))  # (1/n) sum ||d_i||^2
    # Second pass, now that c is known: residual norms ||d_i - c|| and the sum of d_i over a
    # random half A of the pairs (the other half's sum is the total minus it).
    in_a = np.zeros(n, dtype=bool)
    in_a[np.random.default_rng(seed).permutation(n)[:n // 2]] = True

    def part(start: int, stop: int) -> tuple[float, np.ndarray]:
        res, sum_a = 0.0, np.zeros_like(c)
        for chunk, s in enumerate(range(start, stop, streaming.ROWS)):
            _let_go(chunk, x, y)
            e = min(s + streaming.ROWS, stop)
            dc = _unit(x[s:e], "images", s) - _unit(y[s:e], "texts", s)
            sum_a += dc[in_a[s:e]].sum(0)
            dc -= c
            res += np.sqrt(np.einsum("ij,ij->i", dc, dc)).sum()
        return res, sum_a

    parts = _by_rows(part, n, None)
    release_pages(x, y)
    res, sum_a = sum(p[0] for p in parts), sum(p[1] for p in parts)
    ca, cb = sum_a / (n // 2), (mo["sx"] - mo["sy"] - sum_a) / (n - n // 2)
    na, nb = np.linalg.norm(ca), np.linalg.norm(cb)
    consistency = float(np.clip(ca @ cb / (na * nb), -1.0, 1.0)) if na > 1e-12 and nb > 1e-12 else 0.0
    # Orthogonality: share of c's squared norm outside each modality's principal subspace,
    # averaged over the two. (Not the span of both together: two slightly tilted k-dim subspaces
    # jointly span up to 2k dimensions, which would swallow c for no geometric reason.)
    orth = 0.0
    if c_len > 1e-12:
        inside = [np.sum((_top_directions(*eig, C3_VARIANCE).T @ (c / c_len)) ** 2) for eig in (eig_x, eig_y)]
        orth = float(np.clip(1.0 - np.mean(inside), 0.0, 1.0))
    return {"constant_length": c_len,
            "direction_consistency": consistency,
            "orthogonality": orth,
            "residual_norm": float(res / n),
            "constant_fraction": float(np.clip(c_len ** 2 / mean_sq, 0.0, 1.0)) if mean_sq > 1e-15 else 0.0}


def c3_decomposition(images, texts, seed: int = 0, *, device: str = "auto") -> dict[str, float]:
    """Decompose the pair differences as in C3 (Zhang, Sohoni et al., "Connect, Collapse, Corrupt:
    Learning Cross-Modal Tasks with Uni-Modal Data", ICLR 2024), which models the gap as a
    constant vector orthogonal to each modality's span plus alignment noise:

        d_i = x_i - y_i = c + eps_i,   c = (1/n) sum_i d_i  (= gap_vector()).

    Keys:
      constant_length        ||c||.
      direction_consistency  cos(c_A, c_B) with c_A, c_B the mean of d_i over two random halves
                             A, B of the pairs (seeded); 1 = the gap is one constant direction,
                             about 0 = no shared direction. 0.0 if a half's mean is zero.
      orthogonality          1 - (||P_x c||^2 + ||P_y c||^2) / (2 ||c||^2), where P_x projects onto
                             the leading eigenvectors of the image covariance that together hold
                             90% of its variance (C3_VARIANCE), P_y the same for texts: one minus
                             the average share of c lying in the subspace where a modality
                             varies. In [0, 1]; 1 = c is orthogonal to both (the C3 picture),
                             0 = c lies inside both. 0.0 if c = 0.
      residual_norm          (1/n) sum_i ||eps_i||.
      constant_fraction      ||c||^2 / ((1/n) sum_i ||d_i||^2), in [0, 1]: the share of the mean
                             squared pair distance (alignment()) that the constant part explains,
                             since mean ||d_i||^2 = ||c||^2 + mean ||eps_i||^2. 0.0 if all d_i = 0.
    """
    x, y = _pair(images, texts)
    mo = _moments(x, y, gram=True, device=_device(device))
    n = mo["n"]
    eig_x = _eig_desc(_covariance(mo["sx"], mo["gx"], n))
    eig_y = _eig_desc(_covariance(mo["sy"], mo["gy"], n))
    return _c3(x, y, mo, seed, eig_x, eig_y)


# -----------------------------------------------------------------------------
# everything at once

METRICS: dict[str, tuple[str, str]] = {
    "gap_length": ("Gap length", "How far apart the two modalities' centres are; 0 = no gap"),
    "paired_cosine_mean": ("Paired cosine", "Average cosine between an image and its own text"),
    "unpaired_cosine_mean": ("Unpaired cosine", "Average cosine between an image and the other items' texts"),
    "linear_separability": ("Linear separability", "How well a hyperplane tells image vectors from text vectors; 0.5 = mixed, 1 = fully apart"),
    "c3_constant_length": ("C3 constant length", "Length of the average image-minus-text difference (equals the gap length)"),
    "c3_direction_consistency": ("C3 direction consistency", "Whether two halves of the pairs agree on the gap's direction; 1 = one fixed direction"),
    "c3_orthogonality": ("C3 orthogonality", "How far the gap points away from the directions each modality varies in; 1 = fully orthogonal"),
    "c3_residual_norm": ("C3 residual", "Average size of what is left of a pair's difference once the constant gap is removed"),
    "c3_constant_fraction": ("C3 constant fraction", "Share of the mean squared pair distance that the constant gap explains"),
    "uniformity_image": ("Image uniformity", "How evenly images spread over the sphere; lower = more spread out"),
    "uniformity_text": ("Text uniformity", "How evenly texts spread over the sphere; lower = more spread out"),
    "uniformity_union": ("Joint uniformity", "How evenly images and texts together spread over the sphere; a gap makes it higher"),
    "alignment": ("Alignment", "Average squared distance between an image and its own text; 0 = pairs coincide"),
    "relative_alignment": ("Relative alignment", "How much closer an image is to its own text than to the closest other text; > 0 is good"),
    "effective_dimension_image": ("Image effective dimension", "About how many directions the images really vary in"),
    "effective_dimension_text": ("Text effective dimension", "About how many directions the texts really vary in"),
    "effective_dimension_joint": ("Joint effective dimension", "About how many directions images and texts together vary in"),
    "vendi_image": ("Image Vendi score", "Effective number of distinct images (by cosine similarity)"),
    "vendi_text": ("Text Vendi score", "Effective number of distinct texts (by cosine similarity)"),
    "vendi_joint": ("Joint Vendi score", "Effective number of distinct items among images and texts together"),
}


def all_metrics(images, texts, seed: int = 0, max_n: int = MAX_N, *, device: str = "auto",
                progress=None) -> dict[str, float]:
    """Every scalar metric of this module, keys and order as in METRICS.

    Each value equals the standalone function called with the same seed (and max_n for the
    O(n^2) ones: uniformity_*, relative_alignment, with t = 2); linear_separability keeps its
    own default max_n = 5000 and 5 folds. The rows are streamed twice (moments, then C3
    residuals), and the Gram matrices and the max_n x max_n blocks are computed once and shared.
    `progress(done, 4, stage)` is called as each of the four stages starts and at the end.
    """
    return analyse(images, texts, seed, max_n, device=device, progress=progress).metrics


@dataclass
class Analysis:
    """all_metrics() and what its passes give for free, each equal to its standalone function:
    `spectra` {"images": spectrum(images), "texts": spectrum(texts), "joint": joint_spectrum()},
    `paired` paired_cosines() and `unpaired` unpaired_cosines(max_n, seed)."""

    metrics: dict[str, float]
    spectra: dict[str, np.ndarray]
    paired: np.ndarray
    unpaired: np.ndarray


def analyse(images, texts, seed: int = 0, max_n: int = MAX_N, *, device: str = "auto",
            progress=None) -> Analysis:
    """all_metrics() with the spectra and the cosines a page draws beside them. Computing those
    apart streams the rows five more times: 6.6 of 17.6 s at 100k pairs x 512 (measured)."""
    step = progress or (lambda done, total, stage: None)
    x, y = _pair(images, texts)
    dev = _device(device)
    step(0, 4, f"moments of {len(x):,} pairs")
    mo = _moments(x, y, gram=True, device=dev)
    n, sx, sy, gx, gy, cos = mo["n"], mo["sx"], mo["sy"], mo["gx"], mo["gy"], mo["cos"]
    eig_x, eig_y = _eig_desc(_covariance(sx, gx, n)), _eig_desc(_covariance(sy, gy, n))
    step(1, 4, "C3 decomposition")
    c3 = _c3(x, y, mo, seed, eig_x, eig_y)

    step(2, 4, "uniformity and relative alignment")
    idx = _subsample(n, max_n, seed)
    a, b = _rows(x, idx, "images"), _rows(y, idx, "texts")
    m = len(a)
    lse_a, lse_b = _self_logsum(a, 2.0, dev), _self_logsum(b, 2.0, dev)
    lse_ab, hardest = _cross(a, b, 2.0, dev)
    step(3, 4, "linear separability")

    out = {
        "gap_length": float(np.linalg.norm((sx - sy) / n)),
        "paired_cosine_mean": float(cos.mean()),
        "unpaired_cosine_mean": _unpaired_mean_std(mo)[0],
        "linear_separability": _separability(x, y, 5, seed, SEPARABILITY_MAX_N),
        **{f"c3_{k}": v for k, v in c3.items()},
        "uniformity_image": lse_a - math.log(m * (m - 1)),
        "uniformity_text": lse_b - math.log(m * (m - 1)),
        "uniformity_union": _union_uniformity(m, lse_a, lse_b, lse_ab),
        "alignment": float(np.mean(2.0 - 2.0 * cos)),
        "relative_alignment": float(np.mean(np.einsum("ij,ij->i", a, b) - hardest)),
        "effective_dimension_image": _exp_entropy(eig_x[0]),
        "effective_dimension_text": _exp_entropy(eig_y[0]),
        "effective_dimension_joint": _exp_entropy(_eigvals_desc(_covariance(sx + sy, gx + gy, 2 * n))),
        "vendi_image": _exp_entropy(_eigvals_desc(gx / n)),
        "vendi_text": _exp_entropy(_eigvals_desc(gy / n)),
        "vendi_joint": _exp_entropy(_eigvals_desc((gx + gy) / (2 * n))),
    }
    assert list(out) == list(METRICS)  # METRICS documents exactly these keys, in this order
    spectra = {"images": _eigvals_desc(_covariance(sx, gx, n)), "texts": _eigvals_desc(_covariance(sy, gy, n)),
               "joint": _eigvals_desc(_covariance(sx + sy, gx + gy, 2 * n))}
    step(4, 4, "done")
    return Analysis(out, spectra, cos, _unpaired_sample(a, b, seed))
