"""The workspace's layout cache: `<home>/layouts/<key>/`, one folder per finished layout.

Each folder holds `image_xy.npy`, `text_xy.npy` and `fit_index.npy` (read back memory-mapped:
reopening a 2M-point layout reads a few headers, not the points), the linear estimators'
state as small .npy files, and `meta.json`. A folder is written under a temporary name and
renamed into place when complete, so a reader sees a whole layout or none; one whose files
are missing, truncated or of the wrong shape counts as a miss and is replaced.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from ..atomic import fsync_dir as _fsync_dir
from .layout import Layout, LazyEstimator, family, make_estimator, pair_rows, project_pairs, resolve_max_fit
from .pca import PCA
from .progress import Progress
from .rows import CHUNK, Rows

LAYOUT_FORMAT = 2  # 1: one .npz per layout (no longer read)
PCA_STATE = ("mean_", "components_", "explained_variance_")


def array_digest(*arrays, chunk: int = CHUNK) -> str:
    """sha256 of arrays' shapes and float32 bytes (dtype-independent, like store.content_hash),
    read `chunk` rows at a time: a float16 memmap is never converted whole."""
    h = hashlib.sha256()
    for a in arrays:
        a = a if isinstance(a, np.ndarray) else np.asarray(a)
        h.update(repr(a.shape).encode())
        for s in range(0, len(a), chunk) if a.ndim else [None]:
            block = np.ascontiguousarray(a if s is None else a[s:s + chunk], dtype=np.float32)
            h.update(block.reshape(-1))  # hashlib reads the buffer in place
    return h.hexdigest()


def layout_key(key_parts: dict, method: str, params: dict | None, seed: int, max_fit: int | None,
               data_digest: str) -> str:
    spec = {"format": LAYOUT_FORMAT, "parts": key_parts, "method": method, "params": params or {},
            "seed": seed, "max_fit": max_fit, "data": data_digest}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def cache_key(key_parts: dict, images, texts, method: str, params: dict | None, seed: int, max_fit: int | None,
              identifies_data: bool = False) -> str:
    """The key cached_layout files a layout under (max_fit as resolved: None or an int)."""
    data = f"shapes {np.shape(images)} {np.shape(texts)}" if identifies_data else array_digest(images, texts)
    return layout_key(key_parts, method, params, seed, max_fit, data)


def layout_path(ws, key: str) -> Path:
    """The folder of the layout with this key (present only once complete)."""
    return Path(ws.home) / "layouts" / key


def _save_array(path: Path, a: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, a, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def save_layout(folder: Path, layout: Layout) -> None:
    """Write `layout` into `folder` atomically: into a temporary sibling, then renamed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        meta = {"format": LAYOUT_FORMAT, "method": layout.method, "params": layout.params, "seed": layout.seed,
                "seconds": layout.seconds, "n_images": len(layout.image_xy), "n_texts": len(layout.text_xy),
                "dims": layout.dims, "n_fit": len(layout.fit_index)}
        _save_array(tmp / "image_xy.npy", np.asarray(layout.image_xy, dtype=np.float32))
        _save_array(tmp / "text_xy.npy", np.asarray(layout.text_xy, dtype=np.float32))
        _save_array(tmp / "fit_index.npy", np.asarray(layout.fit_index, dtype=np.int64))
        est = layout.estimator
        if isinstance(est, PCA):
            for name in PCA_STATE:
                _save_array(tmp / f"pca_{name.rstrip('_')}.npy", getattr(est, name))
        else:  # UMAP, DOSNES: rebuilt from the fitted rows and their positions
            meta["h"] = getattr(est, "h_", None)
            meta["backend"] = getattr(est, "backend_", None)
        with open(tmp / "meta.json", "w") as f:
            json.dump(meta, f, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if folder.exists():  # a damaged layout under this key: set it aside, then replace it
            old = folder.parent / f".old-{folder.name[:16]}-{secrets.token_hex(4)}"
            os.rename(folder, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same layout first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _open(path: Path, shape: tuple, dtype) -> np.ndarray:
    """A read-only memmap of a .npy file, checked: ValueError unless it has this shape and
    dtype and the file holds all of its bytes."""
    a = np.load(path, mmap_mode="r", allow_pickle=False)
    if a.shape != shape or a.dtype != np.dtype(dtype):
        raise ValueError(f"{path}: {a.dtype} {a.shape}, expected {np.dtype(dtype)} {shape}")
    return a


def load_layout(folder: Path, key: str, method: str, params: dict | None, seed: int, rows: Rows) -> Layout:
    """The layout in `folder` for these inputs; ValueError / OSError / KeyError when it is not
    a complete layout of this format, method and size."""
    meta = json.loads((folder / "meta.json").read_text())
    n_img, n_txt = int(rows.offsets[1]), len(rows) - int(rows.offsets[1])
    if (meta["format"], meta["method"], meta["n_images"], meta["n_texts"]) != (LAYOUT_FORMAT, method, n_img, n_txt):
        raise ValueError(f"{folder.name}: not a layout of this format, method and size")
    dims, n_fit = int(meta["dims"]), int(meta["n_fit"])
    image_xy = _open(folder / "image_xy.npy", (n_img, dims), np.float32)
    text_xy = _open(folder / "text_xy.npy", (n_txt, dims), np.float32)
    fit_index = _open(folder / "fit_index.npy", (n_fit,), np.int64)
    if family(method) in ("pca", "gap"):
        est = make_estimator(method, params, seed)
        for name in PCA_STATE:
            setattr(est, name, np.load(folder / f"pca_{name.rstrip('_')}.npy", allow_pickle=False))
        if est.components_.shape != (dims, rows.shape[1]):
            raise ValueError(f"{folder.name}: components of shape {est.components_.shape}")
    else:
        h = meta.get("h")

        def rebuild():
            est = make_estimator(method, params, seed)
            idx = np.asarray(fit_index)
            if getattr(est, "placement", "knn") != "knn":  # umap-learn's own transform needs its model
                return est.fit(rows.take(idx))
            fitted = Rows(image_xy, text_xy).take(idx)
            return est.restore(rows.take(idx), fitted, h) if h is not None else est.restore(rows.take(idx), fitted)

        est = LazyEstimator(rebuild)
    return Layout(image_xy=image_xy, text_xy=text_xy, method=method, params=dict(params or {}), seed=seed,
                  fit_index=fit_index, estimator=est, seconds=float(meta["seconds"]), key=key)


def cached_layout(ws, key_parts: dict, images, texts, method: str, params: dict | None = None, seed: int = 0,
                  progress: Progress | None = None, max_fit="auto",
                  identifies_data: bool = False) -> tuple[Layout, bool]:
    """`project_pairs` through the workspace's layout cache. Returns (layout, hit).

    The key is sha256 of `key_parts` (say {"dataset": content hash, "model": fingerprint}),
    method, params, seed, the max_fit in force and the data: a digest of the input arrays
    (one chunked pass over them), or, with identifies_data=True, only their shapes, when
    key_parts already name immutable vectors (a dataset's content hash and a model
    fingerprint do) and hashing a million rows again would be wasted. A hit memory-maps the
    coordinates; PCA comes back ready to place new points, UMAP and DOSNES as a
    LazyEstimator rebuilt (no refit) on first use. A missing or damaged layout is a miss and
    is written again.
    """
    rows = pair_rows(images, texts)
    limit = resolve_max_fit(method, max_fit)
    key = cache_key(key_parts, images, texts, method, params, seed, limit, identifies_data)
    folder = layout_path(ws, key)
    if folder.is_dir():
        try:
            return load_layout(folder, key, method, params, seed, rows), True
        except (OSError, ValueError, KeyError, TypeError):
            pass  # damaged or foreign: compute again and replace it
    layout = project_pairs(images, texts, method, params, seed, max_fit=limit, progress=progress)
    layout.key = key
    save_layout(folder, layout)
    return layout, False
