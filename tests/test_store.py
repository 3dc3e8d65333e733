"""The workspace: versions, no-op re-imports, atomic replacement, stored tables and images."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import COLORS, image_bytes, write_image
from mmviz.data import DataFormatError, ImportLimits
from mmviz.store import Workspace, atomic_write_bytes, default_home, name_from_path, valid_name


def make_table(folder: Path, captions=("red thing", "green thing", "blue thing"), sizes=None) -> Path:
    """A CSV of len(captions) images (img/i.png) with split/label/human_score columns."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["image,caption,split,label,human_score"]
    for i, cap in enumerate(captions):
        size = sizes[i] if sizes else (16, 16)
        write_image(folder / "img" / f"{i}.png", size=size, color=COLORS[i % len(COLORS)])
        lines.append(f"img/{i}.png,{cap},{'train' if i % 2 == 0 else 'test'},L{i},{i / 4}")
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n", "utf-8")
    return folder / "pairs.csv"


def versions(ws: Workspace, name: str) -> list[str]:
    return sorted(p.name for p in (ws.datasets_dir / name).iterdir() if p.name.startswith("v-"))


def leftovers(ws: Workspace, name: str) -> list[str]:
    return sorted(p.name for p in (ws.datasets_dir / name).iterdir()
                  if p.name.startswith((".staging-", ".CURRENT.")))


# ----------------------------------------------------------------------------------------
# import, re-import, list, open, delete


def test_import_creates_a_dataset(tmp_path, workspace):
    csv = make_table(tmp_path / "src")
    res = workspace.import_path(csv)
    assert res.status == "created" and res.report.kept == 3
    assert res.dataset.name == "pairs" and len(res.dataset) == 3
    assert workspace.names() == ["pairs"] and workspace.exists("pairs")
    ds_dir = workspace.datasets_dir / "pairs"
    [v] = versions(workspace, "pairs")
    assert (ds_dir / "CURRENT").read_text() == v
    assert v == "v-" + res.dataset.manifest["content_hash"][:16]
    assert sorted(p.name for p in (ds_dir / v).iterdir()) == ["manifest.json", "pairs.parquet", "thumbs.parquet"]
    m = json.loads((ds_dir / v / "manifest.json").read_text())
    assert {k: m[k] for k in ("format_version", "name", "source", "format", "pairs", "captions", "images",
                              "images_stored", "vector_model", "dim", "extras")} == {
        "format_version": 2, "name": "pairs", "source": str(csv), "format": "table", "pairs": 3, "captions": 3,
        "images": 3, "images_stored": "referenced", "vector_model": None, "dim": None,
        "extras": ["split", "label", "human_score"]}
    assert m["report"]["kept"] == 3 and m["report"]["skipped"] == []
    assert leftovers(workspace, "pairs") == []


def test_reimport_identical_is_unchanged(tmp_path, workspace):
    csv = make_table(tmp_path / "src")
    first = workspace.import_path(csv, "ds")
    manifest_before = (first.dataset.path / "manifest.json").read_bytes()
    again = workspace.import_path(csv, "ds")
    assert again.status == "unchanged"
    assert again.dataset.path == first.dataset.path
    assert versions(workspace, "ds") == [first.dataset.path.name]
    assert (first.dataset.path / "manifest.json").read_bytes() == manifest_before  # not rewritten
    assert leftovers(workspace, "ds") == []


def test_changed_data_is_updated_and_old_version_removed(tmp_path, workspace):
    csv = make_table(tmp_path / "src")
    first = workspace.import_path(csv, "ds")
    make_table(tmp_path / "src", captions=("red thing", "green thing", "a NEW blue caption"))
    res = workspace.import_path(csv, "ds")
    assert res.status == "updated"
    assert res.dataset.path != first.dataset.path and not first.dataset.path.exists()
    assert versions(workspace, "ds") == [res.dataset.path.name]
    assert workspace.open("ds").table()["captions"].tolist() == [["red thing"], ["green thing"], ["a NEW blue caption"]]
    # An image whose bytes change (same path, same caption) is a change too.
    write_image(tmp_path / "src" / "img" / "0.png", color=(1, 2, 3))
    assert workspace.import_path(csv, "ds").status == "updated"
    assert len(versions(workspace, "ds")) == 1


