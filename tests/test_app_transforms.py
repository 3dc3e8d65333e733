"""Transforms page through Streamlit's AppTest: the table's numbers are the core's."""
import numpy as np
import pytest

from conftest import embedded_demo, open_page
from mmviz import geometry, transforms
from mmviz.store import Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GAP = geometry.METRICS["gap_length"][0]


def table(at) -> dict[str, tuple[float, float]]:
    t = at.dataframe[0].value  # the page's only table
    return {m: (b, a) for m, b, a in zip(t["metric"], t["before"], t["after"])}


def expected(emb, kind: str, **params) -> dict:
    images, texts = transforms.make(kind, **params).fit_transform(emb.image, emb.text)
    return transforms.evaluate(images, texts, emb.text_owner, max_n=2048)


def test_unembedded_set_offers_to_embed(app_home):
    from mmviz.builtin import make_demo

    make_demo(Workspace(app_home), n=20)
    at = open_page("transforms")
    assert any("not embedded under builtin:shapes yet" in i.value for i in at.info)
    at.button(key="tf_embed").click().run()
    assert not at.exception, at.exception
    assert table(at)[GAP][1] < 0.1


def test_collapse_table_and_both_plots(app_home):
    _, emb = embedded_demo(app_home)
    at = open_page("transforms")
    rows = table(at)
    assert len(rows) == len(geometry.METRICS) + 6
    want_before = transforms.evaluate(emb.image, emb.text, emb.text_owner, max_n=2048)
    want_after = expected(emb, "collapse")
    for key, (label, _) in {**geometry.METRICS, **transforms.RECALL_METRICS}.items():
        assert rows[label][0] == pytest.approx(want_before[key], abs=1e-9), label
        assert rows[label][1] == pytest.approx(want_after[key], abs=1e-9), label
    assert rows[GAP][0] > 0.3 and rows[GAP][1] < 0.1
    assert len(at.get("plotly_chart")) == 2  # before and after

    at.slider(key="tf_strength").set_value(0.5).run()
    half = table(at)[GAP][1]
    assert rows[GAP][1] < half < rows[GAP][0]
    assert half == pytest.approx(expected(emb, "collapse", strength=0.5)["gap_length"], abs=1e-9)
    at.slider(key="tf_strength").set_value(1.0)
    at.toggle(key="tf_renorm").set_value(False).run()
    assert not at.exception, at.exception
    assert table(at)[GAP][1] == pytest.approx(expected(emb, "collapse", renormalise=False)["gap_length"], abs=1e-9)


def test_shift_slider_closes_or_widens_the_gap(app_home):
    _, emb = embedded_demo(app_home)
    at = open_page("transforms")
    at.radio(key="tf_kind").set_value("Shift").run()
    assert not at.exception, at.exception
    gap_all = float(np.linalg.norm(emb.image.mean(0) - emb.text.mean(0)))
    assert at.slider(key="tf_lam").value == pytest.approx(round(gap_all, 2))  # starts at the gap's length
    before, after = table(at)[GAP]
    assert after < 0.5 * before
    at.slider(key="tf_lam").set_value(-0.5).run()
    before, after = table(at)[GAP]
    assert after > before + 0.1
    assert after == pytest.approx(expected(emb, "shift", lam=-0.5)["gap_length"], abs=1e-9)


def test_corrupt_without_noise_changes_nothing_and_noise_lowers_recall(app_home):
    _, emb = embedded_demo(app_home)
    at = open_page("transforms")
    at.radio(key="tf_kind").set_value("Corrupt").run()
    at.slider(key="tf_sigma").set_value(0.0).run()
    assert not at.exception, at.exception
    for label, (b, a) in table(at).items():
        assert a == pytest.approx(b, abs=1e-9), label
    at.slider(key="tf_sigma").set_value(0.2).run()
    rows = table(at)
    r1 = transforms.RECALL_METRICS["i2t_r1"][0]
    assert rows[r1][1] < rows[r1][0]
    want = expected(emb, "corrupt", sigma=0.2, seed=0, modalities=("image", "text"))
    assert rows[r1][1] == pytest.approx(want["i2t_r1"], abs=1e-9)


def test_refit_and_other_projections(app_home):
    embedded_demo(app_home, n=30)
    at = open_page("transforms")
    for label in ("PCA 2D", "DOSNES sphere", "PCA 3D"):
        at.radio(key="tf_method").set_value(label).run()
        assert not at.exception, at.exception
        assert len(at.get("plotly_chart")) == 2
    at.radio(key="tf_place").set_value("Refit on the result").run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 2


def test_headline_metrics_show_after_and_change(app_home):
    _, emb = embedded_demo(app_home)
    at = open_page("transforms")
    shown = {m.label: (m.value, m.delta) for m in at.metric}
    before = transforms.evaluate(emb.image, emb.text, emb.text_owner, max_n=2048)
    after = expected(emb, "collapse")
    assert shown[GAP] == (f"{after['gap_length']:.3f}", f"{round(after['gap_length'] - before['gap_length'], 3):+.3f}")
    assert set(shown) == {GAP, "Image→text R@1", geometry.METRICS["uniformity_union"][0],
                          geometry.METRICS["relative_alignment"][0]}
