"""The scene generator: deterministic per seed, objects of the promised sizes that never overlap, fast."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from detr_core.box_ops import box_cxcywh_to_xyxy
from detr_core.io.image import preprocess
from detr_core.models.zoo import SHAPES_CLASSES
from detr_core.training.synthetic import BASE_SIZE, CLASSES, HELDOUT_FIRST_SEED, make_batch, make_scene, scene_seeds

SEEDS = list(range(60)) + list(scene_seeds(20))


def test_classes_match_the_registry():
    assert CLASSES == SHAPES_CLASSES


@pytest.mark.parametrize("seed", [0, 7, HELDOUT_FIRST_SEED + 3])
def test_same_seed_same_scene(seed):
    (img1, t1), (img2, t2) = make_scene(seed), make_scene(seed)
    assert np.array_equal(np.asarray(img1), np.asarray(img2))
    assert torch.equal(t1["labels"], t2["labels"]) and torch.equal(t1["boxes"], t2["boxes"])


def test_different_seeds_differ():
    assert not np.array_equal(np.asarray(make_scene(1)[0]), np.asarray(make_scene(2)[0]))


def test_objects_counts_sizes_and_no_overlap():
    counts, labels = [], []
    for seed in SEEDS:
        image, target = make_scene(seed)
        assert image.mode == "RGB" and image.size == (BASE_SIZE, BASE_SIZE)
        boxes, lab = target["boxes"], target["labels"]
        assert boxes.dtype == torch.float32 and lab.dtype == torch.int64
        assert boxes.shape == (len(lab), 4) and 1 <= len(lab) <= 4
        counts.append(len(lab))
        labels += lab.tolist()
        sides = boxes[:, 2:] * BASE_SIZE
        assert (sides >= 12 - 1e-4).all() and (sides <= 48 + 1e-4).all()
        xyxy = box_cxcywh_to_xyxy(boxes)
        assert (xyxy >= 0).all() and (xyxy <= 1).all()
        for i in range(len(lab)):
            for j in range(i + 1, len(lab)):
                a, b = xyxy[i], xyxy[j]
                overlap_w = min(a[2], b[2]) - max(a[0], b[0])
                overlap_h = min(a[3], b[3]) - max(a[1], b[1])
                assert overlap_w <= 0 or overlap_h <= 0, f"seed {seed}: objects {i} and {j} overlap"
    assert set(counts) == {1, 2, 3, 4}
    assert set(labels) == set(range(len(CLASSES)))


def test_objects_stand_out_from_the_background():
    """Inside a filled rectangle the colour differs clearly from a frame just outside it."""
    checked = 0
    for seed in range(80):
        image, target = make_scene(seed)
        pixels = np.asarray(image, dtype=np.float32)
        for label, box in zip(target["labels"].tolist(), target["boxes"].tolist(), strict=True):
            if CLASSES[label] != "rectangle":
                continue
            x0, y0, x1, y1 = (round(v * BASE_SIZE) for v in box_cxcywh_to_xyxy(torch.tensor(box)).tolist())
            inside = pixels[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].reshape(-1, 3).mean(0)
            assert (pixels[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].std(axis=(0, 1)) < 20).all()  # a flat fill (+ noise)
            above = pixels[max(y0 - 3, 0) : max(y0 - 1, 0), x0:x1].reshape(-1, 3)
            if len(above):
                assert np.linalg.norm(inside - above.mean(0)) > 40
            checked += 1
    assert checked >= 10


def test_larger_sizes_draw_the_same_scene():
    small_img, small = make_scene(5)
    big_img, big = make_scene(5, size=512)
    assert big_img.size == (512, 512)
    assert torch.equal(small["labels"], big["labels"]) and torch.equal(small["boxes"], big["boxes"])
    shrunk = np.asarray(big_img.resize((BASE_SIZE, BASE_SIZE)), dtype=np.float32)
    assert np.abs(shrunk - np.asarray(small_img, dtype=np.float32)).mean() < 12


def test_batch_is_the_models_normalized_input():
    images, targets = make_batch([3, 4, 5])
    assert images.shape == (3, 3, BASE_SIZE, BASE_SIZE) and images.dtype == torch.float32
    assert len(targets) == 3
    expected = preprocess(make_scene(4)[0], stride=16, min_size=BASE_SIZE).tensor[0]
    torch.testing.assert_close(images[1], expected, atol=1e-5, rtol=1e-5)


def test_heldout_seeds_are_out_of_the_training_range():
    assert scene_seeds(3) == range(HELDOUT_FIRST_SEED, HELDOUT_FIRST_SEED + 3)
    assert HELDOUT_FIRST_SEED >= 10_000_000


def test_generation_is_fast():
    make_batch(range(4))  # load the sample photos once
    start = time.perf_counter()
    make_batch(range(100, 164))
    assert (time.perf_counter() - start) / 64 < 0.02  # about 3 ms a scene on one free core
