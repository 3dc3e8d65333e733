"""The Captioning page through Streamlit's AppTest: the shipped captioners caption one image and
a split, their scores are the core's, the captions go to the Captions page, and a captioner run
is refused on too few captions or trained in the background and then offered."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import embedded_demo, open_page
from test_app_finetune import _until
from mmviz import candidates
from mmviz.captioner import runs
from mmviz.captioner.builtin import builtin_folder, load_builtin
from mmviz.captioner.evaluate import evaluate
from mmviz.embed import encode_texts
from mmviz.models import load_model
from mmviz.store import Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHOWN = ("bleu4", "cider", "rouge_l", "clip_s", "refclip_s", "mid", "exact_match")
DEFAULT = [v for v in ("c1", "c3", "paired") if (builtin_folder(v) / "model.safetensors").exists()]


def _skip_without_builtins():
    if not DEFAULT:
        pytest.skip("no shipped captioners in assets/builtin-shapes/captioners")


def _captions_shown(at) -> list[str]:
    """The captions of the "One image" panel, in column order (markdown “…”)."""
    return [m.value[1:-1] for m in at.markdown if m.value.startswith("“") and m.value.endswith("”")]



def test_shipped_captioners_caption_one_image_and_the_test_split(app_home):
    _skip_without_builtins()
    ds, emb = embedded_demo(app_home, n=80)
    at = open_page("captioning")
    assert at.multiselect(key="capt_captioners").value == [f"builtin:{v}" for v in DEFAULT]
    assert [h.value for h in at.subheader][:3] == ["One image", "Corpus", "Worst failures"]

    # the corpus table holds the core's scores on the test split, one row per captioner
    loaded = load_model(emb.model)
    data = runs.data_of(emb).subset(runs.split_of(ds, emb, "test"))
    table = at.dataframe[0].value
    assert list(table["captioner"]) == [f"{v} (builtin)" for v in DEFAULT]
    for v, row in zip(DEFAULT, table.itertuples()):
        want = evaluate(load_builtin(v, loaded.tokenizer), data, lambda t: encode_texts(loaded, t), "").corpus
        for k in SHOWN:
            assert np.isfinite(getattr(row, k)), (v, k)
            assert getattr(row, k) == pytest.approx(want[k], rel=1e-6, abs=1e-9), (v, k)
        assert row.images == len(data.images)

    # one caption per chosen captioner for the first image, as the captioner writes it
    shown = _captions_shown(at)
    assert len(shown) == len(DEFAULT)
    for v, caption in zip(DEFAULT, shown):
        own = load_builtin(v, loaded.tokenizer).caption(np.array(emb.image[:1]))[0]
        assert caption.replace("\\", "") == own
    assert len([m for m in at.metric if m.label == "CLIP-S"]) == len(DEFAULT)
    assert any(m.value.startswith("**The image's own captions**") for m in at.markdown)

    # two captioners: two rows, two captions
    at.multiselect(key="capt_captioners").set_value(["builtin:c1", "builtin:c3"]).run()
    assert not at.exception, at.exception
    assert len(at.dataframe[0].value) == 2 and len(_captions_shown(at)) == 2

    # the worst failures, lowest PMI first, with thumbnails
    at.selectbox(key="capt_worst_by").set_value("pmi").run()
    assert not at.exception, at.exception
    worst = next(d.value for d in at.dataframe if "thumb" in d.value.columns)
    assert len(worst) == min(20, len(data.images))
    assert list(worst["pmi"]) == sorted(worst["pmi"])
    assert worst["thumb"].str.startswith("data:image/").all()


def test_send_to_captions_scores_one_system_per_captioner(app_home):
    _skip_without_builtins()
    ds, emb = embedded_demo(app_home, n=80)
    at = open_page("captioning")
    at.multiselect(key="capt_captioners").set_value(["builtin:c1", "builtin:c3"]).run()
    at.button(key="capt_send").click().run()
    assert not at.exception, at.exception
    sent = at.session_state["captioning_candidates"]
    labels = ["c1 (builtin)", "c3 (builtin)"]
    assert set(sent["system"]) == set(labels)
    n_test = len(runs.split_of(ds, emb, "test"))
    assert len(sent) == 2 * n_test and set(sent.columns) >= {"image", "caption", "system", "row"}
    # the Captions page opened on them: a leaderboard row per captioner, the core's numbers
    assert at.radio(key="cap_source").value == "From the Captioning page"
    board = at.dataframe[0].value.set_index("system")
    assert sorted(board.index) == sorted(labels)
    want = candidates.score_candidates(emb, sent, load_model(emb.model), prefix="").leaderboard.set_index("system")
    for system in labels:
        assert board.loc[system, "n"] == n_test
        for col in ("mid", "clip_s", "refclip_s"):
            assert board.loc[system, col] == pytest.approx(want.loc[system, col], abs=1e-9), (system, col)
    # and the page's other sources are still there
    assert set(at.radio(key="cap_source").options) >= {"Upload candidates (CSV or JSONL)", "From the Captioning page"}


def test_too_few_captions_to_train_says_so(app_home):
    embedded_demo(app_home, n=10)
    at = open_page("captioning")
    next(b for b in at.button if b.label == "Start training").click()
    at.run()
    assert not at.exception, at.exception
    assert any("a captioner needs at least" in e.value for e in at.error), [e.value for e in at.error]
    assert not runs.list_runs(Workspace(app_home))


def test_a_run_trains_in_the_background_and_is_then_offered(app_home):
    embedded_demo(app_home, n=80)
    ws = Workspace(app_home)
    at = open_page("captioning")
    at.radio(key="capt_variant").set_value("c1")
    at.number_input(key="capt_epochs").set_value(1)
    next(b for b in at.button if b.label == "Start training").click()
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    [run] = runs.list_runs(ws)
    assert run["run"].settings == {"variant": "c1", "epochs": 1, "seed": 0}
    _until(at, lambda: runs.list_runs(ws)[0]["state"] not in ("created", "running"), 90, "the run to end")
    at.run()
    assert runs.list_runs(ws)[0]["state"] == "finished", runs.list_runs(ws)[0]["error"]
    assert any("finished" in p.proto.text for p in at.get("progress"))
    result = at.dataframe[-1].value  # the run's test-split scores
    assert result["test images"].iloc[0] == 16
    assert f"run {run['id']} (c1)" in at.multiselect(key="capt_captioners").options  # shown by label
    at.multiselect(key="capt_captioners").set_value([f"run:{run['id']}"]).run()
    assert not at.exception, at.exception
    assert list(at.dataframe[0].value["captioner"]) == [f"run {run['id']} (c1)"] and len(_captions_shown(at)) == 1


def test_cancel_stops_the_run_with_its_checkpoint_and_offers_resume(app_home):
    from mmviz.run_folder import read_metrics

    embedded_demo(app_home, n=80)
    ws = Workspace(app_home)
    at = open_page("captioning")
    at.number_input(key="capt_epochs").set_value(1000)
    next(b for b in at.button if b.label == "Start training").click()
    at.run()
    assert not at.error, [e.value for e in at.error]
    [run] = runs.list_runs(ws)
    _until(at, lambda: len(read_metrics(run["folder"], "step")) >= 3, 90, "the first steps")
    at.button(key="capt_cancel").click()
    at.run()
    _until(at, lambda: runs.list_runs(ws)[0]["state"] == "cancelled", 60, "the run to stop")
    at.run()
    assert (run["folder"] / "checkpoint.safetensors").exists()
    assert any("cancelled" in p.proto.text for p in at.get("progress"))
    assert at.button(key="capt_resume")
    assert f"run {run['id']} (c3)" not in at.multiselect(key="capt_captioners").options  # not finished: not offered
