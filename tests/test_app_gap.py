"""Gap explorer page through Streamlit's AppTest."""
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from mmviz import geometry, results
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


def show_panels(at) -> None:
    """Until the map is first drawn (in a browser: its report; AppTest runs no JavaScript) the
    metrics, histogram and spectrum are held back, computed: "Show them now" brings them."""
    assert not at.dataframe and not at.get("plotly_chart")
    assert any("appear once the map is drawn" in c.value for c in at.caption)
    at.button(key="gap_show_panels").click().run()
    assert not at.exception, at.exception


def map_points(at):
    """The points table the Gap explorer sends to its map (the Arrow blob of its element)."""
    import pyarrow as pa

    [main] = [e for e in at.get("bidi_component") if e.key == "gap_map"]
    [blob] = main.proto.mixed.arrow_blobs.values()
    return pa.ipc.open_stream(blob.data).read_all()


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
    # held back while the map draws, but computed: showing them reads the workspace's cache
    assert results.metrics(ws.home, emb)[1] and results.spectra(ws.home, emb)[1]
    assert results.cosine_histograms(ws.home, emb)[1]
    show_panels(at)
    values = metric_values(at)
    assert set(values) == {label for label, _ in geometry.METRICS.values()}
    gap_label = geometry.METRICS["gap_length"][0]
    assert values[gap_label] == pytest.approx(geometry.gap_length(emb.image, emb.paired_text), abs=1e-9)
    assert values[gap_label] > 0.1  # a contrastive model's gap
    assert len(at.get("plotly_chart")) == 2  # cosine histogram, spectrum
    # the 2-D layout goes to the WebGL map as one Arrow table: every image and caption
    points = map_points(at)
    assert points.num_rows == len(emb.ids) + len(emb.text)
    assert points.column("c").to_pylist() == [0] * len(emb.ids) + [1] * len(emb.text)


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
        assert any(c.value == "Fits on every point." for c in at.caption)  # 200 points: under every limit
    at.radio(key="gap_method").set_value("PCA 2D").run()  # the panels already shown stay
    assert len(at.get("plotly_chart")) == 2 and len(at.dataframe) == 1


def test_sphere_fits_a_seeded_sample_and_places_the_rest(home, monkeypatch):
    """Over the sphere's fit limit (2,000 points, here lowered to 80 of the demo's 200) the page
    says so, and the layout it stores was fitted on 80 points with the other 120 placed."""
    from mmviz import projection
    from mmviz.projection import layout as layout_module

    monkeypatch.setitem(layout_module.DEFAULT_MAX_FIT, "dosnes", 80)
    ws = Workspace(home)
    ds = make_demo(ws, n=40)
    emb = embed_dataset(ws, ds, "builtin:shapes")
    at = gap_page()
    at.radio(key="gap_method").set_value("DOSNES sphere").run()
    assert not at.exception, at.exception
    assert any(c.value.startswith("Fits on a seeded sample of 80 points and places the rest") for c in at.caption)
    assert len(at.get("plotly_chart")) == 3  # the sphere comes with the panels: no map to wait for
    parts = {"dataset": ds.manifest["content_hash"], "model": emb.fingerprint}
    stored, hit = projection.cached_layout(ws, parts, emb.image, emb.text, "dosnes", None, 0, identifies_data=True)
    assert hit  # what the page computed, read back
    n = len(emb.ids) + len(emb.text)
    assert n == 200 and len(stored.fit_index) == 80 and len(np.unique(stored.fit_index)) == 80
    xyz = np.vstack([stored.image_xy, stored.text_xy])
    assert xyz.shape == (200, 3) and np.allclose(np.linalg.norm(xyz, axis=1), 1, atol=1e-5)  # all on the sphere


def test_vectors_only_set_uses_its_own_vectors(home, tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(30, 16)) + 2.0
    txt = rng.normal(size=(30, 16)) - 2.0
    np.save(tmp_path / "vecs.npy", np.stack([img, txt]))
    Workspace(home).import_path(tmp_path / "vecs.npy", "vecs")
    at = gap_page()
    show_panels(at)
    values = metric_values(at)
    assert values[geometry.METRICS["gap_length"][0]] == pytest.approx(geometry.gap_length(img, txt), abs=1e-6)
    assert "precomputed:vecs" in " ".join(c.value for c in at.caption)
    at.run()  # a rerun of the page keeps them
    assert len(at.dataframe) == 1 and len(at.get("plotly_chart")) == 2
    at.switch_page("views/data.py").run()
    at.switch_page("views/gap.py").run()  # back from another page: the map draws first again
    show_panels(at)


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


def test_large_set_colours_by_a_column_and_samples_its_3d_view(home, tmp_path):
    """30,000 pairs (60,000 points): the map draws them all, coloured by a table column; the 3-D
    view draws a seeded sample of 50,000 whole pairs' points and says so; no widget lists
    the pairs."""
    rng = np.random.default_rng(0)
    n = 30_000
    np.save(tmp_path / "big.npy", np.stack([rng.normal(size=(n, 8)) + 1, rng.normal(size=(n, 8)) - 1]))
    import pandas as pd

    pd.DataFrame({"caption": [f"c{i}" for i in range(n)], "topic": [f"t{i % 3}" for i in range(n)]}).to_csv(
        tmp_path / "big.csv", index=False)
    Workspace(home).import_path(tmp_path / "big.npy", "big")
    at = gap_page()
    assert map_points(at).num_rows == 2 * n
    at.selectbox(key="gap_colour").set_value("topic").run()
    assert not at.exception, at.exception
    codes = np.array(map_points(at).column("c").to_pylist())
    assert sorted(set(codes)) == [0, 1, 2] and (codes[:3] != codes[0]).any()  # three topics, by pair
    np.testing.assert_array_equal(codes[:n], codes[n:])  # a caption takes its image's colour
    for widget in (*at.selectbox, *at.radio):
        assert len(widget.options) <= 10
    at.radio(key="gap_method").set_value("PCA 3D").run()
    assert not at.exception, at.exception
    assert any("draw a seeded sample: 50,000 of 60,000 points" in c.value for c in at.caption)
    [fig] = [f for f in at.get("plotly_chart") if f.key == "gap_chart"]
    import json
    import re

    names = [t.get("name", "") for t in json.loads(fig.proto.spec)["data"]]
    counts = [int(re.sub(r"\D", "", n)) for n in names if n.startswith(("images (", "captions ("))]
    assert sum(counts) == 50_000 and counts[0] == counts[1]  # whole pairs: one caption per image here
