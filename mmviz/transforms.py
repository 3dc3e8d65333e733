"""Fixes for the modality gap, as fit/transform estimators, and geodesic mixup on the sphere.

- Collapse, Corrupt: C3 (Zhang et al., "Connect, Collapse, Corrupt: Learning Cross-Modal
  Tasks with Uni-Modal Data", ICLR 2024). Collapse removes each modality's mean; Corrupt adds
  isotropic Gaussian noise.
- Shift: the embedding shift of Liang et al. ("Mind the Gap", NeurIPS 2022), images and texts
  moved towards each other along the gap direction.
- slerp: geodesic multimodal mixup (m2-mix; Oh et al., "Geodesic Multi-Modal Mixup for
  Robust Fine-Tuning", NeurIPS 2023); linear_mix for comparison; beta_ratios for lam.

Each estimator is fitted on a reference set, `fit(images, texts)`, and applied to any points,
`transform(images, texts) -> (images, texts)`. Images and texts need not be the same number
(several captions per image). Rows are taken as given; mmviz stores unit vectors.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .arrays import gather_rows, release_pages, rows_per_chunk
from .sphere import EPS, normalise

C3_SIGMA = float(np.sqrt(0.016))  # C3's noise level: variance 0.016 per coordinate


def _matrix(x, name: str) -> np.ndarray:
    """x as a 2-D numeric array, not copied (a memory map stays one); values are checked chunk
    by chunk as they are read (`_chunks`)."""
    x = x if isinstance(x, np.ndarray) else np.asarray(x)
    if x.ndim != 2 or x.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected a 2-D numeric array (n, d), got shape {x.shape}, dtype {x.dtype}")
    return x


def _chunks(x: np.ndarray, name: str, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(start, float64 copy of rows start..) of x, 16 MB at a time, each checked for NaN/inf:
    a large memory-mapped set is never read whole."""
    rows = rows or rows_per_chunk(x.shape[1], 8, 2 ** 24)
    for start in range(0, len(x), rows):
        chunk = np.asarray(x[start:start + rows], dtype=np.float64)
        if not np.isfinite(chunk).all():
            raise ValueError(f"{name}: contains NaN or inf")
        yield start, chunk
    release_pages(x)  # the pass is over: its pages need not stay resident


def means(images, texts) -> tuple[np.ndarray, np.ndarray]:
    """(image mean, text mean) in float64, one chunked pass over each (for `fit_means`)."""
    return _mean(_matrix(images, "images"), "images"), _mean(_matrix(texts, "texts"), "texts")


def _mean(x: np.ndarray, name: str) -> np.ndarray:
    """The rows' mean in float64, accumulated chunk by chunk."""
    total = np.zeros(x.shape[1])
    for _, chunk in _chunks(x, name):
        total += chunk.sum(axis=0)
    return total / max(len(x), 1)


def _out_dtype(x: np.ndarray):
    return x.dtype if x.dtype.kind == "f" else np.float64


