"""VQA questions attached to a dataset of the workspace.

A dataset's questions live beside the datasets, in `<home>/vqa/<dataset name>/questions.jsonl`
(replaced atomically), one JSON object a line: image (the dataset id), question, answers (the
human answers), answer (the majority or given one), question_type and split ("train" or
"val"). Heads trained on them go to `<home>/vqa/<dataset name>/runs/`.

`attach` reads a triples table (CSV/TSV/JSONL/Parquet: image, question, answer, optional
question_type and split) or a VQA v2 pair, or takes `VQAExample`s, and matches each row's image
to the dataset as `mmviz.candidates.match_images` does: by id, then stored path, then file name.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import DataFormatError, ImportReport, _pick, _read_records
from ..store import Dataset, Workspace, atomic_write_bytes, image_id_finder
from .data import (ANSWER_COLUMNS, IMAGE_COLUMNS, QUESTION_COLUMNS, TYPE_COLUMNS, VQAExample, _line_of, _majority,
                   load_vqa_v2, normalize_answer)

SPLITS = ("train", "val")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "val"}
VAL_FRACTION = 0.2


def vqa_home(ws: Workspace, name: str) -> Path:
    """`<home>/vqa/<dataset name>`: the dataset's questions and trained heads."""
    return ws.home / "vqa" / name


def questions_path(ws: Workspace, name: str) -> Path:
    return vqa_home(ws, name) / "questions.jsonl"


def run_dir(ws: Workspace, name: str, head: str, fingerprint: str, seed: int, options: str = "") -> Path:
    """Where `mmviz vqa train` saves a head: runs/<head>[<options>]-<model fingerprint[:10]>-s<seed>;
    `options` (e.g. "+words+xy8") keeps heads trained with other feature options apart."""
    return vqa_home(ws, name) / "runs" / f"{head}{options}-{fingerprint[:10]}-s{seed}"


@dataclass
class AttachReport:
    dataset: str
    path: Path  # the questions file written
    kept: int = 0
    train: int = 0
    val: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # rows the reader refused
    unmatched: list[tuple[int, str]] = field(default_factory=list)  # rows whose image is not in the dataset

    def summary(self) -> str:
        return (f"{self.dataset}: kept {self.kept} questions ({self.train} train, {self.val} val), skipped "
                f"{len(self.skipped)} rows, {len(self.unmatched)} unmatched images")


