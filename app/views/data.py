"""Data page: import a set (upload or local path), read the import report, browse pairs."""
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

import common
import links
from mmviz.data import DataFormatError
from mmviz.embed import cache_status, embed_dataset
from mmviz.models import ModelSpecError, ModelUnavailable
from mmviz.store import Dataset, name_from_path

PAGE_SIZES = (25, 50, 100, 200)
UPLOAD_TYPES = ["zip", "json", "csv", "tsv", "jsonl", "parquet", "npy", "npz"]
SKIPPED_PAGE = 100  # skipped rows listed at a time


def page_table(ds: Dataset, rows) -> pd.DataFrame:
    """The rows at these positions (reading only their row groups) with their thumbnails
    (only theirs) as data URLs, the first caption and the number of captions."""
    t = ds.rows(list(rows))
    thumbs = common.thumbnails_of(ds, t["id"])
    t["thumbnail"] = [common.data_uri(thumbs.get(i)) for i in t["id"]]
    t["caption"] = t["captions"].map(lambda c: c[0] if len(c) else "")
    t["n_captions"] = t["captions"].map(len)
    t["row"] = list(rows)
    return t


def skipped_table(skipped: list, key: str) -> None:
    """The import's skipped rows (reason, detail), a page at a time."""
    offset = common.pager(len(skipped), SKIPPED_PAGE, key, what="skipped rows")
    st.dataframe(pd.DataFrame(skipped[offset:offset + SKIPPED_PAGE]), hide_index=True, width="stretch")


def run_import(source: str, name: str, copy_images: bool, label: str | None = None) -> None:
    ws = common.workspace()
    bar = st.progress(0.0, text="Reading…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Checking images: {done:,} / {total:,}")

    try:
        res = ws.import_path(source, name or None, copy_images=copy_images, progress=progress, source_label=label)
    except (DataFormatError, ValueError) as e:
        bar.empty()
        st.session_state["last_import"] = {"error": str(e)}
        return
    bar.empty()
    st.session_state["last_import"] = {"name": res.dataset.name, "status": res.status, "report": res.report.to_dict()}
    common.select_dataset_and_rerun(res.dataset.name)


def import_section(expanded: bool) -> None:
    with st.expander("Import a dataset", expanded=expanded, icon=":material/upload:"):
        import_form()
    show_last_import()


def import_form() -> None:
    local_paths = os.environ.get("MMVIZ_LOCAL_PATHS", "1") != "0"
    up_tab, path_tab = st.tabs(["Upload", "Local path"])
    with up_tab:
        up = st.file_uploader(
            "A zip of an image folder (metadata.jsonl/csv), COCO captions + images, a CSV/JSONL table with "
            "images, or .npy/.npz vectors", type=UPLOAD_TYPES, key="upload")
        name = st.text_input("Dataset name", key="upload_name", placeholder=name_from_path(up.name) if up else "",
                             help="Leave empty to name it after the file")
        if st.button("Import upload", disabled=up is None, type="primary"):
            tmp = common.workspace().home / "uploads" / uuid.uuid4().hex
            tmp.mkdir(parents=True)
            try:
                target = tmp / Path(up.name).name
                with open(target, "wb") as f:
                    shutil.copyfileobj(up, f, 1 << 20)
                run_import(str(target), name, copy_images=True, label=f"upload {up.name}")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    with path_tab:
        if not local_paths:
            st.info("Importing from local paths is off: this app is served to other machines. "
                    "Use `mmviz import PATH` on the server, or upload a zip.")
            return
        path = st.text_input("Folder or file on this machine", key="local_path",
                             placeholder="/data/coco/annotations/captions_val2017.json")
        lname = st.text_input("Dataset name", key="local_name", placeholder=name_from_path(path) if path else "",
                              help="Leave empty to name it after the folder or file")
        copy = st.checkbox("Copy images into the workspace", value=False,
                           help="Otherwise images are referenced where they are; moving them breaks the dataset.")
        if st.button("Import path", disabled=not path.strip()):
            run_import(path.strip(), lname, copy)


def show_last_import() -> None:
    last = st.session_state.get("last_import")
    if not last:
        return
    if "error" in last:
        st.error(last["error"], icon=":material/error:")
        return
    rep = last["report"]
    verb = {"created": "Imported", "updated": "Re-imported", "unchanged": "Already imported, unchanged:"}[last["status"]]
    skipped = rep["skipped"]
    st.success(f"{verb} **{last['name']}** ({rep['format']}): {rep['kept']:,} pairs kept, "
               f"{len(skipped):,} rows skipped.", icon=":material/check_circle:")
    for w in rep["warnings"]:
        st.warning(w)
    if skipped:
        with st.expander(f"Skipped rows ({len(skipped):,})", expanded=len(skipped) <= 20):
            skipped_table(skipped, "skipped_import")


