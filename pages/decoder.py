"""Decoder attention: where each detection's object query looks (cross-attention over the photo), as
in the official notebook, and a large view of one detection with raw attention or relevance."""

import streamlit as st

from detr_core.analysis import stats
from detr_core.io.render import draw_boxes
from ui import compute, figures, state, touch

PLOT_KEY = "plot_decoder"
PANELS = 12  # detections shown as panels at most (all are in the picker)
PER_ROW = 6
MODES = ("raw attention", "relevance (Chefer et al.)")


@state.safe_callback
def _on_pick_box() -> None:
    event = st.session_state.get(PLOT_KEY)
    if not event:
        return
    picked = [p for p in event["selection"]["points"] if p.get("customdata") is not None]
    if picked:
        custom = picked[0]["customdata"]
        st.session_state["dec_query"] = int(custom[0] if isinstance(custom, list) else custom)


@state.safe_callback
def _on_pick_list() -> None:
    st.session_state["dec_query"] = st.session_state["p_dec_pick"]


def render() -> None:
    st.header("Decoder attention")
    view = state.require_analysis()
    if view is None:
        return
    ss = st.session_state
    analysis, geometry = view.analysis, view.geometry
    detections = view.detections()
    if not detections:
        st.info(
            f"Nothing above the threshold {view.threshold:.2f} in this image, so there is no detection whose "
            "attention to show. Lower the threshold in the sidebar."
        )
        return
    by_query = {d.query: d for d in detections}

    st.caption(
        "Each detection comes from one object query. Its cross-attention (last decoder layer, mean over heads) "
        "shows which image regions it read: usually the object's extremities."
    )
    thumb = view.display_image(260)
    thumb_geometry = view.display_geometry(thumb)
    shown = detections[:PANELS]
    for start in range(0, len(shown), PER_ROW):
        cols = st.columns(PER_ROW)
        for col, det in zip(cols, shown[start : start + PER_ROW], strict=False):
            cross_map = compute.decoder_result(analysis, det.query, str(analysis.dec_layers), "mean")
            title = f"query id: {det.query} · {det.class_name}"
            col.image(compute.heatmap_image(cross_map, thumb_geometry), caption=title, width="stretch")
            scaled = compute.scale_detection(det, thumb.width / geometry.orig_w)
            col.image(draw_boxes(thumb, [scaled]), caption=f"{det.class_name}: {det.score:.2f}", width="stretch")
    if len(detections) > PANELS:
        st.caption(f"{len(detections) - PANELS} more detections: pick them below.")

    st.divider()
    query = ss.get("dec_query")
    if query not in by_query:
        query = detections[0].query
        ss["dec_query"] = query
    ss["p_dec_pick"] = query
    left, right = st.columns([1, 1])
    with left:
        st.selectbox(
            "Detection", list(by_query), key="p_dec_pick", on_change=_on_pick_list,
            format_func=lambda q: f"query {q}: {by_query[q].class_name} ({by_query[q].score:.2f})",
        )  # fmt: skip
        fig = figures.detections_figure(
            view.display_image(), geometry, detections, clickable=True, highlight=query, height=420
        )
        touch.hover_on_tap()
        st.plotly_chart(
            fig,
            key=PLOT_KEY,
            on_select=_on_pick_box,
            selection_mode="points",
            theme=None,
            config={"displayModeBar": False},
        )
        st.caption("Click a box's centre marker, or pick from the list.")
    det = by_query[query]
    with right:
        c1, c2, c3 = st.columns([1.3, 1, 1])
        state.keep_valid("p_dec_mode", list(MODES), MODES[0])
        mode = c1.radio("Show", MODES, key="p_dec_mode")
        layers = compute.layer_options(analysis.dec_layers, ("mean",))
        state.keep_valid("p_dec_layer", layers, str(analysis.dec_layers))
        ss.setdefault("p_dec_layer", str(analysis.dec_layers))
        refusal = state.relevance_refusal(analysis) if mode == MODES[1] else None
        if refusal:
            st.info(refusal)
        relevance = mode == MODES[1] and refusal is None
        layer = c2.selectbox("Decoder layer", layers, key="p_dec_layer", disabled=relevance)
        heads = compute.head_options(analysis.nheads)
        state.keep_valid("p_dec_head", heads, "mean")
        head = c3.selectbox("Head", heads, key="p_dec_head", disabled=relevance)
        if relevance:
            with st.spinner(f"Computing relevance for query {query} (a forward and a backward pass)..."):
                amap = state.relevance_map(view.key, query, view.image)
            title = f"relevance of query {query} ({det.class_name})"
        else:
            amap = compute.decoder_map_tensor(analysis, query, layer, head)
            title = f"cross-attention of query {query} ({det.class_name}), layer {layer}, head {head}"
        st.markdown(f"**Selected detection: query {query} · {det.class_name} · score {det.score:.3f}**")
        small = view.display_image(520)
        small_geometry = view.display_geometry(small)
        scaled = compute.scale_detection(det, small.width / geometry.orig_w)
        st.image(
            draw_boxes(compute.overlay_image(small, amap, small_geometry), [scaled]), caption=title, width="stretch"
        )
        box_stats = stats.map_stats(amap, geometry, det.box)
        m1, m2, m3 = st.columns(3)
        m1.metric(
            "inside its box", f"{100 * box_stats.share_in_box:.1f}%", help="Share of the map's mass inside the box."
        )
        m2.metric("chance", f"{100 * box_stats.chance:.1f}%", help="The box's share of the image (a uniform map).")
        m3.metric("entropy", f"{box_stats.entropy:.3f}", help="Normalized: 1 = spread evenly, 0 = one cell.")
        x0, y0, x1, y1 = det.box
        st.caption(f"{box_stats.ratio:.1f}x chance · box ({x0:.0f}, {y0:.0f}) - ({x1:.0f}, {y1:.0f})")


state.page_main(render, "the Decoder attention page")
