"""Transforms: C3 collapse / corrupt and the gap shift on the current embeddings, before and after."""
import io

import numpy as np
import streamlit as st

import common
from mmviz import transforms, viz

METRICS_MAX_N = 2048  # pairs for the O(n^2) metrics here: keeps a slider step near a second at 5,000 pairs
KINDS = {"Collapse": "collapse", "Corrupt": "corrupt", "Shift": "shift"}
ABOUT = {
    "collapse": "**Collapse** (C3, Zhang et al. 2024): subtract each modality's mean (times the strength), "
                "then re-normalise.",
    "corrupt": "**Corrupt** (C3): add Gaussian noise of standard deviation σ to every coordinate, then "
               "re-normalise. C3 uses σ² = 0.016.",
    "shift": "**Shift** (Liang et al. 2022): move images by −λ/2 and captions by +λ/2 along the gap direction, "
             "then re-normalise. λ > 0 closes the gap, λ < 0 widens it.",
}


@st.cache_resource(show_spinner=False, max_entries=32)
def transformed(key: str, kind: str, params: tuple, _images: np.ndarray, _texts: np.ndarray):
    t = transforms.make(kind, **dict(params)).fit(_images, _texts)
    return t.transform(_images, _texts)


@st.cache_data(show_spinner=False, max_entries=64)
def evaluated(key: str, variant: str, _images: np.ndarray, _texts: np.ndarray, _owner: np.ndarray) -> dict:
    return transforms.evaluate(_images, _texts, _owner, max_n=METRICS_MAX_N)


@st.cache_resource(show_spinner=False, max_entries=32)
def placed(layout_key: str, variant: str, _layout, _images: np.ndarray, _texts: np.ndarray):
    xy = _layout.estimator.transform(np.concatenate([_images, _texts]))
    return xy[:len(_images)], xy[len(_images):]


def parameters(kind: str, gap: float) -> dict:
    """The chosen transform's sliders; returns its keyword arguments."""
    if kind == "collapse":
        strength = st.slider("Strength", 0.0, 1.0, 1.0, 0.05, key="tf_strength",
                             help="The fraction of each mean removed: 1 is C3's collapse, 0 changes nothing.")
        renormalise = st.toggle("Re-normalise", value=True, key="tf_renorm",
                                help="Off: the centred vectors keep their lengths (no longer on the sphere).")
        return {"strength": float(strength), "renormalise": renormalise}
    if kind == "corrupt":
        sigma = st.slider("Noise σ", 0.0, 0.5, round(transforms.C3_SIGMA, 3), 0.001, key="tf_sigma", format="%.3f")
        seed = st.number_input("Noise seed", 0, 10_000, 0, key="tf_seed")
        sides = st.segmented_control("Add noise to", ["images", "captions"], default=["images", "captions"],
                                     selection_mode="multi", key="tf_sides") or []
        return {"sigma": float(sigma), "seed": int(seed),
                "modalities": tuple({"images": "image", "captions": "text"}[s] for s in sides)}
    lam = st.slider("λ", -1.0, 2.0, round(gap, 2), 0.01, key="tf_lam",
                    help=f"λ = {gap:.3f}, the gap's length, makes the centres meet before re-normalising.")
    st.caption(f"Gap length before: {gap:.3f}")
    return {"lam": float(lam)}


HEADLINE = {"gap_length": "inverse", "i2t_r1": "normal", "uniformity_union": "inverse", "relative_alignment": "normal"}


st.title("Transforms")
st.caption("Try the fixes from the literature on the current embeddings: the same layout and the same numbers, "
           "before and after. Nothing stored is changed.")
ds, emb = common.dataset_and_embeddings("tf")
key = common.data_key(ds, emb)
gap = float(np.linalg.norm(emb.image.mean(0) - emb.text.mean(0)))  # what Shift moves along: all captions

left, mid, right = st.columns([1, 2, 2])
kind = KINDS[left.radio("Transform", list(KINDS), key="tf_kind")]
with mid:
    st.markdown(ABOUT[kind])
    params = parameters(kind, gap)
with right:
    method_label = st.radio("Projection", list(common.PROJECTIONS), horizontal=True, key="tf_method")
    refit = st.radio("After", ["Place in the before layout", "Refit on the result"], horizontal=True,
                     key="tf_place", help="Placing shows movement against fixed axes; refitting shows the new "
                                          "set's own structure.") == "Refit on the result"
method = common.PROJECTIONS[method_label]
variant = f"{kind}:{sorted(params.items())}"

images, texts = transformed(key, kind, tuple(sorted(params.items())), emb.image, emb.text)
before_layout, _ = common.layout_for(ds, emb, method, 0)
if refit:
    after_layout, _ = common.layout_for(ds, emb, method, 0, images=images, texts=texts,
                                        variant={"transform": kind, **params})
    after_xy = (after_layout.image_xy, after_layout.text_xy)
else:
    note = (" (UMAP refits its model once to place new points: seconds)"
            if method.startswith("umap") and not getattr(before_layout.estimator, "fitted", True) else "")
    with st.spinner(f"Placing the transformed points{note}…"):
        after_xy = placed(before_layout.key or f"{key}-{method}", variant, before_layout, images, texts)

hover = viz.pair_hover(emb.ids, emb.captions, emb.text_owner)
lines = len(emb.text) <= viz.MAX_LINES
sphere = method == "dosnes"
fig_before = viz.pairs_figure(before_layout.image_xy, before_layout.text_xy, emb.text_owner, hover=hover,
                              sphere=sphere, lines=lines, height=520, title="Before")
fig_after = viz.pairs_figure(*after_xy, emb.text_owner, hover=hover, sphere=sphere and not refit, lines=lines,
                             height=520, title=f"After {kind}" + (" (refitted)" if refit else " (placed)"))
if not refit:
    viz.same_ranges(fig_before, fig_after, points=[before_layout.image_xy, before_layout.text_xy, *after_xy])
plots = st.columns(2)
plots[0].plotly_chart(fig_before, key="tf_before")
plots[1].plotly_chart(fig_after, key="tf_after")
if not refit and method in ("umap2", "umap3", "dosnes"):
    st.caption("UMAP and DOSNES place new points next to the fitted points they are most similar to, so a "
               "set that moved far lands beside the old points it resembles; Gap axis and PCA show the "
               "movement linearly.")

st.subheader("Metrics before and after")
with st.spinner("Computing metrics…"):
    before = evaluated(key, "before", emb.image, emb.text, emb.text_owner)
    after = evaluated(key, variant, images, texts, emb.text_owner)
common.metric_headline(before, after, HEADLINE)
common.metric_table(before, after, f"{key}-{kind}", "tf",
                    f"Uniformity, relative alignment and the C3 terms use a seeded sample of {METRICS_MAX_N:,} pairs; "
                    "each image's first caption stands for it in the geometry metrics, and recall@k counts any of its "
                    "captions.")


def vectors_npz() -> bytes:  # built on click only: 20 MB at 5,000 pairs would slow every rerun
    buf = io.BytesIO()
    np.savez(buf, ids=np.array(emb.ids), image=images, text=texts, text_owner=emb.text_owner)
    return buf.getvalue()


common.download("Transformed vectors (.npz)", vectors_npz, f"{key}-{kind}.npz", "application/octet-stream",
                "tf_dl_vectors")
