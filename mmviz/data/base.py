"""What every loader shares: the paired set, the import report, limits on untrusted input,
the error for a file that is wrong as a whole, and small readers of text and cells."""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import DataFormatError  # noqa: F401 (re-exported: loaders raise it)

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


@dataclass
class ImportLimits:
    """Bounds on untrusted input, each checked before the data it bounds is read. Defaults
    suit a laptop; raise them (environment variables MMVIZ_<NAME>) for big trusted sets."""

    max_pixels: int = 89_478_485  # Pillow's own decompression-bomb threshold (~89.5 MP); governs Pillow's too
    max_zip_members: int = 200_000
    max_zip_bytes: int = 8 * 2**30  # total uncompressed size of a zip, nested .npz members included
    max_zip_ratio: int = 200  # uncompressed / compressed size of one zip member: more is a bomb
    max_upload_mb: int = 2048  # what the app's uploader accepts
    max_image_bytes: int = 256 * 2**20  # one image file; bounds memory before Pillow sees it
    max_array_bytes: int | None = None  # one array of a .npy/.npz; None: what the disk (and memory) can hold
    max_caption_chars: int = 10_000  # a longer caption is skipped and listed
    confine_to: Path | None = None  # image paths must resolve inside this folder (set for zips)
    zip_budget_left: int | None = None  # of max_zip_bytes, after extracting the archive (set for zips)

    ENV = ("max_pixels", "max_zip_members", "max_zip_bytes", "max_zip_ratio", "max_upload_mb", "max_image_bytes",
           "max_array_bytes", "max_caption_chars")

    @classmethod
    def from_env(cls) -> "ImportLimits":
        lim = cls()
        for name in cls.ENV:
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
    "caption too long",
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
    only carry vectors. `image_vectors`/`text_vectors` hold precomputed, L2-normalised
    embeddings (one text vector per row, for the first caption) when the source had them:
    float32 arrays in memory, or read-only memory maps of the .npy files the loader streamed
    them into (`vectors_dir`), with `vector_digest` the sha256 of those files' rows.
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
    vectors_dir: Path | None = None
    vector_digest: str | None = None

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

def _clean_caption(value) -> str:
    """A caption cell as text: NUL characters dropped (a caption of only NULs is empty),
    surrounding whitespace stripped."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).replace("\x00", "").strip()


def usable_captions(captions: list[str], where: str, report: "ImportReport", max_chars: int) -> list[str]:
    """The non-empty captions of one row within max_chars; each longer one is skipped and
    listed (it would flood every page and terminal that shows it)."""
    out = []
    for c in captions:
        if len(c) > max_chars:
            report.skip(where, "caption too long", f"{len(c):,} characters > limit {max_chars:,}; "
                                                   "raise MMVIZ_MAX_CAPTION_CHARS to allow")
        elif c:
            out.append(c)
    return out


def _as_caption_list(value) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_clean_caption(v) for v in value]
    return [_clean_caption(value)]


def _as_str(value) -> str:
    # NumPy 'S' arrays (h5py, older tools) hold bytes: str() would give "b'...'".
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _pick(columns: Iterable[str], candidates: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in columns}
    for c in candidates:
        if c in lower:
            return lower[c]
    return None

