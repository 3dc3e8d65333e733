"""Paired image-caption sets and the loaders that bring them in.

`load(path)` looks at what it is given (folder, zip, COCO JSON, CSV/TSV/JSONL/Parquet table,
clip-retrieval output, .npy/.npz vectors), picks the matching loader and returns the set with
an `ImportReport`. A bad row is skipped and reported, never fatal; a file that is wrong as a
whole raises `DataFormatError` naming the file and what was expected.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import stat
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

import numpy as np

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
TABLE_EXTENSIONS = {".csv", ".tsv", ".jsonl", ".parquet"}
VECTOR_EXTENSIONS = {".npy", ".npz"}
IMAGE_COLUMNS = ("file_name", "image", "image_path", "filepath", "filename", "path", "img", "url")
CAPTION_COLUMNS = ("text", "caption", "captions", "sentence", "sentences", "title")
ID_COLUMNS = ("id", "image_id", "key", "uid")
THUMBNAIL_SIZE = 128
# Junk that archivers (macOS Finder, Windows Explorer) add to zips; never user data.
_JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}

Progress = Callable[[int, int], None]


class DataFormatError(ValueError):
    """A file is wrong as a whole (not a zip, not JSON, arrays of unequal length, ...)."""

    def __init__(self, path: str | os.PathLike, problem: str, expected: str | None = None):
        self.path = str(path)
        msg = f"{self.path}: {problem}"
        if expected:
            msg += f". Expected {expected}"
        super().__init__(msg)


@dataclass
class ImportLimits:
    """Bounds on untrusted input. Defaults suit a laptop; raise them for big trusted sets."""

    max_pixels: int = 89_478_485  # Pillow's own decompression-bomb threshold (~89.5 MP)
    max_zip_members: int = 200_000
    max_zip_bytes: int = 8 * 2**30  # total uncompressed size of a zip
    max_upload_mb: int = 2048  # what the app's uploader accepts
    max_image_bytes: int = 256 * 2**20  # one image file; bounds memory before Pillow sees it
    confine_to: Path | None = None  # image paths must resolve inside this folder (set for zips)

    @classmethod
    def from_env(cls) -> "ImportLimits":
        lim = cls()
        for name in ("max_pixels", "max_zip_members", "max_zip_bytes", "max_upload_mb", "max_image_bytes"):
            var = f"MMVIZ_{name.upper()}"
            value = os.environ.get(var)
            if value:
                try:
                    setattr(lim, name, int(value))
                except ValueError:
                    raise ValueError(f"{var}={value!r} is not a whole number") from None
        return lim


@dataclass
class SkippedRow:
    where: str  # "metadata.jsonl line 7", "features.npy row 12"
    reason: str  # one of REASONS
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


REASONS = (
    "missing file",
    "unreadable image",
    "image too large",
    "empty caption",
    "duplicate id",
    "wrong shape",
    "non-finite vector",
    "zero vector",
    "bad row",
)


@dataclass
class ImportReport:
    source: str
    format: str = ""
    kept: int = 0
    skipped: list[SkippedRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def skip(self, where: str, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        self.skipped.append(SkippedRow(where, reason, detail))

    def reasons(self) -> Counter:
        return Counter(s.reason for s in self.skipped)

    def summary(self) -> str:
        text = f"{self.format or 'import'} from {self.source}: kept {self.kept} pairs, skipped {len(self.skipped)} rows"
        if self.skipped:
            text += " (" + ", ".join(f"{n} {r}" for r, n in self.reasons().most_common()) + ")"
        return text

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "format": self.format,
            "kept": self.kept,
            "skipped": [s.__dict__ for s in self.skipped],
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ImportReport":
        return cls(d["source"], d.get("format", ""), d.get("kept", 0),
                   [SkippedRow(**s) for s in d.get("skipped", [])], list(d.get("warnings", [])))


@dataclass
class ImageMeta:
    sha256: str
    width: int
    height: int
    format: str
    thumbnail: bytes  # JPEG, longest side THUMBNAIL_SIZE


@dataclass
class PairedSet:
    """Images paired with one or more captions each, keyed by stable string ids.

    `images[i]` is a path (absolute, or relative to `root`), raw bytes, or None for sets that
    only carry vectors. `image_vectors`/`text_vectors` hold precomputed, L2-normalised float32
    embeddings (one text vector per row, for the first caption) when the source had them.
    """

    ids: list[str]
    images: list[str | bytes | None]
    captions: list[list[str]]
    extras: dict[str, list] = field(default_factory=dict)
    image_meta: list[ImageMeta | None] = field(default_factory=list)
    image_vectors: np.ndarray | None = None
    text_vectors: np.ndarray | None = None
    vector_model: str | None = None
    root: Path | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not self.image_meta:
            self.image_meta = [None] * n
        lengths = {len(self.images), len(self.captions), len(self.image_meta), n}
        lengths |= {len(v) for v in self.extras.values()}
        for arr in (self.image_vectors, self.text_vectors):
            if arr is not None:
                lengths.add(len(arr))
        if len(lengths) != 1:
            raise ValueError(f"PairedSet columns have different lengths: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_images(self) -> bool:
        return any(im is not None for im in self.images)

    @property
    def has_vectors(self) -> bool:
        return self.image_vectors is not None

    def image_path(self, i: int) -> Path | None:
        ref = self.images[i]
        if not isinstance(ref, str):
            return None
        p = Path(ref)
        return p if p.is_absolute() or self.root is None else self.root / p


# ----------------------------------------------------------------------------------------
# small readers


def read_text(path: Path, report: ImportReport | None = None) -> str:
    """Read a text file as UTF-8 (BOM allowed). Invalid UTF-8 falls back to Latin-1, which
    maps every byte to a character (lossless), with a warning naming the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if report is not None:
            report.warnings.append(
                f"{path.name}: not valid UTF-8 (first bad byte at offset {e.start}); read as Latin-1. "
                "If captions look wrong, re-save the file as UTF-8.")
        return data.decode("latin-1")


