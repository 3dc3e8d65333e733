"""Retrieval: text or image queries against the set, where a pair's true partner ranks,
recall@k of the whole set, and the captions whose own image ranks worst (often bad captions).

Every search reads the set's vectors in blocks (mmviz.retrieval), so a million pairs stay on
disk. On a large set recall@k and the worst pairs come from a seeded sample of queries, each
searched against every key, computed on request and kept in the workspace's results."""
import numpy as np
import pandas as pd
import streamlit as st

import common
import links
from mmviz.models import ModelSpecError, ModelUnavailable, load_model
from mmviz.results import cached_json
from mmviz.queries import image_query, text_query
from mmviz.retrieval import DEFAULT_QUERIES, partner_ranks, recall_at_k, topk, worst_pairs

KS = (1, 5, 10)
DIRECTIONS = {"i2t": "Image → text", "t2i": "Text → image"}
GRID = 4  # image cards per row
MAX_ABOVE = 8  # items shown above a true partner
WORST = 50


class _NotStored(Exception):
    pass


def _not_stored():
    raise _NotStored


def whole_set_numbers(emb, queries: int | None, large: bool, compute: bool) -> dict | None:
    """{"recall": {direction: {k: value}}, "worst": worst_pairs columns} over every query or a
    seeded sample of `queries`, kept in the workspace's results. Small sets: computed at once;
    large ones: read back, computed only when `compute` (with a progress bar), else None."""
    parts = {**emb.key_parts, "queries": queries, "seed": 0, "worst": WORST}
    home = common.workspace().home
    if not large:
        return cached_json(home, "retrieval", parts, lambda: _numbers(emb, None, None))[0]
    if not compute:
        try:
            return cached_json(home, "retrieval", parts, _not_stored)[0]
        except _NotStored:
            return None
    bar = st.progress(0.0, text="Recall@k…")

    def progress(stage: str):
        return lambda done, total: bar.progress(min(done / max(total, 1), 1.0),
                                                text=f"{stage}: {done / max(total, 1):.0%} of {total:,} products")

    try:
        return cached_json(home, "retrieval", parts, lambda: _numbers(emb, queries, progress))[0]
    finally:
        bar.empty()


def _numbers(emb, queries, progress) -> dict:
    many = "every" if queries is None else f"{queries:,}"
    r = recall_at_k(emb.image, emb.text, KS, text_owner=emb.text_owner, queries=queries,
                    progress=progress and progress(f"Recall@k of {many} image and caption queries"))
    worst = worst_pairs(emb.image, emb.text, text_owner=emb.text_owner, limit=WORST, queries=queries,
                        progress=progress and progress(f"Ranks of {many} captions' own images"))
    return {"recall": {d: {str(k): v for k, v in r[d].items()} for d in DIRECTIONS},
            "worst": {c: worst[c].tolist() for c in worst.columns}}


@st.cache_data(show_spinner=False, max_entries=64)
def ranks_of(key: str, row: int, _emb) -> dict[str, np.ndarray]:
    """Where image `row`'s captions rank for it and it for each of them (one pass over the keys)."""
    return partner_ranks(_emb.image, _emb.text, text_owner=_emb.text_owner, rows=[row])


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


def pick_pair(ds, emb, label: str, key: str, optional: bool, default: int | None = None) -> int | None:
    """An embedded image row, picked by searching the dataset's ids and captions."""
    row = common.pick_row(ds, label, key, optional=optional,
                          default=None if default is None else common.dataset_row(emb, default))
    if row is None:
        return None
    found = common.embedding_row(ds, emb, row)
    if found is None:
        st.warning("That pair has no vectors under this model (its image could not be embedded).")
    return found


