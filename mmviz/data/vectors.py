"""Loaders of precomputed vectors: .npy (2, N, D), .npz with image and text arrays, and
clip-retrieval output (img_emb/, text_emb/, metadata/ shards).

Vectors stream through in row chunks: a .npy file is read chunk by chunk, an .npz member by
member (each a stream of its zip entry), clip-retrieval shard by shard. Each chunk is checked
(shape, finite, non-zero), normalised and written out, so an import holds one chunk of
vectors at a time, whatever the size of the set. With `vectors_dir` the kept rows go to
`image.npy` and `text.npy` there, in the stored dtype (`arrays.stored_dtype`); without it they
are returned as float32 arrays in memory.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import IO, Callable

import numpy as np

from ..arrays import (NpyHeader, NpyWriter, RowStream, available_memory, check_complete, check_size, ensure_free,
                      free_bytes, open_array, read_header, rows_per_chunk, stored_dtype)
from .base import (CAPTION_COLUMNS, ID_COLUMNS, IMAGE_COLUMNS, DataFormatError, ImportLimits, ImportReport,
                   PairedSet, Progress, _as_caption_list, _as_str, _clean_caption, _natural_key, _pick, _split_lines,
                   read_text, usable_captions)
from .archives import check_ratio
from .images import check_image
from .tables import _image_ref, _read_records

IMAGE_KEYS = ("image", "images", "img", "image_embeddings", "image_embeds", "img_emb", "image_features", "x")
TEXT_KEYS = ("text", "texts", "txt", "text_embeddings", "text_embeds", "text_emb", "text_features", "y")
SHAPE_HELP = ("an array of shape (2, N, D) (0 = images, 1 = texts) or an .npz with image and text arrays of "
              "shape (N, D)")
IMPORT_CHUNK_BYTES = 8 * 2**20  # rows read at a time: with their copies, tens of MB in all
MAX_SIDE_ARRAY_BYTES = 4 * 2**30  # ids / captions arrays of an .npz are read whole: bound them first


def _check_numeric(label, what: str, dtype: np.dtype) -> None:
    # Strings or records would only fail later, row by row, with an unhelpful error.
    if dtype.kind not in "biuf":
        raise DataFormatError(label, f"'{what}' holds {dtype} values, not numeric", "float or integer arrays")


# ----------------------------------------------------------------------------------------
# where the vectors are: blocks of rows in a file or a zip member


class _Block:
    """One (N, D) block of vectors: a 2-D array, or one half of a (2, N, D) array."""

    def __init__(self, opener: Callable[[], IO[bytes]], header: NpyHeader, index: int | None, label):
        self.opener, self.header, self.label = opener, header, label
        shape = header.shape
        self.rows, self.dim = (shape[1], shape[2]) if index is not None else (shape[0], shape[1])
        self.offset = header.offset + (index or 0) * self.rows * self.dim * header.dtype.itemsize
        self.index = index
        self._fallback = None

    def stream(self) -> "RowStream | _ArrayRows":
        if not self.header.fortran_order:
            return RowStream(self.opener, self.offset, self.rows, self.dim, self.header.dtype, self.label)
        # Fortran order keeps rows apart: read the array as NumPy does (rare; bounded by the size check).
        with self.opener() as f:
            arr = np.lib.format.read_array(f, allow_pickle=False)
        return _ArrayRows(arr if self.index is None else arr[self.index])


class _ArrayRows:
    """An in-memory array behind RowStream's interface."""

    def __init__(self, arr: np.ndarray):
        self.arr, self.done = arr, 0

    def read(self, n: int) -> np.ndarray:
        out = self.arr[self.done:self.done + n]
        self.done += len(out)
        return out

    def close(self) -> None:
        pass


