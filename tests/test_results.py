"""The workspace's result cache: metrics, cosine histograms and spectra of one set of embeddings."""
from __future__ import annotations

import numpy as np
import pytest

from mmviz import geometry, results
from mmviz.embed import stored_embeddings
from mmviz.store import Workspace


@pytest.fixture
def emb(tmp_path):
    """500 pairs of 24-d vectors with a gap, imported as vectors."""
    rng = np.random.default_rng(0)
    img = rng.normal(size=(500, 24)) + 0.5
    np.save(tmp_path / "v.npy", np.stack([img, img + rng.normal(size=img.shape) - 1.0]).astype(np.float32))
    ws = Workspace(tmp_path / "home")
    ws.import_path(tmp_path / "v.npy", "v")
    ds = ws.open("v")
    return ws.home, stored_embeddings(ws, ds, ds.manifest["vector_model"])


def test_metrics_store_the_spectra_and_histograms_of_the_same_passes(emb, monkeypatch):
    home, emb = emb
    m, hit = results.metrics(home, emb)
    assert not hit and m == pytest.approx(geometry.all_metrics(emb.image, emb.paired_text), rel=1e-12, abs=1e-14)
    # the panels beside the metrics now read files: computing them again would be a failure here
    for name in ("paired_cosines", "unpaired_cosines", "spectrum", "joint_spectrum"):
        monkeypatch.setattr(geometry, name, lambda *a, **k: pytest.fail("recomputed"))
    spec, hit = results.spectra(home, emb)
    assert hit
    monkeypatch.undo()
    np.testing.assert_allclose(spec["images"], geometry.spectrum(emb.image), atol=1e-14)
    np.testing.assert_allclose(spec["texts"], geometry.spectrum(emb.paired_text), atol=1e-14)
    np.testing.assert_allclose(spec["joint"], geometry.joint_spectrum(emb.image, emb.paired_text), atol=1e-14)
    hist, hit = results.cosine_histograms(home, emb)
    assert hit
    # the same histogram as computed on its own, in a workspace that has no metrics yet
    alone, hit = results.cosine_histograms(home.parent / "other", emb)
    assert not hit and set(alone) == set(hist)
    for k in alone:
        np.testing.assert_array_equal(hist[k], alone[k])
    assert int(hist["paired"].sum()) == 500 and int(hist["unpaired"].sum()) == 100_000  # of 500 * 499 cells


def test_another_seed_leaves_the_seed_0_histogram_to_be_computed(emb):
    home, emb = emb
    results.metrics(home, emb, seed=4)
    assert results.spectra(home, emb)[1]  # the spectra do not depend on the seed
    hist, hit = results.cosine_histograms(home, emb)
    assert not hit  # its unpaired cells are seed 0's, not seed 4's
    np.testing.assert_array_equal(hist["paired"], np.histogram(geometry.paired_cosines(emb.image, emb.paired_text),
                                                               hist["edges"])[0])
