"""Results of expensive computations, kept in the workspace under what they depend on.

`<home>/results/<kind>/<key>.json` or `.npz`, the key a sha256 of the parts that determine the
result: the dataset version (content hash), the model fingerprint, the parameters, and a
format number bumped when the computation changes. Files are written atomically, so a file
read back is whole; an unreadable or foreign one counts as missing and is computed again.

The geometry a page shows is cached here: `metrics` (every metric of `mmviz.geometry`),
`cosine_histograms` and `spectra`. On a million pairs the metrics take tens of seconds; a
reopen reads a small file.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import atomic_write_bytes, atomic_write_json

FORMAT = 1
HIST_BINS = 100


def result_key(kind: str, parts: dict) -> str:
    spec = {"format": FORMAT, "kind": kind, **parts}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def _path(home, kind: str, key: str, suffix: str) -> Path:
    return Path(home) / "results" / kind / f"{key}{suffix}"


def cached_json(home, kind: str, parts: dict, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """(compute() or its stored copy, whether it was stored). Values must be JSON."""
    key = result_key(kind, parts)
    path = _path(home, kind, key, ".json")
    try:
        doc = json.loads(path.read_text("utf-8"))
        if doc.get("key") == key:
            return doc["value"], True
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # missing, truncated or foreign: compute it again
    value = compute()
    atomic_write_json(path, {"key": key, "parts": parts, "value": value})
    return value, False


def cached_arrays(home, kind: str, parts: dict, compute: Callable[[], dict[str, np.ndarray]]
                  ) -> tuple[dict[str, np.ndarray], bool]:
    """As cached_json, for a dict of NumPy arrays (.npz, read without pickle)."""
    key = result_key(kind, parts)
    path = _path(home, kind, key, ".npz")
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["__key__"]) == key:
                return {k: z[k] for k in z.files if k != "__key__"}, True
    except (OSError, ValueError, KeyError, EOFError):
        pass
    value = compute()
    store_arrays(home, kind, parts, value)
    return value, False


def store_arrays(home, kind: str, parts: dict, value: dict[str, np.ndarray]) -> None:
    """Store what cached_arrays(home, kind, parts, ...) will read back."""
    key = result_key(kind, parts)
    buf = io.BytesIO()
    np.savez(buf, __key__=np.array(key), **value)
    atomic_write_bytes(_path(home, kind, key, ".npz"), buf.getvalue())


# ----------------------------------------------------------------------------------------
# the geometry of one set of embeddings


def metrics(home, emb, seed: int = 0, progress=None) -> tuple[dict[str, float], bool]:
    """geometry.all_metrics of the embeddings' images and first captions, cached;
    `progress(done, total, stage)` follows the computation when there is one."""
    from . import geometry

    def compute() -> dict[str, float]:
        found = geometry.analyse(emb.image, emb.paired_text, seed=seed, progress=progress)
        # The same passes gave the spectra and the cosines: store them now, so that the panels
        # beside the metrics read files instead of streaming every row again.
        store_arrays(home, "spectra", emb.key_parts, found.spectra)
        if seed == 0:  # the histogram's unpaired sample is seed 0's
            store_arrays(home, "cosines", {**emb.key_parts, "bins": HIST_BINS},
                         _histograms(found.paired, found.unpaired, HIST_BINS))
        return found.metrics

    return cached_json(home, "metrics", {**emb.key_parts, "seed": seed, "max_n": geometry.MAX_N}, compute)


def cosine_histograms(home, emb, bins: int = HIST_BINS) -> tuple[dict[str, np.ndarray], bool]:
    """Histograms of paired cosines (every pair) and unpaired ones (geometry's seeded sample),
    on shared bin edges: what the page draws, a few hundred numbers whatever the set's size.
    metrics() stores them too, from its own passes."""
    from . import geometry

    return cached_arrays(home, "cosines", {**emb.key_parts, "bins": bins}, lambda: _histograms(
        geometry.paired_cosines(emb.image, emb.paired_text), geometry.unpaired_cosines(emb.image, emb.paired_text),
        bins))


def _histograms(paired: np.ndarray, unpaired: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    lo, hi = float(min(paired.min(), unpaired.min())), float(max(paired.max(), unpaired.max()))
    edges = np.linspace(lo, hi + 1e-9, bins + 1)
    return {"edges": edges, "paired": np.histogram(paired, edges)[0], "unpaired": np.histogram(unpaired, edges)[0],
            "paired_n": np.array(len(paired)), "unpaired_n": np.array(len(unpaired))}


def spectra(home, emb) -> tuple[dict[str, np.ndarray], bool]:
    """Covariance eigenvalues of the images, the captions and both together, cached (metrics()
    stores them too)."""
    from . import geometry

    return cached_arrays(home, "spectra", emb.key_parts, lambda: {
        "images": geometry.spectrum(emb.image), "texts": geometry.spectrum(emb.paired_text),
        "joint": geometry.joint_spectrum(emb.image, emb.paired_text)})
