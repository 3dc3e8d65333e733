"""Captioning: text-only captioners (C3's connect, collapse, corrupt) caption images; see and score them."""
import json

import numpy as np
import pandas as pd
import streamlit as st

import common
import links
from mmviz import candidates as cand
from mmviz import scoring
from mmviz.captioner import LABELS, VARIANTS, Captioner
from mmviz.captioner import builtin as shipped
from mmviz.captioner import runs
from mmviz.captioner.evaluate import METRICS, evaluate
from mmviz.embed import encode_texts
from mmviz.finetune import runs as procs
from mmviz.run_folder import read_metrics, read_status
from mmviz.models import BUILTIN_SPEC, ModelSpecError, ModelUnavailable, load_model
from mmviz.queries import image_query, open_query_image

SHOWN = {"bleu4": "BLEU-4", "cider": "CIDEr-D", "rouge_l": "ROUGE-L", "clip_s": "CLIP-S", "refclip_s": "RefCLIP-S",
         "mid": "MID", "exact_match": "exact match"}
WORST_BY = {"clip_s": "CLIP-S", "pmi": "PMI", "cider": "CIDEr-D"}
SPLITS = {"test": "test (the images a run holds out)", "all": "all images"}
DEFAULT_BUILTIN = ("c1", "c3", "paired")
CORPUS_MAX = 5000  # images the "all" split captions at most (a seeded sample of a larger set)
WORST_ROWS = 20
CARDS_PER_ROW = 3  # captioners side by side in "One image"
ACTIVE = ("created", "running")
SENT, SENT_NEW = "captioning_candidates", "captioning_candidates_new"  # read by the Captions page
number = st.column_config.NumberColumn(format="%.3f")


def escape(text: str) -> str:
    """Caption text shown literally inside markdown."""
    return "".join("\\" + c if c in "\\`*_[]<>|$~#" else c for c in text)


def offered(ws, ds, emb) -> dict[str, tuple[str, str]]:
    """id -> (label, folder) of the captioners that read this model's space: the shipped ones
    for the builtin model, and this dataset's finished runs under the model (newest first)."""
    out = {}
    if emb.model == BUILTIN_SPEC:
        for v in VARIANTS:
            folder = shipped.builtin_folder(v)
            if (folder / "model.safetensors").exists():
                out[f"builtin:{v}"] = (f"{v} (builtin)", str(folder))
    for r in runs.list_runs(ws, ds.name, emb.model):
        folder = r["folder"] / "captioner"
        if r["state"] == "finished" and (folder / "model.safetensors").exists():
            out[f"run:{r['id']}"] = (f"run {r['id']} ({r['run'].config().variant})", str(folder))
        if len(out) >= common.MAX_OPTIONS:
            break
    return out


def stamp(folder: str) -> float:
    """When the captioner's weights were written: a replaced one is loaded again."""
    from pathlib import Path

    return (Path(folder) / "model.safetensors").stat().st_mtime


@st.cache_resource(show_spinner=False, max_entries=16)
def captioner_at(folder: str, mtime: float, spec: str) -> Captioner:
    return Captioner.load(folder, load_model(spec).tokenizer)


def split_rows(ds, emb, split: str) -> np.ndarray:
    rows = runs.split_of(ds, emb, split)
    if len(rows) > CORPUS_MAX:
        rows = np.sort(np.random.default_rng(0).choice(rows, CORPUS_MAX, replace=False))
    return rows


@st.cache_data(show_spinner=False, max_entries=32)
def corpus(key: str, cid: str, mtime: float, split: str, beam: int, _ds, _emb, _captioner):
    """(evaluation, image rows) of one captioner on one split, once per set, captioner, split and beam."""
    rows = split_rows(_ds, _emb, split)
    loaded = load_model(_emb.model)
    ev = evaluate(_captioner, runs.data_of(_emb).subset(rows), lambda t: encode_texts(loaded, t),
                  cand.default_prefix(_emb.model), beam=beam)
    return ev, rows


@st.cache_resource(show_spinner="Fitting the reference distribution…", max_entries=4)
def references(key: str, prefix: str, _emb):
    return cand.fit_references(_emb, load_model(_emb.model), prefix=prefix, pool=cand.reference_sample(_emb))


