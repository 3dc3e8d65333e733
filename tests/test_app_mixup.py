"""Mixup page through Streamlit's AppTest: the path, the neighbours and the hardness numbers."""
import re

import numpy as np
import pytest

from conftest import embedded_demo, open_page
from mmviz.transforms import mixed_negative_cosines, slerp

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def markdown(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_mixup_page_on_the_demo(app_home):
    _, emb = embedded_demo(app_home)
    at = open_page("mixup")
    assert len(at.get("plotly_chart")) == 3  # the great circle, the hardness histogram and curve
    # Default: the first image with its own first caption, lam = 0.5.
    assert at.selectbox(key="mx_image").value == 0
    assert emb.text_owner[at.selectbox(key="mx_text").value] == 0
    h = mixed_negative_cosines(emb.image, emb.paired_text, 0.5)
    gain = h["image_mixed"].mean() - h["image_text"].mean()
    assert gain > 0.05  # the builtin model has a gap, so mixes are harder negatives
    assert f"**{gain:+.3f}** closer" in markdown(at)

    # lam = 1: the mix is the image itself, its nearest image is that image with cosine 1.
    at.slider(key="mx_lam").set_value(1.0).run()
    assert not at.exception, at.exception
    captions = [img.caption for im in at.image for img in im.proto.imgs]
    assert captions[0] == f"{emb.ids[0]} · 1.000"  # first column (lam = 1), first neighbour


def test_the_caption_angle_and_any_caption(app_home):
    _, emb = embedded_demo(app_home)
    at = open_page("mixup")
    at.toggle(key="mx_any").set_value(True).run()
    at.selectbox(key="mx_other").set_value(5).run()  # pair 5, picked like the image
    other = int(np.flatnonzero(emb.text_owner == 5)[0])
    assert at.selectbox(key="mx_text").value == other  # its first caption
    assert at.selectbox(key="mx_text").options == [f"{emb.captions[j]}  ({emb.ids[5]})"
                                                   for j in np.flatnonzero(emb.text_owner == 5)]
    at.slider(key="mx_lam").set_value(0.3).run()
    assert not at.exception, at.exception
    a, b = emb.image[0].astype(np.float64), emb.text[other].astype(np.float64)
    theta = np.degrees(np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    text = " ".join(c.value for c in at.caption)
    assert f"Angle between them: {theta:.1f}°" in text
    assert f"is {0.7 * theta:.1f}° from the image" in text
    # The mix's nearest caption (the last column is lam = 0: the caption itself, cosine 1).
    assert f"1.000 · {emb.captions[other][:60]}" in markdown(at)
    mix = slerp(a, b, 0.3)
    assert np.degrees(np.arccos(np.clip(mix @ a / np.linalg.norm(a), -1, 1))) == pytest.approx(0.7 * theta, abs=0.05)


@pytest.mark.parametrize("view", ["DOSNES sphere", "PCA 3D"])
def test_the_path_in_a_layout(app_home, view):
    embedded_demo(app_home, n=20)
    at = open_page("mixup")
    at.radio(key="mx_view").set_value(view).run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 3
    assert re.search(r"placed into the dataset's layout", " ".join(c.value for c in at.caption))
