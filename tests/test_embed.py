"""The embedding engine: exact vectors, the content-addressed cache, resuming, bad images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmviz import embed as embed_mod
from mmviz import synthetic
from mmviz.builtin import make_demo
from mmviz.embed import cache_status, embed_dataset
from mmviz.models import BUILTIN_ARCH, _open_clip, load_model
from mmviz.store import Workspace, precomputed_fingerprint
from mmviz.vector_cache import EmbeddingCache

N = 40


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> str:
    """A checkpoint spec of seeded random mmviz-shapes weights (independent of assets/)."""
    from safetensors.torch import save_file

    oc = _open_clip()
    torch.manual_seed(1)
    m = oc.create_model(BUILTIN_ARCH)
    path = tmp_path_factory.mktemp("weights") / "w.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return f"{BUILTIN_ARCH}:{path}"


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


@pytest.fixture
def demo(ws):
    return make_demo(ws, n=N)


def all_captions(ds) -> list[str]:
    return [c for caps in ds.table()["captions"] for c in caps]


def embed(ws, ds, spec, **kw):
    return embed_dataset(ws, ds, spec, batch_size=kw.pop("batch_size", 16), workers=0, device="cpu", **kw)


def test_vectors_equal_a_direct_open_clip_call(ws, demo, spec):
    from PIL import Image

    e = embed(ws, demo, spec)
    t = demo.table()
    caps = all_captions(demo)
    assert e.model == spec and e.ids == t["id"].tolist() and len(e.ids) == N and e.skipped == []
    # memory maps of the assembled set (float32: a small set is not stored in float16)
    assert e.image.shape == (N, 128) and e.image.dtype == np.float32 and isinstance(e.image, np.memmap)
    assert e.text.shape == (len(caps), 128) and e.text.dtype == np.float32 and e.dim == 128
    np.testing.assert_allclose(np.linalg.norm(e.image, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(e.text, axis=1), 1, atol=1e-5)
    assert e.captions == caps
    owner = np.repeat(np.arange(N), [len(c) for c in t["captions"]])
    np.testing.assert_array_equal(e.text_owner, owner)
    first = np.concatenate([[0], np.cumsum([len(c) for c in t["captions"]])[:-1]])
    np.testing.assert_array_equal(e.paired_text, e.text[first])
    assert [e.captions[j] for j in first] == [c[0] for c in t["captions"]]

    m = load_model(spec, device="cpu")
    assert e.fingerprint == m.fingerprint
    rows = [0, 7, 23, N - 1]
    with torch.no_grad():
        x = torch.stack([m.preprocess(Image.open(demo.image_path(r)).convert("RGB")) for r in rows])
        direct = torch.nn.functional.normalize(m.model.encode_image(x), dim=-1).numpy()
        np.testing.assert_allclose(e.image[rows], direct, atol=1e-5, rtol=0)
        some = [0, 5, 17, len(caps) - 1]
        tok = m.tokenizer([caps[j] for j in some])
        direct_t = torch.nn.functional.normalize(m.model.encode_text(tok), dim=-1).numpy()
        np.testing.assert_allclose(e.text[some], direct_t, atol=1e-5, rtol=0)
    # the pixels embedded are the shapes world's own
    scene = synthetic.make_world(0, 0, N, seed=0)["test"][7]
    with Image.open(demo.image_path(7)) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(synthetic.render(scene)))


def test_second_run_is_all_cache_hits(ws, demo, spec, monkeypatch):
    caps = all_captions(demo)
    progress = []
    first = embed(ws, demo, spec, progress=lambda d, n, s: progress.append((d, n, s)))
    unique = len(set(caps))
    assert unique < len(caps)  # the shapes world repeats captions: each text is embedded once
    assert first.computed == {"images": N, "captions": unique}
    assert first.cached == {"images": 0, "captions": 0}
    assert progress[0] == (0, N, "images") and progress[N // 16 + 1] == (N, N, "images")
    assert (unique, unique, "captions") in progress and progress[-1][2] == "assembling"
    # equal captions share one vector
    by_text = {}
    for c, v in zip(first.captions, first.text):
        if c in by_text:
            assert np.array_equal(by_text[c], v)
        by_text.setdefault(c, v)

    cache = EmbeddingCache(ws, first.fingerprint)
    assert first.cache_path == str(cache.path)
    assert cache.info == {"spec": spec, "dim": 128, "weights": spec.split(":", 1)[1]}
    assert len(cache) == N + unique

    # a fully cached run never builds the model
    monkeypatch.setattr(embed_mod, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    progress.clear()
    again = embed(ws, demo, spec, progress=lambda d, n, s: progress.append((d, n, s)))
    assert again.computed == {"images": 0, "captions": 0}
    assert again.cached == {"images": N, "captions": len(set(caps))}  # distinct items, like computed
    assert progress == []
    assert again.ids == first.ids and again.captions == first.captions
    assert np.array_equal(again.image, first.image) and np.array_equal(again.text, first.text)
    assert np.array_equal(again.text_owner, first.text_owner)


def test_overlapping_dataset_computes_only_new_content(ws, demo, spec, tmp_path):
    first = embed(ws, demo, spec)
    scenes = synthetic.make_world(0, 0, N + 5, seed=0)["test"]
    subset, new = scenes[10:30], scenes[N:]
    folder = synthetic.write_imagefolder(subset + new, tmp_path / "overlap")
    ds2 = ws.import_path(folder, "overlap", copy_images=True).dataset
    assert len(ds2) == 25
    old_caps = set(all_captions(demo))
    caps2 = all_captions(ds2)
    new_caps = set(caps2) - old_caps
    e2 = embed(ws, ds2, spec)
    assert e2.computed == {"images": 5, "captions": len(new_caps)}
    assert e2.cached == {"images": 20, "captions": len({c for c in caps2 if c in old_caps})}
    assert e2.ids == [s.id for s in subset + new]
    # the shared scenes have the very vectors computed for the first dataset
    assert np.array_equal(e2.image[:20], first.image[10:30])
    # and the new ones are what a fresh workspace computes for them
    fresh = embed(Workspace(tmp_path / "fresh"), ds2, spec)
    np.testing.assert_allclose(e2.image, fresh.image, atol=1e-6, rtol=0)
    np.testing.assert_allclose(e2.text, fresh.text, atol=1e-6, rtol=0)


@pytest.mark.parametrize("stage", ["images", "captions"])
def test_interrupted_job_resumes(ws, demo, spec, tmp_path, monkeypatch, stage):
    monkeypatch.setattr(embed_mod, "FLUSH_EVERY", 8)
    unique = len(set(all_captions(demo)))

    class Stop(Exception):
        pass

    def stop_midway(done, total, s):
        if s == stage and done >= (12 if stage == "images" else 128):
            raise Stop

    with pytest.raises(Stop):
        embed(ws, demo, spec, batch_size=4, progress=stop_midway)
    cache = EmbeddingCache(Workspace(ws.home), load_model(spec, device="cpu").fingerprint)
    if stage == "images":
        # batches of 4: a shard after 8 images; the third batch was never written
        assert len(cache._load_index("image")) == 8 and len(cache._load_index("text")) == 0
    else:
        # images all done; captions go in batches of 128, flushed before the callback fired
        assert len(cache._load_index("image")) == N and len(cache._load_index("text")) == 128
    e = embed(ws, demo, spec, batch_size=4)
    if stage == "images":
        assert e.computed == {"images": N - 8, "captions": unique}
    else:
        assert e.computed == {"images": 0, "captions": unique - 128}
    whole = embed(Workspace(tmp_path / "other"), demo, spec, batch_size=4)
    assert e.ids == whole.ids and e.captions == whole.captions
    np.testing.assert_allclose(e.image, whole.image, atol=1e-6, rtol=0)
    np.testing.assert_allclose(e.text, whole.text, atol=1e-6, rtol=0)
    assert np.array_equal(e.text_owner, whole.text_owner)


def test_assembly_stopped_leaves_no_staging_and_a_dead_ones_is_removed(ws, demo, spec, tmp_path):
    """A stopped assembly removes its staging folder and lock; one left by a killed process (its
    lock file free) is removed by the next assembly, which gives the undisturbed vectors."""
    class Stop(Exception):
        pass

    def stop_assembling(done, total, stage):
        if stage == "assembling" and done > 0:
            raise Stop

    with pytest.raises(Stop):
        embed(ws, demo, spec, progress=stop_assembling)
    sets = EmbeddingCache(ws, load_model(spec, device="cpu").fingerprint).path / "sets"
    assert list(sets.iterdir()) == []
    dead = sets / ".staging-killed-0123abcd"
    (dead / "image.npy").parent.mkdir(parents=True)
    (dead / "image.npy").write_bytes(b"half")
    (sets / ".staging-killed-0123abcd.lock").touch()  # kill -9 leaves the lock file, unheld
    e = embed(ws, demo, spec)
    names = [p.name for p in sets.iterdir()]
    assert len(names) == 1 and not names[0].startswith("."), names  # the assembled set alone
    whole = embed(Workspace(tmp_path / "other"), demo, spec)
    np.testing.assert_array_equal(e.image, whole.image)
    np.testing.assert_array_equal(e.text, whole.text)


@pytest.mark.parametrize("precision, dtype, min_cos", [("fp16", torch.float16, 0.999), ("bf16", torch.bfloat16, 0.99)])
def test_a_half_precision_model_embeds_close_to_float32(ws, demo, spec, precision, dtype, min_cos):
    """On CUDA models load in fp16. open_clip then casts only some layers (its embeddings stay
    float32), so the images go in as the image tower's first layer takes them."""
    from mmviz.models import build_model

    half = build_model(spec, "cpu", precision)
    assert half.dtype == dtype
    got = embed_dataset(Workspace(ws.home.parent / "half"), demo, half, batch_size=16, workers=0)
    want = embed(ws, demo, spec)
    assert got.image.dtype == want.image.dtype == np.float32
    for a, b in ((got.image, want.image), (got.text, want.text)):
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-3)
        assert (a * b).sum(1).min() > min_cos


