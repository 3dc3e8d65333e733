"""The real app in headless Chromium: upload a zip through the file uploader, see thumbnails."""
import contextlib
import re
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mmviz.cli.app import wait_healthy
from PIL import Image, ImageDraw

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The demo server and the process that predicts its captions sum in the same order.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SHAPES = {"red": (230, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 230)}


def chromium_path() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI: scripts/setup.sh --test should have installed it")
        pytest.skip("Chromium not installed (apt-get install chromium)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path, home: Path, script: Path = ROOT / "app" / "main.py", env: dict | None = None):
    """Streamlit running `script` (the app by default) on a free loopback port, once healthy."""
    port = free_port()
    env = dict(os.environ, MMVIZ_HOME=str(home), HF_HUB_OFFLINE="1", **(env or {}))
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    if not wait_healthy(url, proc):
        proc.kill()
        pytest.fail("streamlit did not become healthy:\n" + (tmp_path / "streamlit.log").read_text()[-3000:])
    return url, proc, log


def stop_server(proc, log) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def server(tmp_path):
    """The app on an empty workspace (the first-launch demo already offered)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".demo-offered").touch()
    url, proc, log = start_server(tmp_path, home)
    yield url
    stop_server(proc, log)


@pytest.fixture
def fresh_server(tmp_path):
    """The app as a newcomer first opens it: no workspace at all."""
    url, proc, log = start_server(tmp_path, tmp_path / "new-home")
    yield url
    stop_server(proc, log)


def shapes_zip(path: Path) -> Path:
    """An ImageFolder zip: three 96x96 images, each a big disc of one colour on white."""
    meta = []
    with zipfile.ZipFile(path, "w") as zf:
        for name, rgb in SHAPES.items():
            im = Image.new("RGB", (96, 96), "white")
            ImageDraw.Draw(im).ellipse((8, 8, 88, 88), fill=rgb)
            buf = io.BytesIO()
            im.save(buf, "PNG")
            zf.writestr(f"shapes/{name}.png", buf.getvalue())
            meta.append(json.dumps({"file_name": f"{name}.png", "text": f"a {name} disc on white paper"}))
        zf.writestr("shapes/metadata.jsonl", "\n".join(meta) + "\n")
    return path


def colour_pixels(png: bytes, rgb, tol=40) -> int:
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int((np.abs(a - np.array(rgb)).max(axis=2) < tol).sum())


@contextlib.contextmanager
def open_page(url: str, height: int):
    """A headless Chromium page on the app at `url`; screenshots go to test-artifacts/."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.goto(url)
            yield page
        finally:
            browser.close()


def test_upload_zip_shows_thumbnails(server, tmp_path):
    from playwright.sync_api import expect

    upload = shapes_zip(tmp_path / "shapes.zip")
    with open_page(server, 1300) as page:
        expect(page.get_by_role("heading", name="Data")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("No dataset yet.")).to_be_visible()

        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(upload))
        expect(page.get_by_text("shapes.zip")).to_be_visible(timeout=30_000)
        page.get_by_role("button", name="Import upload").click()
        expect(page.get_by_text("3 pairs kept, 0 rows skipped")).to_be_visible(timeout=60_000)

        grid = page.locator('[data-testid="stDataFrame"]').first
        expect(grid).to_be_visible(timeout=30_000)
        # The grid draws on a canvas: look for each disc's colour in its pixels.
        counts = {}
        for _ in range(40):
            shot = grid.screenshot()
            counts = {n: colour_pixels(shot, rgb) for n, rgb in SHAPES.items()}
            if min(counts.values()) > 50:
                break
            time.sleep(0.5)
        page.screenshot(path=str(ARTIFACTS / "data_page.png"), full_page=True)
        assert min(counts.values()) > 50, f"thumbnail colours not drawn in the table: {counts}"

        # The opened pair's full image is a real <img> that loaded.
        img = page.locator('[data-testid="stImage"] img').first
        expect(img).to_be_visible(timeout=30_000)
        assert img.evaluate("el => el.naturalWidth") == 96
        img.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "data_page_detail.png"))
        expect(page.get_by_role("listitem").filter(has_text="a red disc on white paper")).to_be_visible()
        # The sidebar picked the new dataset.
        expect(page.locator('[data-testid="stSidebar"]').get_by_role("combobox", name="Dataset")).to_have_value("shapes")
        expect(page.get_by_text("From upload shapes.zip (zip/imagefolder)")).to_be_visible()


