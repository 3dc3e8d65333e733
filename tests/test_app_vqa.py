"""VQA page through Streamlit's AppTest: the answers and maps are the head's."""
import base64
import json

import numpy as np
import pytest

from conftest import embedded_demo, open_page
from mmviz import synthetic
from mmviz.models import load_model
from mmviz.vqa import VQAHead
from mmviz.vqa.data import FeatureCache, shapes_examples
from mmviz.vqa.train import TrainConfig, save, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_head(folder, seed=5):
    """A small BAN trained for two epochs on a fresh shapes world, saved where the page lists it."""
    world = synthetic.make_world(100, 20, 0, seed=seed)
    loaded = load_model("builtin:shapes")
    cache = FeatureCache(folder.parent / "cache", loaded.fingerprint)
    data = {}
    for split in ("train", "val"):
        images = synthetic.write_imagefolder(world[split], folder.parent / split) / "images"
        ex = shapes_examples(world[split], images)
        data[split] = (ex, cache.features(loaded, ex))
    result = train(data["train"][0], data["val"][0], data["train"][1], data["val"][1],
                   TrainConfig(hidden=32, epochs=2, seed=0))
    save(result, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "clip_model": "builtin:shapes"}))
    return folder


@pytest.fixture
def page_with_tiny_head(app_home):
    ds, emb = embedded_demo(app_home, n=12)
    folder = tiny_head(app_home / "vqa" / "shapes-demo" / "runs" / "ban-tiny")
    at = open_page("vqa")
    at.selectbox(key="vqa_head").set_value("shapes-demo: ban-tiny").run()
    assert not at.exception, at.exception
    return at, ds, VQAHead(folder)


def chart(at, index: int) -> dict:
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def values(field) -> np.ndarray:
    """A plotly array field: a list, or numpy's bytes as plotly.js's typed-array dict."""
    if isinstance(field, dict):
        shape = [int(n) for n in str(field.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(field["bdata"]), dtype=field["dtype"]).reshape(shape)
    return np.asarray(field, dtype=float)


def test_answers_and_maps_are_the_heads(page_with_tiny_head):
    at, ds, head = page_with_tiny_head
    id_ = ds.ids()[at.selectbox(key="vqa_image").value]  # the picker gives a row
    question = at.text_input(key="vqa_question").value
    assert len(at.get("plotly_chart")) == 3  # answers, overlay, words-by-patches
    assert f"({head.name} head)" in " ".join(m.value for m in at.markdown)

    def check(question):
        want = head.ask(str(ds.image_path(id_)), question)
        bars = chart(at, 0)["data"][0]  # drawn best last (top of a horizontal bar chart)
        assert bars["y"][::-1] == [a for a, _ in want.answers]
        np.testing.assert_allclose(values(bars["x"])[::-1], [p for _, p in want.answers], atol=1e-6)
        heat = values(chart(at, 2)["data"][0]["z"])  # words x patches, averaged over glimpses
        np.testing.assert_allclose(heat, want.attention.mean(0).T, atol=1e-6)
        assert at.selectbox(key="vqa_word").options[1:] == want.words

    check(question)
    at.text_input(key="vqa_question").input("how many shapes are there?").run()  # a typed question
    assert not at.exception, at.exception
    check("how many shapes are there?")
    # another image starts from its own first question again (the typed one was for the first image)
    at.text_input(key="vqa_image_q").input(ds.ids()[1]).run()  # a search naming one row picks it
    assert not at.exception, at.exception
    assert ds.ids()[at.selectbox(key="vqa_image").value] == ds.ids()[1]
    assert at.text_input(key="vqa_question").value != "how many shapes are there?"


def test_glimpse_and_word_selectors(page_with_tiny_head):
    at, _, _ = page_with_tiny_head
    for glimpse in ("1", "2", "mean"):
        at.segmented_control(key="vqa_glimpse").set_value(glimpse).run()
        assert not at.exception, at.exception
    at.selectbox(key="vqa_word").set_value(at.selectbox(key="vqa_word").options[2]).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value  # the head's per-type accuracies (history of its training)
    assert "question type" in table.columns and len(table) >= 4
    assert np.isfinite(table.iloc[:, 1].to_numpy(float)).all()


def test_the_shipped_head_and_its_comparison_table(app_home):
    from mmviz.vqa import BUILTIN_VQA_DIR

    embedded_demo(app_home, n=12)
    at = open_page("vqa")
    assert at.selectbox(key="vqa_head").value == "builtin BAN (shapes world)"
    assert len(at.get("plotly_chart")) == 3
    table = at.dataframe[0].value.set_index("question type")
    shipped = json.loads((BUILTIN_VQA_DIR / "metrics.json").read_text())["val_accuracy"]
    assert list(table.columns) == list(shipped)
    for head, by_type in shipped.items():
        for kind, acc in by_type.items():
            assert table.loc[kind, head] == pytest.approx(acc)
    assert table.loc["overall", "ban"] > table.loc["overall", "majority"] + 0.3
    # the shipped head's glimpses are supervised: the page says so, and where they look on relations
    captions = [c.value for c in at.caption]
    assert any(c.startswith("This head's glimpses were trained to find the objects") for c in captions)
    binding = json.loads((BUILTIN_VQA_DIR / "metrics.json").read_text())["grounding"]["relation"]
    g0 = binding["glimpses"][0]
    assert any(f"glimpse 1: {g0['subject']:.2f} on the first object, {g0['object']:.2f} on the second" in c
               for c in captions), captions
