"""detr_core.io.render: the heatmap coloured once per feature cell is the pixel-by-pixel picture."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from detr_core.io import render
from detr_core.io.image import Geometry


def pixelwise_heatmap(attention: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The definition: upsample without smoothing, min-max scale over the pixels, colour each pixel."""
    m = render.upsample(attention, geometry, smooth=False)
    lo, hi = float(m.min()), float(m.max())
    scaled = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    return render.colormap(scaled)


def random_geometry(rng: random.Random) -> Geometry:
    stride = rng.choice([8, 16, 32])
    input_w, input_h = rng.randint(20, 700), rng.randint(20, 700)
    feat_w, feat_h = -(-input_w // stride), -(-input_h // stride)
    # down to thumbnails smaller than the feature map: some cells then show in no pixel at all
    return Geometry(rng.randint(5, 900), rng.randint(5, 900), input_h, input_w, feat_h, feat_w, stride)


@pytest.mark.parametrize("kind", ["random", "constant", "two values", "a NaN", "peaked"])
def test_the_heatmap_is_the_pixel_by_pixel_picture(kind):
    rng, nrng = random.Random(kind), np.random.default_rng(len(kind))
    for _ in range(60):
        g = random_geometry(rng)
        m = nrng.random((g.feat_h, g.feat_w)).astype(np.float32)
        if kind == "constant":
            m[:] = 0.25
        elif kind == "two values":
            m = (m > 0.5).astype(np.float32)
        elif kind == "a NaN":
            m[rng.randrange(g.feat_h), rng.randrange(g.feat_w)] = np.nan
        elif kind == "peaked":
            m = np.exp(40 * m).astype(np.float32)
        got = np.asarray(render.heatmap(m, g))
        assert got.shape == (g.orig_h, g.orig_w, 3)
        np.testing.assert_array_equal(got, pixelwise_heatmap(m, g), err_msg=str(g))


def test_cell_index_names_the_cell_each_pixel_shows():
    g = Geometry(orig_h=333, orig_w=500, input_h=800, input_w=1201, feat_h=25, feat_w=38, stride=32)
    index, shown = render.cell_index(g)
    tokens = np.arange(g.tokens, dtype=np.float32).reshape(g.feat_h, g.feat_w)  # exact in float32
    np.testing.assert_array_equal(index, render.upsample(tokens, g, smooth=False).astype(np.int32))
    np.testing.assert_array_equal(shown, np.unique(index))
    assert not index.flags.writeable  # shared between calls (cached per geometry)


def test_the_colormap_ends_are_viridis():
    ends = render.colormap(np.array([0.0, 1.0, -3.0, 7.0, np.nan]))
    assert ends.tolist() == [[68, 1, 84], [253, 231, 37], [68, 1, 84], [253, 231, 37], [68, 1, 84]]


def blend_of_the_anchors(values: np.ndarray) -> np.ndarray:
    """The colormap's definition: between the two nearest anchors, rint(a * (1 - t) + b * t) in float64."""
    anchors = render.VIRIDIS
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(anchors) - 1)
    lo = np.floor(v).astype(int).clip(0, len(anchors) - 2)
    t = (v - lo)[..., None]
    return np.rint(anchors[lo] * (1 - t) + anchors[lo + 1] * t).astype(np.uint8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_colormap_is_the_blend_of_the_two_nearest_anchors(dtype):
    rng = np.random.default_rng(3)
    values = rng.random((197, 131)).astype(dtype)  # 25,807 values: one whole block and a part (BLOCK)
    assert render.BLOCK < values.size < 2 * render.BLOCK
    values.flat[:1001] = np.linspace(0.0, 1.0, 1001)  # every anchor and the halves between (rint's ties)
    values.flat[1001:1005] = [np.nan, -3.0, 7.0, 1.0]
    np.testing.assert_array_equal(render.colormap(values), blend_of_the_anchors(values))


def pillow_upsample(attention: np.ndarray, g: Geometry) -> np.ndarray:
    """The smooth map's definition: bilinear to the input pixels the cells cover, crop, bilinear to the photo."""
    img = Image.fromarray(attention, mode="F").resize((g.feat_w * g.stride, g.feat_h * g.stride),
                                                             Image.BILINEAR)  # fmt: skip
    img = img.crop((0, 0, g.input_w, g.input_h)).resize((g.orig_w, g.orig_h), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def test_the_smooth_map_is_pillows_two_resizes():
    """upsample applies the two resizes as one matrix per axis: the same numbers to float32 rounding (the
    products add the same weighted terms in another order). A NaN takes Pillow's own route (exactly)."""
    rng, nrng = random.Random(5), np.random.default_rng(5)
    for i in range(80):
        g = random_geometry(rng)
        m = nrng.random((g.feat_h, g.feat_w)).astype(np.float32)
        if i % 3 == 0:
            m = np.exp(40 * m).astype(np.float32)  # peaked, as softmax rows are
        want = pillow_upsample(m, g)
        got = render.upsample(m, g)
        assert got.shape == want.shape == (g.orig_h, g.orig_w) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * float(want.max()), err_msg=str(g))
    m[0, 0] = np.nan
    np.testing.assert_array_equal(render.upsample(m, g), pillow_upsample(m, g))


def test_the_overlay_blends_the_photo_and_the_map_pixel_by_pixel():
    """overlay works BLOCK pixels at a time: the same picture as blending the whole photo at once,
    rint(photo * (1 - alpha) + colour * alpha) in float32, for photos of less than one block to several."""
    rng, nrng = random.Random(8), np.random.default_rng(8)
    sizes = [(7, 5), (128, 128), (330, 440), (801, 601)]  # 35 px; exactly one block; 8.9 and 29.4 blocks
    for orig_w, orig_h in sizes:
        g = Geometry(orig_h, orig_w, 1066, 800, 34, 25, 32)
        m = nrng.random((g.feat_h, g.feat_w)).astype(np.float32)
        photo = Image.fromarray(nrng.integers(0, 256, (orig_h, orig_w, 3), dtype=np.uint8), "RGB")
        alpha = rng.choice([0.55, 0.3])
        up = render.upsample(m, g)
        colors = render.colormap((up - up.min()) / (up.max() - up.min())).astype(np.float32)
        want = np.rint(np.asarray(photo, dtype=np.float32) * (1 - alpha) + colors * alpha).astype(np.uint8)
        got = render.overlay(photo, m, g, alpha)
        assert got.size == (orig_w, orig_h) and got.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=str((orig_w, orig_h)))


