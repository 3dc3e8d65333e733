"""Vectors at scale: streamed imports with bounded memory, .npy files written and read in
chunks, bad headers and full disks refused before anything is written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mmviz import arrays
from mmviz.data import DataFormatError, load
from mmviz.store import Workspace

REPO = Path(__file__).resolve().parents[1]


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _pairs(n=50, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(2, n, d)).astype(np.float32) * 3


# ----------------------------------------------------------------------------------------
# arrays.NpyWriter and friends


def test_npy_writer_appends_rows_and_numpy_reads_the_file(tmp_path):
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(k, 5)).astype(np.float32) for k in (3, 0, 7, 1)]
    with arrays.NpyWriter(tmp_path / "x.npy", 5, np.float16) as w:
        for p in parts:
            w.append(p)
    got = np.load(tmp_path / "x.npy")
    want = np.concatenate(parts).astype(np.float16)
    assert got.dtype == np.float16 and np.array_equal(got, want)
    assert w.digest == __import__("hashlib").sha256(want.tobytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]  # no temporary file behind


def test_npy_writer_that_fails_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with arrays.NpyWriter(tmp_path / "x.npy", 4) as w:
            w.append(np.ones((2, 4)))
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="width 4"):
        arrays.NpyWriter(tmp_path / "y.npy", 4).append(np.ones((2, 3)))


def test_save_rows_and_digest_do_not_depend_on_chunking(tmp_path, monkeypatch):
    x = np.random.default_rng(2).normal(size=(1000, 8)).astype(np.float32)
    whole = arrays.digest_rows(x)
    monkeypatch.setattr(arrays, "CHUNK_BYTES", 8 * 4 * 7)  # 7 rows a chunk
    assert arrays.digest_rows(x) == whole
    arrays.save_rows(tmp_path / "x.npy", x)
    assert np.array_equal(arrays.open_array(tmp_path / "x.npy"), x)


def test_stored_dtype_auto_switches_to_float16_above_a_gibibyte(monkeypatch):
    monkeypatch.delenv("MMVIZ_VECTOR_DTYPE", raising=False)
    assert arrays.stored_dtype(None, arrays.AUTO_FLOAT16_BYTES) == np.float32
    assert arrays.stored_dtype(None, arrays.AUTO_FLOAT16_BYTES + 1) == np.float16
    assert arrays.stored_dtype("float32", 10**12) == np.float32
    monkeypatch.setenv("MMVIZ_VECTOR_DTYPE", "float16")
    assert arrays.stored_dtype(None, 10) == np.float16
    monkeypatch.setenv("MMVIZ_VECTOR_DTYPE", "float8")
    with pytest.raises(ValueError, match="MMVIZ_VECTOR_DTYPE"):
        arrays.stored_dtype()


# ----------------------------------------------------------------------------------------
# streamed loaders equal what the whole arrays give


def test_npy_streams_in_chunks_with_the_same_result(tmp_path, monkeypatch):
    arr = _pairs(n=101)
    arr[0, 5] = np.nan
    arr[1, 60] = 0
    np.save(tmp_path / "v.npy", arr)
    whole, rep1 = load(tmp_path / "v.npy")
    from mmviz.data import vectors

    monkeypatch.setattr(vectors, "IMPORT_CHUNK_BYTES", 6 * 4 * 10)  # 10 rows a chunk
    chunked, rep2 = load(tmp_path / "v.npy")
    assert chunked.ids == whole.ids and len(whole.ids) == 99
    assert np.array_equal(chunked.image_vectors, whole.image_vectors)
    assert [s.where for s in rep2.skipped] == [s.where for s in rep1.skipped] == ["v.npy row 5", "v.npy row 60"]
    keep = [i for i in range(101) if i not in (5, 60)]
    np.testing.assert_allclose(whole.image_vectors, unit(arr[0][keep]), atol=1e-6)
    np.testing.assert_allclose(whole.text_vectors, unit(arr[1][keep]), atol=1e-6)


@pytest.mark.parametrize("layout", ["members", "stacked", "compressed", "fortran"])
def test_npz_members_stream_and_equal_the_arrays(tmp_path, layout):
    arr = _pairs(n=40, d=5)
    p = tmp_path / "v.npz"
    if layout == "members":
        np.savez(p, image=arr[0], text=arr[1])
    elif layout == "stacked":
        np.savez(p, emb=arr)  # one (2, N, D) member: two streams over it
    elif layout == "compressed":
        np.savez_compressed(p, image_embeds=arr[0], text_embeds=arr[1])
    else:
        np.savez(p, image=np.asfortranarray(arr[0]), text=np.asfortranarray(arr[1]))
    pset, rep = load(p)
    assert rep.kept == 40
    np.testing.assert_allclose(pset.image_vectors, unit(arr[0]), atol=1e-6)
    np.testing.assert_allclose(pset.text_vectors, unit(arr[1]), atol=1e-6)


def test_vectors_stream_into_files_when_a_folder_is_given(tmp_path):
    arr = _pairs(n=30)
    np.save(tmp_path / "v.npy", arr)
    pset, _ = load(tmp_path / "v.npy", vectors_dir=tmp_path / "out", vector_dtype="float16")
    assert isinstance(pset.image_vectors, np.memmap) and pset.image_vectors.dtype == np.float16
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["image.npy", "text.npy"]
    np.testing.assert_allclose(pset.text_vectors, unit(arr[1]), rtol=2**-11, atol=1e-7)


# ----------------------------------------------------------------------------------------
# files that lie, and disks that are full


def _raw_npy(path: Path, header: dict, data: bytes = b"") -> None:
    body = repr(header).encode("latin1")
    body += b" " * (64 - (10 + len(body) + 1) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body + data)


def test_header_claiming_petabytes_is_refused_without_allocating(tmp_path, monkeypatch):
    p = tmp_path / "huge.npy"
    _raw_npy(p, {"descr": "<f4", "fortran_order": False, "shape": (2, 10**12, 512)}, b"\0" * 4096)
    with pytest.raises(DataFormatError) as e:
        load(p)
    msg = str(e.value)
    assert "huge.npy" in msg and "(2, 1000000000000, 512)" in msg and "4,096,000,000,000,000 bytes" in msg
    assert "half of the available memory" in msg and "MMVIZ_MAX_ARRAY_BYTES" in msg
    # into a workspace the bound is the free disk, checked before the staging folder gets a byte
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(DataFormatError, match="free disk space"):
        ws.import_path(p, "huge")
    assert ws.names() == [] and not (ws.datasets_dir / "huge").exists()
    # with the bound lifted, the file is what it is: truncated
    monkeypatch.setenv("MMVIZ_MAX_ARRAY_BYTES", str(2**62))
    with pytest.raises(DataFormatError, match="truncated"):
        ws.import_path(p, "huge")


def test_max_array_bytes_bounds_each_array(tmp_path, monkeypatch):
    arr = _pairs(n=100, d=8)  # 3,200 bytes per half
    np.savez(tmp_path / "v.npz", image=arr[0], text=arr[1])
    monkeypatch.setenv("MMVIZ_MAX_ARRAY_BYTES", "3000")
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(DataFormatError) as e:
        ws.import_path(tmp_path / "v.npz", "v")
    assert "v.npz[image]" in str(e.value) and "3,200 bytes, over the 3,000 bytes allowed" in str(e.value)
    monkeypatch.setenv("MMVIZ_MAX_ARRAY_BYTES", "3200")
    assert ws.import_path(tmp_path / "v.npz", "v").report.kept == 100


def test_truncated_npy_says_truncated_not_unpickling(tmp_path):
    arr = _pairs(n=20)
    np.save(tmp_path / "t.npy", arr)
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) - 100])
    with pytest.raises(DataFormatError) as e:
        load(tmp_path / "t.npy")
    assert "truncated" in str(e.value) and "unpickl" not in str(e.value)
    # inside an .npz as well
    with zipfile.ZipFile(tmp_path / "t.npz", "w") as z:
        z.writestr("image.npy", data[: len(data) - 100])
        z.writestr("text.npy", data)
    with pytest.raises(DataFormatError, match="truncated"):
        load(tmp_path / "t.npz")


def test_full_disk_is_refused_before_anything_is_written_and_the_old_version_stays(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    arr = _pairs(n=20)
    np.save(tmp_path / "v.npy", arr)
    old = ws.import_path(tmp_path / "v.npy", "v").dataset
    np.save(tmp_path / "v.npy", arr * -1)  # new content
    monkeypatch.setattr(arrays, "free_bytes", lambda folder: 10 * 2**20)  # 10 MB free
    with pytest.raises(DataFormatError) as e:
        ws.import_path(tmp_path / "v.npy", "v")
    assert "v.npy" in str(e.value) and "free" in str(e.value) and "MMVIZ_HOME" in str(e.value)
    assert ws.open("v").path == old.path
    np.testing.assert_allclose(ws.open("v").vectors()[0], unit(arr[0]), atol=1e-6)
    assert [p.name for p in (ws.datasets_dir / "v").iterdir() if p.name.startswith(".staging")] == []


def test_a_disk_that_fills_up_midway_keeps_the_previous_version(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    arr = _pairs(n=200)
    np.save(tmp_path / "v.npy", arr)
    old = ws.import_path(tmp_path / "v.npy", "v").dataset
    np.save(tmp_path / "v.npy", arr * -1)
    real_append = arrays.NpyWriter.append
    calls = []

    def append(self, rows):
        calls.append(len(rows))
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real_append(self, rows)

    monkeypatch.setattr(arrays.NpyWriter, "append", append)
    with pytest.raises(OSError, match="No space left"):
        ws.import_path(tmp_path / "v.npy", "v")
    assert ws.open("v").path == old.path and sorted(p.name for p in (ws.datasets_dir / "v").iterdir()) == [
        "CURRENT", old.path.name]


# ----------------------------------------------------------------------------------------
# the memory bound


CHILD = """
import json, resource, sys
import numpy, pyarrow.parquet, pandas  # the libraries every import needs, loaded before the baseline
from mmviz.store import Workspace
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
res = Workspace(sys.argv[1]).import_path(sys.argv[2], "big")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kb": base, "peak_kb": peak, "kept": res.report.kept}))
"""


def test_import_of_a_file_larger_than_the_memory_it_uses(tmp_path):
    """A 200,000 x 256 float32 pair file (391 MB) imports in a child process whose resident
    memory grows by less than a quarter of the file: vectors pass through in chunks; what
    grows with the set is its table (ids, captions). Measured here: +120 MB."""
    n, d = 200_000, 256
    path = tmp_path / "big.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(2, n, d))
    rng = np.random.default_rng(0)
    for s in range(0, n, 50_000):
        out[:, s:s + 50_000] = rng.normal(size=(2, 50_000, d)).astype(np.float32)
    out.flush()
    del out
    size = path.stat().st_size
    env = {**os.environ, "PYTHONPATH": str(REPO), "MMVIZ_VECTOR_DTYPE": "float32"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "ws"), str(path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    grew = (r["peak_kb"] - r["base_kb"]) * 1024
    assert r["kept"] == n
    assert grew < size / 4, f"import grew by {grew / 2**20:.0f} MB for a {size / 2**20:.0f} MB file"
    stored = Workspace(tmp_path / "ws").open("big").vectors()[1]
    np.testing.assert_allclose(stored[-3:], unit(np.load(path, mmap_mode="r")[1, -3:]), atol=1e-6)
