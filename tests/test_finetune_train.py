"""The fine-tuning trainer: what trains, the schedule, checkpoints, a run that learns, resume
after a kill, cancel, the exported model, and torchrun giving the steps of one process."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mmviz.builtin import make_demo
from mmviz.finetune import runs
from mmviz.finetune.losses import info_nce
from mmviz.finetune.config import FinetuneConfig, create_run, split_rows
from mmviz.finetune.train import (PairData, global_batch, load_checkpoint, lr_at, make_optimizer, run, save_checkpoint,
                                  select_trainable)
from mmviz.run_folder import read_metrics, read_status
from mmviz.models import build_model, load_model
from mmviz.store import Workspace

REPO = Path(__file__).resolve().parents[1]
N_DEMO = 200


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory, one_torch_thread):
    home = tmp_path_factory.mktemp("ft-home")
    make_demo(Workspace(home), n=N_DEMO)
    return home


def small(**kw) -> FinetuneConfig:
    base = dict(dataset="shapes-demo", steps=12, batch_size=32, lr=1e-4, warmup=2, checkpoint_every=4, seed=0)
    return FinetuneConfig(**{**base, **kw})


def step_losses(folder) -> list[float]:
    return [r["loss"] for r in read_metrics(folder, "step")]


def test_config_validation_names_the_setting():
    for kw, word in [(dict(trainable="head"), "trainable"), (dict(steps=0), "steps"), (dict(batch_size=1), "batch_size"),
                     (dict(val_fraction=1.5), "val_fraction"), (dict(temperature=0.0), "temperature"),
                     (dict(loss="mix"), "loss")]:
        with pytest.raises(ValueError, match=word):
            FinetuneConfig(dataset="x", **kw)
    with pytest.raises(ValueError, match="unknown fine-tuning settings: colour"):
        FinetuneConfig.from_dict({"dataset": "x", "colour": 1})


def test_learning_rate_warms_up_then_follows_a_cosine_to_zero():
    lr, steps, warmup = 1e-3, 110, 10
    assert [lr_at(s, steps, lr, warmup) for s in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])
    assert lr_at(10, steps, lr, warmup) == pytest.approx(1e-3)  # cosine starts at the peak
    assert lr_at(60, steps, lr, warmup) == pytest.approx(5e-4)  # half-way: cos(pi/2) = 0
    assert lr_at(110, steps, lr, warmup) == pytest.approx(0.0, abs=1e-15)


def test_split_and_batches_are_seeded_disjoint_and_drop_the_last_partial_batch():
    s = split_rows(100, 0.2, seed=3, max_val=1000)
    assert len(s.val) == 20 and len(s.train) == 80 and not set(s.val) & set(s.train)
    assert np.array_equal(split_rows(100, 0.2, 3, 1000).val, s.val)
    assert not np.array_equal(split_rows(100, 0.2, 4, 1000).val, s.val)
    assert len(split_rows(100, 0.5, 3, max_val=7).val) == 7
    # 80 training images in batches of 32: two per epoch; step 2 starts epoch 1 in a new order
    b0, e0 = global_batch(s.train, 32, 0, 0)
    b1, _ = global_batch(s.train, 32, 0, 1)
    b2, e2 = global_batch(s.train, 32, 0, 2)
    assert (e0, e2) == (0, 1) and len(b0) == 32 and not set(b0) & set(b1)
    assert set(b0) | set(b1) <= set(s.train) and not np.array_equal(b2, b0)
    with pytest.raises(ValueError, match="lower --batch-size"):
        global_batch(s.train, 81, 0, 0)
    with pytest.raises(ValueError, match="too few"):
        split_rows(2, 0.5, 0, 10)


def test_trainable_parts_of_the_builtin_model():
    model = build_model("builtin:shapes", "cpu").model
    proj = select_trainable(model, "proj")
    assert set(proj) == {"visual.proj", "text_projection", "logit_scale"}
    assert sum(p.requires_grad for p in model.parameters()) == 3
    assert "logit_scale" not in select_trainable(model, "proj", learn_scale=False)
    last = select_trainable(model, "last", last_blocks=1)
    assert any(n.startswith("visual.transformer.resblocks.3.") for n in last)
    assert any(n.startswith("transformer.resblocks.3.") for n in last)
    assert not any(".resblocks.2." in n for n in last)
    assert {"visual.ln_post.weight", "ln_final.weight", "visual.proj", "text_projection"} <= set(last)
    two = select_trainable(model, "last", last_blocks=2)
    assert any(".resblocks.2." in n for n in two) and not any(".resblocks.1." in n for n in two)
    assert len(select_trainable(model, "all")) == len(list(model.parameters()))


def test_checkpoint_round_trip_restores_weights_and_adamw_state(tmp_path):
    def build():
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
        m[0].weight.requires_grad_(False)
        return m, make_optimizer(m, small())

    def step(m, o, x):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()

    xs = torch.randn(4, 5, 4, generator=torch.Generator().manual_seed(1))
    model, opt = build()
    for x in xs[:3]:
        step(model, opt, x)
    save_checkpoint(tmp_path, model, opt, step=3)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "checkpoint.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.0.weight" not in keys and {"model.1.weight", "opt.1.weight.exp_avg", "opt.1.weight.step"} <= keys

    fresh, fresh_opt = build()
    assert load_checkpoint(tmp_path, fresh, fresh_opt) == 3
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)
    step(model, opt, xs[3])  # the same fourth step from equal states (moments included)
    step(fresh, fresh_opt, xs[3])
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)
    assert load_checkpoint(tmp_path / "none", fresh, fresh_opt) == 0


def test_a_short_run_lowers_the_training_loss_and_exports_a_loadable_model(demo_home):
    ws = Workspace(demo_home)
    # from random weights of the builtin architecture, so that 30 steps have something to learn
    folder = create_run(ws, small(model="mmviz-shapes:random", steps=30, lr=1e-3, warmup=3, checkpoint_every=10))
    result = run(ws, folder)
    assert read_status(folder)["state"] == "finished"
    steps = read_metrics(folder, "step")
    assert [r["step"] for r in steps] == list(range(1, 31))
    assert all(math.isfinite(r["loss"]) for r in steps)
    evals = read_metrics(folder, "epoch")
    # 160 training images in batches of 32: an epoch is 5 steps, each closed by a validation row
    assert [r["step"] for r in evals] == [5, 10, 15, 20, 25, 30]
    losses = [r["loss"] for r in steps]
    assert [r["train_loss"] for r in evals] == pytest.approx([np.mean(losses[i - 5:i]) for i in range(5, 31, 5)])
    assert all(0 <= r["val_i2t_r1"] <= 1 and r["val_gap"] > 0 for r in evals)

    # the training loss on a fixed set of training pairs, before and after, at the model's own scale
    base = build_model("mmviz-shapes:random", "cpu")
    tuned = load_model(result["model_spec"], device="cpu")
    data = PairData(ws.open("shapes-demo"), base)
    train = split_rows(len(data), 0.2, 0, 2000).train[:96]
    x, tokens = data.images(train), data.tokens[torch.as_tensor(data.caption_start[train])]

    def loss(m):
        with torch.no_grad():
            img, txt, scale = m(x, tokens)
            return float(info_nce(img, txt, scale))

    before, after = loss(base.model.eval()), loss(tuned.model)
    assert after < before - 0.5, (before, after)

    # the exported folder is the trained model: its vectors are the stored "after" vectors
    vec = np.load(folder / "after.npz")
    with torch.no_grad():
        x_val = data.images(split_rows(len(data), 0.2, 0, 2000).val[:8])
        img = torch.nn.functional.normalize(tuned.model.encode_image(x_val), dim=-1).numpy()
    assert np.allclose(img, vec["image"][:8], atol=1e-5)
    assert set(result["before"]) == set(result["after"]) and "gap_length" in result["after"]
    assert result["before"]["i2t_r1"] == pytest.approx(json.loads((folder / "before.json").read_text())["i2t_r1"])
    assert (result["first_loss"], result["resumed_from"]) == (steps[0]["loss"], 0)


def test_projection_only_run_changes_only_the_projections(demo_home):
    ws = Workspace(demo_home)
    folder = create_run(ws, small(steps=4, trainable="proj", temperature=0.05, eval_every=100))
    result = run(ws, folder)
    base = build_model("builtin:shapes", "cpu").model.state_dict()
    tuned = load_model(result["model_spec"], device="cpu").model.state_dict()
    changed = {k for k in base if not torch.equal(base[k].float(), tuned[k].float())}
    assert changed == {"visual.proj", "text_projection"}
    assert all(r["logit_scale"] == pytest.approx(20.0) for r in read_metrics(folder, "step"))
    assert result["trained_parameters"] == base["visual.proj"].numel() + base["text_projection"].numel()


def _wait_for(predicate, timeout=120.0, what="condition"):
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_resume_after_a_kill_takes_the_same_steps_as_an_uninterrupted_run(demo_home):
    ws = Workspace(demo_home)
    cfg = small(loss="m2mix", steps=24, checkpoint_every=4, eval_every=100)
    reference = create_run(ws, cfg)
    run(ws, reference)

    folder = runs.launch(ws, cfg)
    pid = runs.process_id(folder)
    _wait_for(lambda: read_status(folder).get("step", 0) >= 8, what="two checkpoints")
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: runs.state(folder) == "interrupted", 30, "the kill to show")
    from safetensors import safe_open

    with safe_open(str(folder / "checkpoint.safetensors"), "pt") as f:
        saved = int(f.metadata()["step"])
    assert saved >= 8 and saved % 4 == 0

    result = run(ws, folder)  # resumes in this process from the checkpoint
    assert result["resumed_from"] == saved
    assert [r["step"] for r in read_metrics(folder, "step")] == list(range(1, 25))  # each step logged once
    assert step_losses(folder) == pytest.approx(step_losses(reference), abs=1e-5)
    assert result["after"]["i2t_r1"] == pytest.approx(json.loads((reference / "result.json").read_text())["after"]["i2t_r1"])


def test_cancel_stops_the_process_and_keeps_its_last_checkpoint(demo_home):
    ws = Workspace(demo_home)
    folder = runs.launch(ws, small(steps=100000, checkpoint_every=1000, eval_every=100000))
    _wait_for(lambda: read_status(folder).get("state") == "running" and read_metrics(folder, "step"),
              what="the first steps")
    assert runs.is_running(folder)
    assert runs.cancel(folder, wait=60)
    assert runs.state(folder) == "cancelled"
    from safetensors import safe_open

    with safe_open(str(folder / "checkpoint.safetensors"), "pt") as f:
        saved = int(f.metadata()["step"])
    assert saved == read_metrics(folder, "step")[-1]["step"] > 0  # saved where it stopped
    listed = {r["id"]: r for r in runs.list_runs(ws)}
    assert listed[folder.name]["state"] == "cancelled"


def test_torchrun_with_two_processes_takes_the_steps_of_one(demo_home, tmp_path):
    """The CLI entry point under torchrun (Gloo on CPU): same per-step losses as one process."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    args = ["--home", str(demo_home), "finetune", "shapes-demo", "--steps", "5", "--batch-size", "32",
            "--loss", "m2mix", "--noise", "0.1", "--eval-every", "100", "--json", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    one = subprocess.run([sys.executable, "-m", "mmviz.cli", *args], env=env, capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert one.returncode == 0, one.stderr
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
                          "-m", "mmviz.cli", *args], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert two.returncode == 0, two.stderr[-3000:]
    r1 = json.loads(one.stdout[one.stdout.index("{"):])
    r2 = json.loads(two.stdout[two.stdout.index("{"):])
    assert (r1["world_size"], r2["world_size"]) == (1, 2)
    f1 = Path(r1["model_spec"][len("local-dir:"):]).parent
    f2 = Path(r2["model_spec"][len("local-dir:"):]).parent
    assert step_losses(f2) == pytest.approx(step_losses(f1), abs=1e-5)
    assert r2["after"]["gap_length"] == pytest.approx(r1["after"]["gap_length"], abs=1e-4)