def pick_captioners(ws, ds, emb) -> tuple[dict[str, tuple[str, Captioner, float]], int]:
    """The captioners chosen (id -> (label, captioner, its weights' mtime)) and the beam width."""
    found = offered(ws, ds, emb)
    if not found:
        st.info(f"No captioner reads {emb.model}'s space for {ds.name} yet: train one below "
                "(**Train a captioner**); when it finishes it is offered here.", icon=":material/info:")
        return {}, 1
    state = st.session_state
    if "capt_captioners" in state:
        # Written only when a chosen captioner is no longer offered: a write marks the widget as
        # set by the script, and the browser then replaces its value with this script run's,
        # which can drop a pick the user made while the run was under way.
        kept = [c for c in state["capt_captioners"] if c in found]
        if kept != state["capt_captioners"]:
            state["capt_captioners"] = kept
    else:
        defaults = [f"builtin:{v}" for v in DEFAULT_BUILTIN if f"builtin:{v}" in found]
        state["capt_captioners"] = defaults or list(found)[:1]  # no shipped ones: the newest run
    left, right = st.columns([4, 1])
    ids = left.multiselect("Captioners", list(found), key="capt_captioners", format_func=lambda c: found[c][0],
                           help="Shipped captioners of the builtin model, and the finished runs of this dataset "
                                "under this model.")
    beam = int(right.number_input("Beam width", 1, 5, 1, key="capt_beam", help="1: greedy decoding"))
    if not ids:
        st.caption("Pick one or more captioners above to caption images.")
    chosen = {}
    for c in ids:
        label, folder = found[c]
        try:
            mtime = stamp(folder)
            captioner = captioner_at(folder, mtime, emb.model)
            captioner.check_model(emb.model, emb.fingerprint)
        except (ValueError, OSError) as e:
            st.warning(f"{label}: {e}", icon=":material/warning:")
            continue
        chosen[c] = (label, captioner, mtime)
    return chosen, beam


def one_image(ds, emb, loaded, chosen: dict, beam: int) -> None:
    st.subheader("One image")
    left, right = st.columns([1, 3])
    with left:
        source = st.radio("Image", ["From the dataset", "Upload"], horizontal=True, key="capt_one_source",
                          label_visibility="collapsed")
        vec, refs, shown = None, [], None
        if source == "Upload":
            upload = st.file_uploader("An image", type=["png", "jpg", "jpeg"], key="capt_upload")
            if upload is None:
                return
            try:
                shown = open_query_image(upload.getvalue())  # bounded by MMVIZ_MAX_PIXELS / MMVIZ_MAX_IMAGE_BYTES
                vec = image_query(loaded, upload.getvalue())
            except (ValueError, OSError) as e:
                st.error(f"Cannot caption {upload.name}: {e}", icon=":material/broken_image:")
                return
            if vec.shape[-1] != emb.dim:
                st.error(f"{emb.model} embeds images as {vec.shape[-1]}-d vectors but the set's are {emb.dim}-d.")
                return
        else:
            picked = common.pick_row(ds, "Image", "capt_image")
            row = None if picked is None else common.embedding_row(ds, emb, picked)
            if row is None:
                if picked is not None:
                    st.warning("That pair has no vectors under this model (its image could not be embedded).")
                return
            vec = np.array(emb.image[row], dtype=np.float32)  # a copy: the stored vectors are read-only
            refs = [emb.captions[j] for j in emb.captions_of(row)]
            shown = common.thumbnails_of(ds, [emb.ids[row]]).get(emb.ids[row])
        if shown is not None:
            st.image(shown, width=180)
    prefix = cand.default_prefix(emb.model)
    gaussian = references(common.data_key(ds, emb), prefix, emb).gaussian
    width = min(CARDS_PER_ROW, len(chosen))
    with right:
        for i, (label, captioner, _) in enumerate(chosen.values()):
            if i % width == 0:
                cols = st.columns(width)
            caption = captioner.caption(vec[None], beam=beam)[0]
            cvec = encode_texts(loaded, [prefix + caption])
            with cols[i % width].container(border=True):
                st.markdown(f"**{escape(label)}**")
                st.markdown(f"“{escape(caption)}”")
                a, b = st.columns(2) if width <= 2 else (st.container(), st.container())  # narrow: stacked
                a.metric("CLIP-S", f"{float(scoring.clip_s(vec[None], cvec)[0]):.3f}")
                b.metric("PMI", f"{float(gaussian.pmi(vec[None].astype(np.float64), cvec)[0]):.1f}",
                         help="Point-wise mutual information under the Gaussians of the set's reference pairs")
                if caption.strip().lower() in {r.strip().lower() for r in refs}:
                    st.caption("Equals one of the image's captions.")
        if refs:
            st.markdown("**The image's own captions**\n" + "\n".join(f"- {escape(r)}" for r in refs))