def test_corrupt_image_is_skipped_not_fatal(ws, demo, spec, tmp_path):
    t = demo.table()
    bad = demo.image_path(3)
    assert bad == demo.path / "files" / "images" / "test-000003.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png at all")
    e = embed(ws, demo, spec)
    assert len(e.skipped) == 1
    sid, reason = e.skipped[0]
    assert sid == "test-000003" and reason.startswith("image could not be decoded:")
    assert "UnidentifiedImageError" in reason or "OSError" in reason
    assert e.computed["images"] == N - 1
    keep = [i for i in range(N) if i != 3]
    assert e.ids == [t["id"][i] for i in keep] and e.image.shape == (N - 1, 128)
    caps = [c for i in keep for c in t["captions"][i]]
    assert e.captions == caps and len(e.text) == len(caps)
    np.testing.assert_array_equal(e.text_owner, np.repeat(np.arange(N - 1), [len(t["captions"][i]) for i in keep]))
    # every other row is exactly what an intact copy of the set gives
    clean = embed(Workspace(tmp_path / "clean"), make_demo(Workspace(tmp_path / "clean"), n=N), spec)
    np.testing.assert_allclose(e.image, clean.image[keep], atol=1e-6, rtol=0)
    np.testing.assert_allclose(e.paired_text, clean.paired_text[keep], atol=1e-6, rtol=0)
    # the failure is not cached: it is reported again, and nothing else is recomputed
    again = embed(ws, demo, spec)
    assert again.skipped == e.skipped and again.computed == {"images": 0, "captions": 0}


