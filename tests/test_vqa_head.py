"""VQAHead: a saved head answers (image, question) with the same numbers as the training path."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mmviz import synthetic
from mmviz.models import load_model
from mmviz.vqa.data import FeatureCache, shapes_examples
from mmviz.vqa.head import VQAHead
from mmviz.vqa.train import TrainConfig, answer, save, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def head_and_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vqa-head")
    world = synthetic.make_world(120, 20, 0, seed=5)
    loaded = load_model("builtin:shapes")
    cache = FeatureCache(tmp / "home", loaded.fingerprint)
    data = {}
    for split in ("train", "val"):
        folder = synthetic.write_imagefolder(world[split], tmp / split)
        ex = shapes_examples(world[split], folder / "images")
        data[split] = (ex, cache.features(loaded, ex))
    result = train(data["train"][0], data["val"][0], data["train"][1], data["val"][1],
                   TrainConfig(hidden=32, epochs=2, seed=0))
    folder = save(result, tmp / "head")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "clip_model": "builtin:shapes"}))
    return VQAHead(folder), result, data["val"]


def test_ask_matches_the_training_features(head_and_data):
    head, result, (val_ex, (v, v_mask, q, q_mask)) = head_and_data
    assert head.spec == "builtin:shapes" and head.name == "ban"
    ex = val_ex[0]
    got = head.ask(ex.image, ex.question, top=5)
    n = int(q_mask[0].sum())
    want, att = answer(result.model, result.vocab, v[:1], v_mask[:1], q[:1, :n], q_mask[:1, :n], top=5)
    assert [a for a, _ in got.answers] == [a for a, _ in want[0]]
    np.testing.assert_allclose([p for _, p in got.answers], [p for _, p in want[0]], atol=2e-3)  # float16 cache
    np.testing.assert_allclose(got.attention, att[0], atol=2e-3)
    probs = [p for _, p in got.answers]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)


def test_maps_words_and_grid(head_and_data):
    head, _, (val_ex, _) = head_and_data
    got = head.ask(val_ex[0].image, "what colour is the circle?")
    assert got.words[0] == "<start_of_text>" and got.words[-1] == "<end_of_text>"
    assert "colour" in got.words and "circle" in got.words
    g, r, l = got.attention.shape
    assert (g, r, l) == (2, 64, len(got.words)) and got.grid == 8
    np.testing.assert_allclose(got.attention.sum(axis=(1, 2)), 1, atol=1e-5)  # each glimpse sums to 1
    assert got.region_map().shape == (8, 8)
    assert got.region_map().sum() == pytest.approx(1, abs=1e-5)
    word = got.words.index("circle")
    np.testing.assert_allclose(got.region_map(glimpse=1, word=word).ravel(), got.attention[1, :, word], atol=1e-7)


def test_bad_questions_and_images(head_and_data, tmp_path, monkeypatch):
    head, _, (val_ex, _) = head_and_data
    with pytest.raises(ValueError, match="question is empty"):
        head.ask(val_ex[0].image, "  ")
    monkeypatch.setenv("MMVIZ_MAX_PIXELS", "1000")
    with pytest.raises(ValueError, match="limit"):
        head.ask(val_ex[0].image, "what colour is the circle?")  # 64 x 64 = 4,096 pixels
