"""Box arithmetic, the Hungarian matcher and DETR's set loss, on hand-made cases with known answers."""

from __future__ import annotations

import pytest
import torch

from detr_core.box_ops import box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, generalized_box_iou
from detr_core.training.criterion import SetCriterion
from detr_core.training.matcher import HungarianMatcher, assign


def test_box_conversions_round_trip():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.05, 0.1]])
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    torch.testing.assert_close(xyxy[0], torch.tensor([0.4, 0.3, 0.6, 0.7]))
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)
    torch.testing.assert_close(box_area(xyxy), torch.tensor([0.08, 0.005]))


def test_iou_and_giou_on_hand_made_boxes():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [3.0, 0.0, 4.0, 1.0], [0.5, 0.5, 1.5, 1.5]])
    iou, union = box_iou(a, b)
    torch.testing.assert_close(iou, torch.tensor([[1.0, 1 / 7, 0.0, 0.25]]))
    torch.testing.assert_close(union, torch.tensor([[4.0, 7.0, 5.0, 4.0]]))
    giou = generalized_box_iou(a, b)
    # overlap: enclosing box 3x3 = 9, union 7; disjoint: enclosing 4x2 = 8, union 5; nested: enclosing = a
    torch.testing.assert_close(giou, torch.tensor([[1.0, 1 / 7 - 2 / 9, -3 / 8, 0.25]]))
    assert giou.shape == (1, 4) and (giou <= iou + 1e-6).all()


def test_giou_tends_to_minus_one_for_far_apart_boxes():
    a = torch.tensor([[0.0, 0.0, 0.01, 0.01]])
    b = torch.tensor([[0.99, 0.99, 1.0, 1.0]])
    assert generalized_box_iou(a, b).item() < -0.99


def test_assignment_finds_the_known_optimum():
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0], [9.0, 9.0, 9.0]])
    rows, cols = assign(cost)
    # the greedy choice (row 1 -> col 1, cost 0) is not optimal: 1 + 2 + 2 = 5 beats 0 + 3 + 3 = 6
    assert dict(zip(rows.tolist(), cols.tolist(), strict=True)) == {0: 1, 1: 0, 2: 2}
    assert cost[rows, cols].sum().item() == 5.0


def _outputs(boxes: torch.Tensor, logits: torch.Tensor) -> dict:
    return {"pred_logits": logits[None], "pred_boxes": boxes[None]}


def test_matcher_pairs_each_object_with_the_query_that_predicts_it():
    target = {"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2]])}
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2], [0.9, 0.1, 0.1, 0.1], [0.2, 0.2, 0.1, 0.1]])
    logits = torch.zeros(4, 5)
    logits[1, 0] = logits[3, 2] = 5.0
    [(queries, objects)] = HungarianMatcher()(_outputs(boxes, logits), [target])
    assert dict(zip(objects.tolist(), queries.tolist(), strict=True)) == {0: 3, 1: 1}


def _perfect(target: dict, num_queries: int = 6, num_classes: int = 4) -> dict:
    logits = torch.full((num_queries, num_classes + 1), -30.0)
    logits[:, -1] = 30.0  # "no object" everywhere ...
    boxes = torch.full((num_queries, 4), 0.5)
    for q, (label, box) in enumerate(zip(target["labels"], target["boxes"], strict=True)):
        logits[q] = -30.0
        logits[q, label] = 30.0  # ... but exact predictions of the objects
        boxes[q] = box
    return _outputs(boxes, logits)


TARGET = {"labels": torch.tensor([1, 3, 0]),
          "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.1], [0.7, 0.7, 0.15, 0.3], [0.2, 0.8, 0.1, 0.1]])}  # fmt: skip


def test_loss_is_zero_for_perfect_predictions():
    loss, parts = SetCriterion(num_classes=4)(_perfect(TARGET), [TARGET])
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    assert parts == pytest.approx({"ce": 0.0, "l1": 0.0, "giou": 0.0}, abs=1e-5)


def test_loss_counts_every_decoder_layer():
    outputs = _perfect(TARGET)
    outputs["pred_boxes"] = outputs["pred_boxes"].clone()
    outputs["pred_boxes"][0, 0, 0] += 0.05  # one box 0.05 off in x
    criterion = SetCriterion(num_classes=4)
    single, parts = criterion(outputs, [TARGET])
    assert parts["l1"] == pytest.approx(0.05 / 3, rel=1e-4)  # normalized by the 3 objects
    with_aux = dict(outputs, aux_outputs=[dict(outputs), dict(outputs)])
    total, _ = criterion(with_aux, [TARGET])
    assert total.item() == pytest.approx(3 * single.item(), rel=1e-5)


def test_no_object_is_down_weighted():
    """An unmatched query that claims an object costs less than a matched query that misses its class."""
    criterion = SetCriterion(num_classes=4, eos_coef=0.1)
    false_positive = _perfect(TARGET)
    false_positive["pred_logits"] = false_positive["pred_logits"].clone()
    false_positive["pred_logits"][0, 5] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0])
    miss = _perfect(TARGET)
    miss["pred_logits"] = miss["pred_logits"].clone()
    miss["pred_logits"][0, 0] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0])
    assert criterion(false_positive, [TARGET])[0] < criterion(miss, [TARGET])[0]


def test_loss_decreases_when_optimized():
    torch.manual_seed(0)
    logits = torch.zeros(1, 6, 5, requires_grad=True)
    raw_boxes = torch.zeros(1, 6, 4, requires_grad=True)
    optimizer = torch.optim.Adam([logits, raw_boxes], lr=0.05)
    criterion = SetCriterion(num_classes=4)
    losses = []
    for _ in range(150):
        loss, _ = criterion({"pred_logits": logits, "pred_boxes": raw_boxes.sigmoid()}, [TARGET])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
