"""Building a paired set row by row, for the loaders of tables, folders and COCO."""
from __future__ import annotations

import re
from pathlib import Path

from .base import ImportLimits, ImportReport, PairedSet, Progress, usable_captions
from .images import check_image


class _Builder:
    """Collects rows keyed by id, merging extra captions for an id that reappears with the
    same image, skipping an id that reappears with a different one."""

    def __init__(self, report: ImportReport, root: Path | None, limits: ImportLimits | None = None):
        self.report = report
        self.root = root
        self.max_caption_chars = (limits or ImportLimits()).max_caption_chars
        self.order: list[str] = []
        self.rows: dict[str, dict] = {}

    def add(self, where: str, id_: str, image, captions: list[str], extras: dict | None = None,
            merge_same_image: bool = True) -> None:
        given = [c for c in captions if c]
        captions = usable_captions(given, where, self.report, self.max_caption_chars)
        if given and not captions:
            return  # every caption was too long: skipped and listed already
        if id_ in self.rows:
            row = self.rows[id_]
            if merge_same_image and row["image"] == image:
                if not captions:
                    self.report.skip(where, "empty caption")
                row["captions"].extend(c for c in captions if c not in row["captions"])
                return
            self.report.skip(where, "duplicate id", f"id {id_!r} already used by an earlier row")
            return
        self.order.append(id_)
        self.rows[id_] = {"where": where, "image": image, "captions": captions, "extras": extras or {}}

    def build(self, limits: ImportLimits | None, progress: Progress | None,
              check_images: bool = True) -> PairedSet:
        ids, images, captions, metas = [], [], [], []
        extra_keys: list[str] = []
        for id_ in self.order:
            for k in self.rows[id_]["extras"]:
                if k not in extra_keys:
                    extra_keys.append(k)
        extras: dict[str, list] = {k: [] for k in extra_keys}
        total = len(self.order)
        for n, id_ in enumerate(self.order):
            row = self.rows[id_]
            if progress and (n % 64 == 0):
                progress(n, total)
            if not row["captions"]:
                self.report.skip(row["where"], "empty caption")
                continue
            image, meta = row["image"], None
            if check_images and image is not None:
                if isinstance(image, str) and re.match(r"^[a-z][a-z0-9+.-]*://", image, re.I):
                    self.report.skip(row["where"], "missing file",
                                     f"{image} is a URL; mmviz does not download, point at local files")
                    continue
                source = image if isinstance(image, bytes) else (
                    Path(image) if Path(image).is_absolute() or self.root is None else self.root / image)
                meta, reason, detail = check_image(source, limits or ImportLimits())
                if meta is None:
                    self.report.skip(row["where"], reason, detail)
                    continue
            ids.append(id_)
            images.append(image)
            captions.append(row["captions"])
            metas.append(meta)
            for k in extra_keys:
                extras[k].append(row["extras"].get(k))
        if progress:
            progress(total, total)
        self.report.kept = len(ids)
        return PairedSet(ids, images, captions, extras, metas, root=self.root)
