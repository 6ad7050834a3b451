"""DETR Attention Explorer: the Streamlit entry point.

    streamlit run app.py

Builds the sidebar every page shares (model, image, threshold), runs the model once per new image
and model (cached), then runs the page picked in the navigation (the scripts in pages/). Each page
script ends with `ui.state.page_main(render, ...)`, which renders it inside this frame (see there
why a page script may also be started without this file, and what it does then).
"""

import logging

import streamlit as st

from ui import server_log, state

st.set_page_config(page_title="DETR Attention Explorer", page_icon=":mag:", layout="wide")
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
server_log.quiet_client_disconnects()  # an upload cut short is one log line, not a traceback

PAGES = {
    "detect": st.Page("pages/detect.py", title="Detect", icon=":material/center_focus_strong:", url_path="detect",
                      default=True),
    "encoder": st.Page("pages/encoder.py", title="Encoder attention", icon=":material/grid_on:", url_path="encoder"),
    "decoder": st.Page("pages/decoder.py", title="Decoder attention", icon=":material/filter_center_focus:",
                       url_path="decoder"),
    "model": st.Page("pages/model.py", title="Model", icon=":material/account_tree:", url_path="model"),
    "guide": st.Page("pages/guide.py", title="Guide", icon=":material/menu_book:", url_path="guide"),
}  # fmt: skip

page = st.navigation(list(PAGES.values()))
slug = next((s for s, p in PAGES.items() if p.title == page.title), "detect")
state.persist_page_widgets()

view = None
try:
    view, deep_link_page = state.sidebar(list(PAGES))
    if deep_link_page and deep_link_page != slug:
        st.switch_page(PAGES[deep_link_page])
except Exception as e:  # never a traceback in the page
    if isinstance(e, state.DETRError):
        st.error(str(e))
    else:
        state.log.exception("the sidebar failed")
        st.error("Something went wrong while preparing the model or the image. The details were logged on the server.")

try:
    state.show_callback_error()
    with state.page_frame():
        state.run_safely(page.run, f"the {page.title} page")
finally:
    state.sync_url(view, slug)
    st.sidebar.caption(f"model runs: {state.model_runs()}")
