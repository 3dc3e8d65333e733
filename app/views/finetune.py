"""Fine-tune: launch short training runs in the background, watch them, compare before/after."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

import common
import links
from mmviz import viz
from mmviz.finetune import runs
from mmviz.models import ModelSpecError, ModelUnavailable
from mmviz.finetune import UNIMODAL
from mmviz.finetune.config import FinetuneConfig, read_config, runs_dir
from mmviz.finetune.train import load_vectors
from mmviz.run_folder import read_metrics, read_status

LOSSES = {"CLIP (InfoNCE)": "clip", "m2-mix": "m2mix"}
TRAINABLE = {"Everything": "all", "Last block of each tower": "last", "Output projections only": "proj"}
HEADLINE = {"gap_length": "inverse", "i2t_r1": "normal", "t2i_r1": "normal", "uniformity_union": "inverse",
            "relative_alignment": "normal"}
COMPARE_PROJECTIONS = {k: v for k, v in common.PROJECTIONS.items() if v in ("gap2", "pca2", "pca3", "umap2", "dosnes")}
ACTIVE = ("created", "running")


def new_run_form(ws, ds, spec: str) -> None:
    with st.form("ft_form"):
        st.markdown(f"Fine-tune **{spec}** on **{ds.name}** ({len(ds):,} pairs; 20% of the images are held out "
                    "for the before/after comparison).")
        c1, c2, c3 = st.columns(3)
        loss = LOSSES[c1.radio("Loss", list(LOSSES), key="ft_loss", help="m2-mix (Oh et al., NeurIPS 2023) "
                               "replaces each anchor's negatives by geodesic mixes of the other pairs.")]
        noise = c1.slider("C3 noise σ on text embeddings", 0.0, 0.5, 0.0, 0.01, key="ft_noise",
                          help="Connect, Collapse, Corrupt (Zhang et al., ICLR 2024): Gaussian noise on the "
                               "embeddings while training. 0 = off; C3 uses σ = 0.126 (σ² = 0.016).")
        trainable = TRAINABLE[c2.selectbox("Train", list(TRAINABLE), key="ft_trainable")]
        steps = c2.number_input("Steps", 1, 100_000, 100, key="ft_steps")
        batch = c2.number_input("Batch size", 2, 4096, min(128, max(2, (len(ds) * 4 // 5) // 2)), key="ft_batch")
        lr = c3.number_input("Learning rate", 1e-7, 1e-1, 1e-4, format="%.1e", key="ft_lr")
        seed = c3.number_input("Seed", 0, 1_000_000, 0, key="ft_seed")
        with st.expander("m2-mix and more"):
            m1, m2, m3 = st.columns(3)
            alpha = m1.number_input("Mixing Beta(α, α)", 0.05, 10.0, 0.5, key="ft_alpha")
            weight = m2.number_input("m2-mix weight", 0.0, 10.0, 1.0, key="ft_weight")
            decay = m3.number_input("m2-mix weight factor per epoch", 0.0, 1.0, 1.0, key="ft_decay",
                                    help="The m2-mix weight is multiplied by this after every epoch; 1 keeps it.")
            unimodal = m1.selectbox("Uni-modal mixes", UNIMODAL, key="ft_unimodal")
            temperature = m2.number_input("Fixed temperature (0 = learn CLIP's)", 0.0, 1.0, 0.0, format="%.3f",
                                          key="ft_temp")
        go_ = st.form_submit_button("Start run", type="primary", icon=":material/play_arrow:")
    if go_:
        try:
            config = FinetuneConfig(dataset=ds.name, model=spec, loss=loss, noise=float(noise), trainable=trainable,
                                    steps=int(steps), batch_size=int(batch), lr=float(lr), seed=int(seed),
                                    m2_alpha=float(alpha), m2_weight=float(weight), m2_decay=float(decay),
                                    unimodal=unimodal, temperature=float(temperature) or None)
            folder = runs.launch(ws, config)  # checks dataset, batch and model before starting
        except (ValueError, ModelSpecError, ModelUnavailable) as e:
            st.error(str(e), icon=":material/error:")
            return
        st.session_state["ft_run"] = folder.name
        st.toast(f"Started run {folder.name}", icon=":material/rocket_launch:")


def curves(rows: list[dict], val: list[dict]) -> go.Figure:
    fig = go.Figure()
    steps = [r["step"] for r in rows]
    fig.add_scatter(x=steps, y=[r["loss"] for r in rows], name="training loss", mode="lines")
    extras = [p for p in ("m2mix", "unimodal") if rows and p in rows[-1]]
    for part in (["clip"] + extras) if extras else []:  # the loss's terms, when it has more than one
        fig.add_scatter(x=steps, y=[r.get(part) for r in rows], name=f"{part} term", mode="lines",
                        line={"dash": "dot"})
    if val:
        fig.add_scatter(x=[r["step"] for r in val], y=[r["val_i2t_r1"] for r in val], name="val image→text R@1",
                        mode="lines+markers", yaxis="y2")
        fig.add_scatter(x=[r["step"] for r in val], y=[r["val_gap"] for r in val], name="val gap length",
                        mode="lines+markers", yaxis="y2")
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 30, "b": 10}, xaxis_title="step",
                      yaxis_title="loss", yaxis2={"overlaying": "y", "side": "right", "title": "validation"},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def progress_view(folder) -> None:
    """The chosen run's state, progress bar and curves; redrawn every second while it runs."""
    state = runs.state(folder)
    status = read_status(folder)
    rows, val = read_metrics(folder, "step"), read_metrics(folder, "epoch")
    steps = read_config(folder).steps
    done = rows[-1]["step"] if rows else 0
    label = {"created": "starting (loading the model and the start metrics)…", "running": "running",
             "finished": "finished", "failed": "failed", "cancelled": "cancelled",
             "interrupted": "interrupted (its process died)"}.get(state, state)
    st.progress(done / steps, text=f"Run {folder.name}: {label} — step {done:,} / {steps:,}"
                + (f", loss {rows[-1]['loss']:.4f}" if rows else ""))
    if state == "failed":
        st.error(status.get("error", "failed"), icon=":material/error:")
    cols = st.columns([1, 1, 4])
    if state in ACTIVE and cols[0].button("Cancel", key="ft_cancel", icon=":material/stop:"):
        runs.cancel(folder)
        st.toast("Asked the run to stop; it saves a checkpoint first.")
    if state in ("cancelled", "interrupted", "failed") and cols[0].button("Resume", key="ft_resume",
                                                                          icon=":material/replay:"):
        runs.launch(common.workspace(), run=folder)
        st.rerun()
    if rows or val:
        st.plotly_chart(curves(rows, val), key="ft_curves")
    if state in ACTIVE:
        st.caption("Updates every second. Closing the page does not stop the run.")


