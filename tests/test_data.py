"""Loaders in mmviz.data, each on small data made here, and every bad-input path."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import COLORS, image_bytes, png_claiming, write_image
from mmviz import data
from mmviz.data import REASONS, DataFormatError, ImportLimits, ImportReport, check_image, detect_format, load


def reasons(report: ImportReport) -> dict:
    return dict(report.reasons())


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def write_csv(path: Path, header, rows, delimiter=",", encoding="utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def unit(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------
# Hugging Face ImageFolder


def test_imagefolder_jsonl_several_rows_and_caption_list(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", color=COLORS[i])
    write_jsonl(tmp_path / "metadata.jsonl", [
        {"file_name": "0.png", "text": "a red square", "label": "red"},
        {"file_name": "1.png", "text": ["green one", "a green square"], "label": "green"},
        {"file_name": "0.png", "text": "another red caption", "label": "red"},
        {"file_name": "2.png", "text": "blue", "label": "blue"},
    ])
    assert detect_format(tmp_path) == "imagefolder"
    pset, report = load(tmp_path)
    assert report.format == "imagefolder"
    assert report.kept == 3 and report.skipped == []
    assert pset.ids == ["0.png", "1.png", "2.png"]
    assert pset.captions == [["a red square", "another red caption"], ["green one", "a green square"], ["blue"]]
    assert pset.extras == {"label": ["red", "green", "blue"]}
    assert [pset.image_path(i) for i in range(3)] == [tmp_path / f"{i}.png" for i in range(3)]
    m = pset.image_meta[1]
    assert (m.width, m.height, m.format) == (16, 16, "PNG")
    assert m.sha256 == hashlib.sha256((tmp_path / "1.png").read_bytes()).hexdigest()
    assert not pset.has_vectors


def test_imagefolder_csv(tmp_path):
    write_image(tmp_path / "imgs" / "a.jpg", color=COLORS[0])
    write_image(tmp_path / "imgs" / "b.jpg", color=COLORS[1])
    write_csv(tmp_path / "metadata.csv", ["file_name", "caption", "score"], [
        ["imgs/a.jpg", "first caption of a", "0.9"],
        ["imgs/b.jpg", "only caption of b", "0.1"],
        ["imgs/a.jpg", "second caption of a", "0.8"],
    ])
    pset, report = load(tmp_path)
    assert report.format == "imagefolder" and report.kept == 2
    assert pset.ids == ["imgs/a.jpg", "imgs/b.jpg"]
    assert pset.captions == [["first caption of a", "second caption of a"], ["only caption of b"]]
    assert pset.extras == {"score": ["0.9", "0.1"]}  # first row's extras for a merged image
    assert pset.image_meta[0].format == "JPEG"


def test_imagefolder_split_subfolders(tmp_path):
    write_image(tmp_path / "train" / "0.png", color=COLORS[0])
    write_image(tmp_path / "train" / "1.png", color=COLORS[1])
    write_image(tmp_path / "validation" / "0.png", color=COLORS[2])
    write_jsonl(tmp_path / "train" / "metadata.jsonl", [
        {"file_name": "0.png", "text": "train zero"},
        {"file_name": "1.png", "text": "train one"},
    ])
    write_csv(tmp_path / "validation" / "metadata.csv", ["file_name", "text"], [["0.png", "validation zero"]])
    assert detect_format(tmp_path) == "imagefolder"
    pset, report = load(tmp_path)
    assert report.kept == 3 and report.skipped == []
    assert pset.ids == ["train/0.png", "train/1.png", "validation/0.png"]
    assert pset.captions == [["train zero"], ["train one"], ["validation zero"]]
    assert pset.extras["split"] == ["train", "train", "validation"]
    assert pset.image_path(2) == tmp_path / "validation" / "0.png"


def test_imagefolder_bad_rows_are_reported_not_fatal(tmp_path):
    write_image(tmp_path / "ok.png")
    write_image(tmp_path / "ok2.png", color=COLORS[1])
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "ok.png", "text": "fine"}) + "\n"
        + "this is not json\n"
        + json.dumps({"file_name": "gone.png", "text": "missing image"}) + "\n"
        + json.dumps({"file_name": "ok2.png", "text": "   "}) + "\n"
        + "[1, 2]\n", "utf-8")
    pset, report = load(tmp_path)
    assert pset.ids == ["ok.png"] and report.kept == 1
    assert reasons(report) == {"bad row": 2, "missing file": 1, "empty caption": 1}
    wheres = sorted(s.where for s in report.skipped)
    assert wheres == ["metadata.jsonl line 2", "metadata.jsonl line 3", "metadata.jsonl line 4", "metadata.jsonl line 5"]


# ----------------------------------------------------------------------------------------
# COCO captions


def _coco(tmp_path: Path, image_dir: Path) -> Path:
    write_image(image_dir / "000000000001.jpg", color=COLORS[0])
    write_image(image_dir / "000000000002.jpg", color=COLORS[1], size=(20, 12))
    doc = {
        "info": {"description": "tiny"},
        "images": [
            {"id": 1, "file_name": "000000000001.jpg", "height": 16, "width": 16, "coco_url": "http://x/1.jpg"},
            {"id": 2, "file_name": "000000000002.jpg", "height": 12, "width": 20},
            {"id": 3, "file_name": "000000000003.jpg", "height": 16, "width": 16},  # no such file
            {"id": 4, "file_name": "000000000004.jpg"},  # no captions
            {"file_name": "no-id.jpg"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A red thing. "},
            {"id": 11, "image_id": 2, "caption": "A green thing."},
            {"id": 12, "image_id": 1, "caption": "Red, again."},
            {"id": 13, "image_id": 3, "caption": "Lost image."},
            {"id": 14, "caption": "no image id"},
        ],
    }
    path = tmp_path / "annotations" / "captions_val2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), "utf-8")
    return path


def _check_coco(pset, report, image_dir):
    assert report.format == "coco"
    assert report.kept == 2
    assert pset.ids == ["1", "2"]
    assert pset.captions == [["A red thing.", "Red, again."], ["A green thing."]]
    assert reasons(report) == {"missing file": 1, "empty caption": 1, "bad row": 2}
    assert pset.image_path(0) == image_dir / "000000000001.jpg"
    assert (pset.image_meta[1].width, pset.image_meta[1].height) == (20, 12)
    assert pset.extras == {"height": [16, 12], "width": [16, 20]}


def test_coco_images_found_beside_annotations(tmp_path):
    json_path = _coco(tmp_path, tmp_path / "val2017")
    assert detect_format(json_path) == "coco"
    assert detect_format(tmp_path) == "coco"
    for target in (json_path, tmp_path):
        pset, report = load(target)
        _check_coco(pset, report, tmp_path / "val2017")
        assert report.warnings == []


def test_coco_explicit_images_dir(tmp_path):
    json_path = _coco(tmp_path, tmp_path / "somewhere" / "pics")
    pset, report = load(json_path, images_dir=tmp_path / "somewhere" / "pics")
    _check_coco(pset, report, tmp_path / "somewhere" / "pics")


def test_coco_without_image_folder_warns_and_skips(tmp_path):
    json_path = _coco(tmp_path, tmp_path / "elsewhere")
    pset, report = load(json_path)
    assert len(pset) == 0 and report.kept == 0
    assert reasons(report) == {"missing file": 3, "empty caption": 1, "bad row": 2}
    assert len(report.warnings) == 1 and "captions_val2017.json" in report.warnings[0]


def test_coco_duplicate_image_id(tmp_path):
    write_image(tmp_path / "a.png", color=COLORS[0])
    write_image(tmp_path / "b.png", color=COLORS[1])
    doc = {"images": [{"id": 7, "file_name": "a.png"}, {"id": 7, "file_name": "b.png"}],
           "annotations": [{"image_id": 7, "caption": "seven"}]}
    p = tmp_path / "caps.json"
    p.write_text(json.dumps(doc))
    pset, report = load(p)
    assert pset.ids == ["7"] and pset.images == ["a.png"] and report.kept == 1
    assert reasons(report) == {"duplicate id": 1}
    assert report.skipped[0].where == "caps.json image 1"


# ----------------------------------------------------------------------------------------
# plain tables


def _table_images(folder: Path) -> None:
    for i in range(3):
        write_image(folder / "img" / f"{i}.png", color=COLORS[i])


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
def test_tables_keep_extra_columns(tmp_path, kind):
    _table_images(tmp_path)
    rows = [
        ["img/0.png", "zero caption", "train", "red", 0.5],
        ["img/1.png", "one caption", "test", "green", 0.25],
        ["img/2.png", "two caption", "train", "blue", 1.0],
    ]
    header = ["image", "caption", "split", "label", "human_score"]
    path = tmp_path / f"pairs.{kind}"
    if kind == "jsonl":
        write_jsonl(path, [dict(zip(header, r)) for r in rows])
    else:
        write_csv(path, header, rows, delimiter="\t" if kind == "tsv" else ",")
    assert detect_format(path) == "table"
    pset, report = load(path)
    assert report.format == "table" and report.kept == 3 and report.skipped == []
    assert pset.ids == ["img/0.png", "img/1.png", "img/2.png"]
    assert pset.captions == [["zero caption"], ["one caption"], ["two caption"]]
    scores = [0.5, 0.25, 1.0] if kind == "jsonl" else ["0.5", "0.25", "1.0"]
    assert pset.extras == {"split": ["train", "test", "train"], "label": ["red", "green", "blue"],
                           "human_score": scores}
    assert pset.root == tmp_path


def test_table_id_column_and_quoted_commas(tmp_path):
    _table_images(tmp_path)
    write_csv(tmp_path / "t.csv", ["uid", "filepath", "sentence"], [
        ["a", "img/0.png", "a cat, a dog; and a bird"],
        ["b", "img/1.png", "second"],
        ["a", "img/0.png", "another caption for a"],
        ["a", "img/2.png", "same id, other image"],
        ["c", "", "no image"],
        ["d", "img/2.png", ""],
        ["e", "http://example.com/x.jpg", "a url"],
    ])
    pset, report = load(tmp_path / "t.csv")
    assert pset.ids == ["a", "b"] and report.kept == 2
    assert pset.captions == [["a cat, a dog; and a bird", "another caption for a"], ["second"]]
    assert reasons(report) == {"duplicate id": 1, "missing file": 2, "empty caption": 1}
    by_where = {s.where: s.reason for s in report.skipped}
    assert by_where == {"t.csv line 5": "duplicate id", "t.csv line 6": "missing file",
                        "t.csv line 7": "empty caption", "t.csv line 8": "missing file"}
    url = [s for s in report.skipped if s.where == "t.csv line 8"][0]
    assert "URL" in url.detail


def test_table_extra_cells_row_is_bad(tmp_path):
    _table_images(tmp_path)
    (tmp_path / "t.csv").write_text("image,text\nimg/0.png,ok\nimg/1.png,too,many,cells\n", "utf-8")
    pset, report = load(tmp_path / "t.csv")
    assert pset.ids == ["img/0.png"]
    assert [(s.where, s.reason) for s in report.skipped] == [("t.csv line 3", "bad row")]


def test_table_in_folder_is_detected(tmp_path):
    _table_images(tmp_path)
    write_csv(tmp_path / "pairs.csv", ["image", "text"], [["img/0.png", "zero"]])
    assert detect_format(tmp_path) == "table"
    pset, report = load(tmp_path)
    assert pset.ids == ["img/0.png"] and report.kept == 1


def test_table_images_dir_overrides_root(tmp_path):
    _table_images(tmp_path / "pics")
    write_csv(tmp_path / "meta" / "t.csv", ["image", "text"], [["img/1.png", "one"]])
    pset, report = load(tmp_path / "meta" / "t.csv", images_dir=tmp_path / "pics")
    assert report.kept == 1 and pset.image_path(0) == tmp_path / "pics" / "img" / "1.png"


def test_table_without_caption_column(tmp_path):
    write_csv(tmp_path / "t.csv", ["image", "label"], [["a.png", "x"]])
    with pytest.raises(DataFormatError) as e:
        load(tmp_path / "t.csv")
    assert "t.csv" in str(e.value) and "caption column" in str(e.value)


def test_parquet_with_image_bytes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_image(tmp_path / "on_disk.png", color=COLORS[3])
    jpeg = image_bytes(color=COLORS[0], fmt="JPEG")
    png = image_bytes(color=COLORS[1], size=(8, 4))
    rows = [
        {"image": {"bytes": jpeg, "path": "a.jpg"}, "text": "jpeg bytes", "label": 1},
        {"image": {"bytes": png, "path": None}, "text": "png bytes", "label": 2},
        {"image": {"bytes": None, "path": "on_disk.png"}, "text": "path only", "label": 3},
        {"image": {"bytes": b"\x89PNG not really", "path": "bad.png"}, "text": "corrupt", "label": 4},
        {"image": {"bytes": png, "path": None}, "text": "same bytes, second caption", "label": 5},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000.parquet")
    pset, report = load(tmp_path / "train-00000.parquet")
    assert report.kept == 3
    assert pset.images[0] == jpeg and pset.images[1] == png and pset.images[2] == "on_disk.png"
    assert pset.ids[0] == hashlib.sha256(jpeg).hexdigest()[:16]
    assert pset.captions == [["jpeg bytes"], ["png bytes", "same bytes, second caption"], ["path only"]]
    assert pset.extras == {"label": [1, 2, 3]}
    assert [(m.width, m.height, m.format) for m in pset.image_meta] == [(16, 16, "JPEG"), (8, 4, "PNG"), (16, 16, "PNG")]
    assert pset.image_meta[0].sha256 == hashlib.sha256(jpeg).hexdigest()
    assert [(s.where, s.reason) for s in report.skipped] == [("train-00000.parquet row 4", "unreadable image")]


def test_not_a_parquet_file(tmp_path):
    p = tmp_path / "t.parquet"
    p.write_text("file_name,text\n")
    with pytest.raises(DataFormatError) as e:
        load(p)
    assert "t.parquet" in str(e.value)


# ----------------------------------------------------------------------------------------
# images with sidecar .txt captions


def test_sidecar_txt_folder(tmp_path):
    write_image(tmp_path / "a.png", color=COLORS[0])
    (tmp_path / "a.txt").write_text("first caption\n\nsecond caption\n", "utf-8")
    write_image(tmp_path / "b.jpg", color=COLORS[1])
    (tmp_path / "b.txt").write_text("b caption", "utf-8")
    write_image(tmp_path / "c.png", color=COLORS[2])  # no caption file
    write_image(tmp_path / "sub" / "d.png", color=COLORS[3])
    (tmp_path / "sub" / "d.txt").write_text("d caption\n", "utf-8")
    write_image(tmp_path / "e.png", color=COLORS[4])
    (tmp_path / "e.txt").write_text("\n  \n", "utf-8")
    assert detect_format(tmp_path) == "images+txt"
    pset, report = load(tmp_path)
    assert report.format == "images+txt"
    assert pset.ids == ["a.png", "b.jpg", "sub/d.png"] and report.kept == 3
    assert pset.captions == [["first caption", "second caption"], ["b caption"], ["d caption"]]
    assert sorted((s.where, s.reason) for s in report.skipped) == [("c.png", "empty caption"), ("e.png", "empty caption")]


# ----------------------------------------------------------------------------------------
# clip-retrieval output


def _clip_retrieval(folder: Path, shards, dims=None):
    """shards: list of row counts. Returns the raw (img, txt) arrays per shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    raw = []
    offset = 0
    for k, n in enumerate(shards):
        d = dims[k] if dims else 4
        img = rng.normal(size=(n, d)).astype(np.float32) * 3
        txt = rng.normal(size=(n, d)).astype(np.float32) * 0.5
        for sub, arr in (("img_emb", img), ("text_emb", txt)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            np.save(folder / sub / f"{sub}_{k}.npy", arr)
        (folder / "metadata").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({
            "caption": [f"caption {offset + i}" for i in range(n)],
            "url": [f"https://example.com/{offset + i}.jpg" for i in range(n)],
            "similarity": [0.1 * (offset + i) for i in range(n)],
        }), folder / "metadata" / f"metadata_{k}.parquet")
        raw.append((img, txt))
        offset += n
    return raw