def queries_section(ds, emb) -> list[tuple[str, np.ndarray, int | None]]:
    """The query widgets; returns (title, unit vector, the query's own image row or None) per query given."""
    cols = st.columns(3)
    text = cols[0].text_input("Text", key="ret_text", placeholder="a small blue circle on the left")
    upload = cols[1].file_uploader("An image", type=["png", "jpg", "jpeg", "webp"], key="ret_upload")
    with cols[2]:
        row = pick_pair(ds, emb, "or a dataset image", "ret_image_id", optional=True)
    out = []
    loaded = query_model(emb) if text.strip() or upload is not None else None
    if loaded is not None and text.strip():
        out.append((f"the text “{text.strip()}”", encode_text(emb.model, text), None))
    if loaded is not None and upload is not None:
        try:
            out.append((f"the image {upload.name}", image_query(loaded, upload.getvalue()), None))
        except (ValueError, OSError) as e:
            st.error(f"Cannot use {upload.name} as a query: {e}", icon=":material/broken_image:")
    if row is not None:
        out.append((f"the dataset image `{emb.ids[row]}`", np.asarray(emb.image[row], dtype=np.float32), row))
    for title, q, _ in out:
        if q.shape[-1] != emb.dim:
            st.error(f"{emb.model} embeds {title} as a {q.shape[-1]}-d vector but the set's vectors are "
                     f"{emb.dim}-d: they come from another model.")
    return [x for x in out if x[1].shape[-1] == emb.dim]


def image_cards(ds, emb, scores, rows, columns: int = GRID) -> None:
    thumbs = common.thumbnails_of(ds, [emb.ids[r] for r in rows])
    cols = st.columns(columns)
    for n, (s, r) in enumerate(zip(scores, rows)):
        with cols[n % columns]:
            id_ = emb.ids[r]
            if id_ in thumbs:
                st.image(thumbs[id_], width="stretch")
            st.caption(f"#{n + 1} · **{s:.3f}**  \n`{id_}`")


def caption_cards(ds, emb, scores, rows, own: int | None) -> None:
    thumbs = common.thumbnails_of(ds, [emb.ids[int(emb.text_owner[j])] for j in rows])
    for n, (s, j) in enumerate(zip(scores, rows)):
        owner = int(emb.text_owner[j])
        id_ = emb.ids[owner]
        left, right = st.columns([1, 6], vertical_alignment="center")
        if id_ in thumbs:
            left.image(thumbs[id_], width="stretch")
        mark = " · ✓ own caption" if owner == own else ""
        right.markdown(f"#{n + 1} · **{s:.3f}** · {escape(emb.captions[j])}  \n`{id_}`{mark}")


def results(ds, emb, title: str, q: np.ndarray, own: int | None, k: int) -> None:
    st.markdown(f"#### Nearest to {title}")
    s_img, r_img = topk(q, emb.image, k + (own is not None))
    keep = r_img != own  # a dataset image is not its own result
    s_img, r_img = s_img[keep][:k], r_img[keep][:k]
    s_cap, r_cap = topk(q, emb.text, k)
    left, right = st.columns(2, gap="large")
    with left:
        st.markdown(f"**Images**, nearest of {len(emb.ids):,}")
        image_cards(ds, emb, s_img, r_img)
    with right:
        st.markdown(f"**Captions**, nearest of {len(emb.text):,}, with their image's id")
        caption_cards(ds, emb, s_cap, r_cap, own)


def pair_panel(ds, emb, key: str, default_row: int) -> None:
    st.subheader("Where a pair's true partner ranks")
    with st.columns([2, 3])[0]:
        row = pick_pair(ds, emb, "Pair (the worst-ranked first)", "ret_pair", optional=False, default=default_row)
    if row is None:
        return
    pair_id = emb.ids[row]
    with st.spinner(f"Ranking against {len(emb.text):,} captions and {len(emb.ids):,} images…"):
        ranks = ranks_of(key, row, emb)
    own = ranks["captions"]
    left, right = st.columns([1, 3], gap="large")
    with left:
        path = common.image_file(ds, common.dataset_row(emb, row))
        thumbs = common.thumbnails_of(ds, [pair_id])
        if path is not None and path.is_file():
            st.image(str(path), width="stretch")
        elif pair_id in thumbs:
            st.image(thumbs[pair_id], width="stretch")
        st.caption(f"`{pair_id}`")
    with right:
        r = int(ranks["i2t"][0])
        if r == 0:
            st.markdown("**Image → text:** this image has no caption.")
        else:
            st.markdown(f"**Image → text:** its best own caption ranks **#{r}** of {len(emb.text):,} captions.")
        if r > 1:
            scores, rows = topk(np.asarray(emb.image[row], np.float32), emb.text, min(r - 1, MAX_ABOVE))
            st.caption(f"Retrieved above it{first_of(r - 1)}:")
            caption_cards(ds, emb, scores, rows, row)
        st.markdown(f"**Text → image:** where its own image ranks for each of its {len(own)} caption(s), "
                    f"among {len(emb.ids):,} images.")
        for j, t in zip(own, ranks["t2i"]):
            st.markdown(f"- **#{int(t)}** · {escape(emb.captions[j])}")
            if t > 1:
                scores, rows = topk(np.asarray(emb.text[j], np.float32), emb.image, min(int(t) - 1, MAX_ABOVE))
                st.caption(f"Retrieved above its image{first_of(int(t) - 1)}:")
                image_cards(ds, emb, scores, rows, columns=MAX_ABOVE)


