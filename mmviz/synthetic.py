"""The shapes world: a seeded generator of small scenes of coloured shapes with captions,
VQA triples, foiled captions and object boxes. The builtin model is trained on it, the demo
dataset comes from it, and tests use it wherever they need data whose truth is known.

Every scene is a pure function of (seed, split, index): the same call gives the same
scenes, pixels and texts on any machine.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
SIZES = {"small": (6.0, 8.0), "large": (11.0, 14.0)}  # radius ranges in pixels
NUMBERS = ("zero", "one", "two", "three")
SPLITS = ("train", "val", "test")
QUESTION_TYPES = ("colour", "shape", "count", "exists", "relation")
_MARGIN = 8  # how far apart (px) two centres must be to call one left of / above the other


@dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    r: float

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in pixels, inclusive-exclusive, clipped to the image."""
        x0, y0 = max(0, int(np.floor(self.cx - self.r))), max(0, int(np.floor(self.cy - self.r)))
        x1 = min(IMAGE_SIZE, int(np.ceil(self.cx + self.r)) + 1)
        y1 = min(IMAGE_SIZE, int(np.ceil(self.cy + self.r)) + 1)
        return x0, y0, x1, y1

    def phrase(self, with_size: bool = False) -> str:
        return f"{self.size} {self.colour} {self.shape}" if with_size else f"{self.colour} {self.shape}"

    def hpos(self) -> str:
        return "left" if self.cx < IMAGE_SIZE * 0.38 else "right" if self.cx > IMAGE_SIZE * 0.62 else "middle"

    def vpos(self) -> str:
        return "top" if self.cy < IMAGE_SIZE * 0.38 else "bottom" if self.cy > IMAGE_SIZE * 0.62 else "centre"


@dataclass
class Question:
    question: str
    answer: str
    type: str  # one of QUESTION_TYPES
    objects: list[int] = field(default_factory=list)  # indices of the shapes it is about


@dataclass
class Foil:
    caption: str  # the true caption it was made from
    foil: str  # the same caption with one word swapped: now false for the image
    word: str  # the word that was replaced
    replacement: str
    kind: str  # "colour" or "shape"


@dataclass
class Scene:
    id: str
    split: str
    background: tuple[int, int, int]
    shapes: list[Shape]
    captions: list[str] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
    foils: list[Foil] = field(default_factory=list)

    def key(self) -> str:
        """Canonical content (positions to the pixel): equal keys mean the same scene."""
        parts = sorted(f"{s.shape}-{s.colour}-{s.size}-{round(s.cx)}-{round(s.cy)}" for s in self.shapes)
        return "|".join(parts)

    def render(self):
        return render(self)


# ----------------------------------------------------------------------------------------
# sampling and rendering


def _sample_shapes(rng: random.Random) -> list[Shape]:
    n = rng.choice((1, 1, 2, 2, 2, 3, 3))
    shapes: list[Shape] = []
    kinds: set[tuple[str, str]] = set()
    while len(shapes) < n:
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        if (shape, colour) in kinds:  # every object is nameable by colour + shape alone
            continue
        size = rng.choice(list(SIZES))
        r = rng.uniform(*SIZES[size])
        for _ in range(100):
            cx, cy = rng.uniform(r + 1, IMAGE_SIZE - r - 1), rng.uniform(r + 1, IMAGE_SIZE - r - 1)
            if all((cx - o.cx) ** 2 + (cy - o.cy) ** 2 > (r + o.r + 2) ** 2 for o in shapes):
                break
        else:
            continue
        kinds.add((shape, colour))
        shapes.append(Shape(shape, colour, size, round(cx, 2), round(cy, 2), round(r, 2)))
    return shapes