def _split_lines(text: str) -> list[str]:
    """Lines split at LF, CRLF or CR only: `str.splitlines` also splits at U+2028, U+0085 (a
    cp1252 ellipsis read as Latin-1), form feeds and more, which can sit inside a caption."""
    lines = re.split(r"\r\n|\r|\n", text)
    if lines and lines[-1] == "":
        lines.pop()  # a final newline ends the last line, it does not start another
    return lines


def check_image(source: Path | bytes, limits: ImportLimits) -> tuple[ImageMeta | None, str, str]:
    """Open, bound and fully decode an image; return (meta, "", "") or (None, reason, detail).

    The pixel count is read from the header and checked before any decoding, so a
    decompression bomb never allocates its pixels.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if limits.confine_to is not None and not isinstance(source, bytes):
        # An uploaded table must not reach files elsewhere on the server (/home/..., ../..).
        try:
            Path(os.path.realpath(source)).relative_to(os.path.realpath(limits.confine_to))
        except ValueError:
            return None, "missing file", f"{source} lies outside the uploaded archive"
    try:
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        if size > limits.max_image_bytes:
            return None, "image too large", (f"{_label(source)}: {size:,} bytes > limit {limits.max_image_bytes:,}; "
                                             "raise MMVIZ_MAX_IMAGE_BYTES to allow")
        data = source if isinstance(source, bytes) else source.read_bytes()
    except FileNotFoundError:
        return None, "missing file", f"{source} does not exist"
    except ValueError:  # a NUL byte in the path: no such file can exist
        return None, "missing file", f"{str(source)!r} is not a valid file path"
    except OSError as e:
        return None, "unreadable image", f"{source}: {e.strerror or e}"
    try:
        # Our own bound replaces Pillow's global one (which only warns below 2x).
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > limits.max_pixels:
                return None, "image too large", (
                    f"{_label(source)}: {w}x{h} = {w * h:,} pixels > limit {limits.max_pixels:,}; raise MMVIZ_MAX_PIXELS to allow")
            fmt = im.format or "?"
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientation: a quarter turn
                w, h = h, w  # report the size people see, as the embedding engine will
            im.draft("RGB", (THUMBNAIL_SIZE * 2, THUMBNAIL_SIZE * 2))  # JPEG: decode at reduced scale
            im = ImageOps.exif_transpose(im).convert("RGB")  # full decode: truncated/corrupt files fail here
            im.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
    except Image.DecompressionBombError as e:
        return None, "image too large", str(e)
    except UnidentifiedImageError:
        return None, "unreadable image", f"{_label(source)}: not an image format Pillow recognises"
    except (OSError, SyntaxError, ValueError) as e:
        return None, "unreadable image", f"{_label(source)}: {e or type(e).__name__}"
    return ImageMeta(hashlib.sha256(data).hexdigest(), w, h, fmt, buf.getvalue()), "", ""


def _label(source: Path | bytes) -> str:
    return source.name if isinstance(source, Path) else f"{len(source):,} bytes of image data"


def _clean_caption(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def _as_caption_list(value) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_clean_caption(v) for v in value]
    return [_clean_caption(value)]


def _as_str(value) -> str:
    # NumPy 'S' arrays (h5py, older tools) hold bytes: str() would give "b'...'".
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


# ----------------------------------------------------------------------------------------
# building a set row by row


class _Builder:
    """Collects rows keyed by id, merging extra captions for an id that reappears with the
    same image, skipping an id that reappears with a different one."""

    def __init__(self, report: ImportReport, root: Path | None):
        self.report = report
        self.root = root
        self.order: list[str] = []
        self.rows: dict[str, dict] = {}
        self.vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, where: str, id_: str, image, captions: list[str], extras: dict | None = None,
            merge_same_image: bool = True) -> None:
        captions = [c for c in captions if c]
        if id_ in self.rows:
            row = self.rows[id_]
            if merge_same_image and row["image"] == image:
                if not captions:
                    self.report.skip(where, "empty caption")
                row["captions"].extend(c for c in captions if c not in row["captions"])
                return
            self.report.skip(where, "duplicate id", f"id {id_!r} already used by an earlier row")
            return
        self.order.append(id_)
        self.rows[id_] = {"where": where, "image": image, "captions": captions, "extras": extras or {}}

    def build(self, limits: ImportLimits | None, progress: Progress | None,
              check_images: bool = True) -> PairedSet:
        ids, images, captions, metas, vec_i, vec_t = [], [], [], [], [], []
        extra_keys: list[str] = []
        for id_ in self.order:
            for k in self.rows[id_]["extras"]:
                if k not in extra_keys:
                    extra_keys.append(k)
        extras: dict[str, list] = {k: [] for k in extra_keys}
        total = len(self.order)
        for n, id_ in enumerate(self.order):
            row = self.rows[id_]
            if progress and (n % 64 == 0):
                progress(n, total)
            if not row["captions"]:
                self.report.skip(row["where"], "empty caption")
                continue
            image, meta = row["image"], None
            if check_images and image is not None:
                if isinstance(image, str) and re.match(r"^[a-z][a-z0-9+.-]*://", image, re.I):
                    self.report.skip(row["where"], "missing file",
                                     f"{image} is a URL; mmviz does not download, point at local files")
                    continue
                source = image if isinstance(image, bytes) else (
                    Path(image) if Path(image).is_absolute() or self.root is None else self.root / image)
                meta, reason, detail = check_image(source, limits or ImportLimits())
                if meta is None:
                    self.report.skip(row["where"], reason, detail)
                    continue
            ids.append(id_)
            images.append(image)
            captions.append(row["captions"])
            metas.append(meta)
            for k in extra_keys:
                extras[k].append(row["extras"].get(k))
            if id_ in self.vectors:
                vec_i.append(self.vectors[id_][0])
                vec_t.append(self.vectors[id_][1])
        if progress:
            progress(total, total)
        self.report.kept = len(ids)
        pset = PairedSet(ids, images, captions, extras, metas, root=self.root)
        if vec_i and len(vec_i) == len(ids):
            pset.image_vectors = np.stack(vec_i).astype(np.float32)
            pset.text_vectors = np.stack(vec_t).astype(np.float32)
        return pset


# ----------------------------------------------------------------------------------------
# tables: CSV / TSV / JSONL / Parquet


def _read_records(path: Path, report: ImportReport) -> list[tuple[str, dict]]:
    """Rows of a table file as (where, record) pairs; bad lines are reported, not fatal."""
    suffix = path.suffix.lower()
    out: list[tuple[str, dict]] = []
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for non-parquet bytes
            raise DataFormatError(path, f"not a readable Parquet file ({e})", "a Parquet table") from e
        for i, rec in enumerate(table.to_pylist()):
            out.append((f"{path.name} row {i + 1}", rec))
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


def _pick(columns: Iterable[str], candidates: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in columns}
    for c in candidates:
        if c in lower:
            return lower[c]
    return None


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
                      image_candidates=IMAGE_COLUMNS) -> _Builder:
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
    b = _Builder(report, root)
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
    b = _table_to_builder(records, path, report, root or path.parent)
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
    b = _table_to_builder(records, files[0][0], report, folder, image_candidates=("file_name",))
    return b.build(limits, progress), report


def load_sidecar_folder(folder: Path, limits: ImportLimits | None = None,
                        progress: Progress | None = None) -> tuple[PairedSet, ImportReport]:
    """Images with a same-named .txt caption file beside each (one caption per line)."""
    folder = Path(folder)
    report = ImportReport(str(folder), "images+txt")
    b = _Builder(report, folder)
    for img in sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS),
                      key=lambda p: _natural_key(str(p))):
        rel = img.relative_to(folder).as_posix()
        txt = img.with_suffix(".txt")
        if not txt.is_file():
            report.skip(rel, "empty caption", f"no {txt.name} beside the image")
            continue
        caps = [c.strip() for c in _split_lines(read_text(txt, report))]
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
    for k, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            report.skip(f"{json_path.name} annotation {k}", "bad row", "no image_id")
            continue
        caps.setdefault(str(ann["image_id"]), []).append(_clean_caption(ann.get("caption")))
    file_names = [str(im.get("file_name", "")) for im in doc["images"] if isinstance(im, dict)]
    root = Path(images_dir) if images_dir else _coco_image_root(json_path, file_names)
    if root is None:
        root = json_path.parent
        report.warnings.append(f"no folder next to {json_path.name} holds the listed images; "
                               "pass the image folder explicitly (mmviz import ... --images DIR)")
    b = _Builder(report, root)
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


# ----------------------------------------------------------------------------------------
# precomputed vectors


IMAGE_KEYS = ("image", "images", "img", "image_embeddings", "image_embeds", "img_emb", "image_features", "x")
TEXT_KEYS = ("text", "texts", "txt", "text_embeddings", "text_embeds", "text_emb", "text_features", "y")


def _check_numeric(path: Path, what: str, arr: np.ndarray) -> None:
    # Strings or records would only fail later, row by row, with an unhelpful error.
    if arr.dtype.kind not in "biuf":
        raise DataFormatError(path, f"'{what}' holds {arr.dtype} values, not numeric", "float or integer arrays")


def _load_array_file(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(images, texts, other arrays) from .npy (2, N, D) or .npz with image and text arrays."""
    try:
        loaded = np.load(path, allow_pickle=False)  # never unpickle untrusted files
        if not isinstance(loaded, np.ndarray):
            with loaded:  # .npz members are read lazily: an object array fails only here
                loaded = {k: loaded[k] for k in loaded.files}
    except ValueError as e:
        raise DataFormatError(path, f"cannot read without unpickling ({e})",
                              "plain numeric arrays saved with numpy.save/savez") from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataFormatError(path, f"not a NumPy file ({e})", ".npy or .npz written by NumPy") from e
    shape_help = "an array of shape (2, N, D) (0 = images, 1 = texts) or an .npz with image and text arrays of shape (N, D)"
    if isinstance(loaded, np.ndarray):
        if loaded.ndim != 3 or loaded.shape[0] != 2:
            raise DataFormatError(path, f"array has shape {loaded.shape}", shape_help)
        _check_numeric(path, "array", loaded)
        return loaded[0], loaded[1], {}
    arrays = loaded
    img_key = _pick(arrays, IMAGE_KEYS)
    txt_key = _pick(arrays, TEXT_KEYS)
    if img_key is None or txt_key is None:
        three = [k for k, v in arrays.items() if v.ndim == 3 and v.shape[0] == 2]
        if len(three) == 1:
            a = arrays.pop(three[0])
            return a[0], a[1], arrays
        raise DataFormatError(path, f"no image and text arrays among keys {sorted(arrays)}",
                              f"keys such as 'image' and 'text', or {shape_help}")
    img, txt = arrays.pop(img_key), arrays.pop(txt_key)
    if img.ndim != 2 or txt.ndim != 2:
        raise DataFormatError(path, f"'{img_key}' has shape {img.shape} and '{txt_key}' {txt.shape}",
                              "two 2-D arrays of shape (N, D)")
    _check_numeric(path, img_key, img)
    _check_numeric(path, txt_key, txt)
    if len(img) != len(txt):
        raise DataFormatError(path, f"{len(img)} image vectors but {len(txt)} text vectors",
                              "image and text arrays of equal length, row i of each forming pair i")
    if img.shape[1] != txt.shape[1]:
        raise DataFormatError(path, f"image vectors are {img.shape[1]}-d but text vectors {txt.shape[1]}-d",
                              "one shared embedding dimension")
    return img, txt, arrays


