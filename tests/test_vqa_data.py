"""VQA data: triples and VQA v2 loaders, answer vocabulary, soft targets and accuracy, the
shapes world's questions and boxes, and the token feature cache."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mmviz import synthetic
from mmviz.data import DataFormatError
from mmviz.vqa.data import (AnswerVocab, FeatureCache, VQAExample, load_triples, load_vqa_v2, question_boxes,
                            shapes_examples, soft_targets, vqa_accuracy)


# ---------------------------------------------------------------------------- triples


def test_triples_csv_aliases_relative_paths_and_bad_rows(tmp_path, make_image):
    make_image(tmp_path / "imgs" / "a.png")
    make_image(tmp_path / "imgs" / "b.png", color=(0, 0, 200))
    (tmp_path / "qa.csv").write_text(
        "image_path,question,answer,type\n"
        "imgs/a.png,what colour is it?,Red.,colour\n"
        "imgs/b.png,,blue,colour\n"
        "imgs/missing.png,what is it?,square,shape\n"
        "imgs/b.png,is it blue?, yes ,\n", "utf-8")
    ex, skipped = load_triples(tmp_path / "qa.csv")
    assert [(e.question, e.answer, e.answers, e.question_type, e.line) for e in ex] == [
        ("what colour is it?", "red", ["red"], "colour", 2), ("is it blue?", "yes", ["yes"], "", 5)]
    assert ex[0].image == str((tmp_path / "imgs" / "a.png").resolve())
    assert [line for line, _ in skipped] == [3, 4]
    assert "empty question" in skipped[0][1] and "qa.csv line 3" in skipped[0][1]
    assert "missing file" in skipped[1][1] and "missing.png" in skipped[1][1]


def test_triples_jsonl_file_name_and_answer_lists(tmp_path, make_image):
    make_image(tmp_path / "x.jpg")
    rows = [{"file_name": "x.jpg", "question": "how many?", "answer": ["two", "two", "three"], "question_type": "count"},
            "not json",
            {"file_name": "x.jpg", "question": "what?", "answer": ""}]
    (tmp_path / "qa.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows), "utf-8")
    ex, skipped = load_triples(tmp_path / "qa.jsonl")
    assert len(ex) == 1 and ex[0].answers == ["two", "two", "three"] and ex[0].answer == "two"
    assert ex[0].question_type == "count" and ex[0].line == 1
    assert [line for line, _ in skipped] == [2, 3]
    assert "empty answer" in skipped[1][1]


def test_triples_missing_column_names_file_and_columns(tmp_path):
    (tmp_path / "bad.csv").write_text("picture,question,answer\nx.png,q?,a\n", "utf-8")
    with pytest.raises(DataFormatError) as e:
        load_triples(tmp_path / "bad.csv")
    msg = str(e.value)
    assert "bad.csv" in msg and "picture, question, answer" in msg and "image" in msg and "rename" in msg


# ---------------------------------------------------------------------------- VQA v2


def _vqa_v2(tmp_path, make_image):
    imgs = tmp_path / "val2014"
    make_image(imgs / "COCO_val2014_000000000042.jpg")
    make_image(imgs / "7.jpg", color=(0, 200, 0))
    answers1 = ["yes"] * 2 + ["no"] * 4 + ["No."] * 1 + ["maybe"] * 3
    answers2 = ["2"] * 10
    questions = {"data_subtype": "val2014", "questions": [
        {"image_id": 42, "question": "Is it raining?", "question_id": 420},
        {"image_id": 7, "question": "How many dogs?", "question_id": 70},
        {"image_id": 99, "question": "What is this?", "question_id": 990}]}
    annotations = {"annotations": [
        {"question_id": qid, "image_id": iid, "question_type": qt, "answer_type": at,
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(ans)],
         "multiple_choice_answer": mc}
        for qid, iid, qt, at, ans, mc in [(420, 42, "is it", "yes/no", answers1, "no"),
                                          (70, 7, "how many", "number", answers2, "2"),
                                          (990, 99, "what is", "other", ["cat"] * 10, "cat")]]}
    (tmp_path / "q.json").write_text(json.dumps(questions), "utf-8")
    (tmp_path / "a.json").write_text(json.dumps(annotations), "utf-8")
    return load_vqa_v2(tmp_path / "q.json", tmp_path / "a.json", imgs)


def test_vqa_v2_loads_ten_answers_and_reports_missing_images(tmp_path, make_image):
    ex, skipped = _vqa_v2(tmp_path, make_image)
    assert len(ex) == 2 and all(len(e.answers) == 10 for e in ex)
    assert ex[0].image.endswith("COCO_val2014_000000000042.jpg") and ex[1].image.endswith("7.jpg")
    assert ex[0].answer == "no" and ex[0].question_type == "is it" and ex[0].answers.count("no") == 5  # "No." too
    assert [line for line, _ in skipped] == [3]
    assert "990" in skipped[0][1] and "COCO_val2014_000000000099.jpg" in skipped[0][1] and "99.jpg" in skipped[0][1]


def test_soft_targets_and_accuracy_by_hand(tmp_path, make_image):
    ex, _ = _vqa_v2(tmp_path, make_image)
    vocab = AnswerVocab(["no", "yes", "2", "maybe", "never"])
    t = soft_targets(ex[0].answers, vocab)
    assert t.dtype == np.float32 and t.shape == (5,)
    np.testing.assert_allclose(t, [1.0, 2 / 3, 0.0, 1.0, 0.0])  # 5 no, 2 yes, 3 maybe
    np.testing.assert_allclose(soft_targets(ex[1].answers, vocab), [0, 0, 1, 0, 0])
    humans = [["yes", "yes", "no"], ["red"] * 10, ["2", "3", "3", "3"]]
    assert vqa_accuracy(["yes", "Red.", "2"], humans) == pytest.approx((2 / 3 + 1 + 1 / 3) / 3)
    assert vqa_accuracy([], []) == 0.0


# ---------------------------------------------------------------------------- vocabulary


def test_answer_vocab_counts_caps_and_round_trip(tmp_path):
    answers = ["yes"] * 5 + ["no"] * 4 + ["two"] * 2 + ["red"] * 2 + ["blue"]
    ex = [VQAExample("i", "q?", [a], "", a, k) for k, a in enumerate(answers)]
    v = AnswerVocab.build(ex, min_count=2)
    assert v.answers == ["yes", "no", "red", "two"]  # most frequent first, ties alphabetical; blue < 2
    assert len(v) == 4 and v.index["no"] == 1 and "blue" not in v
    assert AnswerVocab.build(ex, min_count=1, max_size=2).answers == ["yes", "no"]
    v.save(tmp_path / "vocab.json")
    w = AnswerVocab.load(tmp_path / "vocab.json")
    assert w.answers == v.answers and w.counts == [5, 4, 2, 2] and w.index == v.index


# ---------------------------------------------------------------------------- shapes world


def test_shapes_examples_and_question_boxes():
    scenes = synthetic.make_world(20, 0, 0, seed=0)["train"]
    ex = shapes_examples(scenes)
    assert len(ex) == sum(len(s.questions) for s in scenes)
    assert {e.question_type for e in ex} == set(synthetic.QUESTION_TYPES)
    assert all(e.answers == [e.answer] and e.answer for e in ex)
    k = 0
    for s in scenes:
        for q in s.questions:
            assert ex[k].image == s.id and ex[k].question == q.question
            k += 1
            boxes = question_boxes(s, q)
            assert boxes == [s.shapes[i].bbox for i in q.objects] == question_boxes(s, q.question)
            for x0, y0, x1, y1 in boxes:
                assert 0 <= x0 < x1 <= synthetic.IMAGE_SIZE and 0 <= y0 < y1 <= synthetic.IMAGE_SIZE


# ---------------------------------------------------------------------------- feature cache


@pytest.fixture(scope="module")
def shapes_model(one_torch_thread):
    from mmviz.models import load_model

    return load_model("builtin:shapes")


def test_feature_cache_computes_once(tmp_path, shapes_model):
    import torch
    from PIL import Image

    from mmviz.embed import image_tokens, text_tokens

    scenes = synthetic.make_world(6, 0, 0, seed=1)["train"]
    synthetic.write_imagefolder(scenes, tmp_path / "set")
    ex, skipped = load_triples(tmp_path / "set" / "vqa.jsonl")
    assert not skipped and len(ex) == sum(len(s.questions) for s in scenes)
    assert [e.image for e in ex] == [e.image for e in shapes_examples(scenes, tmp_path / "set" / "images")]

    calls = []
    cache = FeatureCache(tmp_path / "home", shapes_model.fingerprint)
    v, vm, q, qm = cache.features(shapes_model, ex, progress=lambda d, t, s: calls.append((d, t, s)))
    n = len(ex)
    assert v.shape[0] == vm.shape[0] == q.shape[0] == qm.shape[0] == n
    assert v.dtype == q.dtype == np.float32 and vm.all()
    assert cache.computed == {"images": 6, "questions": len({e.question for e in ex})}
    assert calls[-1] == (cache.computed["questions"],) * 2 + ("questions",)
    assert ("images" in {c[2] for c in calls})

    # the same as the encoder on the same preprocessed images (float16 storage)
    x = torch.stack([shapes_model.preprocess(Image.open(e.image).convert("RGB")) for e in ex[:4]])
    ref, _ = image_tokens(shapes_model, x)
    assert v.shape[1:] == ref.shape[1:]
    np.testing.assert_allclose(v[:4], ref, atol=1e-3 * max(1.0, float(np.abs(ref).max())))
    tq, tm = text_tokens(shapes_model, [e.question for e in ex[:4]])
    L = q.shape[1]
    assert L == int(text_tokens(shapes_model, [e.question for e in ex])[1].sum(1).max())  # the longest question
    np.testing.assert_array_equal(qm[:4], tm[:, :L])
    np.testing.assert_allclose(q[:4][qm[:4]], tq[:, :L][tm[:, :L]], atol=1e-2)
    assert not q[~qm].any()

    # a second call (a fresh cache object on the same folder) computes nothing
    calls.clear()
    again = FeatureCache(tmp_path / "home", shapes_model.fingerprint)
    v2, vm2, q2, qm2 = again.features(shapes_model, ex, progress=lambda d, t, s: calls.append((d, t, s)))
    assert calls == [] and again.computed == {"images": 0, "questions": 0}
    for a, b in ((v, v2), (vm, vm2), (q, q2), (qm, qm2)):
        np.testing.assert_array_equal(a, b)

    # a new question computes that question only
    new = VQAExample(ex[0].image, "is there a very large orange diamond in this picture?", ["no"], "exists", "no", 99)
    v3, _, q3, qm3 = again.features(shapes_model, ex + [new])
    assert again.computed == {"images": 0, "questions": 1}
    np.testing.assert_array_equal(v3[-1], v[0])
    assert qm3[-1].sum() == text_tokens(shapes_model, [new.question])[1].sum() and q3.shape[1] >= q.shape[1]
    np.testing.assert_array_equal(q3[:n, : q.shape[1]], q)


def test_feature_cache_refuses_other_model_and_missing_image(tmp_path, shapes_model):
    with pytest.raises(ValueError, match="fingerprint"):
        FeatureCache(tmp_path, "0" * 20).features(shapes_model, [])
    bad = VQAExample(str(tmp_path / "nope.png"), "q?", ["a"], "", "a", 3)
    with pytest.raises(DataFormatError, match="nope.png"):
        FeatureCache(tmp_path, shapes_model.fingerprint).features(shapes_model, [bad])


def test_feature_cache_bounds_images_by_import_limits(tmp_path, shapes_model, make_image):
    from mmviz.data import ImportLimits

    img = make_image(tmp_path / "big.png", size=(32, 32))
    ex = [VQAExample(str(img), "what is it?", ["red"], "", "red", 1)]
    cache = FeatureCache(tmp_path / "home", shapes_model.fingerprint)
    with pytest.raises(DataFormatError, match="image too large"):
        cache.features(shapes_model, ex, limits=ImportLimits(max_pixels=100))
    assert cache.computed == {"images": 0, "questions": 1}  # what could be done is cached


def test_feature_cache_keys_the_layer(tmp_path, shapes_model):
    """Tokens of another layer go to another folder and never mix with the last layer's."""
    import torch
    from PIL import Image

    from mmviz.embed import image_tokens

    scenes = synthetic.make_world(2, 0, 0, seed=5)["train"]
    ex = shapes_examples(scenes, tmp_path / "images")[:3]
    last = FeatureCache(tmp_path / "home", shapes_model.fingerprint)
    early = FeatureCache(tmp_path / "home", shapes_model.fingerprint, layer=1)
    assert early.path != last.path and early.layer == 1 and last.layer is None
    v_last = last.features(shapes_model, ex)[0]
    v1 = early.features(shapes_model, ex)[0]
    assert early.computed["images"] == last.computed["images"] > 0  # nothing reused across layers
    x = torch.stack([shapes_model.preprocess(Image.open(e.image).convert("RGB")) for e in ex])
    ref, _ = image_tokens(shapes_model, x, layer=1)
    np.testing.assert_allclose(v1, ref, atol=1e-3 * max(1.0, float(np.abs(ref).max())))
    assert not np.allclose(v1, v_last, atol=1e-2)
    again = FeatureCache(tmp_path / "home", shapes_model.fingerprint, layer=1)
    np.testing.assert_array_equal(again.features(shapes_model, ex)[0], v1)
    assert again.computed["images"] == 0
    with pytest.raises(ValueError, match="layer"):
        FeatureCache(tmp_path / "home", shapes_model.fingerprint, layer=-1)


