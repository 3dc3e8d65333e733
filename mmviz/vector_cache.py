"""The embedding cache: vectors of one model, keyed by the content they came from.

Layout: `<home>/embeddings/<fingerprint>/`

    model.json                          what the fingerprint names (spec, dim, weights)
    <modality>/shard-<id>.vectors.npy   (n, D) vectors, in the stored dtype
    <modality>/shard-<id>.keys.npy      (n,) sha256 hex keys (image bytes / caption text)
    sets/<dataset content hash>/        one dataset version's vectors in its own row order:
        image.npy, text.npy, rows.npy (dataset row of each image row), info.json

A job writes a shard every few hundred items, vectors first and keys last, each renamed into
place: a shard without its keys file is incomplete and ignored, so a killed job keeps what it
finished and a rerun embeds only the rest. The same content under the same model is never
embedded twice, whichever dataset it came from. Shards of the older `shard-*.npz` form
(`keys` and `vectors` together) are still read.

A dataset's `sets/` folder is what pages read: assembled once from the shards, in chunks,
then opened as memory maps, so reopening a million-pair set costs no index and no copy.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np

from .arrays import NpyWriter, open_array, stored_dtype
from .atomic import STAGING_PREFIX, StagingFolder, atomic_write_bytes, atomic_write_json, fsync_dir
from .atomic import remove_dead_staging


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


class EmbeddingCache:
    """Vectors of one model, keyed by the content hash of what was embedded (see the module)."""

    def __init__(self, workspace, fingerprint: str, info: dict | None = None):
        self.path = Path(workspace.home) / "embeddings" / fingerprint
        self.fingerprint = fingerprint
        self._index: dict[str, dict[bytes, tuple[Path, int]]] = {}
        if info is not None and not (self.path / "model.json").exists():
            atomic_write_json(self.path / "model.json", info)

    @property
    def info(self) -> dict:
        p = self.path / "model.json"
        return json.loads(p.read_text("utf-8")) if p.exists() else {}

    def _shards(self, modality: str) -> list[Path]:
        """Complete shards: each keys file (written last) and the older .npz shards."""
        d = self.path / modality
        if not d.is_dir():
            return []
        return sorted(d.glob("shard-*.keys.npy")) + sorted(d.glob("shard-*.npz"))

    @staticmethod
    def _shard_keys(shard: Path) -> np.ndarray:
        if shard.name.endswith(".keys.npy"):
            return np.load(shard, allow_pickle=False)
        with np.load(shard, allow_pickle=False) as z:
            return z["keys"]

    @staticmethod
    def _shard_vectors(shard: Path) -> np.ndarray:
        if shard.name.endswith(".keys.npy"):
            return open_array(shard.with_name(shard.name.replace(".keys.npy", ".vectors.npy")))
        with np.load(shard, allow_pickle=False) as z:
            return z["vectors"]

    def _load_index(self, modality: str) -> dict[bytes, tuple[Path, int]]:
        index = self._index.setdefault(modality, {})
        known = {p for p, _ in index.values()}
        for shard in self._shards(modality):
            if shard in known:
                continue
            for row, key in enumerate(self._shard_keys(shard)):
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

    def put(self, modality: str, keys: list[str], vectors: np.ndarray, dtype=None) -> None:
        """Add a shard; `dtype` as arrays.stored_dtype (a job passes the one its size asks for)."""
        if len(keys) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=dtype or stored_dtype(None, vectors.nbytes))
        assert len(keys) == len(vectors), (len(keys), vectors.shape)
        stem = self.path / modality / f"shard-{uuid.uuid4().hex}"
        atomic_write_bytes(stem.with_name(stem.name + ".vectors.npy"), _npy_bytes(vectors))
        keys_file = stem.with_name(stem.name + ".keys.npy")
        atomic_write_bytes(keys_file, _npy_bytes(np.array(keys, dtype="S64")))  # last: the shard is complete
        index = self._index.setdefault(modality, {})
        for row, k in enumerate(keys):
            index[k.encode()] = (keys_file, row)

    def get(self, modality: str, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, D) float32 with zeros where missing, found mask (n,))."""
        index = self._load_index(modality)
        where = [index.get(k.encode()) for k in keys]
        found = np.array([w is not None for w in where], dtype=bool)
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, w in enumerate(where):
            if w is not None:
                by_shard.setdefault(w[0], []).append((i, w[1]))
        out = None
        for shard, pairs in by_shard.items():
            vecs = self._shard_vectors(shard)
            if out is None:
                out = np.zeros((len(keys), vecs.shape[1]), dtype=np.float32)
            rows_out, rows_in = zip(*pairs)
            out[list(rows_out)] = vecs[list(rows_in)]
        if out is None:
            out = np.zeros((len(keys), self.info.get("dim", 0)), dtype=np.float32)
        return out, found

    def _dim(self) -> int:
        if self.info.get("dim"):
            return int(self.info["dim"])
        for m in ("image", "text"):
            for shard in self._shards(m):
                return int(self._shard_vectors(shard).shape[1])
        return 0

    # -- one dataset's vectors, in its own row order ------------------------------------

    def set_path(self, dataset_key: str) -> Path:
        return self.path / "sets" / dataset_key

    def open_set(self, dataset_key: str) -> dict | None:
        """{"image", "text" (memory maps), "rows" (dataset row of each image row), "info"}
        of an assembled dataset version, or None when it was never assembled (or is damaged)."""
        d = self.set_path(dataset_key)
        try:
            info = json.loads((d / "info.json").read_text("utf-8"))
            out = {"image": open_array(d / "image.npy"), "text": open_array(d / "text.npy"),
                   "rows": np.load(d / "rows.npy", allow_pickle=False), "info": info}
        except (OSError, ValueError):
            return None
        if len(out["image"]) != len(out["rows"]) or len(out["text"]) != info.get("captions"):
            return None
        return out

    def assemble_set(self, dataset_key: str, image_keys: list[str], caption_keys: list[str], rows: np.ndarray,
                     info: dict, progress=None) -> dict:
        """Write a dataset version's vectors in its row order from the shards: `image_keys`
        per kept image row, `caption_keys` per caption of those rows. Chunk by chunk, into a
        staging folder renamed into place, so a reader finds the whole set or none."""
        final = self.set_path(dataset_key)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging_folder = StagingFolder(final.parent, f"{STAGING_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}")
        staging = staging_folder.path
        try:
            total, done = len(image_keys) + len(caption_keys), 0
            dt = stored_dtype(None, total * self._dim() * 4)
            for name, keys in (("image", image_keys), ("text", caption_keys)):
                writer = None
                for s in range(0, max(len(keys), 1), 16_384):
                    vecs, found = self.get(name, keys[s:s + 16_384])
                    if not found.all():
                        raise KeyError(f"{int((~found).sum())} {name} vectors missing from the cache {self.path}")
                    writer = writer or NpyWriter(staging / f"{name}.npy", vecs.shape[1] or self._dim(), dt)
                    writer.append(vecs)
                    done += len(vecs)
                    if progress:
                        progress(done, total)
                writer.close()
            np.save(staging / "rows.npy", np.asarray(rows, dtype=np.int64), allow_pickle=False)
            atomic_write_json(staging / "info.json", {**info, "captions": len(caption_keys)})
            try:
                staging.rename(final)
                fsync_dir(final.parent)
            except OSError:
                if not final.exists():
                    raise
                # another process assembled the same content; close() removes this copy
        finally:
            staging_folder.close()
        remove_dead_staging(final.parent)  # sets of killed processes
        return self.open_set(dataset_key)
