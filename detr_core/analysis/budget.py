"""Work budgets for the analyses whose cost grows with the square of the feature tokens.

A visitor picks the image and the preprocessing sizes, and with them N, the number of feature cells
(tokens). Three analyses walk every one of the N x N attention weights of the encoder:

- "entropy": the entropy of every encoder layer (`stats.encoder_entropy` per layer, the guide's
  statistics): a whole [N x N] map per layer and head;
- "rollout": one rollout map (`rollout.rollout_vector`, asked for at every click with layer
  "rollout"): one matrix-vector product through every layer's whole map;
- "relevance": one query's relevance map (`relevance.relevance`): a forward and a backward pass
  that rebuilds every layer's map block by block, and keeps one [N x N] float32 Ā per encoder layer.

`estimate` says what a request costs (seconds on one 2-core CPU, gigabytes of peak memory) and
`check_budget` whether it fits a `Budget`; if not, its message says what to lower: the largest N
that fits and, when the preprocessing sizes are given, the sizes that give about that N.
The functions are pure (no torch, no model): a UI asks before it computes.

The figures (`COSTS`), on the project's 2-core VMs, torch with 2 threads, R50 encoders
(6 layers of 8 heads of 32 dimensions):

- entropy and rollout (2-core AMD EPYC): `benchmarks/analysis_budget.py` (synthetic queries and
  keys; the fastest of 3 runs in a fresh process). Measured 2 December 2026 while the VM was shared
  (load average 6 on its 2 cores):

  | request | tokens | seconds | peak memory added |
  |---|---:|---:|---:|
  | entropy, one layer | 2,000 / 4,000 / 8,000 | 1.55 / 3.76 / 15.8 | 114 / 204 / 523 MB |
  | rollout map, 6 layers | 2,000 / 4,000 / 8,000 | 3.09 / 10.2 / 55.8 | 94 / 157 / 323 MB |

  Time grows with N^2 (least-squares fits: 2.5e-7 s per token^2 and layer for entropy, 8.6e-7 s
  per token^2 for a rollout map), memory with N (the maps are walked in blocks of `kernel.BLOCK_ROWS` rows). These are
  upper bounds for an idle VM: issue #12 measured 9.9 s per layer for entropy and 22 s for one
  rollout map at 12,300 tokens (the sidebar's largest sizes 1600/2666 on a 40-megapixel photo),
  3.8x and 5.9x less than these coefficients give. Its 2.2 GB for the rollout map is not borne out
  here (0.5 GB by the fit); it likely counted the whole analysis of that image.
- relevance (2-core "Intel(R) Xeon(R) Processor"): `benchmarks/analysis_budget.py --kinds
  relevance` (random-weight models folded as the dashboard runs them, a random image, one captured
  pass first; the fastest of 3 runs of query 0 in a fresh process; memory = how far the peak
  resident memory, VmHWM, rose above the captured pass's). Measured 2 December 2026 while the VM
  was shared (load average 4.7 falling to 2.8):

  | model, input | tokens | seconds | peak memory above a captured pass |
  |---|---:|---:|---:|
  | R50 800x1066 | 850 | 1.63 | 128 MB |
  | R50-DC5 800x1066 | 3,350 | 6.20 | 885 MB |
  | R50-DC5 800x1333 | 4,200 | 9.57 | 934 MB |

  Time: 1.3 s (mostly the backbone) + 4.7e-7 s x N^2, through the R50 and the 4,200-token points
  (6.6 s at 3,350: above the measurement). Memory: 0.1 GB + 1.8e-4 GB x N (the transformer's saved
  activations and the backward's three block buffers) + 2.4e-8 GB x N^2 (the six float32 Ā kept,
  24 bytes per token^2), above every measurement (0.97 GB at 3,350, 1.28 GB at 4,200). Before
  issue #15, in the same run, the same benchmark gave R50 800x1066 8.2 s and 719 MB (random
  weights' subnormal attention weights) and R50-DC5 800x1066 14.1 s and 1,359 MB; the EPYC's fit
  then was 1.5 s + 1.75e-6 s x N^2 and 0.5 GB + 7e-8 GB x N^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "COSTS",
    "DEFAULT_BUDGETS",
    "Budget",
    "Cost",
    "Request",
    "Verdict",
    "check_budget",
    "estimate",
    "max_tokens",
]

Request = Literal["entropy", "rollout", "relevance"]

_REFERENCE_LAYERS, _REFERENCE_HEADS = 6, 8  # the encoder the coefficients were measured on


@dataclass(frozen=True)
class Cost:
    seconds: float  # on one 2-core CPU (the project's VM); a GPU is much faster
    gigabytes: float  # peak memory the computation adds


@dataclass(frozen=True)
class _Coefficients:
    """seconds = fixed + per_token2 x N^2 x scale; gigabytes = fixed + per_token x N x scale + per_token2 x N^2,
    where scale = layers/6 x heads/8 for work done per layer and head (entropy, rollout), else 1."""

    seconds_fixed: float
    seconds_per_token2: float
    gb_fixed: float
    gb_per_token: float  # blocks of BLOCK_ROWS rows of every head's map: linear in N
    gb_per_token2: float  # whole [N x N] matrices kept (relevance)
    per_layer: bool


COSTS: dict[Request, _Coefficients] = {
    # one layer: 3.76 s at 4,000 tokens, 15.8 s at 8,000 -> 2.5e-7 s / token^2 per layer; 0.065 MB / token
    "entropy": _Coefficients(0.0, 6 * 2.5e-7, 0.0, 6.5e-5, 0.0, per_layer=True),
    # 6 layers: 3.1 s at 2,000 tokens, 10.2 s at 4,000, 55.8 s at 8,000 -> 8.6e-7 s / token^2; 0.04 MB / token
    "rollout": _Coefficients(0.0, 8.6e-7, 0.0, 4.0e-5, 0.0, per_layer=True),
    # benchmarks/analysis_budget.py --kinds relevance, fitted above; the backbone's time is in the fixed term
    "relevance": _Coefficients(1.3, 4.7e-7, 0.1, 1.8e-4, 2.4e-8, per_layer=False),
}


@dataclass(frozen=True)
class Budget:
    seconds: float
    gigabytes: float


# What one request may cost on a shared 2-core demo server. Every analysis at the default sizes
# 800/1333 fits, R50-DC5's 4,200 cells included (by the coefficients above: rollout 15 s, entropy
# 26 s, relevance 9.6 s and 1.3 GB; relevance fits up to about 5,900 cells, by memory); a rollout map is
# asked for at every click, so its limit is the lowest (about 4 s on an idle VM by issue #12's rate).
DEFAULT_BUDGETS: dict[Request, Budget] = {
    "entropy": Budget(seconds=35.0, gigabytes=2.0),
    "rollout": Budget(seconds=16.0, gigabytes=2.0),
    "relevance": Budget(seconds=35.0, gigabytes=2.0),
}

_WHAT = {
    "entropy": "the entropy of every encoder layer",
    "rollout": "a rollout map",
    "relevance": "a relevance map",
}
_ALTERNATIVE = {
    "entropy": "",
    "rollout": ", or show one layer (or the mean of the layers) instead of rollout",
    "relevance": ", or show the raw attention instead of relevance",
}


def _check_request(request: str) -> _Coefficients:
    if request not in COSTS:
        raise ValueError(f"unknown analysis {request!r}: one of {', '.join(COSTS)}")
    return COSTS[request]  # type: ignore[index]


def _scale(c: _Coefficients, layers: int, heads: int) -> float:
    return layers / _REFERENCE_LAYERS * heads / _REFERENCE_HEADS if c.per_layer else 1.0


def estimate(request: Request, tokens: int, *, layers: int = 6, heads: int = 8) -> Cost:
    """What `request` costs at `tokens` feature cells for an encoder of `layers` x `heads`."""
    c = _check_request(request)
    if tokens < 0 or layers < 1 or heads < 1:
        raise ValueError(f"tokens >= 0, layers >= 1 and heads >= 1; got {tokens}, {layers}, {heads}")
    scale, n = _scale(c, layers, heads), float(tokens)
    seconds = c.seconds_fixed + c.seconds_per_token2 * scale * n * n
    return Cost(seconds, c.gb_fixed + c.gb_per_token * scale * n + c.gb_per_token2 * n * n)


def max_tokens(request: Request, budget: Budget | None = None, *, layers: int = 6, heads: int = 8) -> int:
    """The most feature cells at which `request` fits `budget` (0 if not even the fixed cost fits)."""
    c = _check_request(request)
    budget = budget or DEFAULT_BUDGETS[request]
    scale = _scale(c, layers, heads)
    if budget.seconds < c.seconds_fixed or budget.gigabytes < c.gb_fixed:
        return 0
    limits = [math.sqrt((budget.seconds - c.seconds_fixed) / (c.seconds_per_token2 * scale))]
    a, b, room = c.gb_per_token2, c.gb_per_token * scale, budget.gigabytes - c.gb_fixed  # a n^2 + b n <= room
    if a > 0:
        limits.append((-b + math.sqrt(b * b + 4 * a * room)) / (2 * a))
    elif b > 0:
        limits.append(room / b)
    n = int(min(limits))
    while n > 0 and not _fits(estimate(request, n, layers=layers, heads=heads), budget):  # float rounding
        n -= 1
    return n


def _fits(cost: Cost, budget: Budget) -> bool:
    return cost.seconds <= budget.seconds and cost.gigabytes <= budget.gigabytes


@dataclass(frozen=True)
class Verdict:
    ok: bool
    cost: Cost
    max_tokens: int  # the most feature cells within the budget
    message: str | None  # why not, and what to lower; None when ok
    suggested_sizes: tuple[int, int] | None = None  # (min_size, max_size) that give about max_tokens


def check_budget(
    request: Request,
    tokens: int,
    budget: Budget | None = None,
    *,
    layers: int = 6,
    heads: int = 8,
    min_size: int | None = None,
    max_size: int | None = None,
) -> Verdict:
    """Whether `request` at `tokens` feature cells fits `budget` (default: `DEFAULT_BUDGETS`).

    `min_size` / `max_size`: the preprocessing sizes that gave `tokens` (the shorter and the longest
    allowed side); when given, a refusal suggests sizes scaled down so that the cells fit (the cells
    scale with the square of the sizes).
    """
    budget = budget or DEFAULT_BUDGETS[request]
    cost = estimate(request, tokens, layers=layers, heads=heads)
    most = max_tokens(request, budget, layers=layers, heads=heads)
    if _fits(cost, budget):
        return Verdict(True, cost, most, None)
    over = []
    if cost.seconds > budget.seconds:
        over.append(f"about {cost.seconds:.0f} s (the limit is {budget.seconds:g} s)")
    if cost.gigabytes > budget.gigabytes:
        over.append(f"about {cost.gigabytes:.1f} GB of memory (the limit is {budget.gigabytes:g} GB)")
    message = f"{_WHAT[request]} at {tokens:,} feature cells would take {' and '.join(over)}. "
    suggested = None
    if most == 0:
        message += "It does not fit this server's limits at any size"
    else:
        message += f"At most {most:,} cells fit: "
        if min_size and max_size:
            factor = math.sqrt(most / tokens)
            suggested = (max(1, math.floor(min_size * factor)), max(1, math.floor(max_size * factor)))
            sizes = f"{suggested[0]}/{suggested[1]} (now {min_size}/{max_size})"
            message += f"lower the preprocessing sizes (shorter/longer side) to about {sizes}"
        else:
            message += "lower the preprocessing sizes (shorter and longer side)"
    message += _ALTERNATIVE[request] + "."
    return Verdict(False, cost, most, message, suggested)
