"""Zip archives, extracted without letting a member escape its folder or exceed the bounds."""
from __future__ import annotations

import re
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from .base import _JUNK_NAMES, DataFormatError, ImportLimits


def check_ratio(info: zipfile.ZipInfo, limits: ImportLimits, path, what: str) -> None:
    """Refuse a zip member that inflates more than limits.max_zip_ratio times (a bomb: zeros
    compress ~1000:1; images, vectors and text far less), before inflating it."""
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > 2**20 and ratio > limits.max_zip_ratio:
        raise DataFormatError(path, f"{what} inflates {ratio:,.0f} times ({info.compress_size:,} to "
                                    f"{info.file_size:,} bytes), a zip bomb",
                              f"members that compress less (raise MMVIZ_MAX_ZIP_RATIO, now {limits.max_zip_ratio}, "
                              "if this archive is trusted)")


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
                check_ratio(info, limits, path, f"member {info.filename!r}")
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
