"""Plotly figure builders. Every photo figure uses ORIGINAL-image pixel coordinates (x right, y down),
whatever size the photo is displayed at.

Clicking a feature cell: Streamlit's Plotly selection returns no points for image and heatmap
traces (streamlit/streamlit#8760), so `cell_grid_trace` lays transparent markers over the photo,
one or more per feature cell, each with customdata = (row, col), and the figure looks for the
nearest marker at any distance (`hoverdistance=-1`). The markers are placed so that the nearest
marker to ANY point of the image belongs to the cell that contains the point (see `_axis_markers`),
for every stride and image size.

A figure a page shows stays byte-identical while the visitor clicks in it: Streamlit derives a chart's
identity from its whole spec, so a changed figure (one more outline) is a new chart that the browser
builds from scratch, which measured 250-700 ms of each click on the 2-core machine (an R50 photo). What
was clicked is shown by Plotly's own selection in the browser (`cell_grid_trace`) and by the views
beside the figure, not by editing the figure.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from detr_core.analysis.stats import DetectionStats
from detr_core.io.image import Geometry
from detr_core.io.postprocess import Detection
from detr_core.io.render import box_label, color_of

from .text import plotly_text

PHOTO_HEIGHT = 520
BOX_WIDTH = 2  # px, a detection's box in a figure
LABEL_PX = 12  # px, its label's text
MIN_HEIGHT, MAX_HEIGHT = 40, 760  # px: a tall photo does not fill three screens


def fitted_height(orig_w: int, orig_h: int, width: int) -> int:
    """The height (px) at which a photo shown `width` px wide fills its figure: the figure follows the
    image's aspect ratio (no wide empty bands around a panorama), within [MIN_HEIGHT, MAX_HEIGHT]."""
    return int(min(max(round(width * orig_h / max(orig_w, 1)), MIN_HEIGHT), MAX_HEIGHT))


def _data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def rgb(index: int, alpha: float | None = None) -> str:
    r, g, b = color_of(index)
    return f"rgb({r},{g},{b})" if alpha is None else f"rgba({r},{g},{b},{alpha})"


def photo_figure(image: Image.Image, orig_w: int, orig_h: int, height: int = PHOTO_HEIGHT) -> go.Figure:
    """A figure showing `image` (any display size) over the axes [0, orig_w] x [0, orig_h], y down."""
    fig = go.Figure()
    fig.add_layout_image(
        source=_data_uri(image), xref="x", yref="y", x=0, y=0, sizex=orig_w, sizey=orig_h,
        xanchor="left", yanchor="top", sizing="stretch", layer="below",
    )  # fmt: skip
    fig.update_xaxes(range=[0, orig_w], visible=False, constrain="domain", fixedrange=True)
    fig.update_yaxes(
        range=[orig_h, 0], visible=False, scaleanchor="x", scaleratio=1, constrain="domain", fixedrange=True
    )
    fig.update_layout(
        height=height, margin=dict(l=0, r=0, t=0, b=0), hovermode="closest",
        showlegend=False, plot_bgcolor="rgba(0,0,0,0)", paper_bgcolor="rgba(0,0,0,0)",
    )  # fmt: skip
    return fig


def _axis_markers(n_cells: int, stride: int, input_len: int) -> list[tuple[float, int]]:
    """Marker positions along one axis (input pixels) and the cell each belongs to.

    The nearest marker to a position must be in the position's cell, i.e. the midpoints between
    neighbouring markers of different cells must be the cell borders k * stride. Full cells get a
    marker at their centre (neighbouring centres' midpoint is the border between them). The last
    cell is cut by the image border when input_len is not a multiple of the stride; then the two
    centres around its left border are not symmetric, so a pair of markers at border -/+ d is
    added (d = a quarter of the cut cell's width): their midpoint is exactly the border.
    """
    out = []
    for k in range(n_cells):
        lo, hi = k * stride, min((k + 1) * stride, input_len)
        out.append(((lo + hi) / 2, k))
    last = input_len - (n_cells - 1) * stride
    if n_cells >= 2 and last < stride:
        border, d = (n_cells - 1) * stride, last / 4
        out += [(border - d, n_cells - 2), (border + d, n_cells - 1)]
    return sorted(out)


def cell_grid_trace(geometry: Geometry, height: int, color: str) -> go.Scatter:
    """Transparent, clickable markers over the photo: customdata = (row, col) of a feature cell. The one
    clicked (Plotly's selection, in the browser at once) shows as a square outline in `color`, about one
    cell wide in a figure `height` px high."""
    g = geometry
    xs = [(p * g.orig_w / g.input_w, c) for p, c in _axis_markers(g.feat_w, g.stride, g.input_w)]
    ys = [(p * g.orig_h / g.input_h, r) for p, r in _axis_markers(g.feat_h, g.stride, g.input_h)]
    x, y, custom = [], [], []
    for py, row in ys:
        for px, col in xs:
            x.append(px)
            y.append(py)
            custom.append((row, col))
    cell_px = min(max(height * g.stride / g.input_h, 6), 60)  # a cell's side on screen (the figure fills its height)
    return go.Scatter(
        x=x, y=y, customdata=custom, mode="markers", name="cells",
        marker=dict(size=cell_px, symbol="square-open", color=color, opacity=0, line=dict(width=3)),
        selected=dict(marker=dict(opacity=1)), unselected=dict(marker=dict(opacity=0)),
        hovertemplate="feature cell (row %{customdata[0]}, col %{customdata[1]})<extra></extra>",
    )  # fmt: skip