def test_cache_status(ws, demo, spec):
    n_caps = len(all_captions(demo))
    before = cache_status(ws, demo, spec)
    e = embed(ws, demo, spec)
    assert before == {"images": N, "images_cached": 0, "captions": n_caps, "captions_cached": 0,
                      "cache_path": e.cache_path}
    after = cache_status(ws, demo, spec)
    assert after == {"images": N, "images_cached": N, "captions": n_caps, "captions_cached": n_caps,
                     "cache_path": e.cache_path}


def vectors_dataset(ws, tmp_path, n=6, d=8):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(2, n, d)).astype(np.float32) * rng.uniform(0.5, 3, size=(2, n, 1)).astype(np.float32)
    np.save(tmp_path / "feats.npy", arr)
    (tmp_path / "feats.txt").write_text("".join(f"caption {i}\n" for i in range(n)))
    ds = ws.import_path(tmp_path / "feats.npy", "feats").dataset
    return ds, arr


def test_precomputed_vectors_are_the_stored_files_memory_mapped(ws, tmp_path, monkeypatch):
    ds, arr = vectors_dataset(ws, tmp_path)
    name = ds.manifest["vector_model"]
    assert name == "precomputed:feats"
    status = cache_status(ws, ds, name)
    cache_path = str(ds.path / "vectors")
    assert status == {"images": 6, "images_cached": 6, "captions": 6, "captions_cached": 6, "cache_path": cache_path}
    # served from the version's own .npy files, memory-mapped; no model, no copy in the embedding cache
    monkeypatch.setattr(embed_mod, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    e = embed_dataset(ws, ds, name)
    expected_img = arr[0] / np.linalg.norm(arr[0], axis=1, keepdims=True)
    expected_txt = arr[1] / np.linalg.norm(arr[1], axis=1, keepdims=True)
    assert e.model == name and e.fingerprint == precomputed_fingerprint(name) and e.cache_path == cache_path
    assert e.ids == [str(i) for i in range(6)] and e.captions == [f"caption {i}" for i in range(6)]
    assert isinstance(e.image, np.memmap) and Path(e.image.filename) == ds.path / "vectors" / "image.npy"
    assert not (ws.home / "embeddings").exists()
    np.testing.assert_allclose(e.image, expected_img, atol=1e-6, rtol=0)
    np.testing.assert_allclose(e.text, expected_txt, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(e.text_owner, np.arange(6))
    np.testing.assert_array_equal(e.paired_text, e.text)
    assert e.computed == {"images": 0, "captions": 0} and e.cached == {"images": 6, "captions": 6}


def test_vectors_only_dataset_with_a_real_model_is_refused(ws, tmp_path, spec):
    ds, _ = vectors_dataset(ws, tmp_path)
    with pytest.raises(ValueError) as e:
        embed(ws, ds, spec)
    msg = str(e.value)
    assert "feats has no images to embed" in msg and "'precomputed:feats'" in msg and "under that name" in msg


def test_worker_processes_and_loaded_models_give_the_same_vectors(ws, demo, spec, tmp_path):
    """The default path decodes images in DataLoader workers; a LoadedModel shares the spec's cache."""
    demo.image_path(5).write_bytes(b"garbage")
    e = embed_dataset(ws, demo, spec, batch_size=16, workers=1, device="cpu")
    assert [s[0] for s in e.skipped] == ["test-000005"] and e.computed["images"] == N - 1
    other = Workspace(tmp_path / "other")
    m = load_model(spec, device="cpu")
    e2 = embed_dataset(other, demo, m, batch_size=16, workers=0)
    assert e2.model == spec and e2.fingerprint == e.fingerprint and e2.skipped == e.skipped
    np.testing.assert_allclose(e.image, e2.image, atol=1e-6, rtol=0)
    np.testing.assert_allclose(e.text, e2.text, atol=1e-6, rtol=0)
    # the loaded model and its spec name the same cache entries
    assert embed(other, demo, spec).computed == {"images": 0, "captions": 0}


def test_token_features_pool_to_the_embeddings(spec):
    """Per-token outputs are what encode_text/encode_image pool: the text token at the
    end-of-text position, projected, is encode_text; patch tokens cover every 8x8 patch."""
    import torch

    from mmviz import synthetic
    from mmviz.embed import image_tokens, text_tokens
    from mmviz.models import load_model

    lm = load_model(spec)
    scenes = synthetic.make_world(0, 0, 3, seed=11)["test"]
    caps = [s.captions[0] for s in scenes]
    tok, mask = text_tokens(lm, caps)
    assert tok.shape == (3, 32, 64) and mask.shape == (3, 32)
    ids = lm.tokenizer(caps)
    eot = ids.argmax(-1)
    assert mask.sum(1).tolist() == (eot + 1).tolist()  # start token .. end-of-text token
    with torch.no_grad():
        ref = lm.model.encode_text(ids).numpy()
    pooled = tok[np.arange(3), eot.numpy()] @ lm.model.text_projection.detach().numpy()
    assert np.allclose(pooled, ref, atol=1e-5)

    x = torch.stack([lm.preprocess(s.render()) for s in scenes])
    ptok, pmask = image_tokens(lm, x)
    assert ptok.shape == (3, 64, 128) and pmask.all()  # (64 / 8)^2 patches of width 128
    assert not np.allclose(ptok[0], ptok[1])
    assert lm.model.visual.output_tokens is False  # the model is left as it was


def test_image_tokens_leave_the_shared_model_alone(spec, monkeypatch):
    """The app shares one loaded model between pages, sessions and threads: reading patch tokens
    must not flip visual.output_tokens (another thread's forward would get (pooled, tokens), or
    this one a bare tensor). The tokens equal those of forward with the flag set."""
    import torch

    from mmviz import synthetic
    from mmviz.embed import image_tokens
    from mmviz.models import load_model

    lm = load_model(spec)
    visual = lm.model.visual
    x = torch.stack([lm.preprocess(s.render()) for s in synthetic.make_world(0, 0, 2, seed=3)["test"]])
    flips = []
    setattr_ = type(visual).__setattr__

    def spy(self, name, value):
        if name == "output_tokens":
            flips.append(value)
        setattr_(self, name, value)

    monkeypatch.setattr(type(visual), "__setattr__", spy)
    tokens, _ = image_tokens(lm, x)
    assert flips == []
    monkeypatch.undo()
    visual.output_tokens = True
    try:
        with torch.no_grad():
            _, want = visual(x)
    finally:
        visual.output_tokens = False
    np.testing.assert_allclose(tokens, want.numpy(), atol=1e-6)


def test_text_tokens_with_input_embeddings(spec):
    """inputs=True appends, per token, the transformer's input (token + positional embedding)
    normalised to zero mean and unit variance: written out here with numpy. It separates
    "left" from "right" far better than the last layer does, which is why it exists."""
    import torch

    from mmviz.embed import text_tokens
    from mmviz.models import load_model

    lm = load_model(spec)
    texts = ["is the red circle to the left of the blue square?", "is the red circle to the right of the blue square?"]
    last, mask = text_tokens(lm, texts)
    both, mask2 = text_tokens(lm, texts, inputs=True)
    w = last.shape[-1]
    assert both.shape == (2, last.shape[1], 2 * w) and (mask2 == mask).all()
    np.testing.assert_allclose(both[..., :w], last, atol=1e-6)
    with torch.no_grad():
        x0 = (lm.model.token_embedding(lm.tokenizer(texts)) + lm.model.positional_embedding).numpy()
    ref = (x0 - x0.mean(-1, keepdims=True)) / np.sqrt(x0.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(both[..., w:], ref, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(both[..., w:], axis=-1), np.sqrt(w), rtol=0.02)  # eps 1e-5: small weights
    k = 7  # <start> is the red circle to the LEFT / RIGHT: the first token where the two differ

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert (lm.tokenizer(texts)[0] != lm.tokenizer(texts)[1]).nonzero()[0].item() == k
    trained = load_model("builtin:shapes")  # the claim is about a trained text tower
    both = text_tokens(trained, texts, inputs=True)[0]
    assert cos(both[0, k, :w], both[1, k, :w]) > 0.95  # measured 0.964: last layer, nearly the same word
    assert cos(both[0, k, w:], both[1, k, w:]) < 0.7  # measured 0.597: the input tells them apart


def test_image_tokens_of_an_earlier_layer(spec):
    """layer=None is the last layer as the ViT's forward gives it (unchanged); layer=k runs
    the ViT's own embedding steps and its first k blocks, without ln_post: k = all blocks is
    the last layer's tokens before ln_post, and 0 <= k <= blocks is checked."""
    from mmviz.embed import image_tokens

    lm = load_model(spec)
    visual = lm.model.visual
    scenes = synthetic.make_world(0, 0, 2, seed=3)["test"]
    x = torch.stack([lm.preprocess(s.render()) for s in scenes])
    with torch.no_grad():
        visual.output_tokens = True
        try:
            _, ref = visual(x)  # what image_tokens gave before the option existed
        finally:
            visual.output_tokens = False
    last, _ = image_tokens(lm, x)
    np.testing.assert_array_equal(last, ref.numpy())
    n = len(visual.transformer.resblocks)
    raw, mask = image_tokens(lm, x, layer=n)
    assert raw.shape == last.shape and mask.all()
    with torch.no_grad():
        np.testing.assert_allclose(visual.ln_post(torch.from_numpy(raw)).numpy(), last, atol=1e-5)
    with torch.no_grad():  # layer 0: the embedded patches (conv1 + positions, ln_pre), no block
        e = visual.ln_pre(torch.cat([visual.class_embedding.view(1, 1, -1).expand(2, -1, -1),
                                     visual.conv1(x).flatten(2).transpose(1, 2)], dim=1)
                          + visual.positional_embedding)
    np.testing.assert_allclose(image_tokens(lm, x, layer=0)[0], e[:, 1:].numpy(), atol=1e-5)
    mid, _ = image_tokens(lm, x, layer=1)
    assert mid.shape == last.shape and not np.allclose(mid, raw)
    for bad in (-1, n + 1):
        with pytest.raises(ValueError, match="layer"):
            image_tokens(lm, x, layer=bad)
    assert visual.output_tokens is False


def test_torchrun_two_processes_give_the_vectors_of_one(tmp_path, spec):
    """`torchrun --nproc_per_node 2 -m mmviz.cli embed` (Gloo on CPU): each process embeds
    its share into its own shards, rank 0 assembles the set, and the vectors equal one
    process's; both processes wrote shards; a rerun computes nothing."""
    import os
    import shutil
    import socket
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    one_home, two_home = tmp_path / "one", tmp_path / "two"
    for home in (one_home, two_home):
        make_demo(Workspace(home), n=N)
    args = ["embed", "shapes-demo", "--model", spec, "--workers", "0", "--batch-size", "8", "-q"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
                          "-m", "mmviz.cli", "--home", str(two_home), *args],
                         env=env, capture_output=True, text=True, timeout=300, cwd=repo)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("shapes-demo under") == 1  # rank 0 alone reports
    assert f"embedded {N} images" in two.stdout
    e1 = embed(Workspace(one_home), Workspace(one_home).open("shapes-demo"), spec)
    ws2 = Workspace(two_home)
    e2 = embed_dataset(ws2, ws2.open("shapes-demo"), spec, workers=0, device="cpu")
    assert e2.computed == {"images": 0, "captions": 0}  # all of it came from the two processes' shards
    assert e2.ids == e1.ids and e2.captions == e1.captions
    np.testing.assert_allclose(e2.image, e1.image, atol=1e-6, rtol=0)
    np.testing.assert_allclose(e2.text, e1.text, atol=1e-6, rtol=0)
    # both processes wrote shards: at least two image shards though the set fits in one
    shards = list((Path(e2.cache_path) / "image").glob("shard-*.keys.npy"))
    assert len(shards) >= 2
