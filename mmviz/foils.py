"""Foils: a caption with one object or colour word swapped, so that it no longer fits its
image (the FOIL idea used by the MID paper's probe). `foil_caption` swaps one word of a
caption, `make_foils` one per caption of a list; real photos use COCO's 80 categories and
common colour words, the builtin model the shapes world's own words (`swap_vocabulary`)."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .models import ASSETS


def _read_vocabulary(path: Path) -> tuple[str, ...]:
    lines = (line.strip() for line in path.read_text("utf-8").splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


COCO_CATEGORIES = _read_vocabulary(ASSETS / "coco_categories.txt")
COLOUR_WORDS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
                "gray", "grey")
_SAME_COLOUR = {"grey": "gray"}  # spellings of one colour: never swapped for each other


# ----------------------------------------------------------------------------------------
# swapping words




_IRREGULAR_PLURALS = {"person": "people", "mouse": "mice", "knife": "knives", "tv": "tvs"}
_SAME_PLURAL = {"sheep", "broccoli", "skis", "scissors"}


def plural(word: str) -> str:
    """English plural of a vocabulary word ('dog' -> 'dogs', 'wine glass' -> 'wine glasses')."""
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word in _SAME_PLURAL:
        return word
    if re.search(r"(s|sh|ch|x|z)$", word):
        return word + "es"
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    return word + "s"


@dataclass(frozen=True)
class _Form:
    kind: str  # "object" or "colour"
    word: str  # the vocabulary word (singular)
    plural: bool


class _Vocabulary:
    """Whole-word, case-insensitive finder of object and colour words (with object plurals)."""

    def __init__(self, objects: tuple[str, ...], colours: tuple[str, ...]):
        self.objects = tuple(w.lower() for w in objects)
        self.colours = tuple(w.lower() for w in colours)
        self.forms: dict[str, list[_Form]] = {}
        for w in self.objects:
            self.forms.setdefault(w, []).append(_Form("object", w, False))
            if plural(w) != w:
                self.forms.setdefault(plural(w), []).append(_Form("object", w, True))
        for w in self.colours:
            self.forms.setdefault(w, []).append(_Form("colour", w, False))
        alternatives = sorted(self.forms, key=len, reverse=True)  # longest first: "hot dog" before "dog"
        body = "|".join(r"\s+".join(map(re.escape, f.split())) for f in alternatives)
        self.pattern = re.compile(rf"(?<![\w-])(?:{body})(?![\w-])", re.IGNORECASE)

    def _forms(self, match: re.Match) -> list[_Form]:
        return self.forms[" ".join(match.group(0).lower().split())]

    def spans(self, caption: str) -> list[tuple[int, int, _Form]]:
        """(start, end, form) of every vocabulary word in the caption, in order. A word of
        both kinds ("orange") is a colour right before an object word ("orange cat"), else
        an object (the fruit)."""
        matches = list(self.pattern.finditer(caption))
        found = []
        for m, after in zip(matches, matches[1:] + [None]):
            forms = self._forms(m)
            adjective = (after is not None and not caption[m.end():after.start()].strip()
                         and any(f.kind == "object" for f in self._forms(after)))
            kind = "colour" if adjective else "object"
            found.append((m.start(), m.end(), next((f for f in forms if f.kind == kind), forms[0])))
        return found

    def alternatives(self, form: _Form) -> list[str]:
        vocab = self.objects if form.kind == "object" else self.colours
        same = _SAME_COLOUR.get(form.word, form.word)
        return [w for w in vocab if w != form.word and _SAME_COLOUR.get(w, w) != same]


_VOCABULARIES: dict[tuple, _Vocabulary] = {}


def _vocabulary(objects, colours) -> _Vocabulary:
    key = (tuple(objects), tuple(colours))
    if key not in _VOCABULARIES:
        _VOCABULARIES[key] = _Vocabulary(*key)
    return _VOCABULARIES[key]


_DISPLAY = {"tv": "TV", "tvs": "TVs"}  # vocabulary words written otherwise in running text


def _same_case(like: str, word: str) -> str:
    word = _DISPLAY.get(word, word)
    if like.isupper() and len(like) > 2:  # "DOGS"
        return word.upper()
    if like.isupper() and len(like) == 2:  # an acronym ("TV") says nothing about case
        return word
    if like[:1].isupper():  # "Dogs", or the article "A"
        return word[:1].upper() + word[1:]
    return word


def foil_caption(caption: str, rng: random.Random | int, *, objects=COCO_CATEGORIES,
                 colours=COLOUR_WORDS) -> dict | None:
    """The caption with exactly one object or colour word swapped for another of its kind:
    {caption, foil, word, replacement, kind ("object" or "colour")}, or None when it names
    none. Matching is whole-word and case-insensitive, multi-word objects ("traffic light")
    included; the replacement keeps the word's case and number ("Dogs" -> "Cats"), and an
    "a"/"an" right before it is fixed to suit ("a dog" -> "an elephant"). `rng` (a
    random.Random or a seed) picks the word and its replacement."""
    rng = random.Random(rng) if isinstance(rng, int) else rng
    vocab = _vocabulary(objects, colours)
    spans = [s for s in vocab.spans(caption) if vocab.alternatives(s[2])]
    if not spans:
        return None
    start, end, form = rng.choice(spans)
    new = rng.choice(vocab.alternatives(form))
    word = caption[start:end]
    new = _same_case(word, plural(new) if form.plural else new)
    head = caption[:start]
    article = re.search(r"(?<![\w-])(an?)(\s+)$", head, re.IGNORECASE)
    if article:
        fitting = "an" if new[:1].lower() in "aeiou" else "a"
        head = head[:article.start()] + _same_case(article.group(1), fitting) + article.group(2)
    return {"caption": caption, "foil": head + new + caption[end:], "word": word, "replacement": new,
            "kind": form.kind}


def make_foils(captions: list[str], seed: int = 0, *, objects=COCO_CATEGORIES, colours=COLOUR_WORDS) -> pd.DataFrame:
    """One foil per caption that names an object or colour (see `foil_caption`): a DataFrame
    with columns caption, foil, word, replacement and kind, indexed by the caption's position
    in `captions` (captions with nothing to swap are left out). A caption's foil depends only
    on the caption and `seed`, not on the others in the list."""
    rows, index = [], []
    for i, c in enumerate(captions):
        f = foil_caption(c, random.Random(f"{seed}\0{c}"), objects=objects, colours=colours)
        if f is not None:
            rows.append(f)
            index.append(i)
    return pd.DataFrame(rows, index=index, columns=["caption", "foil", "word", "replacement", "kind"])


def swap_vocabulary(model: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(objects, colours) to make foils with under `model`: the shapes world's own words for
    the builtin model, COCO's categories and common colour words for any other."""
    if model.startswith("builtin:"):
        from .synthetic import COLOURS, SHAPES

        return tuple(SHAPES), tuple(COLOURS)
    return COCO_CATEGORIES, COLOUR_WORDS