class _Transform:
    """fit on a reference set, transform any points; subclasses set `_fit` (from the two
    modalities' means) and `_apply` (to a chunk of one modality's rows, in float64).

    Everything streams in chunks, so a memory-mapped million-row set is never copied whole:
    `fit` takes the means in one pass, `transform_chunks` yields the transformed rows (images
    first, then texts) for a caller to write out, `transform` gathers them into arrays."""

    renormalise = True

    def fit(self, images, texts):
        images, texts = _matrix(images, "images"), _matrix(texts, "texts")
        if images.shape[1] != texts.shape[1]:
            raise ValueError(f"images are {images.shape[1]}-d but texts are {texts.shape[1]}-d")
        return self.fit_means(_mean(images, "images"), _mean(texts, "texts"))

    def fit_means(self, image_mean, text_mean):
        """Fit from the two modalities' means (all any transform here needs): the same as
        `fit` on the rows, without another pass over a large set whose means are known."""
        image_mean, text_mean = np.asarray(image_mean, dtype=np.float64), np.asarray(text_mean, dtype=np.float64)
        if image_mean.shape != text_mean.shape or image_mean.ndim != 1:
            raise ValueError(f"means must be two (d,) vectors, got {image_mean.shape} and {text_mean.shape}")
        self._fit(image_mean, text_mean)
        self.dim_ = len(image_mean)
        return self

    def _checked(self, images, texts) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(self, "dim_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(images, texts) first")
        images, texts = _matrix(images, "images"), _matrix(texts, "texts")
        for name, x in (("images", images), ("texts", texts)):
            if x.shape[1] != self.dim_:
                raise ValueError(f"{name} are {x.shape[1]}-d but the transform was fitted on {self.dim_}-d vectors")
        return images, texts

    def transform_chunks(self, images, texts, rows: int | None = None) -> Iterator[tuple[str, int, np.ndarray]]:
        """("image" or "text", start row, transformed float64 rows) for every chunk, images
        first: the same numbers as `transform`, whatever the chunk size."""
        images, texts = self._checked(images, texts)
        state = self._start()
        for modality, x in (("image", images), ("text", texts)):
            for start, chunk in _chunks(x, modality + "s", rows):
                new = self._apply(chunk, modality, state)
                yield modality, start, normalise(new) if self.renormalise else new

    def transform(self, images, texts) -> tuple[np.ndarray, np.ndarray]:
        images, texts = self._checked(images, texts)
        out = {"image": np.empty(images.shape, _out_dtype(images)), "text": np.empty(texts.shape, _out_dtype(texts))}
        for modality, start, rows in self.transform_chunks(images, texts):
            out[modality][start:start + len(rows)] = rows
        return out["image"], out["text"]

    def fit_transform(self, images, texts) -> tuple[np.ndarray, np.ndarray]:
        return self.fit(images, texts).transform(images, texts)

    def _fit(self, image_mean: np.ndarray, text_mean: np.ndarray) -> None:
        pass

    def _start(self):
        """What a pass over the rows carries from chunk to chunk (Corrupt: its noise stream)."""
        return None


class Collapse(_Transform):
    """C3's collapse: subtract each modality's mean (fitted on the reference set), then
    re-normalise. Removes the constant part of the gap; without re-normalising, a second
    collapse fitted on the output is exactly the identity. `strength` in [0, 1] subtracts
    that fraction of the means, to watch the gap close gradually (1 = C3)."""

    def __init__(self, renormalise: bool = True, strength: float = 1.0):
        if not 0 <= strength <= 1:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        self.renormalise, self.strength = renormalise, float(strength)

    def _fit(self, image_mean, text_mean):
        self.image_mean_, self.text_mean_ = image_mean, text_mean

    def _apply(self, x, modality, state):
        return x - self.strength * (self.image_mean_ if modality == "image" else self.text_mean_)


class Corrupt(_Transform):
    """C3's corrupt: add isotropic Gaussian noise N(0, sigma^2 I), then re-normalise. The
    noise is drawn afresh from `seed` on every call, images first, so a call is reproducible.
    sigma = 0 is the identity (nothing is added and nothing re-normalised). `modalities`
    says which side gets noise (C3 trains with noisy text embeddings)."""

    def __init__(self, sigma: float = C3_SIGMA, seed: int = 0, modalities: tuple[str, ...] = ("image", "text"),
                 renormalise: bool = True):
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        unknown = set(modalities) - {"image", "text"}
        if unknown:
            raise ValueError(f"modalities must be 'image' and/or 'text', got {sorted(unknown)}")
        self.sigma, self.seed, self.modalities, self.renormalise = float(sigma), seed, tuple(modalities), renormalise

    def transform(self, images, texts):
        if self.sigma == 0:
            _matrix(images, "images"), _matrix(texts, "texts")
            return np.array(images, copy=True), np.array(texts, copy=True)
        return super().transform(images, texts)

    def transform_chunks(self, images, texts, rows=None):
        if self.sigma == 0:  # the identity: not even re-normalised
            images, texts = self._checked(images, texts)
            for modality, x in (("image", images), ("text", texts)):
                for start, chunk in _chunks(x, modality + "s", rows):
                    yield modality, start, chunk
            return
        yield from super().transform_chunks(images, texts, rows)

    def _start(self):
        return np.random.default_rng(self.seed)

    def _apply(self, x, modality, rng):
        # Drawn for every row in order, images then texts, whichever side gets it: chunk by
        # chunk this is the same stream as one draw of each whole array.
        noise = rng.normal(0.0, self.sigma, x.shape)
        return x + noise if modality in self.modalities else x


