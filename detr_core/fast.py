"""Exact speed-ups for inference: frozen batch norm folded into the convolutions before it, and the
backbone run in channels-last memory format.

A frozen (or eval-mode) batch norm after a bias-free convolution is an affine map per channel,
y = s * conv(x) + t, so the pair equals one convolution with weights s * W and bias t. The folded
model is a new module (the loaded model, whose parameter names are the official ones, is left
as it is); its transformer and heads are the same objects' copies, so the capture layer and every
analysis treat it exactly like the original.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["fast_dtype", "fold_batchnorm", "optimize_for_inference"]


def _bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of a frozen or eval-mode batch norm: y = x * scale + shift, per channel."""
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    return scale, bn.bias - bn.running_mean * scale


def _fold(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    scale, shift = _bn_affine(bn)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
        fused.bias.copy_(bias * scale + shift)
    return fused.to(conv.weight.device)


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, FrozenBatchNorm2d) or (isinstance(m, nn.BatchNorm2d) and not m.training)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold, in place, every batch norm that directly follows a convolution among a module's children
    (Sequential order, and torchvision's conv1/bn1, conv2/bn2, conv3/bn3, downsample.0/.1 pairs).
    Returns how many were folded."""
    folded = 0
    for parent in list(module.modules()):
        names = list(parent._modules)
        for i, name in enumerate(names):
            conv = parent._modules[name]
            if not isinstance(conv, nn.Conv2d):
                continue
            partner = name.replace("conv", "bn") if name.startswith("conv") else None
            if partner not in parent._modules and i + 1 < len(names):
                partner = names[i + 1]
            bn = parent._modules.get(partner)
            if bn is not None and _is_bn(bn) and bn.weight.shape[0] == conv.out_channels:
                parent._modules[name] = _fold(conv, bn)
                parent._modules[partner] = nn.Identity()
                folded += 1
    return folded


def optimize_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """A frozen, eval-mode copy of `model` with batch norm folded into the backbone's convolutions
    and the backbone in channels-last format. Outputs equal the original's to float rounding."""
    fast = copy.deepcopy(model).eval().requires_grad_(False)
    n = fold_batchnorm(fast.backbone)
    if n == 0:
        raise ValueError(f"{type(model).__name__}: no batch norm after a convolution to fold")
    if channels_last:
        fast.backbone.to(memory_format=torch.channels_last)
    return fast


def fast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The reduced precision of the optional fast mode on `device`, or None where it is not faster:
    float16 on a GPU, bfloat16 on a CPU with native bfloat16 support (AVX-512 BF16 / AMX). On other
    CPUs bfloat16 is emulated and slower than float32, so the fast mode is not offered there."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None
