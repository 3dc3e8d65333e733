"""Gap explorer: image and text vectors in one projection, the gap between them, its metrics."""
import io

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import common
from mmviz import geometry, projection
from mmviz.embed import embed_dataset, stored_embeddings
from mmviz.models import ModelSpecError, ModelUnavailable

METHODS = {
    "Gap axis": "gap2",
    "PCA 2D": "pca2",
    "PCA 3D": "pca3",
    "UMAP 2D": "umap2",
    "UMAP 3D": "umap3",
    "DOSNES sphere": "dosnes",
}
IMAGE_COLOUR, TEXT_COLOUR, PICK_COLOUR = "#1f77b4", "#ff7f0e", "#d62728"
MAX_LINES = 3000  # partner lines drawn at most (more is unreadable and slow)


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


def download(label: str, data: bytes | str, name: str, mime: str, key: str) -> None:
    st.download_button(label, data, file_name=name, mime=mime, key=key, icon=":material/download:")


@st.cache_resource(show_spinner=False, max_entries=8)
def _complete_embeddings(version_path: str, name: str, spec: str):
    """A dataset version's full set of vectors under a model never changes, so reruns (a
    selection, a toggle) reuse it instead of re-reading the cache; incomplete sets are not
    kept, so they are looked up again after an embed."""
    from mmviz.store import Dataset

    emb = stored_embeddings(common.workspace(), Dataset(name, version_path), spec)
    if emb is None:
        raise LookupError  # not cached by st.cache_resource
    return emb


def need_embeddings(ds, spec: str):
    ws = common.workspace()
    try:
        try:
            emb = _complete_embeddings(str(ds.path), ds.name, spec)
        except LookupError:
            emb = None
    except (ModelSpecError, ModelUnavailable, ValueError) as e:
        st.warning(f"Cannot use {spec}: {e}", icon=":material/cloud_off:")
        return None
    if emb is not None:
        return emb
    st.info(f"{ds.name} is not embedded under {spec} yet.")
    if st.button(f"Embed {ds.name} with {spec}", type="primary", key="gap_embed"):
        bar = st.progress(0.0, text=f"Loading {spec}…")
        try:
            return embed_dataset(ws, ds, spec, progress=lambda n, t, stage: bar.progress(
                n / max(t, 1), text=f"Embedding {stage}: {n:,} / {t:,}"))
        except (ModelSpecError, ModelUnavailable, ValueError) as e:
            st.error(str(e))
        finally:
            bar.empty()
    return None


def layout_for(ds, emb, method: str, seed: int):
    ws = common.workspace()
    first = ("Fitting UMAP… (the first fit after launch also compiles numba code: about 15 s more)"
             if method.startswith("umap") else "Projecting…")
    bar = st.progress(0.0, text=first)

    def progress(step: int, total: int) -> None:
        if method == "dosnes":  # only DOSNES reports its steps; the others say start and end
            bar.progress(step / max(total, 1), text=f"Optimising the layout: step {step:,} / {total:,}")
        elif step == total:
            bar.progress(1.0, text="Placing the remaining points…")

    try:
        layout, hit = projection.cached_layout(
            ws, {"dataset": ds.manifest["content_hash"], "model": emb.fingerprint}, emb.image, emb.text,
            method, None, seed, progress=progress)
    finally:
        bar.empty()
    return layout, hit


def hover(emb) -> tuple[list[str], list[str]]:
    img = [f"image {i}<br>{emb.captions[j][:80]}" for i, j in zip(emb.ids, np.unique(emb.text_owner, return_index=True)[1])]
    txt = [f"caption of {emb.ids[o]}<br>{c[:80]}" for c, o in zip(emb.captions, emb.text_owner)]
    return img, txt


