"""Candidate captions to be judged, and the pipeline that scores them.

A candidate is a caption some system wrote for an image of a dataset. `load_candidates`
reads them from a CSV/TSV/JSONL file, `match_images` finds each one's image among the
dataset's embedded rows, and `score_candidates` gives every candidate CLIP-S, RefCLIP-S
(against the dataset's own captions of its image) and PMI under a Gaussian fitted on the
dataset's image-caption pairs, then ranks the systems by MID and, where people scored the
candidates, says how well each metric agrees with them.

Foils (a caption with one object or colour word swapped, so it no longer fits the image)
come from `mmviz.foils` (`make_foils`/`foil_caption`, re-exported here) for real photos (COCO's 80 categories and common
colour words) and from the shapes world's own vocabulary for the builtin model; `probe`
scores one caption against its foils, and `demo_candidates` builds a judged set from the
shapes demo (ground truth, paraphrase and foil per image).
"""
from __future__ import annotations

import math
import random
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .data import DataFormatError, ImportReport, _pick, _read_records
from .foils import (COCO_CATEGORIES, COLOUR_WORDS, foil_caption, make_foils, plural,  # noqa: F401 (re-exported)
                    swap_vocabulary)
from .models import ASSETS  # noqa: F401 (re-exported: where the vocabularies live)

MAX_CANDIDATES = 1_000_000  # rows in one candidates file
MAX_CANDIDATE_BYTES = 256 * 2**20  # size of one candidates file
IMAGE_COLUMNS = ("image", "image_id", "id", "file_name", "image_path", "filename")
CAPTION_COLUMNS = ("caption", "text", "candidate")
SYSTEM_COLUMNS = ("system", "model", "method")
HUMAN_COLUMNS = ("human", "human_score", "score", "rating")
DEFAULT_SYSTEM = "candidate"
CLIP_PREFIX = "A photo depicts "  # CLIPScore's prompt (Hessel et al., 2021), for real CLIP models
METRICS = {"clip_s": "CLIP-S", "refclip_s": "RefCLIP-S", "pmi": "PMI"}
_REF_CHUNK = 8192  # candidates whose reference vectors are gathered at once
REFERENCE_MAX = 10_000  # reference pairs the Gaussian is fitted on at most (a seeded sample beyond)


# ----------------------------------------------------------------------------------------
# reading candidates


def _line_of(where: str) -> int:
    m = re.search(r"(?:line|row) (\d+)$", where)
    return int(m.group(1)) if m else 0


