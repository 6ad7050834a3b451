"""Pictures for display and export (numpy/Pillow only): maps upsampled to the photo, blended with a
colormap into an RGB overlay, and boxes with "class: score" labels in the notebook's colours."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .image import Geometry
from .postprocess import COLORS, Detection

__all__ = [
    "CAPTION_PX",
    "PAD",
    "VIRIDIS",
    "box_label",
    "color_of",
    "colormap",
    "draw_boxes",
    "draw_cell",
    "grid",
    "heatmap",
    "overlay",
    "upsample",
]

# Anchor colours of the perceptually uniform "viridis" colormap, from 0 to 1.
VIRIDIS = np.array(
    [
        [68, 1, 84], [72, 36, 117], [65, 68, 135], [53, 95, 141], [42, 120, 142], [33, 145, 140],
        [34, 168, 132], [68, 191, 112], [122, 209, 81], [189, 223, 38], [253, 231, 37],
    ],
    dtype=np.float64,
)  # fmt: skip


# The anchors one channel at a time (a 1-D `take` is several times faster than gathering rows of 3).
_VIRIDIS_CHANNELS = tuple(np.ascontiguousarray(VIRIDIS[:, c]) for c in range(3))

# Pixels per step of the per-pixel arithmetic (`colormap`, `overlay`'s blend): each step's float64
# temporaries (128 kB each) stay in the CPU's cache instead of streaming through memory, and the
# result is the same element by element: a 440 x 330 colormap 12.5 -> 3.2 ms, 800 x 1066 60 -> 23 ms.
BLOCK = 16384


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (shape + (3,)) on the viridis scale: linear between the
    anchors, rint(a * (1 - t) + b * t) in float64, one channel at a time (the same numbers as gathering
    the anchors' rows), BLOCK values at a time."""
    values = np.asarray(values)
    flat = values.reshape(-1)
    out = np.empty((flat.size, 3), np.uint8)
    for start in range(0, flat.size, BLOCK):
        _colormap_block(flat[start : start + BLOCK], out[start : start + BLOCK])
    return out.reshape(*values.shape, 3)


def _colormap_block(values: np.ndarray, out: np.ndarray) -> None:
    """`colormap` of a 1-D block of values [n], written into out [n, 3]."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(VIRIDIS) - 1)
    lo = np.floor(v).astype(np.intp)
    np.clip(lo, 0, len(VIRIDIS) - 2, out=lo)
    t = v - lo  # float64 (an integer array promotes float32 too)
    s = 1 - t
    hi = lo + 1
    for c, anchors in enumerate(_VIRIDIS_CHANNELS):
        mixed = anchors.take(lo)
        mixed *= s
        upper = anchors.take(hi)
        upper *= t
        mixed += upper
        out[:, c] = np.rint(mixed, out=mixed)


def _normalize(m: np.ndarray, among: np.ndarray | None = None) -> np.ndarray:
    """m min-max scaled to [0, 1], the min and max taken over `among` (default: m itself)."""
    among = m if among is None else among
    lo, hi = float(among.min()), float(among.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def upsample(attention: Tensor | np.ndarray, geometry: Geometry, smooth: bool = True) -> np.ndarray:
    """An [h, w] map over the feature cells -> [orig_h, orig_w] float32, each cell over the pixels it covers:
    resized (bilinear, or nearest without `smooth`) to the input pixels the cells cover, cropped to the
    input, resized to the original pixels.

    Smooth and finite, the two resizes are applied as one linear map per axis (`_resampling`: Pillow's
    resampling is separable, so its weights are found once per size by resizing the identity), the same
    numbers to float32 rounding in 0.3 ms instead of 12-18 ms at 440 px (tests/test_render.py)."""
    g = geometry
    m = np.asarray(attention, dtype=np.float32)
    if smooth and np.isfinite(m).all():  # a NaN would reach every pixel of its row through a product
        rows = _resampling(g.feat_h, g.stride, g.input_h, g.orig_h)  # [orig_h, h]
        cols = _resampling(g.feat_w, g.stride, g.input_w, g.orig_w)  # [orig_w, w]
        return (rows @ torch.tensor(m, dtype=torch.float64) @ cols.T).float().numpy()
    resample = Image.BILINEAR if smooth else Image.NEAREST
    img = Image.fromarray(m, mode="F").resize((g.feat_w * g.stride, g.feat_h * g.stride), resample)  # input px
    img = img.crop((0, 0, g.input_w, g.input_h)).resize((g.orig_w, g.orig_h), resample)  # original px
    return np.asarray(img, dtype=np.float32)


@lru_cache(maxsize=32)  # a page draws at two or three sizes, two axes each
def _resampling(cells: int, stride: int, input_len: int, out_len: int) -> Tensor:
    """`upsample`'s bilinear resizes along one axis as a matrix [out_len, cells] (float64): row i holds the
    weight of each cell in output pixel i. Found by resizing each cell's one-hot row the same way.

    A torch tensor: the product then runs on torch's threads. NumPy's would start its BLAS's own
    threads, which on a 2-core machine fight torch's still-spinning ones: 0.3 ms alone, 1.7-5.5 ms
    right after a torch operation."""
    eye = Image.fromarray(np.eye(cells, dtype=np.float32), mode="F")  # one row per cell
    img = eye.resize((cells * stride, cells), Image.BILINEAR).crop((0, 0, input_len, cells))
    return torch.tensor(np.asarray(img.resize((out_len, cells), Image.BILINEAR), dtype=np.float64).T)


@lru_cache(maxsize=16)  # a page draws at two or three sizes; 16 x at most 900 x 900 x 4 bytes
def cell_index(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Which feature cell each pixel of `upsample(..., smooth=False)` shows: ([orig_h, orig_w] token numbers,
    the sorted token numbers that appear). The same two resizes, applied to the token numbers (a
    32-bit image like the map's: Pillow's nearest-neighbour resize picks the same pixels for both)."""
    g = geometry
    tokens = np.arange(g.tokens, dtype=np.int32).reshape(g.feat_h, g.feat_w)
    img = Image.fromarray(tokens, mode="I").resize((g.feat_w * g.stride, g.feat_h * g.stride), Image.NEAREST)
    img = img.crop((0, 0, g.input_w, g.input_h)).resize((g.orig_w, g.orig_h), Image.NEAREST)
    index = np.asarray(img, dtype=np.int32)
    shown = np.flatnonzero(np.bincount(index.reshape(-1), minlength=g.tokens)).astype(np.int32)
    index.setflags(write=False)
    shown.setflags(write=False)
    return index, shown