def test_list_open_delete(tmp_path, workspace):
    assert workspace.names() == [] and workspace.list() == []
    csv = make_table(tmp_path / "src")
    workspace.import_path(csv, "b-set")
    workspace.import_path(csv, "a.set")
    assert workspace.names() == ["a.set", "b-set"]
    listed = workspace.list()
    assert [m["name"] for m in listed] == ["a.set", "b-set"] and [m["pairs"] for m in listed] == [3, 3]
    ds = workspace.open("b-set")
    assert ds.name == "b-set" and len(ds) == 3 and repr(ds) == "Dataset('b-set', 3 pairs)"
    workspace.delete("b-set")
    assert workspace.names() == ["a.set"]
    assert sorted(p.name for p in workspace.datasets_dir.iterdir()) == ["a.set"]  # no .trash left
    with pytest.raises(KeyError, match="no dataset named 'b-set'"):
        workspace.open("b-set")
    with pytest.raises(KeyError):
        workspace.delete("b-set")
    with pytest.raises(KeyError, match="datasets: a.set"):
        workspace.open("nope")


@pytest.mark.parametrize("bad", ["../x", ".hidden", "", "a/b", "x" * 65, "-dash", "sp ace"])
def test_invalid_names(tmp_path, workspace, bad):
    with pytest.raises(ValueError, match="invalid dataset name"):
        valid_name(bad)
    with pytest.raises(ValueError, match="invalid dataset name"):
        workspace.delete(bad)
    if bad:  # an empty name means "derive it from the path"
        with pytest.raises(ValueError, match="invalid dataset name"):
            workspace.import_path(make_table(tmp_path / "src"), bad)
    # open() treats an invalid name as one that cannot exist.
    with pytest.raises(KeyError):
        workspace.open(bad)
    assert not workspace.exists(bad)
    assert not (tmp_path / "x").exists() and not (workspace.home / "x").exists()


def test_name_from_path_and_default_home(tmp_path):
    assert name_from_path("/a/b/captions_val2017.json") == "captions_val2017"
    assert name_from_path("My Photos (2024).zip") == "My-Photos-2024"
    assert name_from_path("/data/set/") == "set"
    assert name_from_path("...") == "dataset"
    assert len(name_from_path("x" * 100 + ".csv")) == 64
    assert default_home() == Path(os.environ["MMVIZ_HOME"]) != Path.home() / ".mmviz"
    assert Workspace().home == Path(os.environ["MMVIZ_HOME"])
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_source_label_replaces_the_path_in_the_report(tmp_path, workspace):
    csv = make_table(tmp_path / "src")
    ds = workspace.import_path(csv, "up", source_label="upload pairs.csv").dataset
    assert ds.manifest["source"] == "upload pairs.csv" and ds.report.source == "upload pairs.csv"
    assert ds.report.summary().startswith("table from upload pairs.csv: kept 3 pairs")


def test_import_of_nothing_usable_leaves_no_dataset(tmp_path, workspace):
    (tmp_path / "t.csv").write_text("image,text\nmissing.png,a caption\n")
    with pytest.raises(DataFormatError) as e:
        workspace.import_path(tmp_path / "t.csv")
    assert "t.csv" in str(e.value) and "no usable pairs" in str(e.value) and "1 missing file" in str(e.value)
    assert workspace.names() == [] and not (workspace.datasets_dir / "t").exists()


# ----------------------------------------------------------------------------------------
# crash atomicity


def _assert_old_version_intact(workspace, name, old_path, old_captions):
    ds = workspace.open(name)
    assert ds.path == old_path
    assert ds.table()["captions"].tolist() == old_captions
    assert (workspace.datasets_dir / name / "CURRENT").read_text() == old_path.name
    assert leftovers(workspace, name) == []


def test_failure_writing_current_keeps_previous_version(tmp_path, workspace, monkeypatch):
    csv = make_table(tmp_path / "src")
    old = workspace.import_path(csv, "ds").dataset
    make_table(tmp_path / "src", captions=("x", "y", "z"))
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "CURRENT":
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        workspace.import_path(csv, "ds")
    monkeypatch.setattr(os, "replace", real_replace)
    _assert_old_version_intact(workspace, "ds", old.path, [["red thing"], ["green thing"], ["blue thing"]])
    # The next import completes the job and clears the orphaned version.
    res = workspace.import_path(csv, "ds")
    assert res.status == "updated" and versions(workspace, "ds") == [res.dataset.path.name]
    assert workspace.open("ds").table()["captions"].tolist() == [["x"], ["y"], ["z"]]


