"""Projections of embedding vectors to 2-D / 3-D for plotting: PCA, the gap axis, UMAP and
DOSNES, for sets of up to millions of image-caption pairs.

Each estimator follows scikit-learn's fit / transform / fit_transform, takes a `seed` and is
deterministic for a given seed (on one machine, device and thread count). `project_pairs`
projects images and captions *jointly* (one fit on the stacked rows, so the modality gap
stays visible): UMAP and DOSNES on a seeded sample, the rest placed by their nearest
fitted rows, in chunks, with progress; inputs may be read-only float16 memmaps and are
never copied whole. `cached_layout` keeps finished layouts in the workspace under
`layouts/<key>/`, memory-mapped when reopened.

Modules: rows (chunked reading), pca (PCA, GapPCA), umap (umap-learn / cuML), dosnes,
placement (kNN placement), layout (project_pairs, Layout, sample_for_3d), cache.
"""
from .cache import (LAYOUT_FORMAT, array_digest, cache_key, cached_layout, layout_key, layout_path, load_layout,
                    save_layout)
from .dosnes import (DOSNES, _shifted_distances, calibrate_width, dosnes_affinities, doubly_stochastic,
                     squared_distances)
from .layout import (DEFAULT_MAX_FIT, METHODS, Layout, LazyEstimator, fit_rows, make_estimator, project_pairs,
                     resolve_max_fit, sample_for_3d)
from .pca import PCA, GapPCA
from .placement import KnnPlacement, knn_positions
from .progress import Progress, as_progress
from .rows import CHUNK, Rows, unit_rows
from .threads import TorchThreads
from .umap import UMAP, umap_backend

__all__ = [
    "CHUNK", "DEFAULT_MAX_FIT", "DOSNES", "GapPCA", "KnnPlacement", "LAYOUT_FORMAT", "Layout", "LazyEstimator",
    "METHODS", "PCA", "Progress", "Rows", "TorchThreads", "UMAP", "array_digest", "as_progress", "cache_key",
    "cached_layout",
    "calibrate_width", "dosnes_affinities", "doubly_stochastic", "fit_rows", "knn_positions", "layout_key",
    "layout_path", "load_layout", "make_estimator", "project_pairs", "resolve_max_fit", "sample_for_3d",
    "save_layout", "squared_distances", "umap_backend", "unit_rows",
]
