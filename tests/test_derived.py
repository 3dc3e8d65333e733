"""Transforms applied chunk by chunk and stored in the workspace (mmviz.derived): the stored,
memory-mapped rows are the in-memory transform's, whatever the chunking."""
from __future__ import annotations

import numpy as np
import pytest

from mmviz import arrays, derived, transforms
from mmviz.sphere import normalise
from mmviz.transforms import Collapse, Corrupt, Shift, make


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Chunks of 7 rows: 50 images and 80 captions take 8 and 12 chunks."""
    monkeypatch.setattr(transforms, "rows_per_chunk", lambda *a, **k: 7)


def gapped(seed: int = 0, n: int = 50, m: int = 80, d: int = 6):
    rng = np.random.default_rng(seed)
    im = normalise(rng.normal(size=(n, d)) + 2.0)
    tx = normalise(rng.normal(size=(m, d)) - 1.0)
    return im.astype(np.float32), tx.astype(np.float32)


def memmaps(tmp_path, im, tx):
    np.save(tmp_path / "i.npy", im)
    np.save(tmp_path / "t.npy", tx)
    return arrays.open_array(tmp_path / "i.npy"), arrays.open_array(tmp_path / "t.npy")


def test_fitted_means_are_the_numpy_means_of_a_memmap(tmp_path, tiny_chunks):
    im, tx = gapped()
    mi, mt = memmaps(tmp_path, im, tx)
    c = Collapse().fit(mi, mt)
    np.testing.assert_allclose(c.image_mean_, im.astype(np.float64).mean(0), rtol=0, atol=1e-15)
    np.testing.assert_allclose(c.text_mean_, tx.astype(np.float64).mean(0), rtol=0, atol=1e-15)
    s = Shift(0.3).fit(mi, mt)
    assert s.gap_length_ == pytest.approx(np.linalg.norm(im.mean(0, dtype=np.float64) - tx.mean(0, dtype=np.float64)))


def test_corrupt_in_chunks_draws_the_whole_arrays_noise(tiny_chunks):
    """Images' noise first, then the captions', each in row order: one draw per array."""
    im, tx = gapped(1)
    ci, ct = Corrupt(sigma=0.2, seed=5, modalities=("text",)).fit_transform(im, tx)
    rng = np.random.default_rng(5)
    rng.normal(0.0, 0.2, im.shape)  # drawn for the images too, though they get none
    want_t = normalise(tx.astype(np.float64) + rng.normal(0.0, 0.2, tx.shape))
    np.testing.assert_allclose(ct, want_t, atol=1e-6)
    np.testing.assert_allclose(ci, normalise(im.astype(np.float64)), atol=1e-6)


@pytest.mark.parametrize("kind, params", [("collapse", {"strength": 0.7}), ("shift", {"lam": 0.9}),
                                          ("corrupt", {"sigma": 0.1, "seed": 2}),
                                          ("collapse", {"renormalise": False})])
def test_stored_transform_is_the_in_memory_transform(tmp_path, kind, params, monkeypatch):
    im, tx = gapped(2)
    want_i, want_t = make(kind, **params).fit_transform(im, tx)  # one chunk: the whole arrays
    monkeypatch.setattr(transforms, "rows_per_chunk", lambda *a, **k: 7)
    mi, mt = memmaps(tmp_path, im, tx)
    seen = []
    got = derived.transformed(tmp_path / "home", {"dataset": "d", "model": "m", "kind": kind, **params},
                              make(kind, **params), mi, mt, progress=lambda d, t: seen.append((d, t)))
    assert isinstance(got.image, np.memmap) and not got.image.flags.writeable and not got.hit
    assert got.image.dtype == got.text.dtype == np.float32  # a small set keeps every digit
    np.testing.assert_array_equal(got.image, want_i)
    np.testing.assert_array_equal(got.text, want_t)
    assert seen[0] == (0, 260) and seen[-1] == (260, 260)  # fit pass + write pass over 130 rows
    if kind == "shift":
        assert got.info["fitted"]["gap_length_"] == pytest.approx(Shift(0).fit(im, tx).gap_length_)
    again = derived.transformed(tmp_path / "home", {"dataset": "d", "model": "m", "kind": kind, **params},
                                make(kind, **params), mi, mt)
    assert again.hit and again.path == got.path
    np.testing.assert_array_equal(again.text, want_t)


def test_large_sets_are_stored_in_float16(tmp_path, monkeypatch):
    monkeypatch.setattr(arrays, "AUTO_FLOAT16_BYTES", 0)  # as if the set took more than 1 GiB
    im, tx = gapped(3)
    got = derived.transformed(tmp_path, {"x": 1}, Collapse(), im, tx)
    assert got.image.dtype == np.float16 and got.info["dtype"] == "float16"
    want_i, _ = Collapse().fit_transform(im, tx)
    np.testing.assert_allclose(got.image.astype(np.float32), want_i, atol=1e-3)


def test_only_the_most_recent_variants_are_kept_and_failures_leave_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(derived, "MAX_KEPT", 2)
    im, tx = gapped(4)
    paths = [derived.transformed(tmp_path, {"lam": lam}, Shift(lam), im, tx).path for lam in (0.1, 0.2)]
    derived.transformed(tmp_path, {"lam": 0.1}, Shift(0.1), im, tx)  # used again: now the most recent
    third = derived.transformed(tmp_path, {"lam": 0.3}, Shift(0.3), im, tx).path
    assert sorted(p.name for p in (tmp_path / "derived").iterdir()) == sorted([paths[0].name, third.name])
    bad = tx.copy()
    bad[60, 2] = np.nan
    with pytest.raises(ValueError, match="texts: contains NaN"):
        derived.transformed(tmp_path, {"lam": 0.4}, Shift(0.4), im, bad)
    assert sorted(p.name for p in (tmp_path / "derived").iterdir()) == sorted([paths[0].name, third.name])


def test_a_killed_writers_staging_goes_a_running_ones_stays(tmp_path):
    """kill -9 leaves a staging folder and its unheld lock file: the next write removes them.
    A writer still running holds its lock, so its folder stays."""
    from mmviz.atomic import StagingFolder

    im, tx = gapped(6)
    root = tmp_path / "derived"
    root.mkdir()
    dead = root / ".staging-0123456789ab"
    dead.mkdir()
    (dead / "image.npy").write_bytes(b"half")
    (root / ".staging-0123456789ab.lock").touch()
    running = StagingFolder(root)
    got = derived.transformed(tmp_path, {"lam": 0.5}, Shift(0.5), im, tx)
    left = sorted(p.name for p in root.iterdir())
    assert left == sorted([got.path.name, running.path.name, running.path.name + ".lock"])
    running.close()
    assert [p.name for p in root.iterdir()] == [got.path.name]


def test_release_pages_drops_a_read_map_from_the_resident_set(tmp_path):
    """Linux: RssFile counts the mapped file pages this process touched; after release_pages
    they are gone from it, and the values read back the same."""
    from pathlib import Path

    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("no /proc (not Linux)")

    def rss_file() -> int:
        return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("RssFile:"))

    x = np.random.default_rng(0).normal(size=(16384, 512)).astype(np.float32)  # 32 MB
    np.save(tmp_path / "x.npy", x)
    m = arrays.open_array(tmp_path / "x.npy")
    before = rss_file()
    total = float(m.sum(dtype=np.float64))  # touches every page
    touched = rss_file()
    assert touched - before > 24_000  # kB: most of the 32 MB is now resident
    arrays.release_pages(m, x)  # x is no map: left alone
    assert rss_file() < touched - 24_000
    assert float(m.sum(dtype=np.float64)) == total  # read back from the page cache, unchanged
    rows = np.arange(0, 16384, 97)
    got = arrays.gather_rows(m, rows)  # scattered rows, then the map's pages let go
    assert not isinstance(got, np.memmap) and np.array_equal(got, x[rows])
    assert rss_file() < touched - 24_000


def test_fit_from_known_means_is_fit_on_the_rows():
    im, tx = gapped(5)
    mi, mt = transforms.means(im, tx)
    for kind, params in (("collapse", {"strength": 0.4}), ("shift", {"lam": 0.7}), ("corrupt", {"sigma": 0.1})):
        a = make(kind, **params).fit(im, tx).transform(im, tx)
        b = make(kind, **params).fit_means(mi, mt).transform(im, tx)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="two \\(d,\\) vectors"):
        Shift(1.0).fit_means(mi, mt[:3])


def test_a_view_of_a_map_and_a_geometry_pass_let_its_pages_go(tmp_path, monkeypatch):
    """release_pages follows a view (np.asarray of a map, a slice) to its map; geometry's
    streaming passes let pages go as they read, so a pass over a map leaves it out of RSS."""
    from pathlib import Path

    from mmviz import geometry

    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("no /proc (not Linux)")

    def rss_file() -> int:
        return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("RssFile:"))

    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", rng.normal(size=(16384, 512)).astype(np.float32))  # 32 MB each
    a, b = arrays.open_array(tmp_path / "a.npy"), arrays.open_array(tmp_path / "b.npy")
    view = np.asarray(a)[100:]
    assert not isinstance(view, np.memmap)
    before = rss_file()
    float(view.sum(dtype=np.float64))
    touched = rss_file()
    assert touched - before > 24_000
    arrays.release_pages(view)
    assert rss_file() < touched - 24_000
    # a copy-on-write map keeps its pages: dropping them would drop the caller's changes
    cow = np.load(tmp_path / "b.npy", mmap_mode="c")
    cow[0] = 7.0
    arrays.release_pages(cow, np.asarray(cow))
    assert (cow[0] == 7.0).all()
    # a pass in chunks of 1,024 rows, letting go every 2 chunks
    monkeypatch.setattr(geometry.streaming, "ROWS", 1024)
    monkeypatch.setattr(geometry.streaming, "RELEASE_EVERY", 2)
    seen = []
    real = geometry.streaming._unit
    monkeypatch.setattr(geometry.streaming, "_unit", lambda rows, *k: (seen.append(rss_file()), real(rows, *k))[1])
    base = rss_file()
    want = geometry.paired_cosines(a, b)
    assert max(seen) - base < 36_000  # kB: 2 threads x 2 maps x 2 chunks of 2 MB at most, of the 64 MB read
    assert rss_file() - base < 4_000  # and nothing left after the pass
    # the projections' chunked reads (Rows) too, and their sorted gathers
    from mmviz.projection.rows import Rows

    base, seen = rss_file(), []
    total = sum(float(block.sum(dtype=np.float64)) for _, block in Rows(a, b).chunks(1024) if not seen.append(rss_file()))
    assert max(seen) - base < 12_000 and rss_file() - base < 4_000  # kB: a block or two of 4 MB, of 64 MB read
    assert total == pytest.approx(float(np.load(tmp_path / "a.npy").sum(dtype=np.float64)
                                        + np.load(tmp_path / "b.npy").sum(dtype=np.float64)), rel=1e-12)
    taken = Rows(a, b).take(np.arange(0, 32768, 3))
    assert rss_file() - base < 4_000 and np.array_equal(taken[:10], np.asarray(a)[0:30:3])
    unit = [x / np.linalg.norm(x, axis=1, keepdims=True)
            for x in (np.load(tmp_path / f"{name}.npy").astype(np.float64) for name in ("a", "b"))]
    np.testing.assert_allclose(want, np.einsum("ij,ij->i", *unit), rtol=0, atol=1e-12)  # what was read is right