@st.cache_data(show_spinner=False, max_entries=8)
def run_vectors(folder: str, mtime: float) -> tuple[dict, dict]:
    return load_vectors(folder, "before"), load_vectors(folder, "after")


def compare(folder, result: dict) -> None:
    st.subheader("Before and after, on the validation split")
    common.metric_headline(result["before"], result["after"], HEADLINE)
    common.metric_table(result["before"], result["after"], folder.name, "ft")

    before, after = run_vectors(str(folder), (folder / "after.npz").stat().st_mtime)
    method = COMPARE_PROJECTIONS[st.radio("Projection", list(COMPARE_PROJECTIONS), horizontal=True, key="ft_method")]
    n_img = len(before["image"])
    layout, _ = common.layout_for_vectors({"run": folder.name, "view": "before+after"},
                                          np.concatenate([before["image"], after["image"]]),
                                          np.concatenate([before["text"], after["text"]]), method)
    n_txt = len(before["text"])
    img_rows, cap_rows, owner = common.drawn_pairs(n_img, before["text_owner"])  # a sample of a large split
    hover = viz.pair_hover([before["ids"][r] for r in img_rows], [before["captions"][j] for j in cap_rows], owner)
    sphere = method == "dosnes"
    parts = [(layout.image_xy[:n_img][img_rows], layout.text_xy[:n_txt][cap_rows]),
             (layout.image_xy[n_img:][img_rows], layout.text_xy[n_txt:][cap_rows])]
    figs = [viz.pairs_figure(*xy, owner, hover=hover, sphere=sphere, height=480, title=title,
                             lines=len(cap_rows) <= viz.MAX_LINES)
            for xy, title in zip(parts, ("Before (start weights)", f"After {result['config']['steps']} steps"))]
    viz.same_ranges(*figs, points=[p for xy in parts for p in xy])
    cols = st.columns(2)
    cols[0].plotly_chart(figs[0], key="ft_before")
    cols[1].plotly_chart(figs[1], key="ft_after")
    st.caption("One layout fitted on both sets together, so the two panels share their axes: a gap that closed "
               "shows as image and caption clouds that moved together.")
    spec = result["model_spec"]
    if st.button("Use the fine-tuned model on every page", key="ft_use", icon=":material/swap_horiz:"):
        common.select_model_and_rerun(spec)
    st.caption(f"Model spec: `{spec}` (also in the sidebar's model list).")