class Shift(_Transform):
    """Liang et al.'s embedding shift: images move by -lam/2 and texts by +lam/2 along the
    unit gap direction (image mean minus text mean, fitted), then re-normalise. lam equal to
    the gap's length (`gap_length_`) makes the centres meet before re-normalising; lam > 0
    closes the gap, lam < 0 widens it."""

    def __init__(self, lam: float, renormalise: bool = True):
        self.lam, self.renormalise = float(lam), renormalise

    def _fit(self, image_mean, text_mean):
        gap = image_mean - text_mean
        self.gap_length_ = float(np.linalg.norm(gap))
        self.direction_ = gap / max(self.gap_length_, EPS)

    def _apply(self, x, modality, state):
        step = self.lam / 2 * self.direction_
        return x - step if modality == "image" else x + step


TRANSFORMS = {"collapse": Collapse, "corrupt": Corrupt, "shift": Shift}


def make(name: str, **params) -> _Transform:
    """The one place that turns a name ("collapse", "corrupt", "shift") and its parameters
    into an unfitted transform: make("shift", lam=0.8)."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; choose from {', '.join(TRANSFORMS)}")
    return TRANSFORMS[name](**params)


# ----------------------------------------------------------------------------------------
# judging a transform: the geometry metrics and recall@k, before and after

RECALL_KS = (1, 5, 10)
RECALL_METRICS = {f"{d}_r{k}": (f"{label} R@{k}", f"Share of {what} whose partner is among the {k} nearest")
                  for d, label, what in (("i2t", "Image→text", "images"), ("t2i", "Text→image", "captions"))
                  for k in RECALL_KS}


def evaluate(images, texts, text_owner=None, *, max_n: int = 4096, seed: int = 0, recall_queries: int | None = None,
             progress=None) -> dict[str, float]:
    """Every geometry metric (geometry.all_metrics on each image and its first caption, the
    O(n^2) ones on a seeded sample of max_n pairs) and recall@1/5/10 both ways over all
    captions (an image hits if any of its captions is retrieved), or over a seeded sample of
    `recall_queries` image and caption queries each searched against every key (see
    retrieval.recall_at_k; `progress(done, total)` follows it). Keys: geometry.METRICS, then
    RECALL_METRICS. Memory maps are read in chunks."""
    from . import geometry
    from .retrieval import recall_at_k

    owner = np.arange(len(images)) if text_owner is None else np.asarray(text_owner)
    first = np.unique(owner, return_index=True)[1]
    if len(first) != len(images):
        raise ValueError(f"{len(images) - len(first)} images have no caption: every image needs one for the metrics")
    one_each = len(first) == len(texts) and np.array_equal(first, np.arange(len(texts)))
    texts = texts if isinstance(texts, np.ndarray) else np.asarray(texts)
    out = geometry.all_metrics(images, texts if one_each else texts[first], seed=seed, max_n=max_n)
    release_pages(images, texts)  # geometry's passes read every row of the maps
    rec = recall_at_k(images, texts, RECALL_KS, text_owner=owner, queries=recall_queries, seed=seed, progress=progress)
    out.update({f"{d}_r{k}": rec[d][k] for d in ("i2t", "t2i") for k in RECALL_KS})
    return out


def metric_table(before: dict[str, float], after: dict[str, float]):
    """A pandas DataFrame: key, metric (label), before, after, change, meaning."""
    import pandas as pd

    from .geometry import METRICS

    labels = {**METRICS, **RECALL_METRICS}
    return pd.DataFrame([{"key": k, "metric": labels.get(k, (k, ""))[0], "before": before[k], "after": after[k],
                          "change": after[k] - before[k], "meaning": labels.get(k, ("", ""))[1]}
                         for k in before if k in after])


# ----------------------------------------------------------------------------------------
# mixup on the sphere


def _pair_rows(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"a and b must have the same dimension, got {a.shape} and {b.shape}")
    return normalise(a), normalise(b)


def _orthogonal(a: np.ndarray) -> np.ndarray:
    """A unit vector orthogonal to each unit row of a: the coordinate axis least aligned with
    the row, minus its projection on it (a fixed choice, so results are reproducible)."""
    axis = np.zeros_like(a)
    np.put_along_axis(axis, np.abs(a).argmin(-1)[..., None], 1.0, axis=-1)
    return normalise(axis - (axis * a).sum(-1, keepdims=True) * a)


def slerp(a, b, lam):
    """Geodesic mixup: the point a fraction of the way along the great circle from b to a,

        slerp(a, b, lam) = sin(lam theta) / sin(theta) a + sin((1 - lam) theta) / sin(theta) b,
        theta = arccos(a . b),

    so lam = 1 gives a and lam = 0 gives b (m2-mix's convention: lam weighs the first
    argument). a and b (..., d) are normalised first; lam is a number or an array that
    broadcasts against their leading shape (slerp(a[None], b[None], lams) is the path of
    len(lams) points). Returns unit vectors in float64.

    Computed as cos(phi) a + sin(phi) e, phi = (1 - lam) theta, with e the unit direction of
    b's part orthogonal to a, and theta = atan2(|that part|, a . b): the same formula, but
    always on the sphere and never NaN. For a = b it returns a; for antipodal a and b (no
    unique great circle) it turns through a fixed direction orthogonal to a.
    """
    a, b = _pair_rows(a, b)
    lam = np.asarray(lam, dtype=np.float64)
    dot = np.clip((a * b).sum(-1, keepdims=True), -1.0, 1.0)
    ortho = b - dot * a
    size = np.linalg.norm(ortho, axis=-1, keepdims=True)
    theta = np.arctan2(size, dot)
    # Where b has no usable part orthogonal to a: equal vectors (theta ~ 0, e unused) or
    # antipodal ones (theta ~ pi, any orthogonal direction is a great circle through both).
    e = np.where(size > 1e-9, ortho / np.maximum(size, EPS), _orthogonal(a))
    phi = (1.0 - lam[..., None]) * theta
    return normalise(np.cos(phi) * a + np.sin(phi) * e)


def linear_mix(a, b, lam, renormalise: bool = True):
    """Plain mixup, lam a + (1 - lam) b (a and b normalised first), re-normalised by default:
    for comparison with slerp. Without re-normalising, the path is the chord inside the
    sphere. Antipodal a and b at lam = 0.5 mix to zero, which stays zero."""
    a, b = _pair_rows(a, b)
    lam = np.asarray(lam, dtype=np.float64)[..., None]
    mix = lam * a + (1.0 - lam) * b
    return normalise(mix) if renormalise else mix


def beta_ratios(n: int, alpha: float = 0.5, seed: int | np.random.Generator = 0) -> np.ndarray:
    """n mixing ratios lam ~ Beta(alpha, alpha): alpha < 1 favours the ends (m2-mix uses 0.5
    across modalities), alpha > 1 the middle (Beta(2, 2) for its uni-modal mixes)."""
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return rng.beta(alpha, alpha, size=n)


def mixed_negative_cosines(images, texts, lam, max_n: int = 2048, seed: int = 0) -> dict[str, np.ndarray]:
    """How hard m2-mix's negatives are. For pairs (I_i, T_i) and the mixes m_j =
    slerp(I_j, T_j, lam), returns the cosines of every anchor to the negatives it would
    see (j != i): "image_text" cos(I_i, T_j) (CLIP's negatives for an image), "image_mixed"
    cos(I_i, m_j) (m2-mix's), "text_image" cos(T_i, I_j), "text_mixed" cos(T_i, m_j), and the
    positives "paired" cos(I_i, T_i). On gapped data the mixed negatives sit between the
    modalities, so they are closer to the anchor than the other modality's negatives are.
    At most max_n pairs (a seeded sample) keep this O(max_n^2)."""
    images, texts = _matrix(images, "images"), _matrix(texts, "texts")
    if images.shape != texts.shape:
        raise ValueError(f"images and texts must be paired (n, d) arrays, got {images.shape} and {texts.shape}")
    if len(images) > max_n:  # sample first: a large set is never converted whole
        idx = np.sort(np.random.default_rng(seed).choice(len(images), size=max_n, replace=False))
        images, texts = gather_rows(images, idx), gather_rows(texts, idx)
    a, b = _pair_rows(images, texts)
    m = slerp(a, b, lam)
    off = ~np.eye(len(a), dtype=bool)
    return {"image_text": (a @ b.T)[off], "image_mixed": (a @ m.T)[off],
            "text_image": (b @ a.T)[off], "text_mixed": (b @ m.T)[off], "paired": (a * b).sum(-1)}
