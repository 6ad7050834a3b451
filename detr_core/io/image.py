"""Image loading and preprocessing, and the geometry that ties original pixels to feature cells.

`load_image` turns untrusted bytes into an RGB `PIL.Image` (EXIF orientation applied, any mode
converted) or raises `ImageError` with a message a person understands. `preprocess` resizes
(shorter side `min_size`, longer side at most `max_size`, as the official evaluation) and
normalizes with ImageNet statistics, and returns the exact `Geometry` of the pass.

This module imports PIL and numpy, never torch at import time (only `preprocess` needs it): the
budgeted decode workers (io/decode_budget.py) import it, and start in milliseconds without torch.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import struct
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import ExifTags, Image, ImageOps, TiffImagePlugin, UnidentifiedImageError

from ..errors import ImageError
from . import decode_budget
from .decode_budget import run_budgeted

if TYPE_CHECKING:
    import torch

__all__ = [
    "Geometry", "PreparedImage", "load_image", "preprocess", "resized_size", "thumbnail", "without_png_metadata",
    "MAX_PIXELS",
]  # fmt: skip

MAX_PIXELS = 40_000_000  # larger images are refused before they are decoded (decompression bombs)
MAX_FILE_BYTES = 100 * 2**20  # files are read only up to this size (and only regular files)
MAX_JPEG_SCANS = 100  # libjpeg writes at most ~10 for a progressive file; thousands are a "scan bomb"
MAX_JPEG_FILL_BYTES = 64 * 2**10  # 0xFF fill bytes between markers (legal, but megabytes cost minutes)
MAX_JPEG_FILL_RUN = 1024  # of them before one marker
MAX_PNG_CHUNKS = 20_000  # IDATs included; 2 million unknown ancillary chunks cost half a minute
MAX_PNG_ANCILLARY = 1_000
# Bytes and files are decoded in the budgeted worker pool of `decode_budget` (CPU, memory and time
# limits whatever the file does) unless this is "0": then in this process, with only the structure
# checks of `refuse_costly` (and PIL's pixel limit) between a hostile file and the server.
DECODE_BUDGET_ENV = "DETR_DECODE_BUDGET"
# The only decoders untrusted bytes reach (PIL's JPEG opener also returns the MPO files many phones
# write). PIL would otherwise try every plugin it has, EPS included, which it reads by running
# Ghostscript on the file.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Geometry:
    """Sizes of one pass, and exact maps between original pixels, input pixels and feature cells.

    A feature cell (row, col) covers input pixels [row*stride, (row+1)*stride) x [col*stride, ...);
    tokens are cells flattened row by row: token = row * feat_w + col.
    """

    orig_h: int
    orig_w: int
    input_h: int  # after resizing (the tensor the model sees)
    input_w: int
    feat_h: int  # feature map (h, w) = ceil(input / stride)
    feat_w: int
    stride: int

    @property
    def tokens(self) -> int:
        return self.feat_h * self.feat_w

    def to_input(self, x: float, y: float) -> tuple[float, float]:
        """Original pixel coordinates -> resized input coordinates."""
        return x * self.input_w / self.orig_w, y * self.input_h / self.orig_h

    def to_original(self, x: float, y: float) -> tuple[float, float]:
        return x * self.orig_w / self.input_w, y * self.orig_h / self.input_h

    def pixel_to_cell(self, x: float, y: float) -> tuple[int, int]:
        """A point in original-image pixels -> the (row, col) of the feature cell that holds it."""
        xi, yi = self.to_input(x, y)
        row = min(max(math.floor(yi / self.stride), 0), self.feat_h - 1)
        col = min(max(math.floor(xi / self.stride), 0), self.feat_w - 1)
        return row, col

    def cell_box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """The part of the image a cell covers, as (x0, y0, x1, y1) in original pixels."""
        x0, y0 = self.to_original(col * self.stride, row * self.stride)
        x1, y1 = self.to_original(
            min((col + 1) * self.stride, self.input_w), min((row + 1) * self.stride, self.input_h)
        )
        return x0, y0, x1, y1

    def cell_center(self, row: int, col: int) -> tuple[float, float]:
        """The centre of the visible part of a cell, (x, y) in original pixels."""
        x0, y0, x1, y1 = self.cell_box(row, col)
        return (x0 + x1) / 2, (y0 + y1) / 2

    def token(self, row: int, col: int) -> int:
        return row * self.feat_w + col


@dataclass(frozen=True)
class PreparedImage:
    tensor: torch.Tensor  # [1, 3, input_h, input_w], ImageNet-normalized float32
    geometry: Geometry


def _bytes_of(source: bytes | str | os.PathLike) -> bytes:
    """The bytes of a path (a bounded regular file) or of a bytes-like object; `ImageError` if none."""
    if isinstance(source, (str, os.PathLike)):
        source = read_file(source)
    if not isinstance(source, (bytes, bytearray, memoryview)):
        raise ImageError(f"expected image bytes, a path or a PIL image, got {type(source).__name__}")
    if len(source) == 0:
        raise ImageError("the file is empty (0 bytes)")
    return bytes(source)


def _open(source: bytes | str | os.PathLike | Image.Image) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    source = without_png_metadata(_bytes_of(source))  # in the budgeted worker too, when there is one
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(source), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        tiff = _tiff_pixel_format(source) if source[:4] in (b"II*\x00", b"MM\x00*") else None
        if tiff is not None:
            raise ImageError(
                f"this TIFF's pixel format is not supported: {tiff}. Save it as 8-bit grayscale, RGB or RGBA, "
                "16-bit grayscale or RGB, or 32-bit floating-point grayscale"
            ) from None
        raise ImageError("this file is not an image we can read (JPEG, PNG, WebP, GIF, BMP or TIFF)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"the image is too large: at most {MAX_PIXELS // 1_000_000} megapixels") from None
    except Exception as e:  # PIL raises many types on malformed headers
        raise ImageError(f"the image header is corrupt ({type(e).__name__}: {e})") from None


_TIFF_SAMPLE_FORMATS = {1: "unsigned integer", 2: "signed integer", 3: "floating point", 4: "untyped"}
_TIFF_PHOTOMETRIC = {0: "grayscale (white is zero)", 1: "grayscale", 2: "RGB", 3: "palette", 4: "mask", 5: "CMYK",
                     6: "YCbCr", 8: "CIELab", 9: "ICC Lab", 10: "ITU Lab", 32844: "LogL", 32845: "LogLuv"}  # fmt: skip


def _tiff_pixel_format(data: bytes) -> str | None:
    """The pixel format of a TIFF's first image in words, e.g. "2 samples of 16-bit unsigned
    integer per pixel (grayscale with 1 extra sample, alpha)"; None if its header cannot be read."""
    try:
        ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=data[:8])
        fp = io.BytesIO(data)
        fp.seek(ifd.next)
        ifd.load(fp)
        bits = tuple(ifd.get(258, (1,)))
        samples = int(ifd.get(277, 1))
        kinds = tuple(ifd.get(339, (1,)))
        photometric = ifd.get(262)
        extra = tuple(ifd.get(338, ()))
    except Exception:  # a damaged header: the generic message says enough
        return None
    width = "/".join(str(b) for b in sorted(set(bits)))
    kind = "/".join(_TIFF_SAMPLE_FORMATS.get(k, f"format {k}") for k in sorted(set(kinds)))
    what = _TIFF_PHOTOMETRIC.get(photometric, f"photometric {photometric}")
    if extra:
        what += " with alpha" if extra[0] in (1, 2) else f" with {len(extra)} extra sample(s)"
    return f"{samples} sample{'s' if samples != 1 else ''} of {width}-bit {kind} per pixel ({what})"


