"""Mixup: geodesic (slerp) versus linear mixing of an image and a caption, and how hard m2-mix's negatives are."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import common
import links
from mmviz import viz
from mmviz.retrieval import topk
from mmviz.transforms import linear_mix, mixed_negative_cosines, slerp
from mmviz.viz import IMAGE_COLOUR, PICK_COLOUR, TEXT_COLOUR

PATH_STEPS = 41  # points drawn along each path
TABLE_LAMS = (0.0, 0.25, 0.5, 0.75, 1.0)
HARDNESS_LAMS = np.linspace(0, 1, 11)
VIEWS = {"Great circle (exact)": None, "DOSNES sphere": "dosnes", "PCA 3D": "pca3"}
SLERP_COLOUR, LINEAR_COLOUR = "#2ca02c", "#9467bd"


@st.cache_data(show_spinner=False, max_entries=8)
def hardness_curve(key: str, _images: np.ndarray, _texts: np.ndarray) -> pd.DataFrame:
    """Mean cosine of an anchor to its negatives, CLIP's versus m2-mix's, at each lam."""
    rows = []
    for lam in HARDNESS_LAMS:
        c = mixed_negative_cosines(_images, _texts, lam)
        rows.append({"lam": lam, "image anchor: captions (CLIP)": c["image_text"].mean(),
                     "image anchor: mixes (m2-mix)": c["image_mixed"].mean(),
                     "caption anchor: images (CLIP)": c["text_image"].mean(),
                     "caption anchor: mixes (m2-mix)": c["text_mixed"].mean(),
                     "positive pairs": c["paired"].mean()})
    return pd.DataFrame(rows)


HARDNESS = ("image_text", "image_mixed", "paired")  # the cosines the histogram shows
HIST_BINS = 80


@st.cache_data(show_spinner=False, max_entries=8)
def hardness_at(key: str, lam: float, _images: np.ndarray, _texts: np.ndarray) -> dict:
    """Means and histograms (shared bin edges, densities) of the cosines at lam: a few hundred
    numbers for the browser instead of the 4 million cosines of 2,048 sampled pairs."""
    c = mixed_negative_cosines(_images, _texts, lam)
    lo, hi = min(float(c[k].min()) for k in HARDNESS), max(float(c[k].max()) for k in HARDNESS)
    edges = np.linspace(lo, hi + 1e-9, HIST_BINS + 1)
    return {"edges": edges, **{k: {"mean": float(c[k].mean()), "density": np.histogram(c[k], edges, density=True)[0]}
                               for k in HARDNESS}}


def circle_figure(a: np.ndarray, b: np.ndarray, lam: float, near: np.ndarray, near_kind: list[str]) -> go.Figure:
    """The plane through the origin, the image a and the caption b: the sphere cuts it in the
    unit circle, the slerp path is its arc from b to a, linear mixup the chord."""
    u1 = a
    u2 = b - (b @ a) * a
    u2 = u2 / max(np.linalg.norm(u2), 1e-12)
    plane = lambda v: np.stack([v @ u1, v @ u2], axis=-1)  # noqa: E731
    t = np.linspace(0, 2 * np.pi, 200)
    lams = np.linspace(0, 1, PATH_STEPS)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=np.cos(t), y=np.sin(t), mode="lines", line=dict(color="#bbb", width=1),
                             name="unit sphere (this plane)", hoverinfo="skip"))
    arc = plane(slerp(a[None], b[None], lams))
    chord = plane(linear_mix(a[None], b[None], lams, renormalise=False))
    ticks = np.linspace(0, 1, 11)
    fig.add_trace(go.Scatter(x=arc[:, 0], y=arc[:, 1], mode="lines", line=dict(color=SLERP_COLOUR, width=4),
                             name="slerp path (m2-mix)", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=chord[:, 0], y=chord[:, 1], mode="lines", name="linear mixup (chord)",
                             line=dict(color=LINEAR_COLOUR, width=2, dash="dash"), hoverinfo="skip"))
    for pts, name, colour, symbol in ((plane(slerp(a[None], b[None], ticks)), "slerp, λ = 0, 0.1, …, 1", SLERP_COLOUR, "circle"),
                                      (plane(linear_mix(a[None], b[None], ticks)), "linear, re-normalised", LINEAR_COLOUR, "x")):
        fig.add_trace(go.Scatter(x=pts[:, 0], y=pts[:, 1], mode="markers", name=name, marker=dict(color=colour, size=7, symbol=symbol),
                                 hovertext=[f"λ = {x:.1f}" for x in ticks], hoverinfo="text"))
    if len(near):
        p = plane(near)
        fig.add_trace(go.Scatter(x=p[:, 0], y=p[:, 1], mode="markers", name="nearest to the mix (projected)",
                                 marker=dict(color=[IMAGE_COLOUR if k == "image" else TEXT_COLOUR for k in near_kind],
                                             size=6, opacity=0.5)))
    now = plane(slerp(a, b, lam))
    lin = plane(linear_mix(a, b, lam, renormalise=False))
    fig.add_trace(go.Scatter(x=[1, plane(b)[0], now[0], lin[0]], y=[0, plane(b)[1], now[1], lin[1]],
                             mode="markers+text", text=["image", "caption", f"slerp λ={lam:.2f}", "linear"],
                             textposition=["middle right", "top center", "top left", "bottom right"],
                             marker=dict(size=[14, 14, 16, 10], color=[IMAGE_COLOUR, TEXT_COLOUR, PICK_COLOUR, LINEAR_COLOUR],
                                         line=dict(width=1, color="black")), name="ends and the mix"))
    fig.update_layout(height=560, margin=dict(l=0, r=0, t=30, b=0), legend=dict(orientation="h", y=-0.12, yanchor="top"),
                      xaxis_title="along the image", yaxis_title="along the caption's part orthogonal to the image")
    # Zoom to the arc, the chord and the neighbours (a CLIP pair spans a few tens of degrees).
    shown = np.concatenate([arc, chord, plane(near).reshape(-1, 2)])
    lo, hi = shown.min(0), shown.max(0)
    centre, half = (lo + hi) / 2, max((hi - lo).max() * 0.6, 0.2)
    fig.update_xaxes(range=[centre[0] - half, centre[0] + half])
    fig.update_yaxes(range=[centre[1] - half, centre[1] + half], scaleanchor="x", scaleratio=1)
    return fig


def layout_figure(ds, emb, method: str, a: np.ndarray, b: np.ndarray, lam: float) -> go.Figure:
    """The dataset's layout (a seeded sample of it on a large set) with the slerp path and the
    re-normalised linear mixes placed in it."""
    lams = np.linspace(0, 1, PATH_STEPS)
    img_rows, cap_rows, owner = common.drawn_pairs(len(emb.ids), emb.text_owner)
    if common.layout_sampled(len(emb.ids) + len(emb.text)):  # a whole layout would take minutes
        layout, _ = common.sample_layout(emb, method, img_rows, cap_rows)
        xy = (layout.image_xy, layout.text_xy)
    else:
        layout, _ = common.layout_for(ds, emb, method, 0)
        xy = (layout.image_xy[img_rows], layout.text_xy[cap_rows])
    place = layout.estimator.transform
    hover = viz.pair_hover([emb.ids[r] for r in img_rows], [emb.captions[j] for j in cap_rows], owner)
    fig = viz.pairs_figure(*xy, owner, sphere=method == "dosnes", lines=False, hover=hover, height=620)
    arc = place(slerp(a[None], b[None], lams).astype(np.float32))
    lin = place(linear_mix(a[None], b[None], np.linspace(0, 1, 11)).astype(np.float32))
    now = place(slerp(a, b, lam)[None].astype(np.float32))
    fig.add_trace(go.Scatter3d(**viz.coords(arc), mode="lines+markers", name="slerp path",
                               line=dict(color=SLERP_COLOUR, width=8), marker=dict(size=2, color=SLERP_COLOUR)))
    fig.add_trace(go.Scatter3d(**viz.coords(lin), mode="markers", name="linear, re-normalised (λ step 0.1)",
                               marker=dict(size=4, color=LINEAR_COLOUR, symbol="x")))
    fig.add_trace(go.Scatter3d(**viz.coords(now), mode="markers", name=f"mix at λ = {lam:.2f}",
                               marker=dict(size=9, color=PICK_COLOUR)))
    return fig, len(img_rows)


def neighbours_table(ds, emb, a: np.ndarray, b: np.ndarray, lam: float, k: int) -> None:
    lams = sorted(set(TABLE_LAMS) | {round(lam, 2)}, reverse=True)
    mixes = slerp(a[None], b[None], np.array(lams)).astype(np.float32)
    img_s, img_i = topk(mixes, emb.image, k)
    txt_s, txt_i = topk(mixes, emb.text, k)
    thumbs = common.thumbnails_of(ds, [emb.ids[i] for i in img_i.ravel()])
    cols = st.columns(len(lams))
    for c, lam_, si, ii, st_, it in zip(cols, lams, img_s, img_i, txt_s, txt_i):
        c.markdown(f"**λ = {lam_:.2f}**" + (" (image)" if lam_ == 1 else " (caption)" if lam_ == 0 else ""))
        for s, i in zip(si, ii):
            id_ = emb.ids[i]
            if id_ in thumbs:
                c.image(thumbs[id_], caption=f"{id_} · {s:.3f}", width=96)
            else:
                c.markdown(f"image `{id_}` · {s:.3f}")
        c.markdown("  \n".join(f"{s:.3f} · {emb.captions[j][:60]}" for s, j in zip(st_, it)))


st.title("Mixup")
common.link_state("mixup", [links.number("lam", "mx_lam", 0.0, 1.0), links.choice("view", "mx_view", {"Great circle (exact)": "circle", "DOSNES sphere": "dosnes", "PCA 3D": "pca3"}),
                            links.integer("k", "mx_k", 1, 10), links.text("image", "mx_image_q"), links.flag("any", "mx_any")])
st.caption("Geodesic multimodal mixup (m2-mix, Oh et al., NeurIPS 2023) mixes an image and a caption along the "
           "great circle between them (slerp), so the mix stays on the sphere where the embeddings live; plain "
           "linear mixup cuts through the inside. λ = 1 is the image, λ = 0 the caption.")
ds, emb = common.dataset_and_embeddings("mx")
key = common.data_key(ds, emb)

left, mid, right = st.columns([2, 3, 2])
with left:
    picked = common.pick_row(ds, "Image", "mx_image")
    row = None if picked is None else common.embedding_row(ds, emb, picked)
    any_text = st.toggle("Any caption", key="mx_any", help="Off: one of the image's own captions.")
    if any_text:  # a caption of any pair: found by search like the image
        other = common.pick_row(ds, "Caption of", "mx_other")
        source = None if other is None else common.embedding_row(ds, emb, other)
    else:
        source = row
if row is None or source is None:
    st.info("Pick an image (and a pair whose caption to mix with it): search by id or caption.")
    st.stop()
choices = np.flatnonzero(emb.text_owner == source).tolist()
col = mid.selectbox("Caption", choices, key="mx_text",
                    format_func=lambda j: f"{emb.captions[j]}  ({'own' if emb.text_owner[j] == row else emb.ids[emb.text_owner[j]]})")
lam = mid.slider("λ (1 = image, 0 = caption)", 0.0, 1.0, 0.5, 0.01, key="mx_lam")
view = right.radio("View", list(VIEWS), key="mx_view")
k = right.slider("Neighbours", 1, 10, 3, key="mx_k")
if col is None:
    st.stop()
a, b = np.asarray(emb.image[row], dtype=np.float64), np.asarray(emb.text[col], dtype=np.float64)
theta = float(np.degrees(np.arccos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1))))
st.caption(f"Angle between them: {theta:.1f}° (cosine {np.cos(np.radians(theta)):.3f}). The slerp mix at λ = {lam:.2f} "
           f"is {(1 - lam) * theta:.1f}° from the image; the re-normalised linear mix is "
           f"{np.degrees(np.arccos(np.clip(linear_mix(a, b, lam) @ (a / np.linalg.norm(a)), -1, 1))):.1f}° from it "
           f"(linear mixing moves unevenly along the arc), and before re-normalising its length is "
           f"{np.linalg.norm(linear_mix(a, b, lam, renormalise=False)):.3f}.")

plot, side = st.columns([3, 2])
with plot:
    if VIEWS[view] is None:
        mix = slerp(a, b, lam).astype(np.float32)
        (_, ni), (_, nt) = topk(mix, emb.image, 20), topk(mix, emb.text, 20)
        near = np.concatenate([emb.image[np.sort(ni)], emb.text[np.sort(nt)]]).astype(np.float64)
        st.plotly_chart(circle_figure(a / np.linalg.norm(a), b / np.linalg.norm(b), lam, near,
                                      ["image"] * len(ni) + ["text"] * len(nt)), key="mx_chart")
        st.caption("The plane through the image, the caption and the origin. Faint points: the 20 images and "
                   "captions nearest the mix, projected onto this plane (inside the circle: they leave it).")
    else:
        fig, drawn = layout_figure(ds, emb, VIEWS[view], a, b, lam)
        st.plotly_chart(fig, key="mx_chart")
        sample = f" Drawn: a seeded sample of {drawn:,} of the {len(emb.ids):,} pairs." if drawn < len(emb.ids) else ""
        st.caption("The path placed into the dataset's layout (new points land next to the fitted points they "
                   f"are most similar to).{sample}")
with side:
    st.markdown("**How hard are m2-mix's negatives?**")
    h = hardness_at(key, lam, emb.image, emb.paired_text)
    fig = go.Figure()
    centres, width = (h["edges"][1:] + h["edges"][:-1]) / 2, np.diff(h["edges"])
    for which, name, colour in (("image_text", "cos(image, other captions): CLIP's negatives", "#999"),
                                ("image_mixed", f"cos(image, other pairs' mixes at λ={lam:.2f}): m2-mix's", SLERP_COLOUR),
                                ("paired", "cos(image, own caption): positives", PICK_COLOUR)):
        fig.add_trace(go.Bar(x=centres, y=h[which]["density"], width=width, name=name, opacity=0.6, marker_color=colour))
    fig.update_layout(barmode="overlay", bargap=0, height=300, margin=dict(l=0, r=0, t=10, b=0), xaxis_title="cosine",
                      yaxis_title="density", legend=dict(orientation="h", y=-0.25, yanchor="top"))
    st.plotly_chart(fig, key="mx_hist")
    gain = h["image_mixed"]["mean"] - h["image_text"]["mean"]
    st.markdown(f"At λ = {lam:.2f} an image's mixed negatives are on average **{gain:+.3f}** closer in cosine "
                f"than CLIP's ({h['image_mixed']['mean']:.3f} against {h['image_text']['mean']:.3f}). Harder negatives "
                "give the contrastive loss more to push against: the effect m2-mix relies on.")
    curve = hardness_curve(key, emb.image, emb.paired_text)
    fig = go.Figure()
    for name in curve.columns[1:]:
        fig.add_trace(go.Scatter(x=curve["lam"], y=curve[name], mode="lines+markers", name=name,
                                 line=dict(dash="dash" if "CLIP" in name else "solid")))
    fig.update_layout(height=300, margin=dict(l=0, r=0, t=10, b=0), xaxis_title="λ", yaxis_title="mean cosine",
                      legend=dict(orientation="h", y=-0.25, yanchor="top"))
    st.plotly_chart(fig, key="mx_curve")
    common.download_csv("Hardness by λ (CSV)", curve, f"{key}-mixup-hardness.csv", "mx_dl_curve")

st.subheader("Nearest images and captions of the mix")
neighbours_table(ds, emb, a, b, lam, k)
