"""Images: untrusted bytes are either turned into a sensible RGB picture or refused with `ImageError`,
and `Geometry` maps original pixels, input pixels and feature cells onto each other exactly.
"""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from detr_core import ImageError, load_image, preprocess
from detr_core.io.image import IMAGENET_MEAN, IMAGENET_STD, Geometry, resized_size, thumbnail

SETTINGS = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, followed by almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


# --------------------------------------------------------------------------------------------
# what is refused


def test_empty_bytes_are_refused():
    with pytest.raises(ImageError, match=r"empty \(0 bytes\)"):
        load_image(b"")


def test_a_text_file_named_jpg_is_refused(tmp_path):
    path = tmp_path / "holiday.jpg"
    path.write_text("Dear diary, today I took a photo.\n")
    with pytest.raises(ImageError, match="not an image we can read"):
        load_image(path)


def test_a_missing_path_and_a_wrong_type_are_refused(tmp_path):
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="expected image bytes, a path or a PIL image, got int"):
        load_image(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["grace_hopper.jpg", "astronaut.png"])
def test_a_real_photo_cut_in_half_is_refused(samples_dir, name):
    data = (samples_dir / name).read_bytes()
    assert load_image(data).size == Image.open(samples_dir / name).size  # the whole file is fine
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (7_000, 7_000)])
def test_a_header_claiming_a_huge_image_is_refused_before_decoding(width, height):
    data = _png_header(width, height)
    assert len(data) < 100
    with pytest.raises(ImageError, match="too large"):
        load_image(data)


def test_a_strip_too_thin_for_one_feature_cell_is_refused_by_preprocess():
    strip = load_image(_encode(Image.new("RGB", (10_000, 10), (9, 9, 9)), "PNG"))  # a valid image...
    assert strip.size == (10_000, 10)
    with pytest.raises(ImageError, match=r"too narrow: 10000x10 would be resized to 1000x1.*\(32 px\)"):
        preprocess(strip, stride=32)  # ...whose short side would become 1 px, less than a 32 px cell


# --------------------------------------------------------------------------------------------
# odd modes and formats are accepted


def test_grayscale_becomes_grey_rgb():
    out = load_image(_encode(Image.new("L", (3, 2), 77), "PNG"))
    assert out.size == (3, 2) and (_pixels(out) == 77).all()


@pytest.mark.parametrize(("mode", "colour", "rgb"), [("LA", (40,), (40, 40, 40)), ("RGBA", (0, 0, 255), (0, 0, 255))])
def test_transparency_is_composited_on_white(mode, colour, rgb):
    img = Image.new(mode, (4, 2), (*colour, 255))  # opaque...
    img.paste((*colour, 0), (0, 0, 2, 2))  # ...with a fully transparent left half
    img.paste((*colour, 128), (0, 0, 1, 2))  # whose first column is half transparent
    out = _pixels(load_image(_encode(img, "PNG")))
    assert (out[:, 2:] == rgb).all()
    assert (out[:, 1] == 255).all()
    assert (abs(out[:, 0] - (np.array(rgb) * 128 + 255 * 127) / 255) <= 1).all()


