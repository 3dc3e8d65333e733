"""Large arrays on disk: .npy files read and written in row chunks, with bounded memory.

Vectors live in plain .npy files (imports, the embedding cache, layouts) so that any tool can
open them and mmviz can memory-map them. Two things NumPy does not offer are written here:

- Reading rows of a file or of a zip member (.npz) in chunks, after checking the header's
  declared shape against the bytes really there. `np.load` reads a whole array into memory,
  and a header that claims petabytes makes it try to allocate them.
- Writing rows whose final count is unknown (rows get skipped while they stream in).
  `NpyWriter` reserves a fixed-size header, appends rows, then rewrites the header.

Streaming passes read with ordinary file reads, not a memory map: pages of a mapping count
toward the process's resident memory until the kernel takes them back, so one pass over a
4 GB file would show as 4 GB resident, while reads keep one chunk resident and still hit the
page cache the second time. Random access (a sample, one row) uses `open_array`, a read-only
memory map.
"""
from __future__ import annotations

import hashlib
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

import numpy as np

from .errors import DataFormatError

STORED_DTYPES = ("auto", "float16", "float32")
CHUNK_BYTES = 32 * 2**20  # one chunk of rows: 32 MB (16k rows of 512 float32 values)
HEADER_BYTES = 128  # reserved .npy header of NpyWriter: magic, length, dict, padding
SAVE_HELP = "an array saved with numpy.save / numpy.savez"
# "auto" stores vectors that would take more than this in float32 as float16 (a 512-d set of
# more than 262,144 pairs): below it memory is no concern and float32 keeps every digit.
AUTO_FLOAT16_BYTES = 2**30


def stored_dtype(name: str | None = None, float32_bytes: int = 0) -> np.dtype:
    """The dtype to store vectors in: `name`, else $MMVIZ_VECTOR_DTYPE, else "auto", which is
    float16 when the vectors would take more than AUTO_FLOAT16_BYTES as float32, else float32.

    float16 halves disk, memory and reading time. Measured on 500 real CLIP COCO pairs, every
    geometry metric moved by at most 1.3e-5 (the effective dimensions, ~100, by 6e-4) and
    recall@1/5/10 did not change. Its rounding noise does hide exact rank deficiency: the
    builtin model's images span 127 of 128 dimensions, and in float16 the missing one reads
    as a tiny variance instead of none (README, "The workspace")."""
    name = name or os.environ.get("MMVIZ_VECTOR_DTYPE") or "auto"
    if name not in STORED_DTYPES:
        raise ValueError(f"vector dtype {name!r}: choose auto, float16 or float32 (MMVIZ_VECTOR_DTYPE)")
    if name == "auto":
        name = "float16" if float32_bytes > AUTO_FLOAT16_BYTES else "float32"
    return np.dtype(name)