def _cell_text(value) -> str | None:
    """A cell as stripped text ("" when blank); None when it is not a scalar (a list, a dict)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, dict)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 391895.0 from a spreadsheet is image id 391895
    return str(value).strip()


def _human_value(value) -> float | str:
    """A human score as a float (NaN when blank), or the reason it is not one."""
    text = _cell_text(value)
    if not text:
        return math.nan
    try:
        x = float(text)
    except ValueError:
        return f"human score {text[:40]!r} is not a number"
    if math.isinf(x):
        return f"human score {text!r} is not a finite number"
    return x


def _records(source: str | Path | bytes, label: str, report: ImportReport) -> list[tuple[str, dict]]:
    suffix = Path(label).suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl"):
        raise DataFormatError(label, f"unknown file type {suffix or '(none)'}", "a .csv, .tsv or .jsonl file")
    if isinstance(source, (bytes, bytearray)):
        size = len(source)
    else:
        if not Path(source).is_file():
            raise DataFormatError(label, "no such file", "a .csv, .tsv or .jsonl file of candidate captions")
        size = Path(source).stat().st_size
    if size > MAX_CANDIDATE_BYTES:
        raise DataFormatError(label, f"{size:,} bytes > limit {MAX_CANDIDATE_BYTES:,}",
                              "a smaller file (split it, e.g. one file per system)")
    if not isinstance(source, (bytes, bytearray)):
        return _read_records(Path(source), report)
    with tempfile.TemporaryDirectory(prefix="mmviz-candidates-") as tmp:
        path = Path(tmp) / f"candidates{suffix}"
        path.write_bytes(bytes(source))
        try:
            return _read_records(path, report)
        except DataFormatError as e:  # name the file as the user knows it, not the temporary copy
            raise DataFormatError(label, str(e)[len(e.path) + 2:]) from None


def _missing_column(label: str, what: str, names: tuple[str, ...], columns: list[str]) -> DataFormatError:
    found = ", ".join(map(str, columns)) or "none"
    return DataFormatError(label, f"no {what} column (columns found: {found})",
                           f"a column named {names[0]!r} (or {', '.join(names[1:])}): rename the column "
                           f"holding the {what}s to {names[0]!r}")


def load_candidates(source: str | Path | bytes, name: str | None = None) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """Candidate captions from a CSV, TSV or JSONL file: a path, or the file's bytes with
    `name` (its file name, which gives the type and is used in messages).

    Columns (any case): the image (`image`, `image_id`, `id`, `file_name`, `image_path`,
    `filename`), the caption (`caption`, `text`, `candidate`), optionally the system that
    wrote it (`system`, `model`, `method`) and a human judgement (`human`, `human_score`,
    `score`, `rating`). Returns (candidates, skipped): a DataFrame with columns image (str),
    caption, system ("candidate" when not given), human (float, NaN when not given) and line
    (the 1-based line of the file), and the rows left out as (line, reason): an empty image
    or caption, a human score that is not a number, a line that is not a JSON object.
    A file that is wrong as a whole raises DataFormatError naming it and what to change.
    """
    if isinstance(source, (bytes, bytearray)) and not name:
        raise ValueError("load_candidates(bytes) needs name=, the file name (it says CSV, TSV or JSONL)")
    label = name or str(source)
    report = ImportReport(label, "candidates")
    records = _records(source, label, report)
    if not records:
        raise DataFormatError(label, "no candidate rows", "a header row and one row per candidate caption")
    if len(records) > MAX_CANDIDATES:
        raise DataFormatError(label, f"{len(records):,} rows > limit {MAX_CANDIDATES:,}",
                              "a smaller file (split it, e.g. one file per system)")
    columns: list[str] = []
    for _, rec in records[:1000]:
        columns.extend(k for k in rec if k not in columns)
    image_col, caption_col = _pick(columns, IMAGE_COLUMNS), _pick(columns, CAPTION_COLUMNS)
    if image_col is None:
        raise _missing_column(label, "image", IMAGE_COLUMNS, columns)
    if caption_col is None:
        raise _missing_column(label, "caption", CAPTION_COLUMNS, columns)
    system_col, human_col = _pick(columns, SYSTEM_COLUMNS), _pick(columns, HUMAN_COLUMNS)
    skipped = [(_line_of(s.where), f"{s.reason}: {s.detail}" if s.detail else s.reason) for s in report.skipped]
    rows = []
    for where, rec in records:
        line = _line_of(where)
        image, caption = _cell_text(rec.get(image_col)), _cell_text(rec.get(caption_col))
        system = _cell_text(rec.get(system_col)) if system_col else ""
        human = _human_value(rec.get(human_col)) if human_col else math.nan
        if image is None or caption is None or system is None:
            skipped.append((line, "a cell holds a list or an object, not text"))
        elif not image:
            skipped.append((line, f"empty {image_col!r} cell"))
        elif not caption:
            skipped.append((line, "empty caption"))
        elif isinstance(human, str):
            skipped.append((line, human))
        else:
            rows.append((image, caption, system or DEFAULT_SYSTEM, human, line))
    if not rows:
        first = "; ".join(f"line {n}: {why}" for n, why in skipped[:3])
        raise DataFormatError(label, f"no usable candidate rows ({len(skipped)} skipped; {first})",
                              "rows with an image and a non-empty caption")
    df = pd.DataFrame(rows, columns=["image", "caption", "system", "human", "line"])
    df["human"] = df["human"].astype(float)
    df.attrs["source"] = label
    df.attrs["warnings"] = list(report.warnings)  # e.g. a file that is not UTF-8
    return df, sorted(skipped)


def match_images(cands: pd.DataFrame, ds, emb) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """The candidates whose image is in `ds` and embedded in `emb`, with a column `row` (the
    row of `emb.ids`/`emb.image`), and the others as (line, reason).

    An image value is matched to a dataset id first (a whole number written as 17.0 counts
    as id 17), then to a stored image path, then to a file name (the path's last part; a
    value with folders must end the stored path)."""
    from .store import image_id_finder

    row_of_id = {id_: r for r, id_ in enumerate(emb.ids)}
    find_id = image_id_finder(ds)
    memo: dict[str, int | str] = {}

    def find(value: str) -> int | str:
        id_, why = find_id(value)
        if id_ is None:
            return why
        if id_ not in row_of_id:
            return f"image {id_} of dataset {ds.name} has no embedding (it could not be read)"
        return row_of_id[id_]

    rows = []
    for value in cands["image"]:
        if value not in memo:
            memo[value] = find(str(value))
        rows.append(memo[value])
    ok = np.array([isinstance(r, int) for r in rows], dtype=bool)
    lines = cands["line"] if "line" in cands.columns else range(1, len(cands) + 1)
    unmatched = [(int(line), r) for line, r, good in zip(lines, rows, ok) if not good]
    out = cands.loc[ok].copy()
    out["row"] = np.array([r for r, good in zip(rows, ok) if good], dtype=np.int64)
    return out, unmatched


# ----------------------------------------------------------------------------------------
# the demo's judged candidates


def _captions_of_rows(emb) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in emb.ids]
    for j, r in enumerate(emb.text_owner):
        out[int(r)].append(j)
    return out


def _captions_of(emb, rows) -> dict[int, list[int]]:
    """row -> its caption indices, for the given image rows only (one vectorised pass over
    text_owner, no list per row of a million-row set)."""
    owner = np.asarray(emb.text_owner)
    out: dict[int, list[int]] = {int(r): [] for r in rows}
    for j in np.flatnonzero(np.isin(owner, np.fromiter(out, np.int64, len(out)))):
        out[int(owner[j])].append(int(j))
    return out


def reference_sample(emb, max_fit: int | None = None, seed: int = 0) -> np.ndarray:
    """Caption indices the reference Gaussian is fitted on: all of them up to `max_fit`
    (default REFERENCE_MAX), else a seeded sample of that many. The Gaussian has
    2 d (d + 1) / 2 ~ 260k parameters at d = 512: 10,000 pairs pin it down, a million only
    take longer (and, with a caption prefix, need every caption encoded again)."""
    max_fit = REFERENCE_MAX if max_fit is None else max_fit
    m = len(emb.text)
    return np.arange(m) if m <= max_fit else np.sort(np.random.default_rng(seed).choice(m, max_fit, replace=False))


def demo_candidates(ds, emb, max_images: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Judged candidates from the shapes demo set (it has a `foil` column): per image three
    systems, "ground truth" (its first caption, human 1.0), "paraphrase" (its second, human
    1.0) and "foil" (the first caption with one colour or shape word swapped, human 0.0, the
    swapped word in `foil_word`). Columns: line, image, row, system, caption, human,
    foil_word, references.

    `references` lists, per candidate, the caption indices (into `emb.text`) it is judged
    against: its image's captions from the third on, so that no candidate is scored against
    itself or its sibling. Images need at least 3 captions; those with fewer are left out.
    `max_images`: at most that many images (a seeded sample, in row order) on a large set.
    """
    t = ds.table()
    if "foil" not in t.columns:
        raise ValueError(f"dataset {ds.name} has no 'foil' column: demo candidates need the shapes demo set "
                         "(mmviz.builtin.make_demo); for other sets make foils with make_foils(captions) and "
                         "score them as candidates")
    foil_of = dict(zip(t["id"], zip(t["foil"], t["foil_word"] if "foil_word" in t else [None] * len(t))))
    counts = np.bincount(np.asarray(emb.text_owner, dtype=np.int64), minlength=len(emb.ids))
    eligible = np.flatnonzero(counts >= 3)
    if max_images is not None and len(eligible) > max_images:
        eligible = np.sort(np.random.default_rng(seed).choice(eligible, max_images, replace=False))
    captions_of = _captions_of(emb, eligible)
    rows = []
    for r in eligible:
        id_, caps = emb.ids[r], captions_of[int(r)]
        foil, word = foil_of.get(id_, (None, None))
        entries = [("ground truth", emb.captions[caps[0]], 1.0, None),
                   ("paraphrase", emb.captions[caps[1]], 1.0, None)]
        if isinstance(foil, str) and foil.strip():
            entries.append(("foil", foil, 0.0, word))
        for system, caption, human, foil_word in entries:
            rows.append({"line": len(rows) + 1, "image": id_, "row": int(r), "system": system, "caption": caption,
                         "human": human, "foil_word": foil_word, "references": caps[2:]})
    if not rows:
        raise ValueError(f"no image of dataset {ds.name} has 3 captions: demo candidates use the first two as "
                         "candidates and the rest as references")
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------
# scoring


