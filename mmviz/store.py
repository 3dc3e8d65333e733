"""The workspace: a folder holding imported datasets (and embeddings, layouts, results, runs).

Layout (default `~/.mmviz`, or `$MMVIZ_HOME`)::

    datasets/<name>/CURRENT          -> "v-<content hash>"
    datasets/<name>/v-<hash>/        manifest.json, pairs.parquet, thumbs.parquet,
                                     vectors/image.npy + text.npy (precomputed sets),
                                     files/ (copied images)

A dataset version is built in a staging folder and renamed into place whole; `CURRENT` is
then replaced atomically. A crash at any point leaves the previous version readable, and
re-importing identical data is a no-op (same content hash).

Tables are Parquet in row groups, read column by column: a page of rows, a search over the
captions or one thumbnail never loads the whole set. Vectors are .npy files read back as
memory maps.
"""
from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arrays import open_array
from .atomic import atomic_write_bytes, atomic_write_json, fsync_dir  # noqa: F401 (re-exported)
from .atomic import STAGING_PREFIX, StagingFolder, remove_dead_staging
from .data import DataFormatError, ImportLimits, ImportReport, PairedSet, Progress, copy_tree_files, load

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FORMAT_VERSION = 2  # 2: vectors as .npy files, streamed content hash, row-grouped Parquet
ROW_GROUP = 65_536  # rows per Parquet row group of pairs.parquet: a page of rows reads one group
THUMB_GROUP = 1024  # thumbnails per row group: one thumbnail reads ~5 MB at most
DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}  # the workspace cannot take the write
LOCK_TIMEOUT = 600  # seconds to wait for another process's commit (which removes old versions)


def default_home() -> Path:
    return Path(os.environ.get("MMVIZ_HOME") or Path.home() / ".mmviz").expanduser()


