"""VQA data: question-answer triples, VQA v2, answer vocabularies, the VQA accuracy and a
cache of the frozen encoder's patch and word tokens.

Loaders return `(examples, skipped)`: a bad row is skipped as `(line, reason)`, never fatal;
a file that is wrong as a whole raises `mmviz.data.DataFormatError` naming the file.
"""
from __future__ import annotations

import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..data import DataFormatError, ImportLimits, ImportReport, _pick, _read_records, check_image, read_text
from ..models import file_sha256
from ..store import Workspace, atomic_write_bytes, atomic_write_json, text_key
from ..vector_cache import EmbeddingCache

IMAGE_COLUMNS = ("image", "image_path", "file_name", "image_id")
QUESTION_COLUMNS = ("question",)
ANSWER_COLUMNS = ("answer", "answers", "multiple_choice_answer")
TYPE_COLUMNS = ("question_type", "type")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# progress(done, total, stage): stage is "images" or "questions"; total counts uncached items.
FeatureProgress = Callable[[int, int, str], None]


@dataclass
class VQAExample:
    image: str  # image file path (absolute once loaded), or an id when there is no file
    question: str
    answers: list[str]  # the human answers: one for simple triples, ten for VQA v2
    question_type: str = ""
    answer: str = ""  # the majority (or given) answer
    line: int = 0  # where it came from, for messages: file line, or position in a VQA v2 file


def normalize_answer(text) -> str:
    """Light normalisation: lower case, surrounding space stripped, one final period removed."""
    s = str(text).strip().lower()
    if s.endswith("."):
        s = s[:-1].rstrip()
    return s


def _majority(answers: list[str]) -> str:
    """Most frequent answer; ties go to the one given first."""
    return Counter(answers).most_common(1)[0][0] if answers else ""


def _line_of(where: str) -> int:
    m = re.search(r"(\d+)$", where)
    return int(m.group(1)) if m else 0


def _image_index(folder: Path) -> dict[int, str]:
    """Numeric image id -> file name for COCO_<split>_<12 digits>.jpg and <id>.jpg files."""
    out: dict[int, str] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return out
    for name in sorted(names):
        m = re.match(r"^(?:COCO_[A-Za-z0-9]+_)?(\d+)(\.[A-Za-z]+)$", name)
        if m and m.group(2).lower() in _IMAGE_SUFFIXES:
            out.setdefault(int(m.group(1)), name)
    return out


def _tried(image_id, split: str) -> str:
    n = int(image_id)
    return f"COCO_{split or '<split>'}_{n:012d}.jpg, {n}.jpg"


# ----------------------------------------------------------------------------------------
# simple triples


