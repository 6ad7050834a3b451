"""DETR Attention Explorer: the Streamlit entry point.

    streamlit run app.py

Draws the frame first (the title, and on a session's first run a progress line: the first visit to
a fresh server loads PyTorch and the model), then builds the sidebar every page shares (ui/sidebar.py:
model, image, threshold), runs the model once per new image and model (cached, ui/caches.py), runs
the page picked in the navigation (the scripts in pages/) and writes the view into the URL
(ui/view.py). Each page script ends with `ui.frame.page_main(render, ...)`, which renders it inside
this frame (see there why a page script may also be started without this file, and what it does then).
"""

import logging
import sys
import time

import streamlit as st

from ui import server_log, view

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


def main() -> None:
    """One run of the dashboard. A function, not module code: Streamlit keeps the last run's `__main__`
    module (sys.modules) until the next run, so a global would keep the last visitor's view (their photo
    and analysis) alive after their session was forgotten (issue #12)."""
    page = st.navigation(list(PAGES.values()))
    slug = next((s for s, p in PAGES.items() if p.title == page.title), "detect")
    linked_page = view.begin_session(list(PAGES))  # the session's first run: keep its link
    if linked_page and linked_page != slug:
        st.switch_page(PAGES[linked_page])

    title = st.empty()
    title.markdown("**DETR Attention Explorer**")
    starting = st.empty()
    if "_view" not in st.session_state:  # the session's first run: say what is happening
        starting.caption("Starting: loading PyTorch and the model (a few seconds on a freshly started server)...")
    notes_area = st.container()
    if "torch" not in sys.modules:  # a fresh server: let the title reach the browser before PyTorch's import
        time.sleep(0.3)  # (loading its libraries holds the interpreter for seconds, the messages too)

    from ui import caches, collector, frame, sidebar, state, text  # after the title: the first import loads PyTorch

    sidebar.start_host_checks()
    caches.start_decode_workers()  # once per server process: the workers that decode visitors' bytes
    state.persist_page_widgets()

    run_view = None
    try:
        run_view = sidebar.sidebar()
    except Exception as e:  # never a traceback in the page
        if isinstance(e, frame.DETRError):
            st.error(frame.visitor_text(str(e)))
        else:
            frame.log.exception("the sidebar failed")
            st.error(
                "Something went wrong while preparing the model or the image. The details were logged on the server."
            )
    starting.empty()
    if run_view is not None:
        model_title = text.plain(run_view.spec.title)
        title.markdown(f"**DETR Attention Explorer** · model: **{model_title}** (`{run_view.model_name}`)")

    try:
        with frame.page_frame():
            frame.run_safely(page.run, f"the {page.title} page")
    finally:
        params = sidebar.sync_url(slug)
        frame.show_notes(notes_area, frame.notes_view(params, run_view.image_hash if run_view else None))
        # Forward passes this session caused (an image and model another visitor already ran are cached).
        st.sidebar.caption(f"model runs (this session): {caches.session_model_runs()}")
        collector.after_imports()  # the first run in a server: long-lived objects out of the per-run collections


main()
