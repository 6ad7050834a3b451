"""Backbones: the CNN that turns an image into the feature map the transformer reads.

The official models use a torchvision ResNet with frozen batch norm, wrapped so that its parameter
names are `backbone.0.body.*` (the position encoding is `backbone.1`, without parameters). The
project's own small model uses a short conv stack of stride 16 under the same names.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from .config import DETRConfig, SmallBackboneConfig
from .position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine

__all__ = ["ResNetBody", "SmallCNNBody", "Backbone", "Joiner", "build_backbone"]


class ResNetBody(nn.Module):
    """A torchvision ResNet up to `layer4` (no pooling, no fc): [B, 3, H, W] -> [B, 2048, H/s, W/s]."""

    def __init__(self, resnet: torchvision.models.ResNet):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # [B, 64, H/4, W/4]
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [B, 2048, H/s, W/s]


class SmallCNNBody(nn.Sequential):
    """conv3x3 + BN + ReLU blocks: [B, 3, H, W] -> [B, channels[-1], H/s, W/s]."""

    def __init__(self, cfg: SmallBackboneConfig):
        layers: list[nn.Module] = []
        c_in = 3
        for c_out, stride in zip(cfg.channels, cfg.strides, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        super().__init__(*layers)


class Backbone(nn.Module):
    """Holds the CNN body and the facts the rest of the model needs about it."""

    def __init__(self, body: nn.Module, num_channels: int, stride: int):
        super().__init__()
        self.body = body
        self.num_channels = num_channels  # channels of the feature map (2048 for ResNet)
        self.stride = stride  # input pixels per feature cell (32, or 16 for DC5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Joiner(nn.Sequential):
    """`backbone.0` is the CNN, `backbone.1` the position encoding, as in the official checkpoints."""

    def __init__(self, backbone: Backbone, position_embedding: PositionEmbeddingSine | PositionEmbeddingLearned):
        super().__init__(backbone, position_embedding)
        self.num_channels = backbone.num_channels
        self.stride = backbone.stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self[0](x)  # [B, C_backbone, h, w]
        pos = self[1](features).to(features.dtype)  # [B, hidden_dim, h, w]
        return features, pos


def build_backbone(cfg: DETRConfig) -> Joiner:
    """The backbone + position encoding for a DETR config, with random weights (no download)."""
    if cfg.backbone in ("resnet50", "resnet101"):
        resnet = getattr(torchvision.models, cfg.backbone)(
            weights=None, replace_stride_with_dilation=[False, False, cfg.dilation], norm_layer=FrozenBatchNorm2d
        )
        backbone = Backbone(ResNetBody(resnet), num_channels=2048, stride=16 if cfg.dilation else 32)
    elif cfg.backbone == "small":
        small = cfg.small_backbone or SmallBackboneConfig()
        stride = 1
        for s in small.strides:
            stride *= s
        backbone = Backbone(SmallCNNBody(small), num_channels=small.channels[-1], stride=stride)
    else:
        raise ValueError(f"unknown backbone {cfg.backbone!r}: use 'resnet50', 'resnet101' or 'small'")
    if cfg.position_embedding == "learned":
        return Joiner(backbone, PositionEmbeddingLearned(cfg.hidden_dim // 2))
    if cfg.position_embedding != "sine":
        raise ValueError(f"unknown position embedding {cfg.position_embedding!r}: use 'sine' or 'learned'")
    return Joiner(backbone, PositionEmbeddingSine(cfg.hidden_dim // 2, temperature=cfg.pos_temperature))