def load_triples(path: str | os.PathLike) -> tuple[list[VQAExample], list[tuple[int, str]]]:
    """A CSV/TSV/JSONL (or Parquet) table of image, question, answer[, question_type].

    Image column aliases: image, image_path, file_name, image_id; `type` may stand for
    question_type. An answer cell may hold a list (several human answers). Relative image
    paths are resolved against the table's folder; a numeric id is also looked up there as
    COCO_<split>_<12 digits>.jpg or <id>.jpg. Answers are normalised (`normalize_answer`).
    """
    path = Path(path)
    report = ImportReport(str(path), "vqa triples")
    records = _read_records(path, report)
    skipped: list[tuple[int, str]] = [(_line_of(s.where), str(s)) for s in report.skipped]
    columns: list[str] = []
    for _, rec in records[:1000]:
        columns.extend(k for k in rec if k not in columns)
    image_col, q_col = _pick(columns, IMAGE_COLUMNS), _pick(columns, QUESTION_COLUMNS)
    a_col, t_col = _pick(columns, ANSWER_COLUMNS), _pick(columns, TYPE_COLUMNS)
    missing = [what for what, col in (("image", image_col), ("question", q_col), ("answer", a_col)) if col is None]
    if missing:
        raise DataFormatError(path, f"missing column(s) {', '.join(missing)} (columns found: {', '.join(map(str, columns)) or 'none'})",
                              "columns image (or image_path, file_name, image_id), question, answer and optionally "
                              "question_type; rename yours to these names")
    root = path.parent
    ids: dict[int, str] | None = None
    examples: list[VQAExample] = []
    for where, rec in records:
        line = _line_of(where)
        ref = rec.get(image_col)
        ref = "" if ref is None else str(ref).strip().replace("\\", "/")
        question = "" if rec.get(q_col) is None else str(rec.get(q_col)).strip()
        raw = rec.get(a_col)
        answers = [normalize_answer(a) for a in (raw if isinstance(raw, (list, tuple)) else [raw]) if a is not None]
        answers = [a for a in answers if a]
        if not ref:
            skipped.append((line, f"{where}: empty {image_col!r} cell"))
            continue
        if not question:
            skipped.append((line, f"{where}: empty question"))
            continue
        if not answers:
            skipped.append((line, f"{where}: empty answer"))
            continue
        image = Path(ref) if Path(ref).is_absolute() else root / ref
        if not image.is_file() and ref.isdigit():
            ids = _image_index(root) if ids is None else ids
            if int(ref) in ids:
                image = root / ids[int(ref)]
        if not image.is_file():
            tried = f" (tried {_tried(ref, '')} in {root})" if ref.isdigit() else ""
            skipped.append((line, f"{where}: missing file {image}{tried}"))
            continue
        qtype = "" if not t_col or rec.get(t_col) is None else str(rec.get(t_col)).strip()
        examples.append(VQAExample(str(image.resolve()), question, answers, qtype, _majority(answers), line))
    return examples, skipped


# ----------------------------------------------------------------------------------------
# VQA v2


def _read_json(path: Path, key: str, expected: str) -> tuple[dict, list]:
    try:
        doc = json.loads(read_text(Path(path)))
    except FileNotFoundError:
        raise DataFormatError(path, "no such file", expected) from None
    except (ValueError, RecursionError) as e:
        raise DataFormatError(path, f"not valid JSON ({e})", expected) from e
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        found = ", ".join(map(str, doc)) if isinstance(doc, dict) else type(doc).__name__
        raise DataFormatError(path, f"no {key!r} list (found: {found or 'nothing'})", expected)
    return doc, doc[key]


def load_vqa_v2(questions_json: str | os.PathLike, annotations_json: str | os.PathLike,
                images_dir: str | os.PathLike) -> tuple[list[VQAExample], list[tuple[int, str]]]:
    """The official VQA v2 pair of files plus the COCO images folder.

    Each question is matched to its annotation by question_id; its image is found in
    `images_dir` as COCO_<split>_<12-digit id>.jpg or <id>.jpg. `answers` are the ten human
    answers, `answer` the annotation's multiple_choice_answer (else the majority), all
    normalised with `normalize_answer`. `line` is the question's 1-based position in the
    questions file; skipped rows are (that position, reason naming the question_id).
    """
    images_dir = Path(images_dir)
    qdoc, questions = _read_json(Path(questions_json), "questions",
                                 'VQA v2 questions: {"questions": [{"image_id", "question", "question_id"}, ...]}')
    _, annotations = _read_json(Path(annotations_json), "annotations",
                                'VQA v2 annotations: {"annotations": [{"question_id", "answers": [{"answer"}, ...], ...}]}')
    if not images_dir.is_dir():
        raise DataFormatError(images_dir, "no such folder", "the folder of COCO images the questions refer to")
    split = str(qdoc.get("data_subtype") or "")
    by_qid = {a.get("question_id"): a for a in annotations if isinstance(a, dict)}
    files = _image_index(images_dir)
    examples: list[VQAExample] = []
    skipped: list[tuple[int, str]] = []
    for pos, q in enumerate(questions, 1):
        if not isinstance(q, dict) or q.get("question_id") is None:
            skipped.append((pos, f"question {pos}: not an object with a question_id"))
            continue
        qid = q["question_id"]
        text = str(q.get("question") or "").strip()
        ann = by_qid.get(qid)
        if not text:
            skipped.append((pos, f"question_id {qid}: empty question"))
            continue
        if ann is None:
            skipped.append((pos, f"question_id {qid}: no annotation in {Path(annotations_json).name}"))
            continue
        answers = [normalize_answer(a.get("answer", "")) for a in ann.get("answers") or [] if isinstance(a, dict)]
        answers = [a for a in answers if a]
        if not answers:
            skipped.append((pos, f"question_id {qid}: no answers"))
            continue
        try:
            image_id = int(q.get("image_id"))
        except (TypeError, ValueError):
            skipped.append((pos, f"question_id {qid}: bad image_id {q.get('image_id')!r}"))
            continue
        if image_id not in files:
            skipped.append((pos, f"question_id {qid}: missing file for image_id {image_id} "
                                 f"(tried {_tried(image_id, split)} in {images_dir})"))
            continue
        mc = normalize_answer(ann.get("multiple_choice_answer") or "")
        examples.append(VQAExample(str((images_dir / files[image_id]).resolve()), text, answers,
                                   str(ann.get("question_type") or ""), mc or _majority(answers), pos))
    return examples, skipped