def test_any_os_replace_failure_keeps_previous_version(tmp_path, workspace, monkeypatch):
    csv = make_table(tmp_path / "src")
    old = workspace.import_path(csv, "ds").dataset
    make_table(tmp_path / "src", captions=("x", "y", "z"))

    def broken(src, dst):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        workspace.import_path(csv, "ds")
    monkeypatch.undo()
    _assert_old_version_intact(workspace, "ds", old.path, [["red thing"], ["green thing"], ["blue thing"]])
    assert versions(workspace, "ds") == [old.path.name]


@pytest.mark.parametrize("exc", [RuntimeError("stop"), KeyboardInterrupt()])
def test_progress_callback_raising_mid_import_keeps_previous_version(tmp_path, workspace, exc):
    n = 70  # progress is reported every 64 images: (0, 70), (64, 70), (70, 70)
    csv = make_table(tmp_path / "src", captions=[f"caption {i}" for i in range(n)])
    old = workspace.import_path(csv, "ds").dataset
    make_table(tmp_path / "src", captions=[f"new caption {i}" for i in range(n)])
    calls = []

    def progress(done, total):
        calls.append((done, total))
        if 0 < done < total:
            raise exc

    with pytest.raises(type(exc)):
        workspace.import_path(csv, "ds", progress=progress)
    assert calls == [(0, 70), (64, 70)]
    _assert_old_version_intact(workspace, "ds", old.path, [[f"caption {i}"] for i in range(n)])
    assert versions(workspace, "ds") == [old.path.name]


def test_failed_first_import_leaves_nothing(tmp_path, workspace):
    csv = make_table(tmp_path / "src")

    def progress(done, total):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        workspace.import_path(csv, "ds", progress=progress)
    assert workspace.names() == [] and list(workspace.datasets_dir.iterdir()) == []


def test_abandoned_staging_is_cleaned_but_fresh_staging_kept(tmp_path, workspace):
    csv = make_table(tmp_path / "src")
    workspace.import_path(csv, "ds")
    ds_dir = workspace.datasets_dir / "ds"
    old = ds_dir / ".staging-deadbeef"
    (old / "files").mkdir(parents=True)
    past = time.time() - 7200
    os.utime(old, (past, past))
    fresh = ds_dir / ".staging-running"
    fresh.mkdir()
    orphan = ds_dir / "v-0000000000000000"
    orphan.mkdir()
    assert workspace.import_path(csv, "ds").status == "unchanged"
    assert not old.exists() and fresh.exists() and not orphan.exists()


def test_dead_staging_is_told_from_live_staging_by_its_lock(tmp_path):
    """remove_dead_staging takes away a folder whose lock file nobody holds (its writer died),
    a folder with no lock file once stale (mmviz before these locks), and an old lock file
    whose folder is gone; it keeps a live writer's folder, a young unlocked one, and a young
    lone lock file (its writer may be about to make the folder)."""
    from mmviz.atomic import ORPHAN_LOCK_SECONDS, StagingFolder, remove_dead_staging

    live = StagingFolder(tmp_path)
    assert live.path.is_dir() and (tmp_path / (live.path.name + ".lock")).exists()
    dead = tmp_path / ".staging-dead"
    (dead / "vectors").mkdir(parents=True)
    (tmp_path / ".staging-dead.lock").touch()
    past = time.time() - 7200
    legacy_old, legacy_young = tmp_path / ".staging-legacy-old", tmp_path / ".staging-legacy-young"
    legacy_old.mkdir()
    legacy_young.mkdir()
    os.utime(legacy_old, (past, past))
    lone_old, lone_young = tmp_path / ".staging-gone.lock", tmp_path / ".staging-coming.lock"
    lone_old.touch()
    lone_young.touch()
    old = time.time() - 2 * ORPHAN_LOCK_SECONDS
    os.utime(lone_old, (old, old))
    removed = remove_dead_staging(tmp_path, stale_seconds=3600)
    assert sorted(p.name for p in removed) == [".staging-dead", ".staging-legacy-old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.path.name, live.path.name + ".lock", ".staging-legacy-young", ".staging-coming.lock"])
    live.close()
    live.close()  # twice is harmless
    assert sorted(p.name for p in tmp_path.iterdir()) == [".staging-coming.lock", ".staging-legacy-young"]


def test_atomic_write_bytes(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "CURRENT"
    atomic_write_bytes(target, b"v-old")
    assert target.read_bytes() == b"v-old"

    def no_fsync(fd):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", no_fsync)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write_bytes(target, b"v-new-and-longer")
    assert target.read_bytes() == b"v-old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["CURRENT"]  # no temp file behind
    monkeypatch.undo()

    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda s, d: (_ for _ in ()).throw(OSError(28, "full")))
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"v-new")
    assert target.read_bytes() == b"v-old" and sorted(p.name for p in target.parent.iterdir()) == ["CURRENT"]
    monkeypatch.setattr(os, "replace", real_replace)
    atomic_write_bytes(target, b"v-new")
    assert target.read_bytes() == b"v-new" and sorted(p.name for p in target.parent.iterdir()) == ["CURRENT"]