def _read_captions_file(path: Path, report: ImportReport) -> tuple[list[list[str]], list[str] | None]:
    """Captions for vector rows: .txt (one per line) or a table with a caption column."""
    if path.suffix.lower() == ".txt":
        return [[line.strip()] for line in _split_lines(read_text(path, report))], None
    records = _read_records(path, report)
    cols = list(records[0][1]) if records else []
    cap = _pick(cols, CAPTION_COLUMNS)
    if cap is None:
        raise DataFormatError(path, f"no caption column among {cols}", "a column named text or caption")
    idc = _pick(cols, ID_COLUMNS)
    caps = [_as_caption_list(r.get(cap)) for _, r in records]
    ids = [str(r.get(idc)) for _, r in records] if idc else None
    return caps, ids


def _sidecar_captions(path: Path) -> Path | None:
    for ext in (".txt", ".csv", ".tsv", ".jsonl", ".parquet"):
        for cand in (path.with_suffix(ext), path.with_name(path.stem + "_captions" + ext)):
            if cand.is_file():
                return cand
    return None


def _vector_rows(b: _Builder, report: ImportReport, where_prefix: str, ids: list[str],
                 img: np.ndarray, txt: np.ndarray, captions: list[list[str]], images: list | None = None,
                 extras: list[dict] | None = None, dim: int | None = None) -> None:
    """Validate vector rows (shape, finite, non-zero) and add the good ones, normalised."""
    for i in range(len(ids)):
        where = f"{where_prefix} row {i}"
        a, t = img[i], txt[i]
        if dim is not None and (a.shape != (dim,) or t.shape != (dim,)):
            report.skip(where, "wrong shape", f"expected {dim}-d vectors, got {a.shape} and {t.shape}")
            continue
        a = np.asarray(a, dtype=np.float64)
        t = np.asarray(t, dtype=np.float64)
        if not (np.isfinite(a).all() and np.isfinite(t).all()):
            report.skip(where, "non-finite vector", "NaN or inf in the image or text vector")
            continue
        na, nt = np.linalg.norm(a), np.linalg.norm(t)
        if na == 0 or nt == 0:
            report.skip(where, "zero vector", "a zero vector has no direction")
            continue
        before = len(b.order)
        b.add(where, ids[i], images[i] if images else None, captions[i], extras[i] if extras else None,
              merge_same_image=False)
        if len(b.order) > before:
            b.vectors[ids[i]] = ((a / na).astype(np.float32), (t / nt).astype(np.float32))


