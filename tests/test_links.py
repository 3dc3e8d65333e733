"""State in the URL (app/links.py): a link opens the view it names, invalid parameters fall back
to defaults with a note, and a changed control changes the URL."""
from __future__ import annotations

import pytest

from conftest import APP, embedded_demo


@pytest.fixture
def demo(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".demo-offered").touch()
    embedded_demo(home, n=40)
    monkeypatch.setenv("MMVIZ_HOME", str(home))
    return home


def _open(page: str, params: dict):
    """The app opened on a page's link: the query as the browser would send it."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page(f"views/{page}.py")  # the first run is the linked page's, as in a browser
    at.query_params.update(params)
    at.run()
    assert not at.exception, at.exception
    return at


def _notes(at) -> str:
    return " ".join(c.value for c in at.caption if "Ignored in the link" in c.value)


def test_a_link_opens_the_transform_strength_and_projection_it_names(demo):
    at = _open("transforms", {"dataset": "shapes-demo", "model": "builtin:shapes", "transform": "collapse",
                              "strength": "0.35", "projection": "pca2"})
    assert at.radio(key="tf_kind").value == "Collapse"
    assert at.slider(key="tf_strength").value == pytest.approx(0.35)
    assert at.radio(key="tf_method").value == "PCA 2D"
    assert _notes(at) == ""
    qp = {k: v[0] if isinstance(v, list) else v for k, v in at.query_params.items()}
    assert qp["dataset"] == "shapes-demo" and qp["model"] == "builtin:shapes"
    assert qp["transform"] == "collapse" and qp["projection"] == "pca2" and qp["strength"] == "0.35"


def test_a_changed_control_is_written_to_the_url(demo):
    at = _open("transforms", {"transform": "shift"})
    at.slider(key="tf_lam").set_value(0.8).run()
    at.radio(key="tf_method").set_value("PCA 3D").run()
    assert not at.exception
    qp = {k: v[0] if isinstance(v, list) else v for k, v in at.query_params.items()}
    assert qp["lam"] == "0.8" and qp["projection"] == "pca3" and qp["transform"] == "shift"
    assert "strength" not in qp  # a control the page does not show now is not in the link


def test_invalid_parameters_get_a_note_and_the_defaults(demo):
    at = _open("gap", {"projection": "tsne", "seed": "-3", "bogus": "1", "dataset": "no-such-set",
                       "model": "not a :: spec"})
    notes = _notes(at)
    for part in ("projection=tsne", "expected one of gap2, pca2, pca3, umap2, umap3, dosnes", "seed=-3", "bogus",
                 "dataset=no-such-set", "model=not a :: spec"):
        assert part in notes, part
    assert at.radio(key="gap_method").value == "Gap axis" and at.number_input(key="gap_seed").value == 0
    assert at.selectbox(key="dataset").value == "shapes-demo"


def test_the_gap_explorer_opens_on_the_linked_projection_and_seed(demo):
    at = _open("gap", {"projection": "pca3", "seed": "7"})
    assert at.radio(key="gap_method").value == "PCA 3D" and at.number_input(key="gap_seed").value == 7
    assert _notes(at) == ""


def test_a_few_selected_ids_travel_in_the_link(demo):
    at = _open("gap", {"selected": "test-000001,test-000003,no-such-id"})
    assert any(m.value == "**2 selected**" for m in at.markdown)
    assert any("1 of the link's selected ids are not in this set" in c.value for c in at.caption)
    assert at.query_params["selected"] in ("test-000001,test-000003", ["test-000001,test-000003"])
    at.button(key="gap_clear").click().run()
    assert "selected" not in at.query_params


def test_the_vqa_link_names_the_image_and_the_question(demo):
    at = _open("vqa", {"image": "test-000002", "question": "how many shapes are there?"})
    assert at.text_input(key="vqa_question").value == "how many shapes are there?"
    assert at.selectbox(key="vqa_image").value == 2  # the one row whose id the search names
    assert _notes(at) == ""


def test_the_captions_link_names_one_candidate_system(demo):
    at = _open("captions", {"candidates": "demo", "system": "foil"})
    assert at.selectbox(key="cap_system").value == "foil"
    tables = [d.value for d in at.dataframe if {"caption", "system"} <= set(d.value.columns)]
    assert len(tables) == 2  # every candidate, and where the metrics disagree most: the foils only
    assert all(len(t) and set(t["system"]) == {"foil"} for t in tables)
