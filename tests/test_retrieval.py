"""Retrieval: top-k, recall@k and partner ranks on examples worked out by hand and against a
brute-force reference; queries from text and images under the builtin model."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from mmviz import queries, retrieval
from mmviz.retrieval import partner_ranks, recall_at_k, topk, worst_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def at(degrees: float, norm: float = 1.0) -> np.ndarray:
    """A 2-D vector at an angle: cosine similarity then ranks by angular distance."""
    r = np.deg2rad(degrees)
    return norm * np.array([np.cos(r), np.sin(r)], dtype=np.float32)


# Images at 0, 90 and 180 degrees; captions (owner) at 50 (0), 160 (0), 30 (1), 100 (2), 250 (2).
# Angular distances, no ties:
#          c0   c1   c2   c3   c4
#   I0     50  160   30  100  110    captions by rank: c2 c0 c3 c4 c1 -> owners 1 0 2 2 0: first hit at 2
#   I1     40   70   60   10  160    c3 c0 c2 c1 c4 -> owners 2 0 1 0 2: first hit at 3
#   I2    130   20  150   80   70    c1 c4 c3 c0 c2 -> owners 0 2 ...: first hit at 2
# Text->image, nearest images: c0: I1 I0 (hit at 2), c1: I2 I1 I0 (3), c2: I0 I1 (2), c3: I1 I2 (2),
# c4: I2 (1).
IMAGES = np.stack([at(0, 2.0), at(90, 0.5), at(180, 3.0)])  # norms differ: cosine ignores them
TEXTS = np.stack([at(50), at(160, 4.0), at(30), at(100, 0.1), at(250)])
OWNER = np.array([0, 0, 1, 2, 2])


@pytest.fixture(params=["torch", "numpy", "faiss"])
def backend(request):
    if request.param == "faiss":
        pytest.importorskip("faiss")  # optional: installed with the test extra
    return request.param


def cos(degrees):
    return np.cos(np.deg2rad(degrees))


def test_hand_computed_example():
    r = recall_at_k(IMAGES, TEXTS, (1, 2, 3), OWNER)
    assert r["i2t"] == {1: 0.0, 2: pytest.approx(2 / 3), 3: 1.0}
    assert r["t2i"] == {1: pytest.approx(1 / 5), 2: pytest.approx(4 / 5), 3: 1.0}
    # an int k gives plain floats
    assert recall_at_k(IMAGES, TEXTS, 2, OWNER) == {"i2t": pytest.approx(2 / 3), "t2i": pytest.approx(4 / 5)}
    assert type(recall_at_k(IMAGES, TEXTS, 1, text_owner=OWNER)["t2i"]) is float


def test_hand_computed_rankings(backend):
    scores, idx = topk(IMAGES, TEXTS, 5, backend=backend)
    np.testing.assert_array_equal(idx, [[2, 0, 3, 4, 1], [3, 0, 2, 1, 4], [1, 4, 3, 0, 2]])
    np.testing.assert_allclose(scores[0], cos([30, 50, 100, 110, 160]), atol=1e-6)
    assert scores.dtype == np.float32 and idx.dtype == np.int64
    s, i = topk(TEXTS, IMAGES, 2, backend=backend)
    np.testing.assert_array_equal(i, [[1, 0], [2, 1], [0, 1], [1, 2], [2, 0]])
    np.testing.assert_allclose(s[:, 0], cos([40, 20, 30, 10, 70]), atol=1e-6)
    # chunking over queries changes nothing
    np.testing.assert_array_equal(topk(TEXTS, IMAGES, 3, chunk=2, backend=backend)[1], topk(TEXTS, IMAGES, 3)[1])


def test_hand_computed_partner_ranks():
    r = partner_ranks(IMAGES, TEXTS, OWNER)
    np.testing.assert_array_equal(r["i2t"], [2, 3, 2])
    np.testing.assert_array_equal(r["t2i"], [2, 3, 2, 2, 1])
    assert r["i2t"].dtype == np.int64 and r["t2i"].dtype == np.int64
    # an image without captions ranks 0 (an image at 45 degrees added, no caption points at it)
    r = partner_ranks(np.vstack([IMAGES, at(45)]), TEXTS, OWNER, chunk=1)
    np.testing.assert_array_equal(r["i2t"], [2, 3, 2, 0])
    np.testing.assert_array_equal(r["t2i"], [3, 4, 3, 3, 1])  # the new image is nearer than c0..c3's own


def test_hand_computed_worst_pairs():
    # t2i ranks 2 3 2 2 1; among the rank-2 captions c3 (80 degrees from I2) is worse than c2 (60 from
    # I1) and c0 (50 from I0)
    w = worst_pairs(IMAGES, TEXTS, OWNER)
    assert list(w.columns) == ["caption", "image", "t2i_rank", "own_cosine", "best_image", "best_cosine"]
    assert w["caption"].tolist() == [1, 3, 2, 0, 4]
    assert w["image"].tolist() == [0, 2, 1, 0, 2]
    assert w["t2i_rank"].tolist() == [3, 2, 2, 2, 1]
    assert w["best_image"].tolist() == [2, 1, 0, 1, 2]
    np.testing.assert_allclose(w["own_cosine"], cos([160, 80, 60, 50, 70]), atol=1e-6)
    np.testing.assert_allclose(w["best_cosine"], cos([20, 10, 30, 40, 70]), atol=1e-6)
    assert worst_pairs(IMAGES, TEXTS, OWNER, limit=2)["caption"].tolist() == [1, 3]


def test_k_beyond_the_number_of_keys():
    r = recall_at_k(IMAGES, TEXTS, (1, 10), OWNER)
    assert r["i2t"][10] == 1.0 and r["t2i"][10] == 1.0  # 5 captions, 3 images: everything is retrieved
    assert r["i2t"][1] == 0.0


def test_perfect_retrieval_one_caption_per_image_by_default():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16)).astype(np.float32)
    r = recall_at_k(x, x.copy())
    assert r == {"i2t": {1: 1.0, 5: 1.0, 10: 1.0}, "t2i": {1: 1.0, 5: 1.0, 10: 1.0}}
    y = rng.normal(size=(50, 16))
    assert recall_at_k(x, y, (1, 5)) == recall_at_k(x, y, (1, 5), np.arange(50))
    assert recall_at_k(x, y, (1, 5))["t2i"][5] < 1.0  # unrelated captions do miss


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="5 texts for 3 images.*text_owner"):
        recall_at_k(IMAGES, TEXTS)
    with pytest.raises(ValueError, match="5 texts for 3 images"):
        partner_ranks(IMAGES, TEXTS)
    with pytest.raises(ValueError, match="text_owner must be 5"):
        recall_at_k(IMAGES, TEXTS, 1, OWNER[:4])
    with pytest.raises(ValueError, match="outside 0..2"):
        recall_at_k(IMAGES, TEXTS, 1, OWNER + 1)
    with pytest.raises(ValueError, match="same d"):
        recall_at_k(IMAGES, np.zeros((3, 4)))


def test_any_caption_counts_for_image_to_text():
    """Each image has its exact copy and an unrelated caption: image->text R@1 is still 1."""
    rng = np.random.default_rng(1)
    img = rng.normal(size=(20, 32)).astype(np.float32)
    noise = rng.normal(size=(20, 32)).astype(np.float32)
    text = np.concatenate([noise, img])  # the matching captions come second
    owner = np.concatenate([np.arange(20), np.arange(20)])
    r = recall_at_k(img, text, (1,), owner)
    assert r["i2t"][1] == 1.0
    # text->image: the 20 exact copies hit; a noise caption hits only when its nearest image is its owner
    nearest = topk(noise, img, 1)[1][:, 0]
    assert r["t2i"][1] == pytest.approx((20 + int((nearest == np.arange(20)).sum())) / 40)


# -----------------------------------------------------------------------------
# against a brute-force reference on random data

def brute(q, keys, exclude_self=False):
    """All keys by cosine, best first, in float64: (scores, indices)."""
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    s = unit(np.atleast_2d(q).astype(np.float64)) @ unit(keys.astype(np.float64)).T
    if exclude_self:
        np.fill_diagonal(s, -np.inf)
    idx = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(s, idx, axis=1), idx


def test_topk_matches_brute_force(backend):
    rng = np.random.default_rng(2)
    q, keys = rng.normal(size=(37, 24)), 3 * rng.normal(size=(60, 24))
    ref_s, ref_i = brute(q, keys)
    for k, chunk in ((5, 8), (1, 4096), (60, 5), (100, 16)):  # chunks smaller than Q; k beyond len(keys)
        s, i = topk(q, keys, k, chunk=chunk, backend=backend)
        assert s.shape == i.shape == (37, min(k, 60))
        np.testing.assert_array_equal(i, ref_i[:, :k])
        np.testing.assert_allclose(s, ref_s[:, :k], atol=1e-5)
    s, i = topk(q[3], keys, 4, backend=backend)  # a 1-D query
    assert s.shape == i.shape == (4,)
    np.testing.assert_array_equal(i, ref_i[3, :4])
    np.testing.assert_allclose(s, ref_s[3, :4], atol=1e-5)
    # exclude_self: neighbours within one set, the row itself left out
    ref_s, ref_i = brute(keys, keys, exclude_self=True)
    s, i = topk(keys, keys, 6, chunk=7, backend=backend, exclude_self=True)
    np.testing.assert_array_equal(i, ref_i[:, :6])
    np.testing.assert_allclose(s, ref_s[:, :6], atol=1e-5)
    assert topk(keys, keys, 100, backend=backend, exclude_self=True)[1].shape == (60, 59)
    assert not (topk(keys, keys, 59, backend=backend, exclude_self=True)[1] == np.arange(60)[:, None]).any()


def test_exclude_self_with_duplicate_rows():
    """Rows 0 and 1 are the same vector: each still lists the other, never itself."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, 8))
    x[1] = x[0]
    for backend in ("torch", "numpy"):
        i = topk(x, x, 3, backend=backend, exclude_self=True)[1]
        assert i[0, 0] == 1 and i[1, 0] == 0, backend
        assert not (i == np.arange(10)[:, None]).any()
    # five equal rows: a row's own index can tie its way out of the k + 1 fetched (numpy's stable
    # argsort gives rows 3 and 4 the neighbours 0 and 1)
    i = topk(np.ones((5, 3)), np.ones((5, 3)), 1, backend="numpy", exclude_self=True)[1]
    np.testing.assert_array_equal(i[:, 0], [1, 0, 0, 0, 0])


