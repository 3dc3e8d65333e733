"""The WebGL embedding map in headless Chromium (software GL): it draws, a box and a lasso drag
return exactly the points inside them to Python, hovering a point shows its caption from
Python, and a hover rerun does not re-send the points."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmviz.mapdata import MapFrame
from test_browser import ARTIFACTS, CHROMIUM_ARGS, chromium_path, start_server, stop_server

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "tests" / "apps" / "map_demo.py"
N = 100_000
sys.path.insert(0, str(DEMO.parent))
import map_demo  # noqa: E402  (the demo app's data, to know where every point is)


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    chromium_path()  # skip before starting a server when there is no browser
    tmp = tmp_path_factory.mktemp("map-demo")
    url, proc, log = start_server(tmp, tmp / "home", script=DEMO, env={"MAP_N": str(N), "PYTHONPATH": str(ROOT)})
    yield url
    stop_server(proc, log)


def installed_mmviz() -> bool:
    """Streamlit finds component manifests only in installed distributions (pip install -e .);
    with mmviz merely on sys.path, app/embedding_map.py passes the bundle inline instead."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("mmviz")
        return True
    except PackageNotFoundError:
        return False


class Screen:
    """Data units <-> page pixels for the drawn map, from the NDC box it reports on its root
    (`data-view`: left, bottom, right, top) and our own MapFrame: independent of the JS math."""

    def __init__(self, page, frame: MapFrame):
        root = page.locator(".mmviz-map")
        self.box = root.locator("canvas.mmviz-map__gl").bounding_box()
        self.view = [float(v) for v in root.get_attribute("data-view").split(",")]
        self.frame = frame

    def px(self, xy) -> np.ndarray:
        ndc = self.frame.to_ndc(np.asarray(xy, np.float64)).astype(np.float64)
        x0, y0, x1, y1 = self.view
        b = self.box
        return np.c_[b["x"] + (ndc[:, 0] - x0) / (x1 - x0) * b["width"],
                     b["y"] + (y1 - ndc[:, 1]) / (y1 - y0) * b["height"]]

    def data(self, px) -> np.ndarray:
        px = np.asarray(px, np.float64).reshape(-1, 2)
        x0, y0, x1, y1 = self.view
        b = self.box
        ndc = np.c_[x0 + (px[:, 0] - b["x"]) / b["width"] * (x1 - x0),
                    y1 - (px[:, 1] - b["y"]) / b["height"] * (y1 - y0)]
        return self.frame.from_ndc(ndc)


def drag(page, path_px, steps_per_leg=6):
    page.mouse.move(*path_px[0])
    page.mouse.down()
    for (ax, ay), (bx, by) in zip(path_px[:-1], path_px[1:]):
        for t in np.linspace(0, 1, steps_per_leg + 1)[1:]:
            page.mouse.move(ax + (bx - ax) * t, ay + (by - ay) * t)
            page.wait_for_timeout(15)
    page.mouse.up()


