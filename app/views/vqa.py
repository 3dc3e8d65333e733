"""VQA: ask a trained head about an image; BAN's bilinear attention maps over patches and words."""
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

import common
import links
from mmviz.models import ModelSpecError, ModelUnavailable
from mmviz.vqa import BUILTIN_VQA_DIR, VQAHead

BUILTIN_LABEL = "builtin BAN (shapes world)"
SHOWN_SIZE = 320  # pixels of the overlay image


@st.cache_resource(show_spinner="Loading the VQA head…", max_entries=4)
def head_at(folder: str) -> VQAHead:
    return VQAHead(folder)


def trained_heads() -> dict[str, Path]:
    """label -> folder: the shipped head and every head trained in the workspace."""
    heads = {BUILTIN_LABEL: BUILTIN_VQA_DIR}
    for cfg in sorted((common.workspace().home / "vqa").glob("*/runs/*/config.json")):
        heads[f"{cfg.parent.parent.parent.name}: {cfg.parent.name}"] = cfg.parent
    return heads


@st.cache_data(show_spinner=False, max_entries=4)
def _attached(version_path: str, name: str, stamp: float) -> dict[str, list]:
    from mmviz.store import Dataset
    from mmviz.vqa.questions import questions

    out: dict[str, list] = {}
    for ex in questions(common.workspace(), Dataset(name, version_path)) or []:
        out.setdefault(str(ex.image), []).append(ex)
    return out


def attached_questions(ds) -> dict[str, list]:
    """id -> the dataset's attached VQA questions about it (none when the set has none), read
    once per version of the dataset and of its questions file, not on every rerun."""
    from mmviz.vqa.questions import questions_path

    path = questions_path(common.workspace(), ds.name)
    return _attached(str(ds.path), ds.name, path.stat().st_mtime if path.is_file() else 0.0)


def pick_image(ds):
    """(image for the head, label, id or None, PIL image for display)."""
    upload = st.file_uploader("Upload an image", type=["png", "jpg", "jpeg", "webp"], key="vqa_upload")
    if upload is not None:
        return upload.getvalue(), upload.name, None, Image.open(io.BytesIO(upload.getvalue())).convert("RGB")
    if ds is None:
        return None, None, None, None
    if not ds.manifest.get("images"):
        st.caption(f"{ds.name} holds vectors only, no images: upload one.")
        return None, None, None, None
    row = common.pick_row(ds, "or an image of the dataset", "vqa_image")
    if row is None:
        return None, None, None, None
    id_ = ds.rows([row])["id"].iloc[0]
    path = common.image_file(ds, row)
    if path is None or not Path(path).is_file():
        st.warning(f"The image file of {id_} is not reachable.")
        return None, None, None, None
    return str(path), id_, id_, Image.open(path).convert("RGB")


def answers_chart(answers: list[tuple[str, float]], expected: str | None) -> go.Figure:
    names = [a for a, _ in answers][::-1]
    colours = ["#2ca02c" if a == expected else "#1f77b4" for a in names]
    fig = go.Figure(go.Bar(x=[p for _, p in answers][::-1], y=names, orientation="h", marker_color=colours,
                           text=[f"{p:.2f}" for _, p in answers][::-1], textposition="auto"))
    fig.update_layout(height=240, margin=dict(l=0, r=0, t=10, b=0), xaxis=dict(range=[0, 1], title="probability"))
    return fig


def overlay(picture: Image.Image, region_map: np.ndarray, title: str) -> go.Figure:
    """The attention per patch as a translucent heatmap over the image (patches row by row)."""
    img = np.asarray(picture.resize((SHOWN_SIZE, SHOWN_SIZE)))
    g = region_map.shape[0]
    cell = SHOWN_SIZE / g
    centres = (np.arange(g) + 0.5) * cell
    fig = go.Figure(go.Image(z=img))
    fig.add_trace(go.Heatmap(z=region_map, x=centres, y=centres, colorscale="Hot", opacity=0.55, showscale=True,
                             hovertemplate="row %{y:.0f} col %{x:.0f}: %{z:.3f}<extra></extra>"))
    fig.update_layout(height=SHOWN_SIZE + 60, width=SHOWN_SIZE + 90, margin=dict(l=0, r=0, t=30, b=0), title=title)
    fig.update_xaxes(visible=False, range=[0, SHOWN_SIZE])
    fig.update_yaxes(visible=False, range=[SHOWN_SIZE, 0])
    return fig


def word_region_heatmap(att: np.ndarray, words: list[str], title: str) -> go.Figure:
    side = int(round(np.sqrt(att.shape[0])))
    fig = go.Figure(go.Heatmap(z=att.T, y=words, colorscale="Viridis",
                               hovertemplate="patch %{x}, word %{y}: %{z:.4f}<extra></extra>"))
    fig.update_layout(height=120 + 22 * len(words), margin=dict(l=0, r=0, t=30, b=0), title=title,
                      xaxis_title=f"image patch ({side} x {side} grid, row by row: index = {side} x row + column)",
                      yaxis=dict(autorange="reversed"))
    return fig