def heatmap(attention: Tensor | np.ndarray, geometry: Geometry | None = None) -> Image.Image:
    """The map alone, min-max scaled and coloured; at the photo's size when `geometry` is given.

    The same picture as colouring `upsample(attention, geometry, smooth=False)` pixel by pixel, computed
    once per feature cell: each pixel shows one cell's value, so the cells are scaled (over the cells
    that show) and coloured, and the pixels take their cell's colour (`cell_index`; for an
    R50 map at 440 px: 17.6 -> 3.9 ms)."""
    if geometry is None:
        return Image.fromarray(colormap(_normalize(np.asarray(attention, np.float32))), "RGB")
    cells = np.asarray(attention, dtype=np.float32).reshape(-1)  # [h * w]
    index, shown = cell_index(geometry)
    colors = colormap(_normalize(cells, among=cells[shown]))  # [h * w, 3]
    return Image.fromarray(colors[index], "RGB")


def overlay(image: Image.Image, attention: Tensor | np.ndarray, geometry: Geometry, alpha: float = 0.55) -> Image.Image:
    """The photo with the map blended on top (`alpha` = weight of the colours): each pixel
    rint(photo * (1 - alpha) + colour * alpha) in float32, BLOCK pixels at a time."""
    m = _normalize(upsample(attention, geometry)).reshape(-1)  # [H * W] in [0, 1]
    photo = np.asarray(image.convert("RGB")).reshape(-1, 3)  # [H * W, 3] uint8
    out = np.empty_like(photo)
    colors = np.empty((min(BLOCK, m.size), 3), np.uint8)
    for start in range(0, m.size, BLOCK):
        stop = min(start + BLOCK, m.size)
        _colormap_block(m[start:stop], colors[: stop - start])
        blended = photo[start:stop].astype(np.float32)
        blended *= 1 - alpha
        blended += colors[: stop - start].astype(np.float32) * alpha
        out[start:stop] = np.rint(blended, out=blended)
    return Image.fromarray(out.reshape(image.height, image.width, 3), "RGB")


def color_of(index: int) -> tuple[int, int, int]:
    """The notebook's colour cycle as 0-255 RGB; a detection's colour is that of its query index."""
    r, g, b = COLORS[index % len(COLORS)]
    return round(r * 255), round(g * 255), round(b * 255)


def box_label(det: Detection) -> str:
    """A detection's label on a picture: "class: score"."""
    return f"{det.class_name}: {det.score:.2f}"


