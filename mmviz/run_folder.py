"""A background run's folder, shared by fine-tuning (mmviz.finetune) and captioner training
(mmviz.captioner): config.json, status.json, metrics.jsonl and a `cancel` flag file.

No torch here: listing runs, reading their progress and asking one to stop must stay fast
(the CLI's `mmviz runs`, the app's run tables)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import fields
from pathlib import Path

from .store import atomic_write_json


def config_from_dict(cls, d: dict, what: str):
    """The dataclass `cls` from a config.json's settings; a setting it does not know (a typo, a
    file from another version) is an error that names it, not a silently ignored value."""
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} settings: {', '.join(sorted(unknown))}")
    return cls(**d)


def make_run_folder(base: Path, run_id: str, config: dict) -> Path:
    """A new folder `base/run_id` (`-2`, `-3`... for two runs started in the same second) with
    config.json and status "created": every kind of background run starts so."""
    folder, n = base / run_id, 1
    while folder.exists():
        n += 1
        folder = base / f"{run_id}-{n}"
    folder.mkdir(parents=True)
    atomic_write_json(folder / "config.json", config)
    write_status(folder, "created")
    return folder


def read_status(folder: str | os.PathLike) -> dict:
    """status.json ({"state": "unknown"} while it is missing or being replaced)."""
    p = Path(folder) / "status.json"
    try:
        return json.loads(p.read_text("utf-8"))
    except (OSError, ValueError):
        return {"state": "unknown"}


def write_status(folder: Path, state: str, **info) -> None:
    """status.json with `state` and `info` over what it held, written atomically."""
    old = read_status(folder) if (folder / "status.json").exists() else {}
    if state == "running":  # a resumed run is no longer failed
        old.pop("error", None)
    atomic_write_json(folder / "status.json", {**old, **info, "state": state, "updated": time.time()})


def read_metrics(folder: str | os.PathLike, kind: str | None = None) -> list[dict]:
    """The lines of metrics.jsonl (of one kind if given); a half-written last line is skipped."""
    p = Path(folder) / "metrics.jsonl"
    out = []
    if p.exists():
        for line in p.read_text("utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if kind is None or row.get("kind") == kind:
                out.append(row)
    return out


def append_metrics(folder: Path, row: dict) -> None:
    """One line of metrics.jsonl (read_metrics skips a half-written last line)."""
    with open(folder / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(folder: Path, step: int) -> None:
    """Drop what a killed run logged after its last checkpoint: resumed, those steps run again."""
    keep = [r for r in read_metrics(folder) if r.get("step", 0) <= step]
    tmp = folder / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), "utf-8")
    os.replace(tmp, folder / "metrics.jsonl")


def cancel_requested(folder: Path) -> bool:
    """Whether a `cancel` file asks the run to stop (how the app and `runs --cancel` ask)."""
    return (folder / "cancel").exists()