def comparison(head: VQAHead, metrics: dict | None) -> pd.DataFrame | None:
    """Per question type validation accuracy of the compared heads and the majority baseline;
    `metrics` is head.metrics()."""
    if metrics and "val_accuracy" in metrics:  # the shipped head: all three heads and the majority answer
        return pd.DataFrame(metrics["val_accuracy"]).rename_axis("question type").reset_index()
    history = head.folder / "history.json"
    if history.is_file():
        last = json.loads(history.read_text("utf-8"))[-1]
        return pd.DataFrame({head.name: last["val_by_type"]}).rename_axis("question type").reset_index()
    return None


st.title("VQA")
common.link_state("vqa", [links.text("head", "vqa_head"), links.text("image", "vqa_image_q"),
                          links.text("question", "vqa_question")])
st.caption("Ask a question about an image. A bilinear attention network (BAN; Kim, Jun and Zhang, NeurIPS 2018) "
           "joins every image patch with every question word of the frozen CLIP model, in several glimpses; "
           "its maps show which regions it joined with which words.")
heads = trained_heads()
label = st.selectbox("Head", list(heads), key="vqa_head")
try:
    head = head_at(str(heads[label]))
except FileNotFoundError:
    st.error(f"No VQA head in {heads[label]}: rebuild the builtin one with `mmviz builtin train-vqa`, or train "
             "one with `mmviz vqa train NAME`.")
    st.stop()
except (ModelSpecError, ModelUnavailable, ValueError) as e:
    st.error(f"Cannot load this head: {e}")
    st.stop()

ds = common.current_dataset()
left, right = st.columns([2, 3])
with left:
    image, image_label, image_id, picture = pick_image(ds)
if image is None:
    st.info("Upload an image, or pick a dataset on the Data page.")
    st.stop()
known = attached_questions(ds).get(image_id, []) if image_id else []
with right:
    default = known[0].question if known else "what colour is the circle?"
    # One question box: a new image starts from its own first question, a link's question is kept.
    state = st.session_state
    if state.get("_vqa_question_for") != image_label or "vqa_question" not in state:
        if not (state.get("_vqa_question_for") is None and "vqa_question" in state):
            state["vqa_question"] = default
        state["_vqa_question_for"] = image_label
    question = st.text_input("Question", key="vqa_question")
    if known:
        st.caption("This image's questions in the dataset: " +
                   "; ".join(f"{ex.question} → **{ex.answer}**" for ex in known[:6]))
expected = next((ex.answer for ex in known if ex.question == question.strip()), None)
try:
    result = head.ask(image, question)
except ValueError as e:
    st.error(str(e))
    st.stop()

with right:
    st.markdown(f"**Top answers** ({head.name} head)" + (f" · expected: **{expected}**" if expected else ""))
    st.plotly_chart(answers_chart(result.answers, expected), key="vqa_answers")

if result.attention is None:
    st.info(f"The {head.name} head has no attention maps; pick a BAN head to see them.")
else:
    g = result.attention.shape[0]
    controls = st.columns([2, 3])
    glimpse = controls[0].segmented_control("Glimpse", ["mean", *[str(i + 1) for i in range(g)]], default="mean",
                                            key="vqa_glimpse") or "mean"
    word_choice = controls[1].selectbox("Word", ["all words", *result.words], key="vqa_word")
    if head.config.attention_weight > 0 and g >= 2:
        st.caption("This head's glimpses were trained to find the objects a question names (attention supervised "
                   "with the shapes world's object boxes): glimpse 1 the first one named (a relation's subject), "
                   "glimpse 2 the second (its object).")
    gi = None if glimpse == "mean" else int(glimpse) - 1
    wi = None if word_choice == "all words" else result.words.index(word_choice)
    att = result.attention.mean(0) if gi is None else result.attention[gi]
    where = "averaged over glimpses" if gi is None else f"glimpse {gi + 1}"
    maps = st.columns([2, 3])
    maps[0].plotly_chart(overlay(picture, result.region_map(gi, wi),
                                 f"{'all words' if wi is None else repr(result.words[wi])}, {where}"), key="vqa_overlay")
    maps[1].plotly_chart(word_region_heatmap(att, result.words, f"Words by patches, {where}"), key="vqa_heatmap")
    rows = pd.DataFrame(att.T, index=result.words)
    common.download_csv("Attention (CSV)", rows, f"vqa-attention-{glimpse}.csv", "vqa_dl_att",
                        index=True, index_label="word")

metrics = head.metrics()  # read once per rerun: the table and the binding caption
table = comparison(head, metrics)
if table is not None:
    st.subheader("Heads compared on the validation split")
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in table.columns[1:]})
    common.download_csv("Accuracy by question type (CSV)", table, "vqa-accuracy.csv", "vqa_dl_acc")
    binding = (metrics or {}).get("grounding", {}).get("relation")
    if binding:
        per = "; ".join(f"glimpse {i + 1}: {x['subject']:.2f} on the first object, {x['object']:.2f} on the second"
                        for i, x in enumerate(binding["glimpses"]))
        st.caption(f"Where BAN looks on the {binding['n']} validation relation questions (attention mass on each "
                   f"object's patches): {per}. A uniform map would put {binding['chance']['subject']:.2f} and "
                   f"{binding['chance']['object']:.2f} there.")
