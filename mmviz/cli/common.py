"""What the command modules share: exit codes, the error line, progress bars, tables, JSON
rows, the options most commands take, and a dataset's embeddings under a model."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..store import Workspace

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def err(msg: str) -> int:
    print(f"mmviz: error: {msg}", file=sys.stderr)
    return EXIT_ERROR


class Bar:
    """tqdm progress bar on stderr (rate and ETA), silent when stderr is not a terminal.
    Called as progress(done, total) or progress(done, total, stage): a new stage (or a new
    total) starts a new bar named after it."""

    def __init__(self, desc: str, quiet: bool, unit: str = "img"):
        self.desc, self.quiet, self.unit, self.bar, self.stage = desc, quiet, unit, None, None

    def __call__(self, done: int, total: int, stage: str | None = None) -> None:
        if self.quiet:
            return
        if self.bar is not None and total != self.bar.total:
            self.close()
        elif self.bar is not None and stage != self.stage:  # the next stage of one job: rename the bar
            self.stage = stage
            self.bar.set_description(f"{self.desc}: {stage}")
        if self.bar is None:
            from tqdm import tqdm

            self.stage = stage
            self.bar = tqdm(total=total, desc=f"{self.desc}: {stage}" if stage else self.desc, unit=self.unit,
                            file=sys.stderr, disable=not sys.stderr.isatty() and not os.environ.get("MMVIZ_PROGRESS"))
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

class Fail(Exception):
    """A command cannot go on: the message is for the user (exit 1)."""


def dataset_embeddings(ws: Workspace, args, embed_missing: bool):
    """(dataset, Embeddings) of args.name under args.model. What the cache lacks is embedded
    first (with a progress bar) when `embed_missing`, else it is an error naming the command
    that embeds it. Raises Fail."""
    from ..embed import embed_dataset, stored_embeddings
    from ..models import ModelSpecError, ModelUnavailable

    try:
        ds = ws.open(args.name)
        emb = stored_embeddings(ws, ds, args.model)
        if emb is None and not embed_missing:
            raise Fail(f"{ds.name} is not embedded under {args.model} yet; run first: "
                        f"mmviz embed {ds.name} --model {args.model}")
        if emb is None:
            bar = Bar("embedding", args.quiet or args.json)
            emb = embed_dataset(ws, ds, args.model, progress=lambda done, total, stage: bar(done, total))
            bar.close()
    except KeyError as e:
        raise Fail(e.args[0]) from None
    except (ModelSpecError, ModelUnavailable, ValueError) as e:
        raise Fail(str(e)) from None
    return ds, emb

def records(df) -> list[dict]:
    """DataFrame rows as JSON-safe dicts (NaN -> null)."""
    return json.loads(df.to_json(orient="records", force_ascii=False))


def num(x: float, digits: int) -> str:
    """A number for a table cell; "-" where it is undefined (NaN)."""
    return "-" if x != x else f"{x:.{digits}f}"

def print_table(header: list[str], rows: list[list[str]], right: tuple[int, ...] = ()) -> None:
    """Columns aligned to their widest cell (the last one is not padded); `right`: columns
    aligned right (numbers)."""
    table = [header] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r[:-1], widths))]
        print("  ".join(cells + [r[-1]]).rstrip())

def dataset_and_model(s: argparse.ArgumentParser,
                       model_help: str = "model spec (default builtin:shapes; a set of imported vectors uses its own)",
                       ) -> None:
    s.add_argument("name", help="dataset name")
    s.add_argument("--model", default="builtin:shapes", help=model_help)


def output_options(s: argparse.ArgumentParser, json_help: str | None = "machine-readable output",
                    quiet_help: str | None = "no progress bar") -> None:
    """The --json and -q/--quiet switches most commands share (None leaves one out)."""
    if json_help:
        s.add_argument("--json", action="store_true", help=json_help)
    if quiet_help:
        s.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
