"""The normalized sine position encoding of DETR (a 2-D extension of "Attention is all you need").

Each feature cell (y, x) gets hidden_dim numbers: num_pos_feats for its row and num_pos_feats for
its column, sin/cos pairs at geometrically spaced frequencies, with coordinates scaled to (0, 2*pi].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InputSizeError

__all__ = ["PositionEmbeddingLearned", "PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """features [B, C, h, w] (only its shape is used); mask [B, h, w], True at padding.

        Returns the encoding [B, 2 * num_pos_feats, h, w] (rows first, then columns), in float32.
        """
        B, _, h, w = features.shape
        if mask is None:
            mask = torch.zeros(B, h, w, dtype=torch.bool, device=features.device)
        not_mask = ~mask
        y = not_mask.cumsum(1, dtype=torch.float32)  # [B, h, w]: 1..h down each column
        x = not_mask.cumsum(2, dtype=torch.float32)  # [B, h, w]: 1..w along each row
        eps = 1e-6
        y = y / (y[:, -1:, :] + eps) * self.scale
        x = x / (x[:, :, -1:] + eps) * self.scale

        i = torch.arange(self.num_pos_feats, dtype=torch.float32, device=features.device)
        dim_t = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x[..., None] / dim_t  # [B, h, w, F]
        pos_y = y[..., None] / dim_t
        # interleave sin of the even channels with cos of the odd ones: [B, h, w, F]
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # [B, 2F, h, w]


class PositionEmbeddingLearned(nn.Module):
    """The official `PositionEmbeddingLearned`: one learned vector per row and per column, at most
    `max_cells` of each (parameters `row_embed`, `col_embed`, [max_cells, num_pos_feats])."""

    def __init__(self, num_pos_feats: int = 128, max_cells: int = 50):
        super().__init__()
        self.row_embed = nn.Embedding(max_cells, num_pos_feats)
        self.col_embed = nn.Embedding(max_cells, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """features [B, C, h, w] (only its shape is used) -> [B, 2 * num_pos_feats, h, w] (columns first, then rows)."""
        B, _, h, w = features.shape
        cells = self.row_embed.num_embeddings
        if h > cells or w > cells:
            raise InputSizeError(
                f"this model's learned position embedding covers at most {cells}x{cells} feature cells; "
                f"this input gives {h}x{w}. Use a smaller image size (shorter/longer side in the preprocessing)."
            )
        x_emb = self.col_embed(torch.arange(w, device=features.device))  # [w, F]
        y_emb = self.row_embed(torch.arange(h, device=features.device))  # [h, F]
        pos = torch.cat([x_emb.unsqueeze(0).expand(h, w, -1), y_emb.unsqueeze(1).expand(h, w, -1)], dim=-1)
        return pos.permute(2, 0, 1).unsqueeze(0).expand(B, -1, -1, -1)  # [B, 2F, h, w]
