"""Transforms: C3 collapse / corrupt and the gap shift on the current embeddings, before and after."""
import io

import numpy as np
import streamlit as st

import common
import links
from mmviz import transforms, viz
from mmviz.arrays import gather_rows
from mmviz.derived import stored_dtype_for
from mmviz.retrieval import IN_MEMORY_BYTES

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


DOWNLOAD_MAX_BYTES = 2 ** 28  # the .npz download is built in memory: up to 256 MB of float32


def progress_bar(text: str):
    """A progress bar and its callback(done, total), for the long steps on a large set."""
    bar = st.progress(0.0, text=text)
    return bar, lambda done, total: bar.progress(min(done / max(total, 1), 1.0), text=f"{text} {done / max(total, 1):.0%}")


def transformed(emb, kind: str, params: dict, fitted):
    """The fitted transform applied to every vector: stored in the workspace under (dataset,
    model, transform, parameters) and read back as memory maps (mmviz.derived), so a million
    pairs take disk, not memory, and a slider position seen before opens at once."""
    from mmviz.derived import transform_parts, transformed as stored

    bar, progress = progress_bar(f"Applying {kind} to all {len(emb.ids) + len(emb.text):,} vectors…")
    try:
        return stored(common.workspace().home, transform_parts(emb.key_parts, kind, params), fitted,
                      emb.image, emb.text, progress=progress)
    finally:
        bar.empty()


def evaluated(emb, variant: str, images, texts, queries: int | None) -> dict:
    """transforms.evaluate of these vectors, kept in the workspace's results (mmviz.results)."""
    from mmviz.results import cached_json

    parts = {**emb.key_parts, "variant": variant, "max_n": METRICS_MAX_N, "recall_queries": queries, "seed": 0}
    what = "all queries" if queries is None else f"{queries:,} sampled queries"
    bar, progress = progress_bar(f"Metrics {'before' if variant == 'none' else 'after'} (recall@k over {what})…")
    try:
        return cached_json(common.workspace().home, "transform_metrics", parts, lambda: transforms.evaluate(
            images, texts, emb.text_owner, max_n=METRICS_MAX_N, recall_queries=queries, progress=progress))[0]
    finally:
        bar.empty()


def means_of(emb) -> tuple[np.ndarray, np.ndarray]:
    """The image and caption means over every pair (what every transform here is fitted on):
    one chunked pass, kept in the workspace's results."""
    from mmviz.results import cached_arrays

    with st.spinner(f"Averaging {len(emb.ids) + len(emb.text):,} vectors…"):
        got, _ = cached_arrays(common.workspace().home, "modality_means", emb.key_parts,
                               lambda: dict(zip(("image", "text"), transforms.means(emb.image, emb.text))))
    return got["image"], got["text"]


@st.cache_resource(show_spinner=False, max_entries=32)
def placed(layout_key: str, variant: str, drawn: int, _layout, _images: np.ndarray, _texts: np.ndarray):
    xy = _layout.estimator.transform(np.concatenate([_images, _texts]).astype(np.float32))
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
    st.caption(f"Gap length before: {gap:.3f} (image mean minus caption mean, all captions)")
    return {"lam": float(lam)}


HEADLINE = {"gap_length": "inverse", "i2t_r1": "normal", "uniformity_union": "inverse", "relative_alignment": "normal"}


st.title("Transforms")
common.link_state("transforms", [
    links.choice("transform", "tf_kind", KINDS), links.number("strength", "tf_strength", 0.0, 1.0),
    links.number("sigma", "tf_sigma", 0.0, 0.5), links.integer("seed", "tf_seed", 0, 10_000),
    links.number("lam", "tf_lam", -1.0, 2.0), links.choice("projection", "tf_method", common.PROJECTIONS),
    links.choice("after", "tf_place", {"Place in the before layout": "place", "Refit on the result": "refit"})])
st.caption("Try the fixes from the literature on the current embeddings: the same layout and the same numbers, "
           "before and after. Nothing stored is changed.")
ds, emb = common.dataset_and_embeddings("tf")
key = common.data_key(ds, emb)
image_mean, text_mean = means_of(emb)
gap = float(np.linalg.norm(image_mean - text_mean))  # what Shift moves along: all captions

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
    queries = common.recall_queries_choice(len(emb.ids), "tf_queries")
method = common.PROJECTIONS[method_label]
variant = f"{kind}:{sorted(params.items())}"
fitted = transforms.make(kind, **params).fit_means(image_mean, text_mean)  # on every pair

img_rows, cap_rows, owner = common.drawn_pairs(len(emb.ids), emb.text_owner)
sampled = common.layout_sampled(len(emb.ids) + len(emb.text))
# The drawn rows after the transform. On a large set Collapse and Shift (which act on each row
# alone) transform the drawn sample at once and write the whole set after the figures;
# Corrupt's noise comes from one stream over every row, so its drawn rows are read from the
# stored set, as are a small set's (all of it is drawn: no work twice).
early = kind != "corrupt" and len(img_rows) < len(emb.ids) and not (refit and not sampled)
after_set = None if early else transformed(emb, kind, params, fitted)
if after_set is None:
    dtype = stored_dtype_for(len(emb.ids), len(emb.text), emb.dim)  # as they will be stored
    after_i, after_t = (x.astype(dtype) for x in fitted.transform(gather_rows(emb.image, img_rows),
                                                                  gather_rows(emb.text, cap_rows)))
