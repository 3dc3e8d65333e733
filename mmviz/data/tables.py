"""Loaders of image-caption tables: CSV/TSV/JSONL/Parquet files, Hugging Face ImageFolder,
images with .txt captions beside them, and COCO caption annotations."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path

from .base import (CAPTION_COLUMNS, ID_COLUMNS, IMAGE_COLUMNS, IMAGE_EXTENSIONS, DataFormatError, ImportLimits,
                   ImportReport, PairedSet, Progress, _as_caption_list, _clean_caption, _natural_key, _pick,
                   _split_lines, read_text)
from .builder import _Builder

def _read_records(path: Path, report: ImportReport) -> list[tuple[str, dict]]:
    """Rows of a table file as (where, record) pairs; bad lines are reported, not fatal."""
    suffix = path.suffix.lower()
    out: list[tuple[str, dict]] = []
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
            # Row group by row group: Arrow holds one group at a time, not the whole file.
            for g in range(pf.num_row_groups):
                for rec in pf.read_row_group(g).to_pylist():
                    out.append((f"{path.name} row {len(out) + 1}", rec))
        except Exception as e:  # pyarrow raises several types for non-parquet bytes
            raise DataFormatError(path, f"not a readable Parquet file ({e})", "a Parquet table") from e
        return out
    text = read_text(path, report)
    if suffix == ".jsonl":
        lines = _split_lines(text)
        bad = 0
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
                bad += 1
                report.skip(f"{path.name} line {i}", "bad row", f"not a JSON object: {e}")
                continue
            out.append((f"{path.name} line {i}", rec))
        if bad and not out:
            raise DataFormatError(path, "no line is a JSON object", "JSON Lines: one JSON object per line")
        return out
    delimiter = "\t" if suffix == ".tsv" else ","
    if suffix == ".csv":
        try:
            delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",\t;|").delimiter
        except csv.Error:
            pass
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        raise DataFormatError(path, "empty table, no header row", "a header row such as 'file_name,text'")
    try:
        for rec in reader:
            # The physical line (a quoted caption may span lines; blank lines are not rows).
            where = f"{path.name} line {reader.line_num}"
            if None in rec:  # more cells than header fields
                report.skip(where, "bad row", "more cells than header columns")
                continue
            out.append((where, rec))
    except csv.Error as e:  # e.g. an unclosed quote swallowing the rest of the file
        raise DataFormatError(path, f"malformed {suffix[1:].upper()} near line {reader.line_num} ({e})",
                              "a well-formed table (check for an unclosed double quote)") from e
    return out


def _image_ref(value):
    """Image cell -> path string or bytes (Hugging Face exports store {'bytes', 'path'})."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if value is None:
        return None
    return str(value).strip().replace("\\", "/") or None


def _table_to_builder(records: list[tuple[str, dict]], path: Path, report: ImportReport, root: Path,
                      image_candidates=IMAGE_COLUMNS, limits: ImportLimits | None = None) -> _Builder:
    columns: list[str] = []
    for _, rec in records[:1000]:
        columns.extend(k for k in rec if k not in columns)
    image_col = _pick(columns, image_candidates)
    caption_col = _pick(columns, CAPTION_COLUMNS)
    if image_col is None or caption_col is None:
        missing = " and ".join(x for x, c in (("an image column", image_col), ("a caption column", caption_col)) if c is None)
        raise DataFormatError(path, f"missing {missing} (columns: {', '.join(map(str, columns)) or 'none'})",
                              f"an image column ({', '.join(image_candidates[:4])}) and a caption column "
                              f"({', '.join(CAPTION_COLUMNS[:3])})")
    id_col = _pick(columns, tuple(c for c in ID_COLUMNS if c != image_col.lower()))
    extra_cols = [c for c in columns if c not in (image_col, caption_col, id_col)]
    b = _Builder(report, root, limits)
    for where, rec in records:
        image = _image_ref(rec.get(image_col))
        if image is None:
            report.skip(where, "missing file", f"empty {image_col!r} cell")
            continue
        id_val = rec.get(id_col) if id_col else None
        if id_val is None or str(id_val).strip() == "":
            id_ = image if isinstance(image, str) else hashlib.sha256(image).hexdigest()[:16]
        else:
            id_ = str(id_val).strip()
        caps = _as_caption_list(rec.get(caption_col))
        if not any(caps):
            report.skip(where, "empty caption")
            continue
        extras = {k: rec.get(k) for k in extra_cols}
        b.add(where, id_, image, caps, extras)
    return b


def load_table(path: Path, limits: ImportLimits | None = None, progress: Progress | None = None,
               root: Path | None = None, fmt: str = "table") -> tuple[PairedSet, ImportReport]:
    """A CSV/TSV/JSONL/Parquet table of (image path, caption[, id, extra columns]).

    Image paths are relative to the table's folder (or `root`). Several rows for one image,
    or a list in the caption cell, give several captions.
    """
    path = Path(path)
    report = ImportReport(str(path), fmt)
    records = _read_records(path, report)
    b = _table_to_builder(records, path, report, root or path.parent, limits=limits)
    return b.build(limits, progress), report


# ----------------------------------------------------------------------------------------
# Hugging Face ImageFolder


def _metadata_files(folder: Path) -> list[tuple[Path, str | None]]:
    """metadata.jsonl/.csv in the folder, or one per split subfolder (train/, validation/...)."""
    for name in ("metadata.jsonl", "metadata.csv"):
        if (folder / name).is_file():
            return [(folder / name, None)]
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        for name in ("metadata.jsonl", "metadata.csv"):
            if (sub / name).is_file():
                found.append((sub / name, sub.name))
                break
    return found


