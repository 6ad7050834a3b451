"""Taps on Plotly charts select the tapped point (phones, tablets, touch screens).

Why a tap selected the PREVIOUS tap's point: with `clickmode="event+select"` (what Streamlit's
`on_select` with `selection_mode="points"` sets), Plotly's click handler first selects the point in
`gd._hoverdata` (`selectOnClick` in plotly.js' cartesian/select.js) and only then recomputes the
hover for the click's position (`Fx.click`). A mouse has hovered the point before it clicks, so
the hover data is current. A finger has not: Plotly calls `preventDefault()` on `touchstart`, so the
browser sends no mouse events and nothing hovers before the tap. The selection is made from the
hover data the previous tap left behind (that tap's point), and when that point is already the
selected one, Plotly toggles it off (an empty selection: "every other tap does nothing").

The fix: before Plotly sees a one-finger `touchstart` on a chart's plot area, send that element a
`mousemove` at the finger's position, exactly what a mouse would have sent, so Plotly's own hover
code runs for the tapped point and the tap selects it. Installed once per browser page by a
JavaScript-only `st.components.v2` component (no iframe, no visible element).
"""

from __future__ import annotations

import streamlit as st

_JS = """
export default function () {
  if (window.__detrTapHover) return;
  window.__detrTapHover = true;
  document.addEventListener(
    "touchstart",
    (event) => {
      const target = event.target;
      if (event.touches.length !== 1 || !(target instanceof Element)) return;
      if (!target.classList.contains("nsewdrag") || !target.closest(".stPlotlyChart")) return;
      const touch = event.touches[0];
      target.dispatchEvent(
        new MouseEvent("mousemove", {
          bubbles: true, cancelable: true, view: window, clientX: touch.clientX, clientY: touch.clientY,
        })
      );
    },
    { capture: true, passive: true }
  );
}
"""

_component = None


def hover_on_tap() -> None:
    """Mount the fix (idempotent in the browser: one listener per page however often it is mounted)."""
    global _component
    if _component is None:
        _component = st.components.v2.component("detr_tap_hover", js=_JS)
    _component(key="detr_tap_hover")
