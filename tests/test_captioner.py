"""The text-only captioner: decoder, variants' inputs, training (seeded, resumable), saving,
the CLI, and the finding that the shipped c3 captioner beats c1 on a fresh shapes world."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from mmviz import synthetic
from mmviz.captioner import variants as V
from mmviz.captioner.model import CaptionDecoder, DecoderShape
from mmviz.captioner.train import (MIN_CAPTIONS, CaptionData, Captioner, CaptionerConfig, Cancelled, fit,
                                   noise_generator)
from mmviz.captioner.vocab import BOS, EOS, CaptionVocab
from mmviz.models import load_model


@pytest.fixture(scope="module")
def builtin():
    return load_model("builtin:shapes", device="cpu")


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _random_data(n_images: int, seed: int = 0, dim: int = 16) -> CaptionData:
    """Shapes-world captions with random unit 'text' and 'image' vectors (image i near its captions)."""
    rng = np.random.default_rng(seed)
    scenes = synthetic.make_world(n_images, seed=seed)["train"]
    images = _unit(rng.normal(size=(n_images, dim)))
    owner = np.repeat(np.arange(n_images), [len(s.captions) for s in scenes])
    texts = _unit(images[owner] + 0.3 * rng.normal(size=(len(owner), dim)) + 0.5)  # a constant offset: a gap
    return CaptionData(texts.astype(np.float32), owner, [c for s in scenes for c in s.captions],
                       images.astype(np.float32), [s.id for s in scenes])


def test_vocab_round_trip_and_sequences(builtin):
    caps = [c for s in synthetic.make_world(20)["train"] for c in s.captions]
    vocab = CaptionVocab.build(builtin.tokenizer, caps)
    seqs = vocab.encode(builtin.tokenizer, caps, 40)
    assert (seqs[:, 0] == BOS).all() and ((seqs == EOS).sum(1) == 1).all()
    for c, row in zip(caps, seqs):
        assert vocab.decode(builtin.tokenizer, row[1:]) == c  # the usual spacing back after ':' and ','
    assert len(vocab) < 80  # the shapes world's few words, not CLIP's 49,408 tokens


def test_decoder_overfits_a_tiny_caption_set_exactly(builtin):
    torch.manual_seed(0)
    caps = [s.captions[0] for s in synthetic.make_world(8, seed=3)["train"]]
    vocab = CaptionVocab.build(builtin.tokenizer, caps)
    seqs = torch.as_tensor(vocab.encode(builtin.tokenizer, caps, 30))
    cond = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    dec = CaptionDecoder(DecoderShape(16, len(vocab), width=64, layers=2, heads=4, prefix=2, max_tokens=30))
    opt = torch.optim.AdamW(dec.parameters(), lr=3e-3)
    for _ in range(300):
        loss = dec.loss(cond, seqs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01
    greedy = [vocab.decode(builtin.tokenizer, ids) for ids in dec.generate(cond)]
    beam = [vocab.decode(builtin.tokenizer, ids) for ids in dec.generate(cond, beam=3)]
    assert greedy == caps and beam == caps


def test_a_wide_beam_finds_the_most_likely_caption(builtin):
    """On a vocabulary small enough to list every caption, a beam wider than the hypotheses
    finds the one of highest log-probability, which greedy decoding misses for some inputs."""
    import itertools

    torch.manual_seed(1)
    dec = CaptionDecoder(DecoderShape(16, 6, width=16, layers=1, heads=2, prefix=1, max_tokens=3)).eval()
    cond = torch.nn.functional.normalize(torch.randn(20, 16), dim=-1)
    words = [EOS, 3, 4, 5]  # what _step allows: everything but PAD and BOS
    # every caption: up to 4 steps, ending at EOS or cut at the limit
    captions = [list(c) for n in range(1, 5) for c in itertools.product(words, repeat=n)
                if EOS not in c[:-1] and (c[-1] == EOS or n == 4)]

    def log_prob(c, ids):
        seq = torch.tensor([[BOS] + ids])
        logits = dec(c[None], seq[:, :-1])[0]
        logits[:, [0, BOS]] = -torch.inf
        logp = torch.log_softmax(logits, -1)
        return float(logp[torch.arange(len(ids)), seq[0, 1:]].sum())

    with torch.no_grad():
        best = [max(captions, key=lambda ids: log_prob(c, ids)) for c in cond]
        beam, greedy = dec.generate(cond, beam=128), dec.generate(cond)
    cut = [ids[:ids.index(EOS)] if EOS in ids else ids for ids in best]
    assert beam == cut
    assert greedy != cut  # the search is not greedy in disguise


def test_collapse_uses_the_training_split_means(builtin):
    data = _random_data(40)
    train, test = np.arange(30), np.arange(30, 40)
    sub = data.subset(train)
    cap = fit(sub, builtin.tokenizer, CaptionerConfig(variant="collapse", epochs=1, batch_size=32, width=32, heads=2))
    owned = np.isin(data.owner, train)
    np.testing.assert_allclose(cap.text_mean, data.texts[owned].astype(np.float64).mean(0), atol=1e-7)
    np.testing.assert_allclose(cap.image_mean, data.images[train].astype(np.float64).mean(0), atol=1e-7)
    assert np.linalg.norm(cap.image_mean - data.images.astype(np.float64).mean(0)) > 1e-3  # not the whole set's
    # inference subtracts the saved training-image mean, whatever images are captioned
    x = data.images[test]
    np.testing.assert_allclose(cap.inputs(x).numpy(), _unit(x - cap.image_mean), atol=1e-6)
    back = cap.roundtrip()
    np.testing.assert_allclose(back.image_mean, cap.image_mean, rtol=1e-6)  # the means travel in the file
    np.testing.assert_allclose(back.text_mean, cap.text_mean, rtol=1e-6)


def test_corrupt_noise_is_seeded_and_per_coordinate():
    t = torch.nn.functional.normalize(torch.randn(4000, 512, generator=torch.Generator().manual_seed(0)), dim=-1)
    mean = torch.zeros(512)
    a = V.training_input("corrupt", t, None, mean, generator=noise_generator(7, 3))
    b = V.training_input("corrupt", t, None, mean, generator=noise_generator(7, 3))
    c = V.training_input("corrupt", t, None, mean, generator=noise_generator(7, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # variance 0.016 per coordinate: |n|^2 ~ 0.016 d, so cos(t, unit(t + n)) ~ 1 / sqrt(1 + 0.016 d)
    assert float((a * t).sum(1).mean()) == pytest.approx(1 / np.sqrt(1 + 0.016 * 512), abs=0.01)
    assert torch.allclose(a.norm(dim=1), torch.ones(4000), atol=1e-5)
    c1 = V.training_input("c1", t, None, mean)
    assert torch.allclose(c1, t, atol=1e-6)  # connect: the text itself


def test_same_seed_same_captioner_and_other_seed_differs(builtin):
    data = _random_data(24)
    cfg = dict(variant="c3", epochs=2, batch_size=32, width=32, heads=2)
    a = fit(data, builtin.tokenizer, CaptionerConfig(**cfg, seed=5))
    b = fit(data, builtin.tokenizer, CaptionerConfig(**cfg, seed=5))
    c = fit(data, builtin.tokenizer, CaptionerConfig(**cfg, seed=6))
    for (k, va), vb, vc in zip(a.decoder.state_dict().items(), b.decoder.state_dict().values(),
                               c.decoder.state_dict().values()):
        assert torch.equal(va, vb), k
    assert any(not torch.equal(va, vc) for va, vc in zip(a.decoder.state_dict().values(),
                                                         c.decoder.state_dict().values()))


def test_interrupted_training_resumes_to_the_same_weights(builtin, tmp_path):
    data = _random_data(24)
    cfg = CaptionerConfig(variant="c3", epochs=3, batch_size=16, width=32, heads=2, checkpoint_every=4)
    whole = fit(data, builtin.tokenizer, cfg)
    seen = []
    with pytest.raises(Cancelled):
        fit(data, builtin.tokenizer, cfg, folder=tmp_path, progress=lambda r: seen.append(r["step"]),
            should_stop=lambda: len(seen) >= 5)
    assert (tmp_path / "checkpoint.safetensors").exists() and seen[-1] == 5
    resumed = fit(data, builtin.tokenizer, cfg, folder=tmp_path)
    assert resumed.info["resumed_from"] == 5 and resumed.info["steps"] == whole.info["steps"]
    for (k, a), b in zip(whole.decoder.state_dict().items(), resumed.decoder.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_too_few_captions_or_no_images_are_refused_before_work(builtin):
    data = _random_data(10)  # about 40 captions
    assert len(data.captions) < MIN_CAPTIONS
    with pytest.raises(ValueError, match=f"at least {MIN_CAPTIONS}"):
        fit(data, builtin.tokenizer, CaptionerConfig(epochs=1))
    text_only = _random_data(30)
    text_only.images = None
    with pytest.raises(ValueError, match="paired variant trains on image embeddings"):
        fit(text_only, builtin.tokenizer, CaptionerConfig(variant="paired", epochs=1))


def test_config_from_a_run_folder_round_trips_and_names_unknown_settings():
    from dataclasses import asdict

    cfg = CaptionerConfig(variant="c3", epochs=3, width=32, heads=2)
    assert CaptionerConfig.from_dict(json.loads(json.dumps(asdict(cfg)))) == cfg
    with pytest.raises(ValueError, match="unknown captioner settings: colour, size"):
        CaptionerConfig.from_dict({**asdict(cfg), "size": 1, "colour": "red"})


def test_save_and_load_round_trip_never_pickles(builtin, tmp_path):
    from safetensors import safe_open

    data = _random_data(24)
    cap = fit(data, builtin.tokenizer, CaptionerConfig(variant="c1", epochs=1, batch_size=32, width=32, heads=2),
              clip_model="builtin:shapes", clip_fingerprint=builtin.fingerprint)
    folder = cap.save(tmp_path / "cap")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert "mean.text" in f.keys() and "mean.image" in f.keys()
    back = Captioner.load(folder, builtin.tokenizer)
    assert back.caption(data.images) == cap.roundtrip().caption(data.images)
    back.check_model("builtin:shapes", builtin.fingerprint)
    with pytest.raises(ValueError, match="trained under 'builtin:shapes'"):
        back.check_model("ViT-B-32:random", "another-fingerprint")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "format": "something-else"}))
    with pytest.raises(ValueError, match="not an mmviz captioner"):
        Captioner.load(folder)


def test_shipped_c3_beats_c1_on_a_fresh_world(builtin):
    """A world the captioners never saw (seed 5; they trained on seed 0's training split)."""
    from mmviz.captioner.builtin import load_builtin, shapes_data
    from mmviz.captioner.evaluate import evaluate
    from mmviz.embed import encode_texts

    data = shapes_data(builtin, synthetic.make_world(0, 0, 300, seed=5)["test"])
    scores = {v: evaluate(load_builtin(v, builtin.tokenizer), data, lambda t: encode_texts(builtin, t)).corpus
              for v in ("c1", "c3")}
    assert scores["c3"]["bleu4"] > scores["c1"]["bleu4"] + 0.25  # measured: 0.647 against 0.280
    assert scores["c3"]["cider"] > scores["c1"]["cider"] + 1.5  # measured: 3.92 against 1.48


def _cli(*args, home):
    """The command line in this process (what `mmviz ...` runs, without a new interpreter)."""
    import contextlib
    import io

    from mmviz.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--home", str(home), *args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    from mmviz.builtin import make_demo
    from mmviz.store import Workspace

    home = tmp_path_factory.mktemp("caption-home")
    make_demo(Workspace(home), n=120)
    return home


def test_caption_cli_json(demo_home):
    r = _cli("caption", "shapes-demo", "--captioner", "c3", "--split", "all", "--limit", "30", "--json",
             home=demo_home)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["captions"]) == 30 and set(doc["captions"][0]) == {"id", "caption", "references"}
    assert all(len(c["references"]) == 4 for c in doc["captions"])
    for k in ("bleu1", "bleu4", "cider", "rouge_l", "clip_s", "refclip_s", "mid", "exact_match"):
        assert np.isfinite(doc["metrics"][k]), k
    assert doc["metrics"]["images"] == 30


