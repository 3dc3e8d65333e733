"""Retrieval: text or image queries against the set, where a pair's true partner ranks,
recall@k of the whole set, and the captions whose own image ranks worst (often bad captions)."""
import numpy as np
import pandas as pd
import streamlit as st

import common
from mmviz.models import ModelSpecError, ModelUnavailable, load_model
from mmviz.retrieval import image_query, partner_ranks, recall_at_k, text_query, topk, worst_pairs

KS = (1, 5, 10)
DIRECTIONS = {"i2t": "Image → text", "t2i": "Text → image"}
MAX_SELECT = 10_000  # more ids than this: type one instead of scrolling a list
GRID = 4  # image cards per row
MAX_ABOVE = 8  # items shown above a true partner
WORST = 50


@st.cache_data(show_spinner=False, max_entries=8)
def recall_for(key: str, _images: np.ndarray, _texts: np.ndarray, _owner: np.ndarray) -> pd.DataFrame:
    r = recall_at_k(_images, _texts, KS, text_owner=_owner)
    return pd.DataFrame([{"direction": label, **{f"R@{k}": r[d][k] for k in KS}} for d, label in DIRECTIONS.items()])


@st.cache_data(show_spinner=False, max_entries=8)
def ranks_for(key: str, _images: np.ndarray, _texts: np.ndarray, _owner: np.ndarray) -> dict[str, np.ndarray]:
    return partner_ranks(_images, _texts, text_owner=_owner)


@st.cache_data(show_spinner=False, max_entries=8)
def worst_for(key: str, _images: np.ndarray, _texts: np.ndarray, _owner: np.ndarray) -> pd.DataFrame:
    return worst_pairs(_images, _texts, text_owner=_owner, limit=WORST)


@st.cache_data(show_spinner=False, max_entries=8)
def first_captions(key: str, _ids: list[str], _captions: list[str], _owner: np.ndarray) -> dict[str, str]:
    """id -> its first caption, for the id pickers."""
    out: dict[str, str] = {}
    for c, o in zip(_captions, _owner):
        out.setdefault(_ids[o], c)
    return out


@st.cache_data(show_spinner=False, max_entries=64)
def encode_text(spec: str, text: str) -> np.ndarray:
    return text_query(load_model(spec), text)


def query_model(emb):
    """The model that made the set's vectors, loaded; None (with a warning) when it cannot be."""
    try:
        return load_model(emb.model)
    except (ModelSpecError, ModelUnavailable, ValueError) as e:
        st.warning(f"Text and image queries must be embedded by the model that made this set's vectors, "
                   f"`{emb.model}`, and it cannot be loaded here: {e}. Pick one of the set's images as the query "
                   "instead (its stored vector needs no model).", icon=":material/cloud_off:")
        return None


def pick_id(label: str, ids: list[str], key: str, captions: dict[str, str], optional: bool, default: int = 0):
    """An id from a list, or typed in when the set is too large for one."""
    if len(ids) > MAX_SELECT:
        typed = st.text_input(label, key=key, placeholder=f"an id, e.g. {ids[0]}").strip()
        if typed and typed not in captions:
            st.warning(f"No image with id {typed!r} in this set.")
        return typed if typed in captions else (None if optional else ids[default])
    return st.selectbox(label, ids, index=None if optional else default, key=key, placeholder="none",
                        format_func=lambda i: f"{i} · {captions.get(i, '')[:60]}")


def queries(emb, captions: dict[str, str]) -> list[tuple[str, np.ndarray, int | None]]:
    """The query widgets; returns (title, unit vector, the query's own image row or None) per query given."""
    cols = st.columns(3)
    text = cols[0].text_input("Text", key="ret_text", placeholder="a small blue circle on the left")
    upload = cols[1].file_uploader("An image", type=["png", "jpg", "jpeg", "webp"], key="ret_upload")
    with cols[2]:
        image_id = pick_id("or a dataset image", emb.ids, "ret_image_id", captions, optional=True)
    out = []
    loaded = query_model(emb) if text.strip() or upload is not None else None
    if loaded is not None and text.strip():
        out.append((f"the text “{text.strip()}”", encode_text(emb.model, text), None))
    if loaded is not None and upload is not None:
        try:
            out.append((f"the image {upload.name}", image_query(loaded, upload.getvalue()), None))
        except (ValueError, OSError) as e:
            st.error(f"Cannot use {upload.name} as a query: {e}", icon=":material/broken_image:")
    if image_id is not None:
        row = emb.ids.index(image_id)
        out.append((f"the dataset image `{image_id}`", emb.image[row], row))
    for title, q, _ in out:
        if q.shape[-1] != emb.dim:
            st.error(f"{emb.model} embeds {title} as a {q.shape[-1]}-d vector but the set's vectors are "
                     f"{emb.dim}-d: they come from another model.")
    return [x for x in out if x[1].shape[-1] == emb.dim]


