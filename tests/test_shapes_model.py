"""The bundled `detr_shapes` checkpoint: where it is, that its name carries its hash, and its quality gates.

The gates are those `python -m detr_core.training.evaluate` prints for 500 held-out scenes, checked here on
the first 100 of them (scene seeds the training never used).
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from detr_core import load_model
from detr_core.models.weights import BUNDLED_DIR
from detr_core.models.zoo import MODELS
from detr_core.training.evaluate import attention_ratios, evaluate
from detr_core.training.synthetic import HELDOUT_FIRST_SEED, make_batch

SPEC = MODELS["detr_shapes"]
CHECKPOINT = BUNDLED_DIR / SPEC.checkpoint.filename
THRESHOLD = SPEC.default_threshold


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_model("detr_shapes", checkpoint=CHECKPOINT, device="cpu")


@pytest.fixture(scope="module")
def metrics(model) -> dict:
    return evaluate(model, count=100, first_seed=HELDOUT_FIRST_SEED, threshold=THRESHOLD)


def test_checkpoint_is_bundled_small_and_named_by_its_hash():
    assert CHECKPOINT.is_file(), f"{CHECKPOINT} is missing"
    assert CHECKPOINT.stat().st_size <= 10 * 1024 * 1024
    assert hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest().startswith(SPEC.checkpoint.sha256_prefix)
    assert len(SPEC.checkpoint.sha256_prefix) == 8 and SPEC.checkpoint.sha256_prefix != "00000000"
    assert SPEC.bundled and SPEC.checkpoint.url is None


def test_checkpoint_is_a_plain_state_dict_of_the_registered_architecture():
    state_dict = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    if SPEC.checkpoint.state_dict_key is not None:
        state_dict = state_dict[SPEC.checkpoint.state_dict_key]
    dtypes = {v.dtype for v in state_dict.values() if v.is_floating_point()}
    assert dtypes == ({torch.float16} if SPEC.checkpoint.half else {torch.float32})
    from detr_core import build_model

    assert set(state_dict) == set(build_model("detr_shapes").state_dict())


def test_zoo_loads_the_bundled_checkpoint(model):
    from detr_core import load_model

    loaded = load_model("detr_shapes", device="cpu")
    images, _ = make_batch([HELDOUT_FIRST_SEED, HELDOUT_FIRST_SEED + 1])
    with torch.no_grad():
        expected, got = model(images), loaded(images)
    torch.testing.assert_close(got["pred_logits"], expected["pred_logits"])
    torch.testing.assert_close(got["pred_boxes"], expected["pred_boxes"])


def test_ap50_gate(metrics):
    assert metrics["ap50"] >= 0.97, metrics


def test_precision_and_recall_at_the_default_threshold(metrics):
    assert metrics["precision"] >= 0.93, metrics
    assert metrics["recall"] >= 0.95, metrics


def test_attention_looks_at_the_objects(model):
    """The lead's attention gates, estimated by recomputing the last layers' attention weights."""
    ratios = attention_ratios(model, count=50, first_seed=HELDOUT_FIRST_SEED, threshold=THRESHOLD)
    assert ratios["decoder_inside_box_x_chance"] >= 3.0, ratios
    assert ratios["decoder_at_3x_fraction"] >= 0.8, ratios
    assert ratios["matched_detections"] >= 100, ratios
    assert ratios["encoder_centre_inside_box_x_chance"] >= 1.5, ratios