def load_vectors(path: Path, captions_file: Path | None = None, model_name: str | None = None,
                 progress: Progress | None = None) -> tuple[PairedSet, ImportReport]:
    """Precomputed embeddings: `.npy` of shape (2, N, D) or `.npz` with image and text arrays
    (optional `ids`, `captions` string arrays), plus an optional captions file (.txt one per
    line, or a table) given or found beside it (same stem). Vectors are L2-normalised."""
    path = Path(path)
    report = ImportReport(str(path), "vectors")
    img, txt, other = _load_array_file(path)
    n = len(img)
    ids = [str(i) for i in range(n)]
    captions: list[list[str]] = [[f"pair {i}"] for i in range(n)]
    if "ids" in other and other["ids"].shape == (n,):
        ids = [_as_str(x) for x in other["ids"]]
    if "captions" in other and other["captions"].shape == (n,):
        captions = [[_as_str(c).strip()] for c in other["captions"]]
    captions_file = Path(captions_file) if captions_file else _sidecar_captions(path)
    if captions_file is not None:
        caps, cap_ids = _read_captions_file(captions_file, report)
        if len(caps) != n:
            raise DataFormatError(captions_file, f"{len(caps)} captions for {n} vector pairs in {path.name}",
                                  "one caption row per vector pair, in the same order")
        captions = caps
        ids = cap_ids or ids
    elif "captions" not in other:
        report.warnings.append(f"no captions for {path.name}; pairs are labelled 'pair i'. "
                               f"Put captions in {path.stem}.txt (one per line) beside it to see them.")
    b = _Builder(report, None)
    _vector_rows(b, report, path.name, ids, img, txt, captions, dim=img.shape[1] if img.ndim == 2 else None)
    pset = b.build(None, progress, check_images=False)
    pset.vector_model = model_name or f"precomputed:{path.stem}"
    return pset, report


