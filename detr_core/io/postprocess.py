"""Post-processing: model outputs -> detections in original-image pixels, and class names.

DETR predicts, for each of its Q queries, logits over K classes + "no object" and a box as
normalized (cx, cy, w, h). A detection keeps its query index, so every box can be traced back to
the query whose attention made it.

The JSON form of a detection, shared by the CLI's detections.json and the dashboard's download
(`Detection.to_dict`): {"query": int, "class_id": int, "class_name": str, "score": float in (0, 1),
"box_xyxy": [x0, y0, x1, y1] in original-image pixels}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..box_ops import box_cxcywh_to_xyxy
from .image import Geometry

__all__ = ["COCO_CLASSES", "COLORS", "Detection", "postprocess"]

# The 91 COCO category ids of the official checkpoints; "N/A" marks ids unused in COCO 2017.
COCO_CLASSES = (
    "N/A", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A",
    "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

# The official notebook's colour cycle (matplotlib's "tab" defaults), as RGB in [0, 1].
COLORS = (
    (0.000, 0.447, 0.741), (0.850, 0.325, 0.098), (0.929, 0.694, 0.125),
    (0.494, 0.184, 0.556), (0.466, 0.674, 0.188), (0.301, 0.745, 0.933),
)  # fmt: skip


@dataclass(frozen=True)
class Detection:
    query: int  # index of the object query that produced it
    class_id: int  # category id (COCO id for the official models)
    class_name: str
    score: float  # softmax probability of the class
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) in original-image pixels

    def to_dict(self) -> dict:
        """The detection as JSON-ready plain values (the schema in this module's docstring)."""
        return {
            "query": self.query,
            "class_id": self.class_id,
            "class_name": self.class_name,
            "score": self.score,
            "box_xyxy": list(self.box),
        }


def postprocess(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    geometry: Geometry,
    class_names: tuple[str, ...] | list[str] = COCO_CLASSES,
    threshold: float = 0.9,
) -> list[Detection]:
    """logits [Q, K+1], boxes [Q, 4] (normalized cxcywh) -> detections above `threshold`, best first.

    The score is the softmax probability with "no object" (the last class) dropped, as in the
    official notebook; boxes are scaled to the *original* image.
    """
    logits, boxes = logits.detach().float().cpu(), boxes.detach().float().cpu()  # the model may run on a GPU
    probs = logits.softmax(-1)[:, :-1]  # [Q, K]
    scores, labels = probs.max(-1)  # [Q], [Q]
    scale = torch.tensor([geometry.orig_w, geometry.orig_h, geometry.orig_w, geometry.orig_h], dtype=torch.float32)
    xyxy = box_cxcywh_to_xyxy(boxes) * scale  # [Q, 4] original pixels
    keep = torch.nonzero(scores > threshold).flatten().tolist()
    keep.sort(key=lambda q: -float(scores[q]))
    return [
        Detection(
            query=q,
            class_id=int(labels[q]),
            class_name=class_names[int(labels[q])] if int(labels[q]) < len(class_names) else f"class {int(labels[q])}",
            score=float(scores[q]),
            box=tuple(float(v) for v in xyxy[q]),
        )
        for q in keep
    ]
