"""The Fine-tune page: launch a run in the background, watch it, compare, use the model; cancel."""
from __future__ import annotations

import json
import time

import pytest

from conftest import open_page
from mmviz.builtin import make_demo
from mmviz.finetune import runs
from mmviz.run_folder import read_metrics
from mmviz.store import Workspace


def _until(at, predicate, timeout=180.0, what="condition"):
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)
        at.run()
        assert not at.exception, at.exception


def _start(at, steps: int, batch: int):
    at.number_input(key="ft_steps").set_value(steps)
    at.number_input(key="ft_batch").set_value(batch)
    at.radio(key="ft_loss").set_value("m2-mix")
    next(b for b in at.button if b.label == "Start run").click()
    at.run()
    assert not at.exception, at.exception


def test_launch_watch_compare_and_use_the_model(app_home, one_torch_thread):
    ws = Workspace(app_home)
    make_demo(ws, n=80)
    at = open_page("finetune")
    assert any("No runs yet" in i.value for i in at.info)
    _start(at, steps=6, batch=16)
    [run] = runs.list_runs(ws)
    assert run["config"].loss == "m2mix" and run["config"].steps == 6 and run["config"].batch_size == 16
    _until(at, lambda: runs.state(run["folder"]) not in ("created", "running"), what="the run to end")
    at.run()
    assert runs.state(run["folder"]) == "finished"
    result = json.loads((run["folder"] / "result.json").read_text())

    # the progress bar and curves came from metrics.jsonl
    assert any("finished" in p.proto.text and "step 6 / 6" in p.proto.text for p in at.get("progress"))
    curves = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    losses = [r["loss"] for r in read_metrics(run["folder"], "step")]
    assert curves[0]["name"] == "training loss" and curves[0]["y"] == pytest.approx(losses)
    assert {c["name"] for c in curves} >= {"clip term", "m2mix term", "val image→text R@1", "val gap length"}

    # before/after metrics as stored, and both sets placed in one layout
    table = at.dataframe[0].value  # the before/after table, then the runs table
    gap = table[table["metric"] == "Gap length"].iloc[0]
    assert gap["before"] == pytest.approx(result["before"]["gap_length"])
    assert gap["after"] == pytest.approx(result["after"]["gap_length"])
    charts = {c.proto.id: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    assert len(charts) == 3  # curves, before, after

    # the fine-tuned model becomes the sidebar's model
    at.button(key="ft_use").click()
    at.run()
    assert at.session_state["model_choice"] == result["model_spec"]
    label = f"fine-tuned builtin:shapes (m2mix, shapes-demo, run {run['id']})"
    assert label in at.sidebar.selectbox(key="model_choice").options
    runs_table = at.dataframe[-1].value
    assert list(runs_table["state"]) == ["finished"]


def test_cancel_from_the_page_stops_the_process_and_keeps_the_checkpoint(app_home, one_torch_thread):
    ws = Workspace(app_home)
    make_demo(ws, n=80)
    at = open_page("finetune")
    _start(at, steps=5, batch=4096)  # more than the 64 training images: refused before any process starts
    assert "larger than the 64 training images" in at.error[0].value and not runs.list_runs(ws)
    _start(at, steps=100000, batch=16)
    [run] = runs.list_runs(ws)
    _until(at, lambda: len(read_metrics(run["folder"], "step")) >= 3, what="the first steps")
    at.button(key="ft_cancel").click()
    at.run()
    _until(at, lambda: runs.state(run["folder"]) == "cancelled", 60, "the run to stop")
    from safetensors import safe_open

    with safe_open(str(run["folder"] / "checkpoint.safetensors"), "pt") as f:
        saved = int(f.metadata()["step"])
    assert saved == read_metrics(run["folder"], "step")[-1]["step"] >= 3
    assert at.button(key="ft_resume")  # a cancelled run can go on
