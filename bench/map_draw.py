"""The WebGL embedding map (app/embedding_map.py) against the Gap page's plotly figure, in headless
Chromium with software GL (--no-sandbox --disable-gpu), on the demo app's synthetic pairs
(tests/apps/map_demo.py: half images, half captions, 2,000 pair lines, the gap arrow).

For each size: seconds from navigation until the points are on screen (the map's root gets
data-drawn; plotly: every marker path is in the DOM), the map's own data-draw-ms (data in the
browser -> first frame, with its breakdown), bytes received over the websocket for the first
load, and for the map one hover: bytes received and ms until the tooltip shows the caption
sent back by Python. Baseline: plotly at `--baseline-points`, timed in the same run, against
the map at the same size; then the map alone at `--sizes`.

    .venv/bin/python bench/map_draw.py [--sizes 100000 1000000 2000000] [--baseline-points 40000]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "apps"))

import map_demo  # noqa: E402
from mmviz.mapdata import MapFrame  # noqa: E402
from report import write_report  # noqa: E402  (bench/report.py)
from test_browser import CHROMIUM_ARGS, chromium_path, start_server, stop_server  # noqa: E402

PLOTLY_DRAWN = """n => { const g = document.querySelector('.js-plotly-plot');
  return !!g && g.querySelectorAll('.scatterlayer path.point').length >= n; }"""


def measure(n: int, renderer: str, timeout_s: float) -> dict:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        url, proc, log = start_server(tmp, tmp / "home", script=ROOT / "tests" / "apps" / "map_demo.py",
                                      env={"MAP_N": str(n), "MAP_RENDERER": renderer, "PYTHONPATH": str(ROOT)})
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1300, "height": 900})
                received: list[int] = []
                page.on("websocket", lambda ws: ws.on("framereceived", lambda b: received.append(len(b))))
                t0 = time.perf_counter()
                page.goto(url)
                out: dict = {"points": n, "renderer": renderer}
                if renderer == "plotly":
                    page.wait_for_function(PLOTLY_DRAWN, arg=n, timeout=timeout_s * 1000, polling=500)
                    out["seconds_to_drawn"] = round(time.perf_counter() - t0, 2)
                    out["bytes_first_load"] = sum(received)
                    browser.close()
                    return out
                root = page.locator(".mmviz-map")
                page.wait_for_selector(f'.mmviz-map[data-drawn="{n}"]', timeout=timeout_s * 1000, state="attached")
                out["seconds_to_drawn"] = round(time.perf_counter() - t0, 2)
                out["bytes_first_load"] = sum(received)
                out["draw_ms"] = int(root.get_attribute("data-draw-ms"))
                out["draw_breakdown_ms"] = root.get_attribute("data-timings")
                # one hover of the demo's isolated point: caption back from Python
                xy, _, marks = map_demo.layout(n)
                view = [float(v) for v in root.get_attribute("data-view").split(",")]
                box = root.locator("canvas.mmviz-map__gl").bounding_box()
                ndc = MapFrame.fit(xy).to_ndc(np.array([map_demo.HOVER_POINT]))[0].astype(float)
                hx = float(box["x"] + (ndc[0] - view[0]) / (view[2] - view[0]) * box["width"])
                hy = float(box["y"] + (view[3] - ndc[1]) / (view[3] - view[1]) * box["height"])
                page.mouse.move(hx + 40, hy + 40)
                page.wait_for_timeout(1000)
                before = len(received)
                t1 = time.perf_counter()
                page.mouse.move(hx, hy, steps=4)
                page.locator(".mmviz-map__tooltip").get_by_text(f"caption of point {marks['hover']}").wait_for(
                    timeout=timeout_s * 1000)
                out["hover_ms"] = round((time.perf_counter() - t1) * 1000)
                page.wait_for_timeout(500)
                out["bytes_hover"] = sum(received[before:])
                browser.close()
                return out
        finally:
            stop_server(proc, log)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 2_000_000])
    ap.add_argument("--baseline-points", type=int, default=40_000)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    rows = []
    base = measure(args.baseline_points, "plotly", args.timeout)
    same = measure(args.baseline_points, "map", args.timeout)
    rows += [base, same]
    print(f"{args.baseline_points:>9,} points  plotly {base['seconds_to_drawn']:6.1f} s {base['bytes_first_load']:>12,} B"
          f"  | map {same['seconds_to_drawn']:6.1f} s {same['bytes_first_load']:>12,} B")
    for n in args.sizes:
        r = measure(n, "map", args.timeout)
        rows.append(r)
        print(f"{n:>9,} points  map {r['seconds_to_drawn']:6.1f} s to drawn (data->frame {r['draw_ms']} ms: "
              f"{r['draw_breakdown_ms']}), {r['bytes_first_load']:,} B first load; hover {r['hover_ms']} ms, "
              f"{r['bytes_hover']:,} B")
    biggest = rows[-1]
    report = {
        "machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": [round(v, 1) for v in os.getloadavg()]},
        "rows": rows,
        "speedup_vs_plotly_same_points": round(base["seconds_to_drawn"] / same["seconds_to_drawn"], 1),
        "bytes_ratio_vs_plotly_same_points": round(base["bytes_first_load"] / same["bytes_first_load"], 1),
        "goals": {
            "largest_size_drawn": biggest["points"] == max(args.sizes),
            "hover_under_20kB": all(r.get("bytes_hover", 0) < 20_000 for r in rows if r["renderer"] == "map"),
            "faster_than_plotly": same["seconds_to_drawn"] < base["seconds_to_drawn"],
        },
    }
    write_report(ROOT / "bench" / "results" / "map_draw.json", report)


if __name__ == "__main__":
    main()
