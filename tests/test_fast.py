"""Speed-ups keep the results: folded batch norm is exact; the reduced-precision fast mode finds the
same detections above the threshold as float32."""

from __future__ import annotations

import copy

import pytest
import torch

from detr_core import load_image, load_model
from detr_core.analysis.attention import decoder_map
from detr_core.analysis.capture import capture
from detr_core.io.image import preprocess
from detr_core.models.fast import fast_dtype, fold_batchnorm, optimize_for_inference
from detr_core.models.zoo import MODELS
from detr_core.training.synthetic import make_scene


@pytest.mark.parametrize("name", ["detr_resnet50", "detr_resnet50_dc5", "detr_demo", "detr_shapes"])
def test_folding_is_exact(name):
    torch.manual_seed(0)
    model = MODELS[name].builder(MODELS[name].config).eval()
    with torch.no_grad():  # give the batch norms non-trivial statistics, as a trained checkpoint has
        for m in model.modules():
            if hasattr(m, "running_var") and m.running_var is not None:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    fast = optimize_for_inference(model)
    assert not any("BatchNorm" in type(m).__name__ for m in fast.backbone.modules())
    assert any("BatchNorm" in type(m).__name__ for m in model.backbone.modules())  # the original is untouched
    x = torch.randn(1, 3, 96, 128)
    with torch.inference_mode():
        want, got = model(x), fast(x)
    torch.testing.assert_close(got["pred_logits"], want["pred_logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["pred_boxes"], want["pred_boxes"], atol=1e-5, rtol=1e-4)


def test_nothing_to_fold_is_zero():
    assert fold_batchnorm(torch.nn.Sequential(torch.nn.Linear(2, 2))) == 0


def test_fast_dtype_is_none_or_reduced_precision():
    assert fast_dtype("cpu") in (None, torch.bfloat16)
    assert fast_dtype("cuda") == torch.float16


# bfloat16 keeps 8 significant bits: each rounding moves a number by up to 2^-9 (0.2%) of itself, and
# a product of two rounded inputs by up to ~0.4%. Through the 6 + 6 transformer layers the class
# logits drift by a few hundredths; softmax turns that into score changes of at most 0.026 on these
# images (measured, emulated bf16 on an AVX2 CPU; native bf16 rounds the same inputs the same way and
# accumulates in float32 too, so its error is of the same size). A detection whose float32 score lies
# within SCORE_MARGIN (about twice that) of the threshold may fall on either side of it, as the
# `[] == [(12, 0)]` seen on a Xeon with AMX did, so only the ones clear of it are compared.
SCORE_MARGIN = 0.05
# The cross-attention maps of the compared detections: L1 distance over L1 size (measured <= 0.005).
MAP_TOLERANCE = 0.02


def test_fast_mode_finds_the_same_detections(samples_dir):
    """bfloat16 autocast (emulated where the CPU lacks it: slower, but the same roundings) against
    float32, with the project's own model, on held-out scenes and the sample photos: every detection
    clear of the threshold by SCORE_MARGIN is found with the same class, a close box and the same map,
    and none is found whose float32 score is clear below it."""
    spec = MODELS["detr_shapes"]
    model = optimize_for_inference(load_model("detr_shapes", device="cpu"))
    images = [make_scene(20_000_000 + i, 256)[0] for i in range(12)]
    images += [load_image(p) for p in sorted(samples_dir.glob("*.*")) if p.suffix in (".png", ".jpg")]
    threshold = spec.default_threshold
    compared = 0
    for image in images:
        prepared = preprocess(image, model.stride, spec.min_size, spec.max_size)
        exact_a = capture(model, prepared, spec.class_names)
        fast_a = capture(model, prepared, spec.class_names, autocast_dtype=torch.bfloat16)
        clear = {d.query: d for d in exact_a.detections(threshold + SCORE_MARGIN)}  # clear above
        candidates = {d.query for d in exact_a.detections(threshold - SCORE_MARGIN)}  # not clear below
        fast = {d.query: d for d in fast_a.detections(threshold)}
        assert set(fast) <= candidates, "fast mode found a detection clearly below the threshold in float32"
        for query, want in clear.items():
            got = fast.get(query)
            assert got is not None, f"query {query} (float32 score {want.score:.3f}) lost in fast mode"
            assert got.class_id == want.class_id
            assert got.box == pytest.approx(want.box, abs=0.03 * max(image.size))
            exact_map, fast_map = decoder_map(exact_a, query), decoder_map(fast_a, query)
            assert float((fast_map - exact_map).abs().sum() / exact_map.abs().sum()) <= MAP_TOLERANCE
        compared += len(clear)
    assert compared >= 12  # the scenes really have objects to agree on


@pytest.mark.parametrize("name", ["detr_resnet50", "detr_demo", "detr_shapes"])
def test_fused_relus_give_the_folded_models_numbers(name):
    """fuse_relu changes where max(., 0) and the shortcut addition run, not what they compute: the
    fused backbone equals the merely folded one, through the oneDNN path and through the fallback."""
    from detr_core.models.fast import ConvReLU, FusedBottleneck, fusable, fuse_relu

    torch.manual_seed(0)
    folded = MODELS[name].builder(MODELS[name].config).eval().requires_grad_(False)
    fold_batchnorm(folded.backbone)
    fused = copy.deepcopy(folded)
    n = fuse_relu(fused.backbone)
    expected_count = {"detr_resnet50": 16 * 3 + 1, "detr_demo": 16 * 3 + 1, "detr_shapes": 7}[name]
    assert n == expected_count
    assert sum(isinstance(m, FusedBottleneck) for m in fused.modules()) == (16 if name != "detr_shapes" else 0)
    assert not any(isinstance(m, torch.nn.ReLU) for m in fused.backbone.modules() if not isinstance(m, FusedBottleneck))
    assert sum(isinstance(m, ConvReLU) for m in fused.modules()) == (1 if name != "detr_shapes" else 7)
    for m in (folded, fused):
        m.backbone.to(memory_format=torch.channels_last)  # as optimize_for_inference serves it
    x = torch.randn(1, 3, 96, 128)
    body = (lambda m: m.backbone) if name == "detr_demo" else (lambda m: m.backbone[0])
    with torch.inference_mode():
        assert fusable(x)
        want = body(folded)(x) if name != "detr_demo" else folded(x)["pred_logits"]
        got = body(fused)(x) if name != "detr_demo" else fused(x)["pred_logits"]
        scale = want.abs().max()  # random-weight ResNets grow activations into the hundreds
        torch.testing.assert_close(got, want, atol=1e-5 * scale, rtol=1e-5)
    x.requires_grad_(True)  # autograd: the fallback path (plain convolution, ReLU and addition)
    with torch.enable_grad():
        assert not fusable(x)
        got = body(fused)(x) if name != "detr_demo" else fused(x)["pred_logits"]
        torch.testing.assert_close(got.detach(), want, atol=1e-5 * scale, rtol=1e-5)