def whole_set(ds, emb, key: str, numbers: dict | None, queries: int | None) -> None:
    st.subheader("The whole set")
    if numbers is None:
        q = max(len(emb.ids), len(emb.text)) if queries is None else queries
        sample = "every query" if queries is None else f"a seeded sample of {queries:,} image and {queries:,} caption queries"
        st.info(f"Recall@k and the worst pairs of {len(emb.ids):,} pairs are computed on {sample}, each searched "
                f"against every key: {q * (len(emb.text) + 2 * len(emb.ids)) * emb.dim * 2:.1e} floating-point "
                "operations, once (the result is kept in the workspace).", icon=":material/timer:")
        st.button("Compute recall and the worst pairs", key="ret_compute", type="primary")  # read at the top
        return
    recall = pd.DataFrame([{"direction": label, **{f"R@{k}": numbers["recall"][d][str(k)] for k in KS}}
                           for d, label in DIRECTIONS.items()])
    left, right = st.columns([2, 3], gap="large", vertical_alignment="center")
    with left:
        st.dataframe(recall, hide_index=True, width="stretch",
                     column_config={"direction": st.column_config.TextColumn("Recall@k"),
                                    **{f"R@{k}": st.column_config.NumberColumn(format="%.3f") for k in KS}})
    with right:
        over = (f"Over {len(emb.ids):,} images and {len(emb.text):,} captions." if queries is None else
                f"Over a seeded sample of {min(queries, len(emb.ids)):,} images and {min(queries, len(emb.text)):,} "
                f"captions, each searched against all {len(emb.text):,} captions / {len(emb.ids):,} images.")
        st.caption(f"{over} Image → text: a hit when any of the image's captions is among its k nearest captions; "
                   "text → image: when the caption's own image is among its k nearest images.")
        common.download_csv("Recall (CSV)", recall, f"{key}-recall.csv", "dl_recall")
    worst = pd.DataFrame(numbers["worst"])
    among = "" if queries is None else f" among the {min(queries, len(emb.text)):,} sampled captions"
    st.markdown(f"**Worst-ranked pairs first**: the {len(worst)} captions{among} whose own image ranks lowest for "
                "them. A caption ranked far from its own image often describes another one, or the pair is wrong.")
    table = worst_table(emb, worst)
    thumbs = common.thumbnails_of(ds, [*table["image"], *table["best_image"]])
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
    common.download_csv("Worst pairs (CSV)", table, f"{key}-worst-pairs.csv", "dl_worst")


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
common.link_state("retrieval", [links.text("query", "ret_text"), links.integer("k", "ret_k", 1, 50)])
ds, emb = common.dataset_and_embeddings("ret")
st.caption(f"**{ds.name}** under `{emb.model}`: {len(emb.ids):,} images and {len(emb.text):,} captions, "
           f"{emb.dim}-d. Scores are cosines.")
key = common.data_key(ds, emb)

st.subheader("Query")
given = queries_section(ds, emb)
k = st.columns([2, 3])[0].slider("Results per kind", 1, 50, 8, key="ret_k")
if not given:
    st.caption("Type a text, upload an image or pick one of the set's images to see what is nearest to it.")
with st.container(key="ret_results"):
    for title, q, own in given:
        results(ds, emb, title, q, own, k)

st.divider()
large = max(len(emb.ids), len(emb.text)) > DEFAULT_QUERIES
with st.columns([2, 3])[0]:
    n_queries = common.recall_queries_choice(max(len(emb.ids), len(emb.text)), "ret_queries") if large else None
numbers = whole_set_numbers(emb, n_queries, large, compute=st.session_state.get("ret_compute", False))
worst_rows = (numbers or {}).get("worst", {}).get("image", [])
with st.container(key="ret_pair_panel"):
    pair_panel(ds, emb, key, default_row=int(worst_rows[0]) if worst_rows else 0)
st.divider()
whole_set(ds, emb, key, numbers, n_queries)
