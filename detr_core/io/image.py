"""Image loading and preprocessing, and the geometry that ties original pixels to feature cells.

`load_image` turns untrusted bytes into an RGB `PIL.Image` (EXIF orientation applied, any mode
converted) or raises `ImageError` with a message a person understands. `preprocess` resizes
(shorter side `min_size`, longer side at most `max_size`, as the official evaluation) and
normalizes with ImageNet statistics, and returns the exact `Geometry` of the pass.
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

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError
from .decode_budget import run_budgeted

__all__ = ["Geometry", "PreparedImage", "load_image", "preprocess", "resized_size", "MAX_PIXELS"]

MAX_PIXELS = 40_000_000  # larger images are refused before they are decoded (decompression bombs)
MAX_FILE_BYTES = 100 * 2**20  # files are read only up to this size (and only regular files)
MAX_JPEG_SCANS = 100  # libjpeg writes at most ~10 for a progressive file; thousands are a "scan bomb"
MAX_JPEG_FILL_BYTES = 64 * 2**10  # 0xFF fill bytes between markers (legal, but megabytes cost minutes)
MAX_PNG_CHUNKS = 20_000  # IDATs included; 2 million unknown ancillary chunks cost half a minute
MAX_PNG_ANCILLARY = 1_000
# "1": decode bytes and files in the budgeted worker pool of `decode_budget` (CPU, memory and time
# limits whatever the file does). Off by default: it adds about 0.3 s to a 12-megapixel JPEG and
# about 7 s to a process's first decode (the workers start), far over the ~30 ms it may cost.
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
    source = _bytes_of(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(source), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError("this file is not an image we can read (JPEG, PNG, WebP, GIF, BMP or TIFF)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"the image is too large: at most {MAX_PIXELS // 1_000_000} megapixels") from None
    except Exception as e:  # PIL raises many types on malformed headers
        raise ImageError(f"the image header is corrupt ({type(e).__name__}: {e})") from None


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


_FILL_RUN = re.compile(rb"\xff{1025,}")


def refuse_costly(data: bytes) -> None:
    """Refuse, before decoding, files whose structure alone shows they would cost minutes.

    JPEG: the count of scans (SOS markers; entropy-coded data stuffs 0xFF as 0xFF00, so 0xFFDA is
    always a marker) and of 0xFF fill bytes. PNG: the count of chunks and of ancillary chunks.
    """
    if data[:2] == b"\xff\xd8":
        scans = data.count(b"\xff\xda")
        if scans > MAX_JPEG_SCANS:
            raise ImageError(f"this JPEG has {scans} scans; at most {MAX_JPEG_SCANS} are accepted (a 'scan bomb')")
        fill = data.count(b"\xff\xff")
        if fill > MAX_JPEG_FILL_BYTES or _FILL_RUN.search(data):
            raise ImageError(
                f"this JPEG has {fill} bytes of 0xFF padding between markers; "
                f"at most {MAX_JPEG_FILL_BYTES} are accepted"
            )
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


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency composited on white, 16-bit and float scaled to 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0  # 16-bit range -> 8-bit range
        elif img.mode == "F":
            lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(source: bytes | str | os.PathLike | Image.Image) -> Image.Image:
    """Untrusted bytes (or a path, or a PIL image) -> an RGB image, upright as the camera saw it.

    Raises `ImageError` for empty files, non-images, truncated or corrupt data, and images of more
    than `MAX_PIXELS` pixels (checked from the header, before decoding), and, before decoding,
    files whose structure alone shows they would cost minutes (`refuse_costly`). With
    $DETR_DECODE_BUDGET=1, bytes and files are decoded under the budget of `decode_budget` (a worker
    process with CPU, memory and time limits); a PIL image is always converted in this process.
    """
    if isinstance(source, Image.Image):
        return _decode_opened(source)
    data = _bytes_of(source)
    refuse_costly(data)
    if os.environ.get(DECODE_BUDGET_ENV) != "1":
        return _decode_opened(_open(data))
    (w, h), pixels = run_budgeted(decode_rgb, data)
    return Image.frombuffer("RGB", (w, h), pixels, "raw", "RGB", 0, 1)


def decode_rgb(data: bytes) -> tuple[tuple[int, int], bytes]:
    """Bytes -> ((w, h), RGB bytes): the decode `load_image` runs in a budgeted worker."""
    img = _decode_opened(_open(data))
    return img.size, img.tobytes()


def _decode_opened(img: Image.Image) -> Image.Image:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"the image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"the image is too large: {w}x{h} is {w * h / 1e6:.1f} megapixels, "
            f"at most {MAX_PIXELS / 1e6:.0f} are accepted"
        )
    try:
        img.seek(0)  # animated images: the first frame
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except ImageError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # truncated/corrupt data surfaces as OSError, SyntaxError, ValueError, ...
        raise ImageError(f"the image data is truncated or corrupt ({type(e).__name__}: {e})") from None


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
    resized = image if (in_w, in_h) == (w, h) else image.resize((in_w, in_h), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, H, W]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = ((x - mean) / std).unsqueeze(0).contiguous()  # [1, 3, H, W]
    geometry = Geometry(h, w, in_h, in_w, -(-in_h // stride), -(-in_w // stride), stride)
    return PreparedImage(x, geometry)