def test_first_launch_opens_the_demo_and_embeds_it_offline(fresh_server):
    from playwright.sync_api import expect

    with open_page(fresh_server, 1100) as page:
        expect(page.get_by_role("heading", name="Browse shapes-demo")).to_be_visible(timeout=90_000)
        sidebar = page.locator('[data-testid="stSidebar"]')
        expect(sidebar.get_by_role("combobox", name="Dataset")).to_have_value("shapes-demo")
        expect(sidebar.get_by_role("combobox", name="Model")).to_have_value("builtin:shapes")
        expect(page.get_by_text("0 / 600 images")).to_be_visible()
        page.get_by_role("button", name="Embed", exact=True).click()
        expect(page.get_by_text("Embedded 600 images and")).to_be_visible(timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "first_launch_embedded.png"))
        # a later run shows everything cached
        page.reload()
        expect(page.get_by_text("600 / 600 images")).to_be_visible(timeout=60_000)
        expect(page.get_by_role("button", name="Embedded")).to_be_disabled()

        # the Gap explorer on the demo set: the projection, the gap arrow, the metrics
        page.get_by_role("link", name="Gap explorer").click()
        expect(page.get_by_role("heading", name="Gap explorer")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("shapes-demo under builtin:shapes")).to_be_visible(timeout=60_000)
        # the WebGL map draws every image and caption
        expect(page.locator(".mmviz-map")).to_have_attribute("data-drawn", str(600 + 2400), timeout=60_000)
        expect(page.get_by_text("Gap length").first).to_be_attached(timeout=60_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "gap_explorer.png"))
        # a box around the middle of the map: the selected pairs appear beside it
        page.locator(".mmviz-map").get_by_role("button", name="Box").click()
        box = page.locator(".mmviz-map canvas").first.bounding_box()
        cx, cy = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5
        page.mouse.move(cx - 80, cy - 80)
        page.mouse.down()
        page.mouse.move(cx + 80, cy + 80, steps=10)
        page.mouse.up()
        expect(page.get_by_text(re.compile(r"^[\d,]+ selected$"))).to_be_visible(timeout=30_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "gap_explorer_selection.png"))
        # the sphere view: DOSNES fits 2,000 of the 3,000 points, with progress shown; leaving
        # mid-fit stops it (the sphere is drawn in test_a_fresh_sphere_and_a_finetune_run_on_the_demo)
        page.get_by_text("DOSNES sphere").click()
        expect(page.get_by_text("Fits on a seeded sample of 2,000 points")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("optimisation step")).to_be_visible(timeout=60_000)

        # Transforms: collapse closes the gap; moving the strength slider to 0 undoes it
        page.get_by_role("link", name="Transforms").click()
        expect(page.get_by_role("heading", name="Transforms")).to_be_visible(timeout=60_000)
        gap_metric = page.locator('[data-testid="stMetric"]').filter(has_text="Gap length")
        expect(gap_metric).to_be_visible(timeout=60_000)
        expect(page.locator(".js-plotly-plot")).to_have_count(2, timeout=60_000)
        collapsed = float(gap_metric.locator('[data-testid="stMetricValue"]').inner_text())
        assert collapsed < 0.1
        table = page.locator('[data-testid="stDataFrame"]').first
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "transforms_collapse.png"), full_page=True)
        table_before = table.screenshot()
        slider = page.get_by_role("slider", name="Strength")
        slider.focus()
        slider.press("Home")  # strength 0: nothing removed
        expect(gap_metric.locator('[data-testid="stMetricValue"]')).not_to_have_text(f"{collapsed:.3f}", timeout=60_000)
        uncollapsed = float(gap_metric.locator('[data-testid="stMetricValue"]').inner_text())
        assert uncollapsed > 0.3 and gap_metric.locator('[data-testid="stMetricDelta"]').inner_text().strip() == "+0.000"
        page.wait_for_timeout(1500)
        assert table.screenshot() != table_before  # the table's "after" column was redrawn
        page.screenshot(path=str(ARTIFACTS / "transforms_strength0.png"), full_page=True)

        # Retrieval: a demo scene uploaded as the query finds its own image, cosine 1.000
        from mmviz import synthetic

        scene = synthetic.make_world(0, 0, 600, seed=0)["test"][5]
        query = ARTIFACTS / "query-scene.png"
        scene.render().save(query)
        page.get_by_role("link", name="Retrieval").click()
        expect(page.get_by_role("heading", name="Retrieval", exact=True)).to_be_visible(timeout=60_000)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(query))
        expect(page.get_by_text("Nearest to the image query-scene.png")).to_be_visible(timeout=60_000)
        first = page.locator('[data-testid="stCaptionContainer"]').filter(has_text="#1 · 1.000").first
        expect(first).to_be_visible(timeout=30_000)
        assert scene.id in first.inner_text()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "retrieval_upload.png"))

        # Captions: the demo leaderboard, then an uploaded candidates file with one unknown image
        page.get_by_role("link", name="Captions").click()
        expect(page.get_by_role("heading", name="Leaderboard")).to_be_visible(timeout=120_000)
        expect(page.get_by_role("heading", name="Probe: a caption against its foils")).to_be_attached(timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "captions_demo.png"))
        page.get_by_text("Upload candidates (CSV or JSONL)").click()
        upload = ARTIFACTS / "candidates.csv"
        upload.write_text("image,caption,system\n"
                          "test-000000,a large red triangle in the centre,good\n"
                          "test-000000,a large blue circle in the corner,bad\n"
                          "no-such-image,a cat,bad\n")
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(upload))
        expect(page.get_by_text("1 of 3 rows left out")).to_be_visible(timeout=60_000)
        expect(page.get_by_role("heading", name="Leaderboard")).to_be_visible(timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "captions_upload.png"))

        # VQA: ask the shipped BAN head about a demo image and see its answers and attention maps
        page.get_by_role("link", name="VQA").click()
        expect(page.get_by_role("heading", name="VQA", exact=True)).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Top answers")).to_be_visible(timeout=60_000)
        box = page.get_by_label("Question")
        box.fill("how many shapes are there?")
        box.press("Enter")
        expect(page.locator(".js-plotly-plot")).to_have_count(3, timeout=60_000)  # answers, overlay, words x patches
        expect(page.get_by_text("Words by patches, averaged over glimpses")).to_be_attached(timeout=60_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "vqa.png"), full_page=True)
        # a relation question about a two-object image; glimpse 1 was trained to find the subject
        picker = page.get_by_role("textbox", name="or an image of the dataset")  # the search picker
        picker.fill("test-000001")
        picker.press("Enter")  # one match: picked
        expect(page.get_by_text("is the blue circle to the right of the yellow circle? → yes")).to_be_visible(
            timeout=60_000)
        box = page.get_by_label("Question")
        expect(box).to_have_count(1, timeout=30_000)  # the previous image's box is gone after the rerun
        box.fill("is the blue circle to the left of the yellow circle?")
        box.press("Enter")
        page.get_by_test_id("stButtonGroup").get_by_text("1", exact=True).click()  # glimpse 1
        expect(page.get_by_text("Words by patches, glimpse 1")).to_be_attached(timeout=60_000)
        expect(page.get_by_text("This head's glimpses were trained to find the objects")).to_be_visible()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "vqa_relation.png"), full_page=True)


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """The app on a 40-pair embedded demo, shared by the tests below: (url, home)."""
    from conftest import embedded_demo

    chromium_path()  # skip before starting a server when there is no browser
    tmp = tmp_path_factory.mktemp("demo-server")
    home = tmp / "home"
    home.mkdir()
    (home / ".demo-offered").touch()
    embedded_demo(home, n=40)
    url, proc, log = start_server(tmp, home, env=ONE_THREAD)
    yield url, home
    stop_server(proc, log)


