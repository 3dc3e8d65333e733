"""The shapes world: deterministic, disjoint, and every text true (or, for foils, false) of its scene."""
from __future__ import annotations

import re

import numpy as np
import pytest

from mmviz import synthetic
from mmviz.synthetic import COLOURS, IMAGE_SIZE, NUMBERS, QUESTION_TYPES, SHAPES, make_scene, make_world

RELATIONS = ("to the left of", "to the right of", "above", "below")
OBJ = rf"an? ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"


@pytest.fixture(scope="module")
def world():
    return make_world(120, 40, 200, seed=0)


def scenes_of(world):
    return [s for split in ("train", "val", "test") for s in world[split]]


def holds(a, rel, b) -> bool:
    m = synthetic._MARGIN
    return {"to the left of": a.cx < b.cx - m, "to the right of": a.cx > b.cx + m,
            "above": a.cy < b.cy - m, "below": a.cy > b.cy + m}[rel]


def find(scene, colour, shape):
    hits = [s for s in scene.shapes if (s.colour, s.shape) == (colour, shape)]
    assert len(hits) <= 1
    return hits[0] if hits else None


def test_deterministic(world):
    again = make_world(120, 40, 200, seed=0)
    assert again == world  # scenes, captions, questions and foils (dataclass equality)
    some = world["test"][:30]
    assert np.array_equal(synthetic.render_array(some), synthetic.render_array(again["test"][:30]))
    other = make_world(120, 40, 200, seed=1)
    assert [s.key() for s in other["test"]] != [s.key() for s in world["test"]]
    assert sum(a.key() == b.key() for a, b in zip(other["test"], world["test"])) < 5
    assert not np.array_equal(synthetic.render_array(other["test"][:30]), synthetic.render_array(some))
    # a scene is a function of (seed, split, index): the i-th scene is make_scene(seed, split, i)
    for s in scenes_of(world)[::7]:
        split, index = s.id.rsplit("-", 1)
        assert split == s.split and make_scene(0, split, int(index)) == s
    assert world["train"][0] == make_scene(0, "train", 0)


def test_render_shape_and_background(world):
    s = world["test"][0]
    a = synthetic.render_array([s])
    assert a.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and a.dtype == np.uint8
    im = s.render()
    assert im.size == (IMAGE_SIZE, IMAGE_SIZE) and im.mode == "RGB"
    assert tuple(a[0, 0, 0]) == s.background  # corners are never covered: shapes keep a 1 px margin


def test_splits_disjoint_ids_unique(world):
    keys = {split: [s.key() for s in world[split]] for split in world}
    assert [len(world[k]) for k in ("train", "val", "test")] == [120, 40, 200]
    for split, ks in keys.items():
        assert len(set(ks)) == len(ks)
        assert all(s.split == split and s.id.startswith(f"{split}-") for s in world[split])
    assert not set(keys["train"]) & set(keys["val"])
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["val"]) & set(keys["test"])
    ids = [s.id for s in scenes_of(world)]
    assert len(set(ids)) == len(ids)


def test_scene_replaced_when_seen_in_an_earlier_split(monkeypatch):
    """A test scene identical to a training scene is skipped for the next index."""
    real = synthetic.make_scene

    def clash(seed, split, index):
        if split == "test" and index == 1:
            return real(seed, "train", 0)  # a copy of the first training scene
        return real(seed, split, index)

    monkeypatch.setattr(synthetic, "make_scene", clash)
    w = synthetic.make_world(2, 0, 3, seed=0)
    assert [s.id for s in w["test"]] == ["test-000000", "test-000002", "test-000003"]


def test_shapes_are_valid_and_drawn(world):
    counts = {1: 0, 2: 0, 3: 0}
    for s in scenes_of(world):
        n = len(s.shapes)
        counts[n] += 1
        kinds = [(o.colour, o.shape) for o in s.shapes]
        assert len(set(kinds)) == n
        pixels = np.asarray(s.render())
        for o in s.shapes:
            assert o.shape in SHAPES and o.colour in COLOURS
            lo, hi = synthetic.SIZES[o.size]
            assert lo <= o.r <= hi
            x0, y0, x1, y1 = o.bbox
            assert 0 <= x0 < x1 <= IMAGE_SIZE and 0 <= y0 < y1 <= IMAGE_SIZE
            assert x0 <= o.cx < x1 and y0 <= o.cy < y1
            if o.shape in ("circle", "square", "diamond"):
                assert tuple(pixels[round(o.cy), round(o.cx)]) == COLOURS[o.colour], (s.id, o)
            # pixels of the colour lie inside the box (no two shapes share a colour+shape, but may a colour)
            mask = np.all(pixels == COLOURS[o.colour], axis=-1)
            assert mask[y0:y1, x0:x1].any()
        for i, a in enumerate(s.shapes):  # no overlap
            for b in s.shapes[i + 1:]:
                assert (a.cx - b.cx) ** 2 + (a.cy - b.cy) ** 2 > (a.r + b.r) ** 2
    assert all(c > 30 for c in counts.values()), counts


