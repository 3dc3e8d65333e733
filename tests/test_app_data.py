"""Data page logic through Streamlit's AppTest (no browser)."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from mmviz.store import Workspace

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
COLOURS = {"red": (220, 20, 20), "green": (20, 180, 40), "blue": (30, 40, 210)}


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    h.mkdir()
    (h / ".demo-offered").touch()  # these tests start from an empty workspace, not the demo
    monkeypatch.setenv("MMVIZ_HOME", str(h))
    return h


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "shapes"
    d.mkdir()
    with open(d / "metadata.jsonl", "w") as f:
        for name, rgb in COLOURS.items():
            Image.new("RGB", (24, 16), rgb).save(d / f"{name}.png")
            f.write(json.dumps({"file_name": f"{name}.png", "text": [f"a {name} card", f"{name} paper"]}) + "\n")
        f.write(json.dumps({"file_name": "gone.png", "text": "missing image"}) + "\n")
    return d


def run_app(**kw) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def texts(at) -> str:
    return "\n".join(str(m.value) for m in at.markdown) + "\n".join(str(m.value) for m in at.caption)


def test_empty_workspace_invites_an_import(home):
    at = run_app()
    assert [i.value for i in at.info] == ["No dataset yet. Upload a zip or type a local path above."]
    assert at.sidebar.selectbox(key="dataset").value is None
    assert len(at.dataframe) == 0


def test_import_local_path_shows_report_and_selects_dataset(home, folder):
    at = run_app()
    at.text_input(key="local_path").input(str(folder)).run()
    assert at.text_input(key="local_name").proto.placeholder == "shapes"  # name suggested from the path
    at.button[1].click().run()  # "Import path"
    assert not at.exception, at.exception
    assert "Imported **shapes** (imagefolder): 3 pairs kept, 1 rows skipped." in at.success[0].value
    assert at.sidebar.selectbox(key="dataset").value == "shapes"
    assert Workspace(home).names() == ["shapes"]
    # the skipped row is listed with its reason
    skipped = at.dataframe[0].value
    assert skipped["reason"].tolist() == ["missing file"]
    assert "gone.png" in skipped["detail"][0]
    assert [m.value for m in at.metric][:3] == ["3", "6", "3"]


def test_bad_path_gives_a_clear_error_and_keeps_state(home, folder, tmp_path):
    Workspace(home).import_path(folder, "shapes")
    at = run_app()
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    at.text_input(key="local_path").input(str(bad)).run()
    at.button[1].click().run()
    assert len(at.error) == 1
    assert str(bad) in at.error[0].value and "unknown file type .txt" in at.error[0].value
    assert Workspace(home).names() == ["shapes"]  # nothing lost
    assert at.sidebar.selectbox(key="dataset").value == "shapes"


def test_browse_search_and_detail(home, folder):
    Workspace(home).import_path(folder, "shapes")
    at = run_app()
    table = at.dataframe[0].value
    assert table["id"].tolist() == ["red.png", "green.png", "blue.png"]
    assert all(t.startswith("data:image/jpeg;base64,") for t in table["thumbnail"])
    assert table["n_captions"].tolist() == [2, 2, 2]
    # the detail of the first pair lists both captions
    assert "- a red card" in texts(at) and "- red paper" in texts(at)
    assert at.selectbox(key="pair_id").value == "red.png"

    at.text_input(key="search").input("GREEN").run()
    table = at.dataframe[0].value
    assert table["id"].tolist() == ["green.png"]
    assert "1 of 3 pairs match." in texts(at)
    assert at.selectbox(key="pair_id").value == "green.png"

    at.text_input(key="search").input("paper").run()
    assert len(at.dataframe[0].value) == 3
    at.selectbox(key="pair_id").select("blue.png").run()
    assert "- a blue card" in texts(at)
    assert len(at.image) == 1  # the full image of the opened pair


def test_vectors_dataset_shows_paired_cosine(home, tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(4, 8))
    txt = img + 0.5 * rng.normal(size=(4, 8))
    np.save(tmp_path / "vecs.npy", np.stack([img, txt]))
    (tmp_path / "vecs.txt").write_text("zero\none\ntwo\nthree\n")
    Workspace(home).import_path(tmp_path / "vecs.npy", "vecs")
    at = run_app()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Imported vectors"] == "8-d"
    a, t = img[0] / np.linalg.norm(img[0]), txt[0] / np.linalg.norm(txt[0])
    assert metrics["cos(image, text)"] == f"{a @ t:.3f}"
    assert "thumbnail" not in at.dataframe[0].value.columns
    infos = [i.value for i in at.info]
    assert infos[-1] == "No image: this set holds precomputed vectors only."
    assert infos[0].startswith("This set came with its vectors: precomputed:vecs, 8-d")


def test_delete_needs_confirmation(home, folder):
    ws = Workspace(home)
    ws.import_path(folder, "shapes")
    at = run_app()
    delete = [b for b in at.button if b.label == "Delete"][0]
    assert delete.disabled
    at.checkbox(key="confirm_delete").check().run()
    [b for b in at.button if b.label == "Delete"][0].click().run()
    assert not at.exception
    assert ws.names() == []
    assert [i.value for i in at.info] == ["No dataset yet. Upload a zip or type a local path above."]


def test_local_path_import_is_off_when_served_to_others(home, monkeypatch):
    monkeypatch.setenv("MMVIZ_LOCAL_PATHS", "0")
    at = run_app()
    assert "Importing from local paths is off" in at.info[0].value
    assert [t.key for t in at.text_input] == ["upload_name"]


def test_first_launch_creates_the_demo_once(tmp_path, monkeypatch):
    home = tmp_path / "fresh"
    monkeypatch.setenv("MMVIZ_HOME", str(home))
    at = run_app()
    assert at.sidebar.selectbox(key="dataset").value == "shapes-demo"
    assert at.sidebar.selectbox(key="model_choice").value == "builtin:shapes"
    assert [m.value for m in at.metric][:3] == ["600", f"{Workspace(home).open('shapes-demo').manifest['captions']:,}", "600"]
    Workspace(home).delete("shapes-demo")
    at = run_app()  # a later launch does not bring back a demo the user deleted
    assert Workspace(home).names() == []
    assert at.sidebar.selectbox(key="dataset").value is None


@pytest.fixture
def random_checkpoint(tmp_path):
    """Seeded random weights of the builtin architecture, as a local checkpoint spec."""
    import torch
    from safetensors.torch import save_file

    from mmviz.models import BUILTIN_ARCH, _open_clip

    torch.manual_seed(3)
    model = _open_clip().create_model(BUILTIN_ARCH)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return f"{BUILTIN_ARCH}:{path}"


def test_embed_from_the_data_page(home, tmp_path, random_checkpoint):
    from mmviz import synthetic

    scenes = synthetic.make_world(0, 0, 12, seed=5)["test"]
    Workspace(home).import_path(synthetic.write_imagefolder(scenes, tmp_path / "small"), "small")
    at = run_app()
    at.sidebar.selectbox(key="model_choice").select("Other…").run()
    at.sidebar.text_input(key="model_custom").input(random_checkpoint).run()
    n_caps = sum(len(s.captions) for s in scenes)
    assert f"0 / 12 images and 0 / {n_caps} captions cached" in texts(at)
    at.button(key="embed").click().run()
    assert not at.exception, at.exception
    assert at.success[-1].value.startswith("Embedded 12 images and ")
    at.run()
    assert f"12 / 12 images and {n_caps} / {n_caps} captions cached" in texts(at)
    assert at.button(key="embed").disabled


def test_unavailable_model_is_flagged_and_the_page_keeps_working(home, folder):
    Workspace(home).import_path(folder, "shapes")
    at = run_app()
    at.sidebar.selectbox(key="model_choice").select("ViT-B-32:laion2b_s34b_b79k").run()
    assert not at.exception
    assert any("not downloaded yet" in w.value for w in at.sidebar.warning)
    assert any("Cannot embed with ViT-B-32:laion2b_s34b_b79k" in w.value for w in at.warning)
    assert at.dataframe[0].value["id"].tolist() == ["red.png", "green.png", "blue.png"]  # browsing still works
