"""How wide the page's main column is in this session's browser, so photo figures can be given the
height that fits their image's aspect ratio (Plotly needs a height in pixels; the server cannot know
the width of a phone or a 1440 px window).

A JavaScript-only `st.components.v2` component measures the main block (on mount and, debounced,
on resize) and reports it rounded to 20 px, only when it differs from what the server already
knows (`data`), so a page switch costs no extra run. Until the browser has reported (the first
run, AppTest), `main_width` returns its `default`.
"""

from __future__ import annotations

import streamlit as st

KEY = "detr_viewport"
WIDTH_KEY = "_viewport_width"  # the last reported width, kept while pages without the component run
STACKED_BELOW = 640  # px of main width under which Streamlit's columns stack (a phone)

_JS = """
export default function ({ data, setStateValue }) {
  const measure = () => {
    const main = document.querySelector('[data-testid="stMainBlockContainer"]');
    if (!main) return Math.round(window.innerWidth / 20) * 20;
    const style = window.getComputedStyle(main);
    const inner = main.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    return Math.round(inner / 20) * 20;
  };
  let known = data;
  const report = () => {
    const width = measure();
    if (width > 0 && width !== known) {
      known = width;
      setStateValue("width", width);
    }
  };
  report();
  let timer = null;
  const onResize = () => {
    clearTimeout(timer);
    timer = setTimeout(report, 250);
  };
  window.addEventListener("resize", onResize);
  return () => {
    clearTimeout(timer);
    window.removeEventListener("resize", onResize);
  };
}
"""

_component = None


def _on_width() -> None:
    reported = st.session_state.get(KEY)
    width = reported.get("width") if reported is not None else None
    if isinstance(width, (int, float)) and 100 <= width <= 10000:
        st.session_state[WIDTH_KEY] = int(width)


def main_width(default: int = 1000) -> int:
    """The main column's width in px as the browser last reported it (mounts the reporter)."""
    global _component
    if _component is None:
        _component = st.components.v2.component("detr_viewport", js=_JS)
    known = st.session_state.get(WIDTH_KEY)
    _component(key=KEY, data=known, on_width_change=_on_width)
    return int(known or default)


def known_width(default: int = 1000) -> int:
    """The width `main_width` last returned, without mounting the reporter (for a fragment drawn inside
    a run that mounted it: a second mount in one run is a duplicate key)."""
    return int(st.session_state.get(WIDTH_KEY) or default)


def column_width(main: int, share: float) -> int:
    """The width of a column holding `share` of the main width (the whole width once columns stack)."""
    return main if main < STACKED_BELOW else int(main * share)
