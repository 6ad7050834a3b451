"""Display-ready results of detr_core functions: every number is computed by detr_core; this module
only picks arguments, converts tensors to numpy/lists for display, and caches the heavier ones.

Nothing here runs the model: everything reads the `Analysis` of the current view, except
`ui.caches.relevance_map` (on demand, cached)."""

from __future__ import annotations

import csv
import inspect
import io
import json
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np
import streamlit as st
import torch
from PIL import Image

from detr_core.analysis import attention, stats
from detr_core.analysis.capture import Analysis
from detr_core.io import render
from detr_core.io.image import Geometry
from detr_core.io.postprocess import Detection

from .caches import image_nbytes
from .lru import MB, BoundedLRU

# ------------------------------------------------------------------------------------------------
# Layer / head choices as the UI shows them


def layer_options(n_layers: int, extra: tuple[str, ...] = ("mean",)) -> list[str]:
    return [str(i) for i in range(1, n_layers + 1)] + list(extra)


def layer_arg(label: str):
    """UI label ("1".."N", "mean", "rollout") -> detr_core's layer argument (0-based int or the word)."""
    return label if label in ("mean", "rollout") else int(label) - 1


def head_options(nheads: int, grid: bool = False) -> list[str]:
    return ["mean"] + [str(i) for i in range(1, nheads + 1)] + (["all heads (grid)"] if grid else [])


def head_arg(label: str) -> int | None:
    return None if label == "mean" else int(label) - 1


# ------------------------------------------------------------------------------------------------
# Encoder


@dataclass(frozen=True)
class EncoderResult:
    map: np.ndarray  # [h, w]
    row: int
    col: int
    token: int
    x: float  # the point asked for, original pixels
    y: float
    key: Hashable | None = None  # what determines `map` (cell_result's cache key), or None when not cached


def encoder_result(analysis: Analysis, x: float, y: float, layer: str, head: str, direction: str) -> EncoderResult:
    em = attention.encoder_map(analysis, x, y, layer=layer_arg(layer), head=head_arg(head), direction=direction)
    return EncoderResult(em.map.numpy(), em.row, em.col, em.token, x, y)


# A click adds one point to the encoder's view; every other point's map and picture is the one of the run
# before. They are kept here, process-wide and bounded by entries and bytes (values shared, read-only):
# an R50 map is 25 x 34 floats (3.4 kB), a picture at most 900 px wide (about 2.4 MB as Pillow holds it).
CELL_MAPS: BoundedLRU[np.ndarray] = BoundedLRU("encoder cell map", 4096, 32 * MB, lambda m: m.nbytes)
MAP_PICTURES: BoundedLRU[Image.Image] = BoundedLRU("map picture", 128, 64 * MB, image_nbytes)


def cell_result(
    analysis_key: Hashable, analysis: Analysis, x: float, y: float, layer: str, head: str, direction: str
) -> EncoderResult:
    """`encoder_result` at (x, y), its map cached per feature cell (`analysis_key` names the analysis: a
    map depends only on the analysis, the cell, the layer, the head and the direction)."""
    row, col = analysis.geometry.pixel_to_cell(x, y)
    key = (analysis_key, row, col, layer, head, direction)

    def compute() -> np.ndarray:
        exact = encoder_result(analysis, x, y, layer, head, direction).map
        exact.setflags(write=False)  # shared by every caller
        return exact

    exact = CELL_MAPS.get_or_compute(key, compute)
    return EncoderResult(exact, row, col, analysis.geometry.token(row, col), x, y, key)


def encoder_picture(
    result: EncoderResult, layer: str, geometry: Geometry, photo: Image.Image | None = None
) -> Image.Image:
    """The map of `result` as it is shown (`display_map`), coloured at `geometry`'s size: over `photo` when
    given, else alone. Cached when the result is (`cell_result`); shared: draw on a copy."""

    def compute() -> Image.Image:
        shown, _ = display_map(result, layer)
        return heatmap_image(shown, geometry) if photo is None else overlay_image(photo, shown, geometry)

    if result.key is None:
        return compute()
    what = "heat" if photo is None else "overlay"
    return picture((what, result.key, geometry.orig_w, geometry.orig_h), compute)


@dataclass(frozen=True)
class EncoderFacts:
    """The shape facts the official notebook prints about the encoder's self-attention."""

    feature_shape: tuple[int, ...]  # backbone output [1, C, h, w]
    h: int
    w: int
    tokens: int  # h * w
    view_shape: tuple[int, int, int, int]  # the [h, w, h, w] reshape of one layer's [HW, HW] map
    stride: int


def encoder_facts(analysis: Analysis) -> EncoderFacts:
    """The notebook's shape facts, from the analysis."""
    g = analysis.geometry
    return EncoderFacts(
        tuple(analysis.feature_shape), g.feat_h, g.feat_w, g.tokens, (g.feat_h, g.feat_w, g.feat_h, g.feat_w), g.stride
    )


