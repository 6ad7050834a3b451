"""`DETRdemo`: the minimal DETR of the paper's appendix, written to load its official checkpoint.

ResNet-50 (ordinary batch norm, no fc) -> 1x1 conv 2048->256 -> `nn.Transformer(256, 8, 6, 6)`
-> linear class and box heads. Position comes from 50 learned row and 50 learned column embeddings,
concatenated per cell and added to the input as `pos + 0.1 * h`; the decoder's input is the 100
learned `query_pos`. The box head needs a sigmoid (boxes in [0, 1]): the trained checkpoint expects it.
"""

from __future__ import annotations

import warnings

import torch
import torchvision
from torch import Tensor, nn

from ..errors import InputSizeError
from .config import DETRDemoConfig

__all__ = ["DETRdemo"]


class DETRdemo(nn.Module):
    stride = 32

    def __init__(self, cfg: DETRDemoConfig = DETRDemoConfig()):
        super().__init__()
        self.cfg = cfg
        self.backbone = torchvision.models.resnet50(weights=None)
        del self.backbone.fc
        self.conv = nn.Conv2d(2048, cfg.hidden_dim, 1)
        with warnings.catch_warnings():  # nn.Transformer warns that nested tensors need batch_first
            warnings.simplefilter("ignore", UserWarning)
            self.transformer = nn.Transformer(cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers)
        self.linear_class = nn.Linear(cfg.hidden_dim, cfg.num_classes + 1)
        self.linear_bbox = nn.Linear(cfg.hidden_dim, 4)
        self.query_pos = nn.Parameter(torch.rand(cfg.num_queries, cfg.hidden_dim))
        self.row_embed = nn.Parameter(torch.rand(cfg.max_cells, cfg.hidden_dim // 2))
        self.col_embed = nn.Parameter(torch.rand(cfg.max_cells, cfg.hidden_dim // 2))

    @property
    def input_projection(self) -> nn.Module:
        return self.conv

    def heads(self, hs: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder outputs [..., Q, C] -> logits [..., Q, K+1] and boxes [..., Q, 4] (cxcywh in [0, 1])."""
        return self.linear_class(hs), self.linear_bbox(hs).sigmoid()

    def forward(self, images: Tensor) -> dict:
        """images [B, 3, H, W] -> {"pred_logits": [B, Q, K+1], "pred_boxes": [B, Q, 4]}."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(images))))
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))  # [B, 2048, h, w]
        h = self.conv(x)  # [B, C, h, w]
        B, _, H, W = h.shape
        if self.cfg.max_cells < H or self.cfg.max_cells < W:
            raise InputSizeError(
                f"DETRdemo's learned position embeddings cover at most {self.cfg.max_cells}x{self.cfg.max_cells} "
                f"feature cells ({self.cfg.max_cells * self.stride} px per side); this input gives {H}x{W}. "
                "Resize the image (the default preprocessing keeps it at most 1333 px)."
            )
        pos = (
            torch.cat(
                [self.col_embed[:W].unsqueeze(0).expand(H, W, -1), self.row_embed[:H].unsqueeze(1).expand(H, W, -1)],
                dim=-1,
            )
            .flatten(0, 1)
            .unsqueeze(1)
        )  # [HW, 1, C]: (column half, row half) per cell, row by row
        src = pos + 0.1 * h.flatten(2).permute(2, 0, 1)  # [HW, B, C]
        tgt = self.query_pos.unsqueeze(1).expand(-1, B, -1)  # [Q, B, C]
        hs = self.transformer(src, tgt).transpose(0, 1)  # [B, Q, C]
        logits, boxes = self.heads(hs)
        return {"pred_logits": logits, "pred_boxes": boxes}