def test_triangle_centre_has_its_colour(world):
    tris = [(s, o) for s in scenes_of(world) for o in s.shapes if o.shape == "triangle"]
    assert len(tris) > 20
    for s, o in tris:
        # apex at cy - r, base at cy + 0.8 r: the point just below the centre is inside
        assert tuple(np.asarray(s.render())[round(o.cy + 1), round(o.cx)]) == COLOURS[o.colour]


def test_first_caption_names_every_object(world):
    for s in scenes_of(world):
        assert 1 <= len(s.captions) <= 4 and len(set(s.captions)) == len(s.captions)
        assert all(o.phrase() in s.captions[0] for o in s.shapes), (s.id, s.captions[0])


def test_relation_captions_are_true(world):
    n = 0
    for s in scenes_of(world):
        for c in s.captions:
            m = re.fullmatch(rf"{OBJ} ({'|'.join(RELATIONS)}) {OBJ}", c)
            if m:
                a, b = find(s, m[1], m[2]), find(s, m[4], m[5])
                assert a is not None and b is not None and holds(a, m[3], b), (s.id, c)
                n += 1
    assert n > 50


def test_count_and_position_captions_are_true(world):
    for s in scenes_of(world):
        for c in s.captions:
            m = re.match(r"(\w+) shapes: ", c)
            if m:
                assert m[1] == NUMBERS[len(s.shapes)]
            if len(s.shapes) == 1:
                o = s.shapes[0]
                if " on the left" in c:
                    assert o.cx < IMAGE_SIZE * 0.38
                if " on the right" in c:
                    assert o.cx > IMAGE_SIZE * 0.62
                if " near the top" in c:
                    assert o.cy < IMAGE_SIZE * 0.38
                if " near the bottom" in c:
                    assert o.cy > IMAGE_SIZE * 0.62
                if re.search(r"\b(small|large)\b", c):
                    assert re.search(rf"\b{o.size}\b", c) and not re.search(rf"\b{'small' if o.size == 'large' else 'large'}\b", c)
            elif m := re.fullmatch(rf"an? large ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) and (\w+) smaller shapes?", c):
                big = find(s, m[1], m[2])
                assert big is not None and big.size == "large" and m[3] == NUMBERS[len(s.shapes) - 1]
                assert [o.size for o in s.shapes if o is not big] == ["small"] * (len(s.shapes) - 1)


ARTICLE_WRONG = re.compile(r"\ba [aeiou]|\ban [^aeiou\W]")


def test_articles(world):
    texts = [t for s in scenes_of(world) for t in
             s.captions + [q.question for q in s.questions] + [f.foil for f in s.foils]]
    bad = [t for t in texts if ARTICLE_WRONG.search(t)]
    assert bad == []
    assert any("an orange" in t for t in texts)
    assert not any("a orange" in t for t in texts)
    assert synthetic._articles("a orange circle and an red square") == "an orange circle and a red square"


def answer(scene, q) -> str:
    """Recompute a question's answer from the shapes."""
    shapes = scene.shapes
    text = q.question
    if m := re.fullmatch(r"how many shapes are there\?", text):
        return NUMBERS[len(shapes)]
    if m := re.fullmatch(r"how many (\w+) shapes are there\?", text):
        return NUMBERS[sum(o.colour == m[1] for o in shapes)]
    if m := re.fullmatch(r"what colour is the (\w+)\?", text):
        hits = [o for o in shapes if o.shape == m[1]]
        assert len(hits) == 1
        return hits[0].colour
    if m := re.fullmatch(r"what shape is the (\w+) object\?", text):
        hits = [o for o in shapes if o.colour == m[1]]
        assert len(hits) == 1
        return hits[0].shape
    if m := re.fullmatch(rf"is there {OBJ}\?", text):
        return "yes" if find(scene, m[1], m[2]) else "no"
    if m := re.fullmatch(rf"is the (\w+) (\w+) ({'|'.join(RELATIONS)}) the (\w+) (\w+)\?", text):
        a, b = find(scene, m[1], m[2]), find(scene, m[4], m[5])
        assert a is not None and b is not None
        return "yes" if holds(a, m[3], b) else "no"
    raise AssertionError(f"unexpected question {text!r}")


def test_answers_are_right(world):
    types = {}
    answers = {}
    for s in scenes_of(world):
        for q in s.questions:
            assert q.type in QUESTION_TYPES
            assert answer(s, q) == q.answer, (s.id, q)
            assert all(0 <= i < len(s.shapes) for i in q.objects)
            types[q.type] = types.get(q.type, 0) + 1
            answers.setdefault(q.type, set()).add(q.answer)
    assert set(types) == set(QUESTION_TYPES), types
    assert answers["exists"] == {"yes", "no"} and answers["relation"] == {"yes", "no"}
    assert {"zero", "one", "two", "three"} <= answers["count"]