def test_clip_retrieval_two_shards_pair_row_by_row(tmp_path):
    raw = _clip_retrieval(tmp_path, [3, 2])
    assert detect_format(tmp_path) == "clip-retrieval"
    pset, report = load(tmp_path)
    assert report.format == "clip-retrieval" and report.kept == 5 and report.skipped == []
    assert pset.ids == ["0", "1", "2", "3", "4"]
    assert pset.captions == [[f"caption {i}"] for i in range(5)]
    assert pset.images == [None] * 5  # URLs are not downloaded
    assert pset.extras["similarity"] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    all_img = np.concatenate([r[0] for r in raw])
    all_txt = np.concatenate([r[1] for r in raw])
    np.testing.assert_allclose(pset.image_vectors, unit(all_img), atol=1e-6)
    np.testing.assert_allclose(pset.text_vectors, unit(all_txt), atol=1e-6)
    assert pset.image_vectors.dtype == np.float32 and pset.image_vectors.shape == (5, 4)
    assert pset.vector_model == f"precomputed:{tmp_path.name}"


def test_clip_retrieval_shard_with_other_dim_is_skipped(tmp_path):
    raw = _clip_retrieval(tmp_path, [3, 2], dims=[4, 6])
    pset, report = load(tmp_path, model_name="ViT-B-32")
    assert report.kept == 3 and pset.ids == ["0", "1", "2"]
    assert reasons(report) == {"wrong shape": 2}
    assert [s.where for s in report.skipped] == ["img_emb/img_emb_1.npy row 0", "img_emb/img_emb_1.npy row 1"]
    np.testing.assert_allclose(pset.image_vectors, unit(raw[0][0]), atol=1e-6)
    assert pset.vector_model == "ViT-B-32"