def test_zero_rows_and_backend_errors(monkeypatch):
    keys = np.vstack([np.zeros(4), np.eye(4)[:3]])
    s, i = topk(np.zeros((2, 4)), keys, 4)
    assert np.isfinite(s).all() and (s == 0).all()  # a zero row has cosine 0 to everything, not NaN
    s, i = topk(np.eye(4)[1], keys, 2)
    assert i[0] == 2 and s.tolist() == [1.0, 0.0]
    assert np.isfinite(partner_ranks(keys, keys)["i2t"]).all()
    assert topk(keys, keys, 0)[1].shape == (4, 0) and topk(keys[:0], keys, 3)[0].shape == (0, 3)
    with pytest.raises(ValueError, match="backend"):
        topk(keys, keys, 1, backend="annoy")
    with pytest.raises(ValueError, match="exclude_self"):
        topk(keys[:2], keys, 1, exclude_self=True)
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if it were not installed
    assert not retrieval.faiss_available()
    with pytest.raises(RuntimeError, match="pip install faiss-cpu"):
        topk(keys, keys, 1, backend="faiss")
    monkeypatch.setattr(retrieval, "FAISS_MIN_KEYS", 2)  # auto falls back to torch
    x = np.random.default_rng(4).normal(size=(5, 4))
    np.testing.assert_array_equal(topk(x, x, 3)[1], brute(x, x)[1][:, :3])