def test_feature_cache_keys_word_inputs(tmp_path, shapes_model):
    """Words with input embeddings go to their own folder, twice as wide, the first half the
    plain cache's tokens; the images are the same patch tokens."""
    scenes = synthetic.make_world(2, 0, 0, seed=5)["train"]
    ex = shapes_examples(scenes, tmp_path / "images")[:4]
    plain = FeatureCache(tmp_path / "home", shapes_model.fingerprint)
    wide = FeatureCache(tmp_path / "home", shapes_model.fingerprint, word_inputs=True)
    assert wide.path.name == plain.path.name + "-inputs"
    v, vm, q, qm = plain.features(shapes_model, ex)
    v2, vm2, q2, qm2 = wide.features(shapes_model, ex)
    assert q2.shape == (*q.shape[:2], 2 * q.shape[2]) and (qm2 == qm).all()
    np.testing.assert_array_equal(q2[..., :q.shape[2]], q)  # both float16 in the cache
    assert np.abs(q2[..., q.shape[2]:][~qm]).max() == 0  # padding is zero in both halves
    np.testing.assert_array_equal(v2, v)


def test_shapes_region_targets():
    from mmviz.vqa.data import box_patches, patch_boxes, shapes_region_targets

    scenes = synthetic.make_world(30, 0, 0, seed=4)["train"]
    synthetic.add_relation_questions(scenes, 2)
    qs = [(s, q) for s in scenes for q in s.questions]
    t = shapes_region_targets(scenes, 64)
    assert t.shape == (len(qs), 2, 64) and t.dtype == np.float32
    patches = patch_boxes(64)
    n_rel = 0
    for row, (s, q) in zip(t, qs):
        if q.type != "relation":
            assert not row.any()
            continue
        n_rel += 1
        for g, i in enumerate(q.objects):  # glimpse 0: the subject, glimpse 1: the object
            on = box_patches(s.shapes[i].bbox, patches)
            assert abs(row[g].sum() - 1) < 1e-6 and (row[g] > 0).tolist() == on.tolist()
            np.testing.assert_allclose(row[g][on], 1 / on.sum())
    assert n_rel > 30
    # other types on request: one object -> glimpse 0 only; a 1-glimpse head gets one row
    colour = shapes_region_targets(scenes, 64, glimpses=1, types=("colour",))
    assert colour.shape == (len(qs), 1, 64)
    assert [bool(r.any()) for r in colour] == [q.type == "colour" for _, q in qs]
