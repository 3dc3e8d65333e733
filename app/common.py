"""What every page shares: the workspace, the sidebar's dataset and model pickers."""
import os

import streamlit as st

from mmviz.models import BUILTIN_SPEC, KNOWN_SPECS, weights_status
from mmviz.store import Workspace

DEMO_MARKER = ".demo-offered"  # first launch done: never recreate a demo the user deleted
OTHER = "Other…"


@st.cache_resource
def _workspace(home: str) -> Workspace:
    return Workspace(home or None)


def workspace() -> Workspace:
    return _workspace(os.environ.get("MMVIZ_HOME", ""))


@st.cache_data(ttl=30, show_spinner=False)
def model_status(spec: str) -> tuple[bool, str]:
    return weights_status(spec)


PENDING = "_pending_dataset"  # a page's request to switch dataset, applied on the next run


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
    if PENDING in st.session_state:
        st.session_state["dataset"] = st.session_state.pop(PENDING)
    if st.session_state.get("dataset") not in names:
        st.session_state["dataset"] = names[0] if names else None
    st.session_state.setdefault("model_choice", BUILTIN_SPEC)


def select_dataset_and_rerun(name: str | None) -> None:
    """Switch dataset from a page: the picker is already drawn, so rerun with the new one."""
    st.session_state[PENDING] = name
    st.rerun()


def _model_label(spec: str) -> str:
    if spec == OTHER:
        return spec
    present, _ = model_status(spec)
    return f"{spec}" if present else f"{spec} (weights not here)"


def sidebar() -> None:
    ws = workspace()
    names = ws.names()
    with st.sidebar:
        st.selectbox("Dataset", names, key="dataset", placeholder="none yet: import one on the Data page",
                     help=f"Datasets in the workspace {ws.home}")
        st.selectbox("Model", list(KNOWN_SPECS) + [OTHER], key="model_choice", format_func=_model_label,
                     help="Any open_clip model: builtin:shapes, ARCH:TAG, ARCH:/path/to/weights.safetensors, "
                          "ARCH:random, local-dir:/path, hf-hub:org/repo")
        if st.session_state["model_choice"] == OTHER:
            st.text_input("Model spec", key="model_custom", placeholder="ViT-B-32:/models/clip.safetensors")
        spec = current_model()
        if spec:
            present, where = model_status(spec)
            if not present:
                st.warning(f"{spec}: {where}. Embedding with it will fail until its weights are here; "
                           f"{BUILTIN_SPEC} always works.", icon=":material/cloud_off:")


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
