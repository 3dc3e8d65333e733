"""Captions: score candidate captions with MID, CLIP-S and RefCLIP-S, and see where they disagree."""
import hashlib

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

import common
import links
from mmviz import candidates as cand
from mmviz.data import DataFormatError
from mmviz.models import ModelSpecError, ModelUnavailable, load_model

DEMO, UPLOAD = "Demo: ground truth, paraphrase and foil", "Upload candidates (CSV or JSONL)"
SENT = "From the Captioning page"
SCORES = {"clip_s": "CLIP-S", "refclip_s": "RefCLIP-S", "pmi": "PMI (MID)"}
number = st.column_config.NumberColumn(format="%.3f")
THUMBS_MAX = 2000  # table rows shown with thumbnails
DEMO_MAX_IMAGES = 2000  # images of a large shapes-world set the demo judges (3 candidates each, encoded)


@st.cache_data(show_spinner=False, max_entries=8)
def parsed(data: bytes, name: str):
    return cand.load_candidates(data, name=name)


@st.cache_data(show_spinner=False, max_entries=8)
def scored(key: str, cands_digest: str, prefix: str, eps: float, _emb, _cands: pd.DataFrame):
    return cand.score_candidates(_emb, _cands, load_model(_emb.model), prefix=prefix, eps=eps)


def with_thumbs(ds, table: pd.DataFrame) -> pd.DataFrame:
    """The table with its images' thumbnails (up to THUMBS_MAX rows: a longer table goes without)."""
    if len(table) > THUMBS_MAX:
        return table
    thumbs = common.thumbnails_of(ds, table["image"])
    return table.assign(thumb=[common.data_uri(thumbs.get(str(i))) for i in table["image"]])


def show_table(table: pd.DataFrame, columns: list[str], key: str, height: int | None = None) -> None:
    st.dataframe(table, hide_index=True, width="stretch", key=key, height=height or "auto",
                 column_order=[c for c in columns if c in table.columns], row_height=48,
                 column_config={"thumb": st.column_config.ImageColumn("Image", width="small"),
                                "caption": st.column_config.TextColumn("Caption", width="medium"),
                                **{k: st.column_config.NumberColumn(v, format="%.3f") for k, v in SCORES.items()},
                                "human": st.column_config.NumberColumn("Human", format="%.2f")})


@st.cache_data(show_spinner=False, max_entries=4)
def demo(key: str, _ds, _emb) -> pd.DataFrame | None:
    """The demo candidates of a shapes-world set (None for other sets), built once per version."""
    return cand.demo_candidates(_ds, _emb, max_images=DEMO_MAX_IMAGES) if "foil" in _ds.columns() else None


def sent_candidates(ds, emb) -> pd.DataFrame | None:
    """The captions the Captioning page sent (image, caption, system, row), if they are of this
    dataset version under this model."""
    table = st.session_state.get("captioning_candidates")
    if table is None or table.attrs.get("data_key") != common.data_key(ds, emb):
        return None
    return table


def candidates_source(ds, emb) -> pd.DataFrame | None:
    demo_table = demo(common.data_key(ds, emb), ds, emb)
    has_demo = demo_table is not None
    sent = sent_candidates(ds, emb)
    options = ([DEMO] if has_demo else []) + [UPLOAD] + ([SENT] if sent is not None else [])
    if st.session_state.pop("captioning_candidates_new", False) and sent is not None:
        st.session_state["cap_source"] = SENT  # just sent: show them
    elif st.session_state.get("cap_source") not in options:
        st.session_state.pop("cap_source", None)
    source = st.radio("Candidates", options, horizontal=True, key="cap_source")
    if source == SENT:
        systems = sent.attrs.get("systems") or list(dict.fromkeys(sent["system"]))
        st.caption(f"Captions of {sent['image'].nunique():,} images ({sent.attrs.get('split', '?')} split) by the "
                   f"captioners {', '.join(systems)}, sent from the Captioning page. References: each image's "
                   "dataset captions (a caption equal to one is not judged against it); no human scores.")
        return sent
    if "captioning_candidates" in st.session_state and sent is None:
        st.caption("The captions sent from the Captioning page are of another dataset or model.")
    if source == DEMO:
        st.caption("Each image's first caption (ground truth), its second (a paraphrase) and a foil: a caption "
                   "with one colour or shape word swapped. References: the image's other captions. Human "
                   "scores: 1 for true captions, 0 for foils.")
        return demo_table
    st.caption("Columns: `image` (an id or file name of this dataset), `caption`, optional `system` and `human` "
               "(a human score). One row per candidate.")
    upload = st.file_uploader("Candidate captions", type=["csv", "tsv", "jsonl"], key="cap_upload")
    if upload is None:
        return None
    try:
        table, skipped = parsed(upload.getvalue(), upload.name)
    except DataFormatError as e:
        st.error(str(e), icon=":material/error:")
        return None
    for w in table.attrs.get("warnings", []):
        st.warning(w, icon=":material/info:")
    table, unmatched = cand.match_images(table, ds, emb)
    problems = skipped + unmatched
    if problems:
        with st.expander(f"{len(problems)} of {len(table) + len(problems)} rows left out"):
            st.dataframe(pd.DataFrame(sorted(problems), columns=["line", "reason"]), hide_index=True)
    if not len(table):
        st.error(f"No candidate in {upload.name} names an image of {ds.name}: the `image` column must hold the "
                 "dataset's ids or file names.", icon=":material/error:")
        return None
    return table