def finding_table() -> None:
    """The shipped captioners' scores on the shapes world's test scenes, from metrics.json."""
    path = shipped.CAPTIONER_DIR / "metrics.json"
    try:
        found = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return
    seeds, test = found.get("settings", {}).get("seeds", []), found.get("test", {})
    table = pd.DataFrame([{"variant": LABELS.get(v, v), **{k: m.get(k) for k in SHOWN}}
                          for v, m in found.get("mean", {}).items()])
    with st.expander(f"The shipped finding: mean over {len(seeds)} seed{'s' if len(seeds) != 1 else ''} on "
                     f"{test.get('images', '?'):,} test images of the shapes world"):
        st.dataframe(table, hide_index=True, width="stretch", key="capt_finding",
                     column_config={k: st.column_config.NumberColumn(v, format="%.3f") for k, v in SHOWN.items()})
        st.caption(f"From {path.name} next to the shipped captioners; `mmviz builtin train-captioner` reproduces "
                   f"it. Gap between the modality centres on those images: {found.get('gap', float('nan')):.3f}.")
        common.download_csv("Shipped finding (CSV)", table, "builtin-captioners-finding.csv", "capt_dl_finding")


def corpus_section(ds, emb, chosen: dict, beam: int) -> tuple[dict, str]:
    """The corpus table; returns {id: (evaluation, image rows)} and the split."""
    st.subheader("Corpus")
    split = st.radio("Images", list(SPLITS), format_func=SPLITS.get, horizontal=True, key="capt_split")
    key = common.data_key(ds, emb)
    evals, table = {}, []
    for cid, (label, captioner, mtime) in chosen.items():
        try:
            with st.spinner(f"Captioning and scoring with {label}…"):
                evals[cid] = corpus(key, cid, mtime, split, beam, ds, emb, captioner)
        except ValueError as e:
            st.error(f"{label}: {e}", icon=":material/error:")
            continue
        ev = evals[cid][0]
        table.append({"captioner": label, "variant": captioner.variant, **{k: ev.corpus[k] for k in SHOWN},
                      "images": ev.corpus["images"]})
    if not table:
        return evals, split
    table = pd.DataFrame(table)
    st.dataframe(table, hide_index=True, width="stretch", key="capt_corpus",
                 column_config={k: st.column_config.NumberColumn(v, format="%.3f") for k, v in SHOWN.items()})
    n = next(iter(evals.values()))[0].corpus["images"]
    sampled = split == "all" and len(runs.split_of(ds, emb, "all")) > CORPUS_MAX
    st.caption(f"{n:,} images{' (a seeded sample)' if sampled else ''}, "
               f"{'greedy' if beam == 1 else f'beam {beam}'}; references: each image's own captions. "
               + " · ".join(f"**{v}**: {METRICS[k].split(': ', 1)[-1]}" for k, v in SHOWN.items()))
    if any(ev.regularised for ev, _ in evals.values()):
        st.caption("MID and PMI here use a regularised reference distribution: this split's reference pairs do not "
                   "fill the joint dimensions; they still rank the captioners.")
    common.download_csv("Corpus metrics (CSV)", table, f"{key}-captioners-{split}.csv", "capt_dl_corpus")
    return evals, split


