"""Gap explorer: image and text vectors in one projection, the gap between them, its metrics."""
import io

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import common
from mmviz import geometry, projection, viz
from mmviz.viz import IMAGE_COLOUR, MAX_LINES, PICK_COLOUR, TEXT_COLOUR

METHODS = common.PROJECTIONS


@st.cache_data(show_spinner=False, max_entries=16)
def metrics_for(key: str, _images: np.ndarray, _texts: np.ndarray, seed: int) -> dict:
    return geometry.all_metrics(_images, _texts, seed=seed)


@st.cache_data(show_spinner=False, max_entries=16)
def cosines_for(key: str, _images: np.ndarray, _texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return geometry.paired_cosines(_images, _texts), geometry.unpaired_cosines(_images, _texts)


@st.cache_data(show_spinner=False, max_entries=16)
def spectra_for(key: str, _images: np.ndarray, _texts: np.ndarray) -> dict:
    return {"images": geometry.spectrum(_images), "texts": geometry.spectrum(_texts),
            "joint": geometry.joint_spectrum(_images, _texts)}


def picked_rows(event, text_owner: np.ndarray, lines: bool) -> list[int]:
    """Image rows behind the selected points (a selected caption selects its image)."""
    if event is None or not event.selection.points:
        return []
    offset = 1 if lines else 0  # trace order: [pairs], images, captions, ...
    rows = set()
    for p in event.selection.points:
        curve, idx = p.get("curve_number"), p.get("point_index", p.get("point_number"))
        if curve == offset:
            rows.add(int(idx))
        elif curve == offset + 1:
            rows.add(int(text_owner[idx]))
    return sorted(rows)


def selection_panel(ds, emb, picked: list[int], pick_key: str) -> None:
    st.markdown(f"**{len(picked)} selected**" if picked else "**Select points** (lasso or box on 2-D views) "
                "to see their images and captions here.")
    if picked:
        st.button("Clear selection", key="gap_clear", on_click=lambda: st.session_state.pop(pick_key, None))
    thumbs = common.thumbnails(ds)
    for r in picked[:12]:
        id_ = emb.ids[r]
        cols = st.columns([1, 3])
        if id_ in thumbs:
            cols[0].image(thumbs[id_])
        caps = [c for c, o in zip(emb.captions, emb.text_owner) if o == r]
        cols[1].markdown(f"`{id_}`  \n" + "  \n".join(f"– {c}" for c in caps))
    if len(picked) > 12:
        st.caption(f"and {len(picked) - 12} more")


def metrics_panel(key: str, emb, seed: int) -> None:
    with st.spinner("Computing metrics…"):
        m = metrics_for(key, emb.image, emb.paired_text, seed)
    rows = [{"metric": geometry.METRICS[k][0], "value": v, "meaning": geometry.METRICS[k][1]} for k, v in m.items()]
    table = pd.DataFrame(rows)
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={"value": st.column_config.NumberColumn(format="%.4f"),
                                "meaning": st.column_config.TextColumn(width="large")})
    common.download("Metrics (CSV)", table.to_csv(index=False), f"{key}-metrics.csv", "text/csv", "dl_metrics")


def cosine_panel(key: str, emb) -> None:
    paired, unpaired = cosines_for(key, emb.image, emb.paired_text)
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=unpaired, name="unpaired (i ≠ j)", histnorm="probability density", opacity=0.6,
                               marker_color="#999"))
    fig.add_trace(go.Histogram(x=paired, name="paired (i = j)", histnorm="probability density", opacity=0.6,
                               marker_color=PICK_COLOUR))
    fig.update_layout(barmode="overlay", height=320, margin=dict(l=0, r=0, t=30, b=0), xaxis_title="cos(image, caption)",
                      title="Paired versus unpaired cosine")
    st.plotly_chart(fig, key="cos_hist")
    common.download("Histogram (HTML)", fig.to_html(include_plotlyjs="cdn"), f"{key}-cosines.html", "text/html", "dl_cos")


