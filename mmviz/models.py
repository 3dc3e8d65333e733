"""One place that turns a model spec into a loaded open_clip model.

Specs:
    builtin:shapes                      mmviz's own small model (weights in assets/)
    ViT-B-32:laion2b_s34b_b79k          an open_clip architecture with a pretrained tag
    ViT-B-32:/path/to/weights.safetensors   an architecture with a local checkpoint (.pt/.pth/.bin/.safetensors)
    ViT-B-32:random                     the architecture with seeded random weights
    local-dir:/path/to/folder           an open_clip folder (open_clip_config.json + weights)
    hf-hub:org/repo                     an open_clip model on the Hugging Face hub

Pretrained weights are looked up in the local caches first; when they are missing and the
hub cannot be reached, loading fails in seconds with `ModelUnavailable` saying how to
fetch them once or point at a local file, instead of open_clip's long retry loop.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ._compat import import_open_clip

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUILTIN_DIR = ASSETS / "builtin-shapes"
BUILTIN_ARCH = "mmviz-shapes"  # open_clip config name, registered from BUILTIN_DIR
BUILTIN_SPEC = "builtin:shapes"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
# Shown in the app's model picker; any other valid spec can be typed in.
KNOWN_SPECS = (
    BUILTIN_SPEC,
    "ViT-B-32:openai",
    "ViT-B-32:laion2b_s34b_b79k",
    "ViT-B-16:laion2b_s34b_b88k",
    "ViT-L-14:openai",
    "RN50:openai",
    "ViT-B-32:random",
)


class ModelSpecError(ValueError):
    """A spec that cannot name a model."""


class ModelUnavailable(RuntimeError):
    """A valid spec whose weights are not here and cannot be fetched now."""


@dataclass(frozen=True)
class ModelSpec:
    raw: str
    kind: str  # builtin | pretrained | checkpoint | random | local-dir | hf-hub
    arch: str | None = None
    tag: str | None = None
    path: Path | None = None

    def __str__(self) -> str:
        return self.raw


def _open_clip():
    oc = import_open_clip()
    if BUILTIN_ARCH not in oc.list_models():
        oc.add_model_config(BUILTIN_DIR / f"{BUILTIN_ARCH}.json")
    return oc


def parse_spec(spec: str) -> ModelSpec:
    """Parse a model spec, checking architecture and tag names; files are checked at load."""
    raw = (spec or "").strip()
    if not raw:
        raise ModelSpecError("empty model spec; try builtin:shapes or ViT-B-32:laion2b_s34b_b79k")
    if raw.startswith("builtin:"):
        if raw != BUILTIN_SPEC:
            raise ModelSpecError(f"unknown builtin model {raw!r}; the builtin model is {BUILTIN_SPEC}")
        return ModelSpec(raw, "builtin", arch=BUILTIN_ARCH, path=BUILTIN_DIR / "model.safetensors")
    if raw.startswith("local-dir:"):
        rest = raw[len("local-dir:"):].strip()
        if not rest:  # Path("") is the working directory: never what was meant
            raise ModelSpecError(f"{raw!r}: expected local-dir:/path/to/folder (an open_clip folder)")
        return ModelSpec(raw, "local-dir", path=Path(rest).expanduser())
    if raw.startswith("hf-hub:"):
        org, _, repo = raw[len("hf-hub:"):].partition("/")
        if not org or not repo or "/" in repo:
            raise ModelSpecError(f"{raw!r}: expected hf-hub:ORG/REPO")
        return ModelSpec(raw, "hf-hub", tag=raw[len("hf-hub:"):])
    arch, sep, rest = raw.partition(":")
    oc = _open_clip()
    models = oc.list_models()
    if arch not in models:
        close = difflib.get_close_matches(arch, models, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
        raise ModelSpecError(f"unknown open_clip architecture {arch!r}{hint}")
    if not sep or not rest:
        raise ModelSpecError(f"{raw!r}: say which weights, e.g. {arch}:{_first_tag(oc, arch) or 'random'}, "
                             f"{arch}:/path/to/weights.safetensors or {arch}:random")
    if rest.lower() in ("random", "none"):
        return ModelSpec(raw, "random", arch=arch)
    if rest.lower().endswith(CHECKPOINT_SUFFIXES) or "/" in rest or os.sep in rest:
        return ModelSpec(raw, "checkpoint", arch=arch, path=Path(rest).expanduser())
    tags = oc.list_pretrained_tags_by_model(arch)
    if rest not in tags:
        raise ModelSpecError(f"{arch} has no pretrained tag {rest!r}; known tags: {', '.join(tags) or 'none'}")
    return ModelSpec(raw, "pretrained", arch=arch, tag=rest)


def _first_tag(oc, arch: str) -> str | None:
    tags = oc.list_pretrained_tags_by_model(arch)
    return tags[0] if tags else None


# ----------------------------------------------------------------------------------------
# where the weights are


def _cached_pretrained(arch: str, tag: str) -> str | None:
    """Path of the pretrained weights in the local caches (Hugging Face or open_clip's URL
    cache), or None. Never touches the network."""
    oc = _open_clip()
    cfg = oc.get_pretrained_cfg(arch, tag)
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        candidates = [filename] if filename else []
        candidates += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        for name in candidates:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    url = cfg.get("url", "")
    if url:
        target = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if target.is_file():
            return str(target)
    return None


def weights_status(spec: str | ModelSpec) -> tuple[bool, str]:
    """(present, where-or-why) for a spec, without network access and without loading."""
    try:
        s = spec if isinstance(spec, ModelSpec) else parse_spec(spec)
    except ModelSpecError as e:
        return False, str(e)
    if s.kind == "random":
        return True, "random weights (seeded)"
    if s.kind in ("builtin", "checkpoint"):
        return (True, str(s.path)) if s.path.is_file() else (False, f"no file at {s.path}")
    if s.kind == "local-dir":
        if not (s.path / "open_clip_config.json").is_file():
            return False, f"no open_clip_config.json in {s.path}"
        return (True, str(s.path)) if _dir_weights(s.path) else (False, f"no weights file in {s.path}")
    if s.kind == "pretrained":
        hit = _cached_pretrained(s.arch, s.tag)
        return (True, hit) if hit else (False, "not downloaded yet")
    if s.kind == "hf-hub":
        from huggingface_hub import try_to_load_from_cache

        for name in ("open_clip_config.json",):
            if isinstance(try_to_load_from_cache(s.tag, name), str):
                return True, f"Hugging Face cache ({s.tag})"
        return False, "not downloaded yet"
    return False, "unknown"


def _dir_weights(folder: Path) -> str | None:
    """The weights file open_clip loads from an open_clip folder (so that the fingerprint
    hashes the weights actually loaded), or None."""
    return _open_clip().factory._find_checkpoint_in_dir(Path(folder))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within `timeout` seconds.
    HF_HUB_OFFLINE=1 means no, without trying."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable(spec: ModelSpec) -> ModelUnavailable:
    return ModelUnavailable(
        f"weights for {spec.raw} are not in the local cache and the Hugging Face hub cannot be reached. "
        f"Fetch them once on a machine with internet (python -c \"import open_clip; "
        f"open_clip.create_model('{spec.arch or spec.tag}', pretrained='{spec.tag}')\") and copy the cache "
        f"(~/.cache/huggingface), or download the checkpoint file and use {spec.arch or 'ARCH'}:/path/to/file.safetensors. "
        f"{BUILTIN_SPEC} always works offline.")


# ----------------------------------------------------------------------------------------
# devices and loading


def pick_device(preference: str | None = None):
    """CUDA, then Apple MPS, then CPU; `preference` (or $MMVIZ_DEVICE) overrides."""
    import torch

    pref = (preference or os.environ.get("MMVIZ_DEVICE") or "auto").lower()
    if pref != "auto":
        return torch.device(pref)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: object  # open_clip CLIP, in eval mode, on `device`
    preprocess: Callable  # PIL image -> float tensor (3, H, W)
    tokenizer: Callable  # list[str] -> int tensor (N, context_length)
    device: object
    dtype: object
    fingerprint: str  # spec + weights hash: the embedding cache key
    weights: str | None  # file the weights came from

    @property
    def name(self) -> str:
        return self.spec.raw

    @property
    def embed_dim(self) -> int:
        import torch

        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[1])
        return int(self.model.visual.output_dim)


_hash_memo: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, memoised per (path, size, mtime) for the process."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _hash_memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        _hash_memo[key] = h.hexdigest()
    return _hash_memo[key]


def fingerprint(spec: ModelSpec, weights: str | None) -> str:
    h = hashlib.sha256(spec.raw.encode())
    if weights:
        h.update(file_sha256(weights).encode())
    return h.hexdigest()[:20]


_cache: dict[tuple[str, str, str], LoadedModel] = {}
_lock = threading.Lock()


def load_model(spec: str | ModelSpec, device: str | None = None) -> LoadedModel:
    """Load (once per process, device and weights) the model a spec names."""
    s = spec if isinstance(spec, ModelSpec) else parse_spec(spec)
    dev = pick_device(device)
    # The fingerprint is in the key: a checkpoint rewritten in place must not be served by the
    # old model, whose vectors would then be cached under the new weights' fingerprint.
    r = resolve(s)
    key = (s.raw, str(dev), r.fingerprint)
    with _lock:
        if key not in _cache:
            for old in [k for k in _cache if k[:2] == key[:2]]:  # superseded weights
                del _cache[old]
            _cache[key] = _load(s, dev, r)
        return _cache[key]


def build_model(spec: str | ModelSpec, device: str | None = None, precision: str = "fp32") -> LoadedModel:
    """A fresh, uncached copy of the model a spec names, in `precision`: for training, which
    must not change the shared instance that `load_model` hands to every page."""
    s = spec if isinstance(spec, ModelSpec) else parse_spec(spec)
    return _load(s, pick_device(device), resolve(s), precision)


def model_config(spec: str | ModelSpec) -> dict:
    """open_clip's model config (embed_dim, vision_cfg, text_cfg, ...) for a spec, as an
    open_clip folder's open_clip_config.json needs it. Reads local files only."""
    s = spec if isinstance(spec, ModelSpec) else parse_spec(spec)
    oc = _open_clip()
    if s.kind == "local-dir":
        return json.loads((s.path / "open_clip_config.json").read_text("utf-8"))["model_cfg"]
    if s.kind == "hf-hub":
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(s.tag, "open_clip_config.json")
        if not isinstance(hit, str):
            raise ModelUnavailable(f"{s.raw}: open_clip_config.json is not in the Hugging Face cache")
        return json.loads(Path(hit).read_text("utf-8"))["model_cfg"]
    cfg = oc.get_model_config(s.arch)
    if s.kind == "pretrained" and oc.get_pretrained_cfg(s.arch, s.tag).get("quick_gelu"):
        cfg["quick_gelu"] = True  # as _load builds it
    return cfg