def browse_section(ds: Dataset) -> None:
    m = ds.manifest
    st.subheader(f"Browse {ds.name}")
    cols = st.columns(4)
    cols[0].metric("Pairs", f"{m['pairs']:,}")
    cols[1].metric("Captions", f"{m['captions']:,}")
    cols[2].metric("Images", f"{m['images']:,}")
    cols[3].metric("Imported vectors", f"{m['dim']}-d" if m.get("dim") else "none",
                   help=m.get("vector_model") or "Vectors that came with the data; embed below with any model")
    n_skipped = len(ds.report.skipped)
    st.caption(f"From {m['source']} ({m['format']}); images {m['images_stored']}; "
               f"{n_skipped:,} row{'s' if n_skipped != 1 else ''} skipped at import.")

    embed_section(ds)
    report_section(ds)
    left, right = st.columns([3, 1])
    query = left.text_input("Search captions", key="search", placeholder="substring of a caption or an id, e.g. dog")
    size = right.selectbox("Rows per page", PAGE_SIZES, index=PAGE_SIZES.index(100), key="page_size")
    hits = common.matches(ds, query)
    st.write(f"{len(hits):,} of {len(ds):,} pairs match." if query.strip() else f"{len(ds):,} pairs.")
    offset = common.pager(len(hits), size, f"browse-{ds.name}", reset_on=(query.strip(), ds.key))
    if not len(hits):
        return
    view = page_table(ds, hits[offset:offset + size])
    show = ["thumbnail", "id", "caption", "n_captions"] + [c for c in m.get("extras", []) if c in view][:4]
    if view["thumbnail"].isna().all():
        show.remove("thumbnail")
    event = st.dataframe(
        view[show], hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
        key="pairs_table", row_height=64 if "thumbnail" in show else None,
        column_config={
            "thumbnail": st.column_config.ImageColumn("Image", width="small"),
            "id": st.column_config.TextColumn("Id"),
            "caption": st.column_config.TextColumn("First caption", width="large"),
            "n_captions": st.column_config.NumberColumn("Captions", width="small"),
        })
    selected = event.selection.rows if event is not None else []
    ids = view["id"].tolist()
    if selected and selected[0] < len(ids):
        st.session_state["pair_id"] = ids[selected[0]]
    if st.session_state.get("pair_id") not in ids:
        st.session_state["pair_id"] = ids[0]
    captions = dict(zip(view["id"], view["caption"]))
    pair_id = st.selectbox("Open pair", ids, key="pair_id", format_func=lambda i: f"{i} · {captions[i][:80]}",
                           help="Or click a row in the table")
    pair_detail(ds, view.iloc[ids.index(pair_id)])


def embed_section(ds: Dataset) -> None:
    vm = ds.manifest.get("vector_model")
    if vm and not ds.manifest.get("images"):
        st.info(f"This set came with its vectors: {vm}, {ds.manifest['dim']}-d, stored in the embedding cache "
                f"under that name. It has no images, so other models cannot embed it.", icon=":material/data_array:")
        return
    spec = common.current_model()
    if not spec:
        st.info("Type a model spec in the sidebar to embed this set.")
        return
    ws = common.workspace()
    try:
        status = cache_status(ws, ds, spec)
    except (ModelSpecError, ModelUnavailable, ValueError) as e:
        st.warning(f"Cannot embed with {spec}: {e}", icon=":material/cloud_off:")
        return
    done = status["images_cached"] == status["images"] and status["captions_cached"] == status["captions"]
    with st.container(border=True):
        left, right = st.columns([3, 1], vertical_alignment="center")
        left.markdown(f"**Embeddings under `{spec}`**: {status['images_cached']:,} / {status['images']:,} images "
                      f"and {status['captions_cached']:,} / {status['captions']:,} captions cached.")
        left.caption(f"Cache: {status['cache_path']}")
        clicked = right.button("Embed" if not done else "Embedded", key="embed", disabled=done or status["images"] == 0,
                               type="primary", width="stretch")
        if clicked:
            bar = st.progress(0.0, text=f"Loading {spec}…")

            def progress(n: int, total: int, stage: str) -> None:
                bar.progress(n / max(total, 1), text=f"Embedding {stage}: {n:,} / {total:,}")

            try:
                emb = embed_dataset(ws, ds, spec, progress=progress)
            except (ModelSpecError, ModelUnavailable, ValueError) as e:
                bar.empty()
                st.error(str(e))
                return
            msg = (f"Embedded {emb.computed['images']:,} images and {emb.computed['captions']:,} distinct captions "
                   f"in {emb.seconds:.1f} s; {emb.dim}-d vectors.")
            if emb.cached["images"] or emb.cached["captions"]:
                msg += f" {emb.cached['images']:,} images and {emb.cached['captions']:,} captions came from the cache."
            st.session_state["last_embed"] = {"dataset": ds.name, "model": spec, "message": msg,
                                              "skipped": emb.skipped[:10]}
            st.rerun()  # redraw the counts above from the cache
        last = st.session_state.get("last_embed")
        if last and last["dataset"] == ds.name and last["model"] == spec:
            st.success(last["message"], icon=":material/check_circle:")
            for id_, why in last["skipped"]:
                st.warning(f"Skipped {id_}: {why}")