def test_grid_lays_the_tiles_out_in_rows_with_their_captions_under_them():
    """render.grid (the four-point figure, the decoder's panels, their PNGs): each tile pasted unchanged in
    its row (rows centred), its caption wrapped to its width right under it; the rows asked for."""
    from PIL import ImageChops

    colours = ["red", "blue", "green", "orange", "purple"]
    tiles = [(Image.new("RGB", (40 + 20 * i, 30 + 10 * i), c), f"tile {i} " * (1 + 3 * (i == 2))) for i, c in
             enumerate(colours)]  # fmt: skip
    pad = 12
    out = render.grid(tiles, [1, 2, 2], caption_px=16, pad=pad)
    # row 1: tile 0 centred; row 2: tiles 1, 2; row 3: tiles 3, 4
    widths = [40, 60 + pad + 80, 100 + pad + 120]
    assert out.width == 2 * pad + max(widths)
    pixels = np.asarray(out)
    for i, (tile, _) in enumerate(tiles):
        found = np.argwhere((pixels == np.asarray(tile)[0, 0]).all(-1))
        (y0, x0), (y1, x1) = found.min(0), found.max(0)
        assert (x1 - x0 + 1, y1 - y0 + 1) == tile.size, i  # pasted whole, not resized
        crop = out.crop((x0, y0, x1 + 1, y1 + 1))
        assert ImageChops.difference(crop, tile).getbbox() is None
        under = np.asarray(out.crop((x0, y1 + 1, x0 + tile.width, y1 + 1 + 3 * 20)).convert("L"))
        assert (under < 128).any(), f"no caption under tile {i}"
        if i == 2:  # the last of its row, with a long caption: wrapped, nothing right of the tile
            beside = np.asarray(out.crop((x1 + 1, y0, out.width, y1 + 1 + 2 * 20)).convert("L"))  # its first lines
            assert (beside > 250).all()
    x_first = np.argwhere((pixels == (255, 0, 0)).all(-1))[:, 1].min()
    assert x_first == pad + (max(widths) - 40) // 2  # the one-tile row is centred
    with pytest.raises(ValueError, match="hold 4"):
        render.grid(tiles, [2, 2])
    with pytest.raises(ValueError, match="no tiles"):
        render.grid([], 3)
    assert render.grid(tiles, 2).size == render.grid(tiles, [2, 2, 1]).size


def test_boxes_drawn_on_a_display_copy_land_where_the_box_is_shown():
    """`draw_boxes(..., scale=0.5)`: a box in original pixels is drawn at half its coordinates (on a display
    copy at half size), in its query's colour, `width` px lines; nothing outside the box and its label."""
    from detr_core.io.postprocess import Detection

    det = Detection(query=4, class_id=1, class_name="cat", score=0.5, box=(100.0, 200.0, 300.0, 360.0))
    plain = Image.new("RGB", (200, 200), (128, 128, 128))
    drawn = np.asarray(render.draw_boxes(plain, [det], width=2, scale=0.5)).astype(int)
    for x, y in [(50, 140), (51, 140), (150, 140), (100, 101), (100, 180)]:  # shown at (50, 100) - (150, 180)
        assert tuple(drawn[y, x]) == render.color_of(det.query), (x, y)
    assert tuple(drawn[140, 100]) == tuple(drawn[140, 52]) == (128, 128, 128)  # inside the box
    rows, cols = np.nonzero(np.abs(drawn - 128).sum(axis=2))
    assert (cols.min(), cols.max(), rows.max()) == (50, 150, 180) and 70 < rows.min() < 100  # the label above
