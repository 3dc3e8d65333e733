"""Model specs, weights lookup without network, loading checkpoints by every route, safety."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from mmviz import models
from mmviz.models import (BUILTIN_ARCH, BUILTIN_DIR, ModelSpecError, ModelUnavailable, _open_clip, fingerprint,
                          hub_reachable, load_model, parse_spec, pick_device, resolve, weights_status)

ARCH_JSON = BUILTIN_DIR / f"{BUILTIN_ARCH}.json"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _no_caches(tmp_path, monkeypatch):
    """No Hugging Face or open_clip download cache of this machine is seen, and the hub is never dialled."""
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def no_network(*a, **k):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(models.socket, "create_connection", no_network)


def small_model(seed: int):
    oc = _open_clip()
    torch.manual_seed(seed)
    return oc.create_model(BUILTIN_ARCH).eval()


def fixed_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(2, 3, 64, 64, generator=g)


def image_features(model) -> torch.Tensor:
    with torch.no_grad():
        return model.encode_image(fixed_input().to(next(model.parameters()).dtype)).float()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A random mmviz-shapes model saved in every layout load_model reads: (model, {route: spec})."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("weights")
    m = small_model(1)
    state = {k: v.contiguous() for k, v in m.state_dict().items()}
    save_file(state, str(d / "w.safetensors"))
    torch.save(state, d / "w.pt")
    torch.save(state, d / "w.bin")
    folder = d / "folder"
    folder.mkdir()
    cfg = {"model_cfg": json.loads(ARCH_JSON.read_text()), "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file(state, str(folder / "open_clip_model.safetensors"))
    specs = {"safetensors": f"{BUILTIN_ARCH}:{d / 'w.safetensors'}", "pt": f"{BUILTIN_ARCH}:{d / 'w.pt'}",
             "bin": f"{BUILTIN_ARCH}:{d / 'w.bin'}", "local-dir": f"local-dir:{folder}"}
    return m, specs, d


# ----------------------------------------------------------------------------------------
# parse_spec


@pytest.mark.parametrize("spec, kind, arch, tag, path", [
    ("builtin:shapes", "builtin", BUILTIN_ARCH, None, BUILTIN_DIR / "model.safetensors"),
    ("ViT-B-32:laion2b_s34b_b79k", "pretrained", "ViT-B-32", "laion2b_s34b_b79k", None),
    ("  ViT-B-32:openai ", "pretrained", "ViT-B-32", "openai", None),
    ("ViT-B-32:/x/y.safetensors", "checkpoint", "ViT-B-32", None, Path("/x/y.safetensors")),
    ("ViT-B-32:w.pt", "checkpoint", "ViT-B-32", None, Path("w.pt")),
    ("ViT-B-32:weights.BIN", "checkpoint", "ViT-B-32", None, Path("weights.BIN")),
    ("ViT-B-32:some/dir/ckpt", "checkpoint", "ViT-B-32", None, Path("some/dir/ckpt")),
    ("ViT-B-32:random", "random", "ViT-B-32", None, None),
    ("mmviz-shapes:none", "random", BUILTIN_ARCH, None, None),
    ("local-dir:/p", "local-dir", None, None, Path("/p")),
    ("hf-hub:org/repo", "hf-hub", None, "org/repo", None),
])
def test_parse_valid_specs(spec, kind, arch, tag, path):
    s = parse_spec(spec)
    assert (s.kind, s.arch, s.tag, s.path) == (kind, arch, tag, path)
    assert s.raw == spec.strip() and str(s) == spec.strip()


@pytest.mark.parametrize("spec, needles", [
    ("ViT-B-33:x", ["unknown open_clip architecture 'ViT-B-33'", "did you mean", "ViT-B-32"]),
    ("NoSuchThingAtAll:x", ["unknown open_clip architecture", "open_clip.list_models()"]),
    ("ViT-B-32:nope", ["no pretrained tag 'nope'", "known tags:", "laion2b_s34b_b79k", "openai"]),
    ("ViT-B-32", ["say which weights", "ViT-B-32:openai", "ViT-B-32:random", "/path/to/weights.safetensors"]),
    ("ViT-B-32:", ["say which weights"]),
    ("", ["empty model spec", "builtin:shapes"]),
    ("   ", ["empty model spec"]),
    ("builtin:other", ["unknown builtin model 'builtin:other'", "builtin:shapes"]),
    ("hf-hub:noslash", ["expected hf-hub:ORG/REPO"]),
    ("hf-hub:a/b/c", ["expected hf-hub:ORG/REPO"]),
    ("hf-hub:org/", ["expected hf-hub:ORG/REPO"]),
    ("hf-hub:/repo", ["expected hf-hub:ORG/REPO"]),
    ("local-dir:", ["expected local-dir:/path/to/folder"]),
])
def test_parse_invalid_specs(spec, needles):
    with pytest.raises(ModelSpecError) as e:
        parse_spec(spec)
    for needle in needles:
        assert needle in str(e.value)
    ok, why = weights_status(spec)  # the same message, never an exception
    assert ok is False and why == str(e.value)


def test_model_spec_error_is_value_error():
    assert issubclass(ModelSpecError, ValueError)


# ----------------------------------------------------------------------------------------
# loading checkpoints


@pytest.mark.parametrize("route", ["safetensors", "pt", "bin", "local-dir"])
def test_load_every_route_gives_the_saved_weights(reference, route):
    m, specs, _ = reference
    loaded = load_model(specs[route], device="cpu")
    assert loaded.spec.kind == ("local-dir" if route == "local-dir" else "checkpoint")
    assert loaded.device == torch.device("cpu") and loaded.dtype == torch.float32
    assert loaded.embed_dim == 128
    assert not loaded.model.training
    torch.testing.assert_close(image_features(loaded.model), image_features(m), atol=1e-5, rtol=0)
    with torch.no_grad():
        tok = loaded.tokenizer(["a red circle", "an orange square"])
        assert tok.shape == (2, 32)
        torch.testing.assert_close(loaded.model.encode_text(tok), m.encode_text(tok), atol=1e-5, rtol=0)
    # the preprocess is the 64x64 one of the config
    from PIL import Image

    assert loaded.preprocess(Image.new("RGB", (100, 80), (255, 0, 0))).shape == (3, 64, 64)
    expected_file = Path(specs[route].split(":", 1)[1])
    if route == "local-dir":
        expected_file = expected_file / "open_clip_model.safetensors"
    assert loaded.weights == str(expected_file)
    assert loaded.fingerprint == resolve(specs[route]).fingerprint == fingerprint(loaded.spec, loaded.weights)
    # cached per process: the same object, however the spec is given
    assert load_model(specs[route], device="cpu") is loaded
    assert load_model(parse_spec(specs[route]), device="cpu") is loaded


def test_fingerprints(reference, tmp_path):
    from safetensors.torch import save_file

    m, specs, d = reference
    prints = {route: resolve(spec).fingerprint for route, spec in specs.items()}
    assert len(set(prints.values())) == 4  # the spec is part of the key
    assert all(len(p) == 20 for p in prints.values())
    assert resolve(specs["pt"]).fingerprint == prints["pt"]  # same file twice: same key
    # other weights under another path: another key; the same bytes under another path too
    save_file({k: v.contiguous() for k, v in small_model(2).state_dict().items()}, str(tmp_path / "w.safetensors"))
    other = resolve(f"{BUILTIN_ARCH}:{tmp_path / 'w.safetensors'}").fingerprint
    assert other not in prints.values()
    import shutil

    shutil.copy(d / "w.safetensors", tmp_path / "copy.safetensors")
    assert resolve(f"{BUILTIN_ARCH}:{tmp_path / 'copy.safetensors'}").fingerprint not in (other, prints["safetensors"])


def test_checkpoint_rewritten_in_place_is_a_new_model(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "ckpt.safetensors"
    spec = f"{BUILTIN_ARCH}:{path}"
    save_file({k: v.contiguous() for k, v in small_model(3).state_dict().items()}, str(path))
    first = load_model(spec, device="cpu")
    assert load_model(spec, device="cpu") is first
    m4 = small_model(4)
    save_file({k: v.contiguous() for k, v in m4.state_dict().items()}, str(path))
    second = load_model(spec, device="cpu")
    assert second is not first and second.fingerprint != first.fingerprint
    torch.testing.assert_close(image_features(second.model), image_features(m4), atol=1e-5, rtol=0)
    assert (spec, "cpu", first.fingerprint) not in models._cache  # the superseded model is dropped


def test_random_spec_is_seeded():
    a = load_model(f"{BUILTIN_ARCH}:random", device="cpu")
    assert a.weights is None and a.fingerprint == fingerprint(a.spec, None)
    models._cache.clear()
    b = load_model(f"{BUILTIN_ARCH}:random", device="cpu")
    assert b is not a
    torch.testing.assert_close(image_features(a.model), image_features(b.model), atol=0, rtol=0)


def test_missing_checkpoint_and_folders(tmp_path):
    with pytest.raises(ModelUnavailable, match="no checkpoint file at"):
        resolve(f"{BUILTIN_ARCH}:{tmp_path / 'absent.safetensors'}")
    assert weights_status(f"{BUILTIN_ARCH}:{tmp_path / 'absent.pt'}") == (False, f"no file at {tmp_path / 'absent.pt'}")
    with pytest.raises(ModelUnavailable, match="not an open_clip folder"):
        resolve(f"local-dir:{tmp_path}")
    assert weights_status(f"local-dir:{tmp_path}") == (False, f"no open_clip_config.json in {tmp_path}")
    # a config without weights would be an unseeded random model under a stable cache key
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": json.loads(ARCH_JSON.read_text())}))
    with pytest.raises(ModelUnavailable, match="no weights file"):
        resolve(f"local-dir:{tmp_path}")
    assert weights_status(f"local-dir:{tmp_path}") == (False, f"no weights file in {tmp_path}")


def test_local_dir_fingerprint_hashes_the_file_open_clip_loads(reference, tmp_path):
    """With several weight files in a folder, the one hashed is the one open_clip loads."""
    import shutil

    from safetensors.torch import save_file

    m, specs, d = reference
    shutil.copy(d / "folder" / "open_clip_config.json", tmp_path / "open_clip_config.json")
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    save_file({k: v.contiguous() for k, v in small_model(5).state_dict().items()}, str(tmp_path / "aaa.safetensors"))
    r = resolve(f"local-dir:{tmp_path}")
    assert r.weights == str(tmp_path / "open_clip_model.safetensors")
    assert weights_status(f"local-dir:{tmp_path}") == (True, str(tmp_path))
    loaded = load_model(f"local-dir:{tmp_path}", device="cpu")
    torch.testing.assert_close(image_features(loaded.model), image_features(m), atol=1e-5, rtol=0)


def test_local_dir_under_home(reference, tmp_path):
    import shutil

    m, _, d = reference
    shutil.copytree(d / "folder", tmp_path / "home" / "models" / "shapes")  # HOME is tmp_path / "home"
    loaded = load_model("local-dir:~/models/shapes", device="cpu")
    assert loaded.weights == str(tmp_path / "home" / "models" / "shapes" / "open_clip_model.safetensors")
    torch.testing.assert_close(image_features(loaded.model), image_features(m), atol=1e-5, rtol=0)


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_pickled_code_is_never_run(tmp_path, suffix):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / f"evil{suffix}"
    torch.save({"visual.conv1.weight": Evil()}, path)
    assert not marker.exists()
    with pytest.raises(Exception) as e:
        load_model(f"{BUILTIN_ARCH}:{path}", device="cpu")
    assert "weights_only" in str(e.value) or "Unsupported global" in str(e.value)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------
# pretrained tags without network


def _assert_unavailable_message(msg: str, spec: str) -> None:
    assert spec in msg
    assert "not in the local cache" in msg and "cannot be reached" in msg
    assert "Fetch them once" in msg and "pretrained='laion2b_s34b_b79k'" in msg  # how to fetch once
    assert "ViT-B-32:/path/to/file.safetensors" in msg  # or point at a local file
    assert "builtin:shapes" in msg


def test_pretrained_fails_fast_offline():
    spec = "ViT-B-32:laion2b_s34b_b79k"
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable) as e:
        resolve(spec)
    assert time.monotonic() - t0 < 5
    _assert_unavailable_message(str(e.value), spec)
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable):
        load_model(spec, device="cpu")
    assert time.monotonic() - t0 < 5
    assert weights_status(spec) == (False, "not downloaded yet")
    assert weights_status("ViT-B-32:random") == (True, "random weights (seeded)")
    assert weights_status("hf-hub:org/repo") == (False, "not downloaded yet")
    with pytest.raises(ModelUnavailable):
        resolve("hf-hub:org/repo")


def test_pretrained_fails_fast_when_hub_unreachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: calls.append(timeout) or False)
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable) as e:
        resolve("ViT-B-32:laion2b_s34b_b79k")
    assert time.monotonic() - t0 < 5
    assert calls == [3.0]
    _assert_unavailable_message(str(e.value), "ViT-B-32:laion2b_s34b_b79k")
    # download=False never asks the hub
    with pytest.raises(ModelUnavailable):
        resolve("ViT-B-32:laion2b_s34b_b79k", download=False)
    assert calls == [3.0]


def test_hub_reachable_offline_is_immediate(monkeypatch):
    for value in ("1", "true", "YES"):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        t0 = time.monotonic()
        assert hub_reachable(timeout=30) is False  # the autouse fixture fails any connection attempt
        assert time.monotonic() - t0 < 0.5


def test_hub_reachable_connection_refused(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def refuse(addr, timeout):
        assert addr == ("huggingface.co", 443) and timeout == 0.1
        raise OSError("network unreachable")

    monkeypatch.setattr(models.socket, "create_connection", refuse)
    assert hub_reachable(timeout=0.1) is False


def test_cached_pretrained_resolves_to_the_cached_file(reference, monkeypatch):
    _, _, d = reference
    path = str(d / "w.safetensors")
    asked = []
    monkeypatch.setattr(models, "_cached_pretrained", lambda arch, tag: asked.append((arch, tag)) or path)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: pytest.fail("asked the hub"))
    r = resolve("ViT-B-32:laion2b_s34b_b79k")
    assert asked == [("ViT-B-32", "laion2b_s34b_b79k")]
    assert r.weights == path and r.spec.kind == "pretrained"
    assert r.fingerprint == fingerprint(r.spec, path)
    assert weights_status("ViT-B-32:laion2b_s34b_b79k") == (True, path)


def test_cached_pretrained_loads_with_the_tags_preprocessing(reference, monkeypatch):
    """A pretrained tag found in the cache loads that file, with the tag's preprocessing."""
    import open_clip.pretrained as ocp

    m, _, d = reference
    monkeypatch.setitem(ocp._PRETRAINED, BUILTIN_ARCH,
                        {"fake": ocp._pcfg(hf_hub="nobody/fake/", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))})
    monkeypatch.setattr(models, "_cached_pretrained", lambda arch, tag: str(d / "w.safetensors"))
    loaded = load_model(f"{BUILTIN_ARCH}:fake", device="cpu")
    assert loaded.spec.kind == "pretrained" and loaded.weights == str(d / "w.safetensors")
    torch.testing.assert_close(image_features(loaded.model), image_features(m), atol=1e-5, rtol=0)
    from PIL import Image

    x = loaded.preprocess(Image.new("RGB", (64, 64), (255, 0, 0)))
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([2.0, -2.0, -2.0]))  # (1 - .5) / .25, (0 - .5) / .25


def test_cached_pretrained_lookup_misses_in_an_empty_cache():
    assert models._cached_pretrained("ViT-B-32", "laion2b_s34b_b79k") is None
    assert models._cached_pretrained("ViT-B-32", "openai") is None


# ----------------------------------------------------------------------------------------
# devices


def test_pick_device(monkeypatch):
    monkeypatch.delenv("MMVIZ_DEVICE", raising=False)
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("CPU") == torch.device("cpu")
    assert pick_device("meta") == torch.device("meta")
    monkeypatch.setenv("MMVIZ_DEVICE", "meta")
    assert pick_device() == torch.device("meta")
    assert pick_device("cpu") == torch.device("cpu")  # an explicit preference beats the variable
    monkeypatch.setenv("MMVIZ_DEVICE", "auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device() == torch.device(expected)
    monkeypatch.delenv("MMVIZ_DEVICE")
    assert pick_device() == pick_device("auto") == torch.device(expected)
    if not torch.cuda.is_available():
        assert pick_device() == torch.device("cpu")  # this machine
