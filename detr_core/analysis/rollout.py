"""Attention rollout (Abnar & Zuidema, 2020) across the encoder layers.

Each layer's head-mean map A is mixed with the identity for the residual path, A' = 0.5 A + 0.5 I
(still row-stochastic), and the layers are chained: R = A'_L ... A'_1. `rollout` forms R from whole
maps (the reference); `rollout_vector` gives one row or column of it from an `Analysis` with
matrix-vector products only (HW^2 work per layer, never an [HW x HW] product).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import kernel
from .capture import Analysis
from .kernel import LOOKS, Direction

__all__ = ["rollout", "rollout_vector"]


def rollout(maps: Tensor) -> Tensor:
    """Rollout of [L, N, N] row-stochastic maps, first layer first: R [N, N].

    Row i of R says how much the last layer's token i draws from each input token.
    """
    n = maps.shape[-1]
    eye = torch.eye(n, dtype=maps.dtype)
    result = eye
    for a in maps:
        result = (0.5 * a + 0.5 * eye) @ result
    return result


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
        v = 0.5 * kernel.matvec(q, k, lse, v, transpose=direction == LOOKS) + 0.5 * v
    return v
