"""Zip archives: zip-slip and size bounds, junk members, and every format imported from a zip."""
from __future__ import annotations

import hashlib
import json
import shutil
import stat
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import COLORS, image_bytes, write_image
from mmviz.data import DataFormatError, ImportLimits, load, safe_extract_zip


def make_zip(path: Path, members: dict[str, bytes | str], compress=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        for name, content in members.items():
            zf.writestr(zipfile.ZipInfo(name), content)
    return path


def zip_dir(src: Path, path: Path, prefix: str = "") -> Path:
    """Zip every file under `src`, with member names under `prefix`."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                zf.write(f, prefix + f.relative_to(src).as_posix())
    return path


def tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# ----------------------------------------------------------------------------------------
# zip-slip


@pytest.mark.parametrize("evil", ["../evil.txt", "ok/../../evil.txt", "/abs/evil.txt", "C:\\evil.txt",
                                  "C:/evil.txt", "..\\evil.txt", "\\\\server\\share\\evil.txt"])
def test_zip_slip_members_are_refused(tmp_path, evil):
    z = make_zip(tmp_path / "evil.zip", {"fine.txt": "harmless", evil: "pwned"})
    work = tmp_path / "work"
    work.mkdir()
    dest = work / "dest"
    before = tree(tmp_path)
    with pytest.raises(DataFormatError) as e:
        safe_extract_zip(z, dest)
    assert "evil.zip" in str(e.value) and "outside the extraction folder" in str(e.value)
    assert repr(evil) in str(e.value)
    # Nothing is written anywhere: members are all checked before the first one is extracted.
    assert tree(tmp_path) == before
    assert not dest.exists()
    assert not Path("/abs/evil.txt").exists()


def test_symlink_member_is_refused(tmp_path):
    z = tmp_path / "link.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("data/a.txt", "a")
        info = zipfile.ZipInfo("data/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../../etc/passwd")
    dest = tmp_path / "dest"
    with pytest.raises(DataFormatError) as e:
        safe_extract_zip(z, dest)
    assert "link.zip" in str(e.value) and "'data/link' is a symbolic link" in str(e.value)
    assert not dest.exists() and tree(tmp_path) == ["link.zip"]


def test_zip_slip_through_load_and_workspace(tmp_path, workspace):
    z = make_zip(tmp_path / "evil.zip", {"metadata.jsonl": "{}", "../../evil.txt": "pwned"})
    with pytest.raises(DataFormatError):
        load(z, extract_to=tmp_path / "x")
    with pytest.raises(DataFormatError):
        workspace.import_path(z)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.zip", "ws"]
    assert workspace.names() == [] and not (workspace.datasets_dir / "evil").exists()


def test_encrypted_member_is_refused(tmp_path):
    z = make_zip(tmp_path / "enc.zip", {"a.txt": "secret"}, compress=zipfile.ZIP_STORED)
    data = bytearray(z.read_bytes())
    struct.pack_into("<H", data, 6, 0x1)  # local header general-purpose flag: encrypted
    cd = data.index(b"PK\x01\x02")
    struct.pack_into("<H", data, cd + 8, 0x1)  # central directory flag
    z.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match="'a.txt' is encrypted"):
        safe_extract_zip(z, tmp_path / "dest")


# ----------------------------------------------------------------------------------------
# bounds


def test_member_count_limit(tmp_path):
    z = make_zip(tmp_path / "many.zip", {f"f{i}.txt": "x" for i in range(5)})
    with pytest.raises(DataFormatError) as e:
        safe_extract_zip(z, tmp_path / "dest", ImportLimits(max_zip_members=4))
    assert "many.zip" in str(e.value) and "5 members > limit 4" in str(e.value)
    assert not (tmp_path / "dest").exists()
    safe_extract_zip(z, tmp_path / "dest", ImportLimits(max_zip_members=5))
    assert tree(tmp_path / "dest") == [f"f{i}.txt" for i in range(5)]


def test_total_size_limit(tmp_path):
    z = make_zip(tmp_path / "big.zip", {"a.bin": b"\0" * 600, "b.bin": b"\0" * 600})
    with pytest.raises(DataFormatError) as e:
        safe_extract_zip(z, tmp_path / "dest", ImportLimits(max_zip_bytes=1000))
    assert "big.zip" in str(e.value) and "uncompressed size 1,200 bytes > limit 1,000" in str(e.value)
    assert not (tmp_path / "dest").exists()


def test_header_lying_about_size_is_still_capped(tmp_path):
    """A member whose headers claim 10 bytes but whose deflated data inflates to 100,000."""
    z = make_zip(tmp_path / "lie.zip", {"small.txt": "hello", "bomb.bin": b"\0" * 100_000})
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        off = zf.getinfo("bomb.bin").header_offset
    struct.pack_into("<I", data, off + 22, 10)  # local header: uncompressed size
    cd = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 1)  # second central directory entry
    assert data[cd + 46: cd + 46 + 8] == b"bomb.bin"
    struct.pack_into("<I", data, cd + 24, 10)  # central directory: uncompressed size
    z.write_bytes(bytes(data))
    dest = tmp_path / "dest"
    with pytest.raises(DataFormatError) as e:
        safe_extract_zip(z, dest, ImportLimits(max_zip_bytes=1000))
    assert "lie.zip" in str(e.value) and "corrupt" in str(e.value)
    assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) <= 1000


def test_corrupt_member_data_is_a_format_error(tmp_path):
    z = make_zip(tmp_path / "crc.zip", {"a.txt": "hello world, hello world"}, compress=zipfile.ZIP_STORED)
    data = bytearray(z.read_bytes())
    i = data.index(b"hello world")
    data[i] = ord("J")
    z.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match="crc.zip: corrupt or unsupported zip archive"):
        safe_extract_zip(z, tmp_path / "dest")


def test_odd_member_names_do_not_crash(tmp_path):
    z = make_zip(tmp_path / "odd.zip", {".": "x", "./": "", "sub/": "", "a.txt": "a"})
    root = safe_extract_zip(z, tmp_path / "dest")
    assert root == tmp_path / "dest" and tree(root) == ["a.txt"]


# ----------------------------------------------------------------------------------------
# junk and layout


def test_junk_members_are_ignored_and_single_folder_descended(tmp_path):
    members = {
        "mydata/": "",
        "mydata/0.png": image_bytes(color=COLORS[0]),
        "mydata/metadata.jsonl": json.dumps({"file_name": "0.png", "text": "zero"}) + "\n",
        "mydata/.DS_Store": "junk",
        "mydata/Thumbs.db": "junk",
        "__MACOSX/mydata/._0.png": "junk",
        "__MACOSX/._mydata": "junk",
        ".DS_Store": "junk",
        "mydata/._metadata.jsonl": "junk",
    }
    z = make_zip(tmp_path / "d.zip", members)
    dest = tmp_path / "dest"
    root = safe_extract_zip(z, dest)
    assert root == dest / "mydata"
    assert tree(dest) == ["mydata", "mydata/0.png", "mydata/metadata.jsonl"]
    pset, report = load(z, extract_to=tmp_path / "dest2")
    assert report.format == "zip/imagefolder" and report.source == str(z)
    assert pset.ids == ["0.png"] and pset.captions == [["zero"]] and report.kept == 1
    assert pset.root == tmp_path / "dest2" / "mydata"


def test_nested_single_folders_are_descended(tmp_path):
    z = make_zip(tmp_path / "n.zip", {"a/b/c.txt": "caption", "a/b/c.png": image_bytes()})
    root = safe_extract_zip(z, tmp_path / "dest")
    assert root == tmp_path / "dest" / "a" / "b"


def test_error_inside_zip_names_the_zip(tmp_path):
    z = make_zip(tmp_path / "notes.zip", {"README.md": "nothing here"})
    with pytest.raises(DataFormatError) as e:
        load(z, extract_to=tmp_path / "x")
    assert str(e.value).startswith(f"{z}: inside the zip, ") and "found no data" in str(e.value)


def test_empty_zip(tmp_path):
    z = make_zip(tmp_path / "empty.zip", {})
    with pytest.raises(DataFormatError, match="found no data"):
        load(z, extract_to=tmp_path / "x")


# ----------------------------------------------------------------------------------------
# every format, zipped, imported end to end


def _imagefolder(d: Path) -> int:
    for i in range(2):
        write_image(d / "images" / f"{i}.png", color=COLORS[i])
    (d / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"images/{i}.png", "text": f"c{i}"}) + "\n"
                                              for i in range(2)))
    return 2


def _coco(d: Path) -> int:
    for i in range(3):
        write_image(d / "val2017" / f"{i:012d}.jpg", color=COLORS[i])
    doc = {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in range(3)],
           "annotations": [{"image_id": i, "caption": f"caption {i}"} for i in range(3)]}
    (d / "annotations").mkdir(parents=True)
    (d / "annotations" / "captions_val2017.json").write_text(json.dumps(doc))
    return 3


def _csv(d: Path) -> int:
    write_image(d / "a.jpg", color=COLORS[0])
    write_image(d / "sub" / "b.png", color=COLORS[1])
    (d / "pairs.csv").write_text("image,caption,label\na.jpg,first,x\nsub/b.png,second,y\n")
    return 2


def _parquet(d: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir(parents=True, exist_ok=True)
    rows = [{"image": {"bytes": image_bytes(color=COLORS[i], fmt="JPEG" if i else "PNG"), "path": None},
             "text": f"t{i}"} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), d / "data.parquet")
    return 3


def _sidecar(d: Path) -> int:
    for i in range(2):
        write_image(d / f"{i}.png", color=COLORS[i])
        (d / f"{i}.txt").write_text(f"caption {i}\n")
    return 2


def _clip_retrieval(d: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    for sub in ("img_emb", "text_emb", "metadata"):
        (d / sub).mkdir(parents=True)
    np.save(d / "img_emb" / "img_emb_0.npy", rng.normal(size=(4, 8)).astype(np.float32))
    np.save(d / "text_emb" / "text_emb_0.npy", rng.normal(size=(4, 8)).astype(np.float32))
    pq.write_table(pa.table({"caption": [f"c{i}" for i in range(4)]}), d / "metadata" / "metadata_0.parquet")
    return 4


def _npy(d: Path) -> int:
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "feats.npy", np.random.default_rng(4).normal(size=(2, 5, 6)).astype(np.float32))
    (d / "feats.txt").write_text("".join(f"caption {i}\n" for i in range(5)))
    return 5


def _npz(d: Path) -> int:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    np.savez(d / "e.npz", image=rng.normal(size=(3, 4)), text=rng.normal(size=(3, 4)))
    return 3


FORMATS = {"imagefolder": _imagefolder, "coco": _coco, "table": _csv, "parquet": _parquet,
           "images+txt": _sidecar, "clip-retrieval": _clip_retrieval, "vectors-npy": _npy, "vectors-npz": _npz}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("prefix", ["", "top/"])
def test_zip_of_each_format_imports_end_to_end(tmp_path, workspace, fmt, prefix):
    src = tmp_path / "src"
    n = FORMATS[fmt](src)
    z = zip_dir(src, tmp_path / f"{fmt}.zip", prefix)
    shutil.rmtree(src)
    res = workspace.import_path(z, "ds")
    assert res.status == "created" and res.report.kept == n and res.report.skipped == []
    expected_format = {"parquet": "table", "vectors-npy": "vectors", "vectors-npz": "vectors"}.get(fmt, fmt)
    assert res.report.format == f"zip/{expected_format}"
    z.unlink()  # neither the zip nor its extraction is needed any more
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ws"]
    ds = workspace.open("ds")
    assert len(ds) == n and ds.manifest["images_stored"] == "copied"
    assert not (ds.path / "extract").exists()
    t = ds.table()
    assert len(t) == n
    if fmt in ("clip-retrieval", "vectors-npy", "vectors-npz"):
        img, txt = ds.vectors()
        assert img.shape[0] == n and np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
        assert ds.manifest["vector_model"] == f"precomputed:{fmt}"
    else:
        for i in range(n):
            p = ds.image_path(i)
            assert p.is_file() and ds.path in p.parents
            assert hashlib.sha256(p.read_bytes()).hexdigest() == t["image_sha256"][i]
        assert set(ds.thumbnails()) == set(t["id"])
    # Importing the same zip again is a no-op.
    z2 = tmp_path / "again.zip"
    FORMATS[fmt](tmp_path / "src")
    zip_dir(tmp_path / "src", z2, prefix)
    res2 = workspace.import_path(z2, "ds", model_name=f"precomputed:{fmt}")
    assert res2.status == "unchanged" and res2.dataset.path == ds.path
