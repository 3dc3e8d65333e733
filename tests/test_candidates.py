"""Candidate captions: reading them, finding their images, foils, and the scoring pipeline
(CLIP-S, RefCLIP-S, PMI, MID, agreement with humans) on the shapes demo."""
from __future__ import annotations

import copy
import json
import random
import re

import numpy as np
import pandas as pd
import pytest

from mmviz import candidates as cm
from mmviz.candidates import (COCO_CATEGORIES, COLOUR_WORDS, demo_candidates, fit_references, foil_caption,
                              load_candidates, make_foils, match_images, plural, probe, score_candidates)
from mmviz.data import DataFormatError

# ----------------------------------------------------------------------------------------
# reading


def test_csv_with_aliases_skips_bad_rows_with_their_lines(tmp_path):
    p = tmp_path / "cands.csv"
    p.write_text("Image_ID,Text,Model,Rating\n"
                 "1,a dog on a bench,sys-a,4\n"
                 "2,,sys-a,3\n"  # empty caption
                 "3,a cat,sys-b,good\n"  # not a number
                 '4,"a caption over\ntwo lines",,\n'  # quoted newline; no system, no rating
                 ",a bird,sys-b,1\n"  # no image
                 "391895.0,a kite,sys-b,2.5\n", "utf-8")
    df, skipped = load_candidates(p)
    assert list(df.columns) == ["image", "caption", "system", "human", "line"]
    assert df["image"].tolist() == ["1", "4", "391895.0"]  # kept as written: match_images reads it as id 391895
    assert df["caption"].tolist() == ["a dog on a bench", "a caption over\ntwo lines", "a kite"]
    assert df["system"].tolist() == ["sys-a", "candidate", "sys-b"]
    assert df["human"].iloc[0] == 4.0 and np.isnan(df["human"].iloc[1]) and df["human"].iloc[2] == 2.5
    assert df["line"].tolist() == [2, 6, 8]
    assert skipped == [(3, "empty caption"), (4, "human score 'good' is not a number"), (7, "empty 'Image_ID' cell")]


def test_jsonl_and_bytes_give_the_same_candidates(tmp_path):
    lines = [{"file_name": "images/a.png", "candidate": "a red circle", "method": "m1", "human_score": 1},
             "not json",
             {"file_name": "b.png", "candidate": "a blue square", "method": "m2", "human_score": None},
             {"file_name": "c.png", "candidate": ["a", "list"], "method": "m2"}]
    text = "\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n"
    (tmp_path / "c.jsonl").write_text(text, "utf-8")
    df, skipped = load_candidates(tmp_path / "c.jsonl")
    assert df[["image", "caption", "system", "line"]].values.tolist() == [
        ["images/a.png", "a red circle", "m1", 1], ["b.png", "a blue square", "m2", 3]]
    assert [n for n, _ in skipped] == [2, 4]
    assert skipped[0][1].startswith("bad row: not a JSON object")
    df2, skipped2 = load_candidates(text.encode(), name="upload.jsonl")
    pd.testing.assert_frame_equal(df, df2)
    assert skipped2 == skipped
    with pytest.raises(ValueError, match="needs name="):
        load_candidates(text.encode())


