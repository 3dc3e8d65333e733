"""Retrieval page through Streamlit's AppTest.

AppTest cannot drive st.file_uploader, so the image-query path is tested through a dataset
image (its stored vector); image_query itself is tested in test_retrieval.py."""
import re

import numpy as np
import pytest

from conftest import embedded_demo, open_page
from mmviz.builtin import make_demo
from mmviz.embed import embed_dataset
from mmviz.retrieval import partner_ranks, recall_at_k, worst_pairs
from mmviz.store import Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")
IMAGE_CARD = re.compile(r"^#(\d+) · \*\*(?P<score>-?\d\.\d{3})\*\*  \n`(?P<id>[^`]+)`$")
CAPTION_CARD = re.compile(r"^#(\d+) · \*\*(-?\d\.\d{3})\*\* · (.*)  \n`([^`]+)`( · ✓ own caption)?$", re.S)


@pytest.fixture
def demo(app_home):
    return embedded_demo(app_home, n=40)


def retrieval_page():
    return open_page("retrieval")


def image_cards(at, where: str = "ret_results") -> list[tuple[int, str, float]]:
    """(rank, id, score) of the image cards in a part of the page (the query results), by rank (the
    grid's columns come first in the element tree)."""
    block = at.get_by_key(where)
    return sorted((int(m[1]), m["id"], float(m["score"])) for m in (IMAGE_CARD.match(c.value) for c in block.caption)
                  if m)


def caption_cards(at, where: str = "ret_results") -> list[tuple[int, float, str, str, bool]]:
    """(rank, score, caption, owner id, marked own) of the caption cards in a part of the page, in order."""
    block = at.get_by_key(where)
    return [(int(m[1]), float(m[2]), m[3], m[4], bool(m[5]))
            for m in (CAPTION_CARD.match(md.value) for md in block.markdown) if m]


def test_unembedded_set_offers_to_embed_then_shows_recall_and_worst_pairs(app_home):
    ws = Workspace(app_home)
    make_demo(ws, n=40)
    at = retrieval_page()
    assert any("not embedded under builtin:shapes yet" in i.value for i in at.info)
    assert not at.dataframe
    at.button(key="ret_embed").click().run()
    assert not at.exception, at.exception
    emb = embed_dataset(ws, ws.open("shapes-demo"), "builtin:shapes")

    recall = at.dataframe[0].value
    expected = recall_at_k(emb.image, emb.text, (1, 5, 10), text_owner=emb.text_owner)
    assert recall["direction"].tolist() == ["Image → text", "Text → image"]
    for row, d in zip(recall.itertuples(), ("i2t", "t2i")):
        assert [row[2], row[3], row[4]] == pytest.approx([expected[d][k] for k in (1, 5, 10)], abs=1e-12)
    assert 0.5 < expected["t2i"][1] < 1  # not a trivial set: some captions miss at 1

    table = at.dataframe[1].value
    worst = worst_pairs(emb.image, emb.text, text_owner=emb.text_owner, limit=50)
    assert len(table) == len(worst) == 50
    first, w = table.to_dict("records")[0], worst.to_dict("records")[0]  # worst_pairs(...).iloc[0], typed
    assert first["caption"] == emb.captions[w["caption"]] and first["image"] == emb.ids[w["image"]]
    assert first["t2i_rank"] == w["t2i_rank"] > 1
    assert first["best_image"] == emb.ids[w["best_image"]]
    assert (first["own_cosine"], first["best_cosine"]) == pytest.approx((w["own_cosine"], w["best_cosine"]))
    assert first["thumb"].startswith("data:image/jpeg;base64,") and first["best_thumb"].startswith("data:image/")
    assert {b.label for b in at.get("download_button")} >= {"Recall (CSV)", "Worst pairs (CSV)"}