# ----------------------------------------------------------------------------------------
# stored images, tables and thumbnails


def test_referenced_images_point_at_the_source(tmp_path, workspace):
    src = tmp_path / "src"
    csv = make_table(src)
    ds = workspace.import_path(csv, "ds").dataset
    assert ds.manifest["images_stored"] == "referenced"
    assert [ds.image_path(i) for i in range(3)] == [(src / "img" / f"{i}.png").resolve() for i in range(3)]
    assert not (ds.path / "files").exists()
    shutil.rmtree(src)
    ds = workspace.open("ds")  # still opens; the images are simply gone
    assert len(ds.table()) == 3 and not ds.image_path(0).exists()


def test_copied_images_survive_deleting_the_source(tmp_path, workspace):
    src = tmp_path / "src"
    csv = make_table(src)
    originals = [(src / "img" / f"{i}.png").read_bytes() for i in range(3)]
    ds = workspace.import_path(csv, "ds", copy_images=True).dataset
    assert ds.manifest["images_stored"] == "copied"
    shutil.rmtree(src)
    ds = workspace.open("ds")
    t = ds.table()
    assert t["image"].tolist() == ["files/img/0.png", "files/img/1.png", "files/img/2.png"]
    for i in range(3):
        assert ds.image_path(i) == ds.path / "files" / "img" / f"{i}.png"
        assert ds.image_path(t["id"][i]).read_bytes() == originals[i]


def test_copy_then_reference_is_an_update(tmp_path, workspace):
    csv = make_table(tmp_path / "src")
    workspace.import_path(csv, "ds", copy_images=True)
    res = workspace.import_path(csv, "ds")
    assert res.status == "updated" and res.dataset.manifest["images_stored"] == "referenced"


def test_table_columns_and_thumbnails(tmp_path, workspace):
    sizes = [(16, 16), (300, 150), (20, 40)]
    csv = make_table(tmp_path / "src", sizes=sizes)
    ds = workspace.import_path(csv, "ds").dataset
    t = ds.table()
    assert list(t.columns) == ["id", "image", "captions", "image_sha256", "width", "height",
                               "split", "label", "human_score"]
    assert t["id"].tolist() == ["img/0.png", "img/1.png", "img/2.png"]
    assert t["captions"].tolist() == [["red thing"], ["green thing"], ["blue thing"]]
    assert t["split"].tolist() == ["train", "test", "train"]
    assert t["label"].tolist() == ["L0", "L1", "L2"]
    assert t["human_score"].tolist() == ["0.0", "0.25", "0.5"]
    assert [(int(w), int(h)) for w, h in zip(t["width"], t["height"])] == sizes
    for i in range(3):
        raw = (tmp_path / "src" / "img" / f"{i}.png").read_bytes()
        assert t["image_sha256"][i] == hashlib.sha256(raw).hexdigest()
    thumbs = ds.thumbnails()
    assert set(thumbs) == set(t["id"])
    got = {k: Image.open(io.BytesIO(v)) for k, v in thumbs.items()}
    assert {k: (im.format, im.size) for k, im in got.items()} == {
        "img/0.png": ("JPEG", (16, 16)), "img/1.png": ("JPEG", (128, 64)), "img/2.png": ("JPEG", (20, 40))}
    # some ids only (unknown ones left out), the same bytes; asked twice of one Dataset
    for _ in range(2):
        assert ds.thumbnails(ids=["img/2.png", "no-such", "img/0.png"]) == {k: thumbs[k] for k in ("img/0.png", "img/2.png")}
    assert ds.thumbnails(ids=["no-such"]) == {}


def test_image_path_by_index_id_and_numpy_int(tmp_path, workspace):
    ds = workspace.import_path(make_table(tmp_path / "src"), "ds").dataset
    p1 = (tmp_path / "src" / "img" / "1.png").resolve()
    assert ds.image_path(1) == p1
    assert ds.image_path(np.int64(1)) == p1  # positions often come from NumPy / pandas
    assert ds.image_path("img/1.png") == p1


