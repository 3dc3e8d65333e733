"""Faults: concurrent writers, processes killed mid-write, full disks. Nothing stored is lost
and nothing half-written is ever read back."""
from __future__ import annotations

import multiprocessing
import zipfile
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


# ----------------------------------------------------------------------------------------
# hostile files


def _zeros_npz(path: Path, rows: int = 2048, dim: int = 4096) -> Path:
    """An .npz whose two 32 MB arrays of zeros deflate to ~64 kB each (ratio ~1000)."""
    z = np.zeros((rows, dim), np.float32)
    np.savez_compressed(path, image=z, text=z)
    return path


def test_npz_bomb_is_refused_before_inflating(tmp_path):
    from mmviz.data import DataFormatError

    bomb = _zeros_npz(tmp_path / "bomb.npz")
    assert bomb.stat().st_size < 2 * 2**20
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(DataFormatError) as e:
        ws.import_path(bomb, "bomb")
    assert "bomb.npz[image]" in str(e.value) and "zip bomb" in str(e.value)
    assert "MMVIZ_MAX_ZIP_RATIO" in str(e.value)
    assert ws.names() == [] and not (ws.datasets_dir / "bomb").exists()


def test_npz_inside_a_zip_counts_against_the_zip_budget(tmp_path, monkeypatch):
    from mmviz.data import DataFormatError

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 4, size=(2, 2000, 64)).astype(np.float32)  # compresses ~6x: not a bomb
    np.savez_compressed(tmp_path / "v.npz", image=arr[0], text=arr[1])
    packed = tmp_path / "v.npz"
    with zipfile.ZipFile(tmp_path / "up.zip", "w") as z:
        z.write(packed, "v.npz")
    inflated = arr.nbytes
    assert packed.stat().st_size < inflated // 4
    monkeypatch.setenv("MMVIZ_MAX_ZIP_BYTES", str(inflated // 2))  # the zip fits, its arrays do not
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(DataFormatError) as e:
        ws.import_path(tmp_path / "up.zip", "up")
    assert "up.zip" in str(e.value) and "zip's budget" in str(e.value) and "MMVIZ_MAX_ZIP_BYTES" in str(e.value)
    monkeypatch.setenv("MMVIZ_MAX_ZIP_BYTES", str(2 * inflated))
    assert ws.import_path(tmp_path / "up.zip", "up").report.kept == 2000


def test_zip_member_of_zeros_is_refused_by_its_ratio(tmp_path):
    from mmviz.data import DataFormatError

    with zipfile.ZipFile(tmp_path / "z.zip", "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("data/zeros.csv", "w", force_zip64=True) as f:
            for _ in range(64):
                f.write(b"\0" * 2**20)  # 64 MB of zeros, ~64 kB compressed
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(DataFormatError) as e:
        ws.import_path(tmp_path / "z.zip", "z")
    assert "zeros.csv" in str(e.value) and "zip bomb" in str(e.value) and "MMVIZ_MAX_ZIP_RATIO" in str(e.value)
    assert not any((ws.home / "datasets").rglob("zeros.csv"))


def test_huge_image_gets_our_message_and_max_pixels_lifts_pillows_limit(tmp_path, monkeypatch):
    from conftest import png_claiming

    from mmviz.data import ImportLimits, check_image

    big = tmp_path / "huge.png"
    big.write_bytes(png_claiming(20_000, 20_000))  # 400 MP: over twice Pillow's 89.5 MP default
    meta, reason, detail = check_image(big, ImportLimits())
    assert meta is None and reason == "image too large"
    assert "huge.png" in detail and "400,000,000 pixels" in detail and "MMVIZ_MAX_PIXELS" in detail
    # a higher MMVIZ_MAX_PIXELS lifts Pillow's own limit: the header passes, the (fake) pixels fail
    meta, reason, detail = check_image(big, ImportLimits(max_pixels=500_000_000))
    assert reason == "unreadable image", detail


def test_captions_of_nul_bytes_and_megabyte_captions_are_skipped_and_listed(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "v.npy", rng.normal(size=(2, 4, 8)).astype(np.float32))
    (tmp_path / "v.txt").write_text("fine\n\0\0\0\n" + "x" * 1_000_000 + "\nalso fine\n")
    res = Workspace(tmp_path / "ws").import_path(tmp_path / "v.npy", "v")
    assert res.report.kept == 2 and res.dataset.table()["captions"].tolist() == [["fine"], ["also fine"]]
    by_reason = {s.reason: s for s in res.report.skipped}
    assert by_reason["empty caption"].where == "v.npy row 1"
    assert by_reason["caption too long"].where == "v.npy row 2"
    assert "1,000,000 characters > limit 10,000" in by_reason["caption too long"].detail
    monkeypatch.setenv("MMVIZ_MAX_CAPTION_CHARS", "2000000")
    assert Workspace(tmp_path / "ws").import_path(tmp_path / "v.npy", "v").report.kept == 3


def test_coco_annotations_of_unknown_images_are_listed(tmp_path):
    import json

    from conftest import write_image

    write_image(tmp_path / "1.jpg")
    doc = {"images": [{"id": 1, "file_name": "1.jpg"}],
           "annotations": [{"image_id": 1, "caption": "kept"}, {"image_id": 7, "caption": "orphan a"},
                           {"image_id": 7, "caption": "orphan b"}]}
    (tmp_path / "captions.json").write_text(json.dumps(doc))
    res = Workspace(tmp_path / "ws").import_path(tmp_path / "captions.json", "c")
    [s] = res.report.skipped
    assert (s.where, s.reason) == ("captions.json annotation 1", "bad row")
    assert "image_id 7 is not among the file's images (2 captions)" in s.detail


# ----------------------------------------------------------------------------------------
# the command line: names, terminals, CSV, shutdown


def test_empty_name_is_a_usage_error_and_replaces_nothing(tmp_path, capsys):
    from mmviz.cli import main

    f = _vectors_file(tmp_path / "src", 1)
    home = str(tmp_path / "ws")
    assert main(["--home", home, "import", str(f), "-q"]) == 0  # named after the file: set1
    with pytest.raises(SystemExit) as e:
        main(["--home", home, "import", str(_vectors_file(tmp_path / "src", 2)), "--name", "", "-q"])
    assert e.value.code == 2 and "invalid dataset name ''" in capsys.readouterr().err
    assert Workspace(home).names() == ["set1"]


def test_control_characters_in_data_never_reach_the_terminal(tmp_path, capsys):
    from mmviz.cli import main

    evil = "\x1b]0;pwned\x07\x1b[2J red\x9b1m car"
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(2, 2, 4)).astype(np.float32))
    (tmp_path / "v.csv").write_text(f"id,caption,note\x1b[31m\n\x1b[H,{evil},x\nb,fine,y\n")
    home = str(tmp_path / "ws")
    assert main(["--home", home, "import", str(tmp_path / "v.npy"), "--name", "v", "-q"]) == 0
    assert main(["--home", home, "show", "v", "--rows", "2"]) == 0
    out = capsys.readouterr()
    assert "\x1b" not in out.out + out.err and "\x9b" not in out.out and "\x07" not in out.out
    assert "\\x1b]0;pwned\\x07\\x1b[2J red\\x9b1m car" in out.out and "\\x1b[H" in out.out
    assert main(["--home", home, "show", "nope\x1b[2J"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mmviz: error: ") and "\x1b" not in err and "\\x1b[2J" in err


def test_csv_exports_escape_formulas(tmp_path, capsys):
    import pandas as pd

    from mmviz.cli import main
    from mmviz.export import to_csv

    caps = ['=HYPERLINK("http://x","click")', "@SUM(1+1)", "+cmd|' /C calc'!A0", "-2+3", "\tTAB", "plain"]
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(2, 6, 4)).astype(np.float32))
    (tmp_path / "v.txt").write_text("\n".join(caps) + "\n")
    home = str(tmp_path / "ws")
    assert main(["--home", home, "import", str(tmp_path / "v.npy"), "--name", "v", "-q"]) == 0
    capsys.readouterr()
    assert main(["--home", home, "show", "v", "--rows", "6", "--csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "id,image,captions,width,height"
    assert rows[1:6] == ['0,,"\'=HYPERLINK(""http://x"",""click"")",,', "1,,'@SUM(1+1),,",
                         "2,,'+cmd|' /C calc'!A0,,", "3,,'-2+3,,", "4,,TAB,,"]  # a leading tab is stripped at import
    # numbers stay numbers; text with a sign later on is left alone; headers are cells too
    csv = to_csv(pd.DataFrame({"n": [-1.5, 2.0], "t": ["a-b", "=1"], "=col": ["\rx", "y"]}))
    assert csv == "n,t,'=col\n-1.5,a-b,'\rx\n2.0,'=1,y\n"


def test_every_app_csv_goes_through_the_escaping_writer():
    """No page writes CSV itself: each download goes through common.download_csv (to_csv)."""
    app = Path(__file__).resolve().parents[1] / "app"
    for f in app.rglob("*.py"):
        text = f.read_text()
        assert ".to_csv(" not in text, f"{f} writes CSV without mmviz.export.to_csv"
        assert '"text/csv"' not in text or f.name == "common.py", f"{f} hands out CSV past download_csv"


def test_worst_pairs_download_escapes_formula_captions(tmp_path, monkeypatch):
    """The Retrieval page's Worst pairs CSV, as the user downloads it, on captions that are formulas."""
    import sys
    from io import StringIO

    import pandas as pd

    from conftest import open_page

    n = 24
    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, 128))
    texts = rng.normal(size=(n, 128))  # unrelated to the images: every pair ranks badly somewhere
    evil = [("=HYPERLINK(\"http://x\",\"c{}\")", "@SUM({})", "+cmd|' /C calc'!A{}", "-{}+3")[i % 4].format(i)
            for i in range(n)]
    np.save(tmp_path / "evil.npy", np.stack([images, texts]).astype(np.float32))
    (tmp_path / "evil.txt").write_text("".join(c + "\n" for c in evil))
    home = tmp_path / "home"
    home.mkdir()
    (home / ".demo-offered").touch()
    Workspace(home).import_path(tmp_path / "evil.npy", "evil", model_name="builtin:shapes")
    monkeypatch.setenv("MMVIZ_HOME", str(home))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
    try:
        import common
    finally:
        sys.path.pop(0)
    handed_out = {}
    monkeypatch.setattr(common, "download", lambda label, data, name, mime, key: handed_out.update(
        {label: data() if callable(data) else data}))
    open_page("retrieval")
    csv = handed_out["Worst pairs (CSV)"]
    cells = pd.read_csv(StringIO(csv), dtype=str)["caption"].tolist()
    assert cells and all(c.startswith("'") and c[1:] in evil for c in cells), cells


def test_sigterm_to_mmviz_app_leaves_nothing_listening(tmp_path):
    import signal
    import socket
    import subprocess
    import sys
    import time

    from mmviz.cli.app import wait_healthy

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mmviz.cli", "--home", str(tmp_path / "ws"), "app",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        with socket.socket() as c:
            return c.connect_ex(("127.0.0.1", port)) == 0

    try:
        assert wait_healthy(f"http://127.0.0.1:{port}", proc), "the app did not come up"
        proc.send_signal(signal.SIGTERM)  # to mmviz app only, as a service manager would
        proc.wait(timeout=30)
        deadline = time.time() + 10
        while listening() and time.time() < deadline:
            time.sleep(0.2)
        assert not listening(), "the Streamlit server is still listening"
    finally:
        if proc.poll() is None:
            proc.kill()


# ----------------------------------------------------------------------------------------
# full disks and processes killed mid-write

FSIZE_CHILD = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from mmviz.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _stored_and_bigger(tmp_path: Path, rows: int, dim: int):
    """(env for a child mmviz, workspace home, Workspace, the stored 30-pair 'ds', a bigger
    vectors file to import over it)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    home = tmp_path / "ws"
    ws = Workspace(home)
    old = ws.import_path(_vectors_file(tmp_path / "src", 1), "ds").dataset
    big = tmp_path / "big.npy"
    np.save(big, np.random.default_rng(0).normal(size=(2, rows, dim)).astype(np.float32))
    return env, home, ws, old, big


def test_a_full_disk_gives_a_clear_error_and_loses_nothing(tmp_path):
    """RLIMIT_FSIZE caps every file the import writes at 1 MB, as a full disk would stop it."""
    import subprocess
    import sys

    env, home, ws, old, big = _stored_and_bigger(tmp_path, 20_000, 64)  # 5 MB of vectors
    r = subprocess.run([sys.executable, "-c", FSIZE_CHILD, str(2**20), "--home", str(home), "import", str(big),
                        "--name", "ds", "-q"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("mmviz: error: ") and "File too large" in r.stderr
    assert "writing dataset ds into" in r.stderr and "nothing stored was changed" in r.stderr
    assert ws.open("ds").path == old.path and ws.open("ds").vectors()[0].shape == (30, 8)
    assert sorted(p.name for p in (ws.datasets_dir / "ds").iterdir()) == ["CURRENT", old.path.name]


CACHE_WRITE_CHILD = """
import sys
from mmviz.store import Workspace
from mmviz import results
from mmviz.embed import stored_embeddings
ws = Workspace(sys.argv[1])
ds = ws.open("ds")
emb = stored_embeddings(ws, ds, ds.manifest["vector_model"])
print("ready", flush=True)
from mmviz import projection
projection.cached_layout(ws, emb.key_parts, emb.image, emb.text, "pca2", identifies_data=True)
results.metrics(ws.home, emb)
"""


# A child that imports and stops at a named point of the import, says so, and waits to be
# killed there: kill points by progress, not by the clock, which a faster machine outruns.
IMPORT_PAUSE_CHILD = """
import os, sys, time
from mmviz import store
from mmviz.store import Workspace
home, src, point = sys.argv[1:4]

def pause(where):
    print(where, flush=True)
    time.sleep(600)

def progress(done, total):
    if point == "mid-read" and 2 * done >= total:
        pause(f"mid-read {done}/{total}")

write_version = Workspace._write_version
def written(self, *args, **kwargs):
    write_version(self, *args, **kwargs)
    if point == "written":
        pause("written")
Workspace._write_version = written

rename = os.rename
def renamed(src_path, dst_path):
    rename(src_path, dst_path)
    if point == "renamed" and os.path.basename(dst_path).startswith("v-"):
        pause("renamed")
store.os.rename = renamed
Workspace(home).import_path(src, "ds", progress=progress)
print("finished", flush=True)
"""


@pytest.mark.parametrize("point", ["mid-read", "written", "renamed"])
def test_kill_9_mid_import_keeps_the_previous_version(tmp_path, point):
    """kill -9 while the vectors stream in, once the new version is written whole in staging,
    and after its rename but before CURRENT names it: the 30 stored pairs stay the dataset."""
    import signal
    import subprocess
    import sys

    env, home, ws, old, big = _stored_and_bigger(tmp_path, 150_000, 128)
    child = subprocess.Popen([sys.executable, "-c", IMPORT_PAUSE_CHILD, str(home), str(big), point],
                             env=env, stdout=subprocess.PIPE, text=True)
    try:
        said = child.stdout.readline().strip()
        assert said.startswith(point), f"the import did not stop at {point!r}: {said!r}"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    ds = ws.open("ds")
    assert ds.path == old.path and len(ds.table()) == 30 and ds.vectors()[0].shape == (30, 8)
    # the next import completes; the dead one's staging is not taken for a version
    new = ws.import_path(big, "ds")
    assert new.status == "updated" and len(new.dataset) == 150_000
    # and the dead one's staging folder is gone (a lone lock file may wait ORPHAN_LOCK_SECONDS)
    assert not [p for p in new.dataset.path.parent.glob(".staging-*") if p.is_dir()]


def test_kill_9_mid_cache_write_never_leaves_a_cache_that_is_read_back(tmp_path):
    """A process computing a layout and the metrics of 100k pairs is killed at several points;
    afterwards every cached layout and result either reads back whole or counts as missing,
    and computing again gives exactly what an undisturbed process gives."""
    import json
    import signal
    import subprocess
    import sys
    import time

    from mmviz import projection, results
    from mmviz.embed import stored_embeddings

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    home = tmp_path / "ws"
    ws = Workspace(home)
    src = tmp_path / "v.npy"
    np.save(src, np.random.default_rng(0).normal(size=(2, 100_000, 64)).astype(np.float32))
    ws.import_path(src, "ds")
    for delay in (0.2, 0.6, 1.0, 1.6, 2.4):
        child = subprocess.Popen([sys.executable, "-c", CACHE_WRITE_CHILD, str(home)], env=env,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        for f in (home / "results").rglob("*.json") if (home / "results").exists() else []:
            json.loads(f.read_text())  # anything under its final name is whole
    ds = ws.open("ds")
    emb = stored_embeddings(ws, ds, ds.manifest["vector_model"])
    layout, _ = projection.cached_layout(ws, emb.key_parts, emb.image, emb.text, "pca2", identifies_data=True)
    fresh = projection.project_pairs(emb.image, emb.text, "pca2")
    np.testing.assert_allclose(layout.image_xy, fresh.image_xy, atol=1e-5)
    from mmviz import geometry

    m, _ = results.metrics(ws.home, emb)
    assert m == pytest.approx(geometry.all_metrics(emb.image, emb.paired_text))