def valid_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise ValueError(f"invalid dataset name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name


def name_from_path(path: str | os.PathLike) -> str:
    stem = Path(path).name
    for ext in (".zip", ".json", ".csv", ".tsv", ".jsonl", ".parquet", ".npy", ".npz"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "dataset"
    return stem[:64]


def _column(values: list):
    """A list as a pyarrow array; mixed-type columns fall back to JSON text."""
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pa.array([None if v is None else (v if isinstance(v, str) else json.dumps(v, default=str))
                         for v in values], type=pa.string())


def content_hash(pset: PairedSet, chunk: int = 65_536) -> str:
    """sha256 of everything a version stores, fed chunk by chunk (no one big string)."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, "vector_model": pset.vector_model,
                         "extras": list(pset.extras)}, sort_keys=True).encode())
    for s in range(0, len(pset), chunk):
        e = s + chunk
        rows = {
            "ids": pset.ids[s:e],
            "images": [im if isinstance(im, str) or im is None else hashlib.sha256(im).hexdigest()
                       for im in pset.images[s:e]],
            "image_sha256": [m.sha256 if m else None for m in pset.image_meta[s:e]],
            "captions": pset.captions[s:e],
            "extras": {k: v[s:e] for k, v in pset.extras.items()},
        }
        h.update(json.dumps(rows, sort_keys=True, default=str).encode("utf-8"))
    if pset.has_vectors:
        if pset.vector_digest is None:
            from .arrays import digest_rows

            pset.vector_digest = digest_rows(pset.image_vectors) + digest_rows(pset.text_vectors)
        h.update(pset.vector_digest.encode())
    return h.hexdigest()


def text_key(caption: str) -> str:
    """Cache key of a caption: sha256 of its exact UTF-8 text."""
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()


def precomputed_fingerprint(model_name: str) -> str:
    return hashlib.sha256(f"precomputed/{model_name}".encode()).hexdigest()[:20]


@dataclass
class ImportResult:
    dataset: "Dataset"
    report: ImportReport
    status: str  # "created", "updated" or "unchanged"


def search_pairs(table, query: str):
    """Rows of a pairs table (id, captions, ...) with a caption containing `query`
    (case-insensitive substring) or an id containing it; all rows for an empty query."""
    q = (query or "").strip().lower()
    if not q:
        return table
    hit = table["captions"].map(lambda caps: any(q in c.lower() for c in caps))
    return table[hit | table["id"].str.lower().str.contains(q, regex=False)]


def _to_pandas(table):
    df = table.to_pandas()
    if "captions" in df:
        df["captions"] = df["captions"].map(list)
    return df


class Dataset:
    """One stored dataset version, read-only. Columns are read lazily, one at a time."""

    def __init__(self, name: str, path: Path):
        self.name = name
        self.path = Path(path)
        self.manifest: dict = json.loads((self.path / "manifest.json").read_text("utf-8"))
        self._table = None
        self._columns: dict = {}
        self._thumb_ids = None  # thumbs.parquet's id column, read once per Dataset object

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, {len(self)} pairs)"

    def __len__(self) -> int:
        return int(self.manifest["pairs"])

    @property
    def report(self) -> ImportReport:
        return ImportReport.from_dict(self.manifest["report"])

    @property
    def key(self) -> str:
        """The content hash: names this version in every cache (a re-import changes it)."""
        return self.manifest["content_hash"]

    def _pairs_file(self):
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.path / "pairs.parquet")

    def columns(self) -> list[str]:
        return list(self._pairs_file().schema_arrow.names)

    def column(self, name: str):
        """One column as a pyarrow ChunkedArray, read once per Dataset object."""
        if name not in self._columns:
            import pyarrow.parquet as pq

            self._columns[name] = pq.read_table(self.path / "pairs.parquet", columns=[name]).column(name)
        return self._columns[name]

    def table(self, columns: list[str] | None = None):
        """DataFrame with id, image, captions (list), image_sha256, width, height and extras,
        or only `columns`. The whole table is read once and kept; a column subset is not."""
        if columns is not None:
            import pyarrow as pa

            return _to_pandas(pa.table({c: self.column(c) for c in columns}))
        if self._table is None:
            import pyarrow.parquet as pq

            self._table = _to_pandas(pq.read_table(self.path / "pairs.parquet"))
        return self._table

    def ids(self) -> list[str]:
        return self.column("id").to_pylist()

    def caption_lists(self) -> list[list[str]]:
        return self.column("captions").to_pylist()

    def rows(self, index) -> "object":
        """The table rows at positions `index` (sorted or not), reading only their row groups."""
        import pyarrow as pa

        index = np.asarray(index, dtype=np.int64)
        if len(index) == 0:
            return _to_pandas(self._pairs_file().schema_arrow.empty_table())
        pf = self._pairs_file()
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        groups = np.unique(np.searchsorted(starts, index, side="right") - 1)
        part = pa.concat_tables([pf.read_row_group(int(g)) for g in groups])
        local = np.concatenate([np.arange(starts[g], starts[g + 1]) for g in groups])
        pos = np.searchsorted(local, index)
        return _to_pandas(part.take(pa.array(pos)))

    def match(self, query: str) -> np.ndarray:
        """Positions (sorted) of rows whose id or any caption contains `query`, case-insensitive;
        every row for an empty query. Runs on Arrow columns: a million captions in a fraction
        of a second, with no Python object per row."""
        import pyarrow.compute as pc

        q = (query or "").strip()
        if not q:
            return np.arange(len(self))
        caps = self.column("captions").combine_chunks()
        hit = pc.match_substring(pc.list_flatten(caps), q, ignore_case=True)
        parents = pc.list_parent_indices(caps).to_numpy()
        rows = np.zeros(len(self), dtype=bool)
        rows[parents[hit.to_numpy(zero_copy_only=False)]] = True
        ids = self.column("id").combine_chunks()
        rows |= pc.match_substring(ids, q, ignore_case=True).to_numpy(zero_copy_only=False)
        return np.flatnonzero(rows)

    def page(self, query: str = "", offset: int = 0, limit: int = 50):
        """(rows offset..offset+limit of those matching `query`, how many match)."""
        hits = self.match(query)
        return self.rows(hits[offset:offset + limit]), len(hits)

    def thumbnails(self, ids: list[str] | None = None) -> dict[str, bytes]:
        """id -> JPEG thumbnail, of every image (small sets) or of `ids` only, reading just
        the row groups that hold them."""
        import pyarrow.parquet as pq

        p = self.path / "thumbs.parquet"
        if not p.exists():
            return {}
        if ids is None:
            t = pq.read_table(p).to_pydict()
            return dict(zip(t["id"], t["thumbnail"]))
        import pyarrow as pa
        import pyarrow.compute as pc

        pf = pq.ParquetFile(p)
        if self._thumb_ids is None:  # an Arrow column: no Python object per id, whatever the size
            self._thumb_ids = pq.read_table(p, columns=["id"]).column("id").combine_chunks()
        found = pc.index_in(pa.array(list(set(ids)), type=self._thumb_ids.type), value_set=self._thumb_ids)
        rows = sorted(r for r in found.to_pylist() if r is not None)
        out, starts, first = {}, [], 0
        for g in range(pf.num_row_groups):
            starts.append(first)
            first += pf.metadata.row_group(g).num_rows
        groups: dict[int, list[int]] = {}
        for r in rows:
            g = int(np.searchsorted(starts, r, side="right") - 1)
            groups.setdefault(g, []).append(r - starts[g])
        for g, local in groups.items():
            part = pf.read_row_group(g, columns=["id", "thumbnail"]).to_pydict()
            for i in local:
                out[part["id"][i]] = part["thumbnail"][i]
        return out

    def image_path(self, id_or_index) -> Path | None:
        # Ids are strings, so any integer (NumPy's included) is a row position.
        if isinstance(id_or_index, (int, np.integer)):
            ref = self.column("image")[int(id_or_index)].as_py()
        else:
            t = self.table(["id", "image"])
            ref = t.loc[t["id"] == id_or_index, "image"].iloc[0]
        if ref is None or (isinstance(ref, float) and np.isnan(ref)):
            return None
        p = Path(ref)
        return p if p.is_absolute() else self.path / p

    def vectors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Precomputed (image, text) vectors aligned with the table's rows, if imported: read-only
        memory maps of the stored .npy files (float16 or float32, as stored)."""
        d = self.path / "vectors"
        if (d / "image.npy").exists():
            return open_array(d / "image.npy"), open_array(d / "text.npy")
        old = self.path / "vectors.npz"  # format 1
        if not old.exists():
            return None
        with np.load(old, allow_pickle=False) as z:
            return z["image"], z["text"]

    def search(self, query: str):
        """Rows with a caption containing `query` (case-insensitive substring) or a matching id."""
        return self.rows(self.match(query))


class Workspace:
    def __init__(self, home: str | os.PathLike | None = None):
        self.home = Path(home).expanduser() if home else default_home()
        self.datasets_dir = self.home / "datasets"

    def __repr__(self) -> str:
        return f"Workspace({str(self.home)!r})"

    # -- reading ----------------------------------------------------------------------

    def _current(self, name: str) -> Path | None:
        ptr = self.datasets_dir / name / "CURRENT"
        try:
            version = ptr.read_text("utf-8").strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        path = self.datasets_dir / name / version
        return path if (path / "manifest.json").is_file() else None

    def names(self) -> list[str]:
        if not self.datasets_dir.is_dir():
            return []
        return sorted(p.name for p in self.datasets_dir.iterdir()
                      if p.is_dir() and NAME_RE.match(p.name) and self._current(p.name))

    def exists(self, name: str) -> bool:
        return NAME_RE.match(name or "") is not None and self._current(name) is not None

    def open(self, name: str) -> Dataset:
        path = self._current(valid_name(name)) if NAME_RE.match(name or "") else None
        if path is None:
            known = ", ".join(self.names()) or "none yet"
            raise KeyError(f"no dataset named {name!r} in {self.home} (datasets: {known})")
        return Dataset(name, path)

    def list(self) -> list[dict]:
        """Manifest summaries of every dataset, sorted by name."""
        out = []
        for name in self.names():
            try:
                out.append(self.open(name).manifest)
            except (KeyError, ValueError, OSError):
                continue
        return out

    # -- writing ----------------------------------------------------------------------

    def lock(self, name: str):
        """The lock of dataset `name` (a filelock.FileLock, usable as a context manager): held,
        by every process alike (CLI, app, torchrun ranks), while a version is committed (moved
        into place, CURRENT swapped, old versions removed) and while the dataset is deleted, so
        two writers never remove each other's version. Reading needs no lock: CURRENT only
        ever names a complete version."""
        from filelock import FileLock

        folder = self.home / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        return FileLock(str(folder / f"dataset-{valid_name(name)}.lock"), timeout=LOCK_TIMEOUT)

    def delete(self, name: str) -> None:
        """Remove a dataset: CURRENT goes first (the name disappears at once), then its versions.
        An import under the same name that is running meanwhile keeps its staging folder and
        commits afterwards, bringing the name back: the later writer wins."""
        ds_dir = self.datasets_dir / valid_name(name)
        with self.lock(name):
            if not self.exists(name):
                raise KeyError(f"no dataset named {name!r} in {self.home}")
            trash = self.datasets_dir / f".trash-{name}-{uuid.uuid4().hex[:8]}"
            trash.mkdir()
            os.rename(ds_dir / "CURRENT", trash / "CURRENT")
            for version in ds_dir.glob("v-*"):
                os.rename(version, trash / version.name)
            remove_dead_staging(ds_dir)
            try:
                ds_dir.rmdir()  # empty unless an import is staging there
            except OSError:
                pass
        shutil.rmtree(trash, ignore_errors=True)

    def import_path(self, path: str | os.PathLike, name: str | None = None, *, copy_images: bool | None = None,
                    images_dir: str | os.PathLike | None = None, captions_file: str | os.PathLike | None = None,
                    model_name: str | None = None, limits: ImportLimits | None = None,
                    progress: Progress | None = None, source_label: str | None = None,
                    vector_dtype: str | None = None) -> ImportResult:
        """Import what `path` points at as dataset `name` (default: from the path).

        Images from a zip are always stored in the workspace; from a local folder they are
        referenced in place unless `copy_images` is true. `source_label` replaces the path in
        the report (an upload's temporary path means nothing to the user). Precomputed vectors
        stream straight into the new version in `vector_dtype` (default `arrays.stored_dtype`).

        The slow part (reading, checking, writing the new version) runs in a private staging
        folder; only the commit holds the dataset's lock, so concurrent imports under one name
        each finish whole and the last commit wins, never leaving CURRENT without its version.
        """
        path = Path(path).expanduser()
        name = valid_name(name if name is not None else name_from_path(path))
        limits = limits or ImportLimits.from_env()
        ds_dir = self.datasets_dir / name
        ds_dir.mkdir(parents=True, exist_ok=True)
        staging_folder = StagingFolder(ds_dir)  # its lock tells others this import is alive
        staging = staging_folder.path
        try:
            is_zip = path.is_file() and path.suffix.lower() == ".zip"
            pset, report = load(path, extract_to=staging / "extract" if is_zip else None,
                                images_dir=Path(images_dir) if images_dir else None,
                                captions_file=Path(captions_file) if captions_file else None,
                                model_name=model_name, limits=limits, progress=progress,
                                vectors_dir=staging / "vectors", vector_dtype=vector_dtype)
            if source_label:
                report.source = source_label
            if len(pset) == 0:
                reasons = report.summary()
                raise DataFormatError(path, f"no usable pairs ({reasons})", "at least one image-caption pair")
            copied = is_zip or bool(copy_images)
            if copied and pset.has_images:
                copy_tree_files(pset, staging)
            elif pset.has_images:
                # Reference in place: store absolute paths so the set survives a change of cwd.
                pset.images = [str(pset.image_path(i).resolve()) if isinstance(pset.images[i], str) else pset.images[i]
                               for i in range(len(pset))]
                if any(isinstance(im, bytes) for im in pset.images):
                    copy_tree_files(pset, staging)  # bytes have no place to point at
                    copied = True
            shutil.rmtree(staging / "extract", ignore_errors=True)
            digest = content_hash(pset)
            version = ds_dir / f"v-{digest[:16]}"
            self._write_version(staging, name, pset, report, digest, copied)  # whole before the commit
            with self.lock(name):
                current = self._current(name)
                if current == version:
                    staging_folder.close()
                    self._clean_stale(ds_dir, keep=version.name)
                    return ImportResult(Dataset(name, current), report, "unchanged")
                if (version / "manifest.json").is_file():
                    # the same content, committed by a concurrent import or left whole by one
                    # interrupted after its rename: use it
                    shutil.rmtree(staging, ignore_errors=True)
                else:
                    shutil.rmtree(version, ignore_errors=True)  # a part of one never happens; be sure
                    os.rename(staging, version)
                atomic_write_bytes(ds_dir / "CURRENT", version.name.encode())
                staging_folder.close()  # before the clean, which would see this lock held
                self._clean_stale(ds_dir, keep=version.name)
                # read while the lock is held: a later commit may replace this version at once
                dataset = Dataset(name, version)
        except BaseException as exc:
            staging_folder.close()
            with self.lock(name):
                remove_dead_staging(ds_dir)
                # a first import that failed leaves nothing, unless another one is under way
                if (self._current(name) is None and not any(ds_dir.glob("v-*"))
                        and not any(ds_dir.glob(f"{STAGING_PREFIX}*"))):
                    shutil.rmtree(ds_dir, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
                raise OSError(exc.errno, f"writing dataset {name} into {self.home} failed ({exc.strerror}); "
                                         "nothing stored was changed. Free disk space (or use a workspace on a "
                                         "larger disk: MMVIZ_HOME or mmviz --home DIR) and import again") from exc
            raise
        return ImportResult(dataset, report, "updated" if current else "created")

    def _write_version(self, staging: Path, name: str, pset: PairedSet, report: ImportReport,
                       digest: str, copied: bool) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        metas = pset.image_meta
        cols = {
            "id": pa.array(pset.ids, pa.string()),
            "image": pa.array([im if isinstance(im, str) else None for im in pset.images], pa.string()),
            "captions": pa.array(pset.captions, pa.list_(pa.string())),
            "image_sha256": pa.array([m.sha256 if m else None for m in metas], pa.string()),
            "width": pa.array([m.width if m else None for m in metas], pa.int32()),
            "height": pa.array([m.height if m else None for m in metas], pa.int32()),
        }
        for k, v in pset.extras.items():
            if k not in cols:
                cols[k] = _column(v)
        pq.write_table(pa.table(cols), staging / "pairs.parquet", row_group_size=ROW_GROUP)
        thumbs = [(i, m.thumbnail) for i, m in zip(pset.ids, metas) if m is not None]
        if thumbs:
            pq.write_table(pa.table({"id": [t[0] for t in thumbs], "thumbnail": pa.array([t[1] for t in thumbs], pa.binary())}),
                           staging / "thumbs.parquet", row_group_size=THUMB_GROUP)
        dim = None
        if pset.has_vectors:
            dim = int(pset.image_vectors.shape[1])
            if pset.vectors_dir is None:  # vectors held in memory (a loader that did not stream them)
                from .arrays import save_rows, stored_dtype

                for m, arr in (("image", pset.image_vectors), ("text", pset.text_vectors)):
                    save_rows(staging / "vectors" / f"{m}.npy", arr, stored_dtype())
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": report.source,
            "format": report.format,
            "pairs": len(pset),
            "captions": sum(len(c) for c in pset.captions),
            "images": sum(m is not None for m in metas),
            "images_stored": "copied" if copied else "referenced",
            "vector_model": pset.vector_model if pset.has_vectors else None,
            "dim": dim,
            "vector_dtype": str(open_array(staging / "vectors" / "image.npy").dtype) if pset.has_vectors else None,
            "extras": list(pset.extras),
            "content_hash": digest,
            "report": report.to_dict(),
        }
        for f in staging.rglob("*"):  # make the version durable before it becomes current
            if f.is_file() and f.suffix in (".parquet",):
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        atomic_write_json(staging / "manifest.json", manifest)

    def _clean_stale(self, ds_dir: Path, keep: str | None = None) -> None:
        """Remove versions that CURRENT no longer names, and staging left by dead imports (a
        running import's lock is held, so its staging stays)."""
        current = self._current(ds_dir.name)
        keep = keep or (current.name if current else None)
        for p in ds_dir.iterdir():
            if p.name.startswith("v-") and p.name != keep and keep is not None:
                shutil.rmtree(p, ignore_errors=True)
        remove_dead_staging(ds_dir)


def has_image(table) -> np.ndarray:
    """(N,) bool: the rows of a dataset table that have an image file (a sha256 of its bytes);
    sets of imported vectors have none."""
    return np.array([isinstance(k, str) and len(k) == 64 for k in table["image_sha256"].tolist()], dtype=bool)


def image_id_finder(ds: "Dataset"):
    """find(image value) -> (dataset id, "") or (None, why): what a user's table names an image
    by, matched to the dataset's ids: by id (a whole number written as 17.0 counts as id 17),
    then stored or absolute path, then file name (the path's last part, unique in the dataset;
    a value with folders must end the stored path)."""
    t = ds.table(["id", "image"])
    ids = set(t["id"])
    by_path: dict[str, str] = {}
    by_base: dict[str, list[tuple[str, str]]] = {}
    for id_, ref in zip(t["id"], t["image"]):
        if isinstance(ref, str) and ref:
            by_path[ref] = id_
            if Path(ref).is_absolute() or getattr(ds, "path", None) is not None:  # also its full path
                by_path[str(Path(ref) if Path(ref).is_absolute() else ds.path / ref)] = id_
            by_base.setdefault(ref.rsplit("/", 1)[-1], []).append((ref, id_))

    def find(value: str) -> tuple[str | None, str]:
        v = value.replace("\\", "/")
        if v not in ids and re.fullmatch(r"\d+\.0+", v) and v.split(".")[0] in ids:
            v = v.split(".")[0]  # a spreadsheet's 391895.0 is the image id 391895
        id_ = v if v in ids else by_path.get(v)
        if id_ is not None:
            return id_, ""
        hits = by_base.get(v.rsplit("/", 1)[-1], [])
        if "/" in v:  # a value with folders must end the stored path
            hits = [h for h in hits if h[0].endswith("/" + v.lstrip("./"))]
        if len(hits) > 1:
            return None, (f"file name {value!r} fits {len(hits)} images of dataset {ds.name} ({hits[0][1]}, "
                          f"{hits[1][1]}, ...): give the image id instead")
        if hits:
            return hits[0][1], ""
        return None, f"no image with id or file name {value!r} in dataset {ds.name}"

    return find