def test_clip_retrieval_local_images_are_checked(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _clip_retrieval(tmp_path, [2])
    write_image(tmp_path / "imgs" / "0.png", color=COLORS[0], size=(10, 6))
    pq.write_table(pa.table({"caption": ["c0", "c1"], "image_path": ["imgs/0.png", "imgs/missing.png"]}),
                   tmp_path / "metadata" / "metadata_0.parquet")
    pset, report = load(tmp_path)
    assert report.kept == 2
    assert pset.images == ["imgs/0.png", None]
    assert (pset.image_meta[0].width, pset.image_meta[0].height) == (10, 6) and pset.image_meta[1] is None


def test_clip_retrieval_shard_counts_must_match(tmp_path):
    _clip_retrieval(tmp_path, [2, 2])
    (tmp_path / "text_emb" / "text_emb_1.npy").unlink()
    with pytest.raises(DataFormatError) as e:
        load(tmp_path)
    assert str(tmp_path) in str(e.value) and "2 image, 1 text" in str(e.value)


def test_clip_retrieval_unreadable_files_name_the_file(tmp_path):
    _clip_retrieval(tmp_path, [2])
    meta = tmp_path / "metadata" / "metadata_0.parquet"
    meta.write_text("garbage")
    _raises(tmp_path, "metadata_0.parquet: not a readable Parquet file")
    meta.unlink()
    (tmp_path / "text_emb" / "text_emb_0.npy").write_bytes(b"")
    _raises(tmp_path, "text_emb_0.npy: unreadable shard")
    np.save(tmp_path / "text_emb" / "text_emb_0.npy", np.array([["a", "b"], ["c", "d"]]))
    _raises(tmp_path, "not numeric")
    np.save(tmp_path / "text_emb" / "text_emb_0.npy", np.ones((3, 4)))
    _raises(tmp_path, "does not pair with text_emb_0.npy (3, 4)")


# ----------------------------------------------------------------------------------------
# precomputed vectors


def _vectors(n=4, d=3, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(2, n, d)) * np.array([5.0, 0.2])[:, None, None]).astype(np.float32)