def default_prefix(model: str) -> str:
    """The text put before every caption: CLIPScore's "A photo depicts " for real CLIP
    models, nothing for the builtin model (trained on bare shapes-world captions)."""
    return "" if model.startswith("builtin:") else CLIP_PREFIX


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


@dataclass
class References:
    """The reference side of scoring: dataset captions that may serve as references (`pool`,
    indices into `emb.text`), their vectors with `prefix` (`vectors[k]` for `pool[k]`), and
    the Gaussian fitted on their pairs with the images (for PMI and MID), or on a sample of
    them (`reference_sample`)."""

    prefix: str
    pool: np.ndarray
    vectors: np.ndarray
    gaussian: object  # mmviz.scoring.GaussianReference, fitted
    position: dict[int, int] = field(init=False, repr=False)  # caption index -> row of `vectors`

    def __post_init__(self) -> None:
        self.position = {int(j): k for k, j in enumerate(self.pool)}

    def including(self, emb, loaded, captions) -> "References":
        """These references plus the caption indices `captions` (encoded now, with the same
        prefix), for RefCLIP-S against them; the Gaussian stays as fitted."""
        new = sorted(set(map(int, captions)) - set(self.position))
        if not new:
            return self
        vecs = _encode_pool(emb, loaded, self.prefix, np.asarray(new, dtype=np.int64))
        return References(self.prefix, np.concatenate([self.pool, new]).astype(np.int64),
                          np.concatenate([self.vectors, vecs]), self.gaussian)