def in_polygon(xy: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over points (an independent check of the JS lasso)."""
    inside = np.zeros(len(xy), bool)
    x, y = xy[:, 0], xy[:, 1]
    for (ax, ay), (bx, by) in zip(poly, np.roll(poly, -1, axis=0)):
        crosses = (ay > y) != (by > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = ax + (y - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (x < xint)
    return inside


def expect_selection(page, expected: np.ndarray, number: int):
    from playwright.sync_api import expect

    expected = np.sort(expected)
    text = (f"selection #{number}: {len(expected)} points, md5 {map_demo.selection_digest(expected)}, "
            f"first {expected[:5].tolist()}")
    expect(page.get_by_text(f"selection #{number}:")).to_have_text(text, timeout=60_000)


def test_map_draws_selects_and_hovers(demo_url):
    from playwright.sync_api import expect, sync_playwright

    xy, modality, marks = map_demo.layout(N)
    frame = MapFrame.fit(xy)
    received: list[int] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("websocket", lambda ws: ws.on(
                "framereceived", lambda payload: received.append(len(payload))))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(demo_url)
            root = page.locator(".mmviz-map")
            expect(root).to_have_attribute("data-drawn", str(N), timeout=120_000)
            assert all(u.startswith((demo_url, "data:", "blob:")) for u in requests), \
                f"the map loaded something from elsewhere: {[u for u in requests if not u.startswith(demo_url)]}"
            if installed_mmviz():  # the manifest is found: the bundle is a cacheable file, not inline
                assert any(u.endswith("/_stcore/bidi-components/mmviz.map/map.js") for u in requests), requests
            first_load = sum(received)
            assert first_load > 9 * N, f"the points did not come over the websocket ({first_load} bytes)"
            expect(root.locator(".mmviz-map__legend")).to_contain_text("image")
            expect(root.locator(".mmviz-map__legend")).to_contain_text("50,000")
            expect(root.locator(".mmviz-map__note")).to_have_text("100,000 points")
            # the spatial index came from the worker, not the fallback on the page's thread
            assert root.get_attribute("data-index-built") == "worker"
            # the frame is rendered at the map's own size, not the window's (1300 x 900 here)
            gl_size = page.locator("canvas.mmviz-map__gl").evaluate("c => `${c.width}x${c.height}`")
            assert root.get_attribute("data-render-size") == gl_size, gl_size
            width, height = map(int, gl_size.split("x"))
            assert width < 1300 and height < 900, gl_size
            page.screenshot(path=str(ARTIFACTS / "map_drawn.png"))
            screen = Screen(page, frame)

            # Box: corners in the middle of the demo's empty moat around BOX_REGION.
            x0, y0, x1, y1 = map_demo.BOX_REGION
            m = map_demo.MOAT / 2
            corners = screen.px([[x0 - m, y1 + m], [x1 + m, y0 - m]])
            page.get_by_role("button", name="Box mode").click()
            frames = int(root.get_attribute("data-frames"))
            drag(page, [corners[0], corners[1]])
            lo, hi = screen.data(corners).min(0), screen.data(corners).max(0)
            inside = np.flatnonzero(((xy >= lo) & (xy <= hi)).all(1))
            assert len(inside) > 100  # the region holds real points, not an empty test
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ARTIFACTS / "map_box_selected.png"))
            expect_selection(page, inside, 1)
            expect(root).to_have_attribute("data-selected", str(len(inside)), timeout=30_000)
            # the drag drew its outline in 2-D: WebGL rendered only for the new highlight (each
            # full frame costs seconds at millions of points in software GL)
            assert int(root.get_attribute("data-frames")) - frames <= 2
            page.screenshot(path=str(ARTIFACTS / "map_box_selected.png"))

            # Lasso: a free-form loop around the isolated cluster.
            page.get_by_role("button", name="Lasso mode").click()
            cx, cy = map_demo.CLUSTER_CENTRE
            ang = np.linspace(0, 2 * np.pi, 13)
            loop = screen.px(np.c_[cx + 0.15 * np.cos(ang), cy + 0.1 * np.sin(ang)])
            drag(page, list(map(tuple, loop)), steps_per_leg=3)
            lassoed = np.flatnonzero(in_polygon(xy, screen.data(loop)))
            np.testing.assert_array_equal(lassoed, marks["cluster"])
            expect_selection(page, lassoed, 2)

            # Hover the isolated point: its caption comes from Python (one small rerun).
            page.get_by_role("button", name="Pan mode").click()
            page.wait_for_timeout(500)
            before = len(received)
            frames = root.get_attribute("data-frames")
            hx, hy = screen.px([map_demo.HOVER_POINT])[0]
            page.mouse.move(hx - 30, hy - 30)
            page.mouse.move(hx, hy, steps=5)
            i = marks["hover"]
            tip = root.locator(".mmviz-map__tooltip")
            expect(tip).to_contain_text(f"caption of point {i}", timeout=30_000)
            expect(tip).to_contain_text(f"Point {i}")
            expect(tip.locator("img")).to_have_count(1)
            expect(page.get_by_text(f"hover: {i}")).to_be_visible(timeout=30_000)
            page.wait_for_timeout(500)
            hover_bytes = sum(received[before:])
            assert root.get_attribute("data-frames") == frames, "hovering re-rendered the points"
            page.screenshot(path=str(ARTIFACTS / "map_hover.png"))
            # the rerun re-sends the 900 kB points element as a cache reference, not the data
            assert hover_bytes < 20_000, f"a hover moved {hover_bytes} bytes: {received[before:]}"

            # Pan and zoom move the view (and the 2-D overlay with it); Reset view comes back.
            view0 = root.get_attribute("data-view")
            page.mouse.move(hx - 200, hy - 100)
            page.mouse.wheel(0, -400)
            expect(root).not_to_have_attribute("data-view", view0, timeout=30_000)
            page.wait_for_timeout(800)  # let the zoom settle
            zoomed = Screen(page, frame)
            assert zoomed.view[2] - zoomed.view[0] < 0.9 * (screen.view[2] - screen.view[0])
            page.mouse.move(hx - 200, hy - 100)
            page.mouse.down()
            page.mouse.move(hx - 100, hy - 100, steps=8)
            page.mouse.up()
            page.wait_for_timeout(800)
            panned = Screen(page, frame)
            shift = (panned.view[0] - zoomed.view[0]) / (zoomed.view[2] - zoomed.view[0]) * zoomed.box["width"]
            assert shift == pytest.approx(-100, abs=3), f"a 100 px drag panned {shift:.1f} px"
            # the gap arrow is redrawn where its middle now is: dark pixels there
            half = N // 2
            mid = (xy[half:].mean(0) + xy[:half].mean(0)) / 2
            mx, my = panned.px([mid])[0]
            shot = np.asarray(Image.open(io.BytesIO(page.screenshot(clip={"x": mx - 4, "y": my - 4, "width": 9,
                                                                            "height": 9}))).convert("L"))
            assert shot.min() < 90, "no arrow where the arrow's middle should be after pan and zoom"
            page.screenshot(path=str(ARTIFACTS / "map_zoomed.png"))
            page.get_by_role("button", name="Reset view").click()
            expect(root).to_have_attribute("data-view", view0, timeout=30_000)

            # New colours for the same points: redrawn in place, the legend becomes a colour bar.
            page.get_by_text("Colour by x·y").click()
            expect(root.locator(".mmviz-map__legend")).to_contain_text("x·y", timeout=60_000)
            expect(root).to_have_attribute("data-drawn", str(N), timeout=60_000)
            assert root.get_attribute("data-view") == view0
            assert root.get_attribute("data-index-built") == "kept"  # same positions: no rebuild
            page.screenshot(path=str(ARTIFACTS / "map_by_value.png"))

            # A narrower window: the renderer follows the map's new size (map_narrow.png shows the points).
            page.set_viewport_size({"width": 1000, "height": 900})
            expect(root).not_to_have_attribute("data-render-size", gl_size, timeout=30_000)
            narrow = page.locator("canvas.mmviz-map__gl").evaluate("c => `${c.width}x${c.height}`")
            assert int(narrow.split("x")[0]) < width
            expect(root).to_have_attribute("data-render-size", narrow, timeout=30_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "map_narrow.png"))
            print(f"websocket: first load {first_load:,} B, hover {hover_bytes:,} B; "
                  f"draw {root.get_attribute('data-draw-ms')} ms {root.get_attribute('data-timings')}")
        finally:
            browser.close()


def test_map_without_webgl_says_so(demo_url):
    """With WebGL off (--disable-3d-apis) the map explains itself instead of a blank box."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True,
                                    args=CHROMIUM_ARGS + ["--disable-3d-apis"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(demo_url)
            root = page.locator(".mmviz-map")
            expect(root).to_have_attribute("data-state", "error", timeout=120_000)
            expect(root.locator(".mmviz-map__message")).to_contain_text("WebGL is not available")
            page.screenshot(path=str(ARTIFACTS / "map_no_webgl.png"))
        finally:
            browser.close()
