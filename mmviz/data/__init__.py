"""Paired image-caption sets and the loaders that bring them in.

`load(path)` looks at what it is given (folder, zip, COCO JSON, CSV/TSV/JSONL/Parquet table,
clip-retrieval output, .npy/.npz vectors), picks the matching loader and returns the set with
an `ImportReport`. A bad row is skipped and reported, never fatal; a file that is wrong as a
whole raises `DataFormatError` naming the file and what was expected.

Modules: `base` (the set, the report, limits), `images` (checking one image), `builder`
(row-by-row sets), `tables` (tables, ImageFolder, .txt sidecars, COCO), `vectors`
(precomputed vectors, streamed), `archives` (zips), `loading` (detection and `load`).
"""
from .archives import safe_extract_zip
from .base import (CAPTION_COLUMNS, ID_COLUMNS, IMAGE_COLUMNS, REASONS, DataFormatError, ImageMeta, ImportLimits,
                   ImportReport, PairedSet, Progress, SkippedRow, _pick, read_text)
from .images import check_image, pillow_pixel_limit
from .loading import copy_tree_files, detect_format, load
from .tables import _read_records, load_coco, load_imagefolder, load_sidecar_folder, load_table
from .vectors import load_clip_retrieval, load_vectors

__all__ = ["CAPTION_COLUMNS", "ID_COLUMNS", "IMAGE_COLUMNS", "REASONS", "DataFormatError", "ImageMeta",
           "ImportLimits", "ImportReport", "PairedSet", "Progress", "SkippedRow", "check_image", "copy_tree_files",
           "detect_format", "load", "load_clip_retrieval", "load_coco", "load_imagefolder", "load_sidecar_folder",
           "load_table", "load_vectors", "read_text", "safe_extract_zip", "_pick", "_read_records"]