def test_missing_column_names_the_file_the_columns_and_the_fix(tmp_path):
    p = tmp_path / "preds.csv"
    p.write_text("image_id,sentence\n1,a dog\n", "utf-8")
    with pytest.raises(DataFormatError) as e:
        load_candidates(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: no caption column (columns found: image_id, sentence)")
    assert "rename the column holding the captions to 'caption'" in msg
    with pytest.raises(DataFormatError, match=r"^upload\.tsv: no image column \(columns found: caption\)"):
        load_candidates(b"caption\na dog\n", name="upload.tsv")
    with pytest.raises(DataFormatError, match=r"^upload\.jsonl: no line is a JSON object"):  # not the temporary copy
        load_candidates(b"image,caption\n1,a dog\n", name="upload.jsonl")


def test_whole_file_errors_and_bounds(tmp_path, monkeypatch):
    with pytest.raises(DataFormatError, match="unknown file type .xlsx"):
        load_candidates(b"x", name="c.xlsx")
    with pytest.raises(DataFormatError, match="no such file"):
        load_candidates(tmp_path / "missing.csv")
    with pytest.raises(DataFormatError, match="no candidate rows"):
        load_candidates(b"image,caption\n", name="c.csv")
    with pytest.raises(DataFormatError, match=r"no usable candidate rows \(2 skipped; line 2: empty caption"):
        load_candidates(b"image,caption\n1,\n2,  \n", name="c.csv")
    body = b"image,caption\n" + b"".join(b"%d,a dog\n" % i for i in range(20))
    monkeypatch.setattr(cm, "MAX_CANDIDATES", 10)
    with pytest.raises(DataFormatError, match="20 rows > limit 10"):
        load_candidates(body, name="c.csv")
    monkeypatch.setattr(cm, "MAX_CANDIDATE_BYTES", 100)
    with pytest.raises(DataFormatError, match=f"{len(body):,} bytes > limit 100"):
        load_candidates(body, name="c.csv")


# ----------------------------------------------------------------------------------------
# foils


def _swap_only(f: dict) -> None:
    """The foil is the caption with f['word'] replaced by f['replacement'] (and an article
    right before it fitted to the new word): nothing else changed."""
    cap, foil = f["caption"], f["foil"]
    i = cap.index(f["word"])
    head, tail = cap[:i], cap[i + len(f["word"]):]
    assert foil.endswith(f["replacement"] + tail)
    new_head = foil[: len(foil) - len(tail) - len(f["replacement"])]
    strip = lambda s: re.sub(r"(?i)\ban?(\s+)$", r"\1", s)  # noqa: E731
    assert strip(new_head) == strip(head)


def test_foil_swaps_exactly_one_word_of_its_kind():
    for seed in range(30):
        f = foil_caption("A dog sitting on a bench next to a red bicycle", random.Random(seed))
        _swap_only(f)
        a, b = f["caption"].split(), f["foil"].split()
        assert len(a) == len(b) or " " in f["replacement"]  # "stop sign" is two words
        if f["kind"] == "colour":
            assert f["word"] == "red" and f["replacement"] in COLOUR_WORDS and f["replacement"] != "red"
        else:
            assert f["word"] in ("dog", "bench", "bicycle")
            assert f["replacement"].lower() in COCO_CATEGORIES and f["replacement"] != f["word"]
            if f["word"] == "dog":  # the sentence's capital stays on the article
                assert f["foil"].startswith(("A ", "An ")) and f["replacement"].islower()


def test_foil_case_plural_article_and_multi_word_categories():
    seen = {foil_caption("Dogs playing in the park", random.Random(s))["replacement"] for s in range(20)}
    assert all(r[0].isupper() for r in seen)  # the sentence's capital is kept
    singular = {c.capitalize() for c in COCO_CATEGORIES}
    assert seen.isdisjoint(singular - {plural(c).capitalize() for c in COCO_CATEGORIES})  # plurals for a plural
    assert "Cats" in {foil_caption("Dogs", random.Random(s))["replacement"] for s in range(300)}

    f = foil_caption("TWO DOGS", 1)
    assert f["foil"].startswith("TWO ") and f["foil"].isupper()

    for s in range(20):
        f = foil_caption("a traffic light and a fire hydrant", random.Random(s))
        assert f["word"] in ("traffic light", "fire hydrant")  # never "light" or "fire" alone
        _swap_only(f)
        article = "an" if f["replacement"][0] in "aeiou" else "a"
        assert f" {f['replacement']}" in f["foil"] and f"{article} {f['replacement']}" in f["foil"]

    f = foil_caption("a hot dog", random.Random(0))
    assert f["word"] == "hot dog"
    f = foil_caption("an orange cat", 0, objects=("cat",))  # "orange" before an object is a colour
    assert f["kind"] in ("colour", "object")
    kinds = {foil_caption("an orange cat", s)["kind"] for s in range(20)}
    words = {foil_caption("an orange cat", s)["word"] for s in range(20)}
    assert kinds == {"colour", "object"} and words == {"orange", "cat"}
    assert {foil_caption("an orange and a banana", s)["kind"] for s in range(20)} == {"object"}  # the fruit


def test_colour_swap_and_nothing_to_swap():
    for s in range(20):
        f = foil_caption("a Grey sky over a quiet street", s)
        assert f["kind"] == "colour" and f["word"] == "Grey"
        assert f["replacement"].lower() not in ("grey", "gray") and f["replacement"][0].isupper()
    assert foil_caption("a man walking down a quiet street", 0) is None
    assert foil_caption("a dog-friendly cafe", 0) is None  # whole words only
    assert foil_caption("", 0) is None


def test_foils_are_seeded_and_cover_every_coco_category():
    caps = [f"a photo of a {c} on the table" for c in COCO_CATEGORIES] + ["nothing to swap here", "a blue sky"]
    a, b = make_foils(caps, seed=3), make_foils(caps, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["caption", "foil", "word", "replacement", "kind"]
    assert list(a.index) == [i for i in range(len(caps)) if i != 80]  # the caption without a word is left out
    assert not make_foils(caps, seed=4)["foil"].equals(a["foil"])
    # a caption's foil does not depend on the other captions
    assert make_foils(caps[::-1], seed=3).set_index("caption").loc[caps[5], "foil"] == a.loc[5, "foil"]
    assert len(COCO_CATEGORIES) == 80 and len(set(COCO_CATEGORIES)) == 80
    for c in COCO_CATEGORIES:
        for s in range(3):
            f = foil_caption(f"there is one {c} here", s)
            assert f is not None and f["word"] == c and f["kind"] == "object", c
            _swap_only(f)


def test_coco_file_has_a_header_and_80_categories():
    lines = (cm.ASSETS / "coco_categories.txt").read_text("utf-8").splitlines()
    assert lines[0].startswith("# ") and "COCO" in lines[0]
    assert lines[1:] == list(COCO_CATEGORIES) and len(lines) == 81
    assert {"traffic light", "hot dog", "teddy bear", "person", "toothbrush"} <= set(COCO_CATEGORIES)


# ----------------------------------------------------------------------------------------
# the demo set and the pipeline


@pytest.fixture(scope="module")
def demo(tmp_path_factory, one_torch_thread):
    """The 60-scene shapes demo, embedded under builtin:shapes, and its scored demo candidates."""
    from conftest import embedded_demo

    ds, emb = embedded_demo(tmp_path_factory.mktemp("cand-home"), n=60)
    cands = demo_candidates(ds, emb)
    return ds, emb, cands, score_candidates(emb, cands)


def test_demo_candidates_three_systems_references_from_the_third_caption(demo):
    ds, emb, cands, _ = demo
    assert len(cands) == 180 and cands["system"].value_counts().to_dict() == {
        "ground truth": 60, "paraphrase": 60, "foil": 60}
    t = ds.table().set_index("id")
    by_row = cm._captions_of_rows(emb)
    for c in cands.itertuples():
        caps = t.loc[c.image, "captions"]
        assert emb.ids[c.row] == c.image
        assert [emb.captions[j] for j in c.references] == caps[2:]
        assert c.references == by_row[c.row][2:]
        assert c.caption not in [emb.captions[j] for j in c.references]
        expected = {"ground truth": (caps[0], 1.0, None), "paraphrase": (caps[1], 1.0, None),
                    "foil": (t.loc[c.image, "foil"], 0.0, t.loc[c.image, "foil_word"])}[c.system]
        assert (c.caption, c.human) == expected[:2]
        assert c.foil_word == expected[2] if c.system == "foil" else pd.isna(c.foil_word)
    assert cands["line"].tolist() == list(range(1, 181))
    with pytest.raises(ValueError, match="need the shapes demo set.*make_foils"):
        demo_candidates(type("D", (), {"name": "coco", "table": lambda self: t.reset_index().drop(columns="foil")})(),
                        emb)


def test_foil_scores_below_ground_truth_and_paraphrase(demo):
    _, emb, cands, res = demo
    board = res.leaderboard.set_index("system")
    assert list(res.leaderboard.columns) == ["system", "n", "mid", "clip_s", "refclip_s", "pmi_mean", "human"]
    assert list(board.index) == ["ground truth", "paraphrase", "foil"]  # best MID first
    assert board["n"].tolist() == [60, 60, 60]
    gt, para, foil = (board.loc[s] for s in ("ground truth", "paraphrase", "foil"))
    # measured on this set: CLIP-S 1.977 / 1.886 / 1.278, RefCLIP-S 1.251 / 1.205 / 0.850,
    # mean PMI -18.6 / -29.3 / -238.8, MID -19.6 / -30.4 / -243.5
    for key, margin in (("clip_s", 0.4), ("refclip_s", 0.25), ("pmi_mean", 100), ("mid", 100)):
        assert gt[key] > para[key] > foil[key] + margin, key
    ps = res.per_sample
    assert list(ps.columns) == ["line", "image", "row", "system", "caption", "human", "clip_s", "refclip_s", "pmi",
                                "foil_word"]
    assert res.prefix == "" and res.n_references == 120  # 60 images x their third and fourth captions


def test_scores_are_the_scoring_core_on_the_vectors(demo):
    from mmviz.embed import encode_texts
    from mmviz.models import load_model
    from mmviz.scoring import GaussianReference, RegularisedWarning, clip_s, refclip_s

    _, emb, cands, res = demo
    ps = res.per_sample
    vecs = encode_texts(load_model("builtin:shapes"), ps["caption"].tolist())
    images = emb.image[ps["row"].to_numpy()]
    np.testing.assert_allclose(ps["clip_s"], clip_s(images, vecs), atol=1e-9)
    gt = ps["system"] == "ground truth"  # their vectors are the stored first captions
    first = np.array([cm._captions_of_rows(emb)[r][0] for r in ps.loc[gt, "row"]])
    np.testing.assert_allclose(ps.loc[gt, "clip_s"], clip_s(emb.image[ps.loc[gt, "row"]], emb.text[first]), atol=1e-4)
    refs = np.concatenate([emb.text[r] for r in cands["references"]])
    owner = np.repeat(np.arange(len(cands)), [len(r) for r in cands["references"]])
    np.testing.assert_allclose(ps["refclip_s"], refclip_s(images, vecs, refs, owner), atol=1e-9)
    pool = np.concatenate([r for r in cands.drop_duplicates("image")["references"]])
    with pytest.warns(RegularisedWarning):  # 120 pairs for 256 dimensions
        g = GaussianReference(eps=1e-3).fit(emb.image[emb.text_owner[pool]], emb.text[pool])
    np.testing.assert_allclose(ps["pmi"], g.pmi(images, vecs), rtol=1e-9)
    foil = (ps["system"] == "foil").to_numpy()
    assert res.leaderboard.set_index("system").loc["foil", "mid"] == pytest.approx(g.mid(images[foil], vecs[foil]))


def test_agreement_and_disagreements(demo):
    _, _, _, res = demo
    agree = res.agreement.set_index("metric")
    assert list(agree.index) == ["clip_s", "refclip_s", "pmi"] and (agree["n"] == 180).all()
    # measured: ROC AUC 0.933 (CLIP-S), 0.946 (RefCLIP-S), 0.932 (PMI); tau-b 0.58, 0.60, 0.58
    assert (agree["roc_auc"] > 0.85).all()
    assert (agree["kendall_tau_b"] > 0.4).all() and (agree["kendall_tau_c"] > agree["kendall_tau_b"]).all()
    # Pascal-50S style: per image, (ground truth, foil) and (paraphrase, foil): 2 pairs of 60 images.
    assert (agree["pairs"] == 120).all()
    ps = res.per_sample
    for metric in ("clip_s", "pmi"):
        by = ps.pivot(index="row", columns="system", values=metric)
        wins = np.concatenate([by["ground truth"] > by["foil"], by["paraphrase"] > by["foil"]]).mean()
        assert agree.loc[metric, "pairwise_accuracy"] == pytest.approx(wins)  # no exact ties here
    assert (agree["pairwise_accuracy"] > 0.85).all()
    d = res.disagreements
    assert len(d) == 180 and d["gap"].is_monotonic_decreasing
    top = d.iloc[0]
    assert top["gap"] == pytest.approx(abs(top["pmi_pct"] - top["clip_s_pct"])) and top["gap"] > 0.5
    assert {"line", "system", "caption", "clip_s", "pmi"} <= set(d.columns)


def test_few_references_are_regularised_and_said(demo):
    _, _, _, res = demo
    assert res.regularised and res.eps == 1e-3  # 120 reference pairs for 2 x 128 dimensions
    [note] = res.warnings
    assert "regularised" in note and "120 reference pairs are too few for 256 joint dimensions" in note


def test_a_candidates_file_end_to_end(demo, tmp_path):
    ds, emb, _, _ = demo
    t = ds.table()
    own = emb.captions[cm._captions_of_rows(emb)[3][0]]  # a dataset caption of image 3
    rows = [("id", t["id"][3], own, "mine", 1),
            ("file name", t["image"][3].rsplit("/", 1)[-1], "a red circle", "mine", 0),
            ("path", "images/" + t["image"][4].rsplit("/", 1)[-1], "a blue square", "other", 0),
            ("unknown", "nope.png", "a green diamond", "other", 1)]
    pd.DataFrame(rows, columns=["case", "image", "caption", "system", "human"]).to_csv(tmp_path / "c.csv", index=False)
    cands, skipped = load_candidates(tmp_path / "c.csv")
    assert skipped == []
    matched, unmatched = match_images(cands, ds, emb)
    assert matched["row"].tolist() == [3, 3, 4]
    assert unmatched == [(5, "no image with id or file name 'nope.png' in dataset shapes-demo")]
    res = score_candidates(emb, matched)
    assert res.n_references == 240  # every caption of the set
    assert res.leaderboard["system"].tolist() and set(res.leaderboard["system"]) == {"mine", "other"}
    # references: the image's captions except the one equal to the candidate
    from mmviz.scoring import refclip_s

    caps3 = [j for j in cm._captions_of_rows(emb)[3] if emb.captions[j] != own]
    first = res.per_sample.iloc[0]
    expected = refclip_s(emb.image[[3]], emb.text[[cm._captions_of_rows(emb)[3][0]]], emb.text[caps3], np.zeros(3, int))
    assert first["refclip_s"] == pytest.approx(expected[0], abs=1e-4)
    assert res.agreement is not None and res.agreement["n"].tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match="match_images"):
        score_candidates(emb, cands)


def test_match_reports_ambiguous_names_and_unembedded_images(demo):
    _, emb, _, _ = demo
    emb = copy.copy(emb)
    emb.ids = emb.ids[:2] + ["17"] + emb.ids[3:]
    table = pd.DataFrame({"id": [emb.ids[0], emb.ids[1], "gone", "17"],
                          "image": ["a/x.png", "b/x.png", "c/y.png", None]})
    ds = type("D", (), {"name": "fake", "table": lambda self, columns=None: table})()
    cands = pd.DataFrame({"image": ["x.png", "b/x.png", "y.png", emb.ids[1], "17.0"], "line": [1, 2, 3, 4, 5]})
    matched, unmatched = match_images(cands, ds, emb)
    assert matched["row"].tolist() == [1, 1, 2] and matched["line"].tolist() == [2, 4, 5]
    assert unmatched[0][0] == 1 and "fits 2 images of dataset fake" in unmatched[0][1] and "image id" in unmatched[0][1]
    assert unmatched[1] == (3, "image gone of dataset fake has no embedding (it could not be read)")


def test_probe_true_caption_beats_its_foils(demo):
    _, emb, _, _ = demo
    refs = fit_references(emb)
    by_row = cm._captions_of_rows(emb)
    wins, total = 0, 0
    for row in range(12):
        p = probe(emb, None, row, emb.captions[by_row[row][0]], n_foils=5, seed=0, references=refs)
        assert p["kind"].iloc[0] == "caption" and set(p["kind"].iloc[1:]) <= {"object", "colour"}
        assert len(p) == 6 and p["caption"].is_unique
        assert list(p.columns) == ["caption", "kind", "word", "replacement", "clip_s", "refclip_s", "pmi"]
        wins += int((p["clip_s"].iloc[0] > p["clip_s"].iloc[1:]).sum())
        total += len(p) - 1
    assert wins / total > 0.8  # measured: 59 of 60 (RefCLIP-S 57, PMI 60)
    again = probe(emb, None, 0, emb.captions[0], n_foils=5, seed=0)
    pd.testing.assert_frame_equal(again, probe(emb, None, 0, emb.captions[0], n_foils=5, seed=0, references=refs))
    assert probe(emb, None, 0, "nothing to swap", n_foils=5)["kind"].tolist() == ["caption"]


def test_prefix_re_encodes_candidates_and_references(demo):
    from mmviz.embed import encode_texts
    from mmviz.models import load_model
    from mmviz.scoring import clip_s, refclip_s

    _, emb, cands, plain = demo
    assert cm.default_prefix("builtin:shapes") == "" and cm.default_prefix("ViT-B-32:openai") == "A photo depicts "
    sample = cands.iloc[::12]
    res = score_candidates(emb, sample, prefix="a picture of ")
    assert res.prefix == "a picture of "
    loaded = load_model("builtin:shapes")
    vecs = encode_texts(loaded, ["a picture of " + c for c in sample["caption"]])
    images = emb.image[sample["row"].to_numpy()]
    np.testing.assert_allclose(res.per_sample["clip_s"], clip_s(images, vecs), atol=1e-9)
    refs = encode_texts(loaded, ["a picture of " + emb.captions[j] for r in sample["references"] for j in r])
    owner = np.repeat(np.arange(len(sample)), [len(r) for r in sample["references"]])
    np.testing.assert_allclose(res.per_sample["refclip_s"], refclip_s(images, vecs, refs, owner), atol=1e-9)
    assert not np.allclose(res.per_sample["clip_s"], plain.per_sample["clip_s"].iloc[::12])


def test_large_sets_fit_the_reference_gaussian_on_a_sample(demo, monkeypatch):
    """Beyond REFERENCE_MAX captions the Gaussian is fitted on a seeded sample of them; RefCLIP-S
    still compares each candidate with its own image's captions, and the demo's sample of
    images is a subset of the full demo."""
    from mmviz.scoring import GaussianReference, RegularisedWarning

    ds, emb, cands, full = demo
    monkeypatch.setattr(cm, "REFERENCE_MAX", 100)
    sample = cm.reference_sample(emb)
    assert len(sample) == 100 < len(emb.text) and np.all(np.diff(sample) > 0)
    assert np.array_equal(sample, cm.reference_sample(emb))  # seeded
    plain = cands.drop(columns="references")  # references: the image's captions
    res = score_candidates(emb, plain)
    assert res.n_references > 100  # the sample plus the candidates' own captions are encoded ...
    with pytest.warns(RegularisedWarning):  # 100 pairs in 256 dimensions: shrunk, as the page's fit is
        g = GaussianReference(eps=1e-3).fit(emb.image[emb.text_owner[sample]], emb.text[sample])
    assert g.n_ == 100  # ... the Gaussian comes from the sample only: PMI under an independent fit of it
    gt = (plain["system"] == "ground truth").to_numpy()
    first = [int(np.flatnonzero(emb.text_owner == r)[0]) for r in plain["row"][gt]]  # the candidate caption
    np.testing.assert_allclose(res.per_sample["pmi"][gt], g.pmi(emb.image[plain["row"][gt]], emb.text[first]),
                               rtol=1e-4, atol=1e-3)
    monkeypatch.setattr(cm, "REFERENCE_MAX", 10_000)
    whole = score_candidates(emb, plain)
    np.testing.assert_allclose(res.per_sample["refclip_s"], whole.per_sample["refclip_s"], atol=1e-9)
    np.testing.assert_allclose(res.per_sample["clip_s"], whole.per_sample["clip_s"], atol=1e-12)
    assert not np.allclose(res.per_sample["pmi"], whole.per_sample["pmi"])  # another Gaussian
    few = demo_candidates(ds, emb, max_images=7, seed=1)
    assert few["image"].nunique() == 7 and set(few["image"]) <= set(cands["image"])
    assert few["row"].is_monotonic_increasing
    for c in few.itertuples():  # the same candidates as the full demo gives for those images
        same = cands[(cands["image"] == c.image) & (cands["system"] == c.system)].iloc[0]
        assert (c.caption, c.references) == (same.caption, same.references)


def test_probe_with_sampled_references_adds_its_image_captions(demo, monkeypatch):
    _, emb, _, _ = demo
    full = fit_references(emb)
    monkeypatch.setattr(cm, "REFERENCE_MAX", 30)
    sampled = fit_references(emb, pool=cm.reference_sample(emb))
    row = next(r for r in range(len(emb.ids))
               if not set(np.flatnonzero(emb.text_owner == r)) <= set(sampled.pool.tolist()))  # captions not sampled
    caption = emb.captions[int(np.flatnonzero(emb.text_owner == row)[0])]
    a = probe(emb, None, row, caption, references=full)
    b = probe(emb, None, row, caption, references=sampled)
    np.testing.assert_allclose(a["refclip_s"], b["refclip_s"], atol=1e-9)  # the image's own captions, encoded
    np.testing.assert_allclose(a["clip_s"], b["clip_s"], atol=1e-12)
    assert sampled.gaussian.n_ == 30
