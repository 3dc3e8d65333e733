"""recall_at_k on examples worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from mmviz.retrieval import _topk_indices, recall_at_k


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


def test_hand_computed_example():
    r = recall_at_k(IMAGES, TEXTS, OWNER, ks=(1, 2, 3))
    assert r["i2t"] == {1: 0.0, 2: pytest.approx(2 / 3), 3: 1.0}
    assert r["t2i"] == {1: pytest.approx(1 / 5), 2: pytest.approx(4 / 5), 3: 1.0}


def test_hand_computed_rankings():
    np.testing.assert_array_equal(_topk_indices(IMAGES, TEXTS, 5), [[2, 0, 3, 4, 1], [3, 0, 2, 1, 4],
                                                                    [1, 4, 3, 0, 2]])
    np.testing.assert_array_equal(_topk_indices(TEXTS, IMAGES, 2), [[1, 0], [2, 1], [0, 1], [1, 2], [2, 0]])
    # chunking over queries changes nothing
    np.testing.assert_array_equal(_topk_indices(TEXTS, IMAGES, 3, chunk=2), _topk_indices(TEXTS, IMAGES, 3))


def test_k_beyond_the_number_of_keys():
    r = recall_at_k(IMAGES, TEXTS, OWNER, ks=(1, 10))
    assert r["i2t"][10] == 1.0 and r["t2i"][10] == 1.0  # 5 captions, 3 images: everything is retrieved
    assert r["i2t"][1] == 0.0


def test_perfect_retrieval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16)).astype(np.float32)
    r = recall_at_k(x, x.copy(), np.arange(50))
    assert r == {"i2t": {1: 1.0, 5: 1.0, 10: 1.0}, "t2i": {1: 1.0, 5: 1.0, 10: 1.0}}


def test_any_caption_counts_for_image_to_text():
    """Each image has its exact copy and an unrelated caption: image->text R@1 is still 1."""
    rng = np.random.default_rng(1)
    img = rng.normal(size=(20, 32)).astype(np.float32)
    noise = rng.normal(size=(20, 32)).astype(np.float32)
    text = np.concatenate([noise, img])  # the matching captions come second
    owner = np.concatenate([np.arange(20), np.arange(20)])
    r = recall_at_k(img, text, owner, ks=(1,))
    assert r["i2t"][1] == 1.0
    # text->image: the 20 exact copies hit; a noise caption hits only when its nearest image is its owner
    nearest = _topk_indices(noise, img, 1)[:, 0]
    assert r["t2i"][1] == pytest.approx((20 + int((nearest == np.arange(20)).sum())) / 40)
