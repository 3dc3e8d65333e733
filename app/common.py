"""What every page shares: the workspace, the sidebar's dataset and model pickers."""
import base64
import os

import streamlit as st

import links
from mmviz import projection
from mmviz.embed import embed_dataset, stored_embeddings
from mmviz.models import BUILTIN_SPEC, KNOWN_SPECS, ModelSpecError, ModelUnavailable, weights_status
from mmviz.store import Workspace

DEMO_MARKER = ".demo-offered"  # first launch done: never recreate a demo the user deleted
OTHER = "Other…"


@st.cache_resource
def _workspace(home: str) -> Workspace:
    return Workspace(home or None)


def workspace() -> Workspace:
    return _workspace(os.environ.get("MMVIZ_HOME", ""))


@st.cache_resource
def favicon():
    """The tab's icon, drawn here: a material icon as page_icon makes Streamlit fetch it from
    fonts.gstatic.com on every page (a request to the internet from an offline tool)."""
    from PIL import Image, ImageDraw

    from mmviz.viz import IMAGE_COLOUR, TEXT_COLOUR

    img = Image.new("RGBA", (64, 64))
    draw = ImageDraw.Draw(img)
    for (x, y), colour in (((14, 22), TEXT_COLOUR), ((24, 40), TEXT_COLOUR), ((40, 20), IMAGE_COLOUR),
                           ((50, 40), IMAGE_COLOUR)):
        draw.ellipse((x - 9, y - 9, x + 9, y + 9), fill=colour)
    return img


@st.cache_data(ttl=30, show_spinner=False)
def model_status(spec: str) -> tuple[bool, str]:
    return weights_status(spec)


PENDING = "_pending_dataset"  # a page's request to switch dataset, applied on the next run
PENDING_MODEL = "_pending_model"  # ... and to switch model


def init_state() -> None:
    """Before any page runs: the demo set on first launch, a valid dataset and model."""
    ws = workspace()
    marker = ws.home / DEMO_MARKER
    if not marker.exists():
        if not ws.names():
            from mmviz.builtin import make_demo

            with st.spinner("First launch: creating the shapes-world demo dataset…"):
                make_demo(ws)
        ws.home.mkdir(parents=True, exist_ok=True)
        marker.touch()
    names = ws.names()
    links.read_sidebar(names, lambda: [*KNOWN_SPECS, *tuned_models(str(ws.home))], OTHER)  # a link's dataset and model
    if PENDING in st.session_state:
        st.session_state["dataset"] = st.session_state.pop(PENDING)
    if st.session_state.get("dataset") not in names:
        st.session_state["dataset"] = names[0] if names else None
    st.session_state.setdefault("model_choice", BUILTIN_SPEC)
    if PENDING_MODEL in st.session_state:
        st.session_state["model_choice"] = st.session_state.pop(PENDING_MODEL)


def select_dataset_and_rerun(name: str | None) -> None:
    """Switch dataset from a page: the picker is already drawn, so rerun with the new one."""
    st.session_state[PENDING] = name
    st.rerun()


def select_model_and_rerun(spec: str) -> None:
    """Switch model from a page (e.g. to a fine-tuned one), as select_dataset_and_rerun."""
    st.session_state[PENDING_MODEL] = spec
    st.rerun()


def tuned_models(home: str) -> dict[str, str]:
    """spec -> label of the finished fine-tuning runs' models, for the model picker. Not
    cached: a run that just finished must be offered (a few small JSON reads per run)."""
    from mmviz.finetune.runs import finished_models

    return dict(finished_models(home))


def _model_label(spec: str) -> str:
    if spec == OTHER:
        return spec
    tuned = tuned_models(str(workspace().home))
    if spec in tuned:
        return tuned[spec]
    present, _ = model_status(spec)
    return f"{spec}" if present else f"{spec} (weights not here)"