def load_imagefolder(folder: Path, limits: ImportLimits | None = None,
                     progress: Progress | None = None) -> tuple[PairedSet, ImportReport]:
    """Hugging Face ImageFolder: images plus `metadata.jsonl`/`metadata.csv` with `file_name`
    and `text` (or `caption`). Split subfolders, each with its own metadata file, set `split`."""
    folder = Path(folder)
    report = ImportReport(str(folder), "imagefolder")
    files = _metadata_files(folder)
    if not files:
        raise DataFormatError(folder, "no metadata.jsonl or metadata.csv found",
                              "an ImageFolder with metadata.jsonl/metadata.csv (columns file_name, text)")
    records: list[tuple[str, dict]] = []
    for meta, split in files:
        prefix = f"{split}/" if split else ""
        for where, rec in _read_records(meta, report):
            if split:
                where = f"{split}/{where}"
                rec = dict(rec)
                rec.setdefault("split", split)
            fname = rec.get("file_name")
            if isinstance(fname, str) and fname.strip():
                rec["file_name"] = prefix + fname.strip().replace("\\", "/")
            records.append((where, rec))
    b = _table_to_builder(records, files[0][0], report, folder, image_candidates=("file_name",), limits=limits)
    return b.build(limits, progress), report


def load_sidecar_folder(folder: Path, limits: ImportLimits | None = None,
                        progress: Progress | None = None) -> tuple[PairedSet, ImportReport]:
    """Images with a same-named .txt caption file beside each (one caption per line)."""
    folder = Path(folder)
    report = ImportReport(str(folder), "images+txt")
    b = _Builder(report, folder, limits)
    for img in sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS),
                      key=lambda p: _natural_key(str(p))):
        rel = img.relative_to(folder).as_posix()
        txt = img.with_suffix(".txt")
        if not txt.is_file():
            report.skip(rel, "empty caption", f"no {txt.name} beside the image")
            continue
        caps = [_clean_caption(c) for c in _split_lines(read_text(txt, report))]
        b.add(rel, rel, rel, caps)
    return b.build(limits, progress), report


# ----------------------------------------------------------------------------------------
# COCO captions


def _coco_image_root(json_path: Path, file_names: list[str]) -> Path | None:
    base = json_path.parent
    split_words = [w for w in re.split(r"[_\-.]", json_path.stem) if w and w not in ("captions", "json")]
    candidates = [base, base / "images", base.parent, base.parent / "images"]
    for d in (base, base.parent, base / "images", base.parent / "images"):
        candidates += [d / w for w in split_words]
    sample = file_names[:50]
    best, best_hits = None, 0
    for c in candidates:
        if not c.is_dir():
            continue
        hits = sum((c / f).is_file() for f in sample)
        if hits > best_hits:
            best, best_hits = c, hits
    return best


def load_coco(json_path: Path, images_dir: Path | None = None, limits: ImportLimits | None = None,
              progress: Progress | None = None) -> tuple[PairedSet, ImportReport]:
    """COCO caption annotations (`images` + `annotations` with `image_id`, `caption`).

    The image folder is `images_dir`, else the folder beside the JSON that holds most of the
    listed files (the JSON's own folder, `images/`, or one named like the split, `val2017/`).
    """
    json_path = Path(json_path)
    report = ImportReport(str(json_path), "coco")
    try:
        doc = json.loads(read_text(json_path, report))
    except (ValueError, RecursionError) as e:
        raise DataFormatError(json_path, f"not valid JSON ({e})", "COCO caption annotations JSON") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(doc.get("annotations"), list):
        raise DataFormatError(json_path, "no 'images' and 'annotations' lists",
                              "COCO caption annotations: {'images': [{id, file_name}], 'annotations': [{image_id, caption}]}")
    caps: dict[str, list[str]] = {}
    first_ann: dict[str, int] = {}
    for k, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            report.skip(f"{json_path.name} annotation {k}", "bad row", "no image_id")
            continue
        caps.setdefault(str(ann["image_id"]), []).append(_clean_caption(ann.get("caption")))
        first_ann.setdefault(str(ann["image_id"]), k)
    known = {str(im["id"]) for im in doc["images"] if isinstance(im, dict) and "id" in im}
    for id_ in caps.keys() - known:  # captions of no listed image: say so rather than drop them
        n = len(caps[id_])
        report.skip(f"{json_path.name} annotation {first_ann[id_]}", "bad row",
                    f"image_id {id_} is not among the file's images ({n} caption{'s' * (n > 1)})")
    file_names = [str(im.get("file_name", "")) for im in doc["images"] if isinstance(im, dict)]
    root = Path(images_dir) if images_dir else _coco_image_root(json_path, file_names)
    if root is None:
        root = json_path.parent
        report.warnings.append(f"no folder next to {json_path.name} holds the listed images; "
                               "pass the image folder explicitly (mmviz import ... --images DIR)")
    b = _Builder(report, root, limits)
    skip_keys = {"id", "file_name", "coco_url", "flickr_url", "license", "date_captured"}
    for k, im in enumerate(doc["images"]):
        where = f"{json_path.name} image {k}"
        if not isinstance(im, dict) or "id" not in im or not im.get("file_name"):
            report.skip(where, "bad row", "image entry needs 'id' and 'file_name'")
            continue
        id_ = str(im["id"])
        c = caps.get(id_, [])
        if not any(c):
            report.skip(where, "empty caption", f"no caption annotations for image id {id_}")
            continue
        extras = {key: v for key, v in im.items() if key not in skip_keys and not isinstance(v, (dict, list))}
        b.add(where, id_, str(im["file_name"]), c, extras, merge_same_image=False)
    return b.build(limits, progress), report


