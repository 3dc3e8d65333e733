"""mmviz browser app: `mmviz app` (or `streamlit run app/main.py`)."""
import streamlit as st

import common

st.set_page_config(page_title="mmviz", page_icon=":material/scatter_plot:", layout="wide")
common.sidebar()
pages = {
    "Data": [st.Page("pages/data.py", title="Data", icon=":material/dataset:", default=True)],
}
st.navigation(pages).run()
