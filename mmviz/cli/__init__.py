"""The `mmviz` command line: import, list, show, delete datasets; embed, measure, search,
transform, score captions; attach VQA questions and train answer heads; train text-only captioners and
caption; fine-tune; write an offline HTML report; launch the app.

One module per command group; each defines its commands and adds them to the parser in its
`register(sub)`, so a new command touches one module. The order of COMMAND_GROUPS is the order
of `mmviz --help`."""
from __future__ import annotations

import argparse
import sys

from ..export import TerminalSafeStream
from ..store import Workspace
from . import analysis, app, captioning, datasets, embedding, models, report, training, vqa
from .common import EXIT_OK

COMMAND_GROUPS = (datasets, embedding, analysis, models, vqa, captioning, training, report, app)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmviz", description="See and fix the geometry of image-text embedding spaces.")
    p.add_argument("--home", help="workspace folder (default: $MMVIZ_HOME or ~/.mmviz)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in COMMAND_GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # Data reaches the terminal only with its control characters escaped (see mmviz.export).
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = TerminalSafeStream(out, "\n\t"), TerminalSafeStream(err, "\n\t\r")
    try:
        args = build_parser().parse_args(argv)
        ws = Workspace(args.home)
        return args.func(ws, args)
    except KeyboardInterrupt:
        print("mmviz: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `mmviz list | head`
        return EXIT_OK
    finally:
        sys.stdout, sys.stderr = out, err
