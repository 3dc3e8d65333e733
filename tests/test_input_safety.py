"""Bounds on untrusted input beyond the zip container: where uploaded paths may point,
image byte size, EXIF orientation, and what the app allows when served to others."""
import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from conftest import image_bytes, write_image
from mmviz import cli
from mmviz.data import ImportLimits, check_image, detect_format, load


def zip_with_table(path: Path, rows: list[dict], members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("pairs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_uploaded_table_cannot_reach_files_outside_the_archive(tmp_path, workspace):
    secret = write_image(tmp_path / "private" / "secret.png", color=(1, 2, 3))
    z = zip_with_table(tmp_path / "up.zip", [
        {"image": "inside.png", "caption": "inside the zip"},
        {"image": str(secret), "caption": "absolute path to a server file"},
        {"image": "../private/secret.png", "caption": "relative path climbing out"},
    ], {"inside.png": image_bytes()})
    res = workspace.import_path(z, "up")
    assert res.report.kept == 1
    assert res.dataset.table()["id"].tolist() == ["inside.png"]
    outside = [s for s in res.report.skipped if "outside the uploaded archive" in s.detail]
    assert [s.reason for s in outside] == ["missing file", "missing file"]
    assert not any(p.read_bytes() == secret.read_bytes() for p in res.dataset.path.rglob("*.png"))


def test_the_same_table_outside_a_zip_may_reference_absolute_paths(tmp_path):
    img = write_image(tmp_path / "elsewhere" / "a.png")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "pairs.jsonl").write_text(json.dumps({"image": str(img), "caption": "local use"}) + "\n")
    pset, report = load(tmp_path / "t" / "pairs.jsonl")
    assert report.kept == 1 and report.skipped == []


def test_image_file_size_is_bounded_before_reading(tmp_path):
    p = write_image(tmp_path / "a.png", size=(32, 32))
    size = p.stat().st_size
    meta, reason, detail = check_image(p, ImportLimits(max_image_bytes=size - 1))
    assert meta is None and reason == "image too large"
    assert f"{size:,} bytes > limit {size - 1:,}" in detail and "MMVIZ_MAX_IMAGE_BYTES" in detail
    meta, reason, _ = check_image(p, ImportLimits(max_image_bytes=size))
    assert meta is not None and reason == ""


def test_exif_rotation_is_applied_to_size_and_thumbnail():
    im = Image.new("RGB", (60, 20), (250, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes())
    meta, _, _ = check_image(buf.getvalue(), ImportLimits())
    assert (meta.width, meta.height) == (20, 60)
    assert Image.open(io.BytesIO(meta.thumbnail)).size == (20, 60)


def test_a_stray_json_does_not_hide_a_table(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "config.json").write_text(json.dumps({"info": "not coco", "images": 3}))
    (tmp_path / "pairs.csv").write_text("image,caption\na.png,a red square\n")
    assert detect_format(tmp_path) == "table"
    (tmp_path / "captions.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                                                        "annotations": [{"image_id": 1, "caption": "x"}]}))
    assert detect_format(tmp_path) == "coco"


def test_app_served_to_others_turns_off_local_path_import(monkeypatch, tmp_path):
    seen = {}

    def fake_run(cmd, env):
        seen["cmd"], seen["env"] = cmd, env
        return 0

    monkeypatch.setattr(cli.app, "run_until_stopped", fake_run)
    assert cli.main(["--home", str(tmp_path), "app"]) == 0
    assert seen["cmd"][seen["cmd"].index("--server.address") + 1] == "127.0.0.1"
    assert "MMVIZ_LOCAL_PATHS" not in seen["env"]
    assert cli.main(["--home", str(tmp_path), "app", "--host", "0.0.0.0", "--port", "9000"]) == 0
    assert seen["cmd"][seen["cmd"].index("--server.address") + 1] == "0.0.0.0"
    assert seen["cmd"][seen["cmd"].index("--server.port") + 1] == "9000"
    assert seen["env"]["MMVIZ_LOCAL_PATHS"] == "0"


def test_bad_upload_limit_in_env_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MMVIZ_MAX_UPLOAD_MB", "lots")
    assert cli.main(["--home", str(tmp_path), "app"]) == 1
    assert "MMVIZ_MAX_UPLOAD_MB='lots' is not a whole number" in capsys.readouterr().err
