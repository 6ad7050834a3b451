"""Encoder attention: click a point of the photo and see where that feature cell looks (or what looks
at it), per layer and head, for up to four points side by side as in the DETR paper's figure."""

import streamlit as st
from PIL import Image

from detr_core.io.render import PAD, color_of, draw_cell, grid
from ui import caches, compute, downloads, figures, frame, sidebar, state, touch, view, viewport

PLOT_KEY = "plot_encoder"
DIRECTIONS = {"looks": "where this location looks", "looked_at": "what looks at this location"}
COLOUR_NAMES = ("blue", "orange", "yellow", "purple")
GRID = "all heads (grid)"
FOUR_KEY = "p_enc_four_direction"  # the four-point figure's own direction (default: the notebook's)
FIGURE_KEY = "_enc_figure"  # this session's clickable photo (state.kept)
GENERATION_KEY = "_enc_figure_generation"  # raised by a reset: the clickable photo becomes a new chart
FIGURE_PX = 1440  # the four-point figure's widest (Streamlit resizes and re-encodes any picture over 1460 px)


def parse_points(text: str) -> list[tuple[float, float]]:
    """'x,y;x,y' (original pixels) -> [(x, y), ...] (at most 4); ValueError when none is good."""
    points = []
    for part in text.split(";")[:64]:
        try:
            x, y = (float(v) for v in part.split(","))
        except ValueError:
            continue
        if x == x and y == y and abs(x) < 1e6 and abs(y) < 1e6:  # finite, sane
            points.append((x, y))
    if not points:
        raise ValueError(text)
    return points[:4]


def format_points(points: list[tuple[float, float]]) -> str:
    return ";".join(f"{x:g},{y:g}" for x, y in points)


def _layer(text: str) -> str:
    if text in ("mean", "rollout") or (text.isdigit() and 0 < int(text) <= 64):
        return text
    raise ValueError(text)


def _head(text: str) -> str:
    if text == "grid":
        return GRID
    if text == "mean" or (text.isdigit() and 0 < int(text) <= 64):
        return text
    raise ValueError(text)


# This page's URL fields (ui/view.py): the clicked points, the direction, the layer and the head.
view.field("pts", key="enc_points", parse=parse_points, fmt=format_points, page="encoder", per_image=True)
view.field("enc_dir", key="p_enc_direction", parse=view.choice(list(DIRECTIONS)), page="encoder")
view.field("enc_layer", key="p_enc_layer", parse=_layer, page="encoder")
view.field("enc_head", key="p_enc_head", parse=_head, fmt=lambda h: "grid" if h == GRID else h, page="encoder")
view.field("four_dir", key=FOUR_KEY, parse=view.choice(list(DIRECTIONS)), page="encoder")


def _points(view) -> list[tuple[float, float]]:
    geometry = view.geometry
    points = st.session_state.get("enc_points") or compute.reference_points(geometry, view.min_size)
    return [compute.clamp_point(geometry, x, y) for x, y in points]


@frame.safe_callback
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


@frame.safe_callback
def _reset_points() -> None:
    ss = st.session_state
    ss["enc_points"] = None
    ss[GENERATION_KEY] = ss.get(GENERATION_KEY, 0) + 1  # a new chart: the outline of the last click goes


def _clickable_figure(view, photo, height: int, color: str):
    """The photo with its clickable cells, kept per session while photo, size and colour are the same
    (`state.kept`), so every run re-sends the same figure: Streamlit takes a changed figure for a new
    chart, which the browser builds from scratch (outlining the four points in the figure cost about
    250 ms of every R50 click). The browser outlines the clicked cell itself (`figures.cell_grid_trace`);
    all four points are outlined in the paper's figure below."""
    generation = st.session_state.get(GENERATION_KEY, 0)
    tag = (view.image_hash, view.geometry, photo.size, height, color, generation)
    return state.kept(
        FIGURE_KEY, tag, lambda: figures.finished(figures.cells_figure(photo, view.geometry, height, color, generation))
    )


def _stem(view) -> str:
    return (view.image_label.rsplit(".", 1)[0] or "image").replace(" ", "_")


def render() -> None:
    st.header("Encoder attention")
    if state.require_analysis() is None:
        return
    # Outside the fragment: sent once per whole run, not again with every click (each mount is a message
    # and a component the browser re-renders). The fragment reads the width the reporter last gave.
    viewport.main_width()
    touch.hover_on_tap()  # the tap fix listens on the whole page, wherever it is mounted
    _explore()


@st.fragment
def _explore() -> None:
    """The interactive part of the page: a click, a layer, head or direction reruns only this (not the
    sidebar, not app.py); `sidebar.fragment_done` then writes the URL, as app.py does after a whole run."""
    try:
        frame.run_safely(_explore_body, "the Encoder attention page")
    finally:
        sidebar.fragment_done("encoder")


