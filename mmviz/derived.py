"""Transformed copies of a set's vectors, kept in the workspace and read back memory-mapped.

    <home>/derived/<key>/image.npy, text.npy   the transformed rows, in the set's row order
    <home>/derived/<key>/info.json             what they are: the parts of the key, the
                                               transform's fitted numbers, the dtype

The key is a sha256 of what determines the rows: the dataset version (content hash), the model
fingerprint, the transform's name and parameters (seed included). A million 512-d pairs give
2 GB of float16: too much to hold in a page's memory for every slider position, cheap to read
back as a memory map. The transform is fitted in one chunked pass and applied in another; the
rows stream through `arrays.NpyWriter` into a staging folder that is renamed into place whole,
so a folder under its key is always complete. Only the MAX_KEPT most recently used variants are
kept.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .arrays import NpyWriter, ensure_free, open_array, stored_dtype
from .atomic import STAGING_PREFIX, StagingFolder, atomic_write_json, remove_dead_staging

FORMAT = 1
MAX_KEPT = 6  # variants kept in a workspace; the least recently used beyond this are removed


@dataclass
class Derived:
    image: np.ndarray  # read-only memory maps
    text: np.ndarray
    info: dict  # parts, fitted (the transform's fitted numbers), dtype
    path: Path
    hit: bool  # read back from the workspace rather than computed now


def transform_parts(key_parts: dict, kind: str, params: dict) -> dict:
    """What names transform `kind` with `params` applied to a set's vectors (`key_parts`:
    Embeddings.key_parts), the same for the app and the command line."""
    return {**key_parts, "transform": kind, "params": dict(sorted(params.items()))}


def derived_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps({"format": FORMAT, **parts}, sort_keys=True, default=str).encode()).hexdigest()


def _fitted_numbers(transform) -> dict:
    """The transform's fitted scalars (e.g. Shift's gap_length_), for info.json."""
    return {k: v for k, v in vars(transform).items() if k.endswith("_") and isinstance(v, (int, float))}


def stored_dtype_for(n: int, m: int, dim: int) -> np.dtype:
    """The dtype transformed vectors of n images and m captions are stored in."""
    return stored_dtype(None, (n + m) * dim * 4)


def _open(path: Path, hit: bool) -> Derived:
    info = json.loads((path / "info.json").read_text("utf-8"))
    return Derived(open_array(path / "image.npy"), open_array(path / "text.npy"), info, path, hit)


def transformed(home, parts: dict, transform, images, texts,
                progress: Callable[[int, int], None] | None = None) -> Derived:
    """`transform` (e.g. transforms.make("collapse"); fitted on images and texts here unless it
    is already) applied to them, from the workspace when done before (same `parts`: dataset, model,
    transform and parameters), else computed chunk by chunk and stored. progress(rows done,
    rows in all) counts the fitting pass and the writing pass."""
    root = Path(home) / "derived"
    path = root / derived_key(parts)
    if (path / "info.json").is_file():
        try:
            found = _open(path, True)
            _used(path)
            return found
        except (OSError, ValueError):
            shutil.rmtree(path, ignore_errors=True)  # unreadable: compute it again
    n, m, dim = len(images), len(texts), images.shape[1]
    dtype = stored_dtype_for(n, m, dim)
    root.mkdir(parents=True, exist_ok=True)
    ensure_free(root, (n + m) * dim * dtype.itemsize, root, "storing the transformed vectors")
    total = 2 * (n + m)
    if progress:
        progress(0, total)
    if not hasattr(transform, "dim_"):  # not fitted yet (a caller that knows the means fits from them)
        transform.fit(images, texts)
    if progress:
        progress(n + m, total)
    staging_folder = StagingFolder(root)  # its lock tells _prune this writer is alive
    staging = staging_folder.path
    try:
        writers = {"image": NpyWriter(staging / "image.npy", dim, dtype), "text": NpyWriter(staging / "text.npy", dim, dtype)}
        done = n + m
        try:
            for modality, _, rows in transform.transform_chunks(images, texts):
                writers[modality].append(rows)
                done += len(rows)
                if progress:
                    progress(done, total)
            for w in writers.values():
                w.close()
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        atomic_write_json(staging / "info.json", {"parts": parts, "fitted": _fitted_numbers(transform),
                                                  "dtype": str(dtype), "rows": [n, m], "dim": dim})
        try:
            os.rename(staging, path)
        except OSError:  # another writer got there first: its copy is as good
            pass
    finally:
        staging_folder.close()
    _used(path)
    _prune(root, keep=path)
    return _open(path, False)


def _used(path: Path) -> None:
    """Mark a variant as just used (_prune keeps the most recent): info.json's mtime, set from
    the fine clock (a file system's own timestamps can be 4 ms coarse, so two uses tie)."""
    now = time.time_ns()
    os.utime(path / "info.json", ns=(now, now))


def _prune(root: Path, keep: Path) -> None:
    """Remove all but the MAX_KEPT most recently used variants, and dead writers' staging."""
    done = []
    for p in root.iterdir():
        try:
            if p.name.startswith(STAGING_PREFIX):
                continue
            if p.is_dir() and p != keep:
                done.append(((p / "info.json").stat().st_mtime_ns, p))
        except FileNotFoundError:
            continue
    for _, p in sorted(done, reverse=True)[MAX_KEPT - 1:]:
        shutil.rmtree(p, ignore_errors=True)
    remove_dead_staging(root)