@st.cache_resource(show_spinner="Fitting the reference distribution…", max_entries=4)
def references(key: str, prefix: str, eps: float, _emb):
    return cand.fit_references(_emb, load_model(_emb.model), prefix=prefix, eps=eps,
                               pool=cand.reference_sample(_emb))  # a seeded sample of a large set's captions


def probe_panel(ds, emb, prefix: str, eps: float) -> None:
    st.subheader("Probe: a caption against its foils")
    st.caption("Type a caption for an image: mmviz swaps one object or colour word at a time and scores each "
               "foil beside it, as in the FOIL examples of the MID paper. A good metric puts the true caption first.")
    left, right = st.columns([1, 3])
    with left:
        picked = common.pick_row(ds, "Image", "cap_probe_image")
    row = None if picked is None else common.embedding_row(ds, emb, picked)
    if row is None:
        return
    thumbs = common.thumbnails_of(ds, [emb.ids[row]])
    if emb.ids[row] in thumbs:
        left.image(thumbs[emb.ids[row]], width=160)
    first = emb.captions[int(np.flatnonzero(np.asarray(emb.text_owner) == row)[0])]
    caption = right.text_input("Caption", value=first, key=f"cap_probe_text-{row}")
    if not caption.strip():
        return
    try:
        refs = references(common.data_key(ds, emb), prefix, eps, emb)
        table = cand.probe(emb, load_model(emb.model), row, caption.strip(), references=refs)
    except (ModelSpecError, ModelUnavailable, ValueError) as e:
        right.warning(f"Cannot score this caption: {e}")
        return
    with right:
        show_table(table, ["caption", "kind", "word", "replacement", *SCORES], "cap_probe_table")
        common.download_csv("Probe (CSV)", table, f"{emb.ids[row]}-probe.csv", "cap_dl_probe")
        if len(table) == 1:
            st.caption("No object or colour word to swap in this caption.")
        if refs.gaussian.regularised_:
            st.caption(f"PMI here uses a regularised reference distribution (ε = {refs.gaussian.eps_used_:g}): "
                       f"{refs.gaussian.n_:,} reference pairs do not fill its "
                       f"{refs.gaussian.dim_x_ + refs.gaussian.dim_y_} dimensions.")


st.title("Captions")
common.link_state("captions", [links.choice("candidates", "cap_source", {DEMO: "demo", UPLOAD: "upload", SENT: "captioning"}),
                               links.text("prefix", "cap_prefix"), links.text("system", "cap_system"),
                               links.text("image", "cap_probe_image_q")])
st.caption("Find the captions that are wrong and compare captioning systems. CLIP-S (Hessel et al., 2021) scores "
           "a pair by its cosine; RefCLIP-S adds the reference captions; MID (Kim et al., NeurIPS 2022) fits "
           "Gaussians to the reference pairs and scores each candidate by point-wise mutual information (PMI), "
           "and a system by its mean: it agrees better with people.")
ds, emb = common.dataset_and_embeddings("cap")
try:
    load_model(emb.model)
except (ModelSpecError, ModelUnavailable, ValueError) as e:
    st.warning(f"Scoring captions encodes them with the model that made this set's vectors, `{emb.model}`, "
               f"and mmviz cannot load it here ({e}). Pick an open_clip model in the sidebar and embed the set "
               "with it to score captions.", icon=":material/cloud_off:")
    st.stop()
