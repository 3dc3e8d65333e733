"""Fine-tuning runs as background processes: launch, watch, cancel, resume, list.

The app never trains in its own process (a Streamlit script must not block): `launch` starts
`python -m mmviz.cli finetune --resume RUN` in a new session, its output going to the run's
log.txt, and the page reads status.json and metrics.jsonl as they grow.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ..store import Workspace
from ..run_folder import read_status, write_status
from .config import FinetuneConfig, create_run, preflight, read_config, runs_dir

REPO = Path(__file__).resolve().parents[2]
_children: dict[int, subprocess.Popen] = {}  # processes this one started: poll() reaps them


def _home(home) -> Path:
    return (home if isinstance(home, Workspace) else Workspace(home)).home


def launch(home, config: FinetuneConfig | None = None, run: str | os.PathLike | None = None,
           python: str | None = None) -> Path:
    """Start a new run of `config`, or resume the run folder `run`, in a background process;
    returns the run folder at once."""
    if (config is None) == (run is None):
        raise ValueError("give either a config for a new run or the run to resume")
    if config is not None:
        preflight(home, config)
    folder = Path(run) if run is not None else create_run(home, config)
    if run is not None and is_running(folder):
        raise ValueError(f"run {folder.name} is already running (pid {read_status(folder).get('pid')})")
    start(home, folder, ["finetune", "--resume", str(folder), "--quiet"], python)
    return folder


def start(home, folder: Path, argv: list[str], python: str | None = None) -> None:
    """Start `python -m mmviz.cli --home HOME ARGV...` for the run folder `folder` in a new
    session, its output appended to the folder's log.txt: the one way every kind of background
    run (fine-tuning, captioner training) is started, watched and cancelled."""
    folder = Path(folder)
    (folder / "cancel").unlink(missing_ok=True)
    (folder / "launcher.pid").unlink(missing_ok=True)
    # "created" is written before the process starts and never after, so it cannot overwrite
    # what the process itself writes ("running", its pid); until then its pid is in launcher.pid.
    write_status(folder, "created", pid=None)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    with open(folder / "log.txt", "ab") as log:
        proc = subprocess.Popen([python or sys.executable, "-m", "mmviz.cli", "--home", str(_home(home)), *argv],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(REPO), env=env,
                                start_new_session=True)
    _children[proc.pid] = proc
    (folder / "launcher.pid").write_text(str(proc.pid))


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    if pid in _children:
        return _children[pid].poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def process_id(folder: Path) -> int | None:
    """The run's process: as it wrote itself into status.json, else as its launcher saw it."""
    pid = read_status(folder).get("pid")
    if pid:
        return int(pid)
    try:
        return int((Path(folder) / "launcher.pid").read_text())
    except (OSError, ValueError):
        return None


def state(folder: str | os.PathLike) -> str:
    """created, running, finished, failed, cancelled, or interrupted (its process died
    without saying so, e.g. killed: resume continues from the last checkpoint)."""
    s = read_status(folder).get("state", "unknown")
    pid = process_id(Path(folder))
    if s == "created" and pid is None:  # being launched this instant
        return s
    if s in ("created", "running") and not _alive(pid):
        return "interrupted"
    return s


def is_running(folder) -> bool:
    return state(folder) in ("created", "running")


def cancel(folder: str | os.PathLike, wait: float = 0.0) -> bool:
    """Ask a run to stop: a cancel file (seen after the current step) and SIGTERM to its
    process; the run saves its checkpoint and marks itself cancelled. With `wait` > 0, waits
    up to that many seconds for the process to end. Returns whether it has ended."""
    folder = Path(folder)
    (folder / "cancel").touch()
    pid = process_id(folder)
    if _alive(pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if wait > 0 and pid in _children:
            try:
                _children[pid].wait(timeout=wait)
            except subprocess.TimeoutExpired:
                return False
    if not _alive(pid) and read_status(folder).get("state") in ("created", "running"):
        write_status(folder, "cancelled")  # it died before it could say so itself
    return not _alive(pid)


def list_runs(home) -> list[dict]:
    """Every run in the workspace, newest first: id, folder, state, step, steps, config,
    and the result when finished."""
    base = runs_dir(home)
    out = []
    for folder in sorted(base.iterdir() if base.exists() else [], reverse=True):
        if not (folder / "config.json").exists():
            continue
        try:
            config = read_config(folder)
        except (ValueError, TypeError, OSError):
            continue
        st = read_status(folder)
        result = None
        if (folder / "result.json").exists():
            result = json.loads((folder / "result.json").read_text("utf-8"))
        out.append({"id": folder.name, "folder": folder, "state": state(folder), "step": st.get("step", 0),
                    "steps": config.steps, "config": config, "error": st.get("error"), "result": result})
    return out


def finished_models(home) -> list[tuple[str, str]]:
    """(spec, label) of every finished run's fine-tuned model, newest first: what the app's
    model picker offers beside the named models."""
    out = []
    for r in list_runs(home):
        if r["state"] == "finished" and r["result"] and (r["folder"] / "model" / "open_clip_config.json").exists():
            c = r["config"]
            out.append((r["result"]["model_spec"], f"fine-tuned {c.model} ({c.loss}, {c.dataset}, run {r['id']})"))
    return out
