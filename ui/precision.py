"""The precision choice: exact float32 always, and a fast reduced precision only where the device
runs it natively (`detr_core.models.fast.fast_dtype`: float16 on a GPU, bfloat16 on a CPU with
AVX-512 BF16 or AMX). On other CPUs bfloat16 is emulated and slower than float32, so the choice is
absent and `why_absent` says why (the Model page shows it).

The precision is part of the analysis key (ui/caches.AnalysisKey): an exact and a fast analysis of
one image are two cache entries, and the Model page compares them on demand
(detr_core.analysis.agreement). Relevance always runs in float32 (it needs gradients).
"""

from __future__ import annotations

import torch
from torch import nn

from detr_core.models import fast

__all__ = ["EXACT", "FAST", "autocast_dtype", "device_of", "label", "options", "why_absent"]

EXACT, FAST = "exact", "fast"
_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _fast_dtype(device: torch.device) -> torch.dtype | None:
    return fast.fast_dtype(device)  # looked up at each call (the tests replace it both ways)


def options(device: torch.device) -> list[str]:
    """[EXACT], or [EXACT, FAST] where the device runs a reduced precision natively."""
    return [EXACT, FAST] if _fast_dtype(device) is not None else [EXACT]


def autocast_dtype(option: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `option` on `device` (None: float32). FAST where it is not offered: None."""
    return _fast_dtype(device) if option == FAST else None


def label(option: str, device: torch.device) -> str:
    dtype = autocast_dtype(option, device)
    return "exact (float32)" if dtype is None else f"fast ({_NAMES.get(dtype, str(dtype))})"


def why_absent(device: torch.device) -> str | None:
    """Why the fast precision is not offered on `device`, or None when it is."""
    if _fast_dtype(device) is not None:
        return None
    if device.type == "cpu":
        return (
            "Fast precision is not offered on this server: its CPU has no native bfloat16 (AVX-512 BF16 or "
            "AMX), so bfloat16 would be emulated and slower than exact float32. On such a CPU, or a GPU "
            "(float16), the sidebar offers it."
        )
    return f"Fast precision is not offered on {device.type}: no reduced precision runs natively there."