def test_captioning_page_shows_two_captioners_captions(demo_server):
    """The Captioning page on the embedded demo: c1 and c3 caption the first image side by side."""
    from playwright.sync_api import expect

    from mmviz.captioner.builtin import builtin_folder

    if not all((builtin_folder(v) / "model.safetensors").exists() for v in ("c1", "c3")):
        pytest.skip("no shipped c1 and c3 captioners")
    url, home = demo_server
    # What the server will write, computed as it computes it: in a fresh process, one thread as
    # the server has (c1's near-tied tokens can decode differently under another summation
    # order, and this process's thread count may have been changed by earlier tests).
    script = ("import json, sys, numpy as np; from mmviz.store import Workspace; from mmviz.embed import "
              "stored_embeddings; from mmviz.models import load_model; from mmviz.captioner.builtin import load_builtin; "
              "ws = Workspace(sys.argv[1]); emb = stored_embeddings(ws, ws.open('shapes-demo'), 'builtin:shapes'); "
              "tok = load_model(emb.model).tokenizer; print(json.dumps({v: load_builtin(v, tok).caption("
              "np.array(emb.image[:1]))[0] for v in ('c1', 'c3')}))")
    env = {**os.environ, **ONE_THREAD}
    done = subprocess.run([sys.executable, "-c", script, str(home)], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    want = json.loads(done.stdout.strip().splitlines()[-1])
    with open_page(url, 1300) as page:
        page.get_by_role("link", name="Captioning", exact=True).click()
        expect(page.get_by_role("heading", name="Captioning", exact=True)).to_be_visible(timeout=60_000)
        picker = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Captioners")
        expect(picker.get_by_text("paired (builtin)")).to_be_visible(timeout=60_000)  # the default: c1, c3, paired
        picker.get_by_role("button", name="Clear all").click()
        for v in ("c1", "c3"):
            picker.get_by_role("combobox").click()
            page.get_by_role("option", name=f"{v} (builtin)", exact=True).click()
            expect(picker.get_by_text(f"{v} (builtin)", exact=True)).to_be_visible()
        page.keyboard.press("Escape")
        expect(picker.get_by_text("paired (builtin)")).to_have_count(0)
        # both picks survive the reruns they started (a script that rewrote the widget's value on
        # every run made the browser drop a pick made while a run was under way)
        page.wait_for_timeout(1500)
        for v in ("c1", "c3"):
            expect(picker.get_by_text(f"{v} (builtin)", exact=True)).to_be_visible()
        # one column per captioner: its name, its caption, its scores (and not the other's name)
        main = page.locator('[data-testid="stMain"]')
        for v, caption in want.items():
            other = "c3" if v == "c1" else "c1"
            card = (main.locator('[data-testid="stColumn"]').filter(has=page.get_by_text(f"{v} (builtin)", exact=True))
                    .filter(has=page.get_by_text(f"“{caption}”", exact=True))
                    .filter(has_not=page.get_by_text(f"{other} (builtin)", exact=True)))
            try:
                expect(card).to_have_count(1, timeout=60_000)
            except AssertionError:
                cards = main.locator('[data-testid="stColumn"]').all_inner_texts()
                raise AssertionError(f"no card of {v} showing “{caption}”; the page's columns: {cards}") from None
            expect(card).to_be_visible()
            expect(card.get_by_text("CLIP-S")).to_be_visible()
        expect(main.get_by_text("paired (builtin)", exact=True)).to_have_count(0)
        expect(page.get_by_role("button", name="Corpus metrics (CSV)")).to_be_visible(timeout=60_000)
        expect(page.get_by_role("button", name="Send to Captions")).to_be_attached(timeout=60_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "captioning.png"))
        page.get_by_role("heading", name="Worst failures").scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "captioning_worst.png"))
        page.get_by_role("heading", name="Train a captioner").scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "captioning_train.png"))


