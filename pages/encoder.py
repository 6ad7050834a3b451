"""Encoder attention: click a point of the photo and see where that feature cell looks (or what looks
at it), per layer and head, for up to four points side by side as in the DETR paper's figure."""

import streamlit as st

from detr_core.io.render import color_of, draw_cell
from ui import compute, figures, state, touch

PLOT_KEY = "plot_encoder"
DIRECTIONS = {"looks": "where this location looks", "looked_at": "what looks at this location"}
COLOUR_NAMES = ("blue", "orange", "yellow", "purple")
GRID = "all heads (grid)"


def _points(view) -> list[tuple[float, float]]:
    geometry = view.geometry
    points = st.session_state.get("enc_points") or compute.reference_points(geometry, view.min_size)
    return [compute.clamp_point(geometry, x, y) for x, y in points]


@state.safe_callback
def _on_click() -> None:
    """A click on the photo: add the clicked cell (its centre, original pixels) as the newest point."""
    ss = st.session_state
    event = ss.get(PLOT_KEY)
    view = state.current_view()
    if not event or view is None or view.analysis is None:
        return
    picked = [p for p in event["selection"]["points"] if p.get("customdata") is not None]
    if not picked:
        return
    row, col = (int(v) for v in picked[0]["customdata"][:2])
    geometry = view.geometry
    if not (0 <= row < geometry.feat_h and 0 <= col < geometry.feat_w):
        return
    x, y = geometry.cell_center(row, col)
    points = [p for p in _points(view) if geometry.pixel_to_cell(*p) != (row, col)]
    ss["enc_points"] = [*points, (round(x, 1), round(y, 1))][-4:]
    ss["enc_points_for"] = (view.model_name, view.image_hash)


@state.safe_callback
def _reset_points() -> None:
    st.session_state["enc_points"] = None


def render() -> None:
    st.header("Encoder attention")
    view = state.require_analysis()
    if view is None:
        return
    ss = st.session_state
    analysis, geometry = view.analysis, view.geometry
    facts = compute.encoder_facts(analysis)

    c1, c2, c3 = st.columns([1.2, 1.6, 1])
    state.keep_valid("p_enc_direction", list(DIRECTIONS), "looks")
    direction = c1.radio("Direction", list(DIRECTIONS), format_func=DIRECTIONS.get, key="p_enc_direction")
    layers = compute.layer_options(analysis.enc_layers, ("mean", "rollout"))
    state.keep_valid("p_enc_layer", layers, str(analysis.enc_layers))
    ss.setdefault("p_enc_layer", str(analysis.enc_layers))
    layer = c2.select_slider(
        "Encoder layer",
        layers,
        key="p_enc_layer",
        help="1 = first layer; mean over layers; rollout chains the layers (heads averaged).",
    )
    heads = compute.head_options(analysis.nheads, grid=True)
    state.keep_valid("p_enc_head", heads, "mean")
    head = c3.selectbox(
        "Head",
        heads,
        key="p_enc_head",
        disabled=layer == "rollout",
        help="One head, the mean over heads, or every head at once.",
    )
    if layer == "rollout":
        head = "mean"
    map_head = "mean" if head == GRID else head

    st.markdown(
        f"Feature map shape: `{list(facts.feature_shape)}` · tokens: {facts.h} x {facts.w} = "
        f"{facts.tokens} · self-attention reshaped: `{list(facts.view_shape)}` · stride: {facts.stride} px"
    )

    points = _points(view)
    results = [compute.encoder_result(analysis, x, y, layer, map_head, direction) for x, y in points]
    current = results[-1]

    left, right = st.columns([1.25, 1])
    with left:
        photo = view.display_image()
        marked = [(result.row, result.col, str(i + 1)) for i, result in enumerate(results)]
        fig = figures.clickable_cells_figure(photo, geometry, marked, height=460)
        touch.hover_on_tap()
        st.plotly_chart(
            fig, key=PLOT_KEY, on_select=_on_click, selection_mode="points", theme=None,
            config={"displayModeBar": False},
        )  # fmt: skip
        st.caption("Click anywhere on the photo to add that feature cell (the last four clicks are kept).")
        st.button("Reset to the notebook's reference points", on_click=_reset_points)
    with right:
        st.markdown(
            f"Selected cell: **({current.row}, {current.col})** · token {current.token} · "
            f"pixel ({current.x:.0f}, {current.y:.0f}) · {DIRECTIONS[direction]} · layer {layer} · head {map_head}"
        )
        small = view.display_image(440)
        dg = view.display_geometry(small)
        st.image(
            compute.heatmap_image(current.map, dg),
            caption=f"map of cell ({current.row}, {current.col})",
            width="stretch",
        )
        overlay = compute.overlay_image(small, current.map, dg)
        overlay = draw_cell(overlay, dg, current.row, current.col, color=color_of(len(results) - 1))
        st.image(overlay, caption="as an overlay, the cell outlined", width="stretch")

    if head == GRID and layer != "rollout":
        st.subheader(f"Every head of layer {layer} at cell ({current.row}, {current.col})")
        thumb = view.display_image(240)
        tg = view.display_geometry(thumb)
        per_row = 4
        for start in range(0, analysis.nheads, per_row):
            cols = st.columns(per_row)
            for col, head_index in zip(cols, range(start, min(start + per_row, analysis.nheads)), strict=False):
                result = compute.encoder_result(analysis, current.x, current.y, layer, str(head_index + 1), direction)
                col.image(compute.heatmap_image(result.map, tg), caption=f"head {head_index + 1}", width="stretch")

    st.subheader("Four points, as in the paper's figure")
    thumb = view.display_image(320)
    tg = view.display_geometry(thumb)
    marked_photo = thumb
    for i, result in enumerate(results):
        marked_photo = draw_cell(marked_photo, tg, result.row, result.col, color=color_of(i))
    slots = st.columns([1, 1, 2, 1, 1]) if len(results) > 1 else st.columns([2, 1])
    order = [0, 1, None, 2, 3] if len(results) > 1 else [None, 0]
    for col, idx in zip(slots, order, strict=True):
        if idx is None:
            col.image(marked_photo, caption="the points' cells, outlined in their colours", width="stretch")
        elif idx < len(results):
            result = results[idx]
            col.image(
                compute.heatmap_image(result.map, tg),
                width="stretch",
                caption=f"{idx + 1} ({COLOUR_NAMES[idx]}): cell ({result.row}, {result.col})",
            )


state.page_main(render, "the Encoder attention page")
