"""Decoder pathologies under the decoding budget (detr_core/io/decode_budget.py).

Each kind is made here in code. `load_image` must give an RGB image or `ImageError` within the
budget: refused from its structure before decoding where that is cheap, and otherwise stopped by
the worker's CPU, memory or wall-clock limit, the worker replaced. The batch CLI reports the file
and goes on with the next one.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from detr_core import ImageError, load_image
from detr_core.io import decode_budget
from detr_core.io import image as image_module

REPO = Path(__file__).resolve().parent.parent
# The CPU limit is whole seconds (RLIMIT_CPU), so a decode may run up to CPU_SECONDS + 1 s of CPU;
# on a shared 2-core machine the wall-clock deadline is what a caller waits at most.
BUDGET_S = decode_budget.WALL_SECONDS + 3.0


@pytest.fixture(scope="module", autouse=True)
def _started_pool():
    # The budgeted decode is the default; this module makes sure of it ($DETR_DECODE_BUDGET=0 is off).
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(image_module.DECODE_BUDGET_ENV, raising=False)
        decode_budget.warm_up()  # the one-off start (the forkserver imports the decoder) is not a decode
        yield


def test_with_the_switch_off_bytes_are_decoded_in_process(monkeypatch):
    monkeypatch.setenv(image_module.DECODE_BUDGET_ENV, "0")

    def no_worker(*args, **kwargs):
        raise AssertionError("the worker pool was used although the budget is off")

    monkeypatch.setattr(image_module, "run_budgeted", no_worker)
    assert load_image(png(4, 3)).size == (4, 3)
    with pytest.raises(ImageError, match="scans"):  # the structure checks are always on
        load_image(scan_bomb())


# ---- generators ---------------------------------------------------------------------------------


def jpeg_segments(data: bytes) -> list[bytes]:
    """A JPEG -> its segments (SOI, each marker segment; a SOS segment includes its entropy data)."""
    out, pos = [data[:2]], 2
    while pos < len(data):
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        if marker == 0xD9:
            out.append(data[pos : pos + 2])
            break
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        end = pos + 2 + length
        if marker == 0xDA:  # entropy-coded data runs to the next marker that is not FF00 / RSTn
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        out.append(data[pos:end])
        pos = end
    return out


def progressive_jpeg(size: tuple[int, int] = (64, 48), flat: bool = False) -> bytes:
    rng = np.random.default_rng(0)
    pixels = np.full((size[1], size[0], 3), 128, np.uint8) if flat else rng.integers(0, 255, (size[1], size[0], 3))
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", progressive=True, quality=80)
    return buf.getvalue()


def scan_bomb(scans: int = 5000, size: tuple[int, int] = (2000, 2000)) -> bytes:
    """A progressive JPEG whose last refinement scan is repeated thousands of times (under 1 MB)."""
    segs = jpeg_segments(progressive_jpeg(size, flat=True))
    sos = [s for s in segs if s[1] == 0xDA]
    return b"".join(segs[:-1]) + sos[-1] * scans + segs[-1]


def fill_bomb(fill: int = 20_000_000) -> bytes:
    """A baseline JPEG with `fill` bytes of 0xFF padding before its scan (legal JPEG)."""
    segs = jpeg_segments(progressive_jpeg())
    i = next(k for k, s in enumerate(segs) if s[1] == 0xDA)
    return b"".join(segs[:i]) + b"\xff" * fill + b"".join(segs[i:])


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, depth: int = 8, color: int = 2, body: bytes | None = None, extra=b"") -> bytes:
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    row = width * channels * depth // 8
    if body is None:
        z = zlib.compressobj(1)
        line = b"\x00" + bytes(row)
        body = b"".join(z.compress(line) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def chunk_bomb(chunks: int = 2_000_000) -> bytes:
    """A small PNG with millions of unknown ancillary chunks before its image data."""
    return png(8, 8, extra=png_chunk(b"quUx", b"") * chunks)


def bmp_rle(width: int = 8000, height: int = 5000, rle4: bool = False) -> bytes:
    """A 40-megapixel BMP of RLE8 (or RLE4) runs: a few hundred kB that PIL decodes in Python."""
    colors = 16 if rle4 else 256
    run = b"\xff\x11" * (width // 255) + bytes([width % 255, 0x11]) + b"\x00\x00"  # a line, end of line
    data = run * height + b"\x00\x01"
    palette = b"".join(bytes((i, i, i, 0)) for i in range(colors))
    header_size = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 4 if rle4 else 8, 2 if rle4 else 1, len(data),
                       2835, 2835, colors, 0)  # fmt: skip
    return b"BM" + struct.pack("<IHHI", header_size + len(data), 0, 0, header_size) + info + palette + data


def refused_or_decoded(data: bytes) -> tuple[str, float]:
    start = time.perf_counter()
    try:
        img = load_image(data)
    except ImageError as e:
        return f"refused: {e}", time.perf_counter() - start
    assert img.mode == "RGB"
    return f"decoded {img.width}x{img.height}", time.perf_counter() - start


KINDS = {
    "scan_bomb": scan_bomb,
    "fill_bomb": fill_bomb,
    "chunk_bomb": chunk_bomb,
    "bmp_rle8": bmp_rle,
    "bmp_rle4": lambda: bmp_rle(rle4=True),
    "rgba16_png": lambda: png(8000, 5000, depth=16, color=6),
}


# ---- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["scan_bomb", "fill_bomb", "chunk_bomb"])
def test_cheap_to_spot_kinds_are_refused_before_decoding_with_a_reason(kind):
    data = KINDS[kind]()
    assert len(data) < 30_000_000
    outcome, seconds = refused_or_decoded(data)
    assert outcome.startswith("refused"), outcome
    assert {"scan_bomb": "scans", "fill_bomb": "0xFF padding", "chunk_bomb": "ancillary chunks"}[kind] in outcome
    assert seconds < 1.0, seconds  # the structure check, not the decoder


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_is_answered_within_the_budget_even_without_the_structure_checks(kind, monkeypatch):
    monkeypatch.setattr(image_module, "refuse_costly", lambda data: None)  # only the worker's limits left
    data = KINDS[kind]()
    outcome, seconds = refused_or_decoded(data)
    print(f"{kind}: {outcome} in {seconds:.1f} s")
    assert seconds < BUDGET_S, (kind, outcome, seconds)
    # and the pool still works afterwards (a killed worker was replaced)
    assert load_image(png(4, 3)).size == (4, 3)


def test_worker_limits_stop_a_decoder_that_spins_or_eats_memory():
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"CPU|longer than"):
        decode_budget.run_budgeted(spin, b"x", cpu_seconds=1, wall_seconds=8)
    assert time.perf_counter() - start < 8 + 2
    with pytest.raises(ImageError, match="memory"):
        decode_budget.run_budgeted(eat_memory, b"x")
    with pytest.raises(ImageError, match="longer than 1 s"):
        decode_budget.run_budgeted(sleep, b"x", wall_seconds=1)
    assert decode_budget.run_budgeted(echo, b"abc") == ("meta", b"abc")


def spin(data: bytes):
    while True:
        pass


def eat_memory(data: bytes):
    return None, bytearray(decode_budget.MEMORY_BYTES + 2**30)


def sleep(data: bytes):
    time.sleep(30)


def echo(data: bytes):
    return "meta", data


def _encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _photos() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 255, (300, 400, 3)).astype(np.uint8))
    out = {"jpeg": _encoded(rgb, "JPEG", quality=90), "png": _encoded(rgb, "PNG")}
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        out[f"jpeg_orientation_{orientation}"] = _encoded(rgb, "JPEG", quality=90, exif=exif)
    out["progressive"] = _encoded(rgb, "JPEG", progressive=True)
    out["gray_jpeg"] = _encoded(rgb.convert("L"), "JPEG")
    out["cmyk_jpeg"] = _encoded(rgb.convert("CMYK"), "JPEG")
    out["rgba_png"] = _encoded(rgb.convert("RGBA"), "PNG")
    out["palette_png"] = _encoded(rgb.convert("P"), "PNG")
    out["interlaced_png"] = png(37, 23)  # (PIL cannot write Adam7; a plain tiny PNG instead)
    out["gif"] = _encoded(rgb.convert("P"), "GIF")
    out["webp"] = _encoded(rgb, "WEBP", lossless=True)
    out["bmp"] = _encoded(rgb, "BMP")
    out["tiff16"] = _encoded(Image.fromarray((np.arange(12_000, dtype=np.uint16) * 5).reshape(100, 120)), "TIFF")
    return out


@pytest.mark.parametrize("name", sorted(_photos()))
def test_a_photo_is_decoded_exactly_as_in_process(name, monkeypatch):
    data = _photos()[name]
    via_worker = load_image(data)
    monkeypatch.setenv(image_module.DECODE_BUDGET_ENV, "0")
    local = load_image(data)
    assert via_worker.mode == local.mode == "RGB"
    assert via_worker.size == local.size and via_worker.tobytes() == local.tobytes()


def test_the_worker_result_is_shared_memory_that_goes_when_the_image_goes():
    import gc

    before = _memory_maps()
    img = load_image(_photos()["jpeg"])
    assert img.readonly and _memory_maps() == before + 1  # the worker's result, mapped, not copied
    pixel = img.getpixel((0, 0))
    drawn = img.copy()
    drawn.putpixel((0, 0), tuple(255 - v for v in pixel))
    img.paste((1, 2, 3), (0, 0, 1, 1))  # Pillow copies a read-only image before changing it
    assert img.getpixel((0, 0)) == (1, 2, 3) and drawn.getpixel((0, 0)) != pixel
    del img, drawn
    gc.collect()
    assert _memory_maps() == before  # unmapped with the image: the memory is the kernel's again


def _memory_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum("detr-decode" in line for line in f)


def test_the_workers_import_no_torch():
    assert decode_budget.run_budgeted(torch_loaded, b"")[0] is False


def torch_loaded(data: bytes):
    return "torch" in sys.modules, b""


def test_only_regular_files_of_bounded_size_are_read(tmp_path):
    import os

    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        start = time.perf_counter()
        with pytest.raises(ImageError, match="not a regular file"):
            load_image(path)
        assert time.perf_counter() - start < 2
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(image_module.MAX_FILE_BYTES + 1)
    with pytest.raises(ImageError, match="at most 100 MB"):
        load_image(big)


def test_megapixel_message_does_not_round_to_the_limit():
    with pytest.raises(ImageError, match=r"40001x1000 is 40,001,000 pixels, at most 40,000,000 \(40 megapixels\)"):
        load_image(png(40001, 1000, body=b""))


def test_batch_cli_reports_a_pathological_file_and_goes_on(tmp_path):
    (tmp_path / "bomb.jpg").write_bytes(scan_bomb())
    (tmp_path / "fill.jpg").write_bytes(fill_bomb())
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "good.png")
    out = tmp_path / "out"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "detr_core", str(tmp_path / "bomb.jpg"), str(tmp_path / "fill.jpg"),
         str(tmp_path / "good.png"), "--model", "detr_shapes", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "bomb.jpg: error: this JPEG has 50" in proc.stderr
    assert "fill.jpg: error: this JPEG has" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (out / "good" / "detections.json").exists()
    assert time.perf_counter() - start < 120


# ---- fuzz: structure-aware mutations ---------------------------------------------------------

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
JPEG_SEGMENTS = jpeg_segments(progressive_jpeg((48, 32)))
PNG_PARTS = [png_chunk(b"tEXt", b"k\x00v"), png_chunk(b"gAMA", struct.pack(">I", 45455)), png_chunk(b"quUx", b"")]


@FUZZ
@given(
    st.lists(st.integers(0, len(JPEG_SEGMENTS) - 1), min_size=1, max_size=40),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
)
def test_fuzz_progressive_jpeg_segments(order, flips):
    """Segments of a progressive JPEG repeated, dropped, reordered, with bytes changed."""
    data = bytearray(JPEG_SEGMENTS[0] + b"".join(JPEG_SEGMENTS[i] for i in order) + JPEG_SEGMENTS[-1])
    for pos, value in flips:
        data[pos % len(data)] = value
    _outcome, seconds = refused_or_decoded(bytes(data))  # any exception but ImageError fails the test
    assert seconds < BUDGET_S


@FUZZ
@given(
    st.integers(1, 64),
    st.integers(1, 64),
    st.sampled_from([(8, 0), (8, 2), (16, 2), (8, 6), (16, 6), (16, 4)]),
    st.lists(st.sampled_from(range(len(PNG_PARTS))), max_size=20),
    st.integers(0, 3000),
    st.booleans(),
)
def test_fuzz_chunked_png(width, height, depth_color, extras, repeat, truncate):
    """PNGs with extra, repeated and unknown chunks, and image data cut short."""
    depth, color = depth_color
    extra = b"".join(PNG_PARTS[i] for i in extras) + PNG_PARTS[2] * repeat
    data = png(width, height, depth, color, extra=extra)
    if truncate:
        data = data[: len(data) * 3 // 4]
    _outcome, seconds = refused_or_decoded(data)
    assert seconds < BUDGET_S