def image_cards(emb, thumbs: dict[str, bytes], scores, rows, columns: int = GRID) -> None:
    cols = st.columns(columns)
    for n, (s, r) in enumerate(zip(scores, rows)):
        with cols[n % columns]:
            id_ = emb.ids[r]
            if id_ in thumbs:
                st.image(thumbs[id_], width="stretch")
            st.caption(f"#{n + 1} · **{s:.3f}**  \n`{id_}`")


def caption_cards(emb, thumbs: dict[str, bytes], scores, rows, own: int | None) -> None:
    for n, (s, j) in enumerate(zip(scores, rows)):
        owner = int(emb.text_owner[j])
        id_ = emb.ids[owner]
        left, right = st.columns([1, 6], vertical_alignment="center")
        if id_ in thumbs:
            left.image(thumbs[id_], width="stretch")
        mark = " · ✓ own caption" if owner == own else ""
        right.markdown(f"#{n + 1} · **{s:.3f}** · {escape(emb.captions[j])}  \n`{id_}`{mark}")


def results(title: str, q: np.ndarray, own: int | None, emb, thumbs, k: int) -> None:
    st.markdown(f"#### Nearest to {title}")
    s_img, r_img = topk(q, emb.image, k + (own is not None))
    keep = r_img != own  # a dataset image is not its own result
    s_img, r_img = s_img[keep][:k], r_img[keep][:k]
    s_cap, r_cap = topk(q, emb.text, k)
    left, right = st.columns(2, gap="large")
    with left:
        st.markdown(f"**Images**, nearest of {len(emb.ids):,}")
        image_cards(emb, thumbs, s_img, r_img)
    with right:
        st.markdown(f"**Captions**, nearest of {len(emb.text):,}, with their image's id")
        caption_cards(emb, thumbs, s_cap, r_cap, own)


def pair_panel(ds, emb, thumbs, key: str, captions: dict[str, str], default_row: int) -> None:
    st.subheader("Where a pair's true partner ranks")
    with st.columns([2, 3])[0]:
        pair_id = pick_id("Pair (the worst-ranked first)", emb.ids, "ret_pair", captions, optional=False,
                          default=default_row)
    row = emb.ids.index(pair_id)
    ranks = ranks_for(key, emb.image, emb.text, emb.text_owner)
    own = np.flatnonzero(emb.text_owner == row)
    left, right = st.columns([1, 3], gap="large")
    with left:
        path = ds.image_path(pair_id)
        if path is not None and path.is_file():
            st.image(str(path), width="stretch")
        elif pair_id in thumbs:
            st.image(thumbs[pair_id], width="stretch")
        st.caption(f"`{pair_id}`")
    with right:
        r = int(ranks["i2t"][row])
        if r == 0:
            st.markdown("**Image → text:** this image has no caption.")
        else:
            st.markdown(f"**Image → text:** its best own caption ranks **#{r}** of {len(emb.text):,} captions.")
        if r > 1:
            scores, rows = topk(emb.image[row], emb.text, min(r - 1, MAX_ABOVE))
            st.caption(f"Retrieved above it{first_of(r - 1)}:")
            caption_cards(emb, thumbs, scores, rows, row)
        st.markdown(f"**Text → image:** where its own image ranks for each of its {len(own)} caption(s), "
                    f"among {len(emb.ids):,} images.")
        for j in own:
            t = int(ranks["t2i"][j])
            st.markdown(f"- **#{t}** · {escape(emb.captions[j])}")
            if t > 1:
                scores, rows = topk(emb.text[j], emb.image, min(t - 1, MAX_ABOVE))
                st.caption(f"Retrieved above its image{first_of(t - 1)}:")
                image_cards(emb, thumbs, scores, rows, columns=MAX_ABOVE)


