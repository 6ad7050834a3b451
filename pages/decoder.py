"""Decoder attention: where each detection's object query looks (cross-attention over the photo), as
in the official notebook, and a large view of one detection with raw attention or relevance."""

import streamlit as st

from detr_core.analysis import stats
from detr_core.io.render import box_label, draw_boxes, grid
from ui import caches, compute, downloads, figures, frame, sidebar, state, touch, view, viewport

PLOT_KEY = "plot_decoder"
FIGURE_KEY = "_dec_figure"  # this session's detections figure (state.kept)
PANELS = 12  # detections shown as panels at most (all are in the picker)
PER_ROW = 6
MODES = ("raw attention", "relevance (Chefer et al.)")
MODE_NAMES = {"raw": MODES[0], "relevance": MODES[1]}  # in the URL


def _layer(text: str) -> str:
    if text == "mean" or (text.isdigit() and 0 < int(text) <= 64):
        return text
    raise ValueError(text)


# This page's URL fields (ui/view.py): the picked query, raw or relevance, the layer and the head.
view.field("q", key="dec_query", parse=view.bounded_int(0, 100_000), page="decoder", per_image=True)
view.field("dec_mode", key="p_dec_mode", parse=view.choice(MODE_NAMES), page="decoder",
           fmt=lambda m: next(k for k, v in MODE_NAMES.items() if v == m))  # fmt: skip
view.field("dec_layer", key="p_dec_layer", parse=_layer, page="decoder")
view.field("dec_head", key="p_dec_head", parse=_layer, page="decoder")


@frame.safe_callback
def _on_pick_box() -> None:
    event = st.session_state.get(PLOT_KEY)
    if not event:
        return
    picked = [p for p in event["selection"]["points"] if p.get("customdata") is not None]
    if picked:
        custom = picked[0]["customdata"]
        st.session_state["dec_query"] = int(custom[0] if isinstance(custom, list) else custom)


@frame.safe_callback
def _on_pick_list() -> None:
    st.session_state["dec_query"] = st.session_state["p_dec_pick"]


def render() -> None:
    st.header("Decoder attention")
    view = state.require_analysis()
    if view is None:
        return
    analysis = view.analysis
    detections = view.detections()
    if not detections:
        st.info(
            f"Nothing above the threshold {view.threshold:.2f} in this image, so there is no detection whose "
            "attention to show. Lower the threshold in the sidebar."
        )
        return
    main = viewport.main_width()  # mounts the width reporter (the view below reads what it reported)
    touch.hover_on_tap()  # outside the fragment: sent once per whole run, not with every pick

    st.caption(
        "Each detection comes from one object query. Its cross-attention (last decoder layer, mean over heads) "
        "shows which image regions it read: usually the object's extremities."
    )
    thumb = view.display_image(260)
    thumb_geometry = view.display_geometry(thumb)
    last = str(analysis.dec_layers)
    size = thumb.size
    shown = detections[:PANELS]
    per_row = PER_ROW if main >= viewport.STACKED_BELOW else 2  # a phone: two a row
    figure = compute.picture(
        ("decoder panels", view.key, tuple(d.query for d in shown), size, per_row),
        lambda: _panels(view, shown, thumb, thumb_geometry, last, per_row),
    )
    st.image(
        figure,
        caption="Each detection's query: its cross-attention, its box under it · "
        + " · ".join(f"query id: {d.query} · {d.class_name} ({d.score:.2f})" for d in shown),
        width="content",  # its own size (a few detections are not blown up), at most the page's width
    )
    if len(detections) > PANELS:
        st.caption(f"{len(detections) - PANELS} more detections: pick them below.")
    stem = (view.image_label.rsplit(".", 1)[0] or "image").replace(" ", "_")
    st.download_button(
        "Row of maps PNG", data=lambda: downloads.png(figure), file_name=f"{stem}_decoder_maps.png",
        mime="image/png", on_click="ignore", key="dec_row_png",
    )  # fmt: skip
    _all_relevance(view, detections, thumb, thumb_geometry, stem)

    st.divider()
    _explore()  # reads this run's view: the sidebar built it


@st.fragment
def _explore() -> None:
    """The picked detection's view: a pick, mode, layer or head reruns only this (not the sidebar, not
    app.py, not the panels above); `sidebar.fragment_done` then writes the URL, as app.py does after a whole run."""
    try:
        frame.run_safely(_explore_body, "the Decoder attention page")
    finally:
        sidebar.fragment_done("decoder")