def test_npy_with_captions_txt_beside(tmp_path):
    arr = _vectors()
    np.save(tmp_path / "feats.npy", arr)
    (tmp_path / "feats.txt").write_text("cap zero\ncap one\ncap two\ncap three\n", "utf-8")
    assert detect_format(tmp_path / "feats.npy") == "vectors"
    pset, report = load(tmp_path / "feats.npy")
    assert report.format == "vectors" and report.kept == 4 and report.skipped == [] and report.warnings == []
    assert pset.ids == ["0", "1", "2", "3"]
    assert pset.captions == [["cap zero"], ["cap one"], ["cap two"], ["cap three"]]
    assert pset.images == [None] * 4 and not pset.has_images
    for vec, src in ((pset.image_vectors, arr[0]), (pset.text_vectors, arr[1])):
        assert vec.dtype == np.float32 and vec.shape == (4, 3)
        np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-6)
        # Same direction: cosine with the source row is 1.
        cos = (vec * src).sum(1) / np.linalg.norm(src, axis=1)
        np.testing.assert_allclose(cos, 1.0, atol=1e-6)
    assert pset.vector_model == "precomputed:feats"


def test_npy_without_captions_warns(tmp_path):
    np.save(tmp_path / "v.npy", _vectors(n=2))
    pset, report = load(tmp_path / "v.npy", model_name="clip")
    assert pset.captions == [["pair 0"], ["pair 1"]]
    assert len(report.warnings) == 1 and "v.npy" in report.warnings[0]
    assert pset.vector_model == "clip"