# ----------------------------------------------------------------------------------------
# answers and accuracy


class AnswerVocab:
    """The answers a classifier can give: `answers[i]` is class i, `index[answer]` its class."""

    def __init__(self, answers: list[str], counts: list[int] | None = None):
        self.answers = list(answers)
        self.counts = list(counts) if counts is not None else [0] * len(self.answers)
        self.index = {a: i for i, a in enumerate(self.answers)}

    @classmethod
    def build(cls, examples: Iterable[VQAExample], min_count: int = 1, max_size: int | None = 3000) -> "AnswerVocab":
        """From training examples: each example's `answer` counted once; answers given at least
        `min_count` times, most frequent first (ties alphabetical), at most `max_size`."""
        counts = Counter(ex.answer for ex in examples if ex.answer)
        kept = sorted((a for a, n in counts.items() if n >= min_count), key=lambda a: (-counts[a], a))
        kept = kept[:max_size] if max_size is not None else kept
        return cls(kept, [counts[a] for a in kept])

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: str) -> bool:
        return answer in self.index

    def __getitem__(self, i: int) -> str:
        return self.answers[i]

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(Path(path), {"answers": self.answers, "counts": self.counts})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AnswerVocab":
        try:
            doc = json.loads(Path(path).read_text("utf-8"))
            return cls(doc["answers"], doc.get("counts"))
        except (ValueError, KeyError, TypeError) as e:
            raise DataFormatError(path, f"not an answer vocabulary ({e})", 'JSON {"answers": [...], "counts": [...]}') from e


def _agreeing(n_answers: int) -> float:
    """Humans needed for full credit: 3 (VQA's rule) when there are at least 3 answers; with
    fewer (a plain triple has one), all of them, so a single given answer counts as 1, not 1/3."""
    return float(min(3, max(n_answers, 1)))


def soft_targets(answers: list[str], vocab: AnswerVocab) -> np.ndarray:
    """Soft VQA targets (len(vocab),) float32: min(#humans giving a / 3, 1) for each answer a
    in the vocabulary (3 replaced by the number of answers when there are fewer; see
    `_agreeing`). This is the standard simplified form of the VQA accuracy (the official one
    averages the same quantity over the ten leave-one-out subsets of the humans)."""
    t = np.zeros(len(vocab), dtype=np.float32)
    need = _agreeing(len(answers))
    for a, n in Counter(answers).items():
        i = vocab.index.get(a)
        if i is not None:
            t[i] = min(n / need, 1.0)
    return t