def worst_section(ds, emb, chosen: dict, evals: dict) -> None:
    st.subheader("Worst failures")
    left, right = st.columns(2)
    cid = left.selectbox("Captioner", list(evals), key="capt_worst_captioner", format_func=lambda c: chosen[c][0])
    by = right.selectbox("Lowest first by", list(WORST_BY), key="capt_worst_by", format_func=WORST_BY.get)
    ev = evals[cid][0]
    ranked = ev.table.sort_values([by, "cider"], kind="stable")
    worst = ranked.head(WORST_ROWS).copy()
    thumbs = common.thumbnails_of(ds, worst["id"])
    worst["thumb"] = [common.data_uri(thumbs.get(str(i))) for i in worst["id"]]
    worst["references"] = [" | ".join(r) for r in worst["references"]]
    st.dataframe(worst, hide_index=True, width="stretch", key="capt_worst", row_height=48,
                 column_order=["thumb", "id", "caption", "references", "clip_s", "pmi", "cider", "bleu4",
                               "exact_match"],
                 column_config={"thumb": st.column_config.ImageColumn("Image", width="small"),
                                "caption": st.column_config.TextColumn("Caption", width="medium"),
                                "references": st.column_config.TextColumn("References", width="medium"),
                                **{k: st.column_config.NumberColumn(v, format="%.3f") for k, v in SHOWN.items()},
                                "pmi": st.column_config.NumberColumn("PMI", format="%.2f")})
    out = ranked.assign(references=[" | ".join(r) for r in ranked["references"]])
    common.download_csv("Every caption, worst first (CSV)", out, f"{common.data_key(ds, emb)}-{cid.replace(':', '-')}"
                        f"-by-{by}.csv", "capt_dl_worst")


def send_section(ds, emb, chosen: dict, evals: dict, split: str) -> None:
    st.caption("Score these captions on the Captions page: MID, CLIP-S and RefCLIP-S per captioner, where the "
               "metrics disagree, with every image's dataset captions as references.")
    if not st.button("Send to Captions", key="capt_send", icon=":material/send:"):
        return
    parts = [pd.DataFrame({"image": ev.table["id"].astype(str).to_numpy(), "caption": ev.table["caption"].to_numpy(),
                           "system": chosen[cid][0], "row": np.asarray(rows, dtype=np.int64)})
             for cid, (ev, rows) in evals.items()]
    table = pd.concat(parts, ignore_index=True)
    table.insert(0, "line", np.arange(1, len(table) + 1))
    table.attrs.update(data_key=common.data_key(ds, emb), split=split, systems=[chosen[c][0] for c in evals])
    st.session_state[SENT] = table
    st.session_state[SENT_NEW] = True
    st.switch_page("views/captions.py")


def train_form(ws, ds, emb) -> None:
    with st.form("capt_form"):
        st.markdown(f"Train a captioner on **{ds.name}**'s caption embeddings under **{emb.model}** (20% of the "
                    "images are held out as its test split), in the background.")
        a, b, c = st.columns(3)
        variant = a.radio("Variant", VARIANTS, index=VARIANTS.index("c3"), format_func=LABELS.get,
                          key="capt_variant")
        epochs = b.number_input("Epochs", 1, 1000, 10, key="capt_epochs")
        seed = c.number_input("Seed", 0, 1_000_000, 0, key="capt_seed")
        go = st.form_submit_button("Start training", type="primary", icon=":material/play_arrow:")
    if not go:
        return
    try:
        folder = runs.launch(ws, run=runs.CaptionerRun(ds.name, emb.model, {"variant": variant, "epochs": int(epochs),
                                                                             "seed": int(seed)}))
    except (ValueError, TypeError, ModelSpecError, ModelUnavailable) as e:
        st.error(str(e), icon=":material/error:")
        return
    st.session_state["capt_run"] = folder.name
    st.toast(f"Started captioner run {folder.name}", icon=":material/rocket_launch:")


def progress_view(ws, r: dict) -> None:
    folder = r["folder"]
    state = procs.state(folder)
    status, rows = read_status(folder), read_metrics(folder, "step")
    steps = rows[-1]["steps"] if rows else status.get("steps")
    done = rows[-1]["step"] if rows else 0
    label = {"created": "starting (loading the model)…",
             "interrupted": "interrupted (its process died)"}.get(state, state)
    text = f"Run {folder.name} ({r['run'].config().variant}): {label}" + \
        (f" — step {done:,} / {steps:,}, loss {rows[-1]['loss']:.4f}" if rows and steps else "")
    st.progress(min(done / steps, 1.0) if steps else 0.0, text=text)
    if state == "failed":
        st.error(status.get("error", "failed"), icon=":material/error:")
    if state in ACTIVE and st.button("Cancel", key="capt_cancel", icon=":material/stop:"):
        procs.cancel(folder)
        st.toast("Asked the run to stop; it saves a checkpoint first.")
    if state in ("cancelled", "interrupted", "failed") and st.button("Resume", key="capt_resume",
                                                                      icon=":material/replay:"):
        try:
            runs.launch(ws, folder=folder)
        except (ValueError, ModelSpecError, ModelUnavailable) as e:
            st.error(str(e), icon=":material/error:")
        else:
            st.rerun()
    if state in ACTIVE:
        st.caption("Updates every second. Closing the page does not stop the run.")
    result = r["result"] if state == "finished" else None
    if result:
        m = result["metrics"]
        st.dataframe(pd.DataFrame([{**{k: m.get(k) for k in SHOWN}, "test images": result["test_images"]}]),
                     hide_index=True, width="stretch", key="capt_run_result",
                     column_config={k: st.column_config.NumberColumn(v, format="%.3f") for k, v in SHOWN.items()})
        st.caption("Its scores on the test split; the captioner is offered in the list at the top of the page.")