def sidebar() -> None:
    ws = workspace()
    names = ws.names()
    with st.sidebar:
        st.selectbox("Dataset", names, key="dataset", placeholder="none yet: import one on the Data page",
                     help=f"Datasets in the workspace {ws.home}")
        tuned = list(tuned_models(str(ws.home)))
        if st.session_state.get("model_choice") not in [*KNOWN_SPECS, *tuned, OTHER]:
            st.session_state["model_choice"] = BUILTIN_SPEC  # e.g. its run was deleted
        st.selectbox("Model", list(KNOWN_SPECS) + tuned + [OTHER], key="model_choice", format_func=_model_label,
                     help="Any open_clip model: builtin:shapes, ARCH:TAG, ARCH:/path/to/weights.safetensors, "
                          "ARCH:random, local-dir:/path, hf-hub:org/repo")
        if st.session_state["model_choice"] == OTHER:
            st.text_input("Model spec", key="model_custom", placeholder="ViT-B-32:/models/clip.safetensors")
        spec = current_model()
        ds = current_dataset()
        own = ds.manifest.get("vector_model") if ds is not None else None
        if own and not ds.manifest.get("images") and spec != own:
            # its vectors are what every page shows; the model above only embeds typed queries
            st.caption(f"{ds.name} brings its own vectors ({own}); {spec or 'the model'} embeds only "
                       "the text queries you type.")
        if spec:
            present, where = model_status(spec)
            if not present:
                st.warning(f"{spec}: {where}. Embedding with it will fail until its weights are here; "
                           f"{BUILTIN_SPEC} always works.", icon=":material/cloud_off:")


def note_page(url_path: str) -> None:
    """Called by main.py before each full run of a page: remembers whether it is a new visit."""
    st.session_state["_page_entered"] = st.session_state.get("_page_now") != url_path
    st.session_state["_page_now"] = url_path


def page_entered() -> bool:
    """Whether this run opens the page (a fresh tab, or from another page) rather than rerunning it."""
    return st.session_state.get("_page_entered", True)


def link_state(page: str, params: list) -> None:
    """The page's controls in the URL, with the sidebar's dataset and model (see links.py)."""
    links.bind(page, params, st.session_state.get("dataset"), current_model() or None)


def current_model() -> str:
    choice = st.session_state.get("model_choice", BUILTIN_SPEC)
    if choice == OTHER:
        return (st.session_state.get("model_custom") or "").strip()
    return choice


def current_dataset():
    name = st.session_state.get("dataset")
    if not name:
        return None
    try:
        return workspace().open(name)
    except KeyError:
        return None


# ----------------------------------------------------------------------------------------
# embeddings and layouts, shared by the pages that draw them


def download(label: str, data, name: str, mime: str, key: str) -> None:
    """A download button; `data` is bytes, text, or a callable run only when it is clicked."""
    st.download_button(label, data, file_name=name, mime=mime, key=key, icon=":material/download:")


def download_csv(label: str, table, name: str, key: str, **to_csv_kwargs) -> None:
    """Every CSV the app hands out goes through here: mmviz.export.to_csv escapes cells a
    spreadsheet would run as formulas (a caption such as =HYPERLINK(...)), built on click."""
    from mmviz.export import to_csv

    download(label, lambda: to_csv(table, **to_csv_kwargs), name, "text/csv", key)


@st.cache_resource(show_spinner=False, max_entries=8)
def _complete_embeddings(version_path: str, name: str, spec: str):
    """A dataset version's full set of vectors under a model never changes, so reruns (a
    selection, a toggle) reuse it instead of re-reading the cache; incomplete sets are not
    kept, so they are looked up again after an embed."""
    from mmviz.store import Dataset

    emb = stored_embeddings(workspace(), Dataset(name, version_path), spec)
    if emb is None:
        raise LookupError  # not cached by st.cache_resource
    return emb


@st.cache_resource(show_spinner=False, max_entries=4)
def _thumbnails(version_path: str, name: str) -> dict[str, bytes]:
    from mmviz.store import Dataset

    return Dataset(name, version_path).thumbnails()


def thumbnails(ds) -> dict[str, bytes]:
    """id -> JPEG thumbnail of the dataset's current version, read once per version."""
    return _thumbnails(str(ds.path), ds.name)


def data_uri(thumb: bytes | None) -> str | None:
    """A thumbnail as a data: URI, for st.column_config.ImageColumn (stored thumbnails are JPEG)."""
    if thumb is None:
        return None
    mime = "png" if thumb.startswith(b"\x89PNG") else "jpeg"
    return f"data:image/{mime};base64," + base64.b64encode(thumb).decode()


def data_key(ds, emb) -> str:
    """Names one dataset version under one model: the key for per-set caches and state (a
    re-imported set keeps its name but gets a new content hash)."""
    return f"{ds.name}-{ds.manifest['content_hash'][:10]}-{emb.fingerprint[:10]}"


def need_embeddings(ds, spec: str, page: str):
    ws = workspace()
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
    if st.button(f"Embed {ds.name} with {spec}", type="primary", key=f"{page}_embed"):
        bar = st.progress(0.0, text=f"Loading {spec}…")
        try:
            return embed_dataset(ws, ds, spec, progress=lambda n, t, stage: bar.progress(
                n / max(t, 1), text=f"Embedding {stage}: {n:,} / {t:,}"))
        except (ModelSpecError, ModelUnavailable, ValueError) as e:
            st.error(str(e))
        finally:
            bar.empty()
    return None