def _encode_pool(emb, loaded, prefix: str, pool: np.ndarray) -> np.ndarray:
    """Vectors of the captions `pool` with `prefix` (re-encoded), or as stored for no prefix."""
    from .embed import encode_texts

    if prefix:
        return encode_texts(_model(emb, loaded), [prefix + emb.captions[j] for j in pool])
    return np.asarray(emb.text[pool], dtype=np.float32)


def _model(emb, loaded):
    from .models import load_model

    loaded = loaded if loaded is not None else load_model(emb.model)
    if loaded.embed_dim != emb.dim:
        raise ValueError(f"{loaded.name} makes {loaded.embed_dim}-d vectors but the dataset's are {emb.dim}-d")
    return loaded


def fit_references(emb, loaded=None, *, prefix: str | None = None, eps: float = 1e-3,
                   pool=None, fit=None) -> References:
    """Encode the reference captions (`pool`: caption indices into `emb.text`, default all)
    with `prefix` (default `default_prefix`; "" reuses the stored vectors) and fit the
    Gaussian of (image, caption) pairs on them, or on `fit` (indices within `pool`) only.
    On a large set pass pool=reference_sample(emb): a million captions are not re-encoded."""
    from .scoring import GaussianReference, RegularisedWarning

    prefix = default_prefix(emb.model) if prefix is None else prefix
    pool = np.arange(len(emb.text)) if pool is None else np.asarray(sorted(set(map(int, pool))), dtype=np.int64)
    if len(pool) == 0:
        raise ValueError("no reference captions to fit the reference distribution on")
    vectors = _encode_pool(emb, loaded, prefix, pool)
    on = np.arange(len(pool)) if fit is None else np.searchsorted(pool, np.asarray(sorted(set(map(int, fit)))))
    with warnings.catch_warnings():  # said once, in words, by score_candidates
        warnings.simplefilter("ignore", RegularisedWarning)
        g = GaussianReference(eps=eps).fit(emb.image[np.asarray(emb.text_owner)[pool[on]]], vectors[on])
    return References(prefix, pool, vectors, g)