def vqa_accuracy(predicted: list[str], answers: list[list[str]]) -> float:
    """Mean over questions of min(#humans who gave the predicted answer / 3, 1), both sides
    normalised with `normalize_answer` (the simplified form, as in `soft_targets`, with the
    same rule for fewer than 3 answers: a plain triple scores 1 for the right answer)."""
    if len(predicted) != len(answers):
        raise ValueError(f"{len(predicted)} predictions for {len(answers)} questions")
    if not predicted:
        return 0.0
    scores = []
    for p, human in zip(predicted, answers):
        p = normalize_answer(p)
        scores.append(min(sum(normalize_answer(h) == p for h in human) / _agreeing(len(human)), 1.0))
    return float(np.mean(scores))


# ----------------------------------------------------------------------------------------
# the shapes world


def shapes_examples(scenes, image_dir: str | os.PathLike | None = None) -> list[VQAExample]:
    """One example per question of each synthetic scene, in scene order. With `image_dir`,
    `image` is `<image_dir>/<scene id>.png` (the file `synthetic.write_imagefolder` writes
    under images/), rendered there if missing; without it, `image` is the scene id."""
    from ..synthetic import render

    folder = Path(image_dir) if image_dir is not None else None
    out: list[VQAExample] = []
    for s in scenes:
        image = s.id
        if folder is not None:
            p = folder / f"{s.id}.png"
            if not p.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                buf = io.BytesIO()
                render(s).save(buf, "PNG", optimize=False)
                atomic_write_bytes(p, buf.getvalue())
            image = str(p.resolve())
        for q in s.questions:
            out.append(VQAExample(image, q.question, [q.answer], q.type, q.answer, len(out) + 1))
    return out


def question_boxes(scene, question) -> list[tuple[int, int, int, int]]:
    """Pixel boxes (x0, y0, x1, y1) of the shapes a question (a `Question` or its text) is
    about; empty for questions about nothing present ("is there a red square?" -> no)."""
    if isinstance(question, str):
        found = [q for q in scene.questions if q.question == question]
        if not found:
            raise KeyError(f"scene {scene.id} has no question {question!r}")
        question = found[0]
    return [scene.shapes[i].bbox for i in question.objects]


def patch_boxes(n_regions: int, image_size: int = 64) -> np.ndarray:
    """(R, 4) pixel boxes (x0, y0, x1, y1) of a ViT's patch tokens on a square grid. open_clip's
    ViT makes them with a conv of stride patch_size then flatten(2): token r is grid row
    r // side, column r % side (row-major)."""
    side = int(round(np.sqrt(n_regions)))
    if side * side != n_regions:
        raise ValueError(f"{n_regions} regions are not a square grid of patches")
    p = image_size / side
    r = np.arange(n_regions)
    row, col = r // side, r % side
    return np.stack([col * p, row * p, (col + 1) * p, (row + 1) * p], axis=1)


def box_patches(box, patches: np.ndarray) -> np.ndarray:
    """(R,) bool: the patches that overlap the pixel box (x0, y0, x1, y1), end-exclusive."""
    x0, y0, x1, y1 = box
    return (patches[:, 0] < x1) & (patches[:, 2] > x0) & (patches[:, 1] < y1) & (patches[:, 3] > y0)


def shapes_region_targets(scenes, n_regions: int, glimpses: int = 2, types=("relation",),
                          image_size: int = 64) -> np.ndarray:
    """(N, glimpses, R) attention targets for `shapes_examples(scenes)` (same order): for a
    question of one of `types`, row g is uniform over the patches overlapping the box of the
    g-th object it names (a relation names its subject, then its object); every other row is
    all zero, meaning "not supervised". For `train(..., region_targets=...)`."""
    patches = patch_boxes(n_regions, image_size)
    rows = []
    for s in scenes:
        for q in s.questions:
            t = np.zeros((glimpses, n_regions), np.float32)
            if q.type in types:
                for g, box in enumerate(question_boxes(s, q)[:glimpses]):
                    on = box_patches(box, patches)
                    t[g, on] = 1.0 / on.sum()
            rows.append(t)
    return np.stack(rows) if rows else np.zeros((0, glimpses, n_regions), np.float32)