def figure(emb, layout, method: str, lines: bool, picked: list[int]) -> go.Figure:
    xi, xt = layout.image_xy, layout.text_xy
    dims = xi.shape[1]
    img_hover, txt_hover = hover(emb)
    fig = go.Figure()
    scatter = go.Scatter3d if dims == 3 else go.Scatter
    size = 3 if dims == 3 else 6

    def coords(a):
        return dict(x=a[:, 0], y=a[:, 1], z=a[:, 2]) if dims == 3 else dict(x=a[:, 0], y=a[:, 1])

    if method == "dosnes":  # a faint unit sphere so the layout reads as a globe
        u, v = np.mgrid[0:2 * np.pi:30j, 0:np.pi:15j]
        fig.add_trace(go.Surface(x=np.cos(u) * np.sin(v) * 0.98, y=np.sin(u) * np.sin(v) * 0.98, z=np.cos(v) * 0.98,
                                 opacity=0.08, showscale=False, colorscale=[[0, "#888"], [1, "#888"]],
                                 hoverinfo="skip", name="sphere"))
    if lines:
        owners = emb.text_owner[:MAX_LINES]
        seg = np.full((3 * len(owners), dims), np.nan)
        seg[0::3], seg[1::3] = xi[owners], xt[:len(owners)]
        fig.add_trace(scatter(**coords(seg), mode="lines", line=dict(color="rgba(120,120,120,0.25)", width=1),
                              hoverinfo="skip", name="pairs"))
    fig.add_trace(scatter(**coords(xi), mode="markers", marker=dict(size=size, color=IMAGE_COLOUR, opacity=0.75),
                          name=f"images ({len(xi):,})", hovertext=img_hover, hoverinfo="text"))
    fig.add_trace(scatter(**coords(xt), mode="markers", marker=dict(size=size, color=TEXT_COLOUR, opacity=0.75),
                          name=f"captions ({len(xt):,})", hovertext=txt_hover, hoverinfo="text"))
    if picked:
        partners = np.flatnonzero(np.isin(emb.text_owner, picked))
        fig.add_trace(scatter(**coords(xi[picked]), mode="markers", name="selected images",
                              marker=dict(size=size + 6, color=PICK_COLOUR, symbol="circle-open" if dims == 2 else "circle")))
        fig.add_trace(scatter(**coords(xt[partners]), mode="markers", name="their captions",
                              marker=dict(size=size + 6, color=PICK_COLOUR, symbol="diamond-open" if dims == 2 else "diamond")))
    # The gap: from the caption centroid to the image centroid (on the sphere, their directions).
    ci, ct = xi.mean(0), xt.mean(0)
    if method == "dosnes":
        ci, ct = ci / np.linalg.norm(ci), ct / np.linalg.norm(ct)
    if dims == 2:
        fig.add_annotation(x=ci[0], y=ci[1], ax=ct[0], ay=ct[1], xref="x", yref="y", axref="x", ayref="y",
                           arrowhead=3, arrowsize=1.5, arrowwidth=3, arrowcolor="black", text="")
        fig.add_trace(go.Scatter(x=[ct[0], ci[0]], y=[ct[1], ci[1]], mode="markers+text", name="centroids",
                                 text=["text centre", "image centre"], textposition="top center",
                                 marker=dict(size=12, color=[TEXT_COLOUR, IMAGE_COLOUR], line=dict(width=2, color="black"))))
    else:
        fig.add_trace(go.Scatter3d(x=[ct[0], ci[0]], y=[ct[1], ci[1]], z=[ct[2], ci[2]], mode="lines+markers+text",
                                   text=["text centre", "image centre"], name="gap",
                                   line=dict(color="black", width=6),
                                   marker=dict(size=7, color=[TEXT_COLOUR, IMAGE_COLOUR])))
    fig.update_layout(height=640, margin=dict(l=0, r=0, t=30, b=0), legend=dict(orientation="h", y=-0.05, yanchor="top"),
                      dragmode="lasso" if dims == 2 else "orbit")
    if dims == 2:
        fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return fig


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
    thumbs = ds.thumbnails()
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
    download("Metrics (CSV)", table.to_csv(index=False), f"{key}-metrics.csv", "text/csv", "dl_metrics")


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
    download("Histogram (HTML)", fig.to_html(include_plotlyjs="cdn"), f"{key}-cosines.html", "text/html", "dl_cos")


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
    download("Spectrum (CSV)", csv.getvalue(), f"{key}-spectrum.csv", "text/csv", "dl_spec")


st.title("Gap explorer")
ds = common.current_dataset()
spec = common.current_model()
if ds is None:
    st.info("No dataset yet: import one on the Data page.")
    st.stop()
emb = need_embeddings(ds, spec)
if emb is None:
    st.stop()
st.caption(f"**{ds.name}** under `{emb.model}`: {len(emb.ids):,} images and {len(emb.text):,} captions, "
           f"{emb.dim}-d. Blue: images; orange: captions.")
key = f"{ds.name}-{emb.fingerprint[:10]}"
controls = st.columns([2, 1, 1, 2])
method_label = controls[0].radio("Projection", list(METHODS), horizontal=True, key="gap_method")
method = METHODS[method_label]
seed = int(controls[1].number_input("Seed", 0, 10_000, 0, key="gap_seed"))
lines = controls[2].toggle("Pair lines", value=len(emb.text) <= MAX_LINES, key="gap_lines")
limit = projection.resolve_max_fit(method)
controls[3].caption(f"Fits on at most {limit:,} points (seeded sample) and places the rest." if limit
                    else "Fits on every point.")
layout, hit = layout_for(ds, emb, method, seed)
pick_key = f"gap_picked-{key}"  # a selection belongs to one dataset under one model

plot, side = st.columns([3, 2])
with plot:
    picked = st.session_state.get(pick_key, [])
    fig = figure(emb, layout, method, lines, picked)
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
    download("Figure (HTML)", fig.to_html(include_plotlyjs="cdn"), f"{key}-{method}.html", "text/html", "dl_fig")
with side:
    selection_panel(ds, emb, st.session_state.get(pick_key, []), pick_key)

st.subheader("Metrics")
metrics_panel(key, emb, seed)
left, right = st.columns(2)
with left:
    cosine_panel(key, emb)
with right:
    spectrum_panel(key, emb)
