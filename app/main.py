"""mmviz browser app: `mmviz app` (or `streamlit run app/main.py`).

Pages live in views/, not pages/: a pages/ folder switches Streamlit to its older
folder-based navigation, which st.navigation replaces.
"""
import streamlit as st

import common

st.set_page_config(page_title="mmviz", page_icon=":material/scatter_plot:", layout="wide")
pages = {
    "Data": [st.Page("views/data.py", title="Data", icon=":material/dataset:", default=True)],
}
common.init_state()
st.navigation(pages).run()
# The sidebar is drawn after the page so a page may switch dataset (after an import) in the
# same run, before the picker widget exists; st.sidebar places it on top all the same.
common.sidebar()
