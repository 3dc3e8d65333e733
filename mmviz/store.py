"""The workspace: a folder holding imported datasets (and, later, embeddings, layouts, runs).

Layout (default `~/.mmviz`, or `$MMVIZ_HOME`)::

    datasets/<name>/CURRENT          -> "v-<content hash>"
    datasets/<name>/v-<hash>/        manifest.json, pairs.parquet, thumbs.parquet,
                                     vectors.npz (precomputed sets), files/ (copied images)

A dataset version is built in a staging folder and renamed into place whole; `CURRENT` is
then replaced atomically. A crash at any point leaves the previous version readable, and
re-importing identical data is a no-op (same content hash).
"""
from __future__ import annotations

import datetime as _dt
import io
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import DataFormatError, ImportLimits, ImportReport, PairedSet, Progress, copy_tree_files, load

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FORMAT_VERSION = 1


def default_home() -> Path:
    return Path(os.environ.get("MMVIZ_HOME") or Path.home() / ".mmviz").expanduser()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str).encode("utf-8"))


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


def content_hash(pset: PairedSet) -> str:
    h = hashlib.sha256()
    rows = {
        "ids": pset.ids,
        "images": [im if isinstance(im, str) or im is None else hashlib.sha256(im).hexdigest() for im in pset.images],
        "image_sha256": [m.sha256 if m else None for m in pset.image_meta],
        "captions": pset.captions,
        "extras": pset.extras,
        "vector_model": pset.vector_model,
    }
    h.update(json.dumps(rows, sort_keys=True, default=str).encode("utf-8"))
    for arr in (pset.image_vectors, pset.text_vectors):
        if arr is not None:
            h.update(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
    return h.hexdigest()


def text_key(caption: str) -> str:
    """Cache key of a caption: sha256 of its exact UTF-8 text."""
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()


def precomputed_fingerprint(model_name: str) -> str:
    return hashlib.sha256(f"precomputed/{model_name}".encode()).hexdigest()[:20]


def precomputed_keys(content_hash: str, ids: list[str], modality: str) -> list[str]:
    """Keys of imported vectors: they belong to one dataset's rows, not to content that any
    model could re-embed, so they are namespaced by the dataset version."""
    return [hashlib.sha256(f"{content_hash}/{i}/{modality}".encode()).hexdigest() for i in ids]


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


class Dataset:
    """One stored dataset version, read-only. Load tables lazily; cheap to construct."""

    def __init__(self, name: str, path: Path):
        self.name = name
        self.path = Path(path)
        self.manifest: dict = json.loads((self.path / "manifest.json").read_text("utf-8"))
        self._table = None

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, {len(self)} pairs)"

    def __len__(self) -> int:
        return int(self.manifest["pairs"])

    @property
    def report(self) -> ImportReport:
        return ImportReport.from_dict(self.manifest["report"])

    def table(self):
        """DataFrame with id, image, captions (list), image_sha256, width, height and extras."""
        if self._table is None:
            import pyarrow.parquet as pq

            self._table = pq.read_table(self.path / "pairs.parquet").to_pandas()
            self._table["captions"] = self._table["captions"].map(list)
        return self._table

    def thumbnails(self) -> dict[str, bytes]:
        import pyarrow.parquet as pq

        p = self.path / "thumbs.parquet"
        if not p.exists():
            return {}
        t = pq.read_table(p).to_pydict()
        return dict(zip(t["id"], t["thumbnail"]))

    def image_path(self, id_or_index) -> Path | None:
        t = self.table()
        # Ids are strings, so any integer (NumPy's included) is a row position.
        by_pos = isinstance(id_or_index, (int, np.integer))
        row = t.iloc[int(id_or_index)] if by_pos else t.loc[t["id"] == id_or_index].iloc[0]
        ref = row["image"]
        if ref is None or (isinstance(ref, float) and np.isnan(ref)):
            return None
        p = Path(ref)
        return p if p.is_absolute() else self.path / p

    def vectors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Precomputed (image, text) vectors aligned with `table()` rows, if imported."""
        p = self.path / "vectors.npz"
        if not p.exists():
            return None
        with np.load(p, allow_pickle=False) as z:
            return z["image"], z["text"]

    def search(self, query: str):
        """Rows with a caption containing `query` (case-insensitive substring) or a matching id."""
        return search_pairs(self.table(), query)


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

    def delete(self, name: str) -> None:
        src = self.datasets_dir / valid_name(name)
        if not self.exists(name):
            raise KeyError(f"no dataset named {name!r} in {self.home}")
        trash = self.datasets_dir / f".trash-{name}-{uuid.uuid4().hex[:8]}"
        os.rename(src, trash)  # atomic: the name disappears whole, then we clean up
        shutil.rmtree(trash, ignore_errors=True)

    def import_path(self, path: str | os.PathLike, name: str | None = None, *, copy_images: bool | None = None,
                    images_dir: str | os.PathLike | None = None, captions_file: str | os.PathLike | None = None,
                    model_name: str | None = None, limits: ImportLimits | None = None,
                    progress: Progress | None = None, source_label: str | None = None) -> ImportResult:
        """Import what `path` points at as dataset `name` (default: from the path).

        Images from a zip are always stored in the workspace; from a local folder they are
        referenced in place unless `copy_images` is true. `source_label` replaces the path in
        the report (an upload's temporary path means nothing to the user).
        """
        path = Path(path).expanduser()
        name = valid_name(name or name_from_path(path))
        limits = limits or ImportLimits.from_env()
        ds_dir = self.datasets_dir / name
        ds_dir.mkdir(parents=True, exist_ok=True)
        self._clean_stale(ds_dir)
        staging = ds_dir / f".staging-{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        try:
            is_zip = path.is_file() and path.suffix.lower() == ".zip"
            pset, report = load(path, extract_to=staging / "extract" if is_zip else None,
                                images_dir=Path(images_dir) if images_dir else None,
                                captions_file=Path(captions_file) if captions_file else None,
                                model_name=model_name, limits=limits, progress=progress)
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
            current = self._current(name)
            if current is not None and current.name == f"v-{digest[:16]}":
                shutil.rmtree(staging, ignore_errors=True)
                return ImportResult(Dataset(name, current), report, "unchanged")
            self._write_version(staging, name, pset, report, digest, copied)
            version = ds_dir / f"v-{digest[:16]}"
            if version.exists():  # complete leftover of an import interrupted after its rename
                shutil.rmtree(version)
            os.rename(staging, version)
            if pset.has_vectors:  # the embedding cache holds them like any model's vectors
                cache = EmbeddingCache(self, precomputed_fingerprint(pset.vector_model),
                                       {"spec": pset.vector_model, "dim": int(pset.image_vectors.shape[1]),
                                        "precomputed": True})
                cache.put("image", precomputed_keys(digest, pset.ids, "image"), pset.image_vectors)
                cache.put("text", precomputed_keys(digest, pset.ids, "text"), pset.text_vectors)
            atomic_write_bytes(ds_dir / "CURRENT", version.name.encode())
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if self._current(name) is None and not any(ds_dir.glob("v-*")):
                shutil.rmtree(ds_dir, ignore_errors=True)
            raise
        self._clean_stale(ds_dir, keep=version.name)
        return ImportResult(Dataset(name, version), report, "updated" if current else "created")

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
        pq.write_table(pa.table(cols), staging / "pairs.parquet")
        thumbs = [(i, m.thumbnail) for i, m in zip(pset.ids, metas) if m is not None]
        if thumbs:
            pq.write_table(pa.table({"id": [t[0] for t in thumbs], "thumbnail": pa.array([t[1] for t in thumbs], pa.binary())}),
                           staging / "thumbs.parquet")
        dim = None
        if pset.has_vectors:
            np.savez(staging / "vectors.npz", image=pset.image_vectors, text=pset.text_vectors)
            dim = int(pset.image_vectors.shape[1])
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
            "extras": list(pset.extras),
            "content_hash": digest,
            "report": report.to_dict(),
        }
        for f in staging.rglob("*"):  # make the version durable before it becomes current
            if f.is_file() and f.suffix in (".parquet", ".npz"):
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        atomic_write_json(staging / "manifest.json", manifest)

    def _clean_stale(self, ds_dir: Path, keep: str | None = None) -> None:
        """Remove versions that CURRENT no longer names, and staging left by dead imports."""
        current = self._current(ds_dir.name)
        keep = keep or (current.name if current else None)
        for p in ds_dir.iterdir():
            if p.name.startswith("v-") and p.name != keep and keep is not None:
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(".staging-"):
                # Another import may be running right now; only clear what is clearly abandoned.
                try:
                    age = _dt.datetime.now().timestamp() - p.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age > 3600:
                    shutil.rmtree(p, ignore_errors=True)


class EmbeddingCache:
    """Vectors of one model, keyed by the content hash of what was embedded.

    Layout: `<home>/embeddings/<fingerprint>/<modality>/shard-*.npz`, each shard holding
    `keys` (sha256 hex of the image bytes or caption text) and `vectors` (float32), written
    atomically. A job adds a shard every few hundred items, so a killed job keeps what it
    finished and a rerun embeds only the rest. The same content under the same model is
    never embedded twice, whichever dataset it came from.
    """

    def __init__(self, workspace: "Workspace", fingerprint: str, info: dict | None = None):
        self.path = workspace.home / "embeddings" / fingerprint
        self.fingerprint = fingerprint
        self._index: dict[str, dict[bytes, tuple[Path, int]]] = {}
        if info is not None and not (self.path / "model.json").exists():
            atomic_write_json(self.path / "model.json", info)

    @property
    def info(self) -> dict:
        p = self.path / "model.json"
        return json.loads(p.read_text("utf-8")) if p.exists() else {}

    def _shards(self, modality: str) -> list[Path]:
        d = self.path / modality
        return sorted(d.glob("shard-*.npz")) if d.is_dir() else []

    def _load_index(self, modality: str) -> dict[bytes, tuple[Path, int]]:
        index = self._index.setdefault(modality, {})
        known = {p for p, _ in index.values()}
        for shard in self._shards(modality):
            if shard in known:
                continue
            with np.load(shard, allow_pickle=False) as z:
                for row, key in enumerate(z["keys"]):
                    index[bytes(key)] = (shard, row)
        return index

    def __len__(self) -> int:
        return sum(len(self._load_index(m)) for m in ("image", "text"))

    def missing(self, modality: str, keys: list[str]) -> list[str]:
        """The keys (deduplicated, in first-seen order) that have no vector yet."""
        index = self._load_index(modality)
        out, seen = [], set()
        for k in keys:
            kb = k.encode()
            if kb not in index and kb not in seen:
                seen.add(kb)
                out.append(k)
        return out

    def put(self, modality: str, keys: list[str], vectors: np.ndarray) -> None:
        if len(keys) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        assert len(keys) == len(vectors), (len(keys), vectors.shape)
        buf = io.BytesIO()
        np.savez(buf, keys=np.array(keys, dtype="S64"), vectors=vectors)
        shard = self.path / modality / f"shard-{uuid.uuid4().hex}.npz"
        atomic_write_bytes(shard, buf.getvalue())
        index = self._index.setdefault(modality, {})
        for row, k in enumerate(keys):
            index[k.encode()] = (shard, row)

    def get(self, modality: str, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, D) with zeros where missing, found mask (n,))."""
        index = self._load_index(modality)
        where = [index.get(k.encode()) for k in keys]
        found = np.array([w is not None for w in where], dtype=bool)
        dim = None
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, w in enumerate(where):
            if w is not None:
                by_shard.setdefault(w[0], []).append((i, w[1]))
        out = None
        for shard, pairs in by_shard.items():
            with np.load(shard, allow_pickle=False) as z:
                vecs = z["vectors"]
            if out is None:
                dim = vecs.shape[1]
                out = np.zeros((len(keys), dim), dtype=np.float32)
            rows_out, rows_in = zip(*pairs)
            out[list(rows_out)] = vecs[list(rows_in)]
        if out is None:
            out = np.zeros((len(keys), self.info.get("dim", 0)), dtype=np.float32)
        return out, found


def has_image(table) -> np.ndarray:
    """(N,) bool: the rows of a dataset table that have an image file (a sha256 of its bytes);
    sets of imported vectors have none."""
    return np.array([isinstance(k, str) and len(k) == 64 for k in table["image_sha256"].tolist()], dtype=bool)


def image_id_finder(ds: "Dataset"):
    """find(image value) -> (dataset id, "") or (None, why): what a user's table names an image
    by, matched to the dataset's ids: by id (a whole number written as 17.0 counts as id 17),
    then stored or absolute path, then file name (the path's last part, unique in the dataset;
    a value with folders must end the stored path)."""
    t = ds.table()
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