def test_a_link_reopens_the_view_and_follows_the_controls(demo_server):
    """A Transforms link names the dataset, the transform, its strength and the projection; the
    page opens on them, and a changed control is written back into the address."""
    from playwright.sync_api import expect

    url, _ = demo_server
    with open_page(f"{url}/transforms?dataset=shapes-demo&model=builtin%3Ashapes&transform=collapse&strength=0.35"
                   "&projection=pca2", 1100) as page:
        main = page.locator('[data-testid="stMain"]')
        expect(page.get_by_role("heading", name="Transforms", exact=True)).to_be_visible(timeout=60_000)
        expect(main.get_by_role("radio", name="Collapse")).to_be_checked(timeout=60_000)
        expect(main.get_by_role("radio", name="PCA 2D")).to_be_checked()
        expect(main.locator('[data-testid="stSlider"]').filter(has_text="Strength").get_by_text("0.35")).to_be_visible()
        expect(page.locator('[data-testid="stSidebar"]').get_by_role("combobox", name="Dataset")).to_have_value("shapes-demo")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "link_opened.png"))
        main.get_by_text("Gap axis", exact=True).click()
        page.wait_for_url(lambda u: "projection=gap2" in u, timeout=60_000)
        assert "strength=0.35" in page.url and "dataset=shapes-demo" in page.url
        main.get_by_role("button", name="Copy link").click()
        expect(page.get_by_text("projection=gap2", exact=False).first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "link_copy.png"))
    with open_page(f"{url}/transforms?projection=tsne&strength=9", 900) as page:
        expect(page.get_by_text("Ignored in the link", exact=False)).to_be_visible(timeout=60_000)
        expect(page.get_by_text("projection=tsne: expected one of gap2", exact=False)).to_be_visible()
        expect(page.locator('[data-testid="stMain"]').get_by_role("radio", name="Gap axis")).to_be_checked()