# ----------------------------------------------------------------------------------------
# features of the frozen encoder


class FeatureCache(EmbeddingCache):
    """Patch tokens per image (keyed by the sha256 of its bytes) and word tokens per question
    (sha256 of its text) under one model fingerprint, in float16 shards written atomically:
    `<home>/vqa-features/<fingerprint>/{image,text}/shard-*.npz`, each holding `keys`,
    `tokens` (n, T, W), zero where masked out, and `mask` (n, T). Question tokens are stored
    up to their end-of-text token, so a text shard is as long as its longest question.

    Built on EmbeddingCache for the shard index (`missing`, `__len__`); `put`/`get` take and
    give tokens with masks instead of vectors.

    `layer` is `image_tokens`'s: None (the last layer) keeps the folder above; an int k caches
    under `<fingerprint>-layer<k>/` instead, so tokens of different layers never mix.
    `word_inputs` is `text_tokens`'s `inputs` (last-layer tokens followed by the normalised input
    embeddings, twice as wide); such a cache adds `-inputs` to the folder name.
    """

    def __init__(self, workspace_home: str | os.PathLike | Workspace, fingerprint: str, layer: int | None = None,
                 word_inputs: bool = False):
        home = workspace_home.home if isinstance(workspace_home, Workspace) else Path(workspace_home)
        super().__init__(Workspace(home), fingerprint)
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
            raise ValueError(f"layer must be None or an int >= 0, not {layer!r}")
        self.layer, self.word_inputs = layer, bool(word_inputs)
        folder = fingerprint + ("" if layer is None else f"-layer{layer}") + ("-inputs" if self.word_inputs else "")
        self.path = home / "vqa-features" / folder
        self.computed = {"images": 0, "questions": 0}  # what the last `features` call computed

    def put(self, modality: str, keys: list[str], tokens: np.ndarray, mask: np.ndarray) -> None:  # type: ignore[override]
        if len(keys) == 0:
            return
        assert len(keys) == len(tokens) == len(mask), (len(keys), tokens.shape, mask.shape)
        mask = np.asarray(mask, dtype=bool)
        tokens = np.where(mask[..., None], tokens, 0).astype(np.float16)  # masked-out positions are zero
        buf = io.BytesIO()
        np.savez(buf, keys=np.array(keys, dtype="S64"), tokens=tokens, mask=mask)
        shard = self.path / modality / f"shard-{os.urandom(16).hex()}.npz"
        atomic_write_bytes(shard, buf.getvalue())
        index = self._index.setdefault(modality, {})
        for row, k in enumerate(keys):
            index[k.encode()] = (shard, row)

    def get(self, modality: str, keys: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[override]
        """(tokens (n, T, W) float32 zero-padded to the longest, mask (n, T), found (n,))."""
        index = self._load_index(modality)
        where = [index.get(k.encode()) for k in keys]
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, w in enumerate(where):
            if w is not None:
                by_shard.setdefault(w[0], []).append((i, w[1]))
        parts = []
        for shard, pairs in by_shard.items():
            with np.load(shard, allow_pickle=False) as z:
                rows_out, rows_in = zip(*pairs)
                parts.append((list(rows_out), z["tokens"][list(rows_in)], z["mask"][list(rows_in)]))
        t_len = max((p[1].shape[1] for p in parts), default=0)
        width = parts[0][1].shape[2] if parts else 0
        tokens = np.zeros((len(keys), t_len, width), dtype=np.float32)
        mask = np.zeros((len(keys), t_len), dtype=bool)
        for rows, tok, m in parts:
            tokens[rows, : tok.shape[1]] = tok
            mask[rows, : m.shape[1]] = m
        return tokens, mask, np.array([w is not None for w in where], dtype=bool)

    def features(self, loaded, examples: list[VQAExample], progress: FeatureProgress | None = None,
                 batch_size: int = 64, limits: ImportLimits | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(v (N, P, W) float32, v_mask (N, P), q (N, L, W) float32, q_mask (N, L)) for the
        examples, in order, computing only the images and questions not cached yet. L is the
        longest question here (shorter ones are zero-padded, mask False). Images are bounded
        by `limits` (as imports are) and must be files; a failing image raises DataFormatError
        naming it, after the others are cached."""
        from ..embed import text_tokens

        if loaded.fingerprint != self.fingerprint:
            raise ValueError(f"model {loaded.name} (fingerprint {loaded.fingerprint}) does not match "
                             f"this cache's fingerprint {self.fingerprint}")
        limits = limits or ImportLimits.from_env()
        self.computed = {"images": 0, "questions": 0}
        img_keys: list[str] = []
        for ex in examples:
            try:
                img_keys.append(file_sha256(ex.image))
            except (OSError, ValueError) as e:
                raise DataFormatError(ex.image, f"image of line {ex.line} cannot be read "
                                      f"({getattr(e, 'strerror', None) or e})", "an image file that exists") from e
        todo = self.missing("image", img_keys)
        first = dict(zip(img_keys, [ex.image for ex in examples]))  # same bytes: any of the files will do
        failures = self._compute_images(loaded, [first[k] for k in todo], todo, batch_size, limits, progress)

        q_keys = [text_key(ex.question) for ex in examples]
        qtodo = self.missing("text", q_keys)
        qfirst = dict(zip(q_keys, [ex.question for ex in examples]))
        for start in range(0, len(qtodo), 256):
            keys = qtodo[start:start + 256]
            tok, mask = text_tokens(loaded, [qfirst[k] for k in keys], inputs=self.word_inputs)
            n = int(mask.sum(axis=1).max())  # the mask is a prefix: start token through end-of-text
            self.put("text", keys, tok[:, :n], mask[:, :n])
            self.computed["questions"] += len(keys)
            if progress:
                progress(start + len(keys), len(qtodo), "questions")
        if failures:
            raise DataFormatError(failures[0][0], f"{len(failures)} image(s) could not be used: "
                                  + "; ".join(f"{p}: {why}" for p, why in failures[:5]),
                                  "readable images within the import limits")
        v, v_mask, _ = self.get("image", img_keys)
        q, q_mask, _ = self.get("text", q_keys)
        return v, v_mask, q, q_mask

    def _compute_images(self, loaded, paths: list[str], keys: list[str], batch_size: int, limits: ImportLimits,
                        progress: FeatureProgress | None) -> list[tuple[str, str]]:
        """Patch tokens of the images into the cache, batch by batch; returns (path, why) failures."""
        import torch
        from PIL import Image, ImageOps

        from ..embed import image_tokens

        failures: list[tuple[str, str]] = []
        for start in range(0, len(keys), batch_size):
            batch_keys, tensors = [], []
            for path, k in zip(paths[start:start + batch_size], keys[start:start + batch_size]):
                meta, reason, detail = check_image(Path(path), limits)  # bounds before decoding
                if meta is None:
                    failures.append((path, f"{reason} ({detail})"))
                    continue
                with Image.open(path) as im:
                    tensors.append(loaded.preprocess(ImageOps.exif_transpose(im).convert("RGB")))
                batch_keys.append(k)
            if tensors:
                tok, mask = image_tokens(loaded, torch.stack(tensors), layer=self.layer)
                self.put("image", batch_keys, tok, mask)
                self.computed["images"] += len(batch_keys)
            if progress:
                progress(min(start + batch_size, len(keys)), len(keys), "images")
        return failures