def report_section(ds: Dataset) -> None:
    """Build the set's offline HTML report (mmviz.report) under the sidebar's model, then
    offer it for download. Kept in the session for this dataset version and model."""
    spec = common.current_model()
    if not spec:
        return
    key = (ds.key, spec)
    with st.container(border=True):
        left, right = st.columns([3, 1], vertical_alignment="center")
        left.markdown(f"**Report**: {ds.name} under `{spec}` as one HTML file to share: the gap, the metrics, "
                      "the fixes, retrieval, caption scores, a VQA example and the runs. It opens offline; nothing "
                      "in it loads from the network.")
        if right.button("Build report", key="report_build", width="stretch", icon=":material/description:"):
            from mmviz.report import make_report

            stage = left.empty()
            with st.spinner(f"Building the report of {ds.name} under {spec}…"):
                try:
                    rep = make_report(common.workspace(), ds.name, spec,
                                      progress=lambda done, total, what: stage.caption(f"Report: {what}"))
                except (ModelSpecError, ModelUnavailable, ValueError, KeyError) as e:
                    st.session_state.pop("report", None)
                    st.error(f"Cannot build the report: {e}", icon=":material/error:")
                else:
                    st.session_state["report"] = {"key": key, "html": rep.html.encode("utf-8"),
                                                  "figures": rep.figures, "seconds": rep.seconds}
                finally:
                    stage.empty()
        made = st.session_state.get("report")
        if made and made["key"] == key:
            left.caption(f"Built in {made['seconds']:.0f} s: {len(made['html']) / 1e6:.1f} MB, "
                         f"{made['figures']} figures.")
            with right:
                common.download("Download report", made["html"], f"{ds.name}-report.html", "text/html",
                                "report_download")


def pair_detail(ds: Dataset, row: pd.Series) -> None:
    idx, pair_id = int(row["row"]), row["id"]
    left, right = st.columns([1, 2])
    with left:
        path = common.image_path_of(ds, row["image"])
        if path is not None and path.is_file():
            st.image(str(path), width="content")  # natural size, shrunk to fit; never blown up
            st.caption(f"{row['width']}×{row['height']} px · sha256 {str(row['image_sha256'])[:12]}…")
        elif path is not None:
            st.warning(f"Image not found at {path}: it was referenced in place and has moved.")
        else:
            st.info("No image: this set holds precomputed vectors only.")
    with right:
        st.markdown(f"**{pair_id}**")
        for c in row["captions"]:
            st.markdown(f"- {c}")
        extras = {k: row[k] for k in ds.manifest.get("extras", []) if k in row.index}
        if extras:
            st.json(extras, expanded=False)
        vecs = ds.vectors()
        if vecs is not None:
            a, t = (np.asarray(v[idx], dtype=np.float64) for v in vecs)
            cos = float(a @ t / max(np.linalg.norm(a) * np.linalg.norm(t), 1e-12))
            st.metric("cos(image, text)", f"{cos:.3f}", help=f"Paired cosine under {ds.manifest['vector_model']}")


def delete_dataset(name: str) -> None:
    # A button callback runs before the script, so no part of the page shows a deleted set.
    common.workspace().delete(name)
    st.session_state.pop("last_import", None)
    st.session_state["dataset"] = None
    common.init_state()


def manage_section(ds: Dataset) -> None:
    with st.expander("Delete this dataset"):
        sure = st.checkbox(f"Yes, delete {ds.name} and everything stored with it", key="confirm_delete")
        st.button("Delete", disabled=not sure, on_click=delete_dataset, args=(ds.name,))


st.title("Data")
common.link_state("data", [links.text("query", "search"), links.choice("rows", "page_size", {n: str(n) for n in PAGE_SIZES})])
ds = common.current_dataset()
import_section(expanded=ds is None or "last_import" in st.session_state)
if ds is None:
    st.info("No dataset yet. Upload a zip or type a local path above.")
else:
    st.divider()
    browse_section(ds)
    manage_section(ds)