def spectrum_panel(key: str, emb) -> None:
    spec = spectra_for(key, emb.image, emb.paired_text)
    fig = go.Figure()
    for name, ev, colour in (("images", spec["images"], IMAGE_COLOUR), ("captions", spec["texts"], TEXT_COLOUR),
                             ("joint", spec["joint"], "black")):
        ev = np.maximum(np.asarray(ev), 1e-12)
        fig.add_trace(go.Scatter(x=np.arange(1, len(ev) + 1), y=ev, mode="lines", name=name, line=dict(color=colour)))
    fig.update_layout(height=320, margin=dict(l=0, r=0, t=30, b=0), yaxis_type="log", xaxis_type="log",
                      xaxis_title="component", yaxis_title="eigenvalue", title="Covariance spectrum")
    st.plotly_chart(fig, key="spectrum")
    csv = io.StringIO()
    pd.DataFrame({k: pd.Series(v) for k, v in spec.items()}).to_csv(csv, index_label="component")
    common.download("Spectrum (CSV)", csv.getvalue(), f"{key}-spectrum.csv", "text/csv", "dl_spec")


st.title("Gap explorer")
ds, emb = common.dataset_and_embeddings("gap")
st.caption(f"**{ds.name}** under `{emb.model}`: {len(emb.ids):,} images and {len(emb.text):,} captions, "
           f"{emb.dim}-d. Blue: images; orange: captions.")
key = common.data_key(ds, emb)
controls = st.columns([2, 1, 1, 2])
method_label = controls[0].radio("Projection", list(METHODS), horizontal=True, key="gap_method")
method = METHODS[method_label]
seed = int(controls[1].number_input("Seed", 0, 10_000, 0, key="gap_seed"))
lines = controls[2].toggle("Pair lines", value=len(emb.text) <= MAX_LINES, key="gap_lines")
limit = projection.resolve_max_fit(method)
controls[3].caption(f"Fits on at most {limit:,} points (seeded sample) and places the rest." if limit
                    else "Fits on every point.")
layout, hit = common.layout_for(ds, emb, method, seed)
pick_key = f"gap_picked-{key}"  # a selection belongs to one dataset under one model

plot, side = st.columns([3, 2])
with plot:
    picked = st.session_state.get(pick_key, [])
    fig = viz.pairs_figure(layout.image_xy, layout.text_xy, emb.text_owner, sphere=method == "dosnes",
                           hover=viz.pair_hover(emb.ids, emb.captions, emb.text_owner), lines=lines, picked=picked)
    if layout.image_xy.shape[1] == 2:
        event = st.plotly_chart(fig, key="gap_chart", on_select="rerun", selection_mode=("points", "box", "lasso"))
        # Act only when the chart's selection changed: other reruns (a toggle, a new view)
        # must not wipe what was picked, nor the highlights drawn from it.
        # Redrawing with highlights resets the chart's own selection, so an empty event never
        # clears the pick (the Clear button does).
        sig = repr(event.selection.points) if event is not None else "[]"
        if sig != st.session_state.get(f"{pick_key}-event", "[]"):
            st.session_state[f"{pick_key}-event"] = sig
            new = picked_rows(event, emb.text_owner, lines)
            if new and new != picked:
                st.session_state[pick_key] = new
                st.rerun()
    else:
        st.plotly_chart(fig, key="gap_chart")
        chosen = st.multiselect("Highlight pairs", emb.ids, default=[emb.ids[r] for r in picked if r < len(emb.ids)],
                                key="gap_pick_3d", max_selections=50)
        new = [emb.ids.index(i) for i in chosen]
        if new != picked:
            st.session_state[pick_key] = new
            st.rerun()
    st.caption(("Layout from the workspace cache. " if hit else "") +
               "Arrow: the gap, from the caption centre to the image centre." +
               (" Gap axis: x is the gap direction, y the main direction of variation across it."
                if method == "gap2" else ""))
    common.download("Figure (HTML)", fig.to_html(include_plotlyjs="cdn"), f"{key}-{method}.html", "text/html", "dl_fig")
with side:
    selection_panel(ds, emb, st.session_state.get(pick_key, []), pick_key)

st.subheader("Metrics")
metrics_panel(key, emb, seed)
left, right = st.columns(2)
with left:
    cosine_panel(key, emb)
with right:
    spectrum_panel(key, emb)