def _array_limit(limits: ImportLimits, vectors_dir: Path | None) -> tuple[int, str]:
    """(bytes one array may declare, why): MMVIZ_MAX_ARRAY_BYTES, else what the disk the vectors
    stream to can hold, else (vectors kept in memory) half of the available memory."""
    if limits.max_array_bytes:
        return limits.max_array_bytes, "MMVIZ_MAX_ARRAY_BYTES"
    if vectors_dir is not None:
        return free_bytes(vectors_dir), f"the free disk space at {vectors_dir}"
    return available_memory() // 2, "half of the available memory"


def _npy_header(path: Path, limit: tuple[int, str] | None = None) -> NpyHeader:
    with open(path, "rb") as f:
        header = read_header(f, path)
    if limit is not None:
        check_size(header, limit[0], path, limit[1])
    check_complete(header, path.stat().st_size - header.offset, path)
    return header


def _file_opener(path: Path) -> Callable[[], IO[bytes]]:
    return lambda: open(path, "rb")


def _npz_members(path: Path, limits: ImportLimits, limit: tuple[int, str]
                 ) -> dict[str, tuple[NpyHeader, Callable[[], IO[bytes]]]]:
    """Every .npy member of an .npz: its header (read, not its data) and how to open it. Each
    member's declared size, compression ratio and (for an .npz from an uploaded zip) the
    archive's remaining budget are checked before anything is inflated."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataFormatError(path, f"not a NumPy file ({e})", ".npy or .npz written by NumPy") from e
    out = {}
    with zf:
        infos = [i for i in zf.infolist() if i.filename.endswith(".npy")]
        inflated = sum(i.file_size for i in infos)
        if limits.zip_budget_left is not None and inflated > limits.zip_budget_left:
            raise DataFormatError(path, f"its arrays inflate to {inflated:,} bytes, over what is left of the zip's "
                                        f"budget ({max(limits.zip_budget_left, 0):,} bytes)",
                                  "a smaller archive (or raise MMVIZ_MAX_ZIP_BYTES)")
        for info in infos:
            key = info.filename[:-4]
            label = f"{path}[{key}]"
            check_ratio(info, limits, label, "this array")
            try:
                with zf.open(info) as f:
                    header = read_header(f, label)
            except (zipfile.BadZipFile, EOFError) as e:
                raise DataFormatError(path, f"member {key!r} is unreadable ({e})", ".npz written by NumPy") from e
            check_size(header, limit[0], label, limit[1])
            check_complete(header, info.file_size - header.offset, label)

            def opener(name=info.filename):
                z = zipfile.ZipFile(path)  # one handle per stream: two members are read side by side
                return _ZipMember(z, z.open(name))

            out[key] = (header, opener)
    return out


class _ZipMember:
    """A zip member stream that also closes its own ZipFile handle."""

    def __init__(self, zf: zipfile.ZipFile, f):
        self.zf, self.f = zf, f

    def seek(self, offset: int) -> None:
        self.f.seek(offset)

    def read(self, n: int = -1) -> bytes:
        return self.f.read(n)

    def tell(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        self.f.close()
        self.zf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_side_array(path: Path, key: str, header: NpyHeader, opener) -> np.ndarray:
    if header.nbytes > MAX_SIDE_ARRAY_BYTES:
        raise DataFormatError(path, f"member {key!r} declares {header.nbytes:,} bytes", "ids and captions arrays "
                              f"under {MAX_SIDE_ARRAY_BYTES // 2**30} GiB")
    with opener() as f:
        try:
            return np.lib.format.read_array(f, allow_pickle=False)
        except ValueError as e:
            raise DataFormatError(path, f"cannot read member {key!r} without unpickling ({e})",
                                  "plain arrays saved with numpy.savez") from e


def _vector_blocks(path: Path, limits: ImportLimits, vectors_dir: Path | None
                   ) -> tuple[_Block, _Block, dict[str, np.ndarray]]:
    """(image block, text block, other small arrays) of a .npy (2, N, D) or an .npz."""
    limit = _array_limit(limits, vectors_dir)
    if path.suffix.lower() == ".npy":
        header = _npy_header(path, limit)
        if len(header.shape) != 3 or header.shape[0] != 2:
            raise DataFormatError(path, f"array has shape {header.shape}", SHAPE_HELP)
        _check_numeric(path, "array", header.dtype)
        return _Block(_file_opener(path), header, 0, path), _Block(_file_opener(path), header, 1, path), {}
    members = _npz_members(path, limits, limit)
    img_key, txt_key = _pick(members, IMAGE_KEYS), _pick(members, TEXT_KEYS)
    if img_key is None or txt_key is None:
        three = [k for k, (h, _) in members.items() if len(h.shape) == 3 and h.shape[0] == 2]
        if len(three) != 1:
            raise DataFormatError(path, f"no image and text arrays among keys {sorted(members)}",
                                  f"keys such as 'image' and 'text', or {SHAPE_HELP}")
        header, opener = members.pop(three[0])
        _check_numeric(path, three[0], header.dtype)
        blocks = _Block(opener, header, 0, path), _Block(opener, header, 1, path)
    else:
        (hi, oi), (ht, ot) = members.pop(img_key), members.pop(txt_key)
        if len(hi.shape) != 2 or len(ht.shape) != 2:
            raise DataFormatError(path, f"'{img_key}' has shape {hi.shape} and '{txt_key}' {ht.shape}",
                                  "two 2-D arrays of shape (N, D)")
        _check_numeric(path, img_key, hi.dtype)
        _check_numeric(path, txt_key, ht.dtype)
        if hi.shape[0] != ht.shape[0]:
            raise DataFormatError(path, f"{hi.shape[0]} image vectors but {ht.shape[0]} text vectors",
                                  "image and text arrays of equal length, row i of each forming pair i")
        if hi.shape[1] != ht.shape[1]:
            raise DataFormatError(path, f"image vectors are {hi.shape[1]}-d but text vectors {ht.shape[1]}-d",
                                  "one shared embedding dimension")
        blocks = _Block(oi, hi, None, path), _Block(ot, ht, None, path)
    wanted = {k: members[k] for k in ("ids", "captions") if k in members}
    return blocks[0], blocks[1], {k: _read_side_array(path, k, h, o) for k, (h, o) in wanted.items()}


# ----------------------------------------------------------------------------------------
# keeping the good rows


class _VectorRows:
    """Checks vector rows as they stream in and keeps the good ones, normalised, with their
    ids, captions and extras. A row is skipped for a non-finite or zero vector, an id seen
    before, or no caption, in that order (the same rules as the row-by-row loaders)."""

    def __init__(self, report: ImportReport, dim: int, vectors_dir: Path | None, dtype=None, rows: int = 0,
                 max_caption_chars: int = ImportLimits.max_caption_chars):
        self.report, self.dim, self.dir = report, dim, vectors_dir
        self.max_caption_chars = max_caption_chars
        self.ids: list[str] = []
        self.captions: list[list[str]] = []
        self.images: list = []
        self.extras: dict[str, list] = {}
        self.seen: set[str] = set()
        self.empty: list[str] = []  # rows with no caption, reported after the others
        self.offsets: dict[str, int] = {}  # rows seen per file, for row numbers in reports
        if vectors_dir is not None:
            dt = stored_dtype(dtype, 2 * rows * dim * 4)
            self.writers = [NpyWriter(vectors_dir / f"{m}.npy", dim, dt) for m in ("image", "text")]
        else:
            self.chunks: tuple[list, list] = ([], [])

    def add(self, source: str, ids: list[str], img: np.ndarray, txt: np.ndarray, captions: list[list[str]],
            images: list | None = None, extras: dict[str, list] | None = None) -> None:
        """One chunk of rows of `source` (a file name): ids, vectors, captions, and optional
        image references and extra columns (column name -> values), all of the same length."""
        n = len(ids)
        first = self.offsets.get(source, 0)
        self.offsets[source] = first + n
        if img.shape[1] != self.dim or txt.shape[1] != self.dim:
            for i in range(n):
                self.report.skip(f"{source} row {first + i}", "wrong shape",
                                 f"expected {self.dim}-d vectors, got ({img.shape[1]},) and ({txt.shape[1]},)")
            return
        # float64 norms (a float32 sum of squares can overflow), rows scaled in their own precision
        work = np.float64 if np.float64 in (img.dtype, txt.dtype) else np.float32
        a, t = np.asarray(img, dtype=work), np.asarray(txt, dtype=work)
        na = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64))
        nt = np.sqrt(np.einsum("ij,ij->i", t, t, dtype=np.float64))
        finite = (np.isfinite(na) & np.isfinite(nt)).tolist()  # NaN or inf anywhere in a row makes its norm so
        nonzero = ((na != 0) & (nt != 0)).tolist()  # plain lists: indexing them per row is 10x cheaper
        keep, seen, kept_ids, kept_caps = [], self.seen, self.ids, self.captions
        for i in range(n):
            if not finite[i]:
                self.report.skip(f"{source} row {first + i}", "non-finite vector",
                                 "NaN or inf in the image or text vector")
            elif not nonzero[i]:
                self.report.skip(f"{source} row {first + i}", "zero vector", "a zero vector has no direction")
            elif ids[i] in seen:
                self.report.skip(f"{source} row {first + i}", "duplicate id",
                                 f"id {ids[i]!r} already used by an earlier row")
            else:
                seen.add(ids[i])
                caps = captions[i]
                if not all(caps) or max(map(len, caps), default=0) > self.max_caption_chars:
                    given = [c for c in caps if c]
                    caps = usable_captions(given, f"{source} row {first + i}", self.report, self.max_caption_chars)
                    if given and not caps:
                        continue  # only too-long captions: skipped and listed already
                if caps:
                    keep.append(i)
                    kept_ids.append(ids[i])
                    kept_caps.append(caps)
                else:
                    self.empty.append(f"{source} row {first + i}")
        if not keep:
            return
        before = len(self.ids) - len(keep)
        self.images.extend([images[i] for i in keep] if images else [None] * len(keep))
        for name, values in (extras or {}).items():  # a column new in this chunk is None before it
            self.extras.setdefault(name, [None] * before).extend(values[i] for i in keep)
        for col in self.extras.values():  # ... and a column missing from it is None here
            col.extend([None] * (len(self.ids) - len(col)))
        k = np.asarray(keep)
        out = ((a[k] / na[k, None].astype(work)).astype(np.float32, copy=False),
               (t[k] / nt[k, None].astype(work)).astype(np.float32, copy=False))
        for m in (0, 1):
            if self.dir is not None:
                self.writers[m].append(out[m])
            else:
                self.chunks[m].append(out[m])

    def abort(self) -> None:
        if self.dir is not None:
            for w in self.writers:
                w.abort()

    def finish(self, root: Path | None, model_name: str) -> PairedSet:
        for where in self.empty:
            self.report.skip(where, "empty caption")
        self.report.kept = len(self.ids)
        if self.dir is not None:
            paths = [w.close() for w in self.writers]
            digest = hashlib.sha256("".join(w.digest for w in self.writers).encode()).hexdigest()
            img, txt = open_array(paths[0]), open_array(paths[1])
        else:
            img, txt = (np.concatenate(c) if c else np.zeros((0, self.dim), np.float32) for c in self.chunks)
            digest = hashlib.sha256(img.tobytes() + txt.tobytes()).hexdigest()
        pset = PairedSet(self.ids, self.images, self.captions, self.extras, root=root)
        pset.image_vectors, pset.text_vectors, pset.vector_model = img, txt, model_name
        pset.vectors_dir, pset.vector_digest = self.dir, digest
        return pset


def _stream_pairs(rows: _VectorRows, where: str, img: _Block, txt: _Block, ids: list[str], captions: list[list[str]],
                  images: list | None = None, extras: dict[str, list] | None = None,
                  progress: Progress | None = None, done: int = 0, total: int = 0) -> int:
    """Feed one pair of blocks through `rows`, chunk by chunk; returns rows done so far."""
    step = rows_per_chunk(img.dim, 4, IMPORT_CHUNK_BYTES)
    si, st = img.stream(), txt.stream()
    try:
        for s in range(0, img.rows, step):
            e = min(s + step, img.rows)
            rows.add(where, ids[s:e], si.read(e - s), st.read(e - s), captions[s:e],
                     images[s:e] if images else None, {k: v[s:e] for k, v in extras.items()} if extras else None)
            done += e - s
            if progress:
                progress(done, total)
    finally:
        si.close()
        st.close()
    return done


def _check_disk(vectors_dir: Path | None, rows: int, dim: int, source: Path, dtype) -> None:
    if vectors_dir is not None:
        size = stored_dtype(dtype, 2 * rows * dim * 4).itemsize
        ensure_free(vectors_dir, 2 * rows * dim * size, source, "storing its vectors")


# ----------------------------------------------------------------------------------------
# the loaders


def _read_captions_file(path: Path, report: ImportReport) -> tuple[list[list[str]], list[str] | None]:
    """Captions for vector rows: .txt (one per line) or a table with a caption column."""
    if path.suffix.lower() == ".txt":
        return [[_clean_caption(line)] for line in _split_lines(read_text(path, report))], None
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


def load_vectors(path: Path, captions_file: Path | None = None, model_name: str | None = None,
                 progress: Progress | None = None, vectors_dir: Path | None = None,
                 vector_dtype: str | None = None, limits: ImportLimits | None = None) -> tuple[PairedSet, ImportReport]:
    """Precomputed embeddings: `.npy` of shape (2, N, D) or `.npz` with image and text arrays
    (optional `ids`, `captions` string arrays), plus an optional captions file (.txt one per
    line, or a table) given or found beside it (same stem). Vectors are L2-normalised."""
    path = Path(path)
    report = ImportReport(str(path), "vectors")
    limits = limits or ImportLimits()
    img, txt, other = _vector_blocks(path, limits, vectors_dir)
    n = img.rows
    ids = [str(i) for i in range(n)]
    captions: list[list[str]] = [[f"pair {i}"] for i in range(n)]
    if "ids" in other and other["ids"].shape == (n,):
        ids = [_as_str(x) for x in other["ids"]]
    if "captions" in other and other["captions"].shape == (n,):
        captions = [[_clean_caption(_as_str(c))] for c in other["captions"]]
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
    _check_disk(vectors_dir, n, img.dim, path, vector_dtype)
    rows = _VectorRows(report, img.dim, vectors_dir, vector_dtype, n, limits.max_caption_chars)
    try:
        _stream_pairs(rows, path.name, img, txt, ids, captions, progress=progress, total=n)
    except BaseException:
        rows.abort()
        raise
    return rows.finish(None, model_name or f"precomputed:{path.stem}"), report


def _shard_block(path: Path, limit: tuple[int, str]) -> _Block:
    try:
        header = _npy_header(path, limit)
    except DataFormatError as e:
        raise DataFormatError(path, f"unreadable shard ({e.problem})", "a .npy array of shape (N, D)") from e
    except OSError as e:
        raise DataFormatError(path, f"unreadable shard ({e})", "a .npy array of shape (N, D)") from e
    _check_numeric(path, path.name, header.dtype)
    if len(header.shape) != 2:
        raise DataFormatError(path, f"shape {header.shape}", "a .npy array of shape (N, D)")
    return _Block(_file_opener(path), header, None, path)


def _metadata_columns(path: Path, rows: int, shard: Path) -> dict[str, list]:
    import pyarrow.parquet as pq

    try:
        cols = pq.read_table(path).to_pydict()  # column lists: far smaller than one dict per row
    except Exception as e:  # pyarrow raises several types for non-parquet bytes
        raise DataFormatError(path, f"not a readable Parquet file ({e})", "a Parquet table") from e
    got = len(next(iter(cols.values()))) if cols else 0
    if got != rows:
        raise DataFormatError(path, f"{got} metadata rows for {rows} vectors in {shard.name}",
                              "one metadata row per vector")
    return cols


def load_clip_retrieval(folder: Path, model_name: str | None = None, limits: ImportLimits | None = None,
                        progress: Progress | None = None, vectors_dir: Path | None = None,
                        vector_dtype: str | None = None) -> tuple[PairedSet, ImportReport]:
    """clip-retrieval output: `img_emb/img_emb_K.npy`, `text_emb/text_emb_K.npy` and
    `metadata/metadata_K.parquet` shards, paired row by row across the three, shard by shard."""
    folder = Path(folder)
    report = ImportReport(str(folder), "clip-retrieval")
    limits = limits or ImportLimits()
    limit = _array_limit(limits, vectors_dir)
    img_files = sorted((folder / "img_emb").glob("*.npy"), key=lambda p: _natural_key(p.name))
    txt_files = sorted((folder / "text_emb").glob("*.npy"), key=lambda p: _natural_key(p.name))
    meta_files = sorted((folder / "metadata").glob("*.parquet"), key=lambda p: _natural_key(p.name))
    expected = "clip-retrieval output with img_emb/, text_emb/ and metadata/ holding one shard each per index"
    if not img_files or len(img_files) != len(txt_files) or (meta_files and len(meta_files) != len(img_files)):
        raise DataFormatError(folder, f"{len(img_files)} image, {len(txt_files)} text and {len(meta_files)} metadata shards", expected)
    blocks = []
    for fi, ft in zip(img_files, txt_files):  # check every header before writing anything
        bi, bt = _shard_block(fi, limit), _shard_block(ft, limit)
        if bi.rows != bt.rows or bi.dim != bt.dim:
            raise DataFormatError(fi, f"shape {bi.header.shape} does not pair with {ft.name} {bt.header.shape}",
                                  "image and text shards of shape (N, D) with the same N")
        blocks.append((bi, bt))
    total, dim = sum(b.rows for b, _ in blocks), blocks[0][0].dim
    _check_disk(vectors_dir, total, dim, folder, vector_dtype)
    rows = _VectorRows(report, dim, vectors_dir, vector_dtype, total, limits.max_caption_chars)
    offset = done = 0
    try:
        for k, (bi, bt) in enumerate(blocks):
            n = bi.rows
            meta = _metadata_columns(meta_files[k], n, img_files[k]) if meta_files else {}
            names = list(meta)
            cap_col, img_col, id_col = _pick(names, CAPTION_COLUMNS), _pick(names, IMAGE_COLUMNS), _pick(names, ID_COLUMNS)
            ids = ([str(v) if v is not None else str(offset + i) for i, v in enumerate(meta[id_col])] if id_col
                   else [str(offset + i) for i in range(n)])
            caps = ([_as_caption_list(v) for v in meta[cap_col]] if cap_col
                    else [[f"pair {offset + i}"] for i in range(n)])
            images = [_image_ref(v) for v in meta[img_col]] if img_col else None
            rest = [c for c in names if c not in (cap_col, img_col, id_col)]
            extras = {c: meta[c] for c in rest}
            done = _stream_pairs(rows, f"{img_files[k].parent.name}/{img_files[k].name}", bi, bt, ids, caps,
                                 images, extras, progress, done, total)
            offset += n
    except BaseException:
        rows.abort()
        raise
    pset = rows.finish(folder, model_name or f"precomputed:{folder.name}")
    # Images listed in the metadata are kept as references but not required: the vectors are the data.
    pset.image_meta = [None] * len(pset)
    for i in range(len(pset)):
        if pset.images[i] is None:
            continue
        p = pset.image_path(i)
        if p is None or not p.is_file():
            pset.images[i] = None
        else:
            meta_i, _, _ = check_image(p, limits or ImportLimits())
            pset.image_meta[i] = meta_i
            if meta_i is None:
                pset.images[i] = None
    return pset, report