def test_caption_cli_refuses_another_models_vectors_before_embedding(demo_home):
    r = _cli("caption", "shapes-demo", "--captioner", "c3", "--model", "ViT-B-32:random", home=demo_home)
    assert r.returncode == 1
    assert "mmviz: error: this captioner was trained under 'builtin:shapes'" in r.stderr
    assert "embedding" not in r.stderr  # refused before any vector was computed


def test_captioner_train_cli_refuses_a_set_with_too_few_captions(tmp_path):
    from mmviz.builtin import make_demo
    from mmviz.store import Workspace

    make_demo(Workspace(tmp_path), n=12)  # 48 captions
    r = _cli("captioner", "train", "shapes-demo", "--epochs", "1", home=tmp_path)
    assert r.returncode == 1 and "mmviz: error:" in r.stderr and "at least" in r.stderr
    assert not (tmp_path / "captioners").exists() or not any((tmp_path / "captioners").iterdir())


def test_a_cancelled_run_resumes_and_is_scored(demo_home):
    from mmviz.captioner import runs
    from mmviz.run_folder import read_metrics, read_status

    folder = runs.create_run(demo_home, runs.CaptionerRun("shapes-demo", "builtin:shapes",
                                                          {"variant": "c3", "epochs": 2, "batch_size": 32,
                                                           "width": 32, "heads": 2, "checkpoint_every": 3}))
    steps = []

    def cancel_at_4(row):
        steps.append(row["step"])
        if row["step"] == 4:
            (folder / "cancel").touch()

    with pytest.raises(Cancelled):
        runs.train_run(demo_home, folder, progress=cancel_at_4)
    assert read_status(folder)["state"] == "cancelled" and steps == [1, 2, 3, 4]
    (folder / "cancel").unlink()
    result = runs.train_run(demo_home, folder)
    assert result["resumed_from"] == 4 and read_status(folder)["state"] == "finished"
    logged = [r["step"] for r in read_metrics(folder, "step")]
    assert logged == list(range(1, result["steps"] + 1))  # every step once, none twice
    assert result["test_images"] == 24 and result["train_images"] == 96
    r = _cli("caption", "shapes-demo", "--captioner", folder.name, "--json", home=demo_home)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["captions"]) == 24  # the run's held-out test split


def test_any_open_clip_model_trains_from_captions_alone():
    """Another model than the builtin one (the same small architecture with seeded random
    weights): only its text tower runs; a text-only c3 captioner subtracts the mean of the
    images it captions, and the paired variant is refused before any encoding."""
    from mmviz.captioner import train_on_captions

    caps = [c for s in synthetic.make_world(30, seed=4)["train"] for c in s.captions]
    cap = train_on_captions(caps, "mmviz-shapes:random", variant="c3", epochs=1, batch_size=32, width=32, heads=2)
    assert cap.clip_model == "mmviz-shapes:random" and cap.image_mean is None
    images = _unit(np.random.default_rng(0).normal(size=(6, 128))).astype(np.float32)
    np.testing.assert_allclose(cap.inputs(images).numpy(), _unit(images - images.mean(0)), atol=1e-6)
    assert len(cap.caption(images)) == 6
    with pytest.raises(ValueError, match="paired variant"):
        train_on_captions(caps, "mmviz-shapes:random", variant="paired")
