"""The Gap explorer on 100,000 imported pairs, in headless Chromium (software GL): every point is
drawn on the WebGL map and the metric panels follow it, a lasso selects exactly the pairs inside it (checked against the cached
layout with our own point-in-polygon test) and the panel lists their captions, and hovering a
point shows its own caption."""
from __future__ import annotations

import re

import numpy as np
import pytest

from mmviz import mapdata, projection
from mmviz.embed import embed_dataset
from mmviz.store import Workspace
from test_browser import ARTIFACTS, CHROMIUM_ARGS, chromium_path, start_server, stop_server
from test_map_browser import Screen, drag, in_polygon

pytestmark = pytest.mark.browser
N, DIM = 100_000, 32
MODEL = "synthetic-clip"


def caption(i: int) -> str:
    return f"pair {i} of topic {i % 50}"


@pytest.fixture(scope="module")
def big_app(tmp_path_factory):
    """The app on a workspace holding `big`: N pairs in 50 clusters, captions offset by a gap."""
    chromium_path()  # skip before importing and starting a server when there is no browser
    home = tmp_path_factory.mktemp("gap-scale-home")
    (home / ".demo-offered").touch()
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, DIM))
    images = centres[np.arange(N) % 50] + 0.3 * rng.normal(size=(N, DIM)) + 1.0
    texts = images + 0.3 * rng.normal(size=(N, DIM)) - 2.0
    src = tmp_path_factory.mktemp("gap-scale-src")
    np.save(src / "big.npy", np.stack([images, texts]).astype(np.float32))
    (src / "big.txt").write_text("".join(caption(i) + "\n" for i in range(N)))
    ws = Workspace(home)
    ws.import_path(src / "big.npy", "big", model_name=MODEL)
    url, proc, log = start_server(tmp_path_factory.mktemp("gap-scale-log"), home)
    yield url, ws
    stop_server(proc, log)


def test_gap_explorer_draws_lassos_and_hovers_100k_pairs(big_app):
    from playwright.sync_api import expect, sync_playwright

    url, ws = big_app
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            requested = []
            page.on("request", lambda r: requested.append(r.url))
            page.goto(url + "/gap")
            expect(page.get_by_text("big under")).to_be_visible(timeout=120_000)
            root = page.locator(".mmviz-map")
            expect(root).to_have_attribute("data-drawn", str(2 * N), timeout=180_000)  # every image and caption
            expect(root.locator(".mmviz-map__legend")).to_contain_text("100,000")
            page.screenshot(path=str(ARTIFACTS / "gap_scale_drawn.png"))
            # the panels held back while the map drew follow by themselves, on the map's report
            expect(page.get_by_role("button", name="Spectrum (CSV)")).to_be_visible(timeout=120_000)
            expect(page.get_by_role("button", name="Show them now")).to_have_count(0)
            expect(page.get_by_text("Paired versus unpaired cosine")).to_be_visible()

            # The layout the app drew, read back from the workspace cache (a hit: the app wrote it).
            ds = ws.open("big")
            emb = embed_dataset(ws, ds, MODEL)
            parts = {"dataset": ds.manifest["content_hash"], "model": emb.fingerprint}
            layout, hit = projection.cached_layout(ws, parts, emb.image, emb.text, "gap2", None, 0,
                                                   identifies_data=True)
            assert hit
            xy = mapdata.pairs_layout(layout.image_xy, layout.text_xy, emb.text_owner, max_lines=0).xy
            screen = Screen(page, mapdata.MapFrame.fit(xy))

            # Lasso a small ellipse in the images' cloud. Points within a pixel of the outline
            # may fall either way (float32 in the browser), so the count must lie between the
            # picks of the ellipse shrunk and grown by 1.5 px.
            box = screen.box
            px = screen.px(xy)
            cx, cy = np.median(px[:N], axis=0)
            ang = np.linspace(0, 2 * np.pi, 17)

            def ellipse(grow: float) -> np.ndarray:
                return np.c_[cx + (30 + grow) * np.cos(ang), cy + (20 + grow) * np.sin(ang)]

            page.get_by_role("button", name="Lasso mode").click()
            drag(page, list(map(tuple, ellipse(0))), steps_per_leg=3)
            low, high = (mapdata.picked_images(np.flatnonzero(in_polygon(xy, screen.data(ellipse(g)))), N,
                                               emb.text_owner) for g in (-1.5, 1.5))
            assert len(low) > 20  # the loop holds real points, not an empty test
            selected = page.get_by_text(re.compile(r"^[\d,]+ selected$"))
            expect(selected).to_be_visible(timeout=60_000)
            count = int(selected.inner_text().split()[0].replace(",", ""))
            assert len(low) <= count <= len(high), (len(low), count, len(high))
            # the panel lists the picked images in row order, each with its own caption
            first = int(low[0]) if count == len(low) else None
            listed = page.locator("code").filter(has_text=re.compile(r"^\S+$"))
            # "and N more" ends the panel: once it shows, every entry above it has arrived (they
            # come one by one, and reading them earlier found only the first four)
            more = page.get_by_text(re.compile(r"^and [\d,]+ more$"))
            expect(more).to_be_visible(timeout=30_000)
            ids = [emb.ids[int(r)] for r in high]
            shown = [t for t in listed.all_inner_texts() if t in set(ids)]
            assert len(shown) >= 10, listed.all_inner_texts()
            assert len(shown) + int(more.inner_text().split()[1].replace(",", "")) == count
            for id_ in shown[:3]:  # the entry's paragraph: its id, then its caption
                entry = page.locator("p", has=page.locator("code", has_text=re.compile(f"^{re.escape(id_)}$")))
                assert f"– {caption(emb.ids.index(id_))}" in entry.first.inner_text()
            if first is not None:
                assert shown[0] == emb.ids[first]
            page.screenshot(path=str(ARTIFACTS / "gap_scale_lasso.png"))

            # Hover one point well outside the lasso: the tooltip names it and shows its caption.
            page.get_by_role("button", name="Pan mode").click()
            page.wait_for_timeout(500)
            inside_box = ((px[:, 0] > box["x"] + 40) & (px[:, 0] < box["x"] + box["width"] - 40)
                          & (px[:, 1] > box["y"] + 40) & (px[:, 1] < box["y"] + box["height"] - 40))
            i = int(np.flatnonzero(inside_box)[np.argmax(px[inside_box, 1])])  # the lowest point on screen
            hx, hy = px[i]
            page.mouse.move(hx - 30, hy + 30)
            page.mouse.move(hx, hy, steps=5)
            tip = root.locator(".mmviz-map__tooltip")
            expect(tip).to_contain_text("pair", timeout=30_000)
            tip_text = tip.inner_text()
            near = np.flatnonzero(np.hypot(*(px - px[i]).T) < 4)  # the point hovered, or a neighbour
            rows = {int(r) if r < N else int(emb.text_owner[r - N]) for r in near}
            assert any(caption(r) in tip_text for r in rows), (tip_text, sorted(rows)[:10])
            page.screenshot(path=str(ARTIFACTS / "gap_scale_hover.png"))
            # nothing came from anywhere but the app (once, the tab's icon came from Google's fonts)
            assert requested and all(u.startswith((url, "data:", "blob:")) for u in requested), \
                [u for u in requested if not u.startswith((url, "data:", "blob:"))]
        finally:
            browser.close()