def whole_set(emb, thumbs, key: str, worst: pd.DataFrame) -> None:
    st.subheader("The whole set")
    recall = recall_for(key, emb.image, emb.text, emb.text_owner)
    left, right = st.columns([2, 3], gap="large", vertical_alignment="center")
    with left:
        st.dataframe(recall, hide_index=True, width="stretch",
                     column_config={"direction": st.column_config.TextColumn("Recall@k"),
                                    **{f"R@{k}": st.column_config.NumberColumn(format="%.3f") for k in KS}})
    with right:
        st.caption(f"Over {len(emb.ids):,} images and {len(emb.text):,} captions. Image → text: a hit when any "
                   "of the image's captions is among its k nearest captions; text → image: when the caption's "
                   "own image is among its k nearest images.")
        common.download("Recall (CSV)", recall.to_csv(index=False), f"{key}-recall.csv", "text/csv", "dl_recall")
    st.markdown(f"**Worst-ranked pairs first**: the {len(worst)} captions whose own image ranks lowest for them. "
                "A caption ranked far from its own image often describes another one, or the pair is wrong.")
    table = worst_table(emb, worst)
    st.dataframe(table.assign(thumb=[common.data_uri(thumbs.get(i)) for i in table["image"]],
                              best_thumb=[common.data_uri(thumbs.get(i)) for i in table["best_image"]]),
                 hide_index=True, width="stretch", row_height=56 if thumbs else None,
                 column_order=[c for c in ("thumb", "caption", "image", "t2i_rank", "own_cosine", "best_thumb",
                                           "best_image", "best_cosine") if thumbs or "thumb" not in c],
                 column_config={
                     "thumb": st.column_config.ImageColumn("Own image", width="small"),
                     "caption": st.column_config.TextColumn("Caption", width="large"),
                     "image": st.column_config.TextColumn("Own id"),
                     "t2i_rank": st.column_config.NumberColumn("Rank", help="Where its own image ranks for it"),
                     "own_cosine": st.column_config.NumberColumn("Own cos", format="%.3f"),
                     "best_thumb": st.column_config.ImageColumn("Best match", width="small"),
                     "best_image": st.column_config.TextColumn("Best id", help="The image it is most similar to"),
                     "best_cosine": st.column_config.NumberColumn("Best cos", format="%.3f"),
                 })
    common.download("Worst pairs (CSV)", table.to_csv(index=False), f"{key}-worst-pairs.csv", "text/csv", "dl_worst")


# ----------------------------------------------------------------------------------------
# presentation helpers


def worst_table(emb, worst: pd.DataFrame) -> pd.DataFrame:
    """worst_pairs' rows with ids and caption text in place of row numbers."""
    return pd.DataFrame({"caption_row": worst["caption"], "caption": [emb.captions[j] for j in worst["caption"]],
                         "image": [emb.ids[r] for r in worst["image"]], "t2i_rank": worst["t2i_rank"],
                         "own_cosine": worst["own_cosine"], "best_image": [emb.ids[r] for r in worst["best_image"]],
                         "best_cosine": worst["best_cosine"]})


def first_of(above: int) -> str:
    return f" (the first {MAX_ABOVE} of {above:,})" if above > MAX_ABOVE else ""


def escape(text: str) -> str:
    """Caption text shown literally inside markdown."""
    return "".join("\\" + c if c in "\\`*_[]<>|$~" else c for c in text)


st.title("Retrieval")
ds, emb = common.dataset_and_embeddings("ret")
st.caption(f"**{ds.name}** under `{emb.model}`: {len(emb.ids):,} images and {len(emb.text):,} captions, "
           f"{emb.dim}-d. Scores are cosines.")
key = common.data_key(ds, emb)
thumbs = common.thumbnails(ds)
captions = first_captions(key, emb.ids, emb.captions, emb.text_owner)

st.subheader("Query")
given = queries(emb, captions)
k = st.columns([2, 3])[0].slider("Results per kind", 1, 50, 8, key="ret_k")
if not given:
    st.caption("Type a text, upload an image or pick one of the set's images to see what is nearest to it.")
with st.container(key="ret_results"):
    for title, q, own in given:
        results(title, q, own, emb, thumbs, k)

st.divider()
worst = worst_for(key, emb.image, emb.text, emb.text_owner)
with st.container(key="ret_pair_panel"):
    pair_panel(ds, emb, thumbs, key, captions, default_row=int(worst["image"].iloc[0]) if len(worst) else 0)
st.divider()
whole_set(emb, thumbs, key, worst)
