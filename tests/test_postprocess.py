"""Post-processing on hand-made logits and boxes: scores, thresholds, order and box scaling are exact."""

from __future__ import annotations

import math

import pytest
import torch

from detr_core import COCO_CLASSES, Detection
from detr_core.box_ops import box_cxcywh_to_xyxy
from detr_core.io.image import Geometry
from detr_core.io.postprocess import postprocess

# an original 640x480 photo, resized to 1067x800 for the model (stride 32)
GEOMETRY = Geometry(orig_h=480, orig_w=640, input_h=800, input_w=1067, feat_h=25, feat_w=34, stride=32)
NAMES = ("ellipse", "rectangle", "triangle")  # K = 3; the logits have K + 1 = 4 columns


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


LOGITS = [
    [0.0, 4.0, 0.0, 0.0],  # q0: rectangle, e^4 / (e^4 + 3) = 0.9479
    [0.0, 0.0, 0.0, 6.0],  # q1: "no object" wins: dropped
    [1.0, 0.0, 0.0, 1.2],  # q2: "no object" is the likeliest (0.413), ellipse 0.338: dropped at 0.5
    [0.0, 0.0, 5.0, 0.0],  # q3: triangle, e^5 / (e^5 + 3) = 0.9802
    [0.0, 4.0, 0.0, 0.0],  # q4: the same score as q0
]
BOXES = [  # normalized (cx, cy, w, h); dyadic numbers, so scaled boxes are exact
    [0.5, 0.5, 0.5, 0.25],
    [0.5, 0.5, 1.0, 1.0],
    [0.25, 0.25, 0.5, 0.5],
    [0.75, 0.5, 0.25, 1.0],
    [0.125, 0.875, 0.25, 0.25],
]


def _run(threshold: float = 0.5, **kwargs) -> list[Detection]:
    return postprocess(torch.tensor(LOGITS), torch.tensor(BOXES), GEOMETRY, NAMES, threshold=threshold, **kwargs)


def test_detections_are_sorted_by_score_and_keep_their_query():
    dets = _run()
    assert [d.query for d in dets] == [3, 0, 4]  # best first; equal scores keep query order
    assert [d.class_name for d in dets] == ["triangle", "rectangle", "rectangle"]
    assert [d.class_id for d in dets] == [2, 1, 1]


def test_scores_are_softmax_probabilities_over_all_classes_including_no_object():
    by_query = {d.query: d.score for d in _run()}
    assert by_query[0] == pytest.approx(_softmax(LOGITS[0])[1], rel=1e-6)
    assert by_query[0] == pytest.approx(math.exp(4) / (math.exp(4) + 3), rel=1e-6)
    assert by_query[3] == pytest.approx(math.exp(5) / (math.exp(5) + 3), rel=1e-6)
    assert by_query[4] == by_query[0]


def test_no_object_is_dropped_but_a_strong_real_class_still_counts():
    """As in the official notebook: the "no object" column is removed, the others are not renormalized."""
    ellipse = _softmax(LOGITS[2])[0]  # 0.338, while "no object" has 0.413
    dets = _run(threshold=0.33)
    assert 2 in [d.query for d in dets]
    assert next(d.score for d in dets if d.query == 2) == pytest.approx(ellipse, rel=1e-6)
    assert 2 not in [d.query for d in _run(threshold=0.34)]
    assert 1 not in [d.query for d in _run(threshold=0.01)]  # q1's best real class has 0.0025


def test_the_threshold_is_strictly_greater():
    score = torch.tensor(LOGITS[3]).softmax(-1)[2]  # q3's score, as float32 computes it
    assert 3 not in [d.query for d in _run(threshold=score.item())]
    just_below = torch.nextafter(score, torch.tensor(0.0)).item()  # one float32 step less
    assert 3 in [d.query for d in _run(threshold=just_below)]


def test_boxes_are_scaled_to_the_original_image_not_the_model_input():
    boxes = {d.query: d.box for d in _run()}
    assert boxes[0] == (160.0, 180.0, 480.0, 300.0)  # 640x480, not 1067x800
    assert boxes[3] == (400.0, 0.0, 560.0, 480.0)
    assert boxes[4] == (0.0, 360.0, 160.0, 480.0)
    assert all(isinstance(v, float) for v in boxes[0])


def test_the_default_threshold_is_0_9_and_names_default_to_coco():
    dets = postprocess(torch.tensor(LOGITS), torch.tensor(BOXES), GEOMETRY)
    assert [(d.query, d.class_name) for d in dets] == [(3, "bicycle"), (0, "person"), (4, "person")]  # 0.98, 0.948
    assert [d.query for d in postprocess(torch.tensor(LOGITS), torch.tensor(BOXES), GEOMETRY, threshold=0.95)] == [3]


def test_a_class_without_a_name_gets_a_placeholder():
    dets = postprocess(torch.tensor(LOGITS), torch.tensor(BOXES), GEOMETRY, ("ellipse",), threshold=0.9)
    assert [d.class_name for d in dets] == ["class 2", "class 1", "class 1"]


def test_half_precision_and_grad_tracking_outputs_are_accepted():
    logits = torch.tensor(LOGITS).half().requires_grad_(True)
    boxes = torch.tensor(BOXES).half()
    dets = postprocess(logits, boxes, GEOMETRY, NAMES, threshold=0.5)
    assert [d.query for d in dets] == [3, 0, 4]
    assert dets[1].box == (160.0, 180.0, 480.0, 300.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_outputs_on_the_gpu_are_accepted():
    dets = postprocess(torch.tensor(LOGITS).cuda(), torch.tensor(BOXES).cuda(), GEOMETRY, NAMES, threshold=0.5)
    assert [d.query for d in dets] == [3, 0, 4]


def test_nothing_above_the_threshold_gives_an_empty_list():
    assert postprocess(torch.zeros(5, 4), torch.full((5, 4), 0.5), GEOMETRY, NAMES) == []


def test_a_detection_is_a_plain_dict_for_json():
    d = _run()[0]
    assert d.to_dict() == {"query": 3, "class_id": 2, "class_name": "triangle", "score": d.score,
                           "box_xyxy": [400.0, 0.0, 560.0, 480.0]}  # fmt: skip


def test_box_conversion_from_centre_size_to_corners():
    boxes = torch.tensor([[[0.5, 0.5, 1.0, 1.0], [0.25, 0.75, 0.5, 0.25]]])  # [1, 2, 4]
    expected = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.625, 0.5, 0.875]]])
    assert torch.equal(box_cxcywh_to_xyxy(boxes), expected)


def test_coco_classes_are_the_91_ids_of_the_official_checkpoints():
    assert len(COCO_CLASSES) == 91
    assert [i for i, name in enumerate(COCO_CLASSES) if name == "N/A"] == [0, 12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    assert len(set(COCO_CLASSES) - {"N/A"}) == 80
    known = {1: "person", 3: "car", 17: "cat", 18: "dog", 27: "backpack", 32: "tie", 44: "bottle", 47: "cup",
             50: "spoon", 62: "chair", 67: "dining table", 72: "tv", 84: "book", 90: "toothbrush"}  # fmt: skip
    assert {i: COCO_CLASSES[i] for i in known} == known
