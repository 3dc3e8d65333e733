"""What every page shares: the workspace and the sidebar's dataset picker."""
import os

import streamlit as st

from mmviz.store import Workspace

PENDING = "_pending_dataset"  # set by a page to select a dataset on the next run


@st.cache_resource
def _workspace(home: str) -> Workspace:
    return Workspace(home)


def workspace() -> Workspace:
    return _workspace(os.environ.get("MMVIZ_HOME", ""))


def select_dataset_next_run(name: str) -> None:
    st.session_state[PENDING] = name


def sidebar() -> None:
    ws = workspace()
    names = ws.names()
    if PENDING in st.session_state:
        st.session_state["dataset"] = st.session_state.pop(PENDING)
    if st.session_state.get("dataset") not in names:
        st.session_state["dataset"] = names[0] if names else None
    with st.sidebar:
        st.markdown("### mmviz")
        st.selectbox("Dataset", names, key="dataset", placeholder="none yet: import one on the Data page",
                     help=f"Datasets in the workspace {ws.home}")


def current_dataset():
    name = st.session_state.get("dataset")
    if not name:
        return None
    try:
        return workspace().open(name)
    except KeyError:
        return None
