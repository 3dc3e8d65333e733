"""Every page (but the Gap explorer) on a set too large for a widget listing its ids: 6,000 pairs
of random 128-d vectors imported under the builtin model's name (so queries and caption
scoring can load a model). No selectbox, multiselect or radio lists more than MAX_OPTIONS
options, and each page's main output appears with the core's numbers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import open_page
from mmviz import retrieval, transforms
from mmviz.embed import embed_dataset
from mmviz.store import Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N, DIM = 6000, 128
MAX_OPTIONS = 1000  # app/common.py's bound, restated: the test must fail if a page lists more
SHAPES, COLOURS = ("circle", "square", "triangle", "diamond"), ("red", "green", "blue", "yellow")


def caption(i: int) -> str:
    return f"pair {i}: a {COLOURS[i % 4]} {SHAPES[i // 4 % 4]} on the left"


@pytest.fixture(scope="module")
def big_home(tmp_path_factory):
    """A launched workspace holding `big`: N pairs, one caption each, paired vectors near each other."""
    home = tmp_path_factory.mktemp("big-home")
    (home / ".demo-offered").touch()
    rng = np.random.default_rng(0)
    images = rng.normal(size=(N, DIM)) + 0.8  # a shared offset: a gap between the modalities
    texts = images + 1.2 * rng.normal(size=(N, DIM)) - 1.6
    src = tmp_path_factory.mktemp("src")
    np.save(src / "big.npy", np.stack([images, texts]).astype(np.float32))
    (src / "big.txt").write_text("".join(caption(i) + "\n" for i in range(N)))
    ws = Workspace(home)
    ws.import_path(src / "big.npy", "big", model_name="builtin:shapes")
    return home


@pytest.fixture
def big(big_home, monkeypatch):
    monkeypatch.setenv("MMVIZ_HOME", str(big_home))
    ws = Workspace(big_home)
    ds = ws.open("big")
    return ds, embed_dataset(ws, ds, "builtin:shapes")


def bounded(at) -> None:
    """No option list longer than MAX_OPTIONS anywhere on the page, sidebar included."""
    for kind in ("selectbox", "multiselect", "radio"):
        for w in at.get(kind):
            assert len(w.options) <= MAX_OPTIONS, (kind, w.label, len(w.options))


def text(at) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "info", "warning") for e in at.get(kind))


def app_common():
    """The app's `common` module, the same object the pages import (AppTest runs in this process)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
    try:
        import common
    finally:
        sys.path.pop(0)
    return common


def test_common_bound_is_the_one_tested():
    common = app_common()
    assert common.MAX_OPTIONS == MAX_OPTIONS and common.PICK_PAGE <= MAX_OPTIONS


def test_a_set_too_large_to_lay_out_whole_is_laid_out_on_the_drawn_sample(big, monkeypatch):
    common = app_common()
    monkeypatch.setattr(common, "LAYOUT_MAX_POINTS", 0)  # as if the set were past the bound

    def whole(*a, **k):
        raise AssertionError("a layout of the whole set was asked for")

    monkeypatch.setattr(common, "layout_for", whole)
    at = open_page("transforms", timeout=300)
    assert "The layout is fitted on this sample" in text(at)
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert sorted(points(tr.get("x", [])) for tr in figure["data"])[-2:] == [5000, 5000]
    for place in ("Refit on the result", "Place in the before layout"):
        at.radio(key="tf_place").set_value(place)
        at.radio(key="tf_method").set_value("PCA 3D").run()
        assert not at.exception, at.exception
        assert len(at.get("plotly_chart")) == 2
    at = open_page("mixup", timeout=300)
    at.radio(key="mx_view").set_value("PCA 3D").run()
    assert not at.exception, at.exception
    assert f"Drawn: a seeded sample of 5,000 of the {N:,} pairs." in text(at)


