"""Gap explorer page through Streamlit's AppTest."""
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from mmviz import geometry
from mmviz.builtin import make_demo
from mmviz.embed import embed_dataset
from mmviz.store import Workspace

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    h.mkdir()
    (h / ".demo-offered").touch()
    monkeypatch.setenv("MMVIZ_HOME", str(h))
    return h


def gap_page(**state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("views/gap.py")
    at.run()
    assert not at.exception, at.exception
    return at


def metric_values(at) -> dict[str, float]:
    table = at.dataframe[0].value
    return dict(zip(table["metric"], table["value"]))


def test_unembedded_set_offers_to_embed_then_shows_the_gap(home):
    ws = Workspace(home)
    make_demo(ws, n=40)
    at = gap_page()
    assert any("not embedded under builtin:shapes yet" in i.value for i in at.info)
    at.button(key="gap_embed").click().run()
    assert not at.exception, at.exception
    emb = embed_dataset(ws, ws.open("shapes-demo"), "builtin:shapes")
    values = metric_values(at)
    assert set(values) == {label for label, _ in geometry.METRICS.values()}
    gap_label = geometry.METRICS["gap_length"][0]
    assert values[gap_label] == pytest.approx(geometry.gap_length(emb.image, emb.paired_text), abs=1e-9)
    assert values[gap_label] > 0.1  # a contrastive model's gap
    assert len(at.get("plotly_chart")) == 3  # projection, cosine histogram, spectrum


def test_projections_and_the_layout_cache(home):
    ws = Workspace(home)
    ds = make_demo(ws, n=40)
    embed_dataset(ws, ds, "builtin:shapes")
    at = gap_page()
    assert not any("Layout from the workspace cache" in c.value for c in at.caption)
    at.run()  # the same layout again: now from the cache
    assert any("Layout from the workspace cache" in c.value for c in at.caption)
    for label in ("PCA 3D", "DOSNES sphere"):
        at.radio(key="gap_method").set_value(label).run()
        assert not at.exception, at.exception
        assert len(at.get("plotly_chart")) == 3


def test_vectors_only_set_uses_its_own_vectors(home, tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(30, 16)) + 2.0
    txt = rng.normal(size=(30, 16)) - 2.0
    np.save(tmp_path / "vecs.npy", np.stack([img, txt]))
    Workspace(home).import_path(tmp_path / "vecs.npy", "vecs")
    at = gap_page()
    values = metric_values(at)
    assert values[geometry.METRICS["gap_length"][0]] == pytest.approx(geometry.gap_length(img, txt), abs=1e-6)
    assert "precomputed:vecs" in " ".join(c.value for c in at.caption)


def test_selected_pairs_show_their_images_and_captions(home):
    ws = Workspace(home)
    ds = make_demo(ws, n=30)
    emb = embed_dataset(ws, ds, "builtin:shapes")
    at = gap_page()
    key = f"gap_picked-{ds.name}-{ds.manifest['content_hash'][:10]}-{emb.fingerprint[:10]}"  # per set version and model
    at.session_state[key] = [0, 2]  # what a lasso over two images leaves behind
    at.run()
    assert not at.exception, at.exception
    text = "\n".join(m.value for m in at.markdown)
    assert "**2 selected**" in text
    for row in (0, 2):
        assert f"`{emb.ids[row]}`" in text
        for cap in [c for c, o in zip(emb.captions, emb.text_owner) if o == row]:
            assert f"– {cap}" in text
    assert len(at.image) == 2  # their thumbnails