def draw_boxes(
    image: Image.Image, detections: list[Detection], width: int | None = None, scale: float = 1.0
) -> Image.Image:
    """A copy of the photo with each detection's box and "class: score" label, in its query's colour.
    `scale`: this photo's size over that of the one the boxes are in (for a display copy: its width over the
    original's); `width`: of the box lines, px (by default in proportion to the photo)."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = width or max(2, round(min(out.size) / 200))
    font = ImageFont.load_default(size=max(11, round(min(out.size) / 35)))
    for det in detections:
        color = color_of(det.query)
        x0, y0, x1, y1 = (v * scale for v in det.box)
        draw.rectangle((x0, y0, x1, y1), outline=color, width=width)
        label = box_label(det)
        tx0, ty0, tx1, ty1 = draw.textbbox((x0, y0), label, font=font)
        ty = y0 - (ty1 - ty0) - 4 if y0 - (ty1 - ty0) - 4 >= 0 else y0
        draw.rectangle((x0, ty, x0 + (tx1 - tx0) + 6, ty + (ty1 - ty0) + 4), fill=color)
        draw.text((x0 + 3, ty + 2 - (ty0 - y0)), label, fill=(255, 255, 255), font=font)
    return out


def draw_cell(image: Image.Image, geometry: Geometry, row: int, col: int, color=(255, 64, 64)) -> Image.Image:
    """A copy of the photo with one feature cell outlined (the clicked location)."""
    out = image.convert("RGB").copy()
    x0, y0 = geometry.to_original(col * geometry.stride, row * geometry.stride)
    x1, y1 = geometry.to_original(
        min((col + 1) * geometry.stride, geometry.input_w), min((row + 1) * geometry.stride, geometry.input_h)
    )
    ImageDraw.Draw(out).rectangle((x0, y0, x1, y1), outline=color, width=max(2, round(min(out.size) / 250)))
    return out


PAD = 12  # `grid`: px between tiles and around the figure
CAPTION_PX = 16  # `grid`: caption font size


def grid(
    tiles: Sequence[tuple[Image.Image, str]], per_row: int | Sequence[int], caption_px: int = CAPTION_PX,
    pad: int = PAD,
) -> Image.Image:  # fmt: skip
    """Tiles (picture, caption) as one figure on white: rows left to right, each row centred, each caption
    right under its picture and wrapped to its width. `per_row`: tiles per row, or each row's count in order
    (e.g. [1, 2, 2]: one tile, then two rows of two). Pictures keep their sizes."""
    if not tiles:
        raise ValueError("no tiles")
    if isinstance(per_row, int):
        step = max(1, per_row)
        counts = [min(step, len(tiles) - i) for i in range(0, len(tiles), step)]
    else:
        counts = [n for n in per_row if n > 0]
        if sum(counts) != len(tiles):
            raise ValueError(f"rows of {list(per_row)} tiles hold {sum(counts)}, not the {len(tiles)} given")
    font = ImageFont.load_default(size=caption_px)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = caption_px + 4
    rows, start = [], 0
    for n in counts:
        rows.append(
            [(tile, _wrapped(caption, tile.width, font, measure)) for tile, caption in tiles[start : start + n]]
        )
        start += n
    widths = [sum(tile.width for tile, _ in row) + pad * (len(row) - 1) for row in rows]
    widest = max(widths)
    picture_hs = [max(tile.height for tile, _ in row) for row in rows]
    caption_hs = [max(len(lines) for _, lines in row) * line_h for row in rows]
    out = Image.new(
        "RGB", (2 * pad + widest, pad + sum(p + c + 4 + pad for p, c in zip(picture_hs, caption_hs))), "white"
    )
    draw = ImageDraw.Draw(out)
    y = pad
    for row, width, picture_h, caption_h in zip(rows, widths, picture_hs, caption_hs, strict=True):
        x = pad + (widest - width) // 2
        for tile, lines in row:
            top = y + (picture_h - tile.height) // 2  # centred in its row, its caption right under it
            out.paste(tile.convert("RGB"), (x, top))
            for k, line in enumerate(lines):
                draw.text((x, top + tile.height + 4 + k * line_h), line, fill=(40, 40, 40), font=font)
            x += tile.width + pad
        y += picture_h + caption_h + 4 + pad
    return out


def _wrapped(text: str, width: int, font, draw: ImageDraw.ImageDraw) -> list[str]:
    """`text` in lines of at most `width` px (by words; a word longer than that gets a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]
