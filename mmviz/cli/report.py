"""mmviz report: one self-contained, offline HTML file of a dataset under a model, to share."""
from __future__ import annotations

import sys
import time

from ..store import Workspace
from .common import EXIT_OK, Bar, err


class _Lines:
    """Progress on stderr: a line per stage (always, unless quiet), and a bar for the counted
    steps when stderr is a terminal (cli.common.Bar)."""

    def __init__(self, quiet: bool):
        self.quiet, self.stage, self.t0 = quiet, None, time.perf_counter()
        self.bar = Bar("report", quiet, unit="step")

    def __call__(self, done: int, total: int, stage: str) -> None:
        if self.quiet:
            return
        if stage != self.stage:
            self.bar.close()
            self.stage = stage
            print(f"mmviz report: {time.perf_counter() - self.t0:6.1f} s  {stage}", file=sys.stderr, flush=True)
        if total > 1:
            self.bar(done, total, stage)

    def close(self) -> None:
        self.bar.close()


def cmd_report(ws: Workspace, args) -> int:
    from ..models import ModelSpecError, ModelUnavailable
    from ..report import parse_sections, write_report

    try:
        sections = parse_sections(args.sections)
        ws.open(args.name)  # an unknown dataset is said before anything is computed
    except KeyError as e:
        return err(e.args[0])
    except ValueError as e:
        return err(str(e))
    lines = _Lines(args.quiet)
    try:
        info = write_report(ws, args.name, args.model, args.out, sections, progress=lines)
    except KeyError as e:
        return err(e.args[0])
    except (ModelSpecError, ModelUnavailable, ValueError, OSError) as e:
        return err(str(e))
    finally:
        lines.close()
    skipped = "".join(f"\n  {k}: {why}" for k, why in info["skipped"].items())
    print(f"wrote {info['path']}: {info['bytes'] / 1e6:.1f} MB, {info['figures']} figures, sections "
          f"{', '.join(info['sections'])}, in {info['seconds']:.1f} s"
          + (f"\nsections that do not apply here:{skipped}" if skipped else ""))
    return EXIT_OK


def register(sub) -> None:
    """Add report to the subparsers `sub`."""
    from ..report import SECTIONS

    s = sub.add_parser("report", help="write a self-contained offline HTML report of a dataset under a model",
                       description="One HTML file to share: the dataset and model (with its fingerprint), the gap "
                                   "view, the geometry metrics, collapse/corrupt/shift before and after, retrieval "
                                   "recall and the worst pairs, the caption leaderboard, a VQA example, the "
                                   "captioners and fine-tuning runs. plotly.js and the thumbnails are inside the "
                                   "file, which loads nothing from the network. Embeds first what the cache lacks.")
    s.add_argument("name", help="dataset name")
    s.add_argument("--model", default="builtin:shapes",
                   help="model spec (default builtin:shapes; a set of imported vectors uses its own)")
    s.add_argument("--out", metavar="FILE.html", help="where to write it (default NAME-report.html here)")
    s.add_argument("--sections", metavar="A,B,...",
                   help=f"only these sections, comma-separated (default all: {','.join(SECTIONS)})")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    s.set_defaults(func=cmd_report)