def test_every_question_type_in_200_scenes():
    scenes = make_world(0, 0, 200, seed=0)["test"]
    assert {q.type for s in scenes for q in s.questions} == set(QUESTION_TYPES)


def _words_without_articles(text: str) -> list[str]:
    # A colour swap may change the article too ("an orange" -> "a red"): the one word that
    # carries the meaning is the colour or shape.
    return ["a" if w == "an" else w for w in text.replace(",", " ,").split()]


def test_foils_differ_in_one_word_and_are_false(world):
    n = 0
    kinds = set()
    for s in scenes_of(world):
        assert len(s.foils) >= 1
        for f in s.foils:
            assert f.caption in s.captions
            a, b = _words_without_articles(f.caption), _words_without_articles(f.foil)
            assert len(a) == len(b)
            diff = [(x, y) for x, y in zip(a, b) if x != y]
            assert diff == [(f.word, f.replacement)], (s.id, f)
            assert f.kind in ("colour", "shape")
            kinds.add(f.kind)
            assert (f.word in COLOURS) == (f.kind == "colour") and (f.replacement in COLOURS) == (f.kind == "colour")
            # the foiled object: the pair containing the replacement at the changed position
            i = next(k for k, (x, y) in enumerate(zip(a, b)) if x != y)
            colour, shape = (b[i], b[i + 1]) if f.kind == "colour" else (b[i - 1], b[i])
            assert colour in COLOURS and shape in SHAPES
            assert find(s, colour, shape) is None, (s.id, f)
            assert find(s, *((a[i], a[i + 1]) if f.kind == "colour" else (a[i - 1], a[i]))) is not None
            assert ARTICLE_WRONG.search(f.foil) is None
            n += 1
    assert kinds == {"colour", "shape"} and n > 300


def test_write_imagefolder_round_trip(world, tmp_path):
    from mmviz.data import load

    scenes = world["test"][:12] + world["val"][:3]
    folder = synthetic.write_imagefolder(scenes, tmp_path / "set")
    assert sorted(p.name for p in folder.iterdir()) == ["foils.jsonl", "images", "metadata.jsonl", "vqa.jsonl"]
    pset, report = load(folder)
    assert report.skipped == [] and report.kept == 15
    assert len(pset) == 15
    assert pset.ids == [s.id for s in scenes]
    assert pset.captions == [s.captions for s in scenes]
    assert list(pset.extras["split"]) == ["test"] * 12 + ["val"] * 3
    assert list(pset.extras["objects"]) == [len(s.shapes) for s in scenes]
    for i, s in enumerate(scenes):
        from PIL import Image

        with Image.open(pset.image_path(i)) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(s.render()))
    vqa = (folder / "vqa.jsonl").read_text().splitlines()
    assert len(vqa) == sum(len(s.questions) for s in scenes)
    foils = (folder / "foils.jsonl").read_text().splitlines()
    assert len(foils) == sum(len(s.foils) for s in scenes)


def test_add_relation_questions_are_true_new_and_seeded():
    scenes = make_world(150, 0, 0, seed=3)["train"]
    before = {s.id: list(s.questions) for s in scenes}
    added = synthetic.add_relation_questions(scenes, 3, seed=7)
    answers = []
    for s in scenes:
        old = before[s.id]
        assert s.questions[:len(old)] == old  # appended, nothing replaced
        new = s.questions[len(old):]
        assert len(new) <= 3
        texts = [q.question for q in s.questions]
        assert len(texts) == len(set(texts))  # no question asked twice
        old_pairs = {tuple(q.objects) for q in old if q.type == "relation"}
        for q in new:
            assert q.type == "relation" and answer(s, q) == q.answer, (s.id, q)
            assert tuple(q.objects) not in old_pairs
            answers.append(q.answer)
        # as many as the scene has (pair, relation) triples that hold on unasked pairs, up to 3
        possible = [(i, j, r) for i, a in enumerate(s.shapes) for j, b in enumerate(s.shapes) for r in RELATIONS
                    if i != j and holds(a, r, b) and (i, j) not in old_pairs]
        assert len(new) == min(3, len(possible))
    assert added == len(answers) > 150
    assert 0.4 < np.mean([a == "yes" for a in answers]) < 0.6
    # seeded per scene: the same scenes in another order and company get the same questions
    again = make_world(150, 0, 0, seed=3)["train"][::-1][:40]
    synthetic.add_relation_questions(again, 3, seed=7)
    by_id = {s.id: s.questions for s in scenes}
    assert all(s.questions == by_id[s.id] for s in again)
    other = make_world(150, 0, 0, seed=3)["train"]
    synthetic.add_relation_questions(other, 3, seed=8)
    assert any(a.questions != b.questions for a, b in zip(other, scenes))
