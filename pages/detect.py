"""Detect: the photo with DETR's boxes, a table of detections, a class filter and downloads."""

import streamlit as st

from ui import compute, figures, frame, state, viewport
from ui import view as url_view
from ui.text import plain

FIGURE_KEY = "_detect_figure"  # this session's detections figure (state.kept)


def _class_names(text: str) -> list[str]:
    names = [n for n in text.split(",") if n][:200]
    if not names:
        raise ValueError(text)
    return names


# This page's URL field (ui/view.py): the classes the filter hides (none: every class is shown).
url_view.field("hide", key="detect_hidden", parse=_class_names, fmt=",".join, page="detect", per_image=True)


@frame.safe_callback
def _on_filter(key: str, classes: list[str]) -> None:
    ss = st.session_state
    ss["detect_hidden"] = [c for c in classes if c not in ss[key]] or None
    ss["detect_hidden_for"] = ss.get("_image_ident")


def render() -> None:
    st.header("Detect")
    st.markdown(
        "This tool shows where a DETR object detector looks. Here: its boxes on the image. "
        "Then click a pixel on **Encoder attention** to see what that spot attends to, or pick a detection "
        "on **Decoder attention** to see where its object query looked."
    )
    view = state.require_analysis()
    if view is None:
        return
    analysis = view.analysis
    detections = view.detections()
    st.caption(
        f"{plain(view.spec.title)} on {plain(view.image_label)} · threshold {view.threshold:.2f} · "
        f"inference: {analysis.forward_ms:.0f} ms on {analysis.device} (one forward pass, cached)"
    )

    classes = sorted({d.class_name for d in detections})
    shown = []
    if detections:
        key = f"p_detect_classes_{abs(hash((view.model_name, tuple(classes)))):x}"  # new class set: all shown
        hidden = st.session_state.get("detect_hidden") or []
        picked = st.multiselect(
            "Show classes",
            classes,
            default=None if key in st.session_state else [c for c in classes if c not in hidden],
            key=key,
            on_change=_on_filter,
            args=(key, classes),
            help="Filter the boxes, the table and the downloads by class.",
        )
        shown = [d for d in detections if d.class_name in picked]

    image = view.display_image()
    height = figures.fitted_height(view.geometry.orig_w, view.geometry.orig_h, viewport.main_width())
    fig = state.kept(  # the same figure while the same boxes are shown: the browser keeps its chart
        FIGURE_KEY, (view.key, tuple(d.query for d in shown), image.size, height),
        lambda: figures.finished(figures.detections_figure(image, view.geometry, shown, height=height)),
    )  # fmt: skip
    st.plotly_chart(fig, key="plot_detect", theme=None, config={"displayModeBar": False})

    if not detections:
        st.info(
            f"Nothing above the threshold {view.threshold:.2f} in this image: no query is confident enough. "
            "Lower the threshold in the sidebar to see weaker guesses."
        )
        return
    st.subheader(f"{len(shown)} of {len(detections)} detections at threshold {view.threshold:.2f}")
    st.dataframe(compute.detection_rows(shown), hide_index=True, width="stretch")

    stem = (view.image_label.rsplit(".", 1)[0] or "image").replace(" ", "_")
    meta = {
        "model": view.model_name, "image": view.image_label, "threshold": view.threshold,
        "image_size": [view.geometry.orig_w, view.geometry.orig_h], "box_format": "xyxy, original pixels",
    }  # fmt: skip
    cols = st.columns(3)
    full_image = view.image
    cols[0].download_button(
        "Annotated PNG", data=lambda: compute.annotated_png(full_image, shown),
        file_name=f"{stem}_detections.png", mime="image/png", on_click="ignore",
    )  # fmt: skip
    cols[1].download_button(
        "Detections JSON", data=compute.detections_json(shown, meta), file_name=f"{stem}_detections.json",
        mime="application/json", on_click="ignore",
    )  # fmt: skip
    cols[2].download_button(
        "Detections CSV", data=compute.detections_csv(shown), file_name=f"{stem}_detections.csv",
        mime="text/csv", on_click="ignore",
    )  # fmt: skip


frame.page_main(render, "the Detect page")
