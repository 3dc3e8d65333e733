"""Captions page through Streamlit's AppTest: the demo's leaderboard, agreement and probe are the core's."""
import numpy as np
import pytest

from conftest import embedded_demo, open_page
from mmviz import candidates
from mmviz.models import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_demo_leaderboard_agreement_and_probe(app_home):
    ds, emb = embedded_demo(app_home, n=80)
    at = open_page("captions")
    board = at.dataframe[0].value.set_index("system")
    want = candidates.score_candidates(emb, candidates.demo_candidates(ds, emb), load_model(emb.model), prefix="")
    expected = want.leaderboard.set_index("system")
    assert set(board.index) == {"ground truth", "paraphrase", "foil"}
    for system in board.index:
        for col in ("mid", "clip_s", "refclip_s"):
            assert board.loc[system, col] == pytest.approx(expected.loc[system, col], abs=1e-9), (system, col)
    # true captions beat foils on every score
    for col in ("mid", "clip_s", "refclip_s"):
        assert board.loc["ground truth", col] > board.loc["foil", col]
    # the demo's human scores (1 true, 0 foil) give the agreement table
    agreement = at.dataframe[1].value
    assert len(agreement) >= 3
    # the per-candidate table holds the core's scores, row for row
    per = at.dataframe[2].value
    assert len(per) == 3 * 80
    np.testing.assert_allclose(per["clip_s"].to_numpy(), want.per_sample["clip_s"].to_numpy(), atol=1e-9)
    np.testing.assert_allclose(per["pmi"].to_numpy(), want.per_sample["pmi"].to_numpy(), atol=1e-9)
    assert len(at.get("plotly_chart")) == 1


def test_probe_scores_the_typed_caption_and_its_foils(app_home):
    _, emb = embedded_demo(app_home, n=80)
    at = open_page("captions")
    typed = "a large red circle in the centre"
    at.text_input(key="cap_probe_text-0").input(typed).run()
    assert not at.exception, at.exception
    probe = at.dataframe[-1].value
    assert probe["caption"].iloc[0] == typed
    assert len(probe) > 1  # "red" and "circle" can be swapped
    want = candidates.probe(emb, load_model(emb.model), 0, typed)
    np.testing.assert_allclose(probe["clip_s"].to_numpy(), want["clip_s"].to_numpy(), atol=1e-9)


def test_upload_mode_explains_the_columns_and_scores_nothing_yet(app_home):
    embedded_demo(app_home, n=20)
    at = open_page("captions")
    at.radio(key="cap_source").set_value("Upload candidates (CSV or JSONL)").run()
    assert not at.exception, at.exception
    # AppTest cannot drive st.file_uploader: the browser test uploads a file on this page.
    assert any("Columns: `image`" in c.value for c in at.caption)
    assert "Leaderboard" not in [h.value for h in at.subheader]  # nothing scored before a file comes


def test_a_set_of_imported_vectors_says_scoring_needs_a_loadable_model(app_home, tmp_path):
    from mmviz.store import Workspace

    rng = np.random.default_rng(0)
    np.save(tmp_path / "vecs.npy", np.stack([rng.normal(size=(20, 16)), rng.normal(size=(20, 16))]))
    Workspace(app_home).import_path(tmp_path / "vecs.npy", "vecs")
    at = open_page("captions")
    assert any("model that made this set's vectors, `precomputed:vecs`" in w.value for w in at.warning)
    assert not at.dataframe and "Leaderboard" not in [h.value for h in at.subheader]