def cells_figure(image: Image.Image, geometry: Geometry, height: int = PHOTO_HEIGHT, color: str = "white",
                 generation: int = 0) -> go.Figure:  # fmt: skip
    """The photo with a clickable feature-cell grid; the clicked cell is outlined in `color` by the browser.
    A new `generation` makes a new chart (the browser forgets what was clicked: after a reset)."""
    fig = photo_figure(image, geometry.orig_w, geometry.orig_h, height)
    fig.add_trace(cell_grid_trace(geometry, height, color))
    fig.update_layout(hoverdistance=-1, clickmode="event+select", meta=dict(generation=generation))
    return fig


def innermost_regions(
    boxes: Sequence[tuple[float, float, float, float]],
) -> list[tuple[float, float, float, float, int]]:
    """The area covered by `boxes` (x0, y0, x1, y1) as disjoint rectangles (x0, y0, x1, y1, k), each owned by
    the innermost box there: the smallest by area (then the first) among the boxes containing it.

    Plotly shows one hover per point: over boxes that overlap, one trace per box (filled, its hover on the
    fill) let the smallest win, but the browser's cost is per trace (a switch to the R50 Detect page with
    100 boxes spent 780 ms in Plotly, 230 ms of it walking its attribute schema once per trace); one bar
    trace of these rectangles answers the same. Rows between consecutive box edges, runs of one owner along
    a row, runs alike in consecutive rows merged: 100 random boxes make 250-290 (25 ms).
    """
    if not boxes:
        return []
    b = np.asarray(boxes, dtype=np.float64)  # [N, 4]
    order = np.lexsort((np.arange(len(b)), (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))  # innermost first
    rank = np.empty(len(b), dtype=np.int64)
    rank[order] = np.arange(len(b))
    xs, ys = np.unique(b[:, [0, 2]]), np.unique(b[:, [1, 3]])
    if len(xs) < 2 or len(ys) < 2:
        return []  # no box has an area
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2  # a point inside each column / row of the grid
    inside_x = (b[:, 0:1] <= cx) & (cx <= b[:, 2:3])  # [N, columns]
    out, open_runs = [], {}  # (x0, x1, owner) -> the y where the run began
    for i, y in enumerate(cy):
        rows = np.nonzero((b[:, 1] <= y) & (y <= b[:, 3]))[0]
        ranked = np.where(inside_x[rows], rank[rows, None], len(b))  # [boxes in this row, columns]
        best = ranked.min(axis=0, initial=len(b))  # len(b): no box in this cell
        owner = np.where(best < len(b), order[np.minimum(best, len(b) - 1)], -1)  # [columns]: -1 = no box
        runs = {}
        cuts = np.flatnonzero(np.diff(owner)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(owner)], strict=True):
            if owner[lo] >= 0:
                key = (float(xs[lo]), float(xs[hi]), int(owner[lo]))
                runs[key] = open_runs.pop(key, float(ys[i]))
        out += [(x0, y0, x1, float(ys[i]), k) for (x0, x1, k), y0 in open_runs.items()]
        open_runs = runs
    out += [(x0, y0, x1, float(ys[-1]), k) for (x0, x1, k), y0 in open_runs.items()]
    return out


def _hover_text(det: Detection) -> str:
    x0, y0, x1, y1 = det.box
    return (
        f"<b>{plotly_text(det.class_name)}</b><br>score {det.score:.3f}<br>query {det.query}<br>"
        f"box ({x0:.0f}, {y0:.0f}) - ({x1:.0f}, {y1:.0f})"
    )