PROJECTIONS = {  # label -> mmviz.projection method
    "Gap axis": "gap2",
    "PCA 2D": "pca2",
    "PCA 3D": "pca3",
    "UMAP 2D": "umap2",
    "UMAP 3D": "umap3",
    "DOSNES sphere": "dosnes",
}


def dataset_and_embeddings(page: str):
    """(dataset, embeddings) for the sidebar's dataset and model; otherwise a note, or the
    offer to embed, and the page stops here."""
    ds = current_dataset()
    if ds is None:
        st.info("No dataset yet: import one on the Data page.")
        st.stop()
    emb = need_embeddings(ds, current_model(), page)
    if emb is None:
        st.stop()
    return ds, emb


def layout_for(ds, emb, method: str, seed: int, images=None, texts=None, variant: dict | None = None):
    """The dataset's layout under `method` through the workspace cache, with a progress bar.
    `images`/`texts` replace the embeddings' own vectors (a transformed set), and `variant`
    names what was done to them, for the cache key."""
    own = images is None and texts is None
    images = emb.image if images is None else images
    texts = emb.text if texts is None else texts
    parts = {"dataset": ds.manifest["content_hash"], "model": emb.fingerprint, **({"variant": variant} if variant else {})}
    # a dataset version under a model names its vectors for good: no need to hash a million rows;
    # other vectors are named by a variant only as far as the caller says, so they are hashed
    return layout_for_vectors(parts, images, texts, method, seed, identifies_data=own)


def layout_for_vectors(parts: dict, images, texts, method: str, seed: int = 0, identifies_data: bool = False):
    """Any vectors' layout through the workspace cache (`parts` name them for the key;
    identifies_data=True when they name the vectors for good, which skips hashing them),
    with a progress bar that says which stage the projection is in."""
    ws = workspace()
    bar = st.progress(0.0, text="Projecting…")
    # numba compiles umap-learn's code on the first fit after launch
    compile_note = " (the first UMAP fit after launch also compiles numba code: about 15 s more)"

    def progress(done: int, total: int, stage: str) -> None:
        note = compile_note if stage.startswith("fitting UMAP") and done < total else ""
        count = f": {done:,} / {total:,}" if total > 1 else "…"
        bar.progress(min(done / max(total, 1), 1.0), text=f"{stage[:1].upper()}{stage[1:]}{count}{note}")

    try:
        layout, hit = projection.cached_layout(ws, parts, images, texts, method, None, seed, progress=progress,
                                               identifies_data=identifies_data)
    finally:
        bar.empty()
    return layout, hit


# ----------------------------------------------------------------------------------------
# before/after metrics, shared by the pages that change embeddings (Transforms, Fine-tune)


def metric_headline(before: dict, after: dict, keys: dict[str, str]) -> None:
    """The numbers a fix is judged by, after, with their change; `keys` maps a metric key to
    st.metric's delta_color ("normal": up is better, "inverse": down is better)."""
    from mmviz import geometry, transforms

    labels = {**geometry.METRICS, **transforms.RECALL_METRICS}
    for col, (k, better) in zip(st.columns(len(keys)), keys.items()):
        change = round(after[k] - before[k], 3) + 0.0  # + 0.0: no "-0.000" from float noise
        col.metric(labels[k][0], f"{after[k]:.3f}", f"{change:+.3f}", delta_color=better,
                   help=f"{labels[k][1]}. Before: {before[k]:.3f}")


def metric_table(before: dict, after: dict, name: str, key: str, note: str | None = None) -> None:
    """Every metric before and after with its change and meaning, and its CSV download."""
    from mmviz import transforms

    table = transforms.metric_table(before, after)
    number = st.column_config.NumberColumn(format="%.4f")
    st.dataframe(table.drop(columns="key"), hide_index=True, width="stretch", key=f"{key}_table",
                 column_config={"before": number, "after": number, "change": number,
                                "meaning": st.column_config.TextColumn(width="large")})
    if note:
        st.caption(note)
    download_csv("Before/after metrics (CSV)", table, f"{name}-metrics.csv", f"{key}_dl_table")


# ----------------------------------------------------------------------------------------
# large sets: widgets of bounded size, rows picked by search, thumbnails of shown rows only

