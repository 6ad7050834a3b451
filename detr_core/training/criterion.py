"""DETR's set loss: Hungarian matching, then classification and box losses on the matched pairs.

loss = CE(all queries; "no object", the last class, weighted eos_coef for unmatched queries)
     + w_bbox * L1(matched boxes) + w_giou * (1 - GIoU(matched boxes)),
the box terms summed and divided by the number of objects in the batch. With `aux_outputs` (the
decoder's earlier layers) the same loss is added for every layer, each matched on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from .matcher import HungarianMatcher

__all__ = ["SetCriterion"]


class SetCriterion(nn.Module):
    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher | None = None,
        eos_coef: float = 0.1,
        weight_ce: float = 1.0,
        weight_bbox: float = 5.0,
        weight_giou: float = 2.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher()
        self.weight_ce, self.weight_bbox, self.weight_giou = weight_ce, weight_bbox, weight_giou
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def layer_losses(self, outputs: dict, targets: list[dict[str, Tensor]], num_boxes: float) -> dict[str, Tensor]:
        """Losses of one decoder layer: {"ce", "l1", "giou"} (unweighted)."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]  # [B, Q, K+1], [B, Q, 4]
        matches = self.matcher(outputs, targets)
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)])  # [N]
        query_idx = torch.cat([q for q, _ in matches])  # [N]
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        pairs = list(zip(targets, matches, strict=True))
        target_classes[batch_idx, query_idx] = torch.cat([t["labels"][j] for t, (_, j) in pairs])
        ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)  # weighted mean
        src = boxes[batch_idx, query_idx]  # [N, 4]
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in pairs]).to(src)  # [N, 4]
        l1 = F.l1_loss(src, tgt, reduction="sum") / num_boxes
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt)))  # [N]
        return {"ce": ce, "l1": l1, "giou": (1 - giou).sum() / num_boxes}

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> tuple[Tensor, dict[str, float]]:
        """Returns the weighted total over all layers and the last layer's unweighted parts (for logging)."""
        num_boxes = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
        layers = [outputs, *outputs.get("aux_outputs", [])]
        total = outputs["pred_logits"].new_zeros(())
        parts: dict[str, float] = {}
        for i, layer in enumerate(layers):
            losses = self.layer_losses(layer, targets, num_boxes)
            total = total + self.weight_ce * losses["ce"] + self.weight_bbox * losses["l1"]
            total = total + self.weight_giou * losses["giou"]
            if i == 0:
                parts = {k: float(v.detach()) for k, v in losses.items()}
        return total, parts
