"""Evaluation CLI and metrics of `detr_shapes` on held-out synthetic scenes: the model's quality gates.

    python -m detr_core.training.evaluate [--checkpoint FILE] [--scenes 500] [--threshold T] [--attention]

Each query gives one detection (its most probable real class, scored by that softmax probability, as
`postprocess` does). AP50 is the mean over classes of the all-point interpolated average precision
(VOC 2010+ / COCO style) with a match at IoU >= 0.5; every ground-truth box matches at most once, so
duplicates are false positives. Precision and recall "at the threshold" count detections scored above
it. `--attention` also estimates the attention gates (see `attention_ratios`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..analysis.attention import decoder_map, encoder_map
from ..analysis.capture import capture
from ..analysis.stats import box_share
from ..box_ops import box_cxcywh_to_xyxy, box_iou
from ..io.image import preprocess
from ..models.zoo import MODELS, SHAPES_MODEL, load_model
from .synthetic import HELDOUT_FIRST_SEED, make_batch, make_scene

__all__ = ["attention_ratios", "average_precision", "evaluate", "main", "predict"]

MODEL_NAME = SHAPES_MODEL
IOU_MATCH = 0.5


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch: int = 50) -> tuple[Tensor, Tensor, Tensor]:
    """images [N, 3, H, W] -> scores [N, Q], labels [N, Q], boxes [N, Q, 4] (normalized xyxy)."""
    scores, labels, boxes = [], [], []
    for chunk in images.split(batch):
        out = model(chunk)
        probs = out["pred_logits"].float().softmax(-1)[..., :-1]  # [b, Q, K]: "no object" dropped
        s, lab = probs.max(-1)  # [b, Q]
        scores.append(s)
        labels.append(lab)
        boxes.append(box_cxcywh_to_xyxy(out["pred_boxes"].float()))
    return torch.cat(scores), torch.cat(labels), torch.cat(boxes)


def _match(scores: Tensor, labels: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor) -> np.ndarray:
    """One image: which detections (scores [D], labels [D], boxes [D, 4] xyxy) are true positives [D] bool.

    Greedy in order of decreasing score: a detection is a true positive when its best-overlapping
    unmatched ground-truth box of the same class has IoU >= 0.5.
    """
    tp = np.zeros(len(scores), dtype=bool)
    if len(gt_labels) == 0 or len(scores) == 0:
        return tp
    iou = box_iou(boxes, box_cxcywh_to_xyxy(gt_boxes))[0].numpy()  # [D, T]
    iou[labels.numpy()[:, None] != gt_labels.numpy()[None, :]] = -1.0
    taken = np.zeros(len(gt_labels), dtype=bool)
    for d in np.argsort(-scores.numpy(), kind="stable"):
        candidates = np.where(taken, -1.0, iou[d])
        t = int(candidates.argmax())
        if candidates[t] >= IOU_MATCH:
            tp[d], taken[t] = True, True
    return tp


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    """All-point interpolated AP: the area under the precision envelope of the precision/recall curve."""
    if num_gt == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = tp[order].astype(np.float64)
    cum_tp = np.cumsum(hits)
    recall = cum_tp / num_gt
    precision = cum_tp / np.arange(1, len(hits) + 1)
    recall = np.concatenate(([0.0], recall, [1.0]))
    precision = np.concatenate(([1.0], precision, [0.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope: best precision at >= this recall
    steps = np.nonzero(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def evaluate(
    model: nn.Module,
    count: int = 500,
    first_seed: int = HELDOUT_FIRST_SEED,
    size: int = 128,
    threshold: float = 0.9,
) -> dict[str, float]:
    """AP50, and precision / recall of the detections scored above `threshold`, on `count` held-out scenes."""
    was_training = model.training
    model.eval()
    images, targets = make_batch(range(first_seed, first_seed + count), size)
    scores, labels, boxes = predict(model, images)  # [N, Q], [N, Q], [N, Q, 4]
    model.train(was_training)
    num_classes = len(MODELS[MODEL_NAME].class_names)
    per_class: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {c: [] for c in range(num_classes)}
    gt_per_class = np.zeros(num_classes, dtype=np.int64)
    tp_thr = det_thr = 0
    for i, target in enumerate(targets):
        gt_per_class += np.bincount(target["labels"].numpy(), minlength=num_classes)
        tp = _match(scores[i], labels[i], boxes[i], target["labels"], target["boxes"])
        for c in range(num_classes):
            sel = (labels[i] == c).numpy()
            per_class[c].append((scores[i].numpy()[sel], tp[sel]))
        keep = (scores[i] > threshold).numpy()
        tp_keep = _match(scores[i][keep], labels[i][keep], boxes[i][keep], target["labels"], target["boxes"])
        tp_thr += int(tp_keep.sum())
        det_thr += int(keep.sum())
    aps = []
    for c in range(num_classes):
        s = np.concatenate([x for x, _ in per_class[c]]) if per_class[c] else np.zeros(0)
        t = np.concatenate([y for _, y in per_class[c]]) if per_class[c] else np.zeros(0, dtype=bool)
        if gt_per_class[c]:
            aps.append(average_precision(s, t, int(gt_per_class[c])))
    num_gt = int(gt_per_class.sum())
    return {
        "scenes": count,
        "objects": num_gt,
        "ap50": round(float(np.mean(aps)), 4),
        "threshold": threshold,
        "precision": round(tp_thr / det_thr, 4) if det_thr else 0.0,
        "recall": round(tp_thr / num_gt, 4) if num_gt else 0.0,
        "detections": det_thr,
    }


def attention_ratios(
    model: nn.Module, count: int = 100, first_seed: int = HELDOUT_FIRST_SEED, size: int = 128, threshold: float = 0.9
) -> dict[str, float]:
    """The attention gates, measured through the product's own path (capture -> maps -> box_share),
    over `count` held-out scenes:

    - decoder: for each detection above `threshold` matched to an object (same class, IoU >= 0.5),
      the share of its last-layer, head-mean cross-attention inside its box, over chance (the box's
      share of the image); the mean, and the fraction of detections at >= 3x;
    - encoder: for each object, the share of the last encoder layer's head-mean self-attention at the
      object's centre ("where this location looks") inside the object's box, over chance.
    """
    spec = MODELS[MODEL_NAME]
    dec_ratios, enc_ratios = [], []
    for seed in range(first_seed, first_seed + count):
        image, target = make_scene(seed, size)
        analysis = capture(model, preprocess(image, model.stride, spec.min_size, spec.max_size), spec.class_names)
        g = analysis.geometry
        gt = box_cxcywh_to_xyxy(target["boxes"]) * torch.tensor([g.orig_w, g.orig_h, g.orig_w, g.orig_h])  # [T, 4]
        for box in gt.tolist():
            m = encoder_map(analysis, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, layer=-1)
            share, chance = box_share(m.map, g, tuple(box))
            enc_ratios.append(share / chance)
        detections = analysis.detections(threshold)
        if not detections:
            continue
        iou = box_iou(torch.tensor([d.box for d in detections]), gt)[0]  # [D, T]
        for det, row in zip(detections, iou):
            t = int(row.argmax())
            if row[t] >= IOU_MATCH and det.class_id == int(target["labels"][t]):
                share, chance = box_share(decoder_map(analysis, det.query), g, det.box)
                dec_ratios.append(share / chance)
    dec, enc = np.array(dec_ratios), np.array(enc_ratios)
    return {
        "decoder_inside_box_x_chance": round(float(dec.mean()), 3) if dec.size else float("nan"),
        "decoder_at_3x_fraction": round(float((dec >= 3).mean()), 3) if dec.size else float("nan"),
        "encoder_centre_inside_box_x_chance": round(float(enc.mean()), 3) if enc.size else float("nan"),
        "matched_detections": int(dec.size),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m detr_core.training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="a state dict (default: the bundled detr_shapes checkpoint)")
    p.add_argument("--scenes", type=int, default=500)
    p.add_argument("--first-seed", type=int, default=HELDOUT_FIRST_SEED)
    p.add_argument("--threshold", type=float, default=MODELS[MODEL_NAME].default_threshold)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--attention", action="store_true", help="also estimate the attention gates")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(MODEL_NAME, checkpoint=args.checkpoint, device="cpu")  # hash and key checks included
    start = time.monotonic()
    metrics = evaluate(model, args.scenes, args.first_seed, threshold=args.threshold)
    if args.attention:
        metrics.update(attention_ratios(model, min(args.scenes, 200), args.first_seed, threshold=args.threshold))
    metrics["seconds"] = round(time.monotonic() - start, 1)
    gates = {
        "ap50 >= 0.97": metrics["ap50"] >= 0.97,
        "precision >= 0.93": metrics["precision"] >= 0.93,
        "recall >= 0.95": metrics["recall"] >= 0.95,
    }
    if args.attention:
        gates["decoder attention in box >= 3x chance (mean)"] = metrics["decoder_inside_box_x_chance"] >= 3
        gates["decoder attention in box >= 3x chance (80% of detections)"] = metrics["decoder_at_3x_fraction"] >= 0.8
        gates["encoder attention at object centre in box >= 1.5x chance"] = (
            metrics["encoder_centre_inside_box_x_chance"] >= 1.5
        )
    print(json.dumps(metrics, indent=2))
    for gate, ok in gates.items():
        print(f"{'PASS' if ok else 'FAIL'}  {gate}")
    return 0 if all(gates.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
