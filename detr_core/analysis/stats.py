"""Statistics that make the encoder/decoder contrast measurable on one image.

- `normalized_entropy`: entropy of a map divided by log(#cells): 1 = spread evenly, 0 = one cell.
- `box_share`: share of a map's mass inside a box, and chance (the box's share of the image's cells).
- `mean_attention_distance`: attention-weighted distance, in original-image pixels, between a
  location and the locations it looks at, averaged over all locations of an encoder layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..io.image import Geometry
from ..io.postprocess import Detection
from . import kernel
from .attention import decoder_map
from .capture import Analysis

__all__ = [
    "DetectionStats",
    "ImageStats",
    "MapStats",
    "box_share",
    "cell_centers",
    "cell_overlap",
    "detection_stats",
    "encoder_entropy",
    "image_stats",
    "map_stats",
    "mean_attention_distance",
    "normalized_entropy",
]  # fmt: skip


def normalized_entropy(attention: Tensor) -> float:
    """Entropy of a non-negative map (any shape), normalized to [0, 1] by log(number of cells)."""
    p = attention.flatten().double()
    p = p / p.sum()
    n = p.numel()
    if n <= 1:
        return 0.0
    h = -(p * torch.log(p.clamp_min(1e-300))).sum()
    return float(h / math.log(n))


def cell_overlap(geometry: Geometry, box: tuple[float, float, float, float]) -> Tensor:
    """For each feature cell, the fraction of its (visible) area inside `box` (original px): [h, w]."""
    g = geometry
    x0, y0, x1, y1 = box
    rows = torch.arange(g.feat_h, dtype=torch.float64)
    cols = torch.arange(g.feat_w, dtype=torch.float64)
    sy, sx = g.orig_h / g.input_h, g.orig_w / g.input_w  # input px -> original px
    top = rows * g.stride * sy
    bottom = torch.clamp((rows + 1) * g.stride, max=g.input_h) * sy
    left = cols * g.stride * sx
    right = torch.clamp((cols + 1) * g.stride, max=g.input_w) * sx
    oy = (torch.clamp(bottom.clamp(max=y1) - top.clamp(min=y0), min=0)) / (bottom - top)  # [h]
    ox = (torch.clamp(right.clamp(max=x1) - left.clamp(min=x0), min=0)) / (right - left)  # [w]
    return oy[:, None] * ox[None, :]


def box_share(attention: Tensor, geometry: Geometry, box: tuple[float, float, float, float]) -> tuple[float, float]:
    """(share of the map's mass inside `box`, chance level = the box's share of the image).

    Each cell counts with the fraction of its area inside the box. The image is measured in
    feature cells too (the last row and column of cells may be cut by the image border), so a map
    that is uniform over the cells scores exactly chance.
    """
    a = attention.double()
    overlap = cell_overlap(geometry, box)
    share = float((a * overlap).sum() / a.sum())
    return share, float(overlap.mean())


def cell_centers(geometry: Geometry) -> Tensor:
    """Centre of every cell's visible part in original pixels, row by row: [HW, 2] as (x, y)."""
    g = geometry
    rows = torch.arange(g.feat_h, dtype=torch.float64)
    cols = torch.arange(g.feat_w, dtype=torch.float64)
    cy = (rows * g.stride + torch.clamp((rows + 1) * g.stride, max=g.input_h)) / 2 * g.orig_h / g.input_h
    cx = (cols * g.stride + torch.clamp((cols + 1) * g.stride, max=g.input_w)) / 2 * g.orig_w / g.input_w
    yy, xx = torch.meshgrid(cy, cx, indexing="ij")
    return torch.stack((xx.flatten(), yy.flatten()), dim=1)


def mean_attention_distance(analysis: Analysis, layer: int, head: int | None = None) -> float:
    """Attention-weighted distance (original px) from each location to where it looks, averaged over locations."""
    centers = cell_centers(analysis.geometry).float()
    dist = torch.cdist(centers, centers)  # [HW, HW]
    total = 0.0
    for start, rows in kernel.row_blocks(analysis.enc_q[layer], analysis.enc_k[layer], analysis.enc_lse[layer], head):
        total += float((rows * dist[start : start + rows.shape[0]]).sum())
    return total / analysis.geometry.tokens


def encoder_entropy(analysis: Analysis, layer: int, head: int | None = None) -> float:
    """Mean normalized entropy of the rows ("where each location looks") of an encoder layer."""
    n = analysis.geometry.tokens
    if n <= 1:
        return 0.0
    total = 0.0
    for _, rows in kernel.row_blocks(analysis.enc_q[layer], analysis.enc_k[layer], analysis.enc_lse[layer], head):
        p = rows.double() / rows.double().sum(-1, keepdim=True)
        total += float(-(p * torch.log(p.clamp_min(1e-300))).sum())
    return total / n / math.log(n)


@dataclass(frozen=True)
class MapStats:
    """How one map sits on one box: its share inside, chance (the box's share of the image), entropy."""

    share_in_box: float
    chance: float
    entropy: float  # normalized entropy of the map

    @property
    def ratio(self) -> float:
        return self.share_in_box / self.chance if self.chance > 0 else float("inf")


def map_stats(attention: Tensor, geometry: Geometry, box: tuple[float, float, float, float]) -> MapStats:
    """`box_share` and `normalized_entropy` of one map (e.g. a decoder map or a relevance map) for one box."""
    share, chance = box_share(attention, geometry, box)
    return MapStats(share, chance, normalized_entropy(attention))


@dataclass(frozen=True)
class DetectionStats(MapStats):
    """`MapStats` of a detection's own cross-attention (last decoder layer, head mean) on its own box."""

    query: int = 0
    class_name: str = ""
    score: float = 0.0


def detection_stats(analysis: Analysis, detections: list[Detection], layer: int = -1) -> list[DetectionStats]:
    """Share of each detection's cross-attention inside its own box (vs chance), and its entropy."""
    out = []
    for det in detections:
        s = map_stats(decoder_map(analysis, det.query, layer), analysis.geometry, det.box)
        out.append(DetectionStats(s.share_in_box, s.chance, s.entropy, det.query, det.class_name, det.score))
    return out


@dataclass(frozen=True)
class ImageStats:
    """The encoder/decoder contrast measured on one image (the dashboard's Guide)."""

    encoder_entropy: tuple[float, ...]  # per encoder layer
    encoder_distance: tuple[float, ...]  # mean attention distance per encoder layer, original px
    diagonal: float  # of the original image, px
    detections: tuple[DetectionStats, ...]


def image_stats(analysis: Analysis, detections: list[Detection]) -> ImageStats:
    """Per-layer encoder entropy and attention distance, and per-detection decoder statistics."""
    g = analysis.geometry
    layers = range(analysis.enc_layers)
    return ImageStats(
        encoder_entropy=tuple(encoder_entropy(analysis, layer) for layer in layers),
        encoder_distance=tuple(mean_attention_distance(analysis, layer) for layer in layers),
        diagonal=math.hypot(g.orig_w, g.orig_h),
        detections=tuple(detection_stats(analysis, detections)),
    )
