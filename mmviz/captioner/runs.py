"""Captioners trained on a workspace dataset, as background runs like fine-tuning's.

A run folder `<home>/captioners/RUN/` holds config.json (dataset, CLIP model, the training
settings), status.json, metrics.jsonl (a row per step), checkpoint.safetensors while it trains,
and when finished `captioner/` (the saved captioner) and result.json (its scores on the held-out
test images). The app starts runs with `launch`, which runs
`python -m mmviz.cli captioner train --resume RUN` (the same process machinery as fine-tuning:
`mmviz.finetune.runs.start`); a cancelled or killed run resumes from its checkpoint.

Which images train and which test: a table column `split` holding both "train" and "test"
decides; otherwise a seeded 20% of the images (seed 0, whatever the training seed, so every
captioner of a set is scored on the same images) is the test split.
"""
from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from ..store import Workspace, atomic_write_json
from .train import MIN_CAPTIONS, CaptionData, CaptionerConfig, Cancelled, split_images

SPLITS = ("test", "train", "all")
TEST_FRACTION, MAX_TEST = 0.2, 2000


@dataclass
class CaptionerRun:
    """What a captioner run trains: `settings` are CaptionerConfig's fields."""

    dataset: str
    model: str = "builtin:shapes"
    settings: dict = field(default_factory=dict)

    def config(self) -> CaptionerConfig:
        return CaptionerConfig.from_dict(self.settings)

    @classmethod
    def from_dict(cls, d: dict) -> "CaptionerRun":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown captioner run settings: {', '.join(sorted(unknown))}")
        run = cls(**d)
        run.config()  # validates
        return run


def runs_dir(home) -> Path:
    return (home if isinstance(home, Workspace) else Workspace(home)).home / "captioners"


def data_of(emb) -> CaptionData:
    """A dataset's embeddings (`mmviz.embed.Embeddings`) as captioner data."""
    return CaptionData(emb.text, np.asarray(emb.text_owner), list(emb.captions), emb.image, list(emb.ids))


def split_of(ds, emb, which: str) -> np.ndarray:
    """Image rows (of `emb`) in the split `which`: "train", "test" or "all" (see the module doc)."""
    if which not in SPLITS:
        raise ValueError(f"unknown split {which!r}: use one of {', '.join(SPLITS)}")
    n = len(emb.ids)
    if which == "all":
        return np.arange(n)
    if "split" in ds.columns():
        values = np.asarray(ds.column("split").to_numpy(zero_copy_only=False), dtype=object)[emb.table_rows]
        if {"train", "test"} <= set(values):
            return np.flatnonzero(values == which)
    train, test = split_images(n, TEST_FRACTION, 0, MAX_TEST)
    return test if which == "test" else train


def _open(ws: Workspace, run: CaptionerRun, embed_missing: bool = True, progress=None):
    from ..embed import embed_dataset, stored_embeddings

    ds = ws.open(run.dataset)
    emb = stored_embeddings(ws, ds, run.model)
    if emb is None:
        if not embed_missing:
            raise ValueError(f"{ds.name} is not embedded under {run.model} yet: mmviz embed {ds.name} --model "
                             f"{run.model}")
        emb = embed_dataset(ws, ds, run.model, progress=progress)
    return ds, emb


def preflight(home, run: CaptionerRun) -> None:
    """Fail fast, before a process starts: no such dataset, too few training captions, a
    paired run on a set without images, a model whose weights are not here."""
    from ..models import parse_spec, resolve

    ws = home if isinstance(home, Workspace) else Workspace(home)
    config = run.config()
    if not ws.exists(run.dataset):
        raise ValueError(f"no dataset {run.dataset!r} in {ws.home}")
    ds = ws.open(run.dataset)
    resolve(parse_spec(run.model), download=False)  # ModelSpecError / ModelUnavailable in seconds
    import pyarrow.compute as pc

    n_captions = int(pc.sum(pc.list_value_length(ds.column("captions"))).as_py() or 0)
    n_train = int(round(n_captions * (1 - TEST_FRACTION)))  # about what the test split leaves
    if n_train < MIN_CAPTIONS:
        raise ValueError(f"dataset {ds.name} has {n_captions} captions, about {n_train} for training after the test "
                         f"split; a captioner needs at least {MIN_CAPTIONS}. Import a set with more captions")
    if config.variant == "paired" and not ds.manifest.get("images") and not ds.manifest.get("vector_model"):
        raise ValueError(f"the paired variant trains on image embeddings and {ds.name} has no images")


def create_run(home, run: CaptionerRun) -> Path:
    from ..run_folder import make_run_folder

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", run.dataset)[:40]
    return make_run_folder(runs_dir(home), f"{time.strftime('%Y%m%d-%H%M%S')}-{run.config().variant}-{name}",
                           asdict(run))


def read_run(folder: str | os.PathLike) -> CaptionerRun:
    return CaptionerRun.from_dict(json.loads((Path(folder) / "config.json").read_text("utf-8")))