NOTEBOOK_INPUT = (1066, 800)  # (w, h): the official notebook's 640x480 photo resized to an 800 px shorter side
NOTEBOOK_POINTS = ((200, 200), (280, 400), (200, 600), (440, 800))  # its (y, x), in that input's pixels


def reference_points(geometry: Geometry, min_size: int | None = None) -> list[tuple[float, float]]:
    """The notebook's four reference points (y, x) = (200, 200), (280, 400), (200, 600), (440, 800).

    They are positions in the notebook's 1066 x 800 input: an input of exactly that size gets them
    unchanged; any other input gets them scaled with it (x by input_w / 1066, y by input_h / 800), so
    they keep their place in the picture (a panorama's spread over its width, a 128 px detr_shapes
    input's too). Converted to original pixels with `geometry.to_original` and clamped inside the
    image. Returns [(x, y), ...]. (`min_size` is not needed any more; kept for old callers.)
    """
    base_w, base_h = NOTEBOOK_INPUT
    out = []
    for yi, xi in NOTEBOOK_POINTS:
        xi = min(xi * geometry.input_w / base_w, geometry.input_w - 1)
        yi = min(yi * geometry.input_h / base_h, geometry.input_h - 1)
        out.append(clamp_point(geometry, *geometry.to_original(xi, yi)))
    return out


def display_map(result: EncoderResult, layer: str) -> tuple[np.ndarray, float | None]:
    """The map as it is coloured, and the share left out of the colour scale (or None).

    Rollout chains (A + I) / 2 through the layers, so the identity term puts most of the mass on
    the cell itself and every other cell looks black. For display only, the cell's own value is
    lowered to the largest of the other cells (it shows in the brightest colour, outlined), so the
    colour scale spans the others. The exact map (downloads, statistics) is `result.map`.
    """
    if layer != "rollout" or result.map.size < 2:
        return result.map, None
    shown = np.array(result.map, dtype=np.float32, copy=True)
    own = float(shown[result.row, result.col])
    others = np.delete(shown.reshape(-1), result.row * shown.shape[1] + result.col)
    shown[result.row, result.col] = min(own, float(others.max()))
    total = float(result.map.sum())
    return shown, (own / total if total > 0 else None)


def clamp_point(geometry: Geometry, x: float, y: float) -> tuple[float, float]:
    return min(max(x, 0.0), geometry.orig_w - 1.0), min(max(y, 0.0), geometry.orig_h - 1.0)


# ------------------------------------------------------------------------------------------------
# Decoder


# A pick, a layer or a head shows one query's map; the page's panels show the last layer's of each
# detection. Kept process-wide like the encoder's cell maps: an R50 map is 25 x 34 floats (3.4 kB).
QUERY_MAPS: BoundedLRU[torch.Tensor] = BoundedLRU(
    "decoder query map", 4096, 32 * MB, lambda m: m.numel() * m.element_size()
)


def query_map(analysis_key: Hashable, analysis: Analysis, query: int, layer: str, head: str) -> torch.Tensor:
    """detr_core's `decoder_map` of `query` at the UI's `layer` and `head` labels, cached per (analysis,
    query, layer, head) (`analysis_key` names the analysis); shared, never written: [h, w]."""

    def compute() -> torch.Tensor:
        return attention.decoder_map(analysis, query, layer=layer_arg(layer), head=head_arg(head))

    return QUERY_MAPS.get_or_compute((analysis_key, query, layer, head), compute)


def picture(key: Hashable, make: Callable[[], Image.Image]) -> Image.Image:
    """A picture the pages show again and again (a map's colours, a photo with a box), made once per
    `key` (which must name everything it depends on, including its size) and kept in MAP_PICTURES;
    shared: draw on a copy."""
    return MAP_PICTURES.get_or_compute(key, make)


@st.cache_data(max_entries=32, show_spinner=False)
def guide_stats(key: tuple, threshold: float, _analysis: Analysis) -> stats.ImageStats:
    """`detr_core.analysis.stats.image_stats` of the view's detections, cached per image, model and threshold."""
    return stats.image_stats(_analysis, _analysis.detections(threshold))


# ------------------------------------------------------------------------------------------------
# Pictures


def heatmap_image(attention_map, geometry: Geometry) -> Image.Image:
    return render.heatmap(attention_map, geometry)


def overlay_image(image: Image.Image, attention_map, geometry: Geometry) -> Image.Image:
    return render.overlay(image, attention_map, geometry)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def annotated_png(image: Image.Image, detections: list[Detection]) -> bytes:
    return png_bytes(render.draw_boxes(image, detections))