def read_file(path: str | os.PathLike, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; `ImageError` for anything else.

    Opened without blocking (a FIFO with no writer would hang a plain open), checked to be a
    regular file (not /dev/zero, a folder or a socket) and its size checked before reading.
    """
    name = os.fsdecode(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise ImageError(f"cannot read {name!r}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{name!r} is not a regular file")
        if st.st_size > limit:
            raise ImageError(f"{name!r} is {st.st_size / 2**20:.1f} MB; at most {limit // 2**20} MB are read")
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read(limit + 1)
    except OSError as e:
        raise ImageError(f"cannot read {name!r}: {e.strerror or e}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > limit:
        raise ImageError(f"{name!r} is larger than {limit // 2**20} MB, the limit")
    return data


# more fill bytes in a row than accepted, and the marker's own 0xFF (bytes.find: 0.1 ms for 2.6 MB, a regex 25)
_FILL_RUN = b"\xff" * (MAX_JPEG_FILL_RUN + 2)
_FF_RUN = re.compile(rb"\xff+")
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # entropy data stuffs 0xFF as FF00; RSTn lie inside it


def _jpeg_markers(data: bytes) -> tuple[int, int, int]:
    """(scans, 0xFF fill bytes, most fill bytes before one marker) of a JPEG, found by walking its
    marker segments.

    Only markers count: a segment's payload (an ICC profile, EXIF and its thumbnail, a comment) may
    hold any bytes, 0xFFDA and long runs of 0xFF included. Entropy-coded data and junk between
    segments are skipped to the next marker.
    """
    pos, end, scans, total, most = 2, len(data), 0, 0, 0
    while pos < end:
        run = _FF_RUN.match(data, pos)
        if run is None:
            nxt = _NEXT_MARKER.search(data, pos)
            if nxt is None:
                break
            pos = nxt.start()
            continue
        fill = run.end() - pos - 1  # the last 0xFF is the marker's
        total, most = total + fill, max(most, fill)
        pos = run.end() + 1
        marker = data[pos - 1] if pos <= end else 0
        scans += marker == 0xDA
        if marker not in (0x00, 0x01, *range(0xD0, 0xDA)):  # a marker with a length
            pos += int.from_bytes(data[pos : pos + 2], "big")
    return scans, total, most


def refuse_costly(data: bytes) -> None:
    """Refuse, before decoding, files whose structure alone shows they would cost minutes.

    JPEG: the count of scans (SOS markers) and of 0xFF fill bytes before markers, in all and before
    one marker (markers found by walking the segments: an ICC profile or EXIF may hold any bytes).
    PNG: the count of chunks and of ancillary chunks.
    """
    if data[:2] == b"\xff\xd8":
        scans, fill, most = 0, 0, 0
        # whole-file counts first (fast; they include segment payloads): the walk only where they are high
        pairs = data.count(b"\xff\xff")  # at least half the 0xFF fill bytes
        if data.count(b"\xff\xda") > MAX_JPEG_SCANS or 2 * pairs > MAX_JPEG_FILL_BYTES or data.find(_FILL_RUN) >= 0:
            scans, fill, most = _jpeg_markers(data)
        if scans > MAX_JPEG_SCANS:
            raise ImageError(f"this JPEG has {scans} scans; at most {MAX_JPEG_SCANS} are accepted (a 'scan bomb')")
        if most > MAX_JPEG_FILL_RUN:
            raise ImageError(
                f"this JPEG has {most} bytes of 0xFF padding in a row before a marker; "
                f"at most {MAX_JPEG_FILL_RUN} in a row are accepted"
            )
        if fill > MAX_JPEG_FILL_BYTES:
            raise ImageError(
                f"this JPEG has {fill} bytes of 0xFF padding between markers; "
                f"at most {MAX_JPEG_FILL_BYTES} are accepted"
            )
        _refuse_jpeg_without_its_data(data)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        pos, chunks, ancillary = 8, 0, 0
        end = len(data)
        while pos + 8 <= end:
            length, kind = struct.unpack_from(">I4s", data, pos)
            chunks += 1
            if kind[0] & 0x20 and kind not in (b"tEXt", b"zTXt", b"iTXt"):  # lowercase first letter
                ancillary += 1
            if chunks > MAX_PNG_CHUNKS or ancillary > MAX_PNG_ANCILLARY:
                what = "chunks" if chunks > MAX_PNG_CHUNKS else "ancillary chunks"
                limit = MAX_PNG_CHUNKS if chunks > MAX_PNG_CHUNKS else MAX_PNG_ANCILLARY
                raise ImageError(f"this PNG has more than {limit} {what}, the limit")
            if kind == b"IEND":
                break
            pos += 12 + length


def _float_to_8_bits(arr: np.ndarray) -> np.ndarray:
    """Floating-point samples -> 0..255, their finite range stretched over it; +inf is white, -inf
    and NaN (no data) black. `ImageError` if no sample is finite (there is no picture to show)."""
    finite = np.isfinite(arr)
    if not finite.any():
        raise ImageError("this floating-point image holds no finite value (every pixel is NaN or infinite)")
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    out = (np.where(finite, arr, lo) - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return np.where(arr == np.inf, 255.0, out)


# CIE L*a*b* -> sRGB (IEC 61966-2-1), relative to D65, the sRGB white point (as skimage's lab2rgb)
_D65 = np.array([0.95047, 1.0, 1.08883])
_XYZ_TO_LINEAR_SRGB = np.array(
    [[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560], [0.0556434, -0.2040259, 1.0572252]]
)


def _lab_to_rgb(img: Image.Image) -> Image.Image:
    """A PIL "LAB" image (L* as 0..255 for 0..100, a* and b* as signed bytes) -> sRGB, by the CIE formulas.

    PIL's own `convert("RGB")` is not used: its result depends on the Pillow version and build.
    """
    raw = np.asarray(img)
    lab = np.empty(raw.shape, dtype=np.float64)
    lab[..., 0] = raw[..., 0] * (100.0 / 255.0)
    lab[..., 1:] = raw[..., 1:].view(np.int8)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack((fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0), axis=-1)
    delta = 6.0 / 29.0
    xyz = np.where(f > delta, f**3, 3 * delta**2 * (f - 4.0 / 29.0)) * _D65
    linear = np.clip(xyz @ _XYZ_TO_LINEAR_SRGB.T, 0.0, 1.0)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return Image.fromarray(np.rint(srgb * 255.0).astype(np.uint8), "RGB")


_HUFFMAN_FRAMES = (0xC0, 0xC1, 0xC2)  # baseline, extended and progressive DCT, Huffman-coded


def _jpeg_frame(data: bytes) -> tuple[int, int, int, int, list[tuple[int, int]]] | None:
    """(SOF marker, width, height, offset of the first scan, sampling factors per component) of a
    JPEG, read from its marker segments; None if they cannot be found (PIL then says what is wrong)."""
    pos, end, frame = 2, len(data), None
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and pos + 10 <= end:
            height, width, count = struct.unpack_from(">HHB", data, pos + 5)
            factors = [
                (data[pos + 11 + 3 * i] >> 4, data[pos + 11 + 3 * i] & 15)
                for i in range(count)
                if pos + 12 + 3 * i <= end
            ]
            frame = (marker, width, height, factors)
        if marker == 0xDA:
            return None if frame is None else (frame[0], frame[1], frame[2], pos, frame[3])
        pos += 2 + length
    return None


def _refuse_jpeg_without_its_data(data: bytes) -> None:
    """Refuse a Huffman-coded JPEG whose scans hold fewer bytes than its header's pixels need.

    Every 8x8 block of every component costs at least one bit in a Huffman-coded scan (its DC code;
    baseline adds an end-of-block code), so a file with fewer than blocks / 8 bytes of scan data
    cannot hold the picture its header claims (a 256x256 picture under an 8000x5000 header would be
    "decoded" as mostly grey garbage). Half that is demanded, a margin; arithmetic-coded JPEGs, which
    can be smaller, are not checked. Headers over `MAX_PIXELS` are left to the size check.
    """
    frame = _jpeg_frame(data)
    if frame is None:
        return
    marker, width, height, scan_at, factors = frame
    if marker not in _HUFFMAN_FRAMES or not factors or width * height > MAX_PIXELS or width * height == 0:
        return
    hmax = max(f[0] for f in factors) or 1
    vmax = max(f[1] for f in factors) or 1
    blocks = sum(
        math.ceil(math.ceil(width * h / hmax) / 8) * math.ceil(math.ceil(height * v / vmax) / 8) for h, v in factors
    )
    supplied = len(data) - scan_at
    if supplied * 16 < blocks:
        raise ImageError(
            f"the file holds far less data than its header claims: a {width}x{height} JPEG needs at least "
            f"{blocks // 8:,} bytes of image data, this one has {supplied:,} (a damaged or forged header)"
        )


_PNG_METADATA = (b"tEXt", b"zTXt", b"iTXt", b"iCCP")  # text and ICC profile: never used for the pixels


def without_png_metadata(data: bytes) -> bytes:
    """A PNG without its text and ICC-profile chunks (other bytes as they were); anything else unchanged.

    PIL inflates those chunks when it opens a PNG and refuses one over 1 MB ("Decompressed Data Too
    Large"), so a valid photo with a large profile or caption would be called corrupt, and a zlib
    bomb in a caption would cost the time to inflate it. The pixels never depend on them.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return data
    parts, pos, end, dropped = [data[:8]], 8, len(data), False
    for _ in range(MAX_PNG_CHUNKS):  # bounded: the chunks after that stay as they are
        if pos + 8 > end:
            break
        length, kind = struct.unpack_from(">I4s", data, pos)
        stop = pos + 12 + length
        if kind in _PNG_METADATA:
            dropped = True
        else:
            parts.append(data[pos:stop])
        pos = stop
        if kind == b"IEND":
            break
    if not dropped:
        return data
    parts.append(data[pos:])
    return b"".join(parts)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency (alpha, or a transparent colour or index) composited on white,
    16-bit and float scaled to 8 bits, CIELab converted colorimetrically."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0  # 16-bit range -> 8-bit range
        elif img.mode == "F":
            arr = _float_to_8_bits(arr)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "LAB":
        return _lab_to_rgb(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(source: bytes | str | os.PathLike | Image.Image) -> Image.Image:
    """Untrusted bytes (or a path, or a PIL image) -> an RGB image, upright as the camera saw it.

    Raises `ImageError` for empty files, non-images, truncated or corrupt data, and images of more
    than `MAX_PIXELS` pixels (checked from the header, before decoding), and, before decoding,
    files whose structure alone shows they would cost minutes (`refuse_costly`). Bytes and files
    are decoded under the budget of `decode_budget` (a worker process with CPU, memory and time
    limits) unless $DETR_DECODE_BUDGET is "0"; a PIL image is always converted in this process.

    A decoded image may be backed by read-only shared memory (the worker's result, not copied):
    Pillow copies it before anything draws on it or pastes into it, as for any read-only image.
    """
    if isinstance(source, Image.Image):
        return _decode_opened(source)
    data = _bytes_of(source)
    refuse_costly(data)
    if not budget_on():
        return _decode_opened(_open(data), owned=True)
    (w, h, orientation), pixels = run_budgeted(decode_shared, data)
    img = Image.new("RGB", (0, 0))._new(Image.core.map_buffer(pixels, (w, h), "raw", 0, ("RGB", 0, 1)))
    img.readonly = 1
    return img if orientation not in _TRANSPOSE else img.transpose(_TRANSPOSE[orientation])


def budget_on() -> bool:
    """Whether `load_image` decodes bytes and files in the budgeted workers (yes unless
    $DETR_DECODE_BUDGET is "0")."""
    return os.environ.get(DECODE_BUDGET_ENV, "1").strip() != "0"


_TRANSPOSE = {  # EXIF orientation -> what makes the stored pixels upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # fmt: skip


def decode_shared(data: bytes) -> tuple[tuple[int, int, int], memoryview]:
    """Bytes -> ((w, h, EXIF orientation), RGB pixels in `decode_budget.output_buffer`): the decode
    `load_image` runs in a budgeted worker. Pixels are Pillow's RGB layout (4 bytes a pixel, the 4th
    unused), stored as the file holds them; the parent turns them upright (`_TRANSPOSE`).

    An RGB JPEG or PNG (most photos) is decoded straight into the shared buffer; anything else is
    decoded and converted as in process (`_decode_opened`) and copied there."""
    img = _open(data)
    _check_size(img)
    w, h = img.size
    out = None
    if img.format in ("JPEG", "MPO", "PNG") and img.mode == "RGB" and "transparency" not in img.info:
        out = decode_budget.output_buffer(w * h * 4)
        target = Image.core.map_buffer(out, (w, h), "raw", 0, ("RGB", 0, 1))
        img.im = target  # ImageFile.load() decodes into the image memory it finds (as into its mmap)
        _load(img)
        # (the orientation only now: a PNG's getexif() loads the image, into memory of its own)
        if img.im is target and img.size == (w, h) and img.mode == "RGB":
            return (w, h, _orientation(img)), out
        rgb = _decode_opened(img)  # not decoded in place after all (a plugin's own load()): copied
    else:
        rgb = _decode_opened(img)
    w, h = rgb.size
    if out is None or len(out) != w * h * 4:
        out = decode_budget.output_buffer(w * h * 4)  # (a second call raises: the sizes always agree)
    dest = Image.new("RGB", (0, 0))._new(Image.core.map_buffer(out, (w, h), "raw", 0, ("RGB", 0, 1)))
    dest.im.paste(rgb.im, (0, 0, w, h))
    return (w, h, 1), out


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1: as stored), read as ImageOps.exif_transpose reads it."""
    try:
        return int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception as e:  # as exif_transpose's would, in `_decode_opened`
        raise ImageError(f"the image data is truncated or corrupt ({type(e).__name__}: {e})") from None


def _check_size(img: Image.Image) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"the image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"the image is too large: {w}x{h} is {w * h:,} pixels, at most {MAX_PIXELS:,} "
            f"({MAX_PIXELS // 1_000_000} megapixels) are accepted"
        )


def _load(img: Image.Image) -> None:
    try:
        img.seek(0)  # animated images: the first frame
        img.load()
    except MemoryError:
        raise
    except Exception as e:  # truncated/corrupt data surfaces as OSError, SyntaxError, ValueError, ...
        raise ImageError(f"the image data is truncated or corrupt ({type(e).__name__}: {e})") from None


def _decode_opened(img: Image.Image, owned: bool = False) -> Image.Image:
    """An opened image -> its first frame, upright, in RGB. `owned`: `img` was opened here from
    bytes and nobody else holds it, so a single-frame RGB JPEG or PNG is returned as it is (the
    copy a conversion to RGB makes is 48 MB and 25 ms for a 12-megapixel photo)."""
    _check_size(img)
    _load(img)
    try:
        if _orientation(img) in _TRANSPOSE:
            return _to_rgb(ImageOps.exif_transpose(img))
        if owned and img.format in ("JPEG", "PNG") and img.mode == "RGB" and "transparency" not in img.info:
            return img
        return _to_rgb(img)
    except ImageError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # truncated/corrupt data surfaces as OSError, SyntaxError, ValueError, ...
        raise ImageError(f"the image data is truncated or corrupt ({type(e).__name__}: {e})") from None


def thumbnail(image: Image.Image, max_side: int, resample: int = Image.LANCZOS) -> Image.Image:
    """A new image of at most `max_side` px a side: exactly `image.copy()` after `.thumbnail((max_side,
    max_side), resample)`, without the copy. `image` is left as it was (it may be read-only).

    The copy is what costs: 96 MB for a 24-megapixel photo, allocated in Pillow's 16 MB blocks and
    freed a moment later, memory that malloc then kept (the load test's burst: several hundred MB
    after six such photos). Here `thumbnail` runs on a second image object that shares `image`'s
    pixels; it only reads them (resize), then points its own object at the small result.
    """
    if image.width <= max_side and image.height <= max_side:
        return image.copy()  # what thumbnail() leaves (a copy: the caller may draw on it)
    image.load()
    view = image._new(image.im)  # the same pixels, read only by resize()
    view.readonly = 1
    view.thumbnail((max_side, max_side), resample)
    return view


def resized_size(w: int, h: int, min_size: int = 800, max_size: int | None = 1333) -> tuple[int, int]:
    """(w, h) -> the (w, h) whose shorter side is `min_size`, unless the longer would pass `max_size`."""
    size = min_size
    short, long = min(w, h), max(w, h)
    if max_size is not None and long / short * size > max_size:
        size = round(max_size * short / long)
    if w < h:
        return size, int(size * h / w)
    return int(size * w / h), size


def preprocess(image: Image.Image, stride: int, min_size: int = 800, max_size: int | None = 1333) -> PreparedImage:
    """An RGB image -> the normalized input tensor [1, 3, H, W] and the geometry of the pass."""
    if image.mode != "RGB":
        image = _to_rgb(image)
    w, h = image.size
    in_w, in_h = resized_size(w, h, min_size, max_size)
    if min(in_w, in_h) < stride:
        raise ImageError(
            f"the image is too narrow: {w}x{h} would be resized to {in_w}x{in_h}, and its short side "
            f"would be less than one feature cell ({stride} px). Crop it to a less extreme aspect ratio."
        )
    import torch  # here, not at the top: the decode workers import this module and never need it

    resized = image if (in_w, in_h) == (w, h) else image.resize((in_w, in_h), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, H, W]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = ((x - mean) / std).unsqueeze(0).contiguous()  # [1, 3, H, W]
    geometry = Geometry(h, w, in_h, in_w, -(-in_h // stride), -(-in_w // stride), stride)
    return PreparedImage(x, geometry)