def _explore_body() -> None:
    ss = st.session_state
    view = state.current_view()
    analysis, geometry = view.analysis, view.geometry
    detections = view.detections()
    by_query = {d.query: d for d in detections}
    main = viewport.known_width()
    stem = (view.image_label.rsplit(".", 1)[0] or "image").replace(" ", "_")
    query = ss.get("dec_query")
    if query not in by_query:
        query = detections[0].query
        ss["dec_query"] = query
    ss["p_dec_pick"] = query
    left, right = st.columns([1, 1])
    # The view first, then the picker beside it: what a pick asks for reaches the browser before the
    # unchanged figure is re-sent (the columns' places are fixed when they are made).
    det = by_query[query]
    with right:
        c1, c2, c3 = st.columns([1.3, 1, 1])
        state.keep_valid("p_dec_mode", list(MODES), MODES[0])
        mode = c1.radio("Show", MODES, key="p_dec_mode")
        layers = compute.layer_options(analysis.dec_layers, ("mean",))
        state.keep_valid("p_dec_layer", layers, str(analysis.dec_layers))
        ss.setdefault("p_dec_layer", str(analysis.dec_layers))
        refusal = caches.relevance_refusal(analysis, view.min_size, view.max_size) if mode == MODES[1] else None
        if refusal:
            st.info(refusal)
        relevance = mode == MODES[1] and refusal is None
        layer = c2.selectbox("Decoder layer", layers, key="p_dec_layer", disabled=relevance)
        heads = compute.head_options(analysis.nheads)
        state.keep_valid("p_dec_head", heads, "mean")
        head = c3.selectbox("Head", heads, key="p_dec_head", disabled=relevance)
        if relevance:
            with st.spinner(f"Computing relevance for query {query} (a forward and a backward pass)..."):
                amap = caches.relevance_map(view.key, query, view.image)
            title = f"relevance of query {query} ({det.class_name})"
        else:
            amap = compute.query_map(view.key, analysis, query, layer, head)
            title = f"cross-attention of query {query} ({det.class_name}), layer {layer}, head {head}"
        st.markdown(f"**Selected detection: query {query} · {det.class_name} · score {det.score:.3f}**")
        small = view.display_image(520)
        small_geometry = view.display_geometry(small)
        what = ("relevance",) if relevance else ("cross-attention", layer, head)
        big = compute.picture(
            ("decoder overlay", view.key, query, *what, small.size),
            lambda: draw_boxes(
                compute.overlay_image(small, amap, small_geometry), [det], scale=small.width / geometry.orig_w
            ),
        )
        st.image(big, caption=title, width="stretch")
        what = "relevance" if relevance else f"cross-attention_layer-{layer}_head-{head}"
        name = f"{stem}_query{query}_{what}"
        downloads.buttons(
            [
                ("Overlay PNG", lambda: downloads.png(big), f"{name}.png", "image/png"),
                ("Map .npy", lambda: downloads.npy(amap), f"{name}.npy", "application/octet-stream"),
                ("Map CSV", lambda: downloads.csv(amap), f"{name}.csv", "text/csv"),
            ],
            key="dec_current",
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

    with left:
        st.selectbox(
            "Detection", list(by_query), key="p_dec_pick", on_change=_on_pick_list,
            format_func=lambda q: f"query {q}: {by_query[q].class_name} ({by_query[q].score:.2f})",
        )  # fmt: skip
        height = figures.fitted_height(geometry.orig_w, geometry.orig_h, viewport.column_width(main, 0.5))
        fig = _pick_figure(view, detections, height)  # the same in every run: a changed one is rebuilt anew
        st.plotly_chart(
            fig,
            key=PLOT_KEY,
            on_select=_on_pick_box,
            selection_mode="points",
            theme=None,
            config={"displayModeBar": False},
        )
        st.caption(
            "Click a box (where boxes overlap: the smallest there) or its centre marker, or pick from the list: "
            "the view beside shows the picked detection."
        )


def _panels(view, shown, thumb, thumb_geometry, last: str, per_row: int):
    """The panels as one picture (`detr_core.io.render.grid`; one image to send and show instead of two
    per detection): `per_row` detections a row, each query's map (last layer, mean over heads) above
    the photo with its box."""
    maps, boxes = [], []
    for det in shown:
        heat = compute.picture(
            ("decoder heat", view.key, det.query, last, "mean", thumb.size),
            lambda det=det: compute.heatmap_image(
                compute.query_map(view.key, view.analysis, det.query, last, "mean"), thumb_geometry
            ),
        )
        maps.append((heat, f"query id: {det.query} · {det.class_name}"))
        boxes.append((_boxed(view, thumb, det), box_label(det)))
    tiles, rows = [], []
    for start in range(0, len(shown), per_row):
        tiles += maps[start : start + per_row] + boxes[start : start + per_row]
        rows += [len(maps[start : start + per_row])] * 2
    return grid(tiles, rows)


def _boxed(view, thumb, det):
    """The photo at `thumb`'s size with `det`'s box (kept: the panels show it in every full run)."""
    return compute.picture(
        ("decoder boxed", view.key, det.query, thumb.size),
        lambda: draw_boxes(thumb, [det], scale=thumb.width / view.geometry.orig_w),
    )


def _pick_figure(view, detections, height: int):
    """The photo with the detections' boxes, clickable inside and at their centres, kept per session while view,
    detections and size are the same (`state.kept`; building it took 170 ms for five boxes over a 900 px
    photo) and the same whatever is picked: Streamlit takes a changed figure for a new chart, which the
    browser builds from scratch (outlining the picked box cost 600-700 ms of every R50 pick). The view
    beside it shows the picked detection."""
    photo = view.display_image()
    tag = (view.key, tuple(d.query for d in detections), photo.size, height)
    return state.kept(
        FIGURE_KEY, tag,
        lambda: figures.finished(
            figures.detections_figure(photo, view.geometry, detections, clickable=True, height=height)
        ),
    )  # fmt: skip


ALL_KEY = "dec_all_relevance_for"  # the view key whose "all detections" relevance was asked for


@frame.safe_callback
def _ask_all_relevance() -> None:
    view = state.current_view()
    if view is not None and view.analysis is not None:
        st.session_state[ALL_KEY] = view.key


def _all_relevance(view, detections, thumb, thumb_geometry, stem: str) -> None:
    """Chefer et al.'s relevance for every detection side by side: computed on demand (a button), once per
    image (each map cached per query by `caches.relevance_map`), with progress."""
    analysis = view.analysis
    with st.expander(
        "Relevance for every detection (Chefer et al.)", expanded=st.session_state.get(ALL_KEY) == view.key
    ):
        refusal = caches.relevance_refusal(analysis, view.min_size, view.max_size)
        if refusal:
            st.info(refusal)
            return
        if st.session_state.get(ALL_KEY) != view.key:
            st.caption(
                f"One forward and backward pass per detection ({len(detections)} here), computed once for this image."
            )
            st.button("Compute relevance for every detection", on_click=_ask_all_relevance, key="dec_all_button")
            return
        bar = st.progress(0.0, text="Relevance...")
        maps = []
        for i, det in enumerate(detections):
            bar.progress(i / len(detections), text=f"Relevance of query {det.query} ({i + 1} of {len(detections)})...")
            maps.append(caches.relevance_map(view.key, det.query, view.image))
        bar.empty()
        tiles = []
        for start in range(0, len(detections), PER_ROW):
            cols = st.columns(PER_ROW)
            for col, det, amap in zip(
                cols, detections[start : start + PER_ROW], maps[start : start + PER_ROW], strict=False
            ):
                pic = compute.picture(
                    ("relevance overlay", view.key, det.query, thumb.size),
                    lambda det=det, amap=amap: draw_boxes(
                        compute.overlay_image(thumb, amap, thumb_geometry),
                        [det],
                        scale=thumb.width / view.geometry.orig_w,
                    ),
                )
                caption = f"relevance · query {det.query} · {det.class_name}"
                col.image(pic, caption=caption, width="stretch")
                tiles.append((pic, caption))
        st.download_button(
            "Relevance maps PNG", data=lambda: downloads.grid_png(tiles, min(len(tiles), PER_ROW)),
            file_name=f"{stem}_relevance_all.png", mime="image/png", on_click="ignore", key="dec_all_png",
        )  # fmt: skip


frame.page_main(render, "the Decoder attention page")