def detections_figure(
    image: Image.Image, geometry: Geometry, detections: list[Detection], clickable: bool = False,
    height: int = PHOTO_HEIGHT,
) -> go.Figure:  # fmt: skip
    """The photo with each detection's box in its query's colour (as `render.draw_boxes`) and a label.

    Hovering anywhere inside a box shows class, score, query and box of the innermost box there (one
    transparent bar trace, `innermost_regions`). With `clickable`, a click inside a box, or on the marker
    at its centre, picks the detection (customdata = query).
    """
    fig = photo_figure(image, geometry.orig_w, geometry.orig_h, height)
    if not detections:
        return fig
    # The boxes: one trace per colour (a box's path, a gap, the next box's), since the browser's cost is
    # per trace; "toself" fills each box's path on its own.
    paths: dict[tuple[int, int, int], tuple[int, list, list]] = {}  # colour -> (a query of it, xs, ys)
    for det in detections:
        x0, y0, x1, y1 = det.box
        _, xs, ys = paths.setdefault(color_of(det.query), (det.query, [], []))
        xs += [x0, x1, x1, x0, x0, None]
        ys += [y0, y0, y1, y1, y0, None]
    fig.add_traces([
        go.Scatter(
            x=xs, y=ys, mode="lines", fill="toself", fillcolor=rgb(q, 0.06 if clickable else 0.02),
            line=dict(color=rgb(q), width=BOX_WIDTH), hoverinfo="skip", name="boxes",
        )
        for q, xs, ys in paths.values()
    ])  # fmt: skip
    fig.update_layout(annotations=[
        dict(
            x=d.box[0], y=d.box[1], text=plotly_text(box_label(d)), showarrow=False,
            xanchor="left", yanchor="bottom", font=dict(color="white", size=LABEL_PX), bgcolor=rgb(d.query),
        )
        for d in sorted(detections, key=lambda d: d.score)  # the best drawn last: on top where labels overlap
    ])  # fmt: skip
    texts = [_hover_text(d) + ("<br><i>click to inspect</i>" if clickable else "") for d in detections]
    regions = innermost_regions([d.box for d in detections])
    x0, y0, x1, y1 = (np.array([r[i] for r in regions]) for i in range(4))  # [regions] each
    owners = [detections[k] for *_, k in regions]
    fig.add_trace(go.Bar(
        x=((x0 + x1) / 2).tolist(), width=(x1 - x0).tolist(), base=y0.tolist(), y=(y1 - y0).tolist(),
        customdata=[d.query for d in owners], hovertext=[texts[k] for *_, k in regions],
        hovertemplate="%{hovertext}<extra></extra>", name="boxes",
        marker=dict(color="rgba(0,0,0,0)", line=dict(width=0)), hoverlabel=dict(bgcolor=[rgb(d.query) for d in owners]),
        selected=dict(marker=dict(opacity=1)), unselected=dict(marker=dict(opacity=1)),
    ))  # fmt: skip
    fig.update_layout(barmode="overlay", bargap=0)
    if clickable:
        fig.add_trace(go.Scatter(
            x=[(d.box[0] + d.box[2]) / 2 for d in detections], y=[(d.box[1] + d.box[3]) / 2 for d in detections],
            customdata=[d.query for d in detections], mode="markers", name="pick",
            marker=dict(size=16, symbol="circle-open-dot", color=[rgb(d.query) for d in detections],
                        line=dict(width=2)),
            text=texts, hovertemplate="%{text}<extra></extra>",
            # a click selects its marker, in the browser: shown no differently, since a pick from the list
            # does not change the figure and the view beside it names the picked detection
            selected=dict(marker=dict(opacity=1)), unselected=dict(marker=dict(opacity=1)),
        ))  # fmt: skip
        fig.update_layout(clickmode="event+select")
    return fig


class FinishedFigure(go.Figure):
    """A figure nothing changes any more, whose dict is made once: Streamlit's `plotly_chart` calls
    `to_dict()` (a deep copy and a walk of every value) in every run, 7 ms for the encoder's cell grid
    and 13 ms for an R50 detections figure. Made by `finished`; any change after the first `to_dict`
    would not be seen, so only a kept figure that is shown as it is (`ui.state.kept`) is finished."""

    def to_dict(self):
        made = self.__dict__.get("_finished_dict")
        if made is None:
            made = self.__dict__["_finished_dict"] = super().to_dict()
        return made


def finished(fig: go.Figure) -> FinishedFigure:
    """`fig` itself, made a `FinishedFigure` (its class replaced, nothing copied: copying a figure
    validates every property again, 37-107 ms for the figures above)."""
    fig.__class__ = FinishedFigure
    return fig


def layers_figure(values: list[float], title: str, ytitle: str, height: int = 280) -> go.Figure:
    layers = list(range(1, len(values) + 1))
    fig = go.Figure(go.Scatter(x=layers, y=values, mode="lines+markers", name=title))
    fig.update_layout(
        title=title, height=height, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="encoder layer",
        yaxis_title=ytitle, showlegend=False,
    )  # fmt: skip
    fig.update_xaxes(tickmode="array", tickvals=layers)
    return fig


def share_figure(rows: Sequence[DetectionStats], height: int = 300) -> go.Figure:
    """Per detection: share of its cross-attention inside its box vs chance."""
    labels = [f"q{r.query} {plotly_text(r.class_name)}" for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=labels, y=[100 * r.share_in_box for r in rows], name="attention inside box"))
    fig.add_trace(go.Bar(x=labels, y=[100 * r.chance for r in rows], name="chance (box area share)"))
    fig.update_layout(
        barmode="group", height=height, margin=dict(l=10, r=10, t=30, b=10), yaxis_title="% of attention",
        legend=dict(orientation="h", y=1.12),
    )  # fmt: skip
    return fig