def test_cli_usage_errors_and_run_listing(demo_home, capsys):
    from mmviz.cli import main

    home = ["--home", str(demo_home)]
    assert main([*home, "finetune"]) == 2
    assert "give a dataset NAME for a new run, or --resume RUN" in capsys.readouterr().err
    assert main([*home, "finetune", "nope"]) == 1
    assert "no dataset 'nope'" in capsys.readouterr().err
    assert main([*home, "finetune", "--resume", "20990101-000000-clip-x"]) == 1
    assert "no run 20990101-000000-clip-x" in capsys.readouterr().err
    assert main([*home, "finetune", "shapes-demo", "--batch-size", "1"]) == 1
    assert "batch_size must be at least 2" in capsys.readouterr().err
    assert main([*home, "finetune", "shapes-demo", "--batch-size", "500"]) == 1
    assert "batch size 500 is larger than the 160 training images of shapes-demo" in capsys.readouterr().err
    t0 = time.time()
    assert main([*home, "finetune", "shapes-demo", "--model", "ViT-B-32:openai"]) == 1
    assert "not in the local cache" in capsys.readouterr().err and time.time() - t0 < 20
    assert main([*home, "runs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed and all(r["state"] in ("finished", "cancelled", "failed", "interrupted") for r in listed)
    assert main([*home, "runs"]) == 0
    assert "RUN" in capsys.readouterr().out