def _score(emb, loaded, refs: References, rows: np.ndarray, captions: list[str],
           ref_lists: list[list[int]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(candidate vectors, {clip_s, refclip_s, pmi}) of captions for images `rows`, each
    judged against the reference captions in `ref_lists` (NaN RefCLIP-S where there are none)."""
    from .embed import encode_texts
    from .scoring import clip_s, refclip_s

    vecs = encode_texts(_model(emb, loaded), [refs.prefix + c for c in captions])
    images = emb.image[rows]
    ref = np.full(len(rows), np.nan)
    sub = np.flatnonzero([bool(r) for r in ref_lists])
    for start in range(0, len(sub), _REF_CHUNK):  # bounded memory: a chunk's references at a time
        part = sub[start:start + _REF_CHUNK]
        owner = np.repeat(np.arange(len(part)), [len(ref_lists[i]) for i in part])
        ref_vecs = refs.vectors[[refs.position[j] for i in part for j in ref_lists[i]]]
        ref[part] = refclip_s(images[part], vecs[part], ref_vecs, owner)
    scores = {"clip_s": np.asarray(clip_s(images, vecs), dtype=float), "refclip_s": ref,
              "pmi": np.asarray(refs.gaussian.pmi(images, vecs), dtype=float)}
    return vecs, scores


@dataclass
class ScoreResult:
    per_sample: pd.DataFrame  # line, image, row, system, caption, human, clip_s, refclip_s, pmi[, foil_word]
    leaderboard: pd.DataFrame  # system, n, mid, clip_s, refclip_s, pmi_mean, human; best MID first
    agreement: pd.DataFrame | None  # metric, n, kendall_tau_b, kendall_tau_c, roc_auc, pairs, pairwise_accuracy
    #   (same-image pairs humans scored differently); None without human scores
    disagreements: pd.DataFrame  # candidates by |percentile rank by PMI - by CLIP-S|, largest first
    regularised: bool  # the reference Gaussian needed its covariance regularised (few references)
    eps: float  # the regularisation it used
    prefix: str
    n_references: int  # reference pairs the Gaussian was fitted on
    warnings: list[str] = field(default_factory=list)


def _or_nan(f, *args, **kwargs) -> float:
    """f(...) as a float, NaN where it is undefined (too few rows, a constant metric)."""
    try:
        return float(f(*args, **kwargs))
    except ValueError:
        return math.nan


def _same_image_pairs(judged: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Positions (a, b) in `judged` of every two candidates for one image that humans scored
    differently: the two-caption comparisons of Pascal-50S."""
    a, b = [], []
    for pos in judged.groupby("row").indices.values():
        for i in range(len(pos)):
            for j in range(i + 1, len(pos)):
                if judged["human"].iat[pos[i]] != judged["human"].iat[pos[j]]:
                    a.append(pos[i])
                    b.append(pos[j])
    return np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)


def _agreement(ps: pd.DataFrame) -> pd.DataFrame | None:
    from .scoring import kendall_tau, pairwise_accuracy, roc_auc

    judged = ps[ps["human"].notna()]
    if len(judged) < 2 or judged["human"].nunique() < 2:
        return None
    binary = set(judged["human"].unique()) <= {0.0, 1.0}
    rows = []
    for key in METRICS:
        ok = judged[judged[key].notna()]
        m, h = ok[key].to_numpy(float), ok["human"].to_numpy(float)
        auc = math.nan
        if binary and (h >= 0.5).any() and (h < 0.5).any():
            auc = float(roc_auc(m[h >= 0.5], m[h < 0.5]))
        a, b = _same_image_pairs(ok)
        pairwise = float(pairwise_accuracy(m[a], m[b], h[a] > h[b])) if len(a) else math.nan
        rows.append({"metric": key, "n": len(ok), "kendall_tau_b": _or_nan(kendall_tau, m, h, variant="b"),
                     "kendall_tau_c": _or_nan(kendall_tau, m, h, variant="c"), "roc_auc": auc,
                     "pairs": len(a), "pairwise_accuracy": pairwise})
    return pd.DataFrame(rows)


def _disagreements(ps: pd.DataFrame) -> pd.DataFrame:
    d = ps[["line", "image", "system", "caption", "clip_s", "pmi"]].copy()
    d["clip_s_pct"] = ps["clip_s"].rank(pct=True)
    d["pmi_pct"] = ps["pmi"].rank(pct=True)
    d["gap"] = (d["pmi_pct"] - d["clip_s_pct"]).abs()
    return d.sort_values("gap", ascending=False, kind="stable").reset_index(drop=True)


def score_candidates(emb, cands: pd.DataFrame, loaded=None, *, prefix: str | None = None,
                     eps: float = 1e-3) -> ScoreResult:
    """Score candidates (with a `row` column, from `match_images` or `demo_candidates`)
    with CLIP-S, RefCLIP-S and PMI, rank the systems and compare the metrics with humans.

    `loaded` is the model that made `emb` (loaded from `emb.model` when None); candidates
    and references are encoded with `prefix` before them (see `default_prefix`; "" for none).
    A candidate's references are its image's dataset captions, or the caption indices of a
    `references` column when the candidates have one, in both cases without any caption
    equal to the candidate (case and spacing aside). The Gaussian for PMI and MID is fitted
    on all pairs that may serve as references: every dataset caption, or every caption some
    `references` list names.
    """
    if "row" not in cands.columns:
        raise ValueError("candidates need a 'row' column (the image's row in the embeddings): "
                         "use match_images(candidates, dataset, embeddings) first")
    if len(cands) == 0:
        raise ValueError("no candidates to score")
    loaded = _model(emb, loaded)
    rows = cands["row"].to_numpy(np.int64)
    captions = [str(c) for c in cands["caption"]]
    if "references" in cands.columns:
        given = [list(map(int, r)) for r in cands["references"]]
        fit = pool = np.asarray(sorted({j for r in given for j in r}), dtype=np.int64)
        if len(pool) > REFERENCE_MAX:
            fit = pool[np.sort(np.random.default_rng(0).choice(len(pool), REFERENCE_MAX, replace=False))]
    else:
        by_row = _captions_of(emb, np.unique(rows))
        given = [by_row[int(r)] for r in rows]
        fit = reference_sample(emb)  # every caption, or a sample of a large set's
        pool = np.union1d(fit, np.asarray([j for r in by_row.values() for j in r], dtype=np.int64))
    ref_lists = [[j for j in r if not _same_text(emb.captions[j], c)] for r, c in zip(given, captions)]
    refs = fit_references(emb, loaded, prefix=prefix, eps=eps, pool=pool, fit=fit)
    vecs, scores = _score(emb, loaded, refs, rows, captions, ref_lists)

    ps = pd.DataFrame({"line": cands["line"].to_numpy() if "line" in cands else np.arange(1, len(cands) + 1),
                       "image": cands["image"].astype(str).to_numpy(), "row": rows,
                       "system": cands["system"].astype(str).to_numpy() if "system" in cands else DEFAULT_SYSTEM,
                       "caption": captions,
                       "human": cands["human"].astype(float).to_numpy() if "human" in cands else math.nan,
                       **scores})
    if "foil_word" in cands.columns:
        ps["foil_word"] = cands["foil_word"].to_numpy()

    g = refs.gaussian
    board = []
    for system, idx in ps.groupby("system", sort=False).indices.items():
        try:
            mid = float(g.mid(emb.image[rows[idx]], vecs[idx]))
        except ValueError:  # too few candidates for a mean
            mid = math.nan
        part = ps.iloc[idx]
        board.append({"system": system, "n": len(idx), "mid": mid, "clip_s": part["clip_s"].mean(),
                      "refclip_s": part["refclip_s"].mean(), "pmi_mean": part["pmi"].mean(),
                      "human": part["human"].mean()})
    leaderboard = pd.DataFrame(board).sort_values("mid", ascending=False, kind="stable").reset_index(drop=True)

    notes = []
    if g.regularised_:
        why = (f"{len(refs.pool)} reference pairs are too few for {2 * emb.dim} joint dimensions"
               if len(refs.pool) <= 2 * emb.dim else
               f"the {len(refs.pool)} reference pairs span fewer than their {2 * emb.dim} joint dimensions "
               f"(each image is repeated once per caption, or the features are low-rank)")
        notes.append(f"MID's reference distribution was regularised (covariances shrunk, eps = {g.eps_used_:.3g}): "
                     f"{why}. PMI and MID still rank candidates, but their values are not the exact Gaussian "
                     "ones; more (and more varied) reference pairs make them exact.")
    no_refs = int(np.isnan(scores["refclip_s"]).sum())
    if no_refs:
        notes.append(f"{no_refs} candidates have no reference caption (their image's captions all equal "
                        "them): RefCLIP-S is blank for them")
    return ScoreResult(ps, leaderboard, _agreement(ps), _disagreements(ps), bool(g.regularised_),
                       float(g.eps_used_), refs.prefix, len(refs.pool), notes)


def probe(emb, loaded, row: int, caption: str, n_foils: int = 5, seed: int = 0, *,
          references: References | None = None, prefix: str | None = None, eps: float = 1e-3) -> pd.DataFrame:
    """The FOIL probe of the MID paper: `caption` for image `row` and up to `n_foils` foils
    of it (one object or colour word swapped, see `foil_caption`; the shapes world's colours
    and shapes for the builtin model), each scored with CLIP-S, RefCLIP-S and PMI. A good
    metric scores the caption above every foil. Columns: caption, kind ("caption", "object"
    or "colour"), word, replacement, clip_s, refclip_s, pmi; the caption first.

    References are the image's dataset captions other than `caption`; `references` (from
    `fit_references`) saves encoding and fitting them again on every call."""
    loaded = _model(emb, loaded)
    refs = references or fit_references(emb, loaded, prefix=prefix, eps=eps, pool=reference_sample(emb))
    objects, colours = swap_vocabulary(emb.model)
    foils, seen = [], {caption}
    for k in range(20 * n_foils):
        if len(foils) >= n_foils:
            break
        f = foil_caption(caption, random.Random(f"{seed}/{k}\0{caption}"), objects=objects, colours=colours)
        if f is None:
            break
        if f["foil"] not in seen:
            seen.add(f["foil"])
            foils.append(f)
    texts = [caption] + [f["foil"] for f in foils]
    own = [int(j) for j in np.flatnonzero(np.asarray(emb.text_owner) == row)]
    refs = refs.including(emb, loaded, own)  # a sampled pool may lack the image's captions
    mine = [j for j in own if not _same_text(emb.captions[j], caption)]
    _, scores = _score(emb, loaded, refs, np.full(len(texts), row, dtype=np.int64), texts, [mine] * len(texts))
    out = pd.DataFrame({"caption": texts, "kind": ["caption"] + [f["kind"] for f in foils],
                        "word": [None] + [f["word"] for f in foils],
                        "replacement": [None] + [f["replacement"] for f in foils]})
    for key, values in scores.items():
        out[key] = values
    return out
