"""What every page shares: the workspace and the sidebar's dataset picker."""
import os

import streamlit as st

from mmviz.store import Workspace


@st.cache_resource
def _workspace(home: str) -> Workspace:
    return Workspace(home or None)


def workspace() -> Workspace:
    return _workspace(os.environ.get("MMVIZ_HOME", ""))


def init_state() -> None:
    """Point the session at an existing dataset before any page reads it."""
    names = workspace().names()
    if st.session_state.get("dataset") not in names:
        st.session_state["dataset"] = names[0] if names else None


def select_dataset(name: str | None) -> None:
    """Switch dataset from a page (runs before the sidebar picker is drawn)."""
    st.session_state["dataset"] = name


def sidebar() -> None:
    ws = workspace()
    names = ws.names()
    if st.session_state.get("dataset") not in names:
        st.session_state["dataset"] = names[0] if names else None
    with st.sidebar:
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
