"""detr_core.analysis.agreement: which differences between a fast and an exact pass matter."""

from __future__ import annotations

import pytest
import torch

from detr_core import MODELS, load_model, preprocess
from detr_core.analysis.agreement import SCORE_MARGIN, compare
from detr_core.analysis.capture import capture
from detr_core.io.postprocess import Detection
from detr_core.models.fast import optimize_for_inference
from detr_core.training.synthetic import make_scene


def det(query: int, score: float, class_id: int = 1, box=(10.0, 10.0, 50.0, 50.0)) -> Detection:
    return Detection(query, class_id, f"class {class_id}", score, box)


def test_the_same_detections_agree_and_report_their_largest_changes():
    exact = [det(0, 0.99), det(3, 0.97, box=(0.0, 0.0, 20.0, 20.0))]
    fast = [det(0, 0.985), det(3, 0.971, box=(0.0, 1.5, 20.0, 20.0))]
    a = compare(exact, fast, 0.9)
    assert a.same and a.compared == 2 and not a.lost and not a.extra and not a.borderline
    assert a.max_score_change == pytest.approx(0.005)
    assert a.max_box_change == pytest.approx(1.5)
    assert a.summary().startswith("fast mode finds the same 2 detections")


def test_a_lost_or_reclassed_detection_clear_of_the_threshold_is_a_difference():
    exact = [det(0, 0.99), det(1, 0.98, class_id=2)]
    fast = [det(1, 0.98, class_id=5)]  # query 0 lost, query 1 another class
    a = compare(exact, fast, 0.9)
    assert not a.same and a.lost == (0, 1)
    assert "loses queries 0, 1" in a.summary()


def test_a_detection_found_only_by_fast_mode_whose_exact_score_is_far_below_is_a_difference():
    a = compare([det(0, 0.99), det(7, 0.2)], [det(0, 0.99), det(7, 0.95), det(9, 0.93)], 0.9)
    assert not a.same and a.extra == (7, 9)  # 7: 0.2 in float32; 9: not even a candidate there


def test_flips_at_the_threshold_are_rounding_not_differences():
    # query 4 is just above in float32 and just below in fast mode; query 5 the other way round
    exact = [det(0, 0.99), det(4, 0.905), det(5, 0.897)]
    fast = [det(0, 0.99), det(4, 0.899), det(5, 0.902)]
    a = compare(exact, fast, 0.9)
    assert a.same and a.borderline == (4, 5) and a.compared == 1
    assert "sit at the threshold" in a.summary()


def test_bfloat16_on_the_bundled_model_agrees_with_float32_on_held_out_scenes():
    """bfloat16 autocast (native where the CPU has it, emulated otherwise: the same roundings) on the
    project's model: `compare` finds no difference that matters on held-out scenes."""
    spec = MODELS["detr_shapes"]
    model = optimize_for_inference(load_model("detr_shapes", device="cpu"))
    threshold = spec.default_threshold
    compared = 0
    for seed in range(20_000_100, 20_000_106):
        prepared = preprocess(make_scene(seed, 256)[0], model.stride, spec.min_size, spec.max_size)
        exact = capture(model, prepared, spec.class_names).detections(threshold - SCORE_MARGIN)
        fast = capture(model, prepared, spec.class_names, autocast_dtype=torch.bfloat16).detections(
            threshold - SCORE_MARGIN
        )
        agreement = compare(exact, fast, threshold)
        assert agreement.same, agreement.summary()
        assert agreement.max_box_change < 0.03 * 256
        compared += agreement.compared
    assert compared >= 6