MAX_OPTIONS = 1000  # no selectbox, multiselect or radio lists more options than this
PICK_PAGE = 20  # matches a search picker offers at a time
MAX_DRAWN_PAIRS = 5000  # pairs drawn in a plotly figure; larger sets show a seeded sample
RECALL_SAMPLES = (1_000, 10_000, 100_000)  # recall query samples a page offers on a large set
ALL_QUERIES_MAX = 50_000  # "every query" is offered up to this many pairs (a million: an hour)


@st.cache_resource(show_spinner=False, max_entries=2)
def _kept_dataset(version_path: str, name: str):
    """A Dataset kept across reruns, so its id, caption and thumbnail-id columns are read once
    per version (a million captions: ~1 s to read, ~60 MB as Arrow), not on every search."""
    from mmviz.store import Dataset

    return Dataset(name, version_path)


@st.cache_data(show_spinner=False, max_entries=32)
def _matches(version_path: str, name: str, query: str):
    return _kept_dataset(version_path, name).match(query)


def matches(ds, query: str):
    """Sorted row positions of the rows whose id or a caption contains `query` (all rows, as
    a range, for an empty one), kept per dataset version and query across reruns."""
    query = (query or "").strip()
    return range(len(ds)) if not query else _matches(str(ds.path), ds.name, query)


def _shift_offset(key: str, step: int) -> None:
    st.session_state[f"{key}_offset"] = max(0, st.session_state.get(f"{key}_offset", 0) + step)


def pager(total: int, size: int, key: str, reset_on: tuple = (), what: str = "rows") -> int:
    """Previous / next buttons and "rows a–b of N"; returns the first row of the page shown.
    Back to the first page when `total`, `size` or `reset_on` (e.g. the search) change."""
    state = st.session_state
    if state.get(f"{key}_for") != (total, size, *reset_on):
        state[f"{key}_for"], state[f"{key}_offset"] = (total, size, *reset_on), 0
    offset = min(state.get(f"{key}_offset", 0), max(0, (total - 1) // size * size))
    state[f"{key}_offset"] = offset
    if total > size:
        prev, nxt, where = st.columns([1, 1, 5], vertical_alignment="center")
        prev.button("Previous", key=f"{key}_prev", disabled=offset == 0, on_click=_shift_offset, args=(key, -size),
                    icon=":material/chevron_left:", width="stretch")
        nxt.button("Next", key=f"{key}_next", disabled=offset + size >= total, on_click=_shift_offset,
                   args=(key, size), icon=":material/chevron_right:", width="stretch")
        where.caption(f"{what} {offset + 1:,}–{min(offset + size, total):,} of {total:,}")
    return offset


def _first_caption(captions) -> str:
    return captions[0] if len(captions) else ""


def pick_row(ds, label: str, key: str, *, optional: bool = False, default: int | None = None,
             help: str | None = None) -> int | None:
    """A row of the dataset chosen by search, for sets of any size: a text box matched
    against ids and captions (`matches`), the number of matches, and at most PICK_PAGE of them
    at a time (previous / next for more) in a selectbox. `default`: the row offered first while
    nothing is searched. Returns the row position, or None (optional, nothing chosen). Widget
    keys: `key` (the selectbox of row positions), `key`_q (the search box)."""
    query = st.text_input(label, key=f"{key}_q", placeholder="search ids and captions", help=help)
    hits = matches(ds, query)
    if not len(hits):
        st.caption(f"No id or caption contains “{query.strip()}”.")
        return None
    offset = pager(len(hits), PICK_PAGE, key, reset_on=(query.strip(), ds.key),
                   what="matches" if query.strip() else "rows")
    shown = [int(r) for r in hits[offset:offset + PICK_PAGE]]
    if default is not None and not query.strip() and offset == 0:
        shown = [int(default)] + [r for r in shown if r != default][:PICK_PAGE - 1]
    page = ds.rows(shown)
    names = {r: f"{i} · {_first_caption(c)[:70]}" for r, i, c in zip(shown, page["id"], page["captions"])}
    if query.strip() and len(hits) <= PICK_PAGE:  # more are counted by the pager
        st.caption(f"{len(hits):,} match{'es' if len(hits) != 1 else ''}")
    # The choice lives in session state (a widget's index applies only when it is first drawn):
    # kept while it is among the matches shown, else the first of them, or none for an optional
    # picker, unless a search names exactly one row.
    if st.session_state.get(key) not in shown:
        one = bool(query.strip()) and len(hits) == 1
        st.session_state[key] = None if optional and not one else shown[0]
    return st.selectbox(f"{label}: pick", shown, key=key, format_func=names.get, placeholder="none",
                        label_visibility="collapsed")


def image_path_of(ds, ref):
    """A table row's `image` value as a path (stored ones are relative to the version), or None."""
    from pathlib import Path

    if not isinstance(ref, str) or not ref:
        return None
    return Path(ref) if Path(ref).is_absolute() else ds.path / ref


def image_file(ds, row: int):
    """The image file of dataset row `row` (reading its row group only), or None."""
    return image_path_of(ds, ds.rows([row])["image"].iloc[0])


def embedding_row(ds, emb, row: int) -> int | None:
    """The row of `emb` (its vectors, ids) holding dataset row `row`, or None when that row
    was not embedded (its image failed)."""
    import numpy as np

    rows = emb.table_rows  # sorted: embeddings keep the dataset's order
    at = int(np.searchsorted(rows, row))
    return at if at < len(rows) and rows[at] == row else None


def dataset_row(emb, row: int) -> int:
    """The dataset row of embedding row `row` (the inverse of embedding_row)."""
    return int(emb.table_rows[row])


@st.cache_data(show_spinner=False, max_entries=64)
def _thumbs_of(version_path: str, name: str, ids: tuple[str, ...]) -> dict[str, bytes]:
    return _kept_dataset(version_path, name).thumbnails(ids=list(ids))


def thumbnails_of(ds, ids) -> dict[str, bytes]:
    """id -> thumbnail of the given ids only (a large set's thumbnails never load whole)."""
    ids = tuple(dict.fromkeys(str(i) for i in ids))
    return _thumbs_of(str(ds.path), ds.name, ids) if ids and ds.manifest.get("images") else {}


def drawn_pairs(n: int, text_owner, cap: int = MAX_DRAWN_PAIRS, seed: int = 0):
    """(image rows, caption rows, owner of each drawn caption among the drawn images) of the
    pairs a figure of n images draws: all, or a seeded sample of `cap` images with their captions,
    so no page sends a million points to the browser."""
    import numpy as np

    owner = np.asarray(text_owner)
    images = np.arange(n) if n <= cap else np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))
    captions = np.arange(len(owner)) if n <= cap else np.flatnonzero(np.isin(owner, images))
    return images, captions, np.searchsorted(images, owner[captions])


