"""Attention maps read from an `Analysis`: pure functions, no model run, no UI.

Encoder self-attention at a pixel, in both directions (the row "where this location looks" and the
column "what looks at this location", the official notebook's `sattn[..., y, x]`), per layer or
the mean over layers, per head or the mean over heads; attention rollout across encoder layers
(Abnar & Zuidema, 2020, computed in `rollout`); decoder cross-attention of any query. Maps come
back as [h, w] float tensors over the feature grid (tokens row by row); each is rebuilt from the
stored queries, keys and log-sum-exps by `kernel`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..errors import DETRError
from . import kernel
from .capture import Analysis
from .kernel import LOOKED_AT, LOOKS, Direction
from .rollout import rollout_vector

__all__ = [
    "LOOKED_AT",
    "LOOKS",
    "Direction",
    "EncoderMap",
    "Head",
    "Layer",
    "decoder_map",
    "encoder_attention",
    "encoder_map",
]  # fmt: skip

Layer = int | Literal["mean", "rollout"]  # 0-based layer index, the mean over layers, or rollout
Head = int | None  # 0-based head index, or None for the mean over heads


@dataclass(frozen=True)
class EncoderMap:
    """An encoder map at one feature cell, with the shape facts the official notebook prints."""

    map: Tensor  # [h, w]
    row: int  # the clicked feature cell
    col: int
    token: int  # row * w + col
    layer: Layer
    head: Head
    direction: Direction
    feature_shape: tuple[int, ...]  # backbone output [1, C, h, w]
    tokens: int  # h * w
    view_shape: tuple[int, int, int, int]  # the [h, w, h, w] reshape of one layer's [HW, HW] map
    stride: int


def _check_layer(layer: int, n: int, what: str) -> None:
    if not 0 <= layer < n:
        raise DETRError(f"{what} layer {layer} does not exist: the model has {n} (0..{n - 1})")


def _check_head(head: Head, nh: int) -> None:
    if head is not None and not 0 <= head < nh:
        raise DETRError(f"head {head} does not exist: the model has {nh} heads (0..{nh - 1})")


def _heads(maps: Tensor, head: Head) -> Tensor:
    """[nh, ...] -> [...]: one head, or the mean over heads."""
    return maps.mean(0) if head is None else maps[head]


def encoder_attention(analysis: Analysis, layer: int, token: int, direction: Direction = LOOKS) -> Tensor:
    """Per-head encoder self-attention of one token: [nh, HW], a row (LOOKS) or a column (LOOKED_AT)."""
    _check_layer(layer, analysis.enc_layers, "encoder")
    q, k, lse = analysis.enc_q[layer], analysis.enc_k[layer], analysis.enc_lse[layer]  # [nh, HW, d], [nh, HW]
    if direction == LOOKS:
        return kernel.row(q, k, lse, token)
    if direction == LOOKED_AT:
        return kernel.column(q, k, lse, token)
    raise DETRError(f"direction must be {LOOKS!r} or {LOOKED_AT!r}, not {direction!r}")


def encoder_map(
    analysis: Analysis, x: float, y: float, layer: Layer = -1, head: Head = None, direction: Direction = LOOKS
) -> EncoderMap:
    """Encoder self-attention at the pixel (x, y) of the ORIGINAL image, as an [h, w] map.

    `layer`: an index (negative counts from the last), "mean" over layers, or "rollout" (heads are
    always averaged for rollout). `head`: an index, or None for the mean over heads.
    """
    g = analysis.geometry
    _check_head(head, analysis.nheads)
    row, col = g.pixel_to_cell(x, y)
    token = g.token(row, col)
    if layer == "rollout":
        flat = rollout_vector(analysis, token, direction)
    elif layer == "mean":
        flat = torch.stack(
            [_heads(encoder_attention(analysis, i, token, direction), head) for i in range(analysis.enc_layers)]
        ).mean(0)
    else:
        layer = layer + analysis.enc_layers if layer < 0 else layer
        flat = _heads(encoder_attention(analysis, layer, token, direction), head)
    return EncoderMap(
        map=flat.view(g.feat_h, g.feat_w),
        row=row,
        col=col,
        token=token,
        layer=layer,
        head=head,
        direction=direction,
        feature_shape=analysis.feature_shape,
        tokens=g.tokens,
        view_shape=(g.feat_h, g.feat_w, g.feat_h, g.feat_w),
        stride=g.stride,
    )


def decoder_map(analysis: Analysis, query: int, layer: int | Literal["mean"] = -1, head: Head = None) -> Tensor:
    """Decoder cross-attention of one object query over the image: [h, w]."""
    if not 0 <= query < analysis.num_queries:
        raise DETRError(f"query {query} does not exist: the model has {analysis.num_queries} queries")
    _check_head(head, analysis.nheads)
    layers = range(analysis.dec_layers) if layer == "mean" else [layer + analysis.dec_layers if layer < 0 else layer]
    maps = []
    for i in layers:
        _check_layer(i, analysis.dec_layers, "decoder")
        q, k, lse = analysis.cross_q[i], analysis.cross_k[i], analysis.cross_lse[i]  # [nh, Q, d], [nh, HW, d]
        maps.append(_heads(kernel.row(q, k, lse, query), head))
    return torch.stack(maps).mean(0).view(*analysis.feat_hw)