def test_auto_uses_faiss_for_many_keys(monkeypatch):
    faiss = pytest.importorskip("faiss")
    calls, real = [], faiss.IndexFlatIP
    monkeypatch.setattr(faiss, "IndexFlatIP", lambda d: calls.append(d) or real(d))
    x = np.random.default_rng(4).normal(size=(20, 6))
    topk(x, x, 3)
    assert calls == []
    monkeypatch.setattr(retrieval, "FAISS_MIN_KEYS", 20)
    np.testing.assert_array_equal(topk(x, x, 3)[1], brute(x, x)[1][:, :3])
    assert calls == [6]


def random_set(seed: int, n: int = 40, d: int = 16):
    """n images, 1 to 3 noisy captions each (so retrieval is good but not perfect)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, d))
    owner = np.repeat(np.arange(n), rng.integers(1, 4, n))
    texts = images[owner] + 1.2 * rng.normal(size=(len(owner), d))
    return images, texts, owner


def test_partner_ranks_match_brute_force_and_recall():
    images, texts, owner = random_set(5)
    ranks = partner_ranks(images, texts, owner, chunk=7)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    s = unit(images) @ unit(texts).T  # float64, whole
    best_own = np.array([s[i, owner == i].max() for i in range(len(images))])
    np.testing.assert_array_equal(ranks["i2t"], 1 + (s > best_own[:, None]).sum(axis=1))
    own = s[owner, np.arange(len(owner))]
    np.testing.assert_array_equal(ranks["t2i"], 1 + (s.T > own[:, None]).sum(axis=1))
    assert 1 < ranks["i2t"].max() and 1 < ranks["t2i"].max() and ranks["t2i"].min() == 1  # neither all hits nor none

    rec = recall_at_k(images, texts, (1, 3, 10), owner)
    for k in (1, 3, 10):
        assert rec["i2t"][k] == pytest.approx((ranks["i2t"] <= k).mean())
        assert rec["t2i"][k] == pytest.approx((ranks["t2i"] <= k).mean())
    assert 0 < rec["t2i"][1] < rec["t2i"][3] < rec["t2i"][10] == 1  # a k where recall is neither 0 nor 1


def test_worst_pairs_finds_a_planted_bad_caption():
    images, texts, owner = random_set(6)
    texts[10] = images[25] + 0.01 * texts[10]  # caption 10 describes image 25, not its owner
    assert owner[10] != 25
    w = worst_pairs(images, texts, owner, limit=5)
    assert len(w) == 5
    first = w.iloc[0]
    assert first["caption"] == 10 and first["image"] == owner[10] and first["best_image"] == 25
    assert first["best_cosine"] > 0.99 and first["own_cosine"] < 0.5
    assert first["t2i_rank"] == partner_ranks(images, texts, owner)["t2i"][10] > 1
    assert w["t2i_rank"].is_monotonic_decreasing


# -----------------------------------------------------------------------------
# queries under the builtin model

@pytest.fixture(scope="module")
def loaded():
    from mmviz.models import load_model

    return load_model("builtin:shapes", device="cpu")


def test_text_query_is_the_caption_embedding(loaded):
    from mmviz.embed import encode_texts

    v = queries.text_query(loaded, "a red circle")
    assert v.shape == (loaded.embed_dim,)
    assert np.linalg.norm(v) == pytest.approx(1, abs=1e-5)
    np.testing.assert_array_equal(v, encode_texts(loaded, ["a red circle"])[0])
    for empty in ("", "  \n"):
        with pytest.raises(ValueError, match="empty"):
            queries.text_query(loaded, empty)


def test_image_query_is_the_dataset_embedding(loaded, tmp_path):
    from mmviz import synthetic
    from mmviz.embed import encode_images

    scene = synthetic.make_scene(0, "test", 3)
    path = tmp_path / "scene.png"
    scene.render().save(path)
    got = []
    encode_images(loaded, [str(path)], workers=0, on_batch=lambda idx, vecs, bad: got.append(vecs[0]))
    for image in (scene.render(), path, str(path), path.read_bytes()):
        v = queries.image_query(loaded, image)
        assert v.shape == (loaded.embed_dim,) and v.dtype == np.float32
        np.testing.assert_allclose(v, got[0], atol=1e-5)
    assert np.linalg.norm(v) == pytest.approx(1, abs=1e-5)


def test_text_query_retrieves_its_scene(loaded):
    from mmviz import synthetic

    scenes = synthetic.make_world(0, 0, 8, seed=7)["test"]
    images = np.stack([queries.image_query(loaded, s.render()) for s in scenes])
    nearest = [int(topk(queries.text_query(loaded, s.captions[0]), images, 1)[1][0]) for s in scenes]
    # measured 8 of 8 at rank 1 (chance: 1 in 8 each)
    assert sum(i == j for i, j in enumerate(nearest)) >= 7, nearest


def test_image_query_refuses_oversize_images(loaded, tmp_path, monkeypatch):
    from mmviz import synthetic

    image = synthetic.make_scene(0, "test", 0).render()  # 64 x 64 = 4,096 pixels
    path = tmp_path / "scene.png"
    image.save(path)
    monkeypatch.setenv("MMVIZ_MAX_PIXELS", "4000")
    for source in (image, path, path.read_bytes()):
        with pytest.raises(ValueError, match=r"64x64 = 4,096 pixels > limit 4,000"):
            queries.image_query(loaded, source)
    monkeypatch.setenv("MMVIZ_MAX_PIXELS", "4096")
    assert queries.image_query(loaded, path).shape == (loaded.embed_dim,)
    with pytest.raises(ValueError, match="unreadable image"):
        queries.image_query(loaded, b"not an image")


def test_one_pass_both_ways_equals_two_topk_calls():
    from mmviz.retrieval import _topk_both_ways, _unit

    rng = np.random.default_rng(7)
    a, b = _unit(rng.normal(size=(300, 16))), _unit(rng.normal(size=(70, 16)))
    for chunk in (1000, 64, 7):  # one block, several, and blocks smaller than k
        rows, cols = _topk_both_ways(a, b, 10, chunk=chunk)
        np.testing.assert_array_equal(rows, topk(a, b, 10, backend="numpy")[1])
        np.testing.assert_array_equal(cols, topk(b, a, 10, backend="numpy")[1])
    rows, cols = _topk_both_ways(a[:3], b, 10)  # fewer rows of a than k
    np.testing.assert_array_equal(cols, topk(b, a[:3], 10, backend="numpy")[1])