else:
    after_i, after_t = gather_rows(after_set.image, img_rows), gather_rows(after_set.text, cap_rows)
if sampled:  # a large set: lay out the drawn sample (common.layout_sampled says why)
    before_layout, _ = common.sample_layout(emb, method, img_rows, cap_rows)
    before_xy = (before_layout.image_xy, before_layout.text_xy)
else:
    before_layout, _ = common.layout_for(ds, emb, method, 0)
    before_xy = (before_layout.image_xy[img_rows], before_layout.text_xy[cap_rows])
if refit and sampled:
    after_layout, _ = common.sample_layout(emb, method, np.arange(len(img_rows)), np.arange(len(cap_rows)), after_i,
                                           after_t, variant={"transform": kind, **params})
    after_xy = (after_layout.image_xy, after_layout.text_xy)
elif refit:
    after_layout, _ = common.layout_for(ds, emb, method, 0, images=after_set.image, texts=after_set.text,
                                        variant={"transform": kind, **params})
    after_xy = (after_layout.image_xy[img_rows], after_layout.text_xy[cap_rows])
else:
    note = (" (UMAP refits its model once to place new points: seconds)"
            if method.startswith("umap") and not getattr(before_layout.estimator, "fitted", True) else "")
    with st.spinner(f"Placing the transformed points{note}…"):  # only the points drawn
        after_xy = placed(before_layout.key or f"{key}-{method}", variant, len(img_rows), before_layout, after_i,
                          after_t)

ids = [emb.ids[r] for r in img_rows]
hover = viz.pair_hover(ids, [emb.captions[j] for j in cap_rows], owner)
lines = len(cap_rows) <= viz.MAX_LINES
sphere = method == "dosnes"
fig_before = viz.pairs_figure(*before_xy, owner, hover=hover, sphere=sphere, lines=lines, height=520, title="Before")
fig_after = viz.pairs_figure(*after_xy, owner, hover=hover, sphere=sphere and not refit, lines=lines,
                             height=520, title=f"After {kind}" + (" (refitted)" if refit else " (placed)"))
if not refit:
    viz.same_ranges(fig_before, fig_after, points=[*before_xy, *after_xy])
plots = st.columns(2)
plots[0].plotly_chart(fig_before, key="tf_before")
plots[1].plotly_chart(fig_after, key="tf_after")
if len(img_rows) < len(emb.ids):
    on_sample = (f" The layout is fitted on this sample: one of all {len(emb.ids) + len(emb.text):,} vectors takes "
                 "minutes for each setting (the Gap explorer draws it)." if sampled else "")
    st.caption(f"Drawn: a seeded sample of {len(img_rows):,} of the {len(emb.ids):,} images and their "
               f"{len(cap_rows):,} captions. The transform is fitted on every pair and the metrics below use them "
               f"all.{on_sample}")
if not refit and method in ("umap2", "umap3", "dosnes"):
    st.caption("UMAP and DOSNES place new points next to the fitted points they are most similar to, so a "
               "set that moved far lands beside the old points it resembles; Gap axis and PCA show the "
               "movement linearly.")

st.subheader("Metrics before and after")
after_set = after_set or transformed(emb, kind, params, fitted)
images, texts = after_set.image, after_set.text  # memory maps of the stored result ...
if (len(images) + len(texts)) * emb.dim * 4 <= IN_MEMORY_BYTES:  # ... read whole when small: passes run faster
    images, texts = np.array(images), np.array(texts)
before = evaluated(emb, "none", emb.image, emb.text, queries)
after = evaluated(emb, variant, images, texts, queries)
common.metric_headline(before, after, HEADLINE)
recall_note = ("recall@k counts any of its captions" if queries is None else
               f"recall@k is measured on a seeded sample of {queries:,} image and {queries:,} caption queries, each "
               "searched against every key (an image hits when any of its captions is retrieved)")
common.metric_table(before, after, f"{key}-{kind}", "tf",
                    f"Uniformity, relative alignment and the C3 terms use a seeded sample of {METRICS_MAX_N:,} pairs; "
                    f"each image's first caption stands for it in the geometry metrics, and {recall_note}.")


def vectors_npz() -> bytes:  # built on click only: 20 MB at 5,000 pairs would slow every rerun
    buf = io.BytesIO()
    np.savez(buf, ids=np.array(emb.ids), image=images, text=texts, text_owner=emb.text_owner)
    return buf.getvalue()


if (len(images) + len(texts)) * emb.dim * 4 <= DOWNLOAD_MAX_BYTES:
    common.download("Transformed vectors (.npz)", vectors_npz, f"{key}-{kind}.npz", "application/octet-stream",
                    "tf_dl_vectors")
else:
    st.caption(f"The transformed vectors ({len(images) + len(texts):,} rows) are too large to download through the "
               f"browser; they are stored as NumPy files in `{after_set.path}` (image.npy, text.npy, rows in the "
               "dataset's order).")