def training_section(ws, ds, emb) -> None:
    st.subheader("Train a captioner")
    train_form(ws, ds, emb)
    found = runs.list_runs(ws, ds.name, emb.model)
    if not found:
        st.caption(f"No captioner runs of {ds.name} under {emb.model} yet.")
        return
    by_id = {r["id"]: r for r in found[:common.MAX_OPTIONS]}
    if st.session_state.get("capt_run") not in by_id:
        st.session_state["capt_run"] = next(iter(by_id))
    chosen = st.selectbox("Run", list(by_id), key="capt_run",
                          format_func=lambda i: f"{i} ({by_id[i]['run'].config().variant}, {by_id[i]['state']})")
    folder = by_id[chosen]["folder"]

    @st.fragment(run_every=1.0 if procs.is_running(folder) else None)
    def live() -> None:
        r = next((x for x in runs.list_runs(ws, ds.name, emb.model) if x["id"] == chosen), by_id[chosen])
        progress_view(ws, r)
        running = procs.is_running(folder)
        if not running and st.session_state.get("capt_was_running") == chosen:
            st.session_state.pop("capt_was_running")
            st.rerun()  # it just ended: offer its captioner at the top
        if running:
            st.session_state["capt_was_running"] = chosen

    live()


st.title("Captioning")
common.link_state("captioning", [links.listing("captioners", "capt_captioners"),
                                 links.choice("split", "capt_split", {k: k for k in SPLITS}),
                                 links.integer("beam", "capt_beam", 1, 5), links.text("image", "capt_image_q"), links.choice("variant", "capt_variant", {v: v for v in VARIANTS})])
st.caption("A captioner here is a small decoder trained on **caption embeddings only**: it never sees an image while "
           "it learns, then captions images from their **image embeddings**. The modality gap stands between the two "
           "(C3, Zhang et al., ICLR 2024): **connect (c1)** decodes image vectors as if they were text; **collapse** "
           "removes each modality's mean first; **corrupt** trains on text vectors with Gaussian noise, so the "
           "decoder reads a neighbourhood wide enough to hold the image; **C3** does both; **paired** trains on the "
           "image vectors themselves (the oracle). Transforms closes the same gap in embedding space; Captions "
           "scores the captions sent from here with MID.")
links = st.columns([1, 1, 4])
links[0].page_link("views/transforms.py", label="Transforms", icon=":material/compress:")
links[1].page_link("views/captions.py", label="Captions", icon=":material/rate_review:")
ds, emb = common.dataset_and_embeddings("capt")
try:
    loaded = load_model(emb.model)
except (ModelSpecError, ModelUnavailable, ValueError) as e:
    st.warning(f"Captioning reads the image vectors of the model that made this set's vectors, `{emb.model}`, and "
               f"scoring encodes captions with it; mmviz cannot load it here ({e}). Pick an open_clip model in the "
               "sidebar and embed the set with it.", icon=":material/cloud_off:")
    st.stop()
ws = common.workspace()
chosen, beam = pick_captioners(ws, ds, emb)
if chosen:
    one_image(ds, emb, loaded, chosen, beam)
    evals, split = corpus_section(ds, emb, chosen, beam)
    if emb.model == BUILTIN_SPEC:
        finding_table()
    if evals:
        worst_section(ds, emb, chosen, evals)
        send_section(ds, emb, chosen, evals, split)
st.divider()
training_section(ws, ds, emb)