def render(scene: Scene):
    """The scene as a 64x64 RGB PIL image (no anti-aliasing, so pixels are exact)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), scene.background)
    draw = ImageDraw.Draw(im)
    for s in scene.shapes:
        fill = COLOURS[s.colour]
        x0, y0, x1, y1 = s.cx - s.r, s.cy - s.r, s.cx + s.r, s.cy + s.r
        if s.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif s.shape == "square":
            h = s.r * 0.85
            draw.rectangle((s.cx - h, s.cy - h, s.cx + h, s.cy + h), fill=fill)
        elif s.shape == "triangle":
            draw.polygon([(s.cx, y0), (x1, y1 - s.r * 0.2), (x0, y1 - s.r * 0.2)], fill=fill)
        else:  # diamond
            draw.polygon([(s.cx, y0), (x1, s.cy), (s.cx, y1), (x0, s.cy)], fill=fill)
    return im


def render_array(scenes: list[Scene]) -> np.ndarray:
    """uint8 array (N, 64, 64, 3) of the rendered scenes."""
    return np.stack([np.asarray(render(s), dtype=np.uint8) for s in scenes])


# ----------------------------------------------------------------------------------------
# language


def _relations(a: Shape, b: Shape) -> list[str]:
    """Relations of a to b that clearly hold: 'to the left of', 'above', ..."""
    out = []
    if a.cx < b.cx - _MARGIN:
        out.append("to the left of")
    if a.cx > b.cx + _MARGIN:
        out.append("to the right of")
    if a.cy < b.cy - _MARGIN:
        out.append("above")
    if a.cy > b.cy + _MARGIN:
        out.append("below")
    return out


def _articles(text: str) -> str:
    """'a orange' -> 'an orange' (and back after a foil swaps the word)."""
    return re.sub(r"\b(a|an) (\w)", lambda m: ("an " if m.group(2) in "aeiou" else "a ") + m.group(2), text)


def _captions(shapes: list[Shape], rng: random.Random, k: int = 4) -> list[str]:
    n = len(shapes)
    cands: list[str] = []
    if n == 1:
        s = shapes[0]
        cands += [
            f"a {s.phrase()}",
            f"a {s.phrase(True)}",
            f"a {s.phrase()} on the {s.hpos()}" if s.hpos() != "middle" else f"a {s.phrase()} in the middle",
            f"a {s.phrase()} near the {s.vpos()}" if s.vpos() != "centre" else f"a {s.phrase(True)} in the centre",
            f"one {s.phrase()} on a plain background",
            f"a single {s.size} {s.shape} coloured {s.colour}",
        ]
    else:
        listing = ", ".join(f"a {s.phrase()}" for s in shapes[:-1]) + f" and a {shapes[-1].phrase()}"
        cands += [
            f"{NUMBERS[n]} shapes: {listing}",
            listing,
            f"{listing} on a plain background",
        ]
        for i, a in enumerate(shapes):
            for j, b in enumerate(shapes):
                if i != j:
                    for rel in _relations(a, b):
                        cands.append(f"a {a.phrase()} {rel} a {b.phrase()}")
        big = [s for s in shapes if s.size == "large"]
        if len(big) == 1:
            cands.append(f"a {big[0].phrase(True)} and {NUMBERS[n - 1]} smaller shape{'s' if n > 2 else ''}")
    rng.shuffle(cands)
    # The first caption always names every object; the rest are paraphrases.
    first = cands.pop(next(i for i, c in enumerate(cands) if all(s.phrase() in c for s in shapes)))
    return [_articles(c) for c in [first] + cands[: k - 1]]


def _questions(shapes: list[Shape], rng: random.Random) -> list[Question]:
    qs: list[Question] = []
    n = len(shapes)
    a_idx = rng.randrange(n)
    a = shapes[a_idx]
    if sum(s.shape == a.shape for s in shapes) == 1:
        qs.append(Question(f"what colour is the {a.shape}?", a.colour, "colour", [a_idx]))
    if sum(s.colour == a.colour for s in shapes) == 1:
        qs.append(Question(f"what shape is the {a.colour} object?", a.shape, "shape", [a_idx]))
    qs.append(Question("how many shapes are there?", NUMBERS[n], "count", list(range(n))))
    colour = rng.choice(list(COLOURS))
    idx = [i for i, s in enumerate(shapes) if s.colour == colour]
    qs.append(Question(f"how many {colour} shapes are there?", NUMBERS[len(idx)], "count", idx))
    if rng.random() < 0.5:
        qs.append(Question(f"is there a {a.phrase()}?", "yes", "exists", [a_idx]))
    else:
        present = {(s.colour, s.shape) for s in shapes}
        c, sh = rng.choice([(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present])
        qs.append(Question(f"is there a {c} {sh}?", "no", "exists", []))
    pairs = _relation_pairs(shapes)
    if pairs:
        i, j, rel = rng.choice(pairs)
        qs.append(_relation_question(shapes, i, j, rel, rng.random() < 0.5))
    for q in qs:
        q.question = _articles(q.question)
    return qs


_OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
             "below": "above"}


def _relation_pairs(shapes: list[Shape]) -> list[tuple[int, int, str]]:
    """(i, j, relation) for every ordered pair of shapes and relation of i to j that holds."""
    return [(i, j, rel) for i, x in enumerate(shapes) for j, y in enumerate(shapes) if i != j
            for rel in _relations(x, y)]


def _relation_question(shapes: list[Shape], i: int, j: int, rel: str, yes: bool) -> Question:
    """"is the <i> <rel> the <j>?" -> yes, or the same with the opposite relation -> no."""
    asked = rel if yes else _OPPOSITE[rel]
    return Question(_articles(f"is the {shapes[i].phrase()} {asked} the {shapes[j].phrase()}?"),
                    "yes" if yes else "no", "relation", [i, j])


def add_relation_questions(scenes: list[Scene], per_scene: int, seed: int = 0) -> int:
    """Append up to `per_scene` more relation questions to each scene, about (subject, object,
    relation) triples that hold, on pairs the scene does not ask about yet, each asked as is
    (yes) or with the opposite relation (no) at random; returns how many were added. A pair with
    two relations (left of and above) may be asked about both.

    Why: a scene asks one relation question, and a BAN head needs tens of thousands of them
    before its glimpses bind to subject and object; more questions on the same images are the
    cheapest way there. Seeded per scene (by seed and scene id), so the result does not depend
    on which other scenes are in the list."""
    added = 0
    for s in scenes:
        rng = random.Random(hashlib.sha256(f"mmviz-shapes-relations/{seed}/{s.id}".encode()).digest())
        asked = {tuple(q.objects) for q in s.questions if q.type == "relation"}
        triples = [t for t in _relation_pairs(s.shapes) if (t[0], t[1]) not in asked]
        rng.shuffle(triples)
        for i, j, rel in triples[:per_scene]:
            s.questions.append(_relation_question(s.shapes, i, j, rel, rng.random() < 0.5))
            added += 1
    return added


def _foils(shapes: list[Shape], captions: list[str], rng: random.Random) -> list[Foil]:
    """Swap one colour or shape word of a caption so that it no longer describes the scene."""
    present = {(s.colour, s.shape) for s in shapes}
    foils = []
    for cap in captions:
        mentioned = [s for s in shapes if s.phrase() in cap]
        if not mentioned:
            continue
        s = rng.choice(mentioned)
        if rng.random() < 0.5:
            options = [c for c in COLOURS if (c, s.shape) not in present and c != s.colour]
            new = f"{rng.choice(options)} {s.shape}"
            word, repl, kind = s.colour, new.split()[0], "colour"
        else:
            options = [x for x in SHAPES if (s.colour, x) not in present and x != s.shape]
            new = f"{s.colour} {rng.choice(options)}"
            word, repl, kind = s.shape, new.split()[1], "shape"
        foils.append(Foil(cap, _articles(cap.replace(s.phrase(), new, 1)), word, repl, kind))
    return foils


# ----------------------------------------------------------------------------------------
# worlds


def _scene_rng(seed: int, split: str, index: int) -> random.Random:
    digest = hashlib.sha256(f"mmviz-shapes/{seed}/{split}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def make_scene(seed: int, split: str, index: int) -> Scene:
    rng = _scene_rng(seed, split, index)
    shade = rng.randint(215, 245)
    background = (shade, shade, min(255, shade + rng.randint(0, 10)))
    shapes = _sample_shapes(rng)
    scene = Scene(f"{split}-{index:06d}", split, background, shapes)
    scene.captions = _captions(shapes, rng)
    scene.questions = _questions(shapes, rng)
    scene.foils = _foils(shapes, scene.captions, rng)
    return scene


def make_world(n_train: int = 0, n_val: int = 0, n_test: int = 0, seed: int = 0) -> dict[str, list[Scene]]:
    """Scenes per split, disjoint by scene: a scene whose content (shapes, colours, sizes and
    pixel positions) already appeared in an earlier split is replaced by the next index."""
    seen: set[str] = set()
    world: dict[str, list[Scene]] = {}
    for split, n in zip(SPLITS, (n_train, n_val, n_test)):
        scenes, index = [], 0
        while len(scenes) < n:
            s = make_scene(seed, split, index)
            index += 1
            if s.key() in seen:
                continue
            seen.add(s.key())
            scenes.append(s)
        world[split] = scenes
    return world


def write_imagefolder(scenes: list[Scene], folder: str | Path) -> Path:
    """Write scenes as a Hugging Face ImageFolder (PNG files + metadata.jsonl) that
    `mmviz.data.load` reads, plus `vqa.jsonl` and `foils.jsonl` beside it."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    meta, vqa, foils = [], [], []
    for s in scenes:
        name = f"images/{s.id}.png"
        render(s).save(folder / name, optimize=False)
        foil = s.foils[0] if s.foils else None
        meta.append({"file_name": name, "text": s.captions, "id": s.id, "split": s.split,
                     "objects": len(s.shapes), "foil": foil.foil if foil else None,
                     "foil_word": foil.word if foil else None})
        vqa += [{"image": name, "question": q.question, "answer": q.answer, "question_type": q.type}
                for q in s.questions]
        foils += [{"image": name, **asdict(f)} for f in s.foils]
    for fname, rows in (("metadata.jsonl", meta), ("vqa.jsonl", vqa), ("foils.jsonl", foils)):
        (folder / fname).write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return folder