def rows_per_chunk(dim: int, itemsize: int = 4, budget: int = CHUNK_BYTES) -> int:
    return max(1, budget // max(1, dim * itemsize))


# ----------------------------------------------------------------------------------------
# reading


@dataclass
class NpyHeader:
    """What a .npy header declares, and where its data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int  # bytes before the data

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def read_header(f: IO[bytes], label: str | os.PathLike) -> NpyHeader:
    """Parse the header at the current position of `f`; never unpickles, never allocates data."""
    start = f.tell()
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, EOFError, struct.error, SyntaxError) as e:
        raise DataFormatError(label, f"not a NumPy array file ({e})", f".npy data ({SAVE_HELP})") from e
    if dtype.hasobject:
        raise DataFormatError(label, "cannot read without unpickling (it holds Python objects)",
                              f"plain numeric arrays ({SAVE_HELP})")
    return NpyHeader(tuple(int(s) for s in shape), dtype, bool(fortran), f.tell() - start)


def check_complete(header: NpyHeader, available: int, label) -> None:
    """A file whose data is shorter than its header says is truncated: say so plainly."""
    if available < header.nbytes:
        raise DataFormatError(label, f"truncated: its header declares shape {header.shape} of {header.dtype} "
                                     f"({header.nbytes:,} bytes of data) but it holds {max(available, 0):,}",
                              "the complete file (copy or save it again)")


class RowStream:
    """Rows start, start+1, ... of a 2-D block of a C-order array, read sequentially.

    `opener()` returns a fresh binary stream positioned anywhere (a file, or a zip member);
    `offset` is the block's first byte in that stream."""

    def __init__(self, opener: Callable[[], IO[bytes]], offset: int, rows: int, dim: int, dtype: np.dtype, label):
        self._f = opener()
        self._f.seek(offset)
        self.rows, self.dim, self.dtype, self.label = rows, dim, np.dtype(dtype), label
        self.done = 0

    def read(self, n: int) -> np.ndarray:
        n = min(n, self.rows - self.done)
        want = n * self.dim * self.dtype.itemsize
        data = self._f.read(want)
        if len(data) != want:  # the size check passed, so the stream itself was cut short
            raise DataFormatError(self.label, "truncated while reading", "the complete file")
        self.done += n
        return np.frombuffer(data, dtype=self.dtype).reshape(n, self.dim)

    def close(self) -> None:
        self._f.close()


def open_array(path: str | os.PathLike) -> np.ndarray:
    """A stored .npy as a read-only memory map (no data read until used)."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def iter_chunks(x: np.ndarray, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows of x) in chunks, each a float32 copy (a memory map's pages are read once)."""
    rows = rows or rows_per_chunk(x.shape[1] if x.ndim > 1 else 1)
    for s in range(0, len(x), rows):
        yield s, np.asarray(x[s:s + rows], dtype=np.float32)


# ----------------------------------------------------------------------------------------
# writing


def _header_bytes(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """A version 1.0 .npy header padded to exactly HEADER_BYTES (NumPy has no public way to
    ask for a given header size, and the row count is only known at the end)."""
    body = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
    body = body.encode("latin1")
    pad = HEADER_BYTES - 10 - len(body) - 1
    if pad < 0:
        raise ValueError(f"shape {shape} does not fit a {HEADER_BYTES}-byte header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", HEADER_BYTES - 10) + body + b" " * pad + b"\n"


class NpyWriter:
    """Append (r, dim) rows to a .npy file in `dtype`; `close()` writes the final shape and
    renames the file into place, so a reader never sees a half-written array. `digest` is
    the sha256 of the row bytes as stored."""

    def __init__(self, path: str | os.PathLike, dim: int, dtype=np.float32):
        self.path, self.dim, self.dtype = Path(path), int(dim), np.dtype(dtype)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self._f = open(self._tmp, "wb")
        self._f.write(_header_bytes((0, self.dim), self.dtype))
        self._hash = hashlib.sha256()
        self.rows = 0

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected rows of width {self.dim}, got shape {rows.shape}")
        if rows.size == 0:
            return
        data = memoryview(rows).cast("B")  # the array's own bytes: no copy
        self._f.write(data)
        self._hash.update(data)
        self.rows += len(rows)

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> Path:
        self._f.seek(0)
        self._f.write(_header_bytes((self.rows, self.dim), self.dtype))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "NpyWriter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def save_rows(path: str | os.PathLike, x: np.ndarray, dtype=None) -> str:
    """Write any (n, d) array (a memory map too) to `path` in chunks; returns the digest."""
    with NpyWriter(path, x.shape[1], dtype or x.dtype) as w:
        for _, chunk in iter_chunks(x):
            w.append(chunk)
    return w.digest


def digest_rows(x: np.ndarray, dtype=np.float32) -> str:
    """sha256 of x's rows as `dtype`, read in chunks (no copy of the whole array)."""
    h = hashlib.sha256()
    h.update(repr(tuple(x.shape)).encode())
    for _, chunk in iter_chunks(x):
        h.update(np.ascontiguousarray(chunk, dtype=dtype))
    return h.hexdigest()


def free_bytes(folder: str | os.PathLike) -> int:
    """Free disk space where `folder` (or its nearest existing parent) lives."""
    import shutil

    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def available_memory() -> int:
    """Memory the kernel can give without swapping (MemAvailable), or free pages elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**34


def check_size(header: NpyHeader, limit: int, label, what: str) -> None:
    """Refuse an array whose header declares more bytes than `limit`, before reading any."""
    if header.nbytes > limit:
        raise DataFormatError(label, f"its header declares shape {header.shape} of {header.dtype}, "
                                     f"{header.nbytes:,} bytes, over the {limit:,} bytes allowed ({what})",
                              "a smaller array, or raise MMVIZ_MAX_ARRAY_BYTES")


def ensure_free(folder: str | os.PathLike, need: int, source: str | os.PathLike, what: str) -> None:
    """Refuse, before writing anything, work that would need more disk than `folder` has."""
    free = free_bytes(folder)
    margin = 64 * 2**20
    if need + margin > free:
        raise DataFormatError(source, f"{what} needs {need / 1e9:.2f} GB of disk but {folder} has "
                                      f"{free / 1e9:.2f} GB free",
                              "more free disk space, or a workspace on a larger disk (MMVIZ_HOME or "
                              "mmviz --home DIR)")


def release_pages(*arrays) -> None:
    """Drop the pages of memory-mapped arrays from this process's resident set (they stay in
    the page cache, and are read back from it when used again). A pass over a million-row map
    otherwise leaves all of its pages counted as resident (2 GB for 1M x 512 float16) until
    the kernel needs them; a long-lived server that reads several sets would look gigabytes
    larger than the memory it really holds. Arrays that are not file maps are left alone."""
    import mmap

    for x in arrays:
        # a view of a map (np.asarray of an np.memmap, a slice) leads to the mmap through .base
        for _ in range(8):
            base = getattr(x, "base", None)
            if base is None or isinstance(base, mmap.mmap):
                break
            x = base
        # not a copy-on-write map ("c"): there, dropping pages would drop the caller's changes
        if (isinstance(x, np.memmap) and isinstance(base, mmap.mmap) and getattr(x, "mode", "c") != "c"
                and hasattr(mmap, "MADV_DONTNEED")):
            try:
                base.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass  # closed, or a platform without it: nothing is lost but the saving


GATHER_BLOCK = 512  # scattered rows read between two release_pages


def gather_rows(x: np.ndarray, rows) -> np.ndarray:
    """x[rows] as a new array, a memory map's pages let go as it goes (release_pages): reading
    5,000 scattered rows of a million faults in 64 kB around each (the kernel's fault-around),
    300 MB of a 1 GB map counted as resident for 5 MB of rows; 4,096 rows of each of two 1 GB
    maps held 1.8 GB (measured). In blocks of GATHER_BLOCK rows, at most ~32 MB is held."""
    rows = np.asarray(rows)
    if rows.dtype == bool:
        rows = np.flatnonzero(rows)
    out = np.empty((len(rows), *x.shape[1:]), dtype=x.dtype)
    for s in range(0, len(rows), GATHER_BLOCK):
        out[s:s + GATHER_BLOCK] = x[rows[s:s + GATHER_BLOCK]]
        release_pages(x)
    return out
