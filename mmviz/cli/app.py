"""mmviz app: launch the Streamlit app over the workspace."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..data import ImportLimits
from ..store import Workspace
from .common import err

APP_MAIN = Path(__file__).resolve().parents[2] / "app" / "main.py"
# Streamlit settings of every mmviz server, also in .streamlit/config.toml for `streamlit run`
# from the repo root (a test keeps the two the same).
SERVER_OPTIONS = {
    "server.headless": "true",
    "browser.gatherUsageStats": "false",
    "client.toolbarMode": "minimal",
    # Streamlit's source watcher realpath()s every module in sys.modules (3,700 with torch
    # loaded) on the server's event loop after each run, hover reruns included: 0.6 s in
    # which no message reaches any browser (measured). mmviz is not edited while it serves.
    "server.fileWatcherType": "none",
    # Streamlit's full gc.collect() after each run walks ~450k long-lived objects (torch,
    # pandas, plotly): 0.2 to 0.3 s a run, holding the GIL. Python's own generational
    # collection still frees cycles; the large arrays go by reference counting. The server's
    # peak memory at 1M pairs stayed within run-to-run noise (1.59 GB without, 1.67 GB with).
    "runner.postScriptGC": "false",
}


def cmd_app(ws: Workspace, args) -> int:
    if not APP_MAIN.is_file():
        return err(f"app not found at {APP_MAIN}; run mmviz from a source checkout (pip install -e .)")
    env = dict(os.environ, MMVIZ_HOME=str(ws.home))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        # Others can reach the app: do not let them import arbitrary paths of this machine.
        env["MMVIZ_LOCAL_PATHS"] = "0"
    try:
        max_mb = args.max_upload_mb or ImportLimits.from_env().max_upload_mb
    except ValueError as e:
        return err(str(e))
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_MAIN),
           "--server.address", args.host, "--server.port", str(args.port), "--server.maxUploadSize", str(max_mb)]
    cmd += [arg for name, value in SERVER_OPTIONS.items() for arg in (f"--{name}", value)]
    print(f"mmviz app on http://{args.host}:{args.port} (workspace {ws.home}); Ctrl-C stops it", file=sys.stderr)
    return run_until_stopped(cmd, env)


def run_until_stopped(cmd: list[str], env: dict, grace: float = 15.0) -> int:
    """Run the server as a child and pass SIGTERM, SIGINT and SIGHUP on to it, then wait for
    it: stopping `mmviz app` stops the server too (a plain subprocess.call left it listening,
    a child of PID 1, after a SIGTERM). A server that ignores the signal is killed after
    `grace` seconds. Returns the server's exit status (128 + signal when a signal ended it)."""
    proc = subprocess.Popen(cmd, env=env)
    kill_at = []  # when the server, asked to stop, is killed if still running

    def forward(signum, frame):
        if proc.poll() is None:
            proc.send_signal(signum)
            kill_at.append(time.monotonic() + grace)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if kill_at and time.monotonic() > kill_at[0]:
                    proc.kill()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if proc.poll() is None:  # an exception here (not a signal): do not leave it behind
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return 128 - code if code < 0 else code


def wait_healthy(url: str, proc=None, timeout: float = 90) -> bool:
    """Whether the Streamlit server at `url` answers its health check within `timeout` s
    (False at once if `proc`, its process, has exited)."""
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return True
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.3)
    return False


def register(sub) -> None:
    """Add app to the subparsers `sub`."""
    s = sub.add_parser("app", help="launch the browser app (binds to 127.0.0.1 unless --host is given)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=8501)
    s.add_argument("--max-upload-mb", type=int, help="largest upload the app accepts (default 2048 MB)")
    s.set_defaults(func=cmd_app)