def test_a_palette_with_a_transparent_index_is_composited_on_white():
    img = Image.new("P", (4, 1), 1)
    img.putpalette([0, 255, 0, 255, 0, 0] + [0] * (3 * 254))  # 0: green (transparent), 1: red
    img.putpixel((0, 0), 0)
    data = _encode(img, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = _pixels(load_image(data))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert (out[0, 1:] == (255, 0, 0)).all()


def test_a_cmyk_jpeg_keeps_its_colour():
    data = _encode(Image.new("RGB", (16, 16), (255, 0, 0)).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert (abs(_pixels(load_image(data)) - (255, 0, 0)) <= 3).all()


def test_16_bit_grayscale_is_scaled_to_8_bits():
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    data = _encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = _pixels(load_image(data))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_an_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert (_pixels(load_image(data)) == (255, 0, 0)).all()


@pytest.mark.parametrize(("fmt", "kwargs"), [("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {})])
def test_other_formats_are_read_exactly(fmt, kwargs):
    rgb = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3) * 2
    out = load_image(_encode(Image.fromarray(rgb), fmt, **kwargs))
    assert out.size == (7, 5)
    assert (_pixels(out) == rgb).all()


def test_a_one_pixel_image_is_loaded_and_prepared():
    out = load_image(_encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"))
    assert _pixels(out).tolist() == [[[10, 20, 30]]]
    prepared = preprocess(out, stride=32)
    assert prepared.tensor.shape == (1, 3, 800, 800)
    assert (prepared.geometry.feat_h, prepared.geometry.feat_w) == (25, 25)


def test_a_pil_image_in_any_mode_is_accepted_as_is():
    out = load_image(Image.new("RGBA", (2, 2), (0, 0, 0, 0)))
    assert out.mode == "RGB" and (_pixels(out) == 255).all()


@pytest.mark.parametrize(
    ("orientation", "size", "red_at", "blue_at"),
    [
        (1, (200, 100), (50, 50), (150, 50)),  # as stored: red on the left
        (3, (200, 100), (150, 50), (50, 50)),  # turned 180 degrees: red on the right
        (6, (100, 200), (50, 50), (50, 150)),  # turned 90 degrees clockwise: red on top
        (8, (100, 200), (50, 150), (50, 50)),  # turned 90 degrees anticlockwise: red at the bottom
    ],
)
def test_exif_orientation_is_applied(orientation, size, red_at, blue_at):
    stored = Image.new("RGB", (200, 100), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 100, 100))  # red left half, blue right half
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = load_image(_encode(stored, "JPEG", quality=95, exif=exif))
    assert out.size == size
    px = _pixels(out)
    for (x, y), colour in ((red_at, (255, 0, 0)), (blue_at, (0, 0, 255))):
        patch = px[y - 20 : y + 20, x - 20 : x + 20]  # the middle of a half, away from the JPEG's blurred edge
        assert (abs(patch - colour) <= 8).all()


# --------------------------------------------------------------------------------------------
# preprocessing


def test_preprocess_normalizes_with_imagenet_statistics():
    prepared = preprocess(Image.new("RGB", (40, 20), (255, 0, 255)), stride=16, min_size=20, max_size=None)
    assert prepared.tensor.shape == (1, 3, 20, 40) and prepared.tensor.dtype == torch.float32
    expected = [(v - m) / s for v, m, s in zip((1.0, 0.0, 1.0), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(prepared.tensor[0, :, 7, 9], torch.tensor(expected), atol=1e-6, rtol=0)
    g = prepared.geometry
    assert (g.orig_w, g.orig_h, g.input_w, g.input_h, g.feat_w, g.feat_h, g.stride) == (40, 20, 40, 20, 3, 2, 16)


def test_preprocess_uses_the_official_evaluation_size(samples_dir):
    g = preprocess(load_image(samples_dir / "rocket.jpg"), stride=32).geometry  # 640x427
    assert (g.input_w, g.input_h) == (1199, 800)
    assert (g.feat_w, g.feat_h) == (38, 25)


@SETTINGS
@given(
    w=st.integers(1, 20_000),
    h=st.integers(1, 20_000),
    min_size=st.integers(1, 1200),
    extra=st.one_of(st.none(), st.integers(0, 2000)),
)
def test_resized_size_keeps_the_short_side_unless_the_long_side_would_pass_max_size(w, h, min_size, extra):
    max_size = None if extra is None else min_size + extra
    out_w, out_h = resized_size(w, h, min_size, max_size)
    short, long = min(w, h), max(w, h)
    out_short, out_long = (out_w, out_h) if w < h else (out_h, out_w)
    if max_size is None or long / short * min_size <= max_size:
        assert out_short == min_size
        assert out_long == int(min_size * long / short)
    else:
        assert out_short == round(max_size * short / long)
        assert out_long <= max_size + 0.5 * long / short + 1e-6  # at most half a short-side pixel of rounding
    if out_short > 0:  # the aspect ratio is kept to within one pixel of the long side
        assert long / short - 1 / out_short - 1e-9 < out_long / out_short <= long / short + 1e-9


@st.composite
def geometries(draw) -> Geometry:
    """Geometries of real `preprocess` passes over small images (so the test stays fast)."""
    w, h = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    stride = draw(st.sampled_from([8, 16, 32]))
    min_size = draw(st.integers(stride, 160))
    max_size = draw(st.one_of(st.none(), st.integers(min_size, 400)))
    try:
        prepared = preprocess(Image.new("RGB", (w, h)), stride, min_size, max_size)
    except ImageError:
        in_w, in_h = resized_size(w, h, min_size, max_size)
        assert min(in_w, in_h) < stride  # refused only when a side is under one cell
        draw(st.nothing())
    g = prepared.geometry
    assert prepared.tensor.shape == (1, 3, g.input_h, g.input_w)
    assert (g.input_w, g.input_h) == resized_size(w, h, min_size, max_size)
    assert (g.orig_w, g.orig_h, g.stride) == (w, h, stride)
    assert (g.feat_h, g.feat_w) == (math.ceil(g.input_h / stride), math.ceil(g.input_w / stride))
    return g


@SETTINGS
@given(g=geometries())
def test_each_cell_centre_maps_back_to_its_cell(g: Geometry):
    for row in range(g.feat_h):
        for col in range(g.feat_w):
            assert g.pixel_to_cell(*g.cell_center(row, col)) == (row, col)
            assert g.token(row, col) == row * g.feat_w + col
    assert g.tokens == g.feat_h * g.feat_w


@SETTINGS
@given(g=geometries())
def test_every_original_pixel_lies_in_the_box_of_its_cell(g: Geometry):
    # rows depend only on y and columns only on x, so one pass along each axis covers every pixel
    for x in range(g.orig_w):
        for px in (x, x + 0.5):
            _, col = g.pixel_to_cell(px, 0)
            assert 0 <= col < g.feat_w
            x0, _, x1, _ = g.cell_box(0, col)
            assert x0 <= px < x1
    for y in range(g.orig_h):
        for py in (y, y + 0.5):
            row, _ = g.pixel_to_cell(0, py)
            assert 0 <= row < g.feat_h
            _, y0, _, y1 = g.cell_box(row, 0)
            assert y0 <= py < y1
    assert g.pixel_to_cell(-5, -5) == (0, 0)  # points outside the image clamp to the border cells
    assert g.pixel_to_cell(g.orig_w + 5, g.orig_h + 5) == (g.feat_h - 1, g.feat_w - 1)
    assert g.cell_box(g.feat_h - 1, g.feat_w - 1)[2:] == pytest.approx((g.orig_w, g.orig_h))


@pytest.mark.parametrize(
    ("name", "stride", "photo", "min_size"),
    [
        ("detr_shapes", 16, "chelsea.png", 64),
        ("detr_shapes", 16, "grace_hopper.jpg", 71),
        ("detr_shapes", 16, "coffee.png", 50),
        ("detr_resnet50", 32, "rocket.jpg", 75),
        ("detr_resnet50_dc5", 16, "grace_hopper.jpg", 70),
    ],
)
def test_the_real_feature_map_has_the_geometry_s_shape(zoo_model, samples_dir, name, stride, photo, min_size):
    model = zoo_model(name)
    assert model.stride == stride
    prepared = preprocess(load_image(samples_dir / photo), stride=stride, min_size=min_size)
    with torch.no_grad():
        features, pos = model.backbone(prepared.tensor)
    g = prepared.geometry
    assert features.shape[-2:] == (g.feat_h, g.feat_w)
    assert pos.shape[-2:] == (g.feat_h, g.feat_w)


# --------------------------------------------------------------------------------------------
# pictures that used to come out silently wrong, and messages that used to be unclear


def _hostile():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import hostile

    return hostile


def test_a_float_tiff_with_nan_and_infinity_keeps_its_picture():
    ramp = np.linspace(0.0, 1.0, 8 * 6, dtype=np.float32).reshape(6, 8)
    ramp[0, 0], ramp[0, 1], ramp[0, 2] = np.nan, np.inf, -np.inf
    out = _pixels(load_image(_hostile().tiff(ramp, photometric=1, sample_format=3)))[..., 0]
    finite = np.isfinite(ramp)
    expected = np.rint((ramp - ramp[finite].min()) / np.ptp(ramp[finite]) * 255)
    assert np.abs(out[finite] - expected[finite]).max() <= 1  # the finite range is stretched, not lost
    assert out[5, 7] == 255 and out.std() > 60  # not wholly black
    assert (out[0, 0], out[0, 1], out[0, 2]) == (0, 255, 0)  # NaN: no data (black), +inf white, -inf black


def test_a_float_tiff_without_a_finite_value_is_refused_with_the_reason():
    nothing = np.full((4, 4), np.nan, dtype=np.float32)
    with pytest.raises(ImageError, match="no finite value"):
        load_image(_hostile().tiff(nothing, photometric=1, sample_format=3))


def _cie_lab_to_srgb(lab: tuple[float, float, float]) -> np.ndarray:
    """The CIE formulas (D65 white), written here independently of the code under test."""
    L, a, b = lab
    fy = (L + 16) / 116
    fx, fz = fy + a / 500, fy - b / 200

    def finv(t: float) -> float:
        return t**3 if t > 6 / 29 else 3 * (6 / 29) ** 2 * (t - 4 / 29)

    x, y, z = 0.95047 * finv(fx), 1.0 * finv(fy), 1.08883 * finv(fz)
    r = 3.2406 * x - 1.5372 * y - 0.4986 * z
    g = -0.9689 * x + 1.8758 * y + 0.0415 * z
    bl = 0.0557 * x - 0.2040 * y + 1.0570 * z

    def gamma(c: float) -> float:
        c = min(max(c, 0.0), 1.0)
        return 12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055

    return np.array([255 * gamma(r), 255 * gamma(g), 255 * gamma(bl)])


LABS = [(50, 20, -20), (60, 80, 60), (30, -40, -50), (90, -10, 80), (20, 60, -90), (100, 0, 0)]


@pytest.mark.parametrize("lab", LABS)
def test_a_cielab_tiff_gets_its_colours(lab):
    """A hand-written CIELab TIFF (L* in 0..255 for 0..100, a* and b* signed bytes, as TIFF 6.0 says)."""
    L, a, b = lab
    pixels = np.zeros((3, 5, 3), dtype=np.uint8)
    pixels[..., 0] = round(L * 255 / 100)
    pixels[..., 1] = np.array(a, dtype=np.int8).view(np.uint8)
    pixels[..., 2] = np.array(b, dtype=np.int8).view(np.uint8)
    out = _pixels(load_image(_hostile().tiff(pixels, photometric=8)))
    expected = _cie_lab_to_srgb((round(L * 255 / 100) * 100 / 255, a, b))
    assert np.abs(out - expected).max() <= 1.5, (out[0, 0], expected)
    if lab == (50, 20, -20):
        assert np.abs(out[0, 0] - (135, 112, 150)).max() <= 5  # the figure, "about"


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_png_with_a_transparent_colour_is_composited_on_white(mode):
    img = Image.new(mode, (6, 4), (10, 20, 30) if mode == "RGB" else 10)
    img.paste((200, 100, 0) if mode == "RGB" else 200, (0, 0, 3, 4))  # left half opaque
    data = _encode(img, "PNG", transparency=(10, 20, 30) if mode == "RGB" else 10)
    assert "transparency" in Image.open(io.BytesIO(data)).info
    out = _pixels(load_image(data))
    assert (out[:, 3:] == 255).all()  # the transparent colour: white, like palette transparency
    assert (out[:, :3] == ((200, 100, 0) if mode == "RGB" else (200, 200, 200))).all()


def _forged_jpeg(width: int, height: int, progressive: bool = False) -> bytes:
    """A 256x256 JPEG whose frame header is patched to claim width x height."""
    data = bytearray(_encode(Image.new("RGB", (256, 256), (120, 130, 140)), "JPEG", progressive=progressive))
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at > 0:
            struct.pack_into(">HH", data, at + 5, height, width)
            return bytes(data)
    raise AssertionError("no frame header")


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_whose_header_claims_far_more_pixels_than_its_data_is_refused(progressive):
    data = _forged_jpeg(8000, 5000, progressive)
    assert Image.open(io.BytesIO(data)).size == (8000, 5000)  # PIL would "decode" it (as grey garbage)
    with pytest.raises(ImageError, match="far less data than its header claims: a 8000x5000 JPEG"):
        load_image(data)


@pytest.mark.parametrize("progressive", [False, True])
def test_the_most_compressible_legal_jpegs_still_pass_the_data_check(progressive):
    """One flat colour, 4:4:4 and 4:2:0, optimized Huffman tables: the least data a JPEG needs."""
    for subsampling in (0, 2):
        flat = _encode(Image.new("RGB", (4000, 3000), (255, 255, 255)), "JPEG", quality=50, optimize=True,
                       progressive=progressive, subsampling=subsampling)  # fmt: skip
        assert load_image(flat).size == (4000, 3000)
    gray = _encode(Image.new("L", (4000, 3000), 0), "JPEG", optimize=True, progressive=progressive)
    assert load_image(gray).size == (4000, 3000)


def test_the_pixel_limit_message_shows_exact_counts():
    with pytest.raises(ImageError, match=r"40001x1000 is 40,001,000 pixels, at most 40,000,000 \(40 megapixels\)"):
        load_image(_encode(Image.new("L", (40001, 1000)), "PNG", compress_level=1))


def _with_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return png[:33] + chunk + png[33:]  # after the signature and IHDR


@pytest.mark.parametrize("kind", ["zTXt", "iTXt", "iCCP", "tEXt"])
def test_a_valid_png_with_a_large_text_or_icc_chunk_decodes(kind):
    img = Image.new("RGB", (40, 30), (10, 160, 90))
    png = _encode(img, "PNG")
    text = np.random.default_rng(0).integers(32, 127, 3 << 20, dtype=np.uint8).tobytes()  # 3 MB, 2.5 compressed
    body = {
        "zTXt": b"Comment\0\0" + zlib.compress(text),
        "iTXt": b"Comment\0\1\0\0\0" + zlib.compress(text),
        "iCCP": b"big profile\0\0" + zlib.compress(text),
        "tEXt": b"Comment\0" + text,
    }[kind]
    out = load_image(_with_chunk(png, kind.encode(), body))
    assert (_pixels(out) == (10, 160, 90)).all()


@pytest.mark.parametrize(
    ("pixels", "extra", "fmt", "message"),
    [
        (np.linspace(0, 1, 12).reshape(3, 4), (), 3, r"1 sample of 64-bit floating point per pixel \(grayscale\)"),
        (np.full((3, 4, 2), 30000, np.uint16), (2,), 1,
         r"2 samples of 16-bit unsigned integer per pixel \(grayscale with alpha\)"),
    ],
)  # fmt: skip
def test_a_tiff_in_an_unsupported_pixel_format_is_named(pixels, extra, fmt, message):
    with pytest.raises(ImageError, match=r"this TIFF's pixel format is not supported: " + message):
        load_image(_hostile().tiff(pixels, photometric=1, sample_format=fmt, extra_samples=extra))


@pytest.mark.parametrize("size", [(6000, 4000), (4000, 6000), (1001, 999), (901, 30), (40, 2000), (900, 900), (3, 5)])
@pytest.mark.parametrize("max_side", [900, 260])
def test_thumbnail_is_pillows_thumbnail_of_a_copy(size, max_side):
    """The display copies: exactly Pillow's `copy()` + `thumbnail()` (same size, same pixels), the
    original left as it was."""
    rng = np.random.default_rng(size[0] * 7 + size[1])
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    original = image.tobytes()
    expected = image.copy()
    expected.thumbnail((max_side, max_side), Image.LANCZOS)
    got = thumbnail(image, max_side, Image.LANCZOS)
    assert got is not image and got.size == expected.size and got.mode == expected.mode
    assert got.tobytes() == expected.tobytes()
    assert image.size == size and image.tobytes() == original


def test_thumbnail_of_a_large_photo_does_not_copy_it_first():
    """A 24-megapixel photo is 96 MB: six of Pillow's 16 MB blocks for a copy. The thumbnail
    allocates only its reduction and its result (what the load test's burst left in malloc's heaps
    was those copies)."""
    image = Image.new("RGB", (6000, 4000), (10, 20, 30))
    Image.core.reset_stats()
    small = thumbnail(image, 900, Image.LANCZOS)
    assert Image.core.get_stats()["allocated_blocks"] <= 3
    assert small.size == (900, 600)
    Image.core.reset_stats()
    image.copy()
    assert Image.core.get_stats()["allocated_blocks"] >= 6  # what the check would see with a copy