def _load_shard(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataFormatError(path, f"unreadable shard ({e})", "a .npy array of shape (N, D)") from e
    _check_numeric(path, path.name, arr)
    return arr


def load_clip_retrieval(folder: Path, model_name: str | None = None, limits: ImportLimits | None = None,
                        progress: Progress | None = None) -> tuple[PairedSet, ImportReport]:
    """clip-retrieval output: `img_emb/img_emb_K.npy`, `text_emb/text_emb_K.npy` and
    `metadata/metadata_K.parquet` shards, paired row by row across the three."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    report = ImportReport(str(folder), "clip-retrieval")
    img_files = sorted((folder / "img_emb").glob("*.npy"), key=lambda p: _natural_key(p.name))
    txt_files = sorted((folder / "text_emb").glob("*.npy"), key=lambda p: _natural_key(p.name))
    meta_files = sorted((folder / "metadata").glob("*.parquet"), key=lambda p: _natural_key(p.name))
    expected = "clip-retrieval output with img_emb/, text_emb/ and metadata/ holding one shard each per index"
    if not img_files or len(img_files) != len(txt_files) or (meta_files and len(meta_files) != len(img_files)):
        raise DataFormatError(folder, f"{len(img_files)} image, {len(txt_files)} text and {len(meta_files)} metadata shards", expected)
    b = _Builder(report, folder)
    dim = None
    offset = 0
    for k, (fi, ft) in enumerate(zip(img_files, txt_files)):
        img, txt = _load_shard(fi), _load_shard(ft)
        if img.ndim != 2 or txt.ndim != 2 or len(img) != len(txt):
            raise DataFormatError(fi, f"shape {img.shape} does not pair with {ft.name} {txt.shape}",
                                  "image and text shards of shape (N, D) with the same N")
        try:
            rows = pq.read_table(meta_files[k]).to_pylist() if meta_files else [{} for _ in range(len(img))]
        except Exception as e:  # pyarrow raises several types for non-parquet bytes
            raise DataFormatError(meta_files[k], f"not a readable Parquet file ({e})", "a Parquet table") from e
        if len(rows) != len(img):
            raise DataFormatError(meta_files[k], f"{len(rows)} metadata rows for {len(img)} vectors in {fi.name}",
                                  "one metadata row per vector")
        dim = dim or img.shape[1]
        cols = list(rows[0]) if rows else []
        cap_col, img_col, id_col = _pick(cols, CAPTION_COLUMNS), _pick(cols, IMAGE_COLUMNS), _pick(cols, ID_COLUMNS)
        ids = [str(r[id_col]) if id_col and r.get(id_col) is not None else str(offset + i) for i, r in enumerate(rows)]
        caps = [_as_caption_list(r.get(cap_col)) if cap_col else [f"pair {offset + i}"] for i, r in enumerate(rows)]
        images = [_image_ref(r.get(img_col)) if img_col else None for r in rows]
        extras = [{c: r.get(c) for c in cols if c not in (cap_col, img_col, id_col)} for r in rows]
        _vector_rows(b, report, f"{fi.parent.name}/{fi.name}", ids, img, txt, caps, images, extras, dim=dim)
        offset += len(img)
    # Images listed in the metadata are kept as references but not required: the vectors are the data.
    pset = b.build(limits, progress, check_images=False)
    for i in range(len(pset)):
        p = pset.image_path(i)
        if p is None or not p.is_file():
            pset.images[i] = None
        else:
            meta, _, _ = check_image(p, limits or ImportLimits())
            pset.image_meta[i] = meta
            if meta is None:
                pset.images[i] = None
    pset.vector_model = model_name or f"precomputed:{folder.name}"
    return pset, report


# ----------------------------------------------------------------------------------------
# zip archives


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def safe_extract_zip(path: Path, dest: Path, limits: ImportLimits | None = None) -> Path:
    """Extract a zip into `dest`, refusing members that could escape it (absolute paths,
    `..`, drive letters, symlinks) and archives over the member-count or size bounds.
    Returns the folder holding the data (descending into a single top-level folder)."""
    limits = limits or ImportLimits()
    path, dest = Path(path), Path(dest)
    if not zipfile.is_zipfile(path):
        raise DataFormatError(path, "not a zip archive", "a .zip file")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > limits.max_zip_members:
                raise DataFormatError(path, f"{len(infos):,} members > limit {limits.max_zip_members:,}",
                                      "a smaller archive (or raise MMVIZ_MAX_ZIP_MEMBERS)")
            total = sum(i.file_size for i in infos)
            if total > limits.max_zip_bytes:
                raise DataFormatError(path, f"uncompressed size {total:,} bytes > limit {limits.max_zip_bytes:,}",
                                      "a smaller archive (or raise MMVIZ_MAX_ZIP_BYTES)")
            members = []
            for info in infos:
                name = info.filename.replace("\\", "/")
                parts = PurePosixPath(name).parts
                if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
                    raise DataFormatError(path, f"member {info.filename!r} would be written outside the extraction folder",
                                          "relative member paths without '..' (refusing a zip-slip archive)")
                if _is_symlink(info):
                    raise DataFormatError(path, f"member {info.filename!r} is a symbolic link", "plain files and folders")
                if info.flag_bits & 0x1:
                    raise DataFormatError(path, f"member {info.filename!r} is encrypted", "an archive without a password")
                if not parts or info.is_dir() or parts[0] == "__MACOSX" or parts[-1] in _JUNK_NAMES or parts[-1].startswith("._"):
                    continue
                members.append((info, parts))
            dest.mkdir(parents=True, exist_ok=True)
            written = 0
            for info, parts in members:
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    # Count real bytes: a header's file_size can lie.
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > limits.max_zip_bytes:
                            raise DataFormatError(path, f"uncompressed data exceeds {limits.max_zip_bytes:,} bytes",
                                                  "a smaller archive (or raise MMVIZ_MAX_ZIP_BYTES)")
                        out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        # A member with a bad CRC, truncated data or a header that lies about its size (zipfile
        # stops at the declared size, then fails the CRC), or an unsupported compression method.
        raise DataFormatError(path, f"corrupt or unsupported zip archive ({e})", "a .zip file that unzips cleanly") from e
    root = dest
    while True:
        entries = [p for p in root.iterdir()]
        if len(entries) == 1 and entries[0].is_dir():
            root = entries[0]
        else:
            return root


# ----------------------------------------------------------------------------------------
# detection and the one entry point


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
         limits: ImportLimits | None = None, progress: Progress | None = None) -> tuple[PairedSet, ImportReport]:
    """Load whatever `path` is into a PairedSet and an ImportReport.

    A zip is extracted (safely) into `extract_to` (a temporary folder when not given; the
    caller then owns copying images out before it goes) and its contents detected in turn.
    """
    path = Path(path).expanduser()
    limits = limits or ImportLimits()
    kind = detect_format(path)
    if kind == "zip":
        import tempfile

        dest = Path(extract_to) if extract_to else Path(tempfile.mkdtemp(prefix="mmviz-zip-"))
        root = safe_extract_zip(path, dest, limits)
        limits = dataclasses.replace(limits, confine_to=dest)
        try:
            pset, report = load(root, images_dir=images_dir, captions_file=captions_file,
                                model_name=model_name or f"precomputed:{path.stem}", limits=limits, progress=progress)
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
        return load_vectors(vec, captions_file, model_name, progress)
    if kind == "clip-retrieval":
        return load_clip_retrieval(path, model_name, limits, progress)
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