def test_text_query_finds_the_caption_and_its_image(demo):
    ds, emb = demo
    j = 9
    caption, owner = emb.captions[j], emb.ids[emb.text_owner[j]]
    at = retrieval_page()
    assert not image_cards(at) and not caption_cards(at)  # no query yet
    at.text_input(key="ret_text").input(caption).run()
    assert not at.exception, at.exception
    assert any(f"Nearest to the text “{caption}”" in m.value for m in at.markdown)

    caps = caption_cards(at)
    assert len(caps) == 8  # ret_k's default
    rank, score, text, _, marked = caps[0]
    assert (rank, text, marked) == (1, caption, False)  # its own vector is the nearest caption
    assert score == pytest.approx(1.0, abs=1e-3)
    assert [c[0] for c in caps] == list(range(1, 9)) and all(a[1] >= b[1] for a, b in zip(caps, caps[1:]))

    imgs = image_cards(at)
    assert [c[0] for c in imgs] == list(range(1, 9))
    assert owner in [c[1] for c in imgs[:3]]  # the builtin model puts the described image near the top
    assert all(a[2] >= b[2] for a, b in zip(imgs, imgs[1:]))
    assert max(c[2] for c in imgs) < 0.95  # cross-modal cosines: the gap keeps them below text-text ones

    at.slider(key="ret_k").set_value(3).run()
    assert len(image_cards(at)) == len(caption_cards(at)) == 3


def test_dataset_image_query_excludes_itself_and_marks_its_captions(demo):
    ds, emb = demo
    row = 4
    at = retrieval_page()
    at.selectbox(key="ret_image_id").set_value(row).run()  # the picker's first page: rows 0-19
    assert not at.exception, at.exception
    assert not at.warning  # a stored vector: no model needed
    assert any(f"Nearest to the dataset image `{emb.ids[row]}`" in m.value for m in at.markdown)
    imgs = image_cards(at)
    assert len(imgs) == 8 and emb.ids[row] not in [c[1] for c in imgs]
    cos = dict(zip(emb.ids, emb.image @ emb.image[row]))
    assert [c[2] for c in imgs] == pytest.approx(sorted(np.delete(emb.image @ emb.image[row], row))[::-1][:8],
                                                 abs=1e-3)  # the 8 nearest other images (ties in any order)
    assert all(score == pytest.approx(cos[id_], abs=1e-3) for _, id_, score in imgs)
    caps = caption_cards(at)
    own = {emb.captions[j] for j in np.flatnonzero(emb.text_owner == row)}
    assert any(marked for *_, marked in caps)
    for _, _, text, owner_id, marked in caps:
        assert marked == (owner_id == emb.ids[row])
        if marked:
            assert text in own


def test_pair_panel_shows_where_the_partner_ranks(demo):
    ds, emb = demo
    ranks = partner_ranks(emb.image, emb.text, text_owner=emb.text_owner)
    row = int(np.flatnonzero(ranks["i2t"] > 1)[0])  # an image whose own caption is not first
    at = retrieval_page()
    at.text_input(key="ret_pair_q").input(emb.ids[row]).run()  # found by its id
    assert at.selectbox(key="ret_pair").options[0].startswith(emb.ids[row])
    at.selectbox(key="ret_pair").set_value(row).run()
    assert not at.exception, at.exception
    text = "\n".join(m.value for m in at.markdown)
    assert f"its best own caption ranks **#{ranks['i2t'][row]}** of {len(emb.text)} captions" in text
    for j in np.flatnonzero(emb.text_owner == row):
        assert f"- **#{ranks['t2i'][j]}** · {emb.captions[j]}" in text
    # what was retrieved above the partner: the captions of other images, none marked as its own
    above = caption_cards(at, "ret_pair_panel")
    assert len(above) == ranks["i2t"][row] - 1 and not any(marked for *_, marked in above)
    assert all(owner_id != emb.ids[row] for *_, owner_id, _ in above)


def test_vectors_only_set_needs_a_model_for_text_but_not_for_its_images(app_home, tmp_path):
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(2, 12, 8))
    np.save(tmp_path / "vecs.npy", vecs)
    Workspace(app_home).import_path(tmp_path / "vecs.npy", "vecs")
    at = retrieval_page()
    at.text_input(key="ret_text").input("a red circle").run()
    assert not at.exception, at.exception
    assert any("must be embedded by the model that made this set's vectors, `precomputed:vecs`" in w.value
               for w in at.warning)
    assert not caption_cards(at)
    at.selectbox(key="ret_image_id").set_value(2).run()  # row 2, id "2"
    assert not at.exception, at.exception
    assert len(image_cards(at)) == 8 and "2" not in [c[1] for c in image_cards(at)]
