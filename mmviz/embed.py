"""The embedding engine: a dataset's images and captions through a model, with a cache.

`embed_dataset(ws, dataset, spec)` returns L2-normalised vectors aligned with the dataset's
ids, as read-only memory maps in the stored dtype (float16 unless MMVIZ_VECTOR_DTYPE says
float32). Everything already in the workspace's embedding cache (same model fingerprint,
same image bytes or caption text) is reused; the rest is computed in batches (images decoded
in DataLoader workers, `torch.inference_mode`, fp16 on GPU) and written to the cache every
few hundred items, so an interrupted job resumes where it stopped. The finished set is then
assembled in the dataset's row order (`EmbeddingCache.assemble_set`), which is what every
later open reads.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .arrays import stored_dtype
from .models import LoadedModel, load_model, resolve
from .store import Dataset, Workspace, has_image, precomputed_fingerprint, text_key
from .vector_cache import EmbeddingCache

# progress(done, total, stage): stage is "images" or "captions"; total counts uncached items.
EmbedProgress = Callable[[int, int, str], None]
FLUSH_EVERY = 512  # items per cache shard while a job runs


@dataclass
class Embeddings:
    """Vectors of one dataset under one model. `image[i]` belongs to `ids[i]`; `text` holds
    every caption, `text_owner[j]` being the row its image is at; `paired_text` the first
    caption of each row. Rows whose image could not be embedded are left out (`skipped`)."""

    model: str
    fingerprint: str
    ids: list[str]
    image: np.ndarray
    text: np.ndarray
    text_owner: np.ndarray
    captions: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    computed: dict[str, int] = field(default_factory=dict)  # items embedded now, per modality
    cached: dict[str, int] = field(default_factory=dict)  # items found in the cache
    seconds: float = 0.0
    cache_path: str = ""
    dataset_key: str = ""  # content hash of the dataset version
    rows: np.ndarray | None = None  # dataset table row of each image (None: row i is image i)

    @property
    def table_rows(self) -> np.ndarray:
        """The dataset table row of each image row (rows whose image failed are left out)."""
        return np.arange(len(self.ids)) if self.rows is None else self.rows

    def captions_of(self, image_row: int) -> range:
        """Indices into `text` of one image's captions (text_owner is in image order)."""
        return range(int(np.searchsorted(self.text_owner, image_row, "left")),
                     int(np.searchsorted(self.text_owner, image_row, "right")))

    @property
    def key_parts(self) -> dict:
        """What names these vectors in the workspace's caches (layouts, metrics)."""
        return {"dataset": self.dataset_key, "model": self.fingerprint}

    @property
    def paired_rows(self) -> np.ndarray:
        """Index into `text` of each image's first caption."""
        return np.unique(self.text_owner, return_index=True)[1]

    @property
    def paired_text(self) -> np.ndarray:
        """Each image's first caption vector (the whole `text` when there is one per image)."""
        first = self.paired_rows
        if len(first) == len(self.text) and np.array_equal(first, np.arange(len(self.text))):
            return self.text  # no copy of a large memory map
        return self.text[first]

    @property
    def dim(self) -> int:
        return int(self.image.shape[1])