def test_data_page_pages_and_searches(big):
    ds, _ = big
    at = open_page("data")
    bounded(at)
    assert f"{N:,} pairs." in text(at)
    table = at.dataframe[0].value
    assert table["id"].tolist() == [str(i) for i in range(100)] and "thumbnail" not in table.columns
    assert "rows 1–100 of 6,000" in text(at)
    at.button(key="browse-big_next").click().run()
    assert at.dataframe[0].value["id"].tolist() == [str(i) for i in range(100, 200)]
    assert "rows 101–200 of 6,000" in text(at)
    at.selectbox(key="page_size").set_value(25).run()  # a new page size starts again at the first row
    assert at.dataframe[0].value["id"].tolist() == [str(i) for i in range(25)]

    at.text_input(key="search").input("pair 12").run()  # pair 12, 120-129, 1200-1299: 111 rows
    assert not at.exception, at.exception
    hits = ds.match("pair 12")
    assert len(hits) == 111 and f"111 of {N:,} pairs match." in text(at)
    assert at.dataframe[0].value["id"].tolist() == [str(i) for i in hits[:25]]
    at.selectbox(key="pair_id").set_value("1201").run()
    img, txt = ds.vectors()
    a, t = img[1201].astype(np.float64), txt[1201].astype(np.float64)
    assert {m.label: m.value for m in at.metric}["cos(image, text)"] == f"{a @ t / np.linalg.norm(a) / np.linalg.norm(t):.3f}"
    assert f"- {caption(1201)}" in text(at)
    bounded(at)


def test_transforms_page_stores_the_result_and_draws_a_sample(big, big_home):
    ds, emb = big
    at = open_page("transforms", timeout=300)
    bounded(at)
    table = {r["metric"]: (r["before"], r["after"]) for r in at.dataframe[0].value.to_dict("records")}
    after_i, after_t = transforms.make("collapse").fit_transform(emb.image, emb.text)
    want = transforms.evaluate(after_i, after_t, emb.text_owner, max_n=2048)
    gap_label = "Gap length"
    assert table[gap_label][1] == pytest.approx(want["gap_length"], abs=1e-9) and table[gap_label][0] > 0.5
    stored = list((big_home / "derived").iterdir())
    assert len(stored) == 1 and json.loads((stored[0] / "info.json").read_text())["rows"] == [N, N]
    np.testing.assert_array_equal(np.load(stored[0] / "image.npy", mmap_mode="r"), after_i)
    assert f"Drawn: a seeded sample of 5,000 of the {N:,} images" in text(at)
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    drawn = sorted(points(tr.get("x", [])) for tr in figure["data"])
    assert drawn[-2:] == [5000, 5000]  # the sampled images and their captions, no more


def test_transforms_recall_on_sampled_queries(big, monkeypatch):
    _, emb = big
    monkeypatch.setattr(retrieval, "DEFAULT_QUERIES", 1000)  # as if the set were large
    at = open_page("transforms", timeout=300)
    assert at.selectbox(key="tf_queries").options == ["a sample of 1,000", "every one of the 6,000"]
    rows = at.dataframe[0].value
    before = transforms.evaluate(emb.image, emb.text, emb.text_owner, max_n=2048, recall_queries=1000)
    label = transforms.RECALL_METRICS["t2i_r1"][0]
    assert rows.set_index("metric").loc[label, "before"] == pytest.approx(before["t2i_r1"], abs=1e-12)
    assert "seeded sample of 1,000 image and 1,000 caption queries" in text(at)