def _explore_body() -> None:
    view = state.current_view()
    ss = st.session_state
    analysis, geometry = view.analysis, view.geometry
    facts = compute.encoder_facts(analysis)
    main = viewport.known_width()

    state.keep_valid("p_enc_direction", list(DIRECTIONS), "looks")
    direction = st.radio(
        "Direction", list(DIRECTIONS), format_func=DIRECTIONS.get, key="p_enc_direction", horizontal=True
    )
    layers = compute.layer_options(analysis.enc_layers, ("mean", "rollout"))
    state.keep_valid("p_enc_layer", layers, str(analysis.enc_layers))
    ss.setdefault("p_enc_layer", str(analysis.enc_layers))
    layer = st.segmented_control(
        "Encoder layer",
        layers,
        key="p_enc_layer",
        required=True,
        help="1 = first layer; mean over layers; rollout chains the layers (heads averaged).",
    )
    layer = layer or str(analysis.enc_layers)
    heads = compute.head_options(analysis.nheads, grid=True)
    state.keep_valid("p_enc_head", heads, "mean")
    ss.setdefault("p_enc_head", "mean")
    # Buttons, as the layer's, not a selectbox: a head is one click, and the list a selectbox opens and
    # closes cost every head change 40-50 ms of browser work before the rerun was even asked for (A/B in
    # README, "Interaction latency").
    head = st.segmented_control(
        "Head",
        heads,
        key="p_enc_head",
        required=True,
        disabled=layer == "rollout",
        help="One head, the mean over heads, or every head at once.",
    )
    head = head or "mean"
    if layer == "rollout":
        head = "mean"
        refusal = caches.work_refusal("rollout", analysis, view.min_size, view.max_size)
        if refusal:  # too many feature cells for this server: the mean over layers instead
            st.info(refusal + " Showing the mean over layers.")
            layer = "mean"
    map_head = "mean" if head == GRID else head

    st.markdown(
        f"Feature map shape: `{list(facts.feature_shape)}` · tokens: {facts.h} x {facts.w} = "
        f"{facts.tokens} · self-attention reshaped: `{list(facts.view_shape)}` · stride: {facts.stride} px"
    )

    points = _points(view)
    results = [compute.cell_result(view.key, analysis, x, y, layer, map_head, direction) for x, y in points]
    current = results[-1]
    current_color = color_of(len(results) - 1)
    wide = geometry.orig_w > 1.6 * geometry.orig_h  # a panorama: the photo and its maps one above the other

    left, right = st.columns([1.25, 1]) if not wide else (st.container(), st.container())
    # The map first, then the photo beside it: what a click asks for reaches the browser before the
    # unchanged figure is re-sent (the columns' places are fixed when they are made).
    with right:
        st.markdown(
            f"Selected cell: **({current.row}, {current.col})** · token {current.token} · "
            f"pixel ({current.x:.0f}, {current.y:.0f}) · {DIRECTIONS[direction]} · layer {layer} · head {map_head}"
        )
        small = view.display_image(440 if not wide else 900)
        dg = view.display_geometry(small)
        _, own_share = compute.display_map(current, layer)
        heat = draw_cell(compute.encoder_picture(current, layer, dg), dg, current.row, current.col, color=current_color)
        overlay = compute.encoder_picture(current, layer, dg, small)
        overlay = draw_cell(overlay, dg, current.row, current.col, color=current_color)
        note = (
            f" · the cell's own share ({100 * own_share:.0f}% of the rollout, its identity term) is left out of "
            "the colour scale: it shows in the brightest colour"
            if own_share is not None
            else ""
        )
        pics = st.columns(2) if wide else (st.container(), st.container())
        caption = f"map of cell ({current.row}, {current.col}), the cell outlined{note}"
        pics[0].image(heat, caption=caption, width="stretch")
        pics[1].image(overlay, caption="as an overlay, the cell outlined", width="stretch")
        stem = f"{_stem(view)}_encoder_cell{current.row}-{current.col}_layer-{layer}_head-{map_head}_{direction}"
        exact = current.map
        downloads.buttons(
            [
                ("Map PNG", lambda: downloads.png(heat), f"{stem}_map.png", "image/png"),
                ("Overlay PNG", lambda: downloads.png(overlay), f"{stem}_overlay.png", "image/png"),
                ("Map .npy", lambda: downloads.npy(exact), f"{stem}.npy", "application/octet-stream"),
                ("Map CSV", lambda: downloads.csv(exact), f"{stem}.csv", "text/csv"),
            ],
            key="enc_current",
        )
        st.caption(
            "The .npy and CSV hold the exact map over the feature cells (rows x columns), not the display scale."
        )

    with left:
        photo = view.display_image()
        width = main if wide else viewport.column_width(main, 1.25 / 2.25)
        height = figures.fitted_height(geometry.orig_w, geometry.orig_h, width)
        fig = _clickable_figure(view, photo, height, figures.rgb(len(results) - 1))  # the newest point's colour
        st.plotly_chart(
            fig, key=PLOT_KEY, on_select=_on_click, selection_mode="points", theme=None,
            config={"displayModeBar": False},
        )  # fmt: skip
        st.caption(
            "Click (or tap) anywhere on the photo to add that feature cell: it is outlined at once, and the "
            "last four are kept (outlined in their colours in the paper's figure below)."
        )
        st.button("Reset to the notebook's reference points", on_click=_reset_points)
    if head == GRID and layer != "rollout":
        st.subheader(f"Every head of layer {layer} at cell ({current.row}, {current.col})")
        thumb = view.display_image(360)
        tg = view.display_geometry(thumb)
        per_row = 2 if wide else 4
        for start in range(0, analysis.nheads, per_row):
            cols = st.columns(per_row)
            for col, head_index in zip(cols, range(start, min(start + per_row, analysis.nheads)), strict=False):
                result = compute.cell_result(view.key, analysis, current.x, current.y, layer, str(head_index + 1),
                                             direction)  # fmt: skip
                pic = draw_cell(compute.encoder_picture(result, layer, tg), tg, result.row, result.col,
                                color=current_color)  # fmt: skip
                col.image(pic, caption=f"head {head_index + 1}", width="stretch")

    _four_points(view, points, layer, map_head, wide)