def read_triples(path: str | os.PathLike) -> tuple[list[tuple[VQAExample, str]], list[tuple[int, str]]]:
    """The rows of a triples table as (example, split) with `image` the cell as written (an id
    or a file name; nothing is looked up on disk) and split "" where the table has none; bad
    rows as (line, reason). Same columns as `data.load_triples`, plus an optional `split`."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "no such file", "a CSV/TSV/JSONL/Parquet table of image, question, answer")
    report = ImportReport(str(path), "vqa questions")
    records = _read_records(path, report)
    skipped = [(_line_of(s.where), str(s)) for s in report.skipped]
    columns: list[str] = []
    for _, rec in records[:1000]:
        columns.extend(k for k in rec if k not in columns)
    col = {"image": _pick(columns, IMAGE_COLUMNS), "question": _pick(columns, QUESTION_COLUMNS),
           "answer": _pick(columns, ANSWER_COLUMNS), "type": _pick(columns, TYPE_COLUMNS),
           "split": _pick(columns, ("split",))}
    missing = [k for k in ("image", "question", "answer") if col[k] is None]
    if missing:
        raise DataFormatError(path, f"missing column(s) {', '.join(missing)} (columns found: "
                                    f"{', '.join(map(str, columns)) or 'none'})",
                              "columns image (a dataset id or file name), question, answer, and optionally "
                              "question_type and split (train or val)")

    def cell(rec: dict, key: str):
        value = rec.get(col[key]) if col[key] else None
        return "" if value is None else value if isinstance(value, (list, tuple)) else str(value).strip()

    rows: list[tuple[VQAExample, str]] = []
    for where, rec in records:
        line = _line_of(where)
        image, question, raw = cell(rec, "image"), cell(rec, "question"), cell(rec, "answer")
        answers = [a for a in (normalize_answer(x) for x in (raw if isinstance(raw, (list, tuple)) else [raw])
                               if x is not None) if a]
        split = str(cell(rec, "split")).lower()
        why = ("empty image cell" if not image else "empty question" if not question else
               "empty answer" if not answers else
               f"split {split!r} is not train or val" if split and split not in SPLIT_NAMES else "")
        if why:
            skipped.append((line, f"{where}: {why}"))
            continue
        rows.append((VQAExample(str(image).replace("\\", "/"), str(question), answers, str(cell(rec, "type")),
                                _majority(answers), line), SPLIT_NAMES.get(split, "")))
    return rows, skipped


def _seeded_split(images: list[str], seed: int, val_fraction: float = VAL_FRACTION) -> dict[str, str]:
    """Image id -> "train"/"val": a seeded `val_fraction` of the images (at least one when there
    are two or more) is validation, so no image is in both splits."""
    unique = sorted(set(images))
    if len(unique) < 2:
        return {i: "train" for i in unique}
    n_val = max(1, int(round(val_fraction * len(unique))))
    val = {unique[i] for i in np.random.default_rng(seed).permutation(len(unique))[:n_val]}
    return {i: "val" if i in val else "train" for i in unique}


def attach(ws: Workspace, ds: Dataset, source, annotations: str | os.PathLike | None = None,
           images: str | os.PathLike | None = None, seed: int = 0) -> AttachReport:
    """Attach questions to dataset `ds`, replacing any attached before. `source` is a list of
    `VQAExample`s, a triples table (see `read_triples`), or, with `annotations` and `images`,
    a VQA v2 questions file (`data.load_vqa_v2`). Rows whose image is not in the dataset are
    reported as unmatched. Split: the table's `split` column where it has one, else a seeded
    80/20 split by image. Raises DataFormatError for an unreadable file, ValueError when no row
    matches."""
    report = AttachReport(ds.name, questions_path(ws, ds.name))
    if isinstance(source, (list, tuple)):
        rows = [(ex, "") for ex in source]
    elif annotations is not None:
        if images is None:
            raise ValueError("VQA v2 questions need the COCO images folder too (--images DIR)")
        examples, report.skipped = load_vqa_v2(source, annotations, images)
        rows = [(ex, "") for ex in examples]
    else:
        rows, report.skipped = read_triples(source)
    find = image_id_finder(ds)
    matched: list[tuple[VQAExample, str, str]] = []
    for ex, split in rows:
        id_, why = find(ex.image)
        if id_ is None:
            report.unmatched.append((ex.line, why))
        else:
            matched.append((ex, id_, split))
    if not matched:
        first = "; ".join(f"line {n}: {why}" for n, why in (report.unmatched + report.skipped)[:3])
        raise ValueError(f"no question matched an image of dataset {ds.name}" + (f" ({first})" if first else ""))
    seeded = _seeded_split([id_ for _, id_, split in matched if not split], seed)
    lines = []
    for ex, id_, split in matched:
        split = split or seeded[id_]
        lines.append(json.dumps({"image": id_, "question": ex.question, "answers": list(ex.answers),
                                 "answer": ex.answer or _majority(list(ex.answers)),
                                 "question_type": ex.question_type, "split": split}, ensure_ascii=False))
        report.kept += 1
        setattr(report, split, getattr(report, split) + 1)
    atomic_write_bytes(report.path, ("\n".join(lines) + "\n").encode("utf-8"))
    return report


def _rows(ws: Workspace, ds: Dataset) -> list[tuple[VQAExample, str]] | None:
    path = questions_path(ws, ds.name)
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    ids = set(ds.ids())  # one column, not the whole table
    out: list[tuple[VQAExample, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            ex = VQAExample(r["image"], r["question"], list(r["answers"]), r.get("question_type", ""),
                            r.get("answer", ""), n)
        except (ValueError, KeyError, TypeError) as e:
            raise DataFormatError(path, f"line {n} is not a question row ({e})",
                                  "one JSON object a line: image, question, answers, answer, question_type, split") from e
        if ex.image in ids:
            out.append((ex, r.get("split", "train")))
    return out


def questions(ws: Workspace, ds: Dataset, split: str | None = None) -> list[VQAExample] | None:
    """The questions attached to `ds` (None when there are none), `image` being the dataset id
    and `line` the row in questions.jsonl; only `split` ("train" or "val") when given. Rows
    whose image is no longer in the dataset (it was re-imported) are left out."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    rows = _rows(ws, ds)
    return None if rows is None else [ex for ex, s in rows if split is None or s == split]


def question_splits(ws: Workspace, ds: Dataset) -> tuple[list[VQAExample], list[VQAExample]] | None:
    """(train, val) questions of `ds`, None when none are attached."""
    rows = _rows(ws, ds)
    if rows is None:
        return None
    return [ex for ex, s in rows if s == "train"], [ex for ex, s in rows if s == "val"]
