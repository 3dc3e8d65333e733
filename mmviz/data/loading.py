"""The one entry point: detect what a path holds and load it with the matching loader."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath

from .archives import safe_extract_zip
from .base import (_JUNK_NAMES, IMAGE_EXTENSIONS, TABLE_EXTENSIONS, VECTOR_EXTENSIONS, DataFormatError, ImportLimits,
                   ImportReport, PairedSet, Progress)
from .tables import _metadata_files, load_coco, load_imagefolder, load_sidecar_folder, load_table
from .vectors import load_clip_retrieval, load_vectors


def _find_coco_json(folder: Path) -> Path | None:
    for p in sorted(folder.rglob("*.json"), key=lambda p: (len(p.parts), p.name)):
        if p.stat().st_size > 2 * 2**30:
            continue
        try:
            head = p.open("rb").read(4096).decode("utf-8", "replace")
        except OSError:
            continue
        if p.stat().st_size >= 64 * 2**20:
            # Too big to parse just to look: COCO files start with info/licenses/images.
            if re.search(r'^\s*\{\s*"(info|licenses|images|annotations)"', head):
                return p
        else:
            try:
                doc = json.loads(p.read_text("utf-8", "replace"))
            except (ValueError, RecursionError):
                continue
            if isinstance(doc, dict) and "images" in doc and "annotations" in doc:
                return p
    return None


def detect_format(path: Path) -> str:
    """Name of the loader for `path`: imagefolder, coco, table, clip-retrieval, vectors,
    images+txt or zip. Raises DataFormatError when nothing matches."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(path, "no such file or folder", "a path to a folder, zip, JSON, table or vector file")
    if path.is_file():
        s = path.suffix.lower()
        if s == ".zip":
            return "zip"
        if s == ".json":
            return "coco"
        if s in TABLE_EXTENSIONS:
            return "table"
        if s in VECTOR_EXTENSIONS:
            return "vectors"
        raise DataFormatError(path, f"unknown file type {s or '(none)'}",
                              ".zip, .json (COCO), .csv/.tsv/.jsonl/.parquet or .npy/.npz")
    if (path / "img_emb").is_dir() and (path / "text_emb").is_dir():
        return "clip-retrieval"
    if _metadata_files(path):
        return "imagefolder"
    files = [p for p in path.iterdir() if p.is_file() and p.name not in _JUNK_NAMES]
    if [p for p in files if p.suffix.lower() in VECTOR_EXTENSIONS]:
        return "vectors"
    if _find_coco_json(path):
        return "coco"
    if [p for p in files if p.suffix.lower() in TABLE_EXTENSIONS]:
        return "table"
    if any(p.suffix.lower() in IMAGE_EXTENSIONS and p.with_suffix(".txt").is_file() for p in path.rglob("*")):
        return "images+txt"
    raise DataFormatError(path, "found no data mmviz can read",
                          "metadata.jsonl/metadata.csv with images, a COCO captions JSON, a CSV/TSV/JSONL table, "
                          "clip-retrieval output (img_emb/, text_emb/), .npy/.npz vectors, or images with .txt captions")


def _single(folder: Path, exts: set[str], what: str) -> Path:
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)
    if len(found) != 1:
        raise DataFormatError(folder, f"{len(found)} {what} files ({', '.join(p.name for p in found)})",
                              f"exactly one {what} file, or point at the file itself")
    return found[0]


def load(path: str | os.PathLike, *, extract_to: Path | None = None, images_dir: Path | None = None,
         captions_file: Path | None = None, model_name: str | None = None,
         limits: ImportLimits | None = None, progress: Progress | None = None, vectors_dir: Path | None = None,
         vector_dtype: str | None = None) -> tuple[PairedSet, ImportReport]:
    """Load whatever `path` is into a PairedSet and an ImportReport.

    A zip is extracted (safely) into `extract_to` (a temporary folder when not given; the
    caller then owns copying images out before it goes) and its contents detected in turn.
    Precomputed vectors stream into `vectors_dir` (image.npy, text.npy in `vector_dtype`) when
    given, else into float32 arrays in memory.
    """
    path = Path(path).expanduser()
    limits = limits or ImportLimits()
    kind = detect_format(path)
    if kind == "zip":
        import tempfile

        dest = Path(extract_to) if extract_to else Path(tempfile.mkdtemp(prefix="mmviz-zip-"))
        root = safe_extract_zip(path, dest, limits)
        extracted = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
        # what is inside (an .npz is itself a zip) inflates within what is left of the budget
        limits = dataclasses.replace(limits, confine_to=dest, zip_budget_left=limits.max_zip_bytes - extracted)
        try:
            pset, report = load(root, images_dir=images_dir, captions_file=captions_file,
                                model_name=model_name or f"precomputed:{path.stem}", limits=limits, progress=progress,
                                vectors_dir=vectors_dir, vector_dtype=vector_dtype)
        except DataFormatError as e:
            raise DataFormatError(path, f"inside the zip, {e}") from e
        report.source = str(path)
        report.format = f"zip/{report.format}"
        return pset, report
    if kind == "coco":
        json_path = path if path.is_file() else _find_coco_json(path)
        return load_coco(json_path, images_dir, limits, progress)
    if kind == "table":
        table = path if path.is_file() else _single(path, TABLE_EXTENSIONS, "table")
        return load_table(table, limits, progress, root=images_dir)
    if kind == "vectors":
        vec = path if path.is_file() else _single(path, VECTOR_EXTENSIONS, "vector")
        return load_vectors(vec, captions_file, model_name, progress, vectors_dir, vector_dtype, limits)
    if kind == "clip-retrieval":
        return load_clip_retrieval(path, model_name, limits, progress, vectors_dir, vector_dtype)
    if kind == "imagefolder":
        return load_imagefolder(path, limits, progress)
    return load_sidecar_folder(path, limits, progress)


def copy_tree_files(pset: PairedSet, dest: Path) -> None:
    """Copy (or write, for bytes) every image of `pset` under `dest/files/` and point the set
    at the copies, so the stored dataset no longer depends on the source."""
    files = dest / "files"
    used: set[str] = set()
    for i in range(len(pset)):
        ref = pset.images[i]
        if ref is None:
            continue
        meta = pset.image_meta[i]
        if isinstance(ref, bytes):
            ext = "." + (meta.format.lower() if meta else "bin")
            rel = f"{hashlib.sha256(ref).hexdigest()[:16]}{ext.replace('.jpeg', '.jpg')}"
            (files / rel).parent.mkdir(parents=True, exist_ok=True)
            (files / rel).write_bytes(ref)
        else:
            src = pset.image_path(i)
            parts = PurePosixPath(ref).parts
            if Path(ref).is_absolute() or ".." in parts:  # keep copies inside files/
                rel = f"{meta.sha256[:16] if meta else i}{Path(ref).suffix.lower()}"
            else:
                rel = PurePosixPath(*parts).as_posix()
            if rel in used:
                pset.images[i] = f"files/{rel}"
                continue
            (files / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, files / rel)
        used.add(rel)
        pset.images[i] = f"files/{rel}"
    pset.root = dest
