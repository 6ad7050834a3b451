"""A head's attention rebuilt from what the capture stores: the one owner of exp(q . k - lse).

The capture keeps, per attention layer, the scaled queries q [nh, T_q, d], the keys k [nh, T_k, d]
and the log-sum-exp of every row of q k^T, lse [nh, T_q]. Any part of the softmax matrix follows
exactly: A[n, i, j] = exp(q[n, i] . k[n, j] - lse[n, i]) (rows sum to 1). Every module that needs an
attention map (maps, rollout, statistics, the capture's own log-sum-exp) calls these functions, so
the formula, and the block size that bounds memory when a whole [T_q x T_k] map is walked, live here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from ..models.transformer import FLASH_ATTENTION_CPU

__all__ = [
    "BLOCK_ROWS",
    "LOOKED_AT",
    "LOOKS",
    "Direction",
    "column",
    "head_blocks",
    "matvec",
    "row",
    "row_blocks",
    "row_logsumexp",
]

Direction = Literal["looks", "looked_at"]
LOOKS: Direction = "looks"  # row i: where location i looks (sums to 1 over the image)
LOOKED_AT: Direction = "looked_at"  # column j: how much each location looks at j

BLOCK_ROWS = 512  # rows per block when a whole [T_q x T_k] map is walked (peak memory: nh x 512 x T_k floats)


def row(q: Tensor, k: Tensor, lse: Tensor, i: int) -> Tensor:
    """Row i of every head's map, "where query i looks": q [nh, T_q, d], k [nh, T_k, d] -> [nh, T_k]."""
    return torch.exp(q[:, i : i + 1] @ k.transpose(1, 2) - lse[:, i, None, None])[:, 0]


def column(q: Tensor, k: Tensor, lse: Tensor, j: int) -> Tensor:
    """Column j of every head's map, "how much each query looks at key j": -> [nh, T_q]."""
    return torch.exp((q @ k[:, j, :, None])[..., 0] - lse)


def head_blocks(
    q: Tensor, k: Tensor, lse: Tensor, key_padding_mask: Tensor | None = None, workspace: Tensor | None = None
) -> Iterator[tuple[int, Tensor]]:
    """Every head's whole map block by block: (first row, rows [nh, n, T_k]), n <= BLOCK_ROWS.

    `key_padding_mask` [1, T_k] (True = ignored key, as given to `row_logsumexp`) zeroes those columns.
    `workspace`: a flat buffer of at least nh x min(T_q, BLOCK_ROWS) x T_k elements of q's dtype; every
    block is then written into it (a view, valid until the next block) instead of a fresh allocation.

    Weights below the dtype's smallest normal number (float32: 1.2e-38, i.e. q . k - lse < -87.3) are
    flushed to zero, as a CPU in flush-to-zero mode would: a row's largest weight is at least 1 / T_k,
    so they change no sum at float rounding, and a subnormal result makes exp (and every product
    with it) 10 to 60 times slower on x86. Random-weight models, whose logits span hundreds, hit it:
    R50-DC5's first encoder layer spent 1.5 s in exp instead of 0.03 s.
    """
    nh, t_q, t_k = q.shape[0], q.shape[1], k.shape[1]
    subnormal = math.log(torch.finfo(q.dtype).tiny)  # float32: -87.34
    for start in range(0, t_q, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, t_q)
        out = None if workspace is None else workspace[: nh * (stop - start) * t_k].view(nh, stop - start, t_k)
        block = torch.baddbmm(-lse[:, start:stop, None], q[:, start:stop], k.transpose(1, 2), out=out)
        block = torch.nn.functional.threshold_(block, subnormal, float("-inf")).exp_()  # exp(q . k - lse)
        if key_padding_mask is not None:
            block.masked_fill_(key_padding_mask[0].view(1, 1, -1).bool(), 0.0)
        yield start, block


def row_blocks(q: Tensor, k: Tensor, lse: Tensor, head: int | None = None) -> Iterator[tuple[int, Tensor]]:
    """The whole map block by block: (first row, rows [n, T_k]) of one head, or of the head mean (None)."""
    heads = slice(None) if head is None else slice(head, head + 1)
    for start, block in head_blocks(q[heads], k[heads], lse[heads]):
        yield start, block.mean(0)


def matvec(q: Tensor, k: Tensor, lse: Tensor, v: Tensor, transpose: bool = False) -> Tensor:
    """The head-mean map A [T_q, T_k] times a vector without forming A: A @ v ([T_k] -> [T_q]),
    or A^T @ v ([T_q] -> [T_k]) with `transpose`."""
    out = torch.zeros(k.shape[1] if transpose else q.shape[1], dtype=v.dtype)
    for start, block in row_blocks(q, k, lse):
        stop = start + block.shape[0]
        if transpose:
            out += block.T @ v[start:stop]
        else:
            out[start:stop] = block @ v
    return out


def row_logsumexp(q: Tensor, k: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
    """Log-sum-exp of each row of q k^T (q already scaled): q [nh, T_q, d], k [nh, T_k, d] -> [nh, T_q].

    On the CPU the fused flash kernel gives it without materialising the [nh, T_q, T_k] logits;
    `key_padding_mask` [1, T_k] (True = ignore) takes the explicit route.
    """
    if FLASH_ATTENTION_CPU is not None and q.device.type == "cpu" and key_padding_mask is None:
        return FLASH_ATTENTION_CPU(q[None], k[None], k[None], scale=1.0)[1][0]
    logits = q @ k.transpose(1, 2)  # [nh, T_q, T_k]
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[0].view(1, 1, -1).bool(), float("-inf"))
    return logits.logsumexp(-1)
