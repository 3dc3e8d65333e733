"""Gap explorer: image and text vectors in one projection, the gap between them, its metrics.

2-D layouts draw on the WebGL map (millions of points as binary columns); 3-D ones with plotly
on a seeded sample. Metrics, histograms and spectra come from the workspace's result cache."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import common
import links
from embedding_map import embedding_map
from mmviz import geometry, mapdata, projection, results, viz
from mmviz.viz import IMAGE_COLOUR, PICK_COLOUR, TEXT_COLOUR

METHODS = common.PROJECTIONS
SAMPLE_3D = 50_000  # points plotly draws of a 3-D layout (a seeded sample beyond)
MAP_POINTS = 4_000_000  # points the map draws (a seeded sample of whole pairs beyond): ~36 MB to the browser
LINK_SELECTED = "gap_link_selected"  # the selection's ids while they are few enough for the link
ALL_LINES = 20_000  # captions up to which every pair line can be drawn; above, the selection's only
SHOWN = 12  # selected pairs listed with their thumbnails
TOP_CATEGORIES = 12  # a column's most frequent values get their own colour, the rest "other"
# Set once the map has been drawn since the page was opened. Until then the metric table and
# plotly figures stay out of the page: they load and draw on the browser's one main thread
# with the map, and took a 100k-pair map in a fresh tab from about 4.5 s to 6 to 7 s, and
# back from another page from 2.4 s to 4.5 s when plotly had not been loaded yet (measured).
PANELS_READY = "gap_panels_ready"


# ----------------------------------------------------------------------------------------
# what the map shows


@st.cache_data(show_spinner=False, max_entries=8)
def colour_column(_ds, _emb, data_key: str, n_images: int, column: str):
    """(codes, labels, colours, None) for a categorical column, (None, None, None, values) for
    a numeric one with many values: one entry per image row, captions take their image's.
    Kept per (data_key, drawn images, column): a hover reruns the map, and reading and
    counting a column of a million rows takes 2.7 s (measured), not to be paid per hover."""
    raw = _ds.column(column).to_pandas().iloc[_emb.table_rows].reset_index(drop=True)
    numeric = pd.to_numeric(raw, errors="coerce")
    if numeric.notna().mean() > 0.9 and numeric.nunique() > TOP_CATEGORIES:
        return None, None, None, numeric.fillna(numeric.median()).to_numpy(np.float32)
    text = raw.astype(object).where(raw.notna(), "(none)").astype(str)
    top = text.value_counts().index[:TOP_CATEGORIES].tolist()
    labels = top + (["other"] if text.nunique() > len(top) else [])
    codes = pd.Categorical(text.where(text.isin(top), "other"), categories=labels).codes.astype(np.uint16)
    return codes, labels, mapdata.category_colours(len(labels)), None


def hover_detail(ds, emb, n_images: int):
    def detail(i: int) -> dict:
        if i < n_images:
            id_ = emb.ids[i]
            first = emb.captions_of(i)
            thumb = common.thumbnails_of(ds, [id_]).get(id_)
            return {"index": i, "title": f"image {id_}", "text": emb.captions[first.start] if len(first) else "",
                    "image": common.data_uri(thumb)}
        j = i - n_images
        return {"index": i, "title": f"caption of image {emb.ids[emb.text_owner[j]]}", "text": emb.captions[j],
                "image": None}
    return detail


def picked_lines(picked: np.ndarray, emb, n_images: int, limit: int = ALL_LINES) -> np.ndarray:
    """Map point pairs joining each picked image to its captions."""
    pairs = [(r, n_images + j) for r in picked[:limit] for j in emb.captions_of(int(r))]
    return np.array(pairs[:limit], dtype=np.int64).reshape(-1, 2)


def selection_panel(ds, emb, picked: np.ndarray, pick_key: str) -> None:
    st.markdown(f"**{len(picked):,} selected**" if len(picked) else
                "**Select points** (Lasso or Box in the map's toolbar) to list their images and captions here.")
    if not len(picked):
        return
    st.button("Clear selection", key="gap_clear", on_click=lambda: st.session_state.pop(pick_key, None))
    shown = [int(r) for r in picked[:SHOWN]]
    thumbs = common.thumbnails_of(ds, [emb.ids[r] for r in shown])
    for r in shown:
        id_ = emb.ids[r]
        cells = st.columns([1, 3]) if thumbs else [None, st.container()]  # no empty column without images
        if id_ in thumbs:
            cells[0].image(thumbs[id_])
        caps = [emb.captions[j] for j in emb.captions_of(r)]
        cells[1].markdown(f"`{id_}`  \n" + "  \n".join(f"– {c}" for c in caps))
    if len(picked) > SHOWN:
        st.caption(f"and {len(picked) - SHOWN:,} more")


@st.fragment
def map_view(ds, emb, layout, colour_by: str, lines_on: bool, pick_key: str) -> None:
    """The 2-D map and the selection beside it: a hover or a selection reruns only this."""
    n_img = len(layout.image_xy)
    if n_img + len(layout.text_xy) > MAP_POINTS:  # more than a browser can take: say so, draw a sample
        st.warning(f"{n_img + len(layout.text_xy):,} points are more than the map draws at once; it shows a "
                   f"seeded sample of {MAP_POINTS:,} (whole pairs). Metrics and layouts use every point.")
        emb, layout = sampled(emb, layout, MAP_POINTS)
        n_img = len(layout.image_xy)
    lay = mapdata.pairs_layout(layout.image_xy, layout.text_xy, emb.text_owner, max_lines=0)
    if colour_by == "modality":
        category, labels, colours, values = lay.category, mapdata.PAIR_CATEGORIES, [IMAGE_COLOUR, TEXT_COLOUR], None
    else:
        codes, labels, colours, vals = colour_column(ds, emb, common.data_key(ds, emb), n_img, colour_by)
        if vals is not None:
            values, category, labels, colours = np.r_[vals, vals[emb.text_owner]], lay.category, \
                mapdata.PAIR_CATEGORIES, [IMAGE_COLOUR, TEXT_COLOUR]
        else:
            category, values = np.r_[codes, codes[emb.text_owner]], None
    wanted = st.session_state.get(LINK_SELECTED)
    if isinstance(wanted, links.FromLink):  # a link's selection: its ids to this map's rows, once
        where = {id_: i for i, id_ in enumerate(emb.ids)}
        rows = [where[i] for i in wanted if i in where]
        if len(rows) < len(wanted):
            st.caption(f":material/link_off: {len(wanted) - len(rows)} of the link's selected ids are not in this set.")
        st.session_state[pick_key] = rows
    picked = np.asarray(st.session_state.get(pick_key, []), dtype=np.int64)
    few = [emb.ids[r] for r in picked] if 0 < len(picked) <= links.MAX_IDS else []
    st.session_state[LINK_SELECTED] = few or None
    links.write("selected", ",".join(few))
    if lines_on and len(emb.text) <= ALL_LINES:
        lines = np.c_[emb.text_owner, n_img + np.arange(len(emb.text))]
    else:
        lines = picked_lines(picked, emb, n_img)
    plot, side = st.columns([3, 2])
    with plot:
        ev = embedding_map(lay.xy, category, labels, colours, values=values, value_label=colour_by,
                           lines=lines, arrow=lay.arrow,
                           selected=mapdata.pair_points(picked, n_img, emb.text_owner) if len(picked) else np.array([], int),
                           hover_detail=hover_detail(ds, emb, n_img), key="gap_map")
        st.caption(("Layout from the workspace cache. " if layout.key and st.session_state.get("gap_hit") else "")
                   + "Arrow: the gap, from the caption centre to the image centre. Lasso or Box selects; "
                     "double-click clears." + (" Gap axis: x is the gap direction, y the main direction of "
                                               "variation across it." if layout.method == "gap2" else ""))
    if ev.shown and not st.session_state.get(PANELS_READY):
        st.session_state[PANELS_READY] = True
        st.rerun()  # the whole page, with the panels held back below the map
    if ev.selection is not None:
        new = mapdata.picked_images(ev.selection, n_img, emb.text_owner)
        if not np.array_equal(new, picked):
            st.session_state[pick_key] = new.tolist()
            st.rerun(scope="fragment")
    with side:
        selection_panel(ds, emb, picked, pick_key)


def sampled(emb, layout, limit: int, seed: int = 0):
    """The embeddings and layout cut to a seeded sample of whole pairs (ids, captions and
    coordinates only: what the views draw)."""
    import dataclasses

    img_rows, cap_rows = projection.sample_for_3d(len(layout.image_xy), len(layout.text_xy), limit, seed,
                                                  text_owner=emb.text_owner)
    new_row = np.full(len(emb.ids), -1, np.int64)
    new_row[img_rows] = np.arange(len(img_rows))
    owner = new_row[emb.text_owner[cap_rows]]
    cap_rows = cap_rows[owner >= 0]
    small = dataclasses.replace(emb, ids=[emb.ids[r] for r in img_rows], captions=[emb.captions[j] for j in cap_rows],
                                text_owner=owner[owner >= 0], rows=emb.table_rows[img_rows],
                                image=np.empty((len(img_rows), 0)), text=np.empty((len(cap_rows), 0)))
    return small, dataclasses.replace(layout, image_xy=layout.image_xy[img_rows], text_xy=layout.text_xy[cap_rows])


def view_3d(ds, emb, layout, method: str, seed: int, pick_key: str) -> None:
    """plotly for 3-D layouts, on a seeded sample of at most SAMPLE_3D points (whole pairs)."""
    total = len(layout.image_xy) + len(layout.text_xy)
    if total > SAMPLE_3D:
        emb, layout = sampled(emb, layout, SAMPLE_3D, seed)
    picked = [r for r in st.session_state.get(pick_key, []) if r < len(emb.ids)]
    hover = ([f"image {i}" for i in emb.ids], [c[:80] for c in emb.captions])
    fig = viz.pairs_figure(layout.image_xy, layout.text_xy, emb.text_owner, sphere=method == "dosnes", hover=hover,
                           lines=len(emb.captions) <= 3000, picked=picked)
    st.plotly_chart(fig, key="gap_chart")
    shown = len(layout.image_xy) + len(layout.text_xy)
    if shown < total:
        st.caption(f"3-D views draw a seeded sample: {shown:,} of {total:,} points, each caption with its image. "
                   "The 2-D views draw every point.")
    query = st.text_input("Highlight pairs whose caption or id contains", key="gap_highlight",
                          placeholder="a word, or an image id")
    if query:
        hits = np.flatnonzero(np.isin(emb.table_rows, ds.match(query)))
        if hits[:50].tolist() != picked:
            st.session_state[pick_key] = hits[:50].tolist()
            st.rerun()
        st.caption(f"{len(hits):,} matching pairs" + (", the first 50 highlighted" if len(hits) > 50 else "")
                   + (" in the drawn sample" if shown < total else ""))


# ----------------------------------------------------------------------------------------
# metrics, histograms, spectrum


def metrics_panel(emb, key: str, seed: int) -> None:
    bar = st.progress(0.0, text="Computing metrics…")
    try:
        m, _ = results.metrics(common.workspace().home, emb, seed, progress=lambda d, t, stage: bar.progress(
            d / t, text=f"Computing metrics: {stage}"))
    finally:
        bar.empty()
    table = pd.DataFrame([{"metric": geometry.METRICS[k][0], "value": v, "meaning": geometry.METRICS[k][1]}
                          for k, v in m.items()])
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"value": st.column_config.NumberColumn(format="%.4f"),
                                "meaning": st.column_config.TextColumn(width="large")})
    common.download_csv("Metrics (CSV)", table, f"{key}-metrics.csv", "dl_metrics")


def held_back_panels(emb, seed: int) -> None:
    """Before the map is first drawn: compute what the panels show (cached), show it after."""
    home = common.workspace().home
    bar = st.progress(0.0, text="Computing metrics…")
    try:
        results.metrics(home, emb, seed, progress=lambda d, t, stage: bar.progress(d / t, text=f"Computing metrics: {stage}"))
        bar.progress(1.0, text="Histograms and spectrum…")
        results.cosine_histograms(home, emb)  # both stored by metrics() above, at seed 0
        results.spectra(home, emb)
    finally:
        bar.empty()
    st.caption("The metrics, the cosine histogram and the spectrum appear once the map is drawn.")
    st.button("Show them now", key="gap_show_panels", on_click=lambda: st.session_state.update({PANELS_READY: True}))


def cosine_panel(emb, key: str) -> None:
    h, _ = results.cosine_histograms(common.workspace().home, emb)
    edges = h["edges"]
    mids, width = (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0])
    fig = go.Figure()
    for name, counts, n, colour in (("unpaired (i ≠ j)", h["unpaired"], int(h["unpaired_n"]), "#999"),
                                    ("paired (i = j)", h["paired"], int(h["paired_n"]), PICK_COLOUR)):
        fig.add_trace(go.Bar(x=mids, y=counts / (n * width), width=width, name=f"{name}, {n:,}",
                             marker_color=colour, opacity=0.6))
    fig.update_layout(barmode="overlay", bargap=0, height=320, margin=dict(l=0, r=0, t=30, b=0),
                      xaxis_title="cos(image, caption)", yaxis_title="density", title="Paired versus unpaired cosine")
    st.plotly_chart(fig, key="cos_hist")
    common.download("Histogram (HTML)", lambda: fig.to_html(include_plotlyjs=True), f"{key}-cosines.html",
                    "text/html", "dl_cos")


def spectrum_panel(emb, key: str) -> None:
    spec, _ = results.spectra(common.workspace().home, emb)
    fig = go.Figure()
    for name, colour in (("images", IMAGE_COLOUR), ("texts", TEXT_COLOUR), ("joint", "black")):
        ev = np.maximum(np.asarray(spec[name]), 1e-12)
        fig.add_trace(go.Scatter(x=np.arange(1, len(ev) + 1), y=ev, mode="lines", name=name, line=dict(color=colour)))
    fig.update_layout(height=320, margin=dict(l=0, r=0, t=30, b=0), yaxis_type="log", xaxis_type="log",
                      xaxis_title="component", yaxis_title="eigenvalue", title="Covariance spectrum")
    st.plotly_chart(fig, key="spectrum")
    table = pd.DataFrame({k: pd.Series(v) for k, v in spec.items()})
    table.index = table.index + 1
    common.download_csv("Spectrum (CSV)", table, f"{key}-spectrum.csv", "dl_spec",
                        index=True, index_label="component")


# ----------------------------------------------------------------------------------------
# the page


st.title("Gap explorer")
if common.page_entered():
    st.session_state[PANELS_READY] = False
common.link_state("gap", [links.choice("projection", "gap_method", METHODS), links.integer("seed", "gap_seed", 0, 10_000),
                          links.text("highlight", "gap_highlight"), links.flag("lines", "gap_lines"),
                          links.ids("selected", LINK_SELECTED)])
ds, emb = common.dataset_and_embeddings("gap")
st.caption(f"**{ds.name}** under `{emb.model}`: {len(emb.ids):,} images and {len(emb.text):,} captions, "
           f"{emb.dim}-d. Blue: images; orange: captions.")
key = common.data_key(ds, emb)
controls = st.columns([3, 1, 2, 1])
method_label = controls[0].radio("Projection", list(METHODS), horizontal=True, key="gap_method")
method = METHODS[method_label]
seed = int(controls[1].number_input("Seed", 0, 10_000, 0, key="gap_seed"))
columns = [c for c in ds.manifest.get("extras", []) if c not in ("captions",)]
colour_by = controls[2].selectbox("Colour by", ["modality", *columns], key="gap_colour",
                                  help="The modality, or any column of the dataset's table (its 12 most frequent "
                                       "values; a numeric column with many values as a colour scale).")
few = len(emb.text) <= ALL_LINES
lines_on = controls[3].toggle("Pair lines", value=len(emb.text) <= viz.MAX_LINES, key="gap_lines", disabled=not few,
                              help="Lines joining each image to its captions" + (
                                  "" if few else f"; over {ALL_LINES:,} captions, drawn for the selection only"))
limit = projection.resolve_max_fit(method)
st.caption(f"Fits on a seeded sample of {limit:,} points and places the rest by their nearest fitted points."
           if limit and limit < len(emb.ids) + len(emb.text) else "Fits on every point.")
layout, hit = common.layout_for(ds, emb, method, seed)
st.session_state["gap_hit"] = hit
pick_key = f"gap_picked-{key}"  # a selection belongs to one dataset under one model

if layout.dims == 2:
    map_view(ds, emb, layout, colour_by, lines_on, pick_key)
else:
    view_3d(ds, emb, layout, method, seed, pick_key + "-3d")  # rows of the drawn sample

st.subheader("Metrics")
if layout.dims == 2 and not st.session_state.get(PANELS_READY):
    held_back_panels(emb, seed)
else:
    st.session_state[PANELS_READY] = True  # shown beside a 3-D view: kept when the user turns to 2-D
    metrics_panel(emb, key, seed)
    left, right = st.columns(2)
    with left:
        cosine_panel(emb, key)
    with right:
        spectrum_panel(emb, key)
