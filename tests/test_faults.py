"""Faults: concurrent writers, processes killed mid-write, full disks. Nothing stored is lost
and nothing half-written is ever read back."""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from mmviz.store import Workspace

FORK = multiprocessing.get_context("fork")  # children share the parent's imports: cheap to start


def _vectors_file(folder: Path, tag: int, n: int = 30) -> Path:
    rng = np.random.default_rng(tag)
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"set{tag}.npy"
    np.save(p, rng.normal(size=(2, n, 8)).astype(np.float32))
    (folder / f"set{tag}.txt").write_text("".join(f"caption {tag}-{i}\n" for i in range(n)))
    return p


def _import_when_released(home: str, path: str, start, out) -> None:
    start.wait()
    try:
        res = Workspace(home).import_path(path, "ds")
        out.put(("ok", res.status, res.dataset.path.name))
    except BaseException as e:  # report everything: the test decides
        out.put(("error", type(e).__name__, str(e)))


def _round(jobs: list[tuple]) -> list[tuple]:
    """Run jobs (target, args...) in forked processes released together; their reports."""
    start, out = FORK.Event(), FORK.Queue()
    procs = [FORK.Process(target=target, args=(*args, start, out)) for target, *args in jobs]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return results


def _check_one_complete_version(ws: Workspace) -> Path:
    ds_dir = ws.datasets_dir / "ds"
    entries = sorted(p.name for p in ds_dir.iterdir())
    versions = [e for e in entries if e.startswith("v-")]
    assert entries == ["CURRENT", *versions] and len(versions) == 1, entries  # no staging, no orphan
    assert (ds_dir / "CURRENT").read_text() == versions[0]
    ds = ws.open("ds")
    assert len(ds.table()) == 30 and ds.vectors()[0].shape == (30, 8)
    return ds.path


@pytest.mark.parametrize("existing", [False, True])
def test_eight_concurrent_imports_under_one_name_leave_one_complete_version(tmp_path, existing):
    """8 imports of different content under one name, released together, 10 rounds: every
    import succeeds, exactly one complete version exists, CURRENT names it, and a dataset
    that was there never disappears (the bug: 3 of 12 runs lost it)."""
    home = tmp_path / "ws"
    ws = Workspace(home)
    files = [_vectors_file(tmp_path / "src", tag) for tag in range(8)]
    if existing:
        ws.import_path(_vectors_file(tmp_path / "src", 99), "ds")
    for _ in range(10):
        results = _round([(_import_when_released, str(home), str(f)) for f in files])
        assert [r[0] for r in results] == ["ok"] * 8, results
        winner = _check_one_complete_version(ws)
        assert winner.name in {r[2] for r in results}
        if not existing:
            import shutil

            shutil.rmtree(ws.datasets_dir / "ds")


def test_delete_while_importing_never_leaves_a_broken_dataset(tmp_path):
    home = tmp_path / "ws"
    ws = Workspace(home)
    f = _vectors_file(tmp_path / "src", 1)
    ws.import_path(f, "ds")

    def delete(start, out):
        start.wait()
        try:
            Workspace(home).delete("ds")
            out.put(("ok", "deleted", ""))
        except KeyError as e:
            out.put(("ok", "gone", str(e)))

    for _ in range(5):
        results = _round([(_import_when_released, str(home), str(f)), (delete,)])
        assert all(r[0] == "ok" for r in results), results
        # either the import came last (a whole dataset) or the delete did (no dataset at all)
        if ws.exists("ds"):
            _check_one_complete_version(ws)
        else:
            assert not (ws.datasets_dir / "ds").exists() or not any(
                p.name.startswith("v-") for p in (ws.datasets_dir / "ds").iterdir())
            ws.import_path(f, "ds")