def test_npz_keys_ids_from_captions_csv(tmp_path):
    arr = _vectors(n=3, d=5)
    np.savez(tmp_path / "emb.npz", image_embeds=arr[0], text_embeds=arr[1])
    write_csv(tmp_path / "caps.csv", ["key", "caption"], [["k1", "one"], ["k2", "two"], ["k3", "three"]])
    pset, report = load(tmp_path / "emb.npz", captions_file=tmp_path / "caps.csv")
    assert pset.ids == ["k1", "k2", "k3"] and pset.captions == [["one"], ["two"], ["three"]]
    np.testing.assert_allclose(pset.image_vectors, unit(arr[0]), atol=1e-6)
    np.testing.assert_allclose(pset.text_vectors, unit(arr[1]), atol=1e-6)


def test_npz_with_ids_and_captions_arrays(tmp_path):
    arr = _vectors(n=2)
    np.savez(tmp_path / "e.npz", image=arr[0], text=arr[1], ids=np.array(["x", "y"]), captions=np.array([" a ", "b"]))
    pset, report = load(tmp_path / "e.npz")
    assert pset.ids == ["x", "y"] and pset.captions == [["a"], ["b"]] and report.warnings == []


def test_npz_with_bytes_ids_and_captions(tmp_path):
    arr = _vectors(n=2)
    np.savez(tmp_path / "e.npz", image=arr[0], text=arr[1], ids=np.array([b"x", b"y"]),
             captions=np.array(["caf\u00e9".encode(), b"plain"]))
    pset, _ = load(tmp_path / "e.npz")
    assert pset.ids == ["x", "y"] and pset.captions == [["caf\u00e9"], ["plain"]]


def test_vector_folder_is_detected(tmp_path):
    np.save(tmp_path / "only.npy", _vectors(n=2))
    assert detect_format(tmp_path) == "vectors"
    pset, report = load(tmp_path)
    assert report.kept == 2


def test_bad_vector_rows_are_skipped(tmp_path):
    arr = _vectors(n=6)
    arr[0, 1, 0] = np.nan
    arr[1, 2, 2] = np.inf
    arr[0, 3] = 0.0
    arr[1, 4] = 0.0
    np.save(tmp_path / "v.npy", arr)
    (tmp_path / "v.txt").write_text("a\nb\nc\nd\ne\nf\n", "utf-8")
    pset, report = load(tmp_path / "v.npy")
    assert pset.ids == ["0", "5"] and report.kept == 2
    assert reasons(report) == {"non-finite vector": 2, "zero vector": 2}
    assert [s.where for s in report.skipped] == ["v.npy row 1", "v.npy row 2", "v.npy row 3", "v.npy row 4"]
    np.testing.assert_allclose(pset.image_vectors, unit(arr[0][[0, 5]]), atol=1e-6)


def test_vector_empty_caption_line_is_skipped(tmp_path):
    np.save(tmp_path / "v.npy", _vectors(n=3))
    (tmp_path / "v.txt").write_text("a\n   \nc\n", "utf-8")
    pset, report = load(tmp_path / "v.npy")
    assert pset.ids == ["0", "2"] and reasons(report) == {"empty caption": 1}
    assert pset.image_vectors.shape == (2, 3)


def test_duplicate_ids_in_vector_captions(tmp_path):
    np.save(tmp_path / "v.npy", _vectors(n=3))
    write_csv(tmp_path / "v.csv", ["id", "text"], [["a", "x"], ["a", "y"], ["b", "z"]])
    pset, report = load(tmp_path / "v.npy")
    assert pset.ids == ["a", "b"] and pset.captions == [["x"], ["z"]]
    assert reasons(report) == {"duplicate id": 1}
    assert len(pset.image_vectors) == 2


# ----------------------------------------------------------------------------------------
# bad images