def past_runs(all_runs: list[dict]) -> None:
    st.subheader("Runs")
    rows = []
    for r in all_runs:
        res, c = r["result"] or {}, r["config"]
        b, a = res.get("before", {}), res.get("after", {})
        rows.append({"run": r["id"], "state": r["state"], "step": f"{r['step']}/{r['steps']}", "loss": c.loss,
                     "noise": c.noise, "train": c.trainable, "dataset": c.dataset, "model": c.model,
                     "gap before": b.get("gap_length"), "gap after": a.get("gap_length"),
                     "R@1 i→t before": b.get("i2t_r1"), "R@1 i→t after": a.get("i2t_r1")})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="ft_runs")


st.title("Fine-tune")
common.link_state("finetune", [links.text("run", "ft_run"), links.choice("projection", "ft_method", COMPARE_PROJECTIONS)])
st.caption("Check whether a fix that works in embedding space survives training: a few minutes of CLIP-loss, "
           "m2-mix or C3-noise fine-tuning, run in the background, then the same metrics and layout before and "
           "after. The command line does the same: `mmviz finetune NAME --loss m2mix`, also under torchrun.")
ws = common.workspace()
ds = common.current_dataset()
if ds is None:
    st.info("No dataset yet: import one on the Data page.")
    st.stop()
if ds.manifest.get("images"):
    new_run_form(ws, ds, common.current_model())
else:  # said from the manifest alone: nothing of a large set is read
    st.info(f"{ds.name} holds {ds.manifest.get('vector_model') or 'imported'} vectors of {len(ds):,} pairs and no "
            "images: fine-tuning trains a model's image and text towers, so it needs a set with images. Import "
            "one on the Data page.", icon=":material/image_not_supported:")

all_runs = runs.list_runs(ws)
if not all_runs:
    st.info("No runs yet: start one above.")
    st.stop()
ids = [r["id"] for r in all_runs][:common.MAX_OPTIONS]  # newest first; the table below lists every run
if st.session_state.get("ft_run") not in ids:
    st.session_state["ft_run"] = ids[0]
described = {r["id"]: f"{r['id']} ({r['config'].loss}, {r['config'].model})" for r in all_runs}
chosen = st.selectbox("Run", ids, key="ft_run", format_func=described.get)  # state: in the progress line
folder = runs_dir(ws) / chosen


@st.fragment(run_every=1.0 if runs.is_running(folder) else None)
def live() -> None:
    progress_view(folder)
    if not runs.is_running(folder) and st.session_state.get("ft_was_running") == folder.name:
        st.session_state.pop("ft_was_running")
        st.rerun()  # the run just ended: draw the comparison and the table
    if runs.is_running(folder):
        st.session_state["ft_was_running"] = folder.name


live()
if runs.state(folder) == "finished" and (folder / "result.json").exists():
    import json

    compare(folder, json.loads((folder / "result.json").read_text("utf-8")))
past_runs(all_runs)
