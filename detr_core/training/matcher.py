"""The Hungarian matcher: a one-to-one assignment of predictions to ground-truth objects per image.

The cost of giving query q the object t is
    w_class * (-p_q(class_t)) + w_bbox * L1(box_q, box_t) + w_giou * (-GIoU(box_q, box_t)),
with boxes as normalized cxcywh; `scipy.optimize.linear_sum_assignment` finds the cheapest matching.
Queries left unmatched are trained to predict "no object".
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..box_ops import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher", "assign"]


def assign(cost: Tensor) -> tuple[Tensor, Tensor]:
    """A cost matrix [Q, T] (Q >= T) -> (query indices [T], target indices [T]) of the cheapest matching."""
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


class HungarianMatcher:
    """Matches DETR outputs to targets; weights as in the paper (class 1, L1 5, GIoU 2)."""

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    def cost(self, logits: Tensor, boxes: Tensor, target: dict[str, Tensor]) -> Tensor:
        """One image: logits [Q, K+1], boxes [Q, 4], target with labels [T], boxes [T, 4] -> cost [Q, T]."""
        prob = logits.softmax(-1)  # [Q, K+1]
        cost_class = -prob[:, target["labels"]]  # [Q, T]
        cost_bbox = torch.cdist(boxes, target["boxes"], p=1)  # [Q, T]
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target["boxes"]))  # [Q, T]
        return self.cost_class * cost_class + self.cost_bbox * cost_bbox + self.cost_giou * cost_giou

    @torch.no_grad()
    def __call__(self, outputs: dict, targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """outputs {"pred_logits": [B, Q, K+1], "pred_boxes": [B, Q, 4]} -> per image (query idx, target idx)."""
        logits, boxes = outputs["pred_logits"].float(), outputs["pred_boxes"].float()
        matches = []
        for b, target in enumerate(targets):
            if len(target["labels"]) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                matches.append((empty, empty))
                continue
            matches.append(assign(self.cost(logits[b], boxes[b], target)))
        return matches
