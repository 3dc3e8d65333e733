"""mmviz app: launch the Streamlit app over the workspace."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..data import ImportLimits
from ..store import Workspace
from .common import err

APP_MAIN = Path(__file__).resolve().parents[2] / "app" / "main.py"


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
           "--server.address", args.host, "--server.port", str(args.port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.maxUploadSize", str(max_mb)]
    print(f"mmviz app on http://{args.host}:{args.port} (workspace {ws.home}); Ctrl-C stops it", file=sys.stderr)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130


def register(sub) -> None:
    """Add app to the subparsers `sub`."""
    s = sub.add_parser("app", help="launch the browser app (binds to 127.0.0.1 unless --host is given)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=8501)
    s.add_argument("--max-upload-mb", type=int, help="largest upload the app accepts (default 2048 MB)")
    s.set_defaults(func=cmd_app)
