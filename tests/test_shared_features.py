"""Real CLIP features (Liang et al. 2022, 500 COCO pairs) imported as precomputed vectors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmviz.cli import main

FEATURES = Path(__file__).resolve().parents[2] / "shared/data/modality-gap-features"
CLIP = FEATURES / "features_clip.npy"

pytestmark = pytest.mark.skipif(not CLIP.is_file(), reason=f"shared features not present at {CLIP}")


def test_import_real_clip_features(workspace):
    raw = np.load(CLIP, allow_pickle=False)
    assert raw.shape == (2, 500, 512)
    res = workspace.import_path(CLIP)
    ds, report = res.dataset, res.report
    assert res.status == "created" and ds.name == "features_clip"
    assert report.kept == 500 and report.skipped == [] and len(ds) == 500
    assert ds.manifest["dim"] == 512 and ds.manifest["vector_model"] == "precomputed:features_clip"
    img, txt = ds.vectors()
    assert img.shape == (500, 512) and txt.shape == (500, 512) and img.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    for stored, src in ((img, raw[0]), (txt, raw[1])):
        expected = src / np.linalg.norm(src.astype(np.float64), axis=1, keepdims=True)
        np.testing.assert_allclose(stored, expected, atol=1e-5)
    assert ds.table()["id"].tolist() == [str(i) for i in range(500)]
    assert workspace.import_path(CLIP).status == "unchanged"


def test_cli_import_real_clip_features(tmp_path, capsys):
    rc = main(["--home", str(tmp_path / "home"), "import", str(CLIP), "--name", "clip", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out.splitlines()[0] == f"clip: imported. vectors from {CLIP}: kept 500 pairs, skipped 0 rows"
    assert "no captions for features_clip.npy" in err


@pytest.mark.parametrize("name", ["clip", "clasp", "convirt", "videoclip"])
def test_collapse_closes_the_real_gap(name):
    from mmviz import geometry
    from mmviz.transforms import Collapse, Shift

    raw = np.load(FEATURES / f"features_{name}.npy", allow_pickle=False).astype(np.float64)
    img, txt = (raw[k] / np.linalg.norm(raw[k], axis=1, keepdims=True) for k in (0, 1))
    before = geometry.gap_length(img, txt)
    assert before > 0.3  # each trained model has a visible gap (CLIP: 0.85)
    after = geometry.gap_length(*Collapse().fit_transform(img, txt))
    # CLIP: 0.85 -> 0.028. Re-normalising the centred rows leaves a little gap where their
    # lengths depend on direction: CLASP 1.04 -> 0.15, ConVIRT 0.82 -> 0.064.
    assert after < (0.05 if name == "clip" else 0.15 * before)
    # Shifting by the gap's own length closes most of it too.
    assert geometry.gap_length(*Shift(before).fit_transform(img, txt)) < 0.35 * before