def _four_points(view, points, layer: str, map_head: str, wide: bool) -> None:
    """The paper's figure: the photo with the points, and each point's map, in the figure's own direction,
    as one picture (`detr_core.io.render.grid`; one image to send and show instead of five in columns): two maps, the
    photo twice their size, two maps in a row; on a phone the photo above the maps two a row; a
    panorama's photo above its maps one or two a row."""
    analysis, geometry = view.analysis, view.geometry
    st.subheader("Four points, as in the paper's figure")
    state.keep_valid(FOUR_KEY, list(DIRECTIONS), "looked_at")
    st.session_state.setdefault(FOUR_KEY, "looked_at")
    direction = st.radio(
        "Direction of this figure", list(DIRECTIONS), format_func=DIRECTIONS.get, key=FOUR_KEY, horizontal=True,
        help="The notebook's figure reads sattn[..., y, x]: what looks at each point. The view above has its own.",
    )  # fmt: skip
    results = [compute.cell_result(view.key, analysis, x, y, layer, map_head, direction) for x, y in points]
    default = " (the notebook's: `sattn[..., y, x]`)" if direction == "looked_at" else ""
    st.caption(f"{DIRECTIONS[direction]}{default} · layer {layer} · head {map_head} · each point's cell outlined")

    main = viewport.known_width()
    phone = main < viewport.STACKED_BELOW
    if wide:  # the photo on its own row, the maps one or two a row: each stays tall enough to read
        per_map_row = 1 if geometry.orig_w > 3 * geometry.orig_h else 2
        map_w = (FIGURE_PX - (per_map_row + 1) * PAD) // per_map_row
        photo_w = FIGURE_PX - 2 * PAD
    else:  # a phone: photo, then two maps a row; else two maps, the photo (two maps wide), two maps
        per_map_row = 2
        units = 2 if phone or len(results) < 2 else 6
        map_w = (min(FIGURE_PX, 2 * main) - (units + 1) * PAD) // units
        photo_w = 2 * map_w + PAD
    thumb, photo = view.display_image(_side(geometry, map_w)), _photo_at(view, photo_w)
    tg, pg = view.display_geometry(thumb), view.display_geometry(photo)
    marked = photo
    for i, result in enumerate(results):
        marked = draw_cell(marked, pg, result.row, result.col, color=color_of(i))
    tiles = []
    for i, result in enumerate(results):
        pic = draw_cell(compute.encoder_picture(result, layer, tg), tg, result.row, result.col, color=color_of(i))
        tiles.append((pic, f"{i + 1} ({COLOUR_NAMES[i]}): cell ({result.row}, {result.col})"))
    photo_tile = (marked, "the points' cells, outlined in their colours")
    if wide or phone or len(tiles) < 2:
        ordered = [photo_tile, *tiles]
        rows = [1, *(min(per_map_row, len(tiles) - i) for i in range(0, len(tiles), per_map_row))]
    else:
        ordered, rows = [*tiles[:2], photo_tile, *tiles[2:]], [len(tiles) + 1]
    figure = grid(ordered, rows)
    cells = " · ".join(caption for _, caption in tiles)
    st.image(figure, caption=f"{cells} · the photo: {photo_tile[1]}", width="stretch")
    stem = f"{_stem(view)}_encoder_four_points_layer-{layer}_head-{map_head}_{direction}"
    st.download_button(
        "Figure PNG", data=lambda: downloads.png(figure), file_name=f"{stem}.png",
        mime="image/png", on_click="ignore", key="enc_four_png",
    )  # fmt: skip


def _side(geometry, width: int) -> int:
    """The longest side of the photo shown `width` px wide (for `View.display_image`)."""
    return max(16, round(width * max(geometry.orig_w, geometry.orig_h) / geometry.orig_w))


def _photo_at(view, width: int):
    """The photo `width` px wide: reduced, or enlarged when it is smaller (a 256 px synthetic scene)."""
    photo = view.display_image(_side(view.geometry, width))
    if photo.width >= width:
        return photo
    size = (width, max(1, round(photo.height * width / photo.width)))
    return compute.picture(("enlarged photo", view.image_hash, size), lambda: photo.resize(size, Image.LANCZOS))


frame.page_main(render, "the Encoder attention page")
