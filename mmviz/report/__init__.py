"""A self-contained HTML report of one dataset under one model, to share a demo: one file that
opens offline in any browser and asks the network for nothing.

    from mmviz.report import build_report, write_report
    html = build_report(ws, "shapes-demo", "builtin:shapes", sections=["summary", "gap"])
    info = write_report(ws, "shapes-demo", "builtin:shapes", "shapes-demo-report.html")

plotly.js is inlined once and each figure is its JSON, drawn by one script; thumbnails are
data: URIs; the page's Content-Security-Policy forbids every network request (scripts, styles,
fonts, images, connections), and every text that comes from data is HTML-escaped. Sections
(SECTIONS, in this order): summary, gap, metrics, transforms, retrieval, captions, vqa,
captioners, finetune. A section that does not apply (no demo candidates, no VQA head for the
model, no runs) says why in its place. Heavy numbers come from the workspace's result caches,
shared with the app's pages and the command line.
"""
from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import sections as _s
from .page import Markup, esc, note, page

SECTIONS: dict[str, tuple[str, Callable]] = {
    "summary": ("Dataset and model", _s.summary),
    "gap": ("The modality gap", _s.gap),
    "metrics": ("Geometry metrics", _s.metrics),
    "transforms": ("Closing the gap: collapse, corrupt and shift", _s.transforms),
    "retrieval": ("Retrieval", _s.retrieval),
    "captions": ("Caption scores: MID, CLIP-S and RefCLIP-S", _s.captions),
    "vqa": ("Visual question answering", _s.vqa),
    "captioners": ("Captioners", _s.captioners),
    "finetune": ("Fine-tuning runs", _s.finetune),
}

Progress = Callable[[int, int, str], None]  # progress(done, total, stage)


def parse_sections(sections: str | Iterable[str] | None) -> list[str]:
    """Section names in report order: all for None, else the given ones ("a,b" or a list).
    Raises ValueError naming the valid ones for an unknown or empty choice."""
    if sections is None:
        return list(SECTIONS)
    names = [s.strip() for s in (sections.split(",") if isinstance(sections, str) else sections)]
    names = [s for s in names if s]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        what = f"unknown section{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}" if unknown \
            else "no section given"
        raise ValueError(f"{what}; choose from {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in names]


@dataclass
class Report:
    html: str
    figures: int
    sections: list[str]
    skipped: dict[str, str]  # section -> why it says it does not apply
    seconds: float


def _embeddings(ws, ds, model: str, progress: Progress):
    from ..embed import embed_dataset, stored_embeddings

    emb = stored_embeddings(ws, ds, model)
    if emb is None:
        emb = embed_dataset(ws, ds, model, progress=lambda done, total, stage: progress(done, total,
                                                                                        f"embedding {stage}"))
    return emb


def make_report(ws, name: str, model: str = "builtin:shapes", sections: str | Iterable[str] | None = None,
                progress: Progress | None = None, seed: int = 0) -> Report:
    """build_report with what the page holds besides its HTML (figures, skipped sections, time)."""
    from .. import __version__
    from ..projection.threads import TorchThreads

    t0 = time.perf_counter()
    chosen = parse_sections(sections)
    step: Progress = progress or (lambda done, total, stage: None)
    ds = ws.open(name)  # KeyError for an unknown name
    emb = _embeddings(ws, ds, model, step)
    ctx = _s.Context(ws, ds, emb, model, step, seed)
    made = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    bodies, skipped = [], {}
    # torch on as many threads as the cores other processes leave idle (the model-encoding
    # sections ran 3x slower with torch's two threads on two cores, one of them taken)
    with TorchThreads("auto") as threads:
        for i, key in enumerate(chosen):
            title, build = SECTIONS[key]
            step(i, len(chosen), f"[{i + 1}/{len(chosen)}] {key}")
            threads.recheck()
            try:
                body = build(ctx, made) if key == "summary" else build(ctx)
            except _s.Skip as e:
                skipped[key] = str(e)
                body = note(f"Not in this report: {e}", "skipped")
            bodies.append(Markup(f'<section id="{key}" data-section="{key}"><h2>{esc(title)}</h2>\n{body}\n'
                                 "</section>"))
    step(len(chosen), len(chosen), "writing the page")
    n = ctx.figures.count
    own = "" if emb.model == model else " (the vectors imported with it)"
    header = Markup(
        f"<h1>mmviz report: {esc(ds.name)}</h1>"
        f'<p class="meta">{esc(ds.name)} ({len(ds):,} pairs) under <code>{esc(emb.model)}</code>{own}, model '
        f"fingerprint <code>{esc(emb.fingerprint)}</code>. Made {esc(made)} by mmviz {esc(__version__)}. "
        f"{n} figure{'s' * (n != 1)}; this file needs no network.</p>")
    html = page(f"mmviz report: {ds.name}", header, [(k, SECTIONS[k][0]) for k in chosen], bodies, n)
    return Report(html, n, chosen, skipped, time.perf_counter() - t0)


def build_report(ws, name: str, model: str = "builtin:shapes", sections: str | Iterable[str] | None = None,
                 progress: Progress | None = None) -> str:
    """The report of dataset `name` under `model` as one HTML document (a str). `sections`:
    a subset of SECTIONS (names, or "a,b"), all by default. Embeds first what the cache lacks.
    progress(done, total, stage) follows the long steps. Raises KeyError (unknown dataset),
    ValueError (unknown section), mmviz.models' ModelSpecError / ModelUnavailable."""
    return make_report(ws, name, model, sections, progress).html


def write_report(ws, name: str, model: str = "builtin:shapes", out: str | Path | None = None,
                 sections: str | Iterable[str] | None = None, progress: Progress | None = None) -> dict:
    """Build the report and write it to `out` (default NAME-report.html in the current folder)
    atomically: a reader sees the old file or the new one. Returns path, bytes, figures,
    sections, skipped and seconds."""
    from ..atomic import atomic_write_bytes

    rep = make_report(ws, name, model, sections, progress)
    path = Path(out) if out else Path(f"{name}-report.html")
    data = rep.html.encode("utf-8")
    atomic_write_bytes(path, data)
    return {"path": str(path), "bytes": len(data), "figures": rep.figures, "sections": rep.sections,
            "skipped": rep.skipped, "seconds": round(rep.seconds, 2)}


__all__ = ["SECTIONS", "Report", "build_report", "make_report", "parse_sections", "write_report"]