def save_open_clip_folder(loaded: LoadedModel, folder: str | os.PathLike, model_cfg: dict,
                          extra: dict | None = None) -> Path:
    """Write `loaded.model` as an open_clip folder (open_clip_config.json with model_cfg and
    the preprocessing, plus open_clip_model.safetensors), loadable as `local-dir:FOLDER`
    anywhere a spec is taken. `extra` is stored in the config under "mmviz". Each file is
    replaced atomically."""
    from safetensors.torch import save_file

    from .store import atomic_write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    oc = _open_clip()
    state = {k: v.detach().float().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
    tmp = folder / ".open_clip_model.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, folder / "open_clip_model.safetensors")
    pp = {k: (list(v) if isinstance(v, tuple) else v) for k, v in oc.get_model_preprocess_cfg(loaded.model).items()}
    atomic_write_json(folder / "open_clip_config.json",
                      {"model_cfg": model_cfg, "preprocess_cfg": pp, **({"mmviz": extra} if extra else {})})
    return folder


@dataclass(frozen=True)
class Resolved:
    spec: ModelSpec
    weights: str | None  # the weights file, when there is one
    fingerprint: str


def resolve(spec: str | ModelSpec, download: bool = True) -> Resolved:
    """Find a spec's weights and fingerprint without building the model. Raises
    ModelUnavailable (fast) when they are missing and cannot be fetched now."""
    s = spec if isinstance(spec, ModelSpec) else parse_spec(spec)
    weights: str | None = None
    if s.kind == "builtin":
        if not s.path.is_file():
            raise ModelUnavailable(f"builtin weights missing at {s.path}; rebuild them with `mmviz builtin train`")
        weights = str(s.path)
    elif s.kind == "checkpoint":
        if not s.path.is_file():
            raise ModelUnavailable(f"no checkpoint file at {s.path}")
        weights = str(s.path)
    elif s.kind == "pretrained":
        weights = _cached_pretrained(s.arch, s.tag)
        if weights is None:
            if not download or not hub_reachable():
                raise _unavailable(s)
            weights = _open_clip().download_pretrained(_open_clip().get_pretrained_cfg(s.arch, s.tag))
    elif s.kind == "local-dir":
        if not (s.path / "open_clip_config.json").is_file():
            raise ModelUnavailable(f"{s.path} is not an open_clip folder (no open_clip_config.json)")
        weights = _dir_weights(s.path)
        if weights is None:  # open_clip would build an unseeded random model under a stable key
            raise ModelUnavailable(f"no weights file (.safetensors, .bin or .pth) in {s.path}")
    elif s.kind == "hf-hub":
        present, _ = weights_status(s)
        if not present and (not download or not hub_reachable()):
            raise _unavailable(s)
    return Resolved(s, weights, fingerprint(s, weights))


def _load(s: ModelSpec, dev, r: Resolved, precision: str | None = None) -> LoadedModel:
    import torch

    oc = _open_clip()
    precision = precision or ("fp16" if dev.type == "cuda" else "fp32")
    pp = {}
    if s.kind in ("builtin", "checkpoint", "pretrained"):
        name, pretrained = s.arch, r.weights
        if s.kind == "pretrained":
            # Given a file rather than the tag, open_clip falls back to the architecture's default
            # preprocessing; the tag's own (e.g. SigLIP's mean/std) has to be passed explicitly.
            cfg = oc.get_pretrained_cfg(s.arch, s.tag)
            pp = dict(image_mean=cfg.get("mean"), image_std=cfg.get("std"),
                      image_interpolation=cfg.get("interpolation"), image_resize_mode=cfg.get("resize_mode"))
            if cfg.get("quick_gelu"):  # OpenAI's weights were trained with QuickGELU, not GELU
                pp["force_quick_gelu"] = True
    elif s.kind == "random":
        name, pretrained = s.arch, None
        torch.manual_seed(0)  # the same random model in every process: a stable cache key
    elif s.kind == "local-dir":  # open_clip reads the folder itself, but does not expand "~"
        name, pretrained = f"local-dir:{s.path}", None
    else:  # hf-hub: open_clip reads the hub repo itself
        name, pretrained = s.raw, None
    model, _, preprocess = oc.create_model_and_transforms(name, pretrained=pretrained, precision=precision,
                                                          device=dev, weights_only=True, **pp)
    model.eval()
    tokenizer = oc.get_tokenizer(name)
    return LoadedModel(s, model, preprocess, tokenizer, dev, image_input_dtype(model), r.fingerprint, r.weights)


def image_input_dtype(model):
    """The dtype the image tower's first layer takes. Not simply the first parameter's: open_clip's
    fp16 and bf16 (the default on CUDA) convert only convolutions, linear layers and attention,
    and leave embeddings such as `positional_embedding` in float32."""
    import torch

    for m in model.visual.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            return m.weight.dtype
    return next(model.visual.parameters()).dtype
