"""Box arithmetic for training and evaluation: format conversions, pairwise IoU and generalized IoU.

Boxes are [..., 4] tensors, either (cx, cy, w, h) or (x0, y0, x1, y1), in any one unit. Generalized
IoU (Rezatofighi et al., 2019) subtracts from IoU the share of the smallest enclosing box that
neither box covers, so it is in [-1, 1] and still informative for boxes that do not overlap.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["box_area", "box_cxcywh_to_xyxy", "box_iou", "box_xyxy_to_cxcywh", "generalized_box_iou"]


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x0, y0, x1, y1)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """[..., 4] (x0, y0, x1, y1) -> [..., 4] (cx, cy, w, h)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """[..., 4] xyxy -> [...] areas (0 for degenerate boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """xyxy [N, 4], [M, 4] -> pairwise IoU [N, M] and union areas [N, M]."""
    area1, area2 = box_area(boxes1), box_area(boxes2)  # [N], [M]
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
    wh = (bottom_right - top_left).clamp(min=0)  # [N, M, 2]
    inter = wh[..., 0] * wh[..., 1]  # [N, M]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union.clamp(min=1e-12), union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """xyxy [N, 4], [M, 4] -> pairwise generalized IoU [N, M], in [-1, 1]."""
    iou, union = box_iou(boxes1, boxes2)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])  # the enclosing box, [N, M, 2]
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]  # [N, M]
    return iou - (enclosing - union) / enclosing.clamp(min=1e-12)