def test_retrieval_page_picks_by_search_and_samples_recall_on_request(big, monkeypatch):
    ds, emb = big
    at = open_page("retrieval", timeout=300)
    bounded(at)
    assert at.dataframe[0].value["R@1"].tolist() == pytest.approx(
        [recall_at(emb, d) for d in ("i2t", "t2i")], abs=1e-12)  # 6,000 queries: all of them
    at.text_input(key="ret_image_id_q").input("pair 4321:").run()
    assert at.selectbox(key="ret_image_id").options == [f"4321 · {caption(4321)}"]
    assert at.selectbox(key="ret_image_id").value == 4321  # the one match is picked
    at.run()
    assert not at.exception, at.exception
    scores, rows = retrieval.topk(emb.image[4321], emb.image, 9)
    cards = sorted((int(c.value[1:].split(" ")[0]), c.value.split("`")[1])  # (rank, id): the grid goes by columns
                   for c in at.get_by_key("ret_results").caption if c.value.startswith("#"))
    assert [id_ for _, id_ in cards] == [emb.ids[r] for r in rows if r != 4321][:8]
    bounded(at)

    monkeypatch.setattr(retrieval, "DEFAULT_QUERIES", 1000)  # now it counts as large: sampled, on request
    at = open_page("retrieval", timeout=300)
    assert not at.dataframe and any("Compute recall" in b.label for b in at.button)
    at.button(key="ret_compute").click().run()
    assert not at.exception, at.exception
    want = retrieval.recall_at_k(emb.image, emb.text, (1, 5, 10), emb.text_owner, queries=1000)
    got = at.dataframe[0].value
    assert got["R@1"].tolist() == pytest.approx([want["i2t"][1], want["t2i"][1]], abs=1e-12)
    assert got["R@10"].tolist() == pytest.approx([want["i2t"][10], want["t2i"][10]], abs=1e-12)
    worst = retrieval.worst_pairs(emb.image, emb.text, emb.text_owner, limit=50, queries=1000)
    assert at.dataframe[1].value["caption_row"].tolist() == worst["caption"].tolist()
    at = open_page("retrieval", timeout=300)  # reopened: read back from the workspace, no button
    assert at.dataframe[0].value["R@1"].tolist() == got["R@1"].tolist()


def points(field) -> int:
    """How many values a plotly array field holds: a list, or numpy's bytes as a typed-array dict."""
    if isinstance(field, dict):
        import base64

        return len(np.frombuffer(base64.b64decode(field["bdata"]), dtype=field["dtype"]))
    return len(field)


def recall_at(emb, direction: str) -> float:
    return retrieval.recall_at_k(emb.image, emb.text, 1, emb.text_owner)[direction]


def test_mixup_page_picks_both_ends_by_search(big):
    _, emb = big
    at = open_page("mixup", timeout=300)
    bounded(at)
    assert at.selectbox(key="mx_image").value == 0 and len(at.get("plotly_chart")) == 3
    at.text_input(key="mx_image_q").input("pair 5999").run()
    at.selectbox(key="mx_image").set_value(5999).run()
    at.slider(key="mx_lam").set_value(1.0).run()
    assert not at.exception, at.exception
    assert "image `5999` · 1.000" in text(at)  # lam = 1 is the image: itself is its nearest image
    assert f"1.000 · {caption(5999)[:60]}" in text(at)  # lam = 0 is its caption
    a = emb.image[5999].astype(np.float64)
    b = emb.text[5999].astype(np.float64)
    theta = np.degrees(np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    assert f"Angle between them: {theta:.1f}°" in text(at)
    hist = json.loads(at.get("plotly_chart")[1].proto.spec)  # histograms binned on the server
    assert [points(tr["y"]) for tr in hist["data"]] == [80, 80, 80]
    bounded(at)


def test_captions_probe_picks_the_image_by_search(big):
    _, emb = big
    at = open_page("captions", timeout=300)
    bounded(at)
    at.text_input(key="cap_probe_image_q").input("pair 77:").run()
    assert at.selectbox(key="cap_probe_image").options == [f"77 · {caption(77)}"]
    at.selectbox(key="cap_probe_image").set_value(77).run()
    assert not at.exception, at.exception
    probe = at.dataframe[-1].value
    assert probe["caption"].iloc[0] == emb.captions[77] and len(probe) > 1  # "blue" and "diamond" swap


def test_vqa_and_finetune_say_at_once_that_vectors_have_no_images(big):
    at = open_page("vqa")
    bounded(at)
    assert any("holds vectors only, no images" in c.value for c in at.caption)
    at = open_page("finetune")
    bounded(at)
    assert any(f"vectors of {N:,} pairs and no images" in i.value for i in at.info)
