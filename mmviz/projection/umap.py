"""UMAP behind the package's fit/transform interface: umap-learn on the CPU, or cuML's UMAP
when cuML is importable and a CUDA GPU is present (`pip install cuml-cu12`, the `gpu`
extra; much faster fits of large samples). New rows are placed by KnnPlacement by default."""
from __future__ import annotations

import warnings

import numpy as np

from .placement import KnnPlacement
from .rows import Rows

BACKENDS = ("auto", "umap-learn", "cuml")


def _cuda_devices() -> int:
    """CUDA devices cuML could use (through cupy, which cuML depends on); 0 when none."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no cupy, no driver, no device: all mean "no GPU for cuML"
        return 0


def umap_backend(backend: str = "auto") -> str:
    """The UMAP implementation a fit will use: "cuml" when asked for or, with "auto", when
    cuML is importable and a CUDA GPU is present; otherwise "umap-learn"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "umap-learn":
        return backend
    try:
        import cuml.manifold  # noqa: F401
    except ImportError:
        if backend == "cuml":
            raise RuntimeError("backend='cuml' needs cuML and a CUDA GPU: pip install cuml-cu12") from None
        return "umap-learn"
    if _cuda_devices() == 0:
        if backend == "cuml":
            raise RuntimeError("backend='cuml': cuML is installed but no CUDA GPU is visible")
        return "umap-learn"
    return "cuml"


class UMAP:
    """UMAP (cosine by default) with a seed. umap-learn is imported lazily: the first fit in
    a process pays numba's compilation (~15 s on 2 cores); with a seed it runs
    single-threaded and gives the same layout each time. cuML (backend "auto" with a GPU,
    or "cuml") fits on the GPU; its layouts differ from umap-learn's.

    `transform` places new rows: placement="knn" (default) by their `place_neighbors`
    nearest fitted rows (KnnPlacement, exact cosine); placement="umap" with the fitted
    model's own transform (slower on small fits, less trustworthy on a large clustered set:
    bench/placement.py)."""

    def __init__(self, n_components: int = 2, n_neighbors: int = 15, min_dist: float = 0.1,
                 metric: str = "cosine", seed: int = 0, backend: str = "auto", placement: str = "knn",
                 place_neighbors: int = 10, place_temperature: float = 0.01):
        if placement not in ("knn", "umap"):
            raise ValueError(f"placement must be 'knn' or 'umap', not {placement!r}")
        self.n_components, self.n_neighbors = int(n_components), int(n_neighbors)
        self.min_dist, self.metric, self.seed = float(min_dist), metric, seed
        self.backend, self.placement = backend, placement
        self.place_neighbors, self.place_temperature = int(place_neighbors), float(place_temperature)
        self.model_ = None  # the fitted umap-learn / cuML model (None after a restore)
        self.embedding_: np.ndarray | None = None
        self.placement_: KnnPlacement | None = None
        self.backend_: str | None = None

    def fit(self, x) -> "UMAP":
        x = np.asarray(x, dtype=np.float32)
        # umap cannot have more neighbours than points; tiny sets still get a layout.
        k = max(2, min(self.n_neighbors, len(x) - 1))
        self.backend_ = umap_backend(self.backend)
        if self.backend_ == "cuml":
            import cuml.manifold

            self.model_ = cuml.manifold.UMAP(n_components=self.n_components, n_neighbors=k, min_dist=self.min_dist,
                                             metric=self.metric, random_state=self.seed)
            embedding = self.model_.fit_transform(x)
        else:
            import umap

            self.model_ = umap.UMAP(n_components=self.n_components, n_neighbors=k, min_dist=self.min_dist,
                                    metric=self.metric, random_state=self.seed)
            with warnings.catch_warnings():
                # "n_jobs overridden to 1 by setting random_state": the price of determinism, known.
                warnings.filterwarnings("ignore", message=".*n_jobs value.*")
                warnings.filterwarnings("ignore", message=".*random_state.*")
                embedding = self.model_.fit_transform(x)
        embedding = np.asarray(embedding.get() if hasattr(embedding, "get") else embedding, dtype=np.float32)
        return self.restore(x, embedding)

    def restore(self, x, embedding) -> "UMAP":
        """Fitted state from the fitted rows and their layout positions (a cached layout):
        enough for placement="knn"; placement="umap" needs a real fit."""
        self.embedding_ = np.asarray(embedding, dtype=np.float32)
        self.placement_ = KnnPlacement(self.place_neighbors, self.place_temperature).fit(x, self.embedding_)
        return self

    def transform(self, x, progress=None) -> np.ndarray:
        if self.placement_ is None:
            raise RuntimeError("UMAP is not fitted")
        if self.placement == "knn":
            return self.placement_.transform(x, progress)
        if self.model_ is None:
            raise RuntimeError("placement='umap' needs the fitted model: fit() again (a restored layout has none)")
        rows = Rows.of(x)
        out = np.empty((len(rows), self.n_components), dtype=np.float32)
        for s, block in rows.chunks():
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*n_jobs value.*")
                placed = self.model_.transform(block.astype(np.float32, copy=False))
            out[s:s + len(block)] = placed.get() if hasattr(placed, "get") else placed
        return out

    def fit_transform(self, x) -> np.ndarray:
        return self.fit(x).embedding_
