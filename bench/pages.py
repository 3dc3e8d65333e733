"""Every page but the Gap explorer on a large set, in a real browser: time to first useful output
and the Streamlit server's peak memory.

Starts the app (`streamlit run app/main.py`, headless, a free loopback port) on a temporary
workspace that links only --dataset (and --home's derived/, results/ and layouts/ caches),
drives it with Playwright's headless Chromium and times, from the click: the first useful
output (a text that answers) and the end of the script run. Steps: Data's first page, a search
and a second one; Transforms opened (collapse: means, the drawn sample's figures, then the whole
set written and before/after metrics with recall on 1,000 sampled queries) and reopened;
Retrieval opened (one pair's ranks), a dataset image picked by search and its neighbours, then
recall and the worst pairs on 1,000 sampled queries (or read back when stored); Mixup; Captions,
VQA and Fine-tune opened. The server's memory is sampled every 0.2 s from /proc: VmRSS, split
into anonymous memory (what the server holds) and mapped files (clean page cache of the
memory-mapped vectors, dropped by release_pages after a pass), and VmHWM at the end. Goal: peak
RSS <= 6 GB at a million pairs. Screenshots: bench/results/pages-*.png; numbers:
bench/results/pages.json. Clear --home's derived/ results/ layouts/ for a cold run.

    .venv/bin/python bench/pages.py --home /tmp/scale/home --dataset v1m

The dataset is only read; the caches are written under --home.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
GOAL_RSS_GB = 6.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Memory(threading.Thread):
    """Samples a process's VmRSS (and reads VmHWM) until stopped; peak() since the last mark."""

    def __init__(self, pid: int, limit: float):
        super().__init__(daemon=True)
        self.pid, self.rss, self.mark_peak, self.stop, self.limit = pid, 0, 0, threading.Event(), limit
        self.killed, self.anon_peak, self.file_peak = False, 0, 0

    def status(self, field: str) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.rss = self.status("VmRSS")
            self.mark_peak = max(self.mark_peak, self.rss)
            self.anon_peak = max(self.anon_peak, self.status("RssAnon"))  # heap: what the server holds
            self.file_peak = max(self.file_peak, self.status("RssFile"))  # mapped files: page cache
            if self.rss > self.limit and not self.killed:  # a shared machine: stop before the OOM killer does
                os.kill(self.pid, 9)
                self.killed = True
                print(f"server killed at {self.rss / 1e9:.1f} GB resident (--max-rss-gb)", flush=True)
            time.sleep(0.2)

    def take_peak(self) -> tuple[int, int, int]:
        """(peak RSS, peak anonymous, peak file-backed) since the last call."""
        out = self.mark_peak, self.anon_peak, self.file_peak
        self.mark_peak = self.anon_peak = self.file_peak = 0
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", required=True, help="workspace holding the dataset")
    ap.add_argument("--dataset", required=True, help="dataset to open (the only one the app will list)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed per step")
    ap.add_argument("--max-rss-gb", type=float, default=12, help="kill the server past this (default 12)")
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="mmviz-pages-"))  # the app lists only --dataset
    (home / "datasets").mkdir()
    (home / "datasets" / args.dataset).symlink_to(Path(args.home).resolve() / "datasets" / args.dataset)
    (home / ".demo-offered").touch()
    for cache in ("derived", "results", "layouts"):
        (Path(args.home) / cache).mkdir(exist_ok=True)
        (home / cache).symlink_to(Path(args.home).resolve() / cache)
    port = free_port()
    log = open(OUT / "pages-streamlit.log", "w")
    env = dict(os.environ, MMVIZ_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"),
                               "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless",
                               "true", "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    mem = Memory(server.pid, args.max_rss_gb * 1e9)
    mem.start()
    steps: dict[str, dict] = {}
    timeout_ms = args.timeout * 1000
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                        headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1300})

            def idle() -> None:
                """Until the script run ends (the status widget's running icon goes away)."""
                page.wait_for_timeout(300)
                expect(page.get_by_test_id("stStatusWidgetRunningIcon")).to_have_count(0, timeout=timeout_ms)

            def step(name: str, act, first_text: str, *more: str) -> None:
                """Time from `act` to `first_text` (the page's first useful output), to every
                text of `more` (its last answer) and to the end of the script run."""
                t0 = time.time()
                act()
                expect(page.get_by_text(first_text).locator("visible=true").first).to_be_visible(timeout=timeout_ms)
                first = time.time() - t0
                for text in more:
                    expect(page.get_by_text(text).locator("visible=true").first).to_be_visible(timeout=timeout_ms)
                idle()
                done = time.time() - t0
                rss, anon, mapped = (round(v / 1e9, 2) for v in mem.take_peak())
                steps[name] = {"first_output_s": round(first, 2), "settled_s": round(done, 2),
                               "peak_rss_gb": rss, "peak_anon_gb": anon, "peak_file_gb": mapped}
                page.screenshot(path=str(OUT / f"pages-{name}.png"), full_page=True)
                print(f"  {name:<22} first output {first:7.2f} s  all done {done:7.2f} s  "
                      f"peak RSS {rss:.2f} GB (anonymous {anon:.2f}, mapped files {mapped:.2f})", flush=True)

            def nav(label: str):
                return lambda: page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=label,
                                                                                      exact=True).click()

            n = json.loads(next((home / "datasets" / args.dataset).glob("v-*/manifest.json")).read_text())["pairs"]
            step("data_first_page", lambda: page.goto(url), f"{n:,} pairs.")
            idle_rss = mem.rss
            search = page.get_by_role("textbox", name="Search captions")
            step("data_search", lambda: (search.fill("item 123456"), search.press("Enter")), "1 of")
            step("data_search_again", lambda: (search.fill("item 654321"), search.press("Enter")), "item 654321")
            step("transforms_first", nav("Transforms"), "Drawn: a seeded sample", "Before/after metrics (CSV)")
            step("data_again", nav("Data"), f"{n:,} pairs.")
            step("transforms_reopen", nav("Transforms"), "Drawn: a seeded sample", "Before/after metrics (CSV)")
            step("retrieval_open", nav("Retrieval"), "Where a pair's true partner ranks", "best own caption ranks")
            box = page.get_by_role("textbox", name="or a dataset image")
            step("retrieval_query", lambda: (box.fill("item 424242"), box.press("Enter")),
                 "Nearest to the dataset image")
            compute = page.get_by_role("button", name="Compute recall and the worst pairs")
            step("retrieval_recall" if compute.count() else "retrieval_recall_stored",
                 compute.click if compute.count() else (lambda: None), "Worst-ranked pairs first")
            step("mixup", nav("Mixup"), "How hard are m2-mix's negatives?", "Nearest images and captions of the mix")
            step("captions", nav("Captions"), "Find the captions that are wrong")  # then: can a model load?
            step("vqa", nav("VQA"), "Ask a question about an image")
            step("finetune", nav("Fine-tune"), "Check whether a fix that works in embedding space")
            browser.close()
    finally:
        hwm = mem.status("VmHWM")
        mem.stop.set()
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(home, ignore_errors=True)
    result = {"dataset": args.dataset, "pairs": n, "steps": steps, "idle_rss_gb": round(idle_rss / 1e9, 2),
              "peak_rss_gb": round(hwm / 1e9, 2), "peak_over_idle": round(hwm / max(idle_rss, 1), 2),
              "goal_peak_rss_gb": GOAL_RSS_GB, "goal_met": hwm / 1e9 <= GOAL_RSS_GB,
              "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"}
    (OUT / "pages.json").write_text(json.dumps(result, indent=2))
    print(f"server peak RSS (VmHWM) {result['peak_rss_gb']:.2f} GB ({result['peak_over_idle']}x idle "
          f"{result['idle_rss_gb']:.2f} GB); goal <= {GOAL_RSS_GB} GB: {'met' if result['goal_met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
