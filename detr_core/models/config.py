"""Model configurations: one frozen dataclass per model family.

`DETRConfig` describes the official DETR architecture (Carion et al., 2020) and any smaller variant
built from the same classes; `DETRDemoConfig` describes the minimal `DETRdemo` of the paper's
appendix. Every size and switch of a model is read from here, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DETRConfig", "DETRDemoConfig", "SmallBackboneConfig"]


@dataclass(frozen=True)
class SmallBackboneConfig:
    """A small conv + BN + ReLU stack used by the project's own trained model."""

    channels: tuple[int, ...] = (24, 48, 48, 96, 96, 192, 192)  # one conv per entry
    strides: tuple[int, ...] = (2, 2, 1, 2, 1, 2, 1)  # product = the backbone's stride


@dataclass(frozen=True)
class DETRConfig:
    """The official DETR architecture and smaller variants of it."""

    backbone: str = "resnet50"  # "resnet50", "resnet101" or "small"
    dilation: bool = False  # DC5: dilate the last ResNet stage (stride 16 instead of 32)
    small_backbone: SmallBackboneConfig | None = None  # used when backbone == "small"
    hidden_dim: int = 256  # d_model of the transformer (C)
    nheads: int = 8  # attention heads (nh)
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1  # only active in training
    num_queries: int = 100  # Q, the object queries
    num_classes: int = 91  # the class head has num_classes + 1 outputs (the last is "no object")
    pos_temperature: float = 10000.0  # sine position encoding
    position_embedding: str = "sine"  # "sine" (normalized, no parameters) or "learned" (50 rows x 50 columns)
    pre_norm: bool = False  # the official transformer's normalize_before: LayerNorm before each sublayer


@dataclass(frozen=True)
class DETRDemoConfig:
    """The minimal DETR of the paper's appendix (ResNet-50 + nn.Transformer + linear heads)."""

    num_classes: int = 91
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    num_queries: int = 100
    max_cells: int = 50  # learned row/column embeddings: the feature map may be at most 50x50