key = common.data_key(ds, emb)
cands = candidates_source(ds, emb)
with st.expander("Options"):
    prefix = st.text_input("Caption prefix", value=cand.default_prefix(emb.model), key="cap_prefix",
                           help="CLIP-S prepends 'A photo depicts ' for real CLIP models; the builtin model "
                                "was trained without it.")
    eps = st.number_input("Shrinkage ε (used when references are too few for a full-rank covariance)",
                          min_value=1e-8, max_value=1.0, value=1e-3, format="%.0e", key="cap_eps")

if cands is not None and len(cands):
    digest = hashlib.sha256(pd.util.hash_pandas_object(cands[["image", "caption", "system"]].astype(str),
                                                       index=False).values.tobytes()).hexdigest()
    try:
        with st.spinner(f"Scoring {len(cands):,} candidates…"):
            result = scored(key, digest, prefix, float(eps), emb, cands)
    except (ModelSpecError, ModelUnavailable) as e:
        st.warning(f"Scoring needs the model that made this set's vectors, `{emb.model}`: {e}",
                   icon=":material/cloud_off:")
        st.stop()
    except (ValueError, DataFormatError) as e:
        st.error(str(e), icon=":material/error:")
        st.stop()
    for w in result.warnings:
        st.warning(w, icon=":material/info:")

    st.subheader("Leaderboard")
    board = result.leaderboard
    st.dataframe(board, hide_index=True, width="stretch",
                 column_config={"mid": st.column_config.NumberColumn("MID", format="%.3f"),
                                **{k: st.column_config.NumberColumn(f"mean {v}", format="%.3f")
                                   for k, v in SCORES.items() if k != "pmi"},
                                "pmi_mean": st.column_config.NumberColumn("mean PMI", format="%.3f")})
    common.download_csv("Leaderboard (CSV)", board, f"{key}-leaderboard.csv", "cap_dl_board")
    if result.agreement is not None:
        st.markdown("**Agreement with the human scores**")
        st.dataframe(result.agreement.replace({"metric": SCORES}), hide_index=True, width="stretch",
                     column_config={"kendall_tau_b": st.column_config.NumberColumn("Kendall τ-b", format="%.3f"),
                                    "kendall_tau_c": st.column_config.NumberColumn("Kendall τ-c", format="%.3f"),
                                    "roc_auc": st.column_config.NumberColumn("ROC AUC (true vs false)", format="%.3f"),
                                    "pairs": st.column_config.NumberColumn("same-image pairs"),
                                    "pairwise_accuracy": st.column_config.NumberColumn("pairwise accuracy",
                                                                                       format="%.3f")})
        st.caption("Kendall τ against the human scores; ROC AUC when they are 0/1; pairwise accuracy over two "
                   "candidates of one image that people scored differently (as in Pascal-50S): how often the "
                   "metric prefers the one people preferred.")
        common.download_csv("Agreement (CSV)", result.agreement, f"{key}-agreement.csv", "cap_dl_agree")

    per = result.per_sample
    st.subheader("Every candidate")
    systems = ["all systems", *sorted(per["system"].astype(str).unique())]
    system = st.selectbox("System", systems, key="cap_system",
                          help="Show one system's candidates here and below (the scatter keeps them all).")
    if system != "all systems":
        per = per[per["system"].astype(str) == system]
    show_table(with_thumbs(ds, per), ["thumb", "image", "system", "caption", "human", *SCORES], "cap_table",
               height=420)
    common.download_csv("Scores (CSV)", per, f"{key}-scores.csv", "cap_dl_scores")
    fig = px.scatter(result.per_sample, x="clip_s", y="pmi", color="system", hover_data=["image", "caption"], opacity=0.7,
                     labels={"clip_s": "CLIP-S", "pmi": "PMI"}, height=380, title="PMI against CLIP-S")
    fig.update_layout(margin=dict(l=0, r=0, t=40, b=0))
    st.plotly_chart(fig, key="cap_scatter")

    st.subheader("Where the metrics disagree most")
    st.caption("Candidates ranked very differently by PMI and by CLIP-S (by percentile), the largest gap first.")
    disagreements = result.disagreements if system == "all systems" else \
        result.disagreements[result.disagreements["system"].astype(str) == system]
    show_table(with_thumbs(ds, disagreements.head(20)),
               ["thumb", "image", "system", "caption", "clip_s", "pmi", "rank_gap"], "cap_disagree")
    common.download_csv("Disagreements (CSV)", result.disagreements, f"{key}-disagreements.csv",
                        "cap_dl_disagree")

st.divider()
probe_panel(ds, emb, prefix, float(eps))
