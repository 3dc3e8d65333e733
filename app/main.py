"""mmviz browser app: `mmviz app` (or `streamlit run app/main.py`).

Pages live in views/, not pages/: a pages/ folder switches Streamlit to its older
folder-based navigation, which st.navigation replaces.
"""
import streamlit as st

import common

st.set_page_config(page_title="mmviz", page_icon=common.favicon(), layout="wide")
pages = {
    "Data": [st.Page("views/data.py", title="Data", icon=":material/dataset:", default=True)],
    "Geometry": [st.Page("views/gap.py", title="Gap explorer", icon=":material/scatter_plot:")],
    "Close the gap": [st.Page("views/transforms.py", title="Transforms", icon=":material/compress:"),
                      st.Page("views/mixup.py", title="Mixup", icon=":material/blur_linear:"),
                      st.Page("views/retrieval.py", title="Retrieval", icon=":material/search:")],
    "Evaluate": [st.Page("views/captions.py", title="Captions", icon=":material/rate_review:"),
                 st.Page("views/captioning.py", title="Captioning", icon=":material/subtitles:"),
                 st.Page("views/vqa.py", title="VQA", icon=":material/quiz:")],
    "Train": [st.Page("views/finetune.py", title="Fine-tune", icon=":material/model_training:")],
}
common.init_state()
common.sidebar()  # before the page, so the pickers stay usable while a page works
page = st.navigation(pages)
common.note_page(page.url_path)
page.run()