def split_preprocess(preprocess):
    """Split open_clip's Compose(..., ToTensor(), Normalize()) into a per-image part that ends
    in a uint8 tensor and a batched float conversion + normalisation: the same arithmetic,
    done once per batch, with a quarter of the bytes crossing from the decoding workers.
    Returns (per_image, per_batch or None when the pipeline has another shape)."""
    from torchvision import transforms as T

    steps = getattr(preprocess, "transforms", None)
    if not steps or len(steps) < 2 or not isinstance(steps[-2], T.ToTensor) or not isinstance(steps[-1], T.Normalize):
        return preprocess, None
    norm = steps[-1]
    per_image = T.Compose(list(steps[:-2]) + [T.PILToTensor()])

    def per_batch(x):
        import torch

        mean = torch.as_tensor(norm.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(norm.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return (x.float().div_(255) - mean) / std

    return per_image, per_batch


class _ImageFiles:
    """Map-style dataset: path -> preprocessed tensor, or None when the file fails to decode."""

    def __init__(self, paths: list[str], preprocess):
        from .data import ImportLimits

        self.paths, self.preprocess = paths, preprocess
        self.max_pixels = ImportLimits.from_env().max_pixels  # as at import (workers are new processes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image, ImageOps

        from .data.images import pillow_pixel_limit

        pillow_pixel_limit(self.max_pixels)
        try:
            with Image.open(self.paths[i]) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                return i, self.preprocess(im), ""
        except Exception as e:  # corrupt or vanished since import: reported, never fatal
            return i, None, f"{type(e).__name__}: {e}"


def _collate(batch):
    import torch

    ok = [(i, x) for i, x, _ in batch if x is not None]
    bad = [(i, err) for i, x, err in batch if x is None]
    idx = [i for i, _ in ok]
    return idx, (torch.stack([x for _, x in ok]) if ok else None), bad


def default_workers() -> int:
    return min(4, max(0, (os.cpu_count() or 1) - 1))


def encode_images(loaded: LoadedModel, paths: list[str], batch_size: int = 64, workers: int | None = None,
                  on_batch: Callable[[list[int], np.ndarray, list[tuple[int, str]]], None] | None = None) -> None:
    """Encode image files; `on_batch(indices, vectors, failures)` receives each batch."""
    import torch
    from torch.utils.data import DataLoader

    workers = default_workers() if workers is None else workers
    per_image, per_batch = split_preprocess(loaded.preprocess)
    loader = DataLoader(_ImageFiles(paths, per_image), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, pin_memory=loaded.device.type == "cuda")
    with torch.inference_mode():
        for idx, x, bad in loader:
            vecs = np.zeros((0, loaded.embed_dim), dtype=np.float32)
            if x is not None:
                x = x.to(loaded.device, non_blocking=True)
                x = per_batch(x) if per_batch else x
                feats = loaded.model.encode_image(x.to(dtype=loaded.dtype))
                vecs = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
            on_batch(idx, vecs, bad)


def _trimmable(model) -> bool:
    """A causal CLIP text tower pooled at the end-of-text token (OpenAI CLIP, most open_clip
    models): its output cannot depend on the padding after that token."""
    return (hasattr(model, "token_embedding") and getattr(model, "attn_mask", None) is not None
            and getattr(model, "text_pool_type", "") == "argmax")


def _encode_text_trimmed(model, ids):
    """CLIP.encode_text on token ids cut after the batch's last end-of-text token. The causal
    mask keeps every kept position blind to the cut ones, so the result is the same, at the
    cost of the caption's length instead of the full context (77 tokens for most CLIPs)."""
    import torch

    n = int(ids.argmax(dim=-1).max()) + 1
    ids = ids[:, :n]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(ids).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = x[torch.arange(len(x), device=x.device), ids.argmax(dim=-1)]
    proj = model.text_projection
    return proj(x) if isinstance(proj, torch.nn.Linear) else (x @ proj if proj is not None else x)


def encode_texts(loaded: LoadedModel, texts: list[str], batch_size: int = 256,
                 on_batch: Callable[[list[int], np.ndarray], None] | None = None) -> np.ndarray | None:
    """Encode captions; with `on_batch(indices, vectors)` each batch is handed over, else all
    are returned in order. Captions are batched by length so that, for causal CLIP text
    towers, each batch runs only as many positions as its longest caption needs."""
    import torch

    model = loaded.model
    ids = loaded.tokenizer(texts) if texts else None
    trim = _trimmable(model)
    order = np.argsort(ids.argmax(dim=-1).numpy(), kind="stable") if trim and ids is not None else np.arange(len(texts))
    out = np.zeros((len(texts), loaded.embed_dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = ids[torch.as_tensor(idx)].to(loaded.device)
            feats = _encode_text_trimmed(model, batch) if trim else model.encode_text(batch)
            vecs = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
            if on_batch:
                on_batch(idx.tolist(), vecs)
            else:
                out[idx] = vecs
    return None if on_batch else out


class _Pending:
    """Vectors computed but not yet cached: written as one shard every FLUSH_EVERY items, so
    an interrupted job loses at most that many."""

    def __init__(self, cache: EmbeddingCache, modality: str, set_size: int):
        # set_size: images + captions of the whole set, so every shard of a job gets the
        # dtype the set's size asks for (arrays.stored_dtype), whatever the shard's own size
        self.cache, self.modality, self.keys, self.vecs, self.set_size = cache, modality, [], [], set_size

    def add(self, keys: list[str], vecs: np.ndarray) -> None:
        self.keys.extend(keys)
        self.vecs.append(vecs)
        if len(self.keys) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.keys:
            vecs = np.concatenate(self.vecs)
            self.cache.put(self.modality, self.keys, vecs, stored_dtype(None, self.set_size * vecs.shape[1] * 4))
            self.keys, self.vecs = [], []


def _precomputed(ws: Workspace, ds: Dataset) -> Embeddings:
    """A set of imported vectors: its own stored vectors, memory-mapped."""
    name = ds.manifest["vector_model"]
    img, txt = ds.vectors()
    ids = ds.ids()
    caps = [c[0] for c in ds.caption_lists()]
    n = len(ids)
    fp = precomputed_fingerprint(name)
    return Embeddings(name, fp, ids, img, txt, np.arange(n), caps,
                      cached={"images": n, "captions": n}, computed={"images": 0, "captions": 0},
                      cache_path=str(ds.path / "vectors"), dataset_key=ds.key)


def _from_set(ds: Dataset, cache: EmbeddingCache, aligned: dict, model: str, t0: float,
              computed: dict | None = None, cached: dict | None = None) -> Embeddings:
    """Embeddings of an assembled set: memory maps in the dataset's row order."""
    rows = aligned["rows"]
    ids_all = ds.ids()
    caps_all = ds.caption_lists()
    info = aligned["info"]
    owner = np.repeat(np.arange(len(rows)), [len(caps_all[r]) for r in rows])
    return Embeddings(model=model, fingerprint=cache.fingerprint, ids=[ids_all[r] for r in rows],
                      image=aligned["image"], text=aligned["text"], text_owner=owner,
                      captions=[c for r in rows for c in caps_all[r]],
                      skipped=[tuple(x) for x in info.get("skipped", [])],
                      computed=computed or {"images": 0, "captions": 0},
                      cached=cached or {"images": info.get("images", len(rows)), "captions": info.get("captions", 0)},
                      seconds=time.time() - t0, cache_path=str(cache.path), dataset_key=ds.key, rows=rows)


def embed_dataset(ws: Workspace, ds: Dataset, model: str | LoadedModel, *, batch_size: int = 64,
                  workers: int | None = None, device: str | None = None,
                  progress: EmbedProgress | None = None, rank: int = 0, world_size: int = 1,
                  barrier: Callable[[], None] | None = None) -> Embeddings:
    """Embed `ds` with `model` (a spec or a loaded model), using and filling the cache.

    A dataset of imported vectors asked for under its own model name returns them as stored.

    Several processes (torchrun; nodes sharing the workspace folder) split the work: each
    finds what the cache lacks, then, after `barrier()`, embeds every `world_size`-th missing
    image and caption starting at its `rank` and writes its own shards; after the next
    barrier rank 0 assembles the set, and after the last one every process opens it. The
    shards are content-keyed, so the vectors are the same as one process's, and a killed
    process's finished shards are kept for the rerun.
    """
    t0 = time.time()
    if isinstance(model, str) and model == ds.manifest.get("vector_model"):
        return _precomputed(ws, ds)
    # Only build the model when something is missing: a fully cached run needs the fingerprint only.
    resolved = model if isinstance(model, LoadedModel) else resolve(model)
    cache = EmbeddingCache(ws, resolved.fingerprint)
    _loaded: list[LoadedModel] = [model] if isinstance(model, LoadedModel) else []

    def loaded() -> LoadedModel:
        if not _loaded:
            _loaded.append(load_model(resolved.spec, device))
        if not (cache.path / "model.json").exists():
            m = _loaded[0]
            EmbeddingCache(ws, m.fingerprint, {"spec": m.name, "dim": m.embed_dim, "weights": m.weights})
        return _loaded[0]

    t = ds.table()
    ids = t["id"].tolist()
    img_keys = t["image_sha256"].tolist()
    with_image = has_image(t)
    if not any(with_image):
        raise ValueError(f"dataset {ds.name} has no images to embed; it holds vectors from "
                         f"{ds.manifest.get('vector_model')!r}: embed it under that name")
    captions = [c for caps in t["captions"] for c in caps]
    owner_all = np.repeat(np.arange(len(ids)), [len(c) for c in t["captions"]])
    txt_keys = [text_key(c) for c in captions]
    skipped: list[tuple[str, str]] = [(i, "no image") for i, h in zip(ids, with_image) if not h]

    # what the cache lacks, found by every process before any of them writes a shard
    todo_all = cache.missing("image", [k for k, h in zip(img_keys, with_image) if h])
    ttodo_all = cache.missing("text", txt_keys)
    if barrier is not None:
        barrier()
    todo, ttodo = todo_all[rank::world_size], ttodo_all[rank::world_size]

    # images: embed each missing content hash once (duplicates share a file)
    first_row = {}
    for row, k in enumerate(img_keys):
        first_row.setdefault(k, row)
    paths = [str(ds.image_path(first_row[k])) for k in todo]
    failed: dict[str, str] = {}
    set_size = int(with_image.sum()) + len(txt_keys)
    pending, done = _Pending(cache, "image", set_size), 0

    def on_image_batch(idx, vecs, bad):
        nonlocal done
        pending.add([todo[i] for i in idx], vecs)
        failed.update((todo[i], err) for i, err in bad)
        done += len(idx) + len(bad)
        if progress:
            progress(done, len(todo), "images")

    if todo:
        if progress:
            progress(0, len(todo), "images")
        encode_images(loaded(), paths, batch_size, workers, on_image_batch)
        pending.flush()

    # captions
    tfirst = {}
    for j, k in enumerate(txt_keys):
        tfirst.setdefault(k, j)
    texts = [captions[tfirst[k]] for k in ttodo]
    tpending, tdone = _Pending(cache, "text", set_size), 0

    def on_text_batch(idx, vecs):
        nonlocal tdone
        tpending.add([ttodo[i] for i in idx], vecs)
        tdone += len(idx)
        if progress:
            progress(tdone, len(ttodo), "captions")

    if ttodo:
        if progress:
            progress(0, len(ttodo), "captions")
        encode_texts(loaded(), texts, max(batch_size, 128), on_text_batch)
        tpending.flush()

    if barrier is not None:  # every process's shards are on disk
        barrier()
    # which rows made it: an image in the cache (failures are reported, never cached)
    in_cache = set(k for k, h in zip(img_keys, with_image) if h) - set(cache.missing("image", [
        k for k, h in zip(img_keys, with_image) if h]))
    for row, (k, h) in enumerate(zip(img_keys, with_image)):
        if h and k not in in_cache:
            skipped.append((ids[row], f"image could not be decoded: {failed.get(k, 'unknown error')}"))
    rows = np.array([r for r, (k, h) in enumerate(zip(img_keys, with_image)) if h and k in in_cache], dtype=np.int64)
    caps_of = t["captions"].tolist()
    # Counted per distinct image/caption over all processes, so computed + cached = what the
    # set needs embedded (a failed image is neither).
    computed = {"images": len(set(todo_all) & in_cache), "captions": len(ttodo_all)}
    cached = {"images": len({k for k, h in zip(img_keys, with_image) if h} - set(todo_all)),
              "captions": len(set(txt_keys) - set(ttodo_all))}
    aligned = cache.open_set(ds.key)
    if rank == 0 and (aligned is None or not np.array_equal(aligned["rows"], rows)):
        if progress:
            progress(0, 1, "assembling")
        aligned = cache.assemble_set(
            ds.key, [img_keys[r] for r in rows], [text_key(c) for r in rows for c in caps_of[r]], rows,
            {"model": resolved.spec.raw, "skipped": skipped, "images": len(rows)},
            progress=(lambda d, n: progress(d, n, "assembling")) if progress else None)
    if barrier is not None:  # rank 0 has assembled the set
        barrier()
        aligned = cache.open_set(ds.key)
    return _from_set(ds, cache, aligned, resolved.spec.raw, t0, computed, cached)


def cache_status(ws: Workspace, ds: Dataset, model: str) -> dict:
    """How much of `ds` the cache already holds for `model`, without loading the model:
    {"images", "images_cached", "captions", "captions_cached", "cache_path"}."""
    n = len(ds)
    if model == ds.manifest.get("vector_model"):
        return {"images": n, "images_cached": n, "captions": n, "captions_cached": n,
                "cache_path": str(ds.path / "vectors")}
    cache = EmbeddingCache(ws, resolve(model, download=False).fingerprint)
    t = ds.table(["image_sha256", "captions"])
    img_keys = t["image_sha256"][has_image(t)].tolist()
    n_caps = int(sum(len(c) for c in t["captions"]))
    aligned = cache.open_set(ds.key)
    if aligned is not None and not aligned["info"].get("skipped"):  # assembled whole: all of it is cached
        return {"images": len(img_keys), "images_cached": len(img_keys), "captions": n_caps,
                "captions_cached": n_caps, "cache_path": str(cache.path)}
    txt_keys = [text_key(c) for caps in t["captions"] for c in caps]
    miss_i, miss_t = set(cache.missing("image", img_keys)), set(cache.missing("text", txt_keys))
    return {"images": len(img_keys), "images_cached": sum(k not in miss_i for k in img_keys),
            "captions": n_caps, "captions_cached": sum(k not in miss_t for k in txt_keys),
            "cache_path": str(cache.path)}


# Held while a tower's output_tokens flag is flipped for one call (towers whose token path
# cannot be run without it): two threads flipping it at once would restore each other's value.
_OUTPUT_TOKENS_LOCK = threading.Lock()


def image_tokens(loaded: LoadedModel, images, layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Patch-token features of preprocessed images (B, 3, H, W): (tokens (B, P, W) float32,
    mask (B, P) bool), the class token excluded, before pooling and projection; the regions
    for BAN.

    `layer` None: the vision transformer's last-layer outputs as its forward gives them (after
    ln_post, for open_clip's default pooling). An int k (0 <= k <= the number of residual
    blocks): the tokens after the first k blocks of `visual.transformer.resblocks`, run with
    the ViT's own embedding steps (conv1, flatten, class token + positional embedding, patch
    dropout, ln_pre, as open_clip's VisionTransformer._embeds) and WITHOUT ln_post, so k equal
    to the number of blocks is the last layer's tokens before ln_post (the raw residual
    stream; intermediate layers have no final norm of their own)."""
    import torch

    visual = loaded.model.visual
    if not hasattr(visual, "output_tokens"):
        raise ValueError(f"{loaded.name}: patch tokens need a vision transformer, not {type(visual).__name__}")
    x = images.to(loaded.device, dtype=loaded.dtype)
    if layer is None and hasattr(visual, "_embeds") and hasattr(visual, "_pool"):
        # open_clip's VisionTransformer.forward up to its pooling, which returns (pooled, tokens).
        # Not `output_tokens = True` around forward: the model is shared by every page and
        # session of the app, and another thread calling it meanwhile would get the wrong output.
        with torch.inference_mode():
            _, tokens = visual._pool(visual.transformer(visual._embeds(x)))
    elif layer is None:
        with _OUTPUT_TOKENS_LOCK:  # other vision towers: flip the flag, one thread at a time
            old = visual.output_tokens
            visual.output_tokens = True
            try:
                with torch.inference_mode():
                    _, tokens = visual(x)
            finally:
                visual.output_tokens = old
    else:
        blocks = visual.transformer.resblocks
        if not hasattr(visual, "_embeds") or not 0 <= layer <= len(blocks):
            raise ValueError(f"{loaded.name}: layer {layer} is not one of 0..{len(blocks)} of its vision transformer")
        with torch.inference_mode():
            h = visual._embeds(x)  # (B, 1 + P, W): class token first
            batch_first = getattr(visual.transformer, "batch_first", True)
            if not batch_first:
                h = h.transpose(0, 1)
            for block in blocks[:layer]:
                h = block(h)
            if not batch_first:
                h = h.transpose(0, 1)
            tokens = h[:, 1:]
    tokens = tokens.float().cpu().numpy()
    return tokens, np.ones(tokens.shape[:2], dtype=bool)


def text_tokens(loaded: LoadedModel, texts: list[str], inputs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-token text features: (tokens (B, L, W) float32, mask (B, L) bool, true from the
    start token through the end-of-text token). The text transformer's last-layer outputs
    after its final layer norm, before pooling and projection; the words for BAN.

    `inputs`: tokens (B, L, 2W), the last-layer outputs followed by the transformer's input
    (token + positional embedding) layer-normalised without gain, so both halves have the
    scale of ln_final's output. Why: after the text transformer's layers the last-layer tokens
    of "left" and "right" in a question are nearly the same vector (cosine about 0.97 on the
    builtin model, 4 layers), while the input still says which word it is and where it stands."""
    import torch
    import torch.nn.functional as F

    m = loaded.model
    ids = loaded.tokenizer(texts).to(loaded.device)
    with torch.inference_mode():
        if hasattr(m, "token_embedding"):  # open_clip CLIP: the steps of CLIP.encode_text up to pooling
            cast = m.transformer.get_cast_dtype()
            x0 = m.token_embedding(ids).to(cast) + m.positional_embedding.to(cast)
            x = m.ln_final(m.transformer(x0, attn_mask=m.attn_mask))
        elif hasattr(m, "text") and hasattr(m.text, "output_tokens"):
            if inputs:
                raise ValueError(f"{loaded.name}: input word embeddings are only read from open_clip's CLIP text "
                                 f"tower, not {type(m.text).__name__}")
            with _OUTPUT_TOKENS_LOCK:
                old = m.text.output_tokens
                m.text.output_tokens = True
                try:
                    _, x = m.text(ids)
                finally:
                    m.text.output_tokens = old
        else:
            raise ValueError(f"{loaded.name}: no per-token text features for {type(m).__name__}")
        if inputs:
            x = torch.cat([x.float(), F.layer_norm(x0.float(), x0.shape[-1:])], dim=-1)
    eot = ids.argmax(dim=-1)  # CLIP's end-of-text token has the largest id in the vocabulary
    mask = torch.arange(ids.shape[1], device=ids.device)[None, :] <= eot[:, None]
    return x.float().cpu().numpy(), mask.cpu().numpy()


def stored_embeddings(ws: Workspace, ds: Dataset, model: str) -> Embeddings | None:
    """The dataset's vectors under `model` if the cache already holds them (no model is built,
    nothing is computed), else None. A set that came with vectors and has no images answers
    with its own vectors whatever `model` is asked for. An assembled set is opened as it is,
    with the rows whose image failed to decode listed in `skipped`."""
    vm = ds.manifest.get("vector_model")
    if vm and (model == vm or not ds.manifest.get("images")):
        return _precomputed(ws, ds)
    cache = EmbeddingCache(ws, resolve(model, download=False).fingerprint)
    aligned = cache.open_set(ds.key)
    if aligned is not None:
        return _from_set(ds, cache, aligned, model, time.time())
    status = cache_status(ws, ds, model)
    if status["images_cached"] < status["images"] or status["captions_cached"] < status["captions"]:
        return None
    return embed_dataset(ws, ds, model)
