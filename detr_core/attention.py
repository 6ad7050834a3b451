"""Attention maps read from an `Analysis`: pure functions, no model run, no UI.

Encoder self-attention at a pixel, in both directions (the row "where this location looks" and the
column "what looks at this location", the official notebook's `sattn[..., y, x]`), per layer or
the mean over layers, per head or the mean over heads; attention rollout across encoder layers
(Abnar & Zuidema, 2020); decoder cross-attention of any query; decoder self-attention. Maps come
back as [h, w] float tensors over the feature grid (tokens row by row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .capture import Analysis
from .errors import DETRError

__all__ = [
    "LOOKED_AT",
    "LOOKS",
    "Direction",
    "EncoderMap",
    "Head",
    "Layer",
    "decoder_map",
    "decoder_self_attention",
    "encoder_attention",
    "encoder_map",
    "full_attention",
    "rollout",
    "rollout_vector",
]  # fmt: skip

Direction = Literal["looks", "looked_at"]
LOOKS: Direction = "looks"  # row i: where location i looks (sums to 1 over the image)
LOOKED_AT: Direction = "looked_at"  # column j: how much each location looks at j
Layer = int | Literal["mean", "rollout"]  # 0-based layer index, the mean over layers, or rollout
Head = int | None  # 0-based head index, or None for the mean over heads

_CHUNK = 512  # rows per block when a whole [HW x HW] map is needed (bounds memory)


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
        return torch.exp(q[:, token : token + 1] @ k.transpose(1, 2) - lse[:, token, None, None])[:, 0]
    if direction == LOOKED_AT:
        return torch.exp((q @ k[:, token, :, None])[..., 0] - lse)
    raise DETRError(f"direction must be {LOOKS!r} or {LOOKED_AT!r}, not {direction!r}")


def full_attention(q: Tensor, k: Tensor, lse: Tensor, head: Head = None) -> Tensor:
    """A whole attention matrix from stored queries/keys: [T_q, T_k] for one head or the head mean."""
    heads = slice(None) if head is None else slice(head, head + 1)
    return torch.exp(q[heads] @ k[heads].transpose(1, 2) - lse[heads, :, None]).mean(0)


def rollout(maps: Tensor) -> Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) of [L, N, N] row-stochastic maps, first layer first.

    Each layer's map is mixed with the identity for the residual path, A' = 0.5 A + 0.5 I (still
    row-stochastic), and the layers are chained: R = A'_L ... A'_1. Row i of R says how much the
    last layer's token i draws from each input token. Returns R [N, N].
    """
    n = maps.shape[-1]
    eye = torch.eye(n, dtype=maps.dtype)
    result = eye
    for a in maps:
        result = (0.5 * a + 0.5 * eye) @ result
    return result


def _apply(q: Tensor, k: Tensor, lse: Tensor, v: Tensor, transpose: bool) -> Tensor:
    """Head-mean attention A [N, N] times a vector v [N] (A @ v, or A.T @ v), block by block."""
    out = torch.zeros_like(v)
    for start in range(0, q.shape[1], _CHUNK):
        block = torch.exp(q[:, start : start + _CHUNK] @ k.transpose(1, 2) - lse[:, start : start + _CHUNK, None])
        block = block.mean(0)  # [rows, N]
        if transpose:
            out += block.T @ v[start : start + _CHUNK]
        else:
            out[start : start + _CHUNK] = block @ v
    return out


def rollout_vector(analysis: Analysis, token: int, direction: Direction = LOOKS) -> Tensor:
    """One row (LOOKS) or column (LOOKED_AT) of the encoder rollout matrix, without forming it: [HW].

    Row i = e_i^T A'_L ... A'_1, column j = A'_L ... A'_1 e_j, with A' = 0.5 A + 0.5 I and A the
    head-mean map of each layer.
    """
    v = torch.zeros(analysis.geometry.tokens, dtype=analysis.enc_q.dtype)
    v[token] = 1.0
    layers = range(analysis.enc_layers)
    for layer in reversed(layers) if direction == LOOKS else layers:
        q, k, lse = analysis.enc_q[layer], analysis.enc_k[layer], analysis.enc_lse[layer]
        v = 0.5 * _apply(q, k, lse, v, transpose=direction == LOOKS) + 0.5 * v
    return v


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
        per_head = torch.exp(q[:, query : query + 1] @ k.transpose(1, 2) - lse[:, query, None, None])[:, 0]
        maps.append(_heads(per_head, head))
    return torch.stack(maps).mean(0).view(*analysis.feat_hw)


def decoder_self_attention(analysis: Analysis, query: int, layer: int = -1, head: Head = None) -> Tensor:
    """How much query `query` attends to each other query in a decoder layer: [Q]."""
    layer = layer + analysis.dec_layers if layer < 0 else layer
    _check_layer(layer, analysis.dec_layers, "decoder")
    _check_head(head, analysis.nheads)
    return _heads(analysis.dec_self[layer, :, query], head)
