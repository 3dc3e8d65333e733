"""Retrieval over keys read in blocks (memory maps, float16, sampled queries): the same answers
as a float64 brute force over everything, restricted where a sample is asked for."""
from __future__ import annotations

import numpy as np
import pytest

from mmviz import retrieval
from mmviz.retrieval import partner_ranks, query_sample, recall_at_k, topk, worst_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def unit64(a):
    a = np.asarray(a, dtype=np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def brute(q, keys):
    s = unit64(np.atleast_2d(q)) @ unit64(keys).T
    idx = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(s, idx, axis=1), idx


def memmap(tmp_path, name, x, dtype):
    np.save(tmp_path / f"{name}.npy", np.asarray(x, dtype=dtype))
    return np.load(tmp_path / f"{name}.npy", mmap_mode="r")


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 7 rows, so 60 keys take 9 blocks (the last one short)."""
    monkeypatch.setattr(retrieval, "_block_rows", lambda dim: 7)


def random_set(seed: int, n: int = 60, d: int = 12):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, d)) * rng.uniform(0.2, 5, size=(n, 1))  # norms differ: cosine ignores them
    owner = np.repeat(np.arange(n), rng.integers(1, 3, n))
    texts = images[owner] + 1.5 * rng.normal(size=(len(owner), d))
    return images, texts, owner


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_key_blocks_give_the_brute_force_top_k(tmp_path, backend, monkeypatch):
    if backend == "faiss":
        pytest.importorskip("faiss")
        monkeypatch.setattr(retrieval, "FAISS_MAX_BYTES", 0)  # faiss.knn per block, not one index
    rng = np.random.default_rng(0)
    q, keys = rng.normal(size=(9, 16)), 3 * rng.normal(size=(60, 16))
    ref_s, ref_i = brute(q, keys)
    mm = memmap(tmp_path, "keys", keys, np.float32)
    for k in (1, 5, 10, 60):  # k beyond one block, k = every key
        for block in (7, 16, 1000):
            s, i = topk(q, mm, k, backend=backend, block_rows=block)
            np.testing.assert_array_equal(i, ref_i[:, :k], err_msg=f"k={k} block={block}")
            np.testing.assert_allclose(s, ref_s[:, :k], atol=1e-5)
    s, i = topk(keys, mm, 4, backend=backend, block_rows=7, exclude_self=True)  # query blocks too
    assert not (i == np.arange(60)[:, None]).any()
    s_all = unit64(keys) @ unit64(keys).T
    np.fill_diagonal(s_all, -np.inf)
    np.testing.assert_array_equal(i, np.argsort(-s_all, axis=1, kind="stable")[:, :4])


def test_progress_counts_every_query_key_pair(small_blocks):
    rng = np.random.default_rng(1)
    seen = []
    topk(rng.normal(size=(3, 4)), rng.normal(size=(20, 4)), 2, backend="torch", progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (60, 60) and len(seen) == 3  # 20 keys in blocks of 7: 3 blocks


def test_float16_memmap_one_query_takes_the_float16_route_and_stays_exact(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    keys = rng.normal(size=(500, 32)) * rng.uniform(0.1, 10, size=(500, 1))
    keys[17] = 0  # a zero row: cosine 0, never NaN
    mm = memmap(tmp_path, "keys16", keys, np.float16)
    stored = mm.astype(np.float64)  # the float16 values are the keys now
    q = rng.normal(size=(2, 32))
    calls = []
    real = retrieval._topk_coarse
    monkeypatch.setattr(retrieval, "_topk_coarse", lambda *a: calls.append(1) or real(*a))
    first = topk(q, mm, 10, block_rows=64)  # reads every key in float32 and keeps their norms
    assert calls == []
    again = topk(q, mm, 10, block_rows=64)
    assert calls == [1]  # norms known: float16 scores, then float32 for the few candidates
    ref_s, ref_i = brute(q, stored)
    for s, i in (first, again):
        np.testing.assert_array_equal(i, ref_i[:, :10])
        np.testing.assert_allclose(s, ref_s[:, :10], atol=1e-5)
    s1, i1 = topk(q[0], mm, 3, block_rows=64)  # a 1-D query
    np.testing.assert_array_equal(i1, ref_i[0, :3])
    # Too many keys the float16 scores cannot rule out (all equal): every key in float32 instead.
    same = memmap(tmp_path, "same", np.ones((300, 8)), np.float16)
    topk(q[:1, :8], same, 3, block_rows=64)
    monkeypatch.setattr(retrieval, "COARSE_MAX_CANDIDATES", 5)
    s, i = topk(q[:1, :8], same, 3, block_rows=64)
    assert len(calls) == 3 and s.shape == (1, 3) and np.allclose(s, s[0, 0])


def test_sampled_recall_is_the_full_recall_restricted_to_the_sample(small_blocks):
    images, texts, owner = random_set(3)
    qi, qt = query_sample(len(images), 25, seed=4), query_sample(len(texts), 25, seed=4)
    assert len(qi) == 25 and np.all(np.diff(qi) > 0) and np.array_equal(qi, query_sample(len(images), 25, seed=4))
    got = recall_at_k(images, texts, (1, 3, 10), owner, queries=25, seed=4)
    s = unit64(images) @ unit64(texts).T
    i2t = np.argsort(-s[qi], axis=1, kind="stable")  # sampled images against every caption
    t2i = np.argsort(-s.T[qt], axis=1, kind="stable")
    for k in (1, 3, 10):
        assert got["i2t"][k] == pytest.approx((owner[i2t[:, :k]] == qi[:, None]).any(axis=1).mean())
        assert got["t2i"][k] == pytest.approx((t2i[:, :k] == owner[qt][:, None]).any(axis=1).mean())
    assert 0 < got["t2i"][1] < 1
    full = recall_at_k(images, texts, (1, 3), owner)
    assert recall_at_k(images, texts, (1, 3), owner, queries=10_000) == full  # more queries than rows: all
    assert full == recall_at_k(images, texts, (1, 3), owner, queries=None)


def test_memmaps_read_in_blocks_give_the_in_memory_recall_and_ranks(tmp_path, monkeypatch):
    images, texts, owner = random_set(5)
    want = recall_at_k(images.astype(np.float32), texts.astype(np.float32), (1, 5), owner)
    want_ranks = partner_ranks(images.astype(np.float32), texts.astype(np.float32), owner)
    monkeypatch.setattr(retrieval, "IN_MEMORY_BYTES", 0)  # as if too large for the one-pass path
    monkeypatch.setattr(retrieval, "_block_rows", lambda dim: 16)
    mi, mt = memmap(tmp_path, "i", images, np.float32), memmap(tmp_path, "t", texts, np.float32)
    assert recall_at_k(mi, mt, (1, 5), owner) == want
    ranks = partner_ranks(mi, mt, owner)
    np.testing.assert_array_equal(ranks["i2t"], want_ranks["i2t"])
    np.testing.assert_array_equal(ranks["t2i"], want_ranks["t2i"])


def test_ranks_of_a_few_pairs_are_the_full_ranks_of_those_pairs(small_blocks):
    images, texts, owner = random_set(6)
    full = partner_ranks(images, texts, owner)
    s = unit64(images) @ unit64(texts).T  # independent: float64, whole
    best_own = np.array([s[i, owner == i].max() for i in range(len(images))])
    np.testing.assert_array_equal(full["i2t"], 1 + (s > best_own[:, None]).sum(axis=1))
    rows = np.array([3, 40, 11])
    part = partner_ranks(images, texts, owner, rows=rows)
    np.testing.assert_array_equal(part["i2t"], full["i2t"][rows])
    caps = np.flatnonzero(np.isin(owner, rows))
    np.testing.assert_array_equal(part["captions"], caps)
    np.testing.assert_array_equal(part["t2i"], full["t2i"][caps])


def test_duplicate_of_an_own_caption_does_not_rank_above_it():
    rng = np.random.default_rng(7)
    images = rng.normal(size=(4, 8)).astype(np.float32)
    texts = images + 0.1 * rng.normal(size=(4, 8)).astype(np.float32)
    texts = np.vstack([texts, texts[2:3]])  # caption 4 (image 3's) is caption 2 (image 2's) again
    owner = np.array([0, 1, 2, 3, 3])
    r = partner_ranks(images, texts, owner)
    assert r["i2t"][2] == 1  # the copy ties with image 2's own caption: no caption ranks above it


def test_sampled_worst_pairs_are_the_worst_of_the_sample(small_blocks):
    images, texts, owner = random_set(8)
    texts[5] = images[owner[5] + 1] * 2  # caption 5 describes another image
    full = partner_ranks(images, texts, owner)["t2i"]
    rows = query_sample(len(texts), 30, seed=1)
    w = worst_pairs(images, texts, owner, limit=8, queries=30, seed=1)
    assert set(w["caption"]) <= set(rows)
    np.testing.assert_array_equal(w["t2i_rank"], full[w["caption"]])
    assert w["t2i_rank"].is_monotonic_decreasing
    assert w["t2i_rank"].iloc[0] == full[rows].max()
    assert w["image"].tolist() == owner[w["caption"]].tolist()
    s = unit64(texts) @ unit64(images).T
    np.testing.assert_array_equal(w["best_image"], s[w["caption"]].argmax(axis=1))
    np.testing.assert_allclose(w["own_cosine"], s[w["caption"], w["image"]], atol=1e-6)
    every = worst_pairs(images, texts, owner, limit=len(texts)).set_index("caption")
    assert every.loc[5, "best_image"] == owner[5] + 1 and every.loc[5, "t2i_rank"] > 1


def test_query_sample_and_default_queries():
    assert query_sample(5, None).tolist() == [0, 1, 2, 3, 4]
    assert query_sample(5, 9).tolist() == [0, 1, 2, 3, 4]
    assert len(set(query_sample(1000, 10, seed=2))) == 10
    assert query_sample(1000, 10, seed=2).tolist() != query_sample(1000, 10, seed=3).tolist()
    with pytest.raises(ValueError, match="at least 1"):
        query_sample(5, 0)
    assert retrieval.default_queries(10_000) is None and retrieval.default_queries(10_001) == 10_000


def test_ranks_of_one_pair_over_float16_keys_take_the_float16_route(tmp_path, monkeypatch):
    images, texts, owner = random_set(9, n=400, d=24)
    mi, mt = memmap(tmp_path, "i16", images, np.float16), memmap(tmp_path, "t16", texts, np.float16)
    full = partner_ranks(mi, mt, owner)  # every pair: float32 blocks (and the keys' norms kept)
    calls = []
    real = retrieval._rank_coarse
    monkeypatch.setattr(retrieval, "_rank_coarse", lambda *a: calls.append(1) or real(*a))
    for row in (0, 17, 399):
        one = partner_ranks(mi, mt, owner, rows=[row])
        assert one["i2t"][0] == full["i2t"][row]
        np.testing.assert_array_equal(one["t2i"], full["t2i"][one["captions"]])
    assert len(calls) >= 3  # the image's own pass at least; two-caption rows go the float32 way for t2i
    w = worst_pairs(mi, mt, owner, limit=3, queries=1, seed=4)  # one caption: float16 route, nearest image too
    s = unit64(mt.astype(np.float64)) @ unit64(mi.astype(np.float64)).T
    j = int(w["caption"].iloc[0])
    assert w["best_image"].iloc[0] == s[j].argmax() and w["best_cosine"].iloc[0] == pytest.approx(s[j].max(), abs=1e-5)
    assert w["t2i_rank"].iloc[0] == full["t2i"][j]