def recall_queries_choice(n: int, key: str) -> int | None:
    """How many queries a page's recall@k uses: all (None) up to retrieval.DEFAULT_QUERIES
    pairs; above, a seeded sample the user picks (RECALL_SAMPLES, every query up to
    ALL_QUERIES_MAX pairs), 1,000 by default: on a million pairs that is ~10^12 products
    instead of 10^14."""
    from mmviz.retrieval import DEFAULT_QUERIES

    if n <= DEFAULT_QUERIES:
        return None
    options = [s for s in RECALL_SAMPLES if s < n] + (["all"] if n <= ALL_QUERIES_MAX else [])
    choice = st.selectbox("Recall queries", options, key=key,
                          format_func=lambda s: f"every one of the {n:,}" if s == "all" else f"a sample of {s:,}",
                          help=f"Recall@k of {n:,} queries against {n:,} keys is {n * n:.1e} products (hours on a "
                               "laptop): a seeded sample of queries, each searched against every key, estimates it "
                               "(±1.6 points at 1,000, ±0.5 at 10,000). `mmviz transform NAME --recall-queries N` "
                               "computes any number from the command line.")
    return None if choice == "all" else int(choice)


LAYOUT_MAX_POINTS = 200_000  # pages that draw a sample (Transforms, Mixup) lay out every point up to this


def layout_sampled(n_vectors: int) -> bool:
    """Whether a page that draws a sample of pairs (drawn_pairs) fits its layout on that sample
    instead of every vector. Memory would allow the whole set (projection streams it), but on
    2M points fitting and placing take minutes, once per transform variant, for a figure that
    shows the sample anyway."""
    return n_vectors > LAYOUT_MAX_POINTS


def sample_layout(emb, method: str, img_rows, cap_rows, images=None, texts=None, variant: dict | None = None):
    """The layout of the drawn sample only (fitted on it), through the workspace cache:
    `images`/`texts` (default the embeddings') are the whole sets, read at those rows."""
    images = emb.image if images is None else images
    texts = emb.text if texts is None else texts
    parts = {**emb.key_parts, "sample": [len(img_rows), len(cap_rows)], "seed": 0,
             **({"variant": variant} if variant else {})}
    from mmviz.arrays import gather_rows

    return layout_for_vectors(parts, gather_rows(images, img_rows), gather_rows(texts, cap_rows), method, 0)