def detection_rows(detections: list[Detection]) -> list[dict]:
    """One row per detection: class name, class id, score, query, xyxy box (original pixels)."""
    return [
        {
            "class": d.class_name,
            "class_id": d.class_id,
            "score": round(d.score, 4),
            "query": d.query,
            "x0": round(d.box[0], 1),
            "y0": round(d.box[1], 1),
            "x1": round(d.box[2], 1),
            "y1": round(d.box[3], 1),
        }
        for d in detections
    ]


def detections_json(detections: list[Detection], meta: dict) -> str:
    """The CLI's detections.json schema (`Detection.to_dict`), with the view's facts in `meta`."""
    return json.dumps({**meta, "detections": [d.to_dict() for d in detections]}, indent=2)


def detections_csv(detections: list[Detection]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["class_name", "class_id", "score", "query", "x0", "y0", "x1", "y1"])
    for d in detections:
        writer.writerow([d.class_name, d.class_id, f"{d.score:.6f}", d.query, *(f"{v:.2f}" for v in d.box)])
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# The model


PARTS = (
    ("Backbone (CNN)", ("backbone",)),
    ("Input projection (1x1 conv)", ("input_proj", "conv")),
    ("Transformer encoder", ("transformer.encoder",)),
    ("Transformer decoder", ("transformer.decoder",)),
    ("Prediction heads (class + box)", ("class_embed", "bbox_embed", "linear_class", "linear_bbox")),
    ("Object queries", ("query_embed", "query_pos")),
    ("Learned positions", ("row_embed", "col_embed")),
)


def _resolve(model, path: str):
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _numel(obj) -> int:
    if hasattr(obj, "parameters"):
        return sum(p.numel() for p in obj.parameters())
    return int(obj.numel())


def parameter_counts(model) -> list[dict]:
    """Parameters per part of the model, plus anything else, and the total."""
    total = _numel(model)
    rows, counted = [], 0
    for label, paths in PARTS:
        objs = [o for o in (_resolve(model, p) for p in paths) if o is not None]
        if not objs:
            continue
        n = sum(_numel(o) for o in objs)
        counted += n
        names = ", ".join(p for p in paths if _resolve(model, p) is not None)
        rows.append({"part": label, "modules": names, "parameters": n})
    if total - counted:
        rows.append({"part": "Other", "modules": "", "parameters": total - counted})
    rows.append({"part": "Total", "modules": "", "parameters": total})
    for r in rows:
        r["share"] = f"{100 * r['parameters'] / total:.1f}%"
    return rows


def pass_shapes(analysis: Analysis, num_classes: int) -> list[dict]:
    """The tensor shapes of one pass on the current image."""
    g = analysis.geometry
    nh = analysis.nheads
    d = analysis.enc_q.shape[-1]
    c = nh * d
    hw, q = g.tokens, analysis.num_queries

    def row(what, shape, note=""):
        return {"tensor": what, "shape": str(list(shape)), "note": note}

    return [
        row("original image", (g.orig_h, g.orig_w, 3), "H x W x RGB"),
        row("input", (1, 3, g.input_h, g.input_w), "resized and normalized"),
        row("backbone feature map", analysis.feature_shape, f"stride {g.stride}"),
        row("projected features", (1, c, g.feat_h, g.feat_w), "1x1 conv to the transformer width"),
        row("encoder tokens", (hw, 1, c), f"{g.feat_h} x {g.feat_w} = {hw} cells, row by row"),
        row("encoder self-attention (one layer)", (nh, hw, hw), f"{analysis.enc_layers} layers"),
        row("object queries", (q, c), "learned"),
        row("decoder cross-attention (one layer)", (nh, q, hw), f"{analysis.dec_layers} layers"),
        row("decoder self-attention (one layer)", (nh, q, q)),
        row("decoder output", (analysis.dec_layers, q, c), "one per decoder layer"),
        row("pred_logits", (1, q, num_classes + 1), "the last class is 'no object'"),
        row("pred_boxes", (1, q, 4), "normalized (cx, cy, w, h)"),
    ]


@st.cache_data(max_entries=8, show_spinner=False)
def architecture(name: str) -> dict:
    """The named model as `print(model)` shows it and its parameters per part, from the official
    structure (the served model has batch norm folded away, see detr_core.models.fast)."""
    from detr_core import build_model

    model = build_model(name)
    return {"tree": str(model), "parts": parameter_counts(model)}


@st.cache_data(max_entries=8, show_spinner=False)
def detr_demo_facts(num_classes: int) -> dict:
    """A random DETRdemo built for `num_classes`: its parameters per part and its config."""
    from detr_core.models.config import DETRDemoConfig
    from detr_core.models.detr_demo import DETRdemo

    cfg = DETRDemoConfig(num_classes=int(num_classes))
    model = DETRdemo(cfg)
    return {"config": repr(cfg), "parts": parameter_counts(model)}


def detr_demo_source() -> str:
    from detr_core.models.detr_demo import DETRdemo

    return inspect.getsource(DETRdemo)
