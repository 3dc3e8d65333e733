"""The builtin model: its loss, a tiny reproducible training run, and the shipped weights."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mmviz import builtin, synthetic
from mmviz.finetune.losses import info_nce
from mmviz.models import BUILTIN_ARCH, BUILTIN_DIR, BUILTIN_SPEC, load_model
from mmviz.retrieval import recall_at_k

IMG = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
TXT = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, -1.0]])
SCALE = 2.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def _hand_loss(targets: list[list[float]]) -> float:
    """Mean cross-entropy of rows (image->text) and of columns (text->image), averaged."""
    logits = [[SCALE * sum(a * b for a, b in zip(i, t)) for t in TXT.tolist()] for i in IMG.tolist()]
    cols = [list(c) for c in zip(*logits)]
    rows_ce = [-sum(p * l for p, l in zip(tg, _log_softmax(r))) for r, tg in zip(logits, targets)]
    cols_ce = [-sum(p * l for p, l in zip(tg, _log_softmax(c))) for c, tg in zip(cols, targets)]
    return (sum(rows_ce) / 3 + sum(cols_ce) / 3) / 2


def test_info_nce_hard_targets():
    expected = _hand_loss([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    # logits [[1.6, 2, 0], [1.92, 1.2, -1.6], [1.2, 0, -2]]: rows give CE 0.9909, 1.1363, 3.4941 and
    # columns 1.1143, 1.2604, 2.2906 (logsumexp minus the diagonal): (1.8738 + 1.5551) / 2
    assert expected == pytest.approx(1.71444, abs=1e-5)
    got = info_nce(IMG, TXT, torch.tensor(SCALE))
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # no same-text pairs is the same as hard targets
    same = torch.eye(3, dtype=torch.bool)
    assert info_nce(IMG, TXT, torch.tensor(SCALE), same).item() == pytest.approx(expected, abs=1e-6)


def test_info_nce_same_text_is_a_shared_positive():
    """Captions 0 and 2 are the same text: images 0 and 2 each have both as positives, half weight."""
    same = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.bool)
    expected = _hand_loss([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]])
    got = info_nce(IMG, TXT, torch.tensor(SCALE), same)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert got.item() != pytest.approx(info_nce(IMG, TXT, torch.tensor(SCALE)).item(), abs=1e-3)


def test_tiny_training_run_is_reproducible(tmp_path):
    from safetensors import safe_open

    cfg = dict(steps=3, n_train=64, n_test=20, batch_size=16, warmup=2)
    steps = []
    m1 = builtin.train(out_dir=tmp_path / "a", progress=lambda s, n, loss: steps.append((s, n, loss)), **cfg)
    m2 = builtin.train(out_dir=tmp_path / "b", **cfg)
    assert [s[:2] for s in steps] == [(1, 3), (2, 3), (3, 3)] and all(math.isfinite(s[2]) for s in steps)

    for d in ("a", "b"):
        assert sorted(p.name for p in (tmp_path / d).iterdir()) == ["metrics.json", "model.safetensors"]
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(m1))
    assert set(metrics) == {"model", "arch", "config", "params", "train_seconds", "final_loss", "test_split",
                            "test_recall", "chance_R@1", "torch", "machine"}
    assert metrics["model"] == BUILTIN_SPEC and metrics["arch"] == BUILTIN_ARCH
    assert metrics["config"] == {**builtin.DEFAULTS, **cfg}
    assert metrics["params"] == 4215425
    test = synthetic.make_world(64, 0, 20, seed=0)["test"]
    assert metrics["test_split"] == {"images": 20, "captions": sum(len(s.captions) for s in test)}
    assert set(metrics["test_recall"]) == {"i2t", "t2i"}
    for r in metrics["test_recall"].values():
        assert set(r) == {"R@1", "R@5", "R@10"} and all(0 <= v <= 1 for v in r.values())
    assert metrics["chance_R@1"]["t2i"] == 0.05
    assert metrics["final_loss"] == pytest.approx(np.mean([s[2] for s in steps]), abs=1e-4)

    # same seed, same weights, bit for bit; stored in fp16
    with safe_open(str(tmp_path / "a" / "model.safetensors"), "pt") as fa, \
            safe_open(str(tmp_path / "b" / "model.safetensors"), "pt") as fb:
        assert fa.metadata() == {"arch": BUILTIN_ARCH, "seed": "0"}
        assert sorted(fa.keys()) == sorted(fb.keys()) and len(list(fa.keys())) > 10
        for k in fa.keys():
            a, b = fa.get_tensor(k), fb.get_tensor(k)
            assert a.dtype == torch.float16 and torch.equal(a, b), k
    assert m1["test_recall"] == m2["test_recall"] and m1["final_loss"] == m2["final_loss"]

    # the checkpoint loads as a spec, and open_clip's preprocess equals the training normalisation
    loaded = load_model(f"{BUILTIN_ARCH}:{tmp_path / 'a' / 'model.safetensors'}", device="cpu")
    mean, std = loaded.model.visual.image_mean, loaded.model.visual.image_std
    x_train = builtin._normalise(synthetic.render_array(test[:4]), mean, std)
    x_open_clip = torch.stack([loaded.preprocess(s.render()) for s in test[:4]])
    torch.testing.assert_close(x_train, x_open_clip, atol=1e-6, rtol=0)


def test_builtin_weights_retrieve_far_above_chance():
    # The weights are part of the repository (reproduced by `mmviz builtin train`).
    assert (BUILTIN_DIR / "model.safetensors").is_file()
    loaded = load_model(BUILTIN_SPEC, device="cpu")
    scenes = synthetic.make_world(0, 0, 200, seed=123)["test"]
    mean, std = loaded.model.visual.image_mean, loaded.model.visual.image_std
    im, tx, owner = builtin.encode_scenes(loaded.model, loaded.tokenizer, scenes, mean, std)
    r = recall_at_k(im, tx, k=(1, 10), text_owner=owner)
    # Chance R@1 is 1/200 (t2i) and about 4/800 (i2t); measured 0.80 / 0.65 at R@1, >= 0.99 at R@10.
    assert r["i2t"][1] > 0.6 and r["t2i"][1] > 0.45, r
    assert r["i2t"][10] > 0.9 and r["t2i"][10] > 0.9, r


def test_builtin_through_the_embedding_engine(tmp_path):
    """The path a user takes (PNG files -> import -> embed_dataset) retrieves as well."""
    from mmviz.embed import embed_dataset
    from mmviz.store import Workspace

    ws = Workspace(tmp_path / "ws")
    scenes = synthetic.make_world(0, 0, 100, seed=321)["test"]
    ds = ws.import_path(synthetic.write_imagefolder(scenes, tmp_path / "set"), "set").dataset
    emb = embed_dataset(ws, ds, BUILTIN_SPEC, workers=0)
    r = recall_at_k(emb.image, emb.text, k=(1, 5), text_owner=emb.text_owner)
    assert r["i2t"][1] > 0.6 and r["t2i"][5] > 0.9, r