def test_search(tmp_path, workspace):
    ds = workspace.import_path(make_table(tmp_path / "src"), "ds").dataset
    assert ds.search("GREEN")["id"].tolist() == ["img/1.png"]
    assert ds.search("thing")["id"].tolist() == ["img/0.png", "img/1.png", "img/2.png"]
    assert ds.search("img/2")["id"].tolist() == ["img/2.png"]
    assert len(ds.search("")) == 3 and len(ds.search("zebra")) == 0


def test_image_bytes_are_written_into_the_version(tmp_path, workspace):
    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs = [image_bytes(color=COLORS[i], fmt="JPEG" if i else "PNG") for i in range(2)]
    pq.write_table(pa.Table.from_pylist([{"image": {"bytes": b, "path": None}, "text": f"t{i}"}
                                         for i, b in enumerate(blobs)]), tmp_path / "hf.parquet")
    ds = workspace.import_path(tmp_path / "hf.parquet").dataset
    t = ds.table()
    assert t["image"].tolist() == [f"files/{hashlib.sha256(blobs[0]).hexdigest()[:16]}.png",
                                   f"files/{hashlib.sha256(blobs[1]).hexdigest()[:16]}.jpg"]
    assert [ds.image_path(i).read_bytes() for i in range(2)] == blobs
    assert workspace.import_path(tmp_path / "hf.parquet").status == "unchanged"


def test_vectors_are_stored(tmp_path, workspace):
    arr = np.random.default_rng(0).normal(size=(2, 4, 6)).astype(np.float32) * 7
    np.save(tmp_path / "emb.npy", arr)
    (tmp_path / "emb.txt").write_text("a\nb\nc\nd\n")
    res = workspace.import_path(tmp_path / "emb.npy", model_name="my-clip")
    ds = res.dataset
    assert ds.name == "emb" and ds.manifest["vector_model"] == "my-clip" and ds.manifest["dim"] == 6
    assert ds.manifest["images"] == 0 and ds.thumbnails() == {}
    img, txt = ds.vectors()
    # memory maps of .npy files, float32 for a set this small
    assert img.dtype == np.float32 and isinstance(img, np.memmap) and ds.manifest["vector_dtype"] == "float32"
    np.testing.assert_allclose(img, arr[0] / np.linalg.norm(arr[0], axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(txt, arr[1] / np.linalg.norm(arr[1], axis=1, keepdims=True), atol=1e-6)
    assert ds.table()["image"].isna().all()
    assert sorted(str(p.relative_to(ds.path)) for p in ds.path.rglob("*")) == [
        "manifest.json", "pairs.parquet", "vectors", "vectors/image.npy", "vectors/text.npy"]
    # Another model name is another dataset version.
    assert workspace.import_path(tmp_path / "emb.npy", model_name="other").status == "updated"
    # float16 on request: the unit vectors to float16 rounding (half a step: 2**-11 relative)
    ds16 = workspace.import_path(tmp_path / "emb.npy", "emb16", vector_dtype="float16").dataset
    img16, _ = ds16.vectors()
    assert img16.dtype == np.float16 and ds16.manifest["vector_dtype"] == "float16"
    np.testing.assert_allclose(img16, arr[0] / np.linalg.norm(arr[0], axis=1, keepdims=True), rtol=2**-11, atol=1e-7)


def test_report_is_stored_with_skipped_rows(tmp_path, workspace):
    csv = make_table(tmp_path / "src")
    with open(csv, "a") as f:
        f.write("img/missing.png,lost,train,L9,0\nimg/0.png,,train,L0,0\n")
    ds = workspace.import_path(csv, "ds").dataset
    rep = ds.report
    assert rep.kept == 3 and dict(rep.reasons()) == {"missing file": 1, "empty caption": 1}
    assert [s.where for s in rep.skipped] == ["pairs.csv line 6", "pairs.csv line 5"]


def test_limits_come_from_env_when_not_given(tmp_path, workspace, monkeypatch):
    csv = make_table(tmp_path / "src", sizes=[(16, 16), (4, 4), (16, 16)])
    monkeypatch.setenv("MMVIZ_MAX_PIXELS", "100")
    res = workspace.import_path(csv, "ds")
    assert res.report.kept == 1 and dict(res.report.reasons()) == {"image too large": 2}
    res = workspace.import_path(csv, "ds", limits=ImportLimits())
    assert res.report.kept == 3 and res.status == "updated"
