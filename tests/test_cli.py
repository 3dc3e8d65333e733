"""The `mmviz` command line, in-process and as the installed console script."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import COLORS, write_image
from mmviz.cli import build_parser, main


def make_table(folder: Path, n: int = 3, extra_lines: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["image,caption,label"]
    for i in range(n):
        write_image(folder / f"{i}.png", color=COLORS[i % len(COLORS)])
        lines.append(f"{i}.png,caption number {i},L{i}")
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n" + extra_lines, "utf-8")
    return folder / "pairs.csv"


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_import_list_show_delete_round_trip(tmp_path, home, capsys):
    csv = make_table(tmp_path / "src", extra_lines="missing.png,gone,L9\n")
    rc, out, err = run(capsys, "--home", home, "import", csv, "--name", "cats")
    assert rc == 0
    assert out.splitlines()[0] == f"cats: imported. table from {csv}: kept 3 pairs, skipped 1 rows (1 missing file)"
    assert "  skipped pairs.csv line 5: missing file" in out
    assert (home / "datasets" / "cats" / "CURRENT").is_file()

    rc, out, err = run(capsys, "--home", home, "import", csv, "--name", "cats")
    assert rc == 0 and out.startswith("cats: already imported, unchanged. ")

    rc, out, err = run(capsys, "--home", home, "list")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "PAIRS", "CAPTIONS", "IMAGES", "VECTORS", "FORMAT", "CREATED"]
    assert lines[1].split()[:6] == ["cats", "3", "3", "3", "-", "table"] and len(lines) == 2

    rc, out, err = run(capsys, "--home", home, "list", "--json")
    assert rc == 0
    [row] = json.loads(out)
    assert {k: row[k] for k in ("name", "format", "pairs", "captions", "images", "vector_model", "dim", "source")} == {
        "name": "cats", "format": "table", "pairs": 3, "captions": 3, "images": 3, "vector_model": None, "dim": None,
        "source": str(csv)}

    rc, out, err = run(capsys, "--home", home, "show", "cats")
    assert rc == 0
    assert "name:      cats" in out
    assert "pairs:     3 (3 captions, 3 images, referenced)" in out
    assert "columns:   label" in out
    assert "0.png\tcaption number 0" in out and "2.png\tcaption number 2" in out
    assert "skipped pairs.csv" not in out

    rc, out, err = run(capsys, "--home", home, "show", "cats", "--rows", "1", "--skipped")
    assert rc == 0
    assert "  skipped pairs.csv line 5: missing file (" in out
    assert "0.png\tcaption number 0" in out and "1.png\t" not in out

    rc, out, err = run(capsys, "--home", home, "show", "cats", "--json")
    assert rc == 0
    m = json.loads(out)
    assert m["name"] == "cats" and m["pairs"] == 3 and m["report"]["skipped"][0]["reason"] == "missing file"

    rc, out, err = run(capsys, "--home", home, "delete", "cats")
    assert rc == 0 and out == "deleted cats\n"
    rc, out, err = run(capsys, "--home", home, "list")
    assert rc == 0 and out == "" and f"no datasets in {home}" in err
    rc, out, err = run(capsys, "--home", home, "list", "--json")
    assert rc == 0 and json.loads(out) == []


def test_home_defaults_to_env(tmp_path, capsys):
    csv = make_table(tmp_path / "src", n=1)
    rc, out, _ = run(capsys, "import", csv, "--quiet")
    assert rc == 0 and out.startswith("pairs: imported.")
    assert (Path(os.environ["MMVIZ_HOME"]) / "datasets" / "pairs" / "CURRENT").is_file()


def test_bad_file_is_exit_1_with_file_name(tmp_path, home, capsys):
    bad = tmp_path / "broken.json"
    bad.write_text("{{{ nope")
    rc, out, err = run(capsys, "--home", home, "import", bad)
    assert rc == 1 and out == ""
    assert err.startswith("mmviz: error: ") and "broken.json" in err and "not valid JSON" in err
    rc, out, err = run(capsys, "--home", home, "import", tmp_path / "absent.csv")
    assert rc == 1 and "absent.csv: no such file or folder" in err
    z = tmp_path / "fake.zip"
    z.write_text("not a zip")
    rc, out, err = run(capsys, "--home", home, "import", z)
    assert rc == 1 and "fake.zip: not a zip archive" in err
    assert not (home / "datasets").exists() or list((home / "datasets").iterdir()) == []


def test_nothing_usable_is_exit_1(tmp_path, home, capsys):
    (tmp_path / "t.csv").write_text("image,text\ngone.png,a\n")
    rc, out, err = run(capsys, "--home", home, "import", tmp_path / "t.csv")
    assert rc == 1 and "mmviz: error: " in err and "t.csv" in err and "no usable pairs" in err


def test_os_errors_are_reported_not_raised(tmp_path, home, capsys, monkeypatch):
    from mmviz import store

    def denied(self, path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(store.Workspace, "import_path", denied)
    rc, out, err = run(capsys, "--home", home, "import", tmp_path / "secret.csv")
    assert rc == 1 and err.startswith("mmviz: error: ") and "secret.csv" in err and "Permission denied" in err


def test_bad_limit_in_env_is_exit_1(tmp_path, home, capsys, monkeypatch):
    monkeypatch.setenv("MMVIZ_MAX_PIXELS", "ten")
    rc, out, err = run(capsys, "--home", home, "import", make_table(tmp_path / "src", n=1))
    assert rc == 1 and err == "mmviz: error: MMVIZ_MAX_PIXELS='ten' is not a whole number\n"


def test_show_and_delete_unknown_or_invalid(home, capsys):
    rc, out, err = run(capsys, "--home", home, "show", "nope")
    assert rc == 1 and err.startswith("mmviz: error: no dataset named 'nope'")
    rc, out, err = run(capsys, "--home", home, "show", "../etc")
    assert rc == 1 and "no dataset named '../etc'" in err
    rc, out, err = run(capsys, "--home", home, "delete", "nope")
    assert rc == 1 and "mmviz: error: no dataset named 'nope'" in err
    rc, out, err = run(capsys, "--home", home, "delete", "../x")
    assert rc == 1 and "mmviz: error: invalid dataset name '../x'" in err


def test_invalid_import_name_is_a_usage_error(tmp_path, home, capsys):
    csv = make_table(tmp_path / "src", n=1)
    with pytest.raises(SystemExit) as e:
        run(capsys, "--home", home, "import", csv, "--name", ".hidden")
    assert e.value.code == 2 and "invalid dataset name '.hidden'" in capsys.readouterr().err


def test_delete_several_keeps_going(tmp_path, home, capsys):
    csv = make_table(tmp_path / "src", n=1)
    for name in ("a", "b"):
        assert run(capsys, "--home", home, "import", csv, "--name", name)[0] == 0
    rc, out, err = run(capsys, "--home", home, "delete", "a", "missing", "b")
    assert rc == 1 and out == "deleted a\ndeleted b\n" and "'missing'" in err


def test_many_skipped_rows_are_truncated_unless_verbose(tmp_path, home, capsys):
    extra = "".join(f"gone{i}.png,c{i},x\n" for i in range(25))
    csv = make_table(tmp_path / "src", n=1, extra_lines=extra)
    rc, out, _ = run(capsys, "--home", home, "import", csv, "--name", "s")
    assert rc == 0 and out.count("  skipped ") == 20
    assert "  ... and 5 more (see: mmviz show s --skipped)" in out
    rc, out, _ = run(capsys, "--home", home, "import", csv, "--name", "t", "-v")
    assert rc == 0 and out.count("  skipped ") == 25 and "more" not in out


def test_max_pixels_and_warnings(tmp_path, home, capsys):
    write_image(tmp_path / "src" / "big.png", size=(20, 20))
    write_image(tmp_path / "src" / "small.png", size=(5, 5), color=COLORS[1])
    (tmp_path / "src" / "t.csv").write_bytes("image,text\nbig.png,grand\nsmall.png,petit café\n".encode("latin-1"))
    rc, out, err = run(capsys, "--home", home, "import", tmp_path / "src" / "t.csv", "--max-pixels", "100")
    assert rc == 0 and "kept 1 pairs, skipped 1 rows (1 image too large)" in out
    assert "warning: t.csv: not valid UTF-8" in err


def test_vectors_with_captions_and_model_name(tmp_path, home, capsys):
    import numpy as np

    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32))
    (tmp_path / "caps.txt").write_text("a\nb\nc\n")
    rc, out, _ = run(capsys, "--home", home, "import", tmp_path / "v.npy", "--captions", tmp_path / "caps.txt",
                     "--model-name", "ViT-B-32")
    assert rc == 0 and "kept 3 pairs" in out
    rc, out, _ = run(capsys, "--home", home, "list")
    assert "ViT-B-32 (4-d)" in out
    rc, out, _ = run(capsys, "--home", home, "show", "v")
    assert "vectors:   ViT-B-32, 4-d" in out and "0\ta" in out


def test_images_option_for_coco(tmp_path, home, capsys):
    write_image(tmp_path / "pics" / "1.jpg")
    (tmp_path / "caps.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "1.jpg"}],
                                                    "annotations": [{"image_id": 1, "caption": "one"}]}))
    rc, out, _ = run(capsys, "--home", home, "import", tmp_path / "caps.json", "--images", tmp_path / "pics",
                     "--copy")
    assert rc == 0 and "coco from" in out and "kept 1 pairs" in out
    rc, out, _ = run(capsys, "--home", home, "show", "caps")
    assert "1 images, copied" in out


@pytest.mark.parametrize("argv", [["frobnicate"], [], ["import"], ["show"], ["delete"], ["list", "--bogus"],
                                  ["import", "x", "--max-pixels", "lots"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage: mmviz" in capsys.readouterr().err


@pytest.mark.parametrize("sub", [None, "import", "list", "show", "delete", "app", "embed", "models", "builtin",
                                 "builtin train", "builtin train-vqa", "gap", "search", "transform", "score", "vqa",
                                 "vqa questions", "vqa train", "finetune", "runs", "captioner", "captioner train",
                                 "captioner runs", "caption", "builtin train-captioner", "report"])
def test_help_exits_0(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main((sub.split() if sub else []) + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mmviz{' ' + sub if sub else ''}")


def test_every_subcommand_is_covered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == ["app", "builtin", "caption", "captioner", "delete", "embed", "finetune", "gap",
                                   "import", "list", "models", "report", "runs", "score", "search", "show",
                                   "transform", "vqa"]


def _console_script() -> str:
    beside = Path(sys.executable).parent / "mmviz"
    if beside.is_file():
        return str(beside)
    found = shutil.which("mmviz")
    if not found:
        pytest.skip("the mmviz console script is not installed")
    return found


def test_console_script_round_trip(tmp_path):
    exe = _console_script()
    csv = make_table(tmp_path / "src", n=2)
    home = tmp_path / "home"
    env = dict(os.environ, MMVIZ_HOME=str(home))

    def sh(*args):
        return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env, timeout=60)

    r = sh("import", csv, "--name", "sub")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("sub: imported. table from") and "kept 2 pairs" in r.stdout
    r = sh("list", "--json")
    assert r.returncode == 0 and [d["name"] for d in json.loads(r.stdout)] == ["sub"]
    r = sh("delete", "sub")
    assert r.returncode == 0 and r.stdout == "deleted sub\n"
    r = sh("show", "sub")
    assert r.returncode == 1 and "mmviz: error: no dataset named 'sub'" in r.stderr
    r = sh("nonsense")
    assert r.returncode == 2


def test_commands_that_need_no_model_do_not_load_torch(tmp_path):
    """Help, usage errors, list, show, delete, runs and a vectors import answer without importing
    torch (2.5 s of the 3 s every command took when the parser named the heads, losses and layers
    through the modules that define them); the names stay the ones those modules check."""
    import numpy as np

    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(2, 30, 8)).astype(np.float32))
    home, vectors = str(tmp_path / "home"), str(tmp_path / "v.npy")
    runs = [["import", vectors, "--name", "v", "-q"], ["list"], ["show", "v"], ["runs"], ["runs", "--json"],
            ["delete", "v"], ["--help"], ["nonsense"]]
    # a fine-tuning run for `runs` to list, made as the app and `mmviz finetune` make one
    script = ("import json, sys\nfrom mmviz.cli import main\ncodes = []\n"
              "from mmviz.finetune.config import FinetuneConfig, create_run\n"
              f"create_run({home!r}, FinetuneConfig(dataset='v', steps=3), run_id='r1')\n"
              "for argv in json.loads(sys.argv[1]):\n"
              "    try:\n        codes.append(main(argv))\n    except SystemExit as e:\n        codes.append(e.code)\n"
              "print(json.dumps([codes, 'torch' in sys.modules]))")
    argvs = [["--home", home, *a] if a[0] not in ("--help", "nonsense") else a for a in runs]
    done = subprocess.run([sys.executable, "-c", script, json.dumps(argvs)], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    *printed, last = done.stdout.strip().splitlines()
    assert json.loads(last) == [[0, 0, 0, 0, 0, 0, 0, 2], False]
    listed, _ = json.JSONDecoder().raw_decode(done.stdout[done.stdout.index("[\n"):])
    assert [(r["id"], r["state"], r["config"]["steps"]) for r in listed] == [("r1", "created", 3)]
    assert any(line.startswith("r1") and "created" in line and "0/3" in line for line in printed), printed
    # the torch-free names are the ones the code checks against
    from mmviz import finetune, vqa
    from mmviz.finetune import config, losses
    from mmviz.vqa import model

    assert config.LOSSES is finetune.LOSSES and config.UNIMODAL is finetune.UNIMODAL is losses.UNIMODAL
    assert config.TRAINABLE is finetune.TRAINABLE and model.HEADS is vqa.HEADS
    assert {type(model.make_head(h, 8, 8, 3)).__name__ for h in vqa.HEADS} == {
        "BAN", "ConcatMLP", "Hadamard"}
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        vqa.nothing


def test_gap_prints_metrics_for_imported_vectors(tmp_path, capsys):
    """`mmviz gap` on a set of imported vectors: the metrics of mmviz.geometry, as text and JSON."""
    import numpy as np

    from mmviz import geometry

    rng = np.random.default_rng(1)
    img, txt = rng.normal(size=(40, 8)) + 1.0, rng.normal(size=(40, 8)) - 1.0
    np.save(tmp_path / "v.npy", np.stack([img, txt]))
    home = str(tmp_path / "home")
    assert main(["--home", home, "import", str(tmp_path / "v.npy"), "--name", "v", "-q"]) == 0
    capsys.readouterr()
    assert main(["--home", home, "gap", "v", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pairs"] == 40 and out["model"] == "precomputed:v"
    assert out["metrics"]["gap_length"] == pytest.approx(geometry.gap_length(img, txt), abs=1e-6)
    assert set(out["metrics"]) == set(geometry.METRICS)
    assert main(["--home", home, "gap", "v"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("v under precomputed:v: 40 pairs, 8-d")
    assert "Gap length" in text and "How far apart" in text
    assert main(["--home", home, "gap", "nope"]) == 1


# -----------------------------------------------------------------------------------------
# search and transform, on the shapes-world demo embedded with the builtin model


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory, one_torch_thread):
    """A workspace holding the 40-scene demo, embedded under builtin:shapes (read-only for the tests)."""
    from conftest import embedded_demo

    home = tmp_path_factory.mktemp("demo-home")
    return home, embedded_demo(home, n=40)[1]


def test_search_finds_the_typed_caption_first(demo_home, capsys):
    home, emb = demo_home
    caption = emb.captions[5]
    rc, out, err = run(capsys, "--home", home, "search", "shapes-demo", caption, "--captions", "-k", "3")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == f"shapes-demo under builtin:shapes: nearest to {caption!r} (cosine)"
    assert lines[1].split() == ["RANK", "SCORE", "KIND", "ID", "CAPTION"]
    rank, score, kind, id_, text = lines[2].split(maxsplit=4)
    assert (rank, score, kind, text) == ("1", "1.000", "caption", caption)  # its own vector is the nearest
    assert len(lines) == 5  # three captions, no images

    rc, out, err = run(capsys, "--home", home, "search", "shapes-demo", caption, "-k", "4", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert (res["dataset"], res["model"], res["query"]) == ("shapes-demo", "builtin:shapes", caption)
    images = [r for r in res["results"] if r["kind"] == "image"]
    captions = [r for r in res["results"] if r["kind"] == "caption"]
    assert [r["rank"] for r in images] == [r["rank"] for r in captions] == [1, 2, 3, 4]
    assert captions[0]["caption"] == caption and captions[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert emb.ids[emb.text_owner[5]] in [r["id"] for r in images[:3]]  # the builtin model finds its image
    assert all(a["score"] >= b["score"] for a, b in zip(images, images[1:]))

    rc, out, err = run(capsys, "--home", home, "search", "shapes-demo", caption, "--images", "--json")
    assert rc == 0 and {r["kind"] for r in json.loads(out)["results"]} == {"image"}
    assert len(json.loads(out)["results"]) == 10  # -k defaults to 10


def test_search_errors(demo_home, tmp_path, capsys):
    home, _ = demo_home
    rc, out, err = run(capsys, "--home", home, "search", "nope", "a red circle")
    assert rc == 1 and "mmviz: error: no dataset named 'nope'" in err and out == ""
    rc, out, err = run(capsys, "--home", home, "search", "shapes-demo", "a red circle", "--model", "ViT-B-32:random")
    assert rc == 1
    assert err.strip().endswith("run first: mmviz embed shapes-demo --model ViT-B-32:random")
    rc, out, err = run(capsys, "--home", home, "search", "shapes-demo", "a red circle", "--model", "nonsense:x")
    assert rc == 1 and "unknown open_clip architecture" in err
    rc, out, err = run(capsys, "--home", home, "search", "shapes-demo", "   ")
    assert rc == 1 and "the text query is empty" in err

    import numpy as np

    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(2, 10, 8)))  # imported vectors: no
    # model mmviz can load made them, so no text query can be put in their space
    other = tmp_path / "other"
    assert main(["--home", str(other), "import", str(tmp_path / "v.npy"), "--name", "v", "-q"]) == 0
    capsys.readouterr()
    rc, out, err = run(capsys, "--home", other, "search", "v", "a red circle")
    assert rc == 1 and "holds imported vectors from precomputed:v" in err
    rc, out, err = run(capsys, "--home", other, "search", "v", "a red circle", "--model", "precomputed:v")
    assert rc == 1 and "cannot be loaded" in err
    with pytest.raises(SystemExit) as e:
        main(["--home", str(home), "search", "shapes-demo", "x", "--images", "--captions"])
    assert e.value.code == 2


def test_transform_collapse_closes_the_gap(demo_home, capsys):
    from mmviz.transforms import evaluate, make

    home, emb = demo_home
    rc, out, err = run(capsys, "--home", home, "transform", "shapes-demo", "--collapse", "--json")
    assert rc == 0, err
    rows = {r["key"]: r for r in json.loads(out)}
    before = evaluate(emb.image, emb.text, emb.text_owner)
    after = evaluate(*make("collapse").fit(emb.image, emb.text).transform(emb.image, emb.text), emb.text_owner)
    assert set(rows) == set(before)  # every geometry metric and recall@1/5/10 both ways
    for key, row in rows.items():
        assert row["before"] == pytest.approx(before[key], abs=1e-9)
        assert row["after"] == pytest.approx(after[key], abs=1e-9)
        assert row["change"] == pytest.approx(after[key] - before[key], abs=1e-9)
    assert rows["gap_length"]["before"] > 0.3 and rows["gap_length"]["after"] < 0.1

    rc, out, err = run(capsys, "--home", home, "transform", "shapes-demo", "--collapse")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("shapes-demo under builtin:shapes: collapse, fitted on 40 images and 160 captions")
    assert lines[1].split()[:4] == ["METRIC", "BEFORE", "AFTER", "CHANGE"]
    gap = next(line for line in lines if line.startswith("Gap length "))
    assert gap.split()[2:5] == [f"{before['gap_length']:.4f}", f"{after['gap_length']:.4f}",
                                f"{after['gap_length'] - before['gap_length']:+.4f}"]
    value = f"{before['gap_length']:.4f}"
    assert gap.index(value) + len(value) == lines[1].index("BEFORE") + len("BEFORE")  # numbers right-aligned


def test_transform_shift_zero_and_corrupt(demo_home, capsys):
    home, emb = demo_home
    rc, out, err = run(capsys, "--home", home, "transform", "shapes-demo", "--shift", "0", "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert len(rows) > 20 and all(abs(r["change"]) < 1e-6 for r in rows)
    rc, out, err = run(capsys, "--home", home, "transform", "shapes-demo", "--corrupt", "0.5", "--seed", "3", "--json")
    assert rc == 0, err
    again = run(capsys, "--home", home, "transform", "shapes-demo", "--corrupt", "0.5", "--seed", "3", "--json")[1]
    rows = {r["key"]: r for r in json.loads(out)}
    assert json.loads(again) == json.loads(out)  # seeded noise
    assert rows["paired_cosine_mean"]["after"] < rows["paired_cosine_mean"]["before"] - 0.1  # strong noise hurts the pairs
    rc, out, err = run(capsys, "--home", home, "transform", "shapes-demo", "--corrupt", "-1")
    assert rc == 1 and "sigma must be >= 0" in err
    rc, out, err = run(capsys, "--home", home, "transform", "nope", "--collapse")
    assert rc == 1 and "no dataset named 'nope'" in err


def test_transform_recall_on_sampled_queries(demo_home, capsys):
    from mmviz.retrieval import recall_at_k
    from mmviz.transforms import make

    home, emb = demo_home
    rc, out, err = run(capsys, "--home", home, "transform", "shapes-demo", "--shift", "0.5", "--recall-queries", "12",
                       "--json")
    assert rc == 0, err
    rows = {r["key"]: r for r in json.loads(out)}
    after_i, after_t = make("shift", lam=0.5).fit_transform(emb.image, emb.text)
    for label, (im, tx) in (("before", (emb.image, emb.text)), ("after", (after_i, after_t))):
        want = recall_at_k(im, tx, (1, 5, 10), emb.text_owner, queries=12, seed=0)  # 12 images, 12 captions
        assert rows["t2i_r1"][label] == pytest.approx(want["t2i"][1], abs=1e-12)
        assert rows["i2t_r5"][label] == pytest.approx(want["i2t"][5], abs=1e-12)
    rc, out, err = run(capsys, "--home", home, "transform", "shapes-demo", "--shift", "0.5", "--recall-queries", "12")
    assert "recall@k over a seeded sample of 12 image and 12 caption queries" in out.splitlines()[0]
    rc, out, err = run(capsys, "--home", home, "transform", "shapes-demo", "--shift", "0.5", "--recall-queries", "all",
                       "--json")
    full = recall_at_k(after_i, after_t, 1, emb.text_owner)
    assert {r["key"]: r for r in json.loads(out)}["t2i_r1"]["after"] == pytest.approx(full["t2i"], abs=1e-12)
    with pytest.raises(SystemExit) as e:
        main(["--home", str(home), "transform", "shapes-demo", "--collapse", "--recall-queries", "0"])
    assert e.value.code == 2 and "positive number of queries or 'all'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["transform", "shapes-demo"], ["transform", "shapes-demo", "--collapse", "--shift", "1"],
                                  ["search", "shapes-demo"], ["transform", "shapes-demo", "--corrupt", "lots"],
                                  ["score", "shapes-demo"],  # one source of candidates, exactly
                                  ["score", "shapes-demo", "--demo", "--candidates", "x.csv"]])
def test_subcommand_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert f"usage: mmviz {argv[0]}" in capsys.readouterr().err


# -----------------------------------------------------------------------------------------
# score: candidate captions on the demo


def test_score_demo_prints_leaderboard_agreement_and_disagreements(demo_home, capsys):
    home, emb = demo_home
    rc, out, err = run(capsys, "--home", home, "score", "shapes-demo", "--demo")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == ("shapes-demo under builtin:shapes: 120 candidates from 3 systems, judged against 80 "
                        "reference captions (prefix '')")
    assert lines[1].split() == ["SYSTEM", "N", "MID", "CLIP-S", "RefCLIP-S", "PMI", "HUMAN"]
    board = [line.rsplit(maxsplit=6) for line in lines[2:5]]
    assert [b[0] for b in board] == ["ground truth", "paraphrase", "foil"]  # best MID first
    assert [b[1] for b in board] == ["40", "40", "40"] and [b[6] for b in board] == ["1.000", "1.000", "0.000"]
    assert float(board[0][3]) > float(board[2][3]) + 0.4  # CLIP-S: ground truth over foil
    i = lines.index("agreement with the human scores (120 judged candidates)")
    assert lines[i + 1].split() == ["METRIC", "N", "KENDALL-TAU-B", "KENDALL-TAU-C", "ROC-AUC", "PAIRS", "PAIRWISE-ACC"]
    assert [line.split()[0] for line in lines[i + 2:i + 5]] == ["CLIP-S", "RefCLIP-S", "PMI"]
    assert all(float(line.split()[4]) > 0.85 and float(line.split()[-1]) > 0.85 for line in lines[i + 2:i + 5])
    j = lines.index("where PMI and CLIP-S disagree most (percentile ranks among all candidates)")
    assert lines[j + 1].split()[:6] == ["LINE", "SYSTEM", "CLIP-S", "CLIP-S-PCT", "PMI", "PMI-PCT"]
    assert len(lines) == j + 12  # the 10 biggest
    assert "warning: MID's reference distribution was regularised" in err and "80 reference pairs" in err

    rc, out, err = run(capsys, "--home", home, "score", "shapes-demo", "--demo", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert [r["system"] for r in res["leaderboard"]] == ["ground truth", "paraphrase", "foil"]
    assert [r["metric"] for r in res["agreement"]] == ["clip_s", "refclip_s", "pmi"]
    assert len(res["per_sample"]) == 120 and res["prefix"] == "" and res["skipped"] == []
    first = res["per_sample"][0]
    assert {"line", "image", "row", "system", "caption", "human", "clip_s", "refclip_s", "pmi"} <= set(first)
    assert first["foil_word"] is None and res["per_sample"][2]["foil_word"]  # null, not NaN: valid JSON


def test_score_candidates_file_reports_what_did_not_match(demo_home, tmp_path, capsys):
    home, emb = demo_home
    f = tmp_path / "cands.csv"
    f.write_text(f"image,caption,model\n{emb.ids[0]},a red circle,mine\nnope.png,a blue square,mine\n"
                 f"{emb.ids[1]},,mine\n", "utf-8")
    rc, out, err = run(capsys, "--home", home, "score", "shapes-demo", "--candidates", f)
    assert rc == 0, err
    assert out.startswith("shapes-demo under builtin:shapes: 1 candidate from 1 system, judged against 160 ")
    assert out.splitlines()[2].split() == ["mine", "1", "-", *out.splitlines()[2].split()[3:6], "-"]  # no MID of one
    assert "agreement" not in out  # no human scores
    assert "  skipped line 3: no image with id or file name 'nope.png' in dataset shapes-demo" in err
    assert "  skipped line 4: empty caption" in err

    f.write_text("image,caption\nnope.png,a blue square\n", "utf-8")
    rc, out, err = run(capsys, "--home", home, "score", "shapes-demo", "--candidates", f)
    assert rc == 1 and out == ""
    assert f"mmviz: error: no candidate in {f} matched an image of shapes-demo (line 2: no image with id" in err

    f.write_text("image_id,sentence\n1,a dog\n", "utf-8")
    rc, out, err = run(capsys, "--home", home, "score", "shapes-demo", "--candidates", f)
    assert rc == 1 and f"mmviz: error: {f}: no caption column (columns found: image_id, sentence)" in err
    rc, out, err = run(capsys, "--home", home, "score", "shapes-demo", "--candidates", tmp_path / "none.csv")
    assert rc == 1 and "none.csv: no such file" in err
    rc, out, err = run(capsys, "--home", home, "score", "nope", "--demo")
    assert rc == 1 and "mmviz: error: no dataset named 'nope'" in err


def test_score_errors_for_sets_it_cannot_score(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(2, 10, 8)))
    home = tmp_path / "home"
    assert main(["--home", str(home), "import", str(tmp_path / "v.npy"), "--name", "v", "-q"]) == 0
    capsys.readouterr()
    rc, out, err = run(capsys, "--home", home, "score", "v", "--demo")
    assert rc == 1 and "has no 'foil' column: demo candidates need the shapes demo set" in err
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "3", "text": "a dog"}) + "\n", "utf-8")
    rc, out, err = run(capsys, "--home", home, "score", "v", "--candidates", tmp_path / "c.jsonl")
    assert rc == 1 and "the model that made the vectors, precomputed:v, and it cannot be loaded" in err




# -----------------------------------------------------------------------------------------
# vqa: questions attached to a dataset, heads trained on them


def test_vqa_train_on_the_demo_prints_the_table_and_saves_the_head(demo_home, capsys):
    home, _ = demo_home
    rc, out, err = run(capsys, "--home", home, "vqa", "train", "shapes-demo", "--epochs", "1", "--hidden", "32", "-q")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("shapes-demo under builtin:shapes: ban head, ") and lines[0].endswith(", 1 epoch")
    assert lines[1].startswith("epoch 1/1: loss ") and "relation" in lines[1]
    i = lines.index("validation accuracy (ban vs the majority answer per question type)")
    assert lines[i + 1].split() == ["TYPE", "N", "BAN", "MAJORITY"]
    types = [line.split()[0] for line in lines[i + 2:i + 7]]
    assert types == ["colour", "count", "exists", "relation", "shape"] and lines[i + 7].split()[0] == "all"
    folder = Path(lines[-1].removeprefix("saved "))
    assert folder.parent == home / "vqa" / "shapes-demo" / "runs" and folder.name.startswith("ban-")
    assert folder.name.endswith("-s0") and len(folder.name) == len("ban-") + 10 + len("-s0")
    for name in ("model.safetensors", "vocab.json", "config.json", "history.json"):
        assert (folder / name).is_file()
    doc = json.loads((folder / "config.json").read_text())
    assert doc["clip_model"] == "builtin:shapes" and doc["hidden"] == 32 and doc["epochs"] == 1
    # the options for where-questions: their own run folder, the config says how to read the words
    rc, out, err = run(capsys, "--home", home, "vqa", "train", "shapes-demo", "--epochs", "1", "--hidden", "32",
                       "--word-inputs", "--grid-coords", "8", "--attended-xy", "-q")
    assert rc == 0, err
    wide = Path(out.splitlines()[-1].removeprefix("saved "))
    assert wide.name == folder.name.replace("ban-", "ban+words+xy8+att-")
    doc = json.loads((wide / "config.json").read_text())
    assert (doc["word_inputs"], doc["grid_coords"], doc["attended_xy"], doc["dq"]) == (True, 8.0, True, 128)
    from mmviz import synthetic
    from mmviz.vqa import VQAHead

    scene = synthetic.make_world(1, 0, 0, seed=0)["train"][0]
    asked = VQAHead(wide).ask(synthetic.render(scene), "is the red circle to the left of the blue square?")
    assert asked.attention.shape[0] == 2 and len(asked.answers) == 5
    rc, out, err = run(capsys, "--home", home, "vqa", "train", "shapes-demo", "--head", "concat", "--grid-coords", "8")
    assert rc == 1 and "--grid-coords and --attended-xy are options of the ban head, not concat" in err
    # the second run reuses the cached tokens and writes its own run folder
    rc, out, err = run(capsys, "--home", home, "vqa", "train", "shapes-demo", "--epochs", "1", "--hidden", "32",
                       "--head", "concat", "--seed", "2", "-q")
    assert rc == 0, err
    assert (home / "vqa" / "shapes-demo" / "runs" / folder.name.replace("ban-", "concat-").replace("-s0", "-s2")
            / "model.safetensors").is_file()


def test_vqa_train_errors(demo_home, tmp_path, capsys):
    home = tmp_path / "home"
    csv = make_table(tmp_path / "src", n=3)
    assert main(["--home", str(home), "import", str(csv), "--name", "cats", "-q"]) == 0
    capsys.readouterr()
    rc, out, err = run(capsys, "--home", home, "vqa", "train", "cats")
    assert rc == 1 and out == ""
    assert "mmviz: error: cats has no VQA questions; attach some first: mmviz vqa questions cats FILE" in err
    rc, out, err = run(capsys, "--home", home, "vqa", "train", "nope")
    assert rc == 1 and "mmviz: error: no dataset named 'nope'" in err
    rc, out, err = run(capsys, "--home", demo_home[0], "vqa", "train", "shapes-demo", "--model", "hf-hub:nobody/none")
    assert rc == 1 and "mmviz: error: model hf-hub:nobody/none cannot be loaded" in err


def test_vqa_questions_attaches_a_table(tmp_path, capsys):
    from mmviz.builtin import make_demo
    from mmviz.store import Workspace
    from mmviz.vqa.questions import questions

    home = tmp_path / "home"
    ds = make_demo(Workspace(home), n=10)
    f = tmp_path / "q.csv"
    f.write_text("image,question,answer\ntest-000001,what colour?,red\ntest-000002.png,how many?,two\n"
                 "nope.png,what?,x\n", "utf-8")
    rc, out, err = run(capsys, "--home", home, "vqa", "questions", "shapes-demo", f)
    assert rc == 0, err
    assert out.startswith("shapes-demo: kept 2 questions (1 train, 1 val), skipped 0 rows, 1 unmatched images; "
                          f"written to {home / 'vqa' / 'shapes-demo' / 'questions.jsonl'}")
    assert "  unmatched line 4: no image with id or file name 'nope.png' in dataset shapes-demo" in out
    assert [q.question for q in questions(Workspace(home), ds)] == ["what colour?", "how many?"]
    f.write_text("image,question,answer\nnope.png,what?,x\n", "utf-8")
    rc, out, err = run(capsys, "--home", home, "vqa", "questions", "shapes-demo", f)
    assert rc == 1 and "mmviz: error: no question matched an image of dataset shapes-demo (line 2: " in err
    rc, out, err = run(capsys, "--home", home, "vqa", "questions", "shapes-demo", tmp_path / "none.csv")
    assert rc == 1 and "none.csv: no such file" in err
    rc, out, err = run(capsys, "--home", home, "vqa", "questions", "shapes-demo", f, "--annotations", f)
    assert rc == 1 and "need the COCO images folder too: --images DIR" in err


def test_app_server_settings_match_the_repo_config(tmp_path, monkeypatch):
    """`mmviz app` and `streamlit run app/main.py` from the repo root (tests, benches) serve
    with the same settings: each of SERVER_OPTIONS is on the command line and in config.toml."""
    import tomllib

    from mmviz import cli

    seen = {}
    monkeypatch.setattr(cli.app, "run_until_stopped", lambda cmd, env: seen.update(cmd=cmd) or 0)
    assert main(["--home", str(tmp_path), "app"]) == 0
    config = tomllib.loads((Path(__file__).parents[1] / ".streamlit" / "config.toml").read_text())
    assert {"server.fileWatcherType", "runner.postScriptGC"} <= set(cli.app.SERVER_OPTIONS)
    for name, value in cli.app.SERVER_OPTIONS.items():
        assert seen["cmd"][seen["cmd"].index(f"--{name}") + 1] == value
        section, key = name.split(".")
        assert str(config[section][key]).lower() == value, name
