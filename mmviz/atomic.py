"""Atomic writes: a reader sees the old file or folder or the new one, never a part of either.

Files are written to a temporary name and replaced; folders are built in a `StagingFolder`
and renamed into place whole.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

STAGING_PREFIX = ".staging-"
ORPHAN_LOCK_SECONDS = 60  # a lock file without its folder, this old, belongs to nobody
STALE_STAGING_SECONDS = 3600  # a staging folder without a lock file (older mmviz) this old is dead


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort: some filesystems refuse directory fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str).encode("utf-8"))


class StagingFolder:
    """A private folder in which a writer builds something whole before renaming it into place.

    The writer holds an OS lock (filelock, flock on Linux) on `<folder>.lock` while it lives.
    The kernel drops the lock when the process dies, however it dies (kill -9 included), so
    `remove_dead_staging` removes a dead writer's leftovers at once instead of guessing from
    their age, and never a live writer's.
    """

    def __init__(self, parent: str | os.PathLike, name: str | None = None):
        from filelock import FileLock

        parent = Path(parent)
        name = name or f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        self.path = parent / name
        self._lock = FileLock(str(parent / f"{name}.lock"))
        self._lock.acquire()  # before the folder exists: a folder whose lock is free is dead
        try:
            self.path.mkdir()
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        """Remove the folder if it is still here (not once renamed into place), then the lock.
        The folder goes first, so nobody who takes the freed lock finds a live writer's files."""
        shutil.rmtree(self.path, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()
            Path(self._lock.lock_file).unlink(missing_ok=True)


def remove_dead_staging(parent: str | os.PathLike, stale_seconds: float = STALE_STAGING_SECONDS) -> list[Path]:
    """Remove the staging folders in `parent` whose writer has died (its lock is free), and
    those without a lock file (left by mmviz before these locks) once `stale_seconds` old.
    Returns the folders removed."""
    removed = []
    for p in sorted(Path(parent).glob(f"{STAGING_PREFIX}*")):
        try:
            if p.name.endswith(".lock"):
                folder = p.with_name(p.name[:-len(".lock")])
                # its writer may be between creating the lock and the folder: leave young ones
                if not folder.exists() and time.time() - p.stat().st_mtime > ORPHAN_LOCK_SECONDS:
                    _remove_if_free(p, None)
                continue
            lock = p.with_name(p.name + ".lock")
            if lock.exists():
                if _remove_if_free(lock, p):
                    removed.append(p)
            elif time.time() - p.stat().st_mtime > stale_seconds:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        except FileNotFoundError:  # its writer finished meanwhile
            continue
    return removed


def _remove_if_free(lock_path: Path, folder: Path | None) -> bool:
    """Take `lock_path` without waiting; if free (its writer is dead) remove `folder` and the
    lock file. False when a live writer holds it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return False
    try:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        lock.release()
        lock_path.unlink(missing_ok=True)
    return True
