"""Exact speed-ups for inference: frozen batch norm folded into the convolutions before it, each
ReLU (and each residual addition) fused into the convolution before it, and the backbone run in
channels-last memory format.

A frozen (or eval-mode) batch norm after a bias-free convolution is an affine map per channel,
y = s * conv(x) + t, so the pair equals one convolution with weights s * W and bias t. The folded
model is a new module (the loaded model, whose parameter names are the official ones, is left
as it is); its transformer and heads are the same objects' copies, so the capture layer and every
analysis treat it exactly like the original.

The fusions use oneDNN's post-ops (`torch.ops.mkldnn._convolution_pointwise`, what torch.compile
emits on CPUs): the convolution writes max(conv(x) + b, 0), or max(conv(x) + b + shortcut, 0), in
one pass over its output instead of two or three. The same operations; only the order of the
last additions may differ, so results agree to float rounding (tests/test_fast.py). Where those
kernels do not apply (a GPU, autocast, gradients) the fused modules run the plain convolution,
ReLU and addition.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck
from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["ConvReLU", "FusedBottleneck", "fast_dtype", "fold_batchnorm", "fuse_relu", "optimize_for_inference"]

_POINTWISE = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)  # private in torch: optional


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


def fusable(x: Tensor) -> bool:
    """Whether oneDNN's fused convolutions can run on `x`: float32 on the CPU, no autocast, no autograd."""
    return (
        _POINTWISE is not None
        and torch.backends.mkldnn.is_available()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and x.requires_grad)
    )


def _conv(conv: nn.Conv2d, x: Tensor, post_op: str, shortcut: Tensor | None = None) -> Tensor:
    """conv(x) followed by `post_op` ("relu" or "none"), after adding `shortcut` if given, in one call."""
    args = (conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
    if shortcut is None:
        return _POINTWISE(x, *args, post_op, [], "")
    return _POINTWISE.binary(x, shortcut, *args, "add", None, post_op, [], "")


class ConvReLU(nn.Module):
    """relu(conv(x)), one fused call where oneDNN applies."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        if self.conv.padding_mode == "zeros" and fusable(x):
            return _conv(self.conv, x, "relu")
        return F.relu(self.conv(x))


class FusedBottleneck(nn.Module):
    """A torchvision `Bottleneck` whose batch norms are folded: three fused convolutions, the last
    one also adding the shortcut and applying the final ReLU. [B, C_in, H, W] -> [B, C_out, H/s, W/s]."""

    def __init__(self, block: Bottleneck):
        super().__init__()
        if not all(isinstance(getattr(block, f"bn{i}"), nn.Identity) for i in "123"):
            raise ValueError("fold the Bottleneck's batch norms before fusing it")
        self.conv1, self.conv2, self.conv3 = block.conv1, block.conv2, block.conv3
        self.downsample = block.downsample  # None, or Sequential(conv, Identity) once folded

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        if not fusable(x):
            out = F.relu(self.conv2(F.relu(self.conv1(x))))
            return F.relu(self.conv3(out) + shortcut)
        out = _conv(self.conv2, _conv(self.conv1, x, "relu"), "relu")
        return _conv(self.conv3, out, "relu", shortcut=shortcut)


def fuse_relu(module: nn.Module) -> int:
    """Fuse, in place, each ReLU into the folded convolution before it: torchvision Bottlenecks, a
    ResNet stem (conv1, Identity, relu, maxpool), and conv, [Identity], ReLU runs in a Sequential.
    Call after `fold_batchnorm`. Returns how many convolutions now carry their ReLU."""
    fused = 0
    for parent in list(module.modules()):
        if isinstance(parent, Bottleneck):  # replaced whole by its parent's pass
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, Bottleneck) and all(isinstance(getattr(child, f"bn{i}"), nn.Identity) for i in "123"):
                setattr(parent, name, FusedBottleneck(child))
                fused += 3
        stem = [getattr(parent, n, None) for n in ("conv1", "bn1", "relu", "maxpool")]
        if isinstance(stem[0], nn.Conv2d) and isinstance(stem[1], nn.Identity) and isinstance(stem[2], nn.ReLU):
            parent.conv1, parent.relu = ConvReLU(stem[0]), nn.Identity()  # conv1 -> bn1 -> relu, as ResNet runs it
            fused += 1
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            for i, name in enumerate(names):
                if not isinstance(parent._modules[name], nn.Conv2d):
                    continue
                j = i + 1
                while j < len(names) and isinstance(parent._modules[names[j]], nn.Identity):
                    j += 1
                if j < len(names) and isinstance(parent._modules[names[j]], nn.ReLU):
                    parent._modules[name] = ConvReLU(parent._modules[name])
                    parent._modules[names[j]] = nn.Identity()
                    fused += 1
    return fused


def optimize_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """A frozen, eval-mode copy of `model` with batch norm folded into the backbone's convolutions,
    ReLUs and residual additions fused into them, and the backbone in channels-last format.
    Outputs equal the original's to float rounding."""
    fast = copy.deepcopy(model).eval().requires_grad_(False)
    n = fold_batchnorm(fast.backbone)
    if n == 0:
        raise ValueError(f"{type(model).__name__}: no batch norm after a convolution to fold")
    fuse_relu(fast.backbone)
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
