"""Procedural scenes of shapes: the data the project's own small DETR (`detr_shapes`) learns from.

`make_scene(seed, size)` draws 1-4 non-overlapping objects of four classes (filled ellipse, filled
rectangle, filled triangle, ring) on a background of low-frequency colour noise, a colour gradient or
a random crop of a sample photo, plus Gaussian pixel noise. Everything is deterministic per seed, and
the geometry is drawn in units of a 128 px canvas and scaled, so the same seed at 512 px is the same
scene, only sharper. Targets follow DETR: class ids and boxes as normalized (cx, cy, w, h).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..io.image import IMAGENET_MEAN, IMAGENET_STD
from ..models.zoo import SHAPES_CLASSES

__all__ = [
    "BASE_SIZE", "CLASSES", "HELDOUT_FIRST_SEED", "TRAIN_FIRST_SEED",
    "make_batch", "make_scene", "scene_seeds", "to_tensor",
]  # fmt: skip

CLASSES = SHAPES_CLASSES  # label i is CLASSES[i], as in the detr_shapes registry entry
BASE_SIZE = 128  # the canvas all geometry is drawn in; other sizes scale it
TRAIN_FIRST_SEED = 0  # training scenes use seeds 0, 1, 2, ... (always below HELDOUT_FIRST_SEED)
HELDOUT_FIRST_SEED = 10_000_000  # held-out scenes for evaluation and tests, never seen in training
MIN_OBJ, MAX_OBJ = 12.0, 48.0  # object box sides, in 128 px units
GAP = 3.0  # minimum free space between two object boxes, in 128 px units
MIN_COLOR_DIST = 90.0  # RGB distance between an object and the background under it
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "samples"


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """The sample photos as uint8 [H, W, 3] arrays (longer side at most 512), loaded once."""
    photos = []
    for path in sorted(SAMPLES_DIR.glob("*")):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        img = Image.open(path).convert("RGB")
        img.thumbnail((512, 512))
        photos.append(np.asarray(img))
    return tuple(photos)


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-frequency colour noise: a random 2-5 cell colour grid upsampled bicubically -> [size, size, 3] float."""
    cells = int(rng.integers(2, 6))
    base = rng.uniform(0, 255, size=3)
    grid = np.clip(base + rng.normal(0, 45, size=(cells, cells, 3)), 0, 255).astype(np.uint8)
    return np.array(Image.fromarray(grid).resize((size, size), Image.BICUBIC), dtype=np.float32)


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear gradient between two random colours in a random direction -> [size, size, 3] float."""
    c0, c1 = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.arange(size, dtype=np.float32) + 0.5) / size
    proj = np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]  # [size, size]
    proj = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
    return (c0 + (c1 - c0) * proj[..., None]).astype(np.float32)


def _photo_crop(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop (35-100% of the shorter side) of a sample photo -> [size, size, 3] float."""
    photos = _photos()
    if not photos:
        return _smooth_noise(rng, size)
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.35, 1.0))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
    return np.array(crop, dtype=np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.uniform()
    if kind < 0.4:
        return _smooth_noise(rng, size)
    if kind < 0.7:
        return _gradient(rng, size)
    return _photo_crop(rng, size)


def _place_boxes(rng: np.random.Generator, n: int) -> list[tuple[float, float, float, float]]:
    """Up to n non-overlapping boxes (x0, y0, w, h) in 128 px units, by rejection sampling."""
    boxes: list[tuple[float, float, float, float]] = []
    for _ in range(60):
        if len(boxes) == n:
            break
        w, h = rng.uniform(MIN_OBJ, MAX_OBJ, size=2)
        x0 = rng.uniform(1.0, BASE_SIZE - 1.0 - w)
        y0 = rng.uniform(1.0, BASE_SIZE - 1.0 - h)
        if all(
            x0 + w + GAP <= bx or bx + bw + GAP <= x0 or y0 + h + GAP <= by or by + bh + GAP <= y0
            for bx, by, bw, bh in boxes
        ):
            boxes.append((float(x0), float(y0), float(w), float(h)))
    return boxes


def _triangle(rng: np.random.Generator, x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    """A triangle whose bounding box is exactly (x0, y0, x1, y1): an apex on one side, two opposite corners."""
    side = int(rng.integers(4))
    if side == 0:  # apex on top
        return [(rng.uniform(x0, x1), y0), (x0, y1), (x1, y1)]
    if side == 1:  # apex at the bottom
        return [(rng.uniform(x0, x1), y1), (x0, y0), (x1, y0)]
    if side == 2:  # apex on the left
        return [(x0, rng.uniform(y0, y1)), (x1, y0), (x1, y1)]
    return [(x1, rng.uniform(y0, y1)), (x0, y0), (x0, y1)]


def _object_color(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A random colour at least MIN_COLOR_DIST from the mean background colour `under` [3]."""
    color = rng.uniform(0, 255, size=3)
    for _ in range(30):
        if np.linalg.norm(color - under) >= MIN_COLOR_DIST:
            break
        color = rng.uniform(0, 255, size=3)
    else:  # fall back to the colour opposite the background
        color = np.where(under > 127, 20.0, 235.0)
    return int(color[0]), int(color[1]), int(color[2])


def make_scene(seed: int, size: int = BASE_SIZE) -> tuple[Image.Image, dict[str, torch.Tensor]]:
    """One scene: an RGB image [size x size] and {"labels": [n] int64, "boxes": [n, 4] normalized cxcywh}."""
    rng = np.random.default_rng(seed)
    scale = size / BASE_SIZE
    canvas = _background(rng, size)  # [size, size, 3] float
    n = int(rng.integers(1, 5))
    boxes = _place_boxes(rng, n)
    labels = rng.integers(0, len(CLASSES), size=len(boxes))
    noise_sigma = rng.uniform(2.0, 12.0)
    mask_img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_img)
    targets = []
    for (bx, by, bw, bh), label in zip(boxes, labels, strict=True):
        x0, y0, x1, y1 = bx * scale, by * scale, (bx + bw) * scale, (by + bh) * scale  # continuous pixel edges
        px = (x0, y0, x1 - 1, y1 - 1)  # PIL's inclusive pixel corners
        draw.rectangle((0, 0, size, size), fill=0)
        if label == 0:
            draw.ellipse(px, fill=255)
        elif label == 1:
            draw.rectangle(px, fill=255)
        elif label == 2:
            draw.polygon(_triangle(rng, *px), fill=255)
        else:
            thickness = rng.uniform(0.18, 0.3) * min(x1 - x0, y1 - y0)
            draw.ellipse(px, fill=255)
            draw.ellipse((px[0] + thickness, px[1] + thickness, px[2] - thickness, px[3] - thickness), fill=0)
        ix0, iy0, ix1, iy1 = int(x0), int(y0), min(int(np.ceil(x1)) + 1, size), min(int(np.ceil(y1)) + 1, size)
        region = canvas[iy0:iy1, ix0:ix1]  # a view: drawing into it draws into the canvas
        mask = np.asarray(mask_img.crop((ix0, iy0, ix1, iy1)), dtype=np.float32)[..., None] / 255.0  # [h, w, 1]
        color = np.asarray(_object_color(rng, region.reshape(-1, 3).mean(0)), dtype=np.float32)
        region += (color - region) * mask
        targets.append(((bx + bw / 2) / BASE_SIZE, (by + bh / 2) / BASE_SIZE, bw / BASE_SIZE, bh / BASE_SIZE))
    noise = np.random.default_rng([seed, size]).standard_normal(canvas.shape, dtype=np.float32)  # per-size stream
    canvas += noise * np.float32(noise_sigma)
    np.clip(canvas, 0, 255, out=canvas)
    image = Image.fromarray(canvas.astype(np.uint8), "RGB")
    return image, {
        "labels": torch.as_tensor(labels, dtype=torch.int64),
        "boxes": torch.tensor(targets, dtype=torch.float32).reshape(-1, 4),
    }


_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255.0
_STD = np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image -> ImageNet-normalized [3, H, W] float32 (what `image.preprocess` gives at native size)."""
    x = (np.asarray(image, dtype=np.float32) - _MEAN) / _STD  # [H, W, 3]
    return torch.from_numpy(x).permute(2, 0, 1).contiguous()


def make_batch(seeds: list[int] | range, size: int = BASE_SIZE) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Scenes for `seeds` -> normalized images [B, 3, size, size] and their B target dicts."""
    pixels = np.empty((len(seeds), size, size, 3), dtype=np.float32)  # [B, H, W, 3]
    targets = []
    for i, seed in enumerate(seeds):
        image, target = make_scene(int(seed), size)
        pixels[i] = np.asarray(image, dtype=np.float32)
        targets.append(target)
    pixels = (pixels - _MEAN) / _STD
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), targets


def scene_seeds(count: int, first: int = HELDOUT_FIRST_SEED) -> range:
    """`count` consecutive scene seeds from `first` (by default the held-out range)."""
    return range(first, first + count)
