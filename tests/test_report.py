"""mmviz report: one self-contained HTML file that opens offline, for sharing a demo."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import COLORS, write_image
from mmviz import __version__
from mmviz.store import Workspace
from test_browser import CHROMIUM_ARGS, chromium_path

ROOT = Path(__file__).resolve().parents[1]
N_SCENES = 120
MAX_BYTES = 15 * 2 ** 20
# Anything that would make a browser fetch from the network, in the report's own markup.
REMOTE = re.compile(r"""(?:\b(?:src|href|srcset|action|poster|data)\s*=\s*["']?\s*|@import\s+(?:url\(\s*)?["']?|"""
                    r"""url\(\s*["']?)(?:https?:)?//""", re.I)
EVIL = "<script>alert(1)</script>"
EVIL2 = '"><img src=x onerror=alert(2)>'



def cli(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", MMVIZ_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "mmviz.cli", "--home", str(home), *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=timeout)


def without_plotly_js(html: str) -> str:
    """The report's own markup: the inlined plotly.js (which names plotly.com and map tile
    servers in strings and links it never loads; the browser test checks that) left out."""
    return re.sub(r'<script id="plotly-js">.*?</script>', "", html, count=1, flags=re.S)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The shapes demo (120 scenes) and its full report, built by the command line."""
    from mmviz.builtin import make_demo

    home = tmp_path_factory.mktemp("report-home")
    (home / ".demo-offered").touch()
    make_demo(Workspace(home), n=N_SCENES)
    out = home / "out" / "shapes-demo-report.html"
    day_before = dt.datetime.now(dt.timezone.utc).date().isoformat()
    t0 = time.perf_counter()
    run = cli(home, "report", "shapes-demo", "--out", str(out))
    seconds = time.perf_counter() - t0
    assert run.returncode == 0, run.stderr[-3000:]
    days = {day_before, dt.datetime.now(dt.timezone.utc).date().isoformat()}
    print(f"\nreport of {N_SCENES} scenes: {out.stat().st_size:,} bytes in {seconds:.1f} s (with embedding)")
    return {"home": home, "path": out, "html": out.read_text("utf-8"), "run": run, "days": days}


def test_the_report_is_one_file_that_needs_no_network(demo):
    from plotly.offline import get_plotlyjs

    from mmviz.models import resolve
    from mmviz.report import SECTIONS

    html, path = demo["html"], demo["path"]
    size = path.stat().st_size
    print(f"report size: {size:,} bytes")
    assert size < MAX_BYTES
    # plotly.js inlined exactly once, every figure drawn by it (no per-figure copy)
    js = get_plotlyjs()
    for probe in (js[:60], js[len(js) // 2:len(js) // 2 + 200], js[-200:]):
        assert html.count(probe) == 1
    assert html.count('<script id="plotly-js">') == 1
    own = without_plotly_js(html)
    assert len(own) < len(html) - len(js) + 100
    assert not REMOTE.findall(own), REMOTE.findall(own)[:5]
    assert "http://" not in own and "https://" not in own
    assert not re.search(r"<script[^>]+\bsrc\s*=|<link\b|<iframe\b|<object\b|<embed\b", own, re.I)
    assert "Content-Security-Policy" in own and "default-src 'none'" in own
    # thumbnails and pictures are data: URIs
    srcs = re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', own)
    assert len(srcs) >= 40  # the worst pairs' own and best-match images
    assert all(s.startswith(("data:image/jpeg;base64,", "data:image/png;base64,")) for s in srcs)
    # every section under its heading, in order
    headings = re.findall(r'<section id="(\w+)" data-section="\w+"><h2>([^<]*)</h2>', own)
    assert [k for k, _ in headings] == list(SECTIONS)
    import html as html_lib
    assert [html_lib.unescape(t) for _, t in headings] == [t for t, _ in SECTIONS.values()]
    # what the reader needs to know what they are looking at
    fingerprint = resolve("builtin:shapes", download=False).fingerprint
    assert fingerprint in own
    assert f"mmviz {__version__}" in own and f"<dd>{__version__}</dd>" in own
    assert any(f"Made {d}T" in own for d in demo["days"])
    assert f"<dd>{N_SCENES:,}</dd>" in own  # pairs
    # the figures the page says it has are the figures it holds
    n = int(re.search(r'<meta name="mmviz-figures" content="(\d+)">', own).group(1))
    assert n == own.count('class="mmviz-figure"') == own.count('type="application/json"')
    assert n >= 8  # gap, cosines, 4 before/after, VQA overlay and heatmap
    # the sections that apply to the demo have their content; the ones that do not say so
    assert "ground truth" in own and "paraphrase" in own and "foil" in own  # caption leaderboard
    assert "The shipped captioners" in own and "CIDEr" in own
    assert "no fine-tuning run of shapes-demo" in own
    # progress went to stderr, the summary to stdout
    assert "[9/9] finetune" in demo["run"].stderr
    assert f"{n} figures" in demo["run"].stdout


@pytest.mark.browser
def test_the_report_draws_in_chromium_with_every_request_blocked(demo):
    from playwright.sync_api import sync_playwright

    url = "http://report.invalid/shapes-demo-report.html"  # served from the route below, nothing else is
    body = demo["path"].read_bytes()
    attempted, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})

            def route(r):
                if r.request.url == url:
                    r.fulfill(status=200, body=body, content_type="text/html; charset=utf-8")
                else:
                    attempted.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.on("request", lambda r: r.url != url and not r.url.startswith("data:") and attempted.append(r.url))
            page.on("requestfailed", lambda r: r.url != url and attempted.append(f"failed: {r.url}"))
            page.on("console", lambda m: m.type in ("error", "warning") and errors.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.goto(url)
            page.wait_for_selector("body[data-drawn]", timeout=60_000)
            said = int(page.get_attribute('meta[name="mmviz-figures"]', "content"))
            drawn = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')]
                                     .filter(d => d.querySelector('svg.main-svg')).length""")
            points = page.evaluate("() => document.querySelectorAll('#figure-1 .scatterlayer .point').length")
            page.wait_for_timeout(500)
            page.screenshot(path="/tmp/report.png", full_page=True)
        finally:
            browser.close()
    assert drawn == said >= 8
    assert points >= N_SCENES * 5  # the gap view drew every image and caption
    assert attempted == []
    assert errors == []


def test_sections_pick_a_subset(demo, tmp_path):
    out = tmp_path / "two.html"
    run = cli(demo["home"], "report", "shapes-demo", "--sections", "metrics, summary", "--out", str(out), "-q")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # -q: no progress
    html = out.read_text("utf-8")
    assert re.findall(r'<section id="(\w+)"', html) == ["summary", "metrics"]
    assert html.count("<h2>") == 2
    assert 'content="1"' in html and html.count('<script id="plotly-js">') == 1  # the cosine histogram


def test_unknown_section_or_dataset_is_an_error(demo, tmp_path):
    from mmviz.report import SECTIONS

    run = cli(demo["home"], "report", "shapes-demo", "--sections", "summary,bogus", "--out", str(tmp_path / "x.html"))
    assert run.returncode == 1
    assert run.stderr.startswith("mmviz: error: unknown section 'bogus'; choose from ")
    assert all(name in run.stderr for name in SECTIONS)
    assert not (tmp_path / "x.html").exists()

    run = cli(demo["home"], "report", "no-such-set", "--out", str(tmp_path / "y.html"))
    assert run.returncode == 1
    assert run.stderr.startswith("mmviz: error: no dataset named 'no-such-set'")
    assert not (tmp_path / "y.html").exists()


def test_captions_from_the_data_are_escaped(tmp_path):
    from mmviz.report import make_report
    from mmviz.report.page import PLOTLY_SCRIPT_ID

    folder = tmp_path / "evil"
    rows = []
    for i in range(12):
        write_image(folder / f"img{i}.png", size=(32, 32), color=COLORS[i % len(COLORS)])
        caption = EVIL if i == 0 else EVIL2 if i == 1 else f"a card of colour {i}"
        rows.append(json.dumps({"file_name": f"img{i}.png", "text": [caption, f"card {i} again"]}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    ws = Workspace(tmp_path / "ws")
    ws.import_path(folder, "evil", copy_images=True)
    rep = make_report(ws, "evil", "builtin:shapes", sections="summary,gap,retrieval,captions,vqa")
    own = re.sub(rf'<script id="{PLOTLY_SCRIPT_ID}">.*?</script>', "", rep.html, count=1, flags=re.S)
    assert EVIL not in own and "alert(1)</script>" not in own
    assert "<img src=x" not in own and not re.search(r"<[a-z]+\b[^>]*\bonerror", own, re.I)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in own  # shown as text in the worst-pairs table
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in own
    assert "captions" in rep.skipped  # no demo candidates for this set: said in its place
    assert "no demo candidates" in own
    # in the figures' JSON (plotly's hover text is HTML: it shows the entities as characters)
    assert "&lt;script&gt;alert(1)&lt;\\u002fscript&gt;" in own


def test_the_data_page_builds_and_offers_the_report(demo, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MMVIZ_HOME", str(demo["home"]))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=240)
    at.run()
    assert not at.exception, at.exception
    assert not [b for b in at.get("download_button") if b.label == "Download report"]
    at.button(key="report_build").click().run()
    assert not at.exception, at.exception
    assert [b.label for b in at.get("download_button") if b.label == "Download report"] == ["Download report"]
    assert any("figures" in c.value and "MB" in c.value for c in at.caption)
