"""The DETR detector: backbone -> 1x1 input projection -> transformer -> class and box heads.

Parts are passed in (a backbone `Joiner` and a `Transformer`); `build_detr` wires them from a
`DETRConfig`. Parameter names are those of the official checkpoints (`input_proj`, `query_embed`,
`class_embed`, `bbox_embed`), so `load_state_dict(official["model"], strict=True)` works.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import Joiner, build_backbone
from .config import DETRConfig
from .transformer import Transformer

__all__ = ["DETR", "MLP", "build_detr"]


class MLP(nn.Module):
    """A plain multi-layer perceptron with ReLU between layers (the box head has 3 layers)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(dims, [*dims[1:], output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DETR(nn.Module):
    def __init__(self, backbone: Joiner, transformer: Transformer, num_classes: int, num_queries: int):
        super().__init__()
        hidden_dim = transformer.d_model
        self.backbone = backbone
        self.transformer = transformer
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)  # the last class is "no object"
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.num_queries = num_queries

    @property
    def stride(self) -> int:
        """Input pixels per feature cell."""
        return self.backbone.stride

    @property
    def input_projection(self) -> nn.Module:
        """The module whose output is the transformer's input features (hooked by the capture layer)."""
        return self.input_proj

    def heads(self, hs: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder outputs [..., Q, C] -> class logits [..., Q, K+1] and boxes [..., Q, 4] (cxcywh in [0, 1])."""
        return self.class_embed(hs), self.bbox_embed(hs).sigmoid()

    def forward(self, images: Tensor) -> dict:
        """images [B, 3, H, W], ImageNet-normalized.

        Returns {"pred_logits": [B, Q, K+1], "pred_boxes": [B, Q, 4]}; while training also
        "aux_outputs", the same for every decoder layer but the last.
        """
        features, pos = self.backbone(images)  # [B, 2048, h, w], [B, C, h, w]
        hs = self.transformer(self.input_proj(features), self.query_embed.weight, pos)[0]  # [L, B, Q, C]
        logits, boxes = self.heads(hs)  # [L, B, Q, K+1], [L, B, Q, 4]
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.training:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out


def build_detr(cfg: DETRConfig) -> DETR:
    """A DETR with random weights for `cfg` (no download)."""
    transformer = Transformer(
        cfg.hidden_dim,
        cfg.nheads,
        cfg.enc_layers,
        cfg.dec_layers,
        cfg.dim_feedforward,
        cfg.dropout,
        normalize_before=cfg.pre_norm,
    )
    return DETR(build_backbone(cfg), transformer, cfg.num_classes, cfg.num_queries)