def test_a_fresh_sphere_and_a_finetune_run_on_the_demo(demo_server):
    """The DOSNES sphere opened from a link on a fresh workspace draws its 3-D figure (its 200
    points fit too fast to see progress: the walkthrough sees it on 3,000). Then a background
    fine-tuning run, watched live to its end, with its curves and before/after layouts."""
    from playwright.sync_api import expect

    url, _ = demo_server
    with open_page(f"{url}/gap?projection=dosnes", 1100) as page:
        expect(page.get_by_role("heading", name="Gap explorer")).to_be_visible(timeout=60_000)
        expect(page.locator('[data-testid="stMain"]').get_by_role("radio", name="DOSNES sphere")).to_be_checked(
            timeout=60_000)
        expect(page.locator(".js-plotly-plot #scene").first).to_be_attached(timeout=60_000)
        expect(page.get_by_text("Fits on every point.")).to_be_visible()
        page.wait_for_timeout(2000)
        page.screenshot(path=str(ARTIFACTS / "gap_explorer_sphere.png"))

        page.get_by_role("link", name="Fine-tune").click()
        expect(page.get_by_role("heading", name="Fine-tune", exact=True)).to_be_visible(timeout=60_000)
        steps = page.get_by_label("Steps")
        steps.fill("8")
        steps.press("Tab")
        expect(steps).to_have_value("8")
        page.get_by_role("button", name="Start run").click()
        # the page follows the background process on its own (a fragment that reruns every second)
        expect(page.get_by_text(re.compile(r"Run \S+: (starting|running)"))).to_be_visible(timeout=60_000)
        expect(page.get_by_text("finished — step 8 / 8", exact=False)).to_be_visible(timeout=180_000)
        heading = page.get_by_role("heading", name="Before and after, on the validation split")
        expect(heading).to_be_visible(timeout=60_000)
        expect(page.locator(".js-plotly-plot")).to_have_count(3, timeout=60_000)  # curves, before, after
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "finetune.png"))
        heading.scroll_into_view_if_needed()
        page.mouse.wheel(0, 300)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "finetune_compare.png"))