def launch(home, run: CaptionerRun | None = None, folder: str | os.PathLike | None = None,
           python: str | None = None) -> Path:
    """Start a new run, or resume the run folder `folder`, in a background process; returns
    the folder at once."""
    from ..finetune import runs as process_runs

    if (run is None) == (folder is None):
        raise ValueError("give either a new run or the folder of one to resume")
    resuming = folder is not None
    if run is not None:
        preflight(home, run)
    folder = Path(folder) if resuming else create_run(home, run)
    if resuming and process_runs.is_running(folder):  # a new run is "created" until its process starts
        raise ValueError(f"captioner run {folder.name} is already running")
    process_runs.start(home, folder, ["captioner", "train", "--resume", str(folder), "--quiet"], python)
    return folder


def train_run(home, folder: str | os.PathLike, progress: Callable[[dict], None] | None = None,
              embed_progress=None) -> dict:
    """Train (or resume) the run in `folder`, then caption its test images and score them;
    returns result.json's content. SIGTERM, a first Ctrl-C or a `cancel` file stop it after the
    current step with its checkpoint saved (raises Cancelled)."""
    from ..run_folder import append_metrics, cancel_requested, truncate_metrics, write_status
    from ..models import load_model
    from ..embed import encode_texts
    from ..candidates import default_prefix
    from .evaluate import evaluate
    from .train import fit

    folder = Path(folder)
    ws = home if isinstance(home, Workspace) else Workspace(home)
    run = read_run(folder)
    config = run.config()
    stop = {"flag": False}

    def on_term(signum, frame):
        if signum == signal.SIGINT and stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True

    handlers = {s: signal.signal(s, on_term) for s in (signal.SIGTERM, signal.SIGINT)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        write_status(folder, "running", pid=os.getpid())
        ds, emb = _open(ws, run, progress=embed_progress)
        data = data_of(emb)
        train_rows, test_rows = split_of(ds, emb, "train"), split_of(ds, emb, "test")
        loaded = load_model(run.model)
        ckpt = folder / "checkpoint.safetensors"
        if ckpt.exists():
            from safetensors import safe_open

            with safe_open(str(ckpt), "pt") as f:
                truncate_metrics(folder, int(f.metadata()["step"]))

        def step(row: dict) -> None:
            append_metrics(folder, {"kind": "step", **row})
            if row["step"] % config.checkpoint_every == 0 or row["step"] == row["steps"]:
                write_status(folder, "running", step=row["step"], steps=row["steps"])
            if progress is not None:
                progress(row)

        train = data.subset(train_rows)
        captioner = fit(train, loaded.tokenizer, config, clip_model=run.model,
                        clip_fingerprint=loaded.fingerprint, folder=folder, progress=step,
                        should_stop=lambda: stop["flag"] or cancel_requested(folder),
                        extra_info={"dataset": run.dataset, "dataset_key": ds.key, "run": folder.name})
        captioner.save(folder / "captioner")
        captioner = captioner.roundtrip()
        test = data.subset(test_rows)
        ev = evaluate(captioner, test, lambda texts: encode_texts(loaded, texts), default_prefix(run.model))
        result = {"run": folder.name, "dataset": run.dataset, "model": run.model, "variant": config.variant,
                  "train_images": int(len(train_rows)), "train_captions": len(train.captions),
                  "test_images": int(len(test_rows)), "metrics": ev.corpus, "steps": captioner.info["steps"],
                  "resumed_from": captioner.info["resumed_from"], "final_loss": captioner.info["final_loss"],
                  "train_seconds": captioner.info["train_seconds"]}
        atomic_write_json(folder / "result.json", result)
        write_status(folder, "finished")
        return result
    except Cancelled:
        write_status(folder, "cancelled")
        raise
    except BaseException as e:
        write_status(folder, "failed", error=f"{type(e).__name__}: {e}")
        raise
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def list_runs(home, dataset: str | None = None, model: str | None = None) -> list[dict]:
    """Captioner runs, newest first (of one dataset and model if given): id, folder, state,
    step, steps, run, result."""
    from ..finetune import runs as process_runs
    from ..run_folder import read_status

    base = runs_dir(home)
    out = []
    for folder in sorted(base.iterdir() if base.exists() else [], reverse=True):
        try:
            run = read_run(folder)
        except (OSError, ValueError, TypeError):
            continue
        if (dataset and run.dataset != dataset) or (model and run.model != model):
            continue
        status = read_status(folder)
        result = json.loads((folder / "result.json").read_text("utf-8")) if (folder / "result.json").exists() else None
        out.append({"id": folder.name, "folder": folder, "state": process_runs.state(folder), "run": run,
                    "step": status.get("step", 0), "steps": status.get("steps"), "error": status.get("error"),
                    "result": result})
    return out


def find_run(home, ref: str) -> Path:
    """A run folder from its id or path."""
    p = Path(ref)
    if (p / "config.json").exists():
        return p
    q = runs_dir(home) / ref
    if (q / "config.json").exists():
        return q
    raise ValueError(f"no captioner run {ref!r} in {runs_dir(home)} (see mmviz captioner runs)")