def test_check_image_ok_and_thumbnail(tmp_path):
    p = write_image(tmp_path / "big.png", size=(300, 150))
    meta, reason, detail = check_image(p, ImportLimits())
    assert reason == "" and (meta.width, meta.height, meta.format) == (300, 150, "PNG")
    thumb = Image.open(io.BytesIO(meta.thumbnail))
    assert thumb.format == "JPEG" and thumb.size == (128, 64)


def test_missing_and_corrupt_images_in_a_table(tmp_path):
    write_image(tmp_path / "good.png", color=COLORS[0])
    jpg = image_bytes(size=(64, 64), fmt="JPEG")
    (tmp_path / "half.jpg").write_bytes(jpg[: len(jpg) // 2])
    (tmp_path / "noise.png").write_bytes(os.urandom(300))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    write_csv(tmp_path / "t.csv", ["image", "text"], [
        ["good.png", "good"], ["half.jpg", "half"], ["noise.png", "noise"], ["gone.png", "gone"],
        ["empty.png", "empty"], ["folder.png", "dir"],
    ])
    pset, report = load(tmp_path / "t.csv")
    assert pset.ids == ["good.png"] and report.kept == 1
    got = {s.where: s.reason for s in report.skipped}
    assert got == {"t.csv line 3": "unreadable image", "t.csv line 4": "unreadable image",
                   "t.csv line 5": "missing file", "t.csv line 6": "unreadable image",
                   "t.csv line 7": "unreadable image"}
    assert all(s.reason in REASONS for s in report.skipped)


def test_image_too_large_refused_before_decoding(tmp_path, monkeypatch):
    import warnings

    (tmp_path / "bomb.png").write_bytes(png_claiming(10_000, 10_000))  # 100 MP claimed, 16x16 of data
    write_image(tmp_path / "fine.png")
    write_csv(tmp_path / "t.csv", ["image", "text"], [["bomb.png", "bomb"], ["fine.png", "fine"]])
    decoded = []
    real_convert = Image.Image.convert
    monkeypatch.setattr(Image.Image, "convert", lambda self, *a, **k: decoded.append(self.size) or real_convert(self, *a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        pset, report = load(tmp_path / "t.csv")
    assert pset.ids == ["fine.png"] and report.kept == 1
    [skip] = report.skipped
    assert (skip.where, skip.reason) == ("t.csv line 2", "image too large")
    assert "10000x10000" in skip.detail and "bomb.png" in skip.detail
    assert decoded == [(16, 16)]  # only the fine image was ever decoded


def test_image_over_custom_limit(tmp_path):
    write_image(tmp_path / "a.png", size=(16, 16))
    write_image(tmp_path / "b.png", size=(8, 8), color=COLORS[1])
    write_csv(tmp_path / "t.csv", ["image", "text"], [["a.png", "a"], ["b.png", "b"]])
    pset, report = load(tmp_path / "t.csv", limits=ImportLimits(max_pixels=100))
    assert pset.ids == ["b.png"]
    assert [(s.reason, "16x16" in s.detail) for s in report.skipped] == [("image too large", True)]
    # Pillow's own bomb check (far above 2x its limit) also reports "image too large", not a crash.
    meta, reason, _ = check_image(png_claiming(100_000, 100_000), ImportLimits())
    assert meta is None and reason == "image too large"


def test_limits_from_env(monkeypatch):
    monkeypatch.setenv("MMVIZ_MAX_PIXELS", "1234")
    monkeypatch.setenv("MMVIZ_MAX_ZIP_MEMBERS", "7")
    lim = ImportLimits.from_env()
    assert (lim.max_pixels, lim.max_zip_members, lim.max_zip_bytes) == (1234, 7, 8 * 2**30)
    monkeypatch.setenv("MMVIZ_MAX_ZIP_BYTES", "lots")
    with pytest.raises(ValueError, match="MMVIZ_MAX_ZIP_BYTES='lots' is not a whole number"):
        ImportLimits.from_env()


# ----------------------------------------------------------------------------------------
# whole-file errors


def _raises(path, match, **kw) -> DataFormatError:
    with pytest.raises(DataFormatError) as e:
        load(path, **kw)
    assert e.value.path == str(path) or Path(e.value.path).name in str(e.value)
    assert Path(path).name in str(e.value)
    assert match in str(e.value), str(e.value)
    return e.value


def test_whole_file_errors(tmp_path):
    (tmp_path / "a.zip").write_text("hello, I am text")
    _raises(tmp_path / "a.zip", "not a zip archive")
    (tmp_path / "b.json").write_text("{not json at all")
    _raises(tmp_path / "b.json", "not valid JSON")
    (tmp_path / "c.json").write_text(json.dumps({"info": {}, "categories": []}))
    _raises(tmp_path / "c.json", "no 'images' and 'annotations' lists")
    (tmp_path / "c2.json").write_text(json.dumps([1, 2, 3]))
    _raises(tmp_path / "c2.json", "no 'images' and 'annotations' lists")
    np.savez(tmp_path / "d.npz", image=np.ones((3, 4)), text=np.ones((2, 4)))
    _raises(tmp_path / "d.npz", "3 image vectors but 2 text vectors")
    np.savez(tmp_path / "d2.npz", image=np.ones((3, 4)), text=np.ones((3, 5)))
    _raises(tmp_path / "d2.npz", "4-d but text vectors 5-d")
    np.savez(tmp_path / "d3.npz", foo=np.ones((3, 4)), bar=np.ones((3, 4)))
    _raises(tmp_path / "d3.npz", "no image and text arrays")
    np.save(tmp_path / "e.npy", np.ones((3, 4)))
    _raises(tmp_path / "e.npy", "array has shape (3, 4)")
    np.save(tmp_path / "e2.npy", np.ones((3, 2, 4)))
    _raises(tmp_path / "e2.npy", "array has shape (3, 2, 4)")
    (tmp_path / "f.npy").write_bytes(b"\x93NUMPY garbage")
    _raises(tmp_path / "f.npy", "f.npy")
    (tmp_path / "g.xyz").write_text("?")
    _raises(tmp_path / "g.xyz", "unknown file type .xyz")
    (tmp_path / "g.txt").write_text("?")
    _raises(tmp_path / "g.txt", "unknown file type .txt")
    _raises(tmp_path / "nope.csv", "no such file or folder")
    (tmp_path / "h.jsonl").write_text("nope\nstill nope\n")
    _raises(tmp_path / "h.jsonl", "no line is a JSON object")
    (tmp_path / "i.csv").write_text("")
    _raises(tmp_path / "i.csv", "empty table")


class _Boom:
    """Unpickling this would create `marker`: proof that a loader unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pickled_object_arrays_are_refused_never_unpickled(tmp_path):
    marker = tmp_path / "UNPICKLED"
    obj = np.empty((2, 1, 1), dtype=object)
    obj[0, 0, 0] = _Boom(str(marker))
    obj[1, 0, 0] = 1.0
    np.save(tmp_path / "evil.npy", obj, allow_pickle=True)
    _raises(tmp_path / "evil.npy", "cannot read without unpickling")
    np.savez(tmp_path / "evil.npz", image=obj[0], text=np.ones((1, 1)))
    _raises(tmp_path / "evil.npz", "cannot read without unpickling")
    assert not marker.exists()


def test_non_numeric_vectors_are_refused(tmp_path):
    np.save(tmp_path / "s.npy", np.array([[["a", "b"]], [["c", "d"]]]))
    _raises(tmp_path / "s.npy", "not numeric")


def test_captions_file_with_wrong_number_of_lines(tmp_path):
    np.save(tmp_path / "v.npy", _vectors(n=3))
    (tmp_path / "v.txt").write_text("one\ntwo\n")
    _raises(tmp_path / "v.npy", "2 captions for 3 vector pairs")  # names v.txt and v.npy
    (tmp_path / "other.txt").write_text("one\ntwo\nthree\nfour\n")
    with pytest.raises(DataFormatError) as e:
        load(tmp_path / "v.npy", captions_file=tmp_path / "other.txt")
    assert "other.txt" in str(e.value) and "4 captions for 3" in str(e.value)


def test_folder_with_nothing_readable(tmp_path):
    (tmp_path / "README.md").write_text("hi")
    write_image(tmp_path / "lonely.png")  # an image without a caption file is not a data set
    with pytest.raises(DataFormatError) as e:
        load(tmp_path)
    assert str(tmp_path) in str(e.value) and "found no data" in str(e.value)


def test_folder_with_two_tables_is_ambiguous(tmp_path):
    write_csv(tmp_path / "a.csv", ["image", "text"], [["x.png", "x"]])
    write_csv(tmp_path / "b.csv", ["image", "text"], [["x.png", "x"]])
    with pytest.raises(DataFormatError) as e:
        load(tmp_path)
    assert "2 table files (a.csv, b.csv)" in str(e.value)


# ----------------------------------------------------------------------------------------
# text encoding


def test_latin1_csv_is_read_losslessly_with_warning(tmp_path):
    write_image(tmp_path / "a.png")
    write_csv(tmp_path / "legacy.csv", ["image", "text"], [["a.png", "un café à Besançon"]], encoding="latin-1")
    pset, report = load(tmp_path / "legacy.csv")
    assert pset.captions == [["un café à Besançon"]]
    assert len(report.warnings) == 1
    assert "legacy.csv" in report.warnings[0] and "Latin-1" in report.warnings[0]


def test_utf8_bom_is_handled(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "bom.csv").write_bytes("\ufefffile_name,text\na.png,naïve café\n".encode("utf-8"))
    pset, report = load(tmp_path / "bom.csv")
    assert pset.ids == ["a.png"] and pset.captions == [["naïve café"]] and report.warnings == []
    (tmp_path / "bom.jsonl").write_bytes(("\ufeff" + json.dumps({"image": "a.png", "text": "ok"}) + "\n").encode())
    pset, report = load(tmp_path / "bom.jsonl")
    assert pset.captions == [["ok"]] and report.skipped == []


def test_sidecar_txt_in_latin1(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes("crème brûlée".encode("latin-1"))
    pset, report = load(tmp_path)
    assert pset.captions == [["crème brûlée"]]
    assert len(report.warnings) == 1 and "a.txt" in report.warnings[0]


# ----------------------------------------------------------------------------------------
# the report


def test_report_summary_and_round_trip():
    r = ImportReport("src.csv", "table", kept=3)
    r.skip("src.csv line 2", "missing file", "x.png does not exist")
    r.skip("src.csv line 3", "missing file")
    r.skip("src.csv line 4", "empty caption")
    assert r.summary() == "table from src.csv: kept 3 pairs, skipped 3 rows (2 missing file, 1 empty caption)"
    assert str(r.skipped[0]) == "src.csv line 2: missing file (x.png does not exist)"
    back = ImportReport.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r
    with pytest.raises(AssertionError):
        r.skip("x", "not a reason")


def test_pairedset_checks_column_lengths():
    with pytest.raises(ValueError, match="different lengths"):
        data.PairedSet(["a", "b"], [None], [["x"], ["y"]])


def test_progress_is_reported(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", color=COLORS[i])
    write_csv(tmp_path / "t.csv", ["image", "text"], [[f"{i}.png", f"c{i}"] for i in range(3)])
    calls = []
    load(tmp_path / "t.csv", progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 3), (3, 3)]


# ----------------------------------------------------------------------------------------
# hostile or unusual text


def test_only_real_newlines_split_lines(tmp_path):
    write_image(tmp_path / "a.png")
    # U+2028, U+0085 and a form feed are legal inside a JSON string and a caption line.
    odd = "one\u2028line\x85still\x0cone"
    (tmp_path / "t.jsonl").write_text(json.dumps({"image": "a.png", "text": odd}, ensure_ascii=False) + "\r\n", "utf-8")
    pset, report = load(tmp_path / "t.jsonl")
    assert pset.captions == [[odd]] and report.skipped == []
    np.save(tmp_path / "v.npy", _vectors(n=3))
    (tmp_path / "v.txt").write_text(f"first\r\n{odd}\rthird", "utf-8")
    pset, report = load(tmp_path / "v.npy")
    assert pset.captions == [["first"], [odd], ["third"]]


def test_cp1252_ellipsis_caption_file_is_one_line(tmp_path):
    np.save(tmp_path / "v.npy", _vectors(n=2))
    (tmp_path / "v.txt").write_bytes("wait\u2026 what\nsecond\n".encode("cp1252"))  # 0x85 in cp1252
    pset, report = load(tmp_path / "v.npy")
    assert pset.captions == [["wait\x85 what"], ["second"]]  # Latin-1 keeps the byte, lines stay aligned
    assert len(report.warnings) == 1 and "v.txt" in report.warnings[0]


def test_csv_line_numbers_follow_the_file(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text('image,text\n\na.png,"a caption\nover two lines"\n\ngone.png,lost\n', "utf-8")
    pset, report = load(tmp_path / "t.csv")
    assert pset.captions == [["a caption\nover two lines"]]
    assert [(s.where, s.reason) for s in report.skipped] == [("t.csv line 6", "missing file")]


def test_csv_with_unclosed_quote_is_a_format_error(tmp_path):
    (tmp_path / "q.csv").write_text('image,text\na.png,"unclosed\n' + "b.png,x\n" * 20000, "utf-8")
    _raises(tmp_path / "q.csv", "malformed CSV near line")


def test_nul_in_image_path_is_a_skipped_row(tmp_path):
    write_image(tmp_path / "ok.png")
    write_jsonl(tmp_path / "t.jsonl", [{"image": "ok.png", "text": "fine"}, {"image": "a\x00.png", "text": "nul"}])
    pset, report = load(tmp_path / "t.jsonl")
    assert pset.ids == ["ok.png"] and [(s.where, s.reason) for s in report.skipped] == [("t.jsonl line 2", "missing file")]


def test_deeply_nested_json_is_refused_not_crashing(tmp_path):
    write_image(tmp_path / "ok.png")
    (tmp_path / "t.jsonl").write_text(json.dumps({"image": "ok.png", "text": "fine"}) + "\n" + "[" * 100_000 + "\n")
    pset, report = load(tmp_path / "t.jsonl")
    assert pset.ids == ["ok.png"] and [(s.where, s.reason) for s in report.skipped] == [("t.jsonl line 2", "bad row")]
    (tmp_path / "deep.json").write_text("[" * 100_000)
    _raises(tmp_path / "deep.json", "not valid JSON")


def test_mixed_type_extras_survive_storage(tmp_path, workspace):
    write_image(tmp_path / "a.png", color=COLORS[0])
    write_image(tmp_path / "b.png", color=COLORS[1])
    write_jsonl(tmp_path / "t.jsonl", [{"image": "a.png", "text": "a", "label": 1, "meta": {"k": 1}},
                                       {"image": "b.png", "text": "b", "label": "two", "meta": None}])
    pset, _ = load(tmp_path / "t.jsonl")
    assert pset.extras == {"label": [1, "two"], "meta": [{"k": 1}, None]}
    t = workspace.import_path(tmp_path / "t.jsonl").dataset.table()
    assert t["label"].tolist() == ["1", "two"]  # mixed types fall back to JSON text
