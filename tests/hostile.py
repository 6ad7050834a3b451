"""A corpus of hostile and odd image files, generated in code (no binary blobs in the repository).

Each `Case` is what a phone or a prankster might upload: its bytes, the file name it arrives under,
and what must happen to it. Either the analysis succeeds (and the upright image has `size`), or the
core refuses it with a `DETRError` whose message contains `message`. Nothing else is acceptable: no
other exception type, no crash, no code run, no unbounded memory.

`corpus()` builds every case (about a second; the 6000x4000 JPEG is the slowest part), and
`write_corpus(folder)` writes them to files for the CLI and the browser.

The file is imported by tests and by benchmarks/load_test.py; it is not a test module itself.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "samples"
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Case:
    name: str  # short id, also the file's stem
    filename: str  # the name it is uploaded under (the extension may lie)
    data: bytes
    ok: bool  # True: analyzed; False: refused with a DETRError
    size: tuple[int, int] | None = None  # (w, h) of the upright image, when ok
    message: str = ""  # part of the error message, when refused
    why: str = ""
    # The RGB picture the analysis must equal, built without the code under test (None: not checked)
    reference: Callable[[], Image.Image] | None = None

    def __repr__(self) -> str:  # keep pytest ids and failure output short
        return f"Case({self.name!r}, {len(self.data)} bytes, ok={self.ok})"


# ------------------------------------------------------------------------------------------------
# builders


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG whose header claims width x height 8-bit RGB pixels: 30 GB once decoded.

    Its IDAT holds the first rows, zlib-compressed zeros, so the whole file is a few hundred bytes.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    idat = zlib.compress(b"\0" * (3 * width + 1) * 4, 9)  # 4 rows of filter byte 0 + black pixels
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def ztxt_bomb() -> bytes:
    """A small, valid PNG carrying a compressed text chunk that inflates to 16 MB (a zlib bomb in metadata)."""
    png = encode(Image.new("RGB", (16, 16), (40, 90, 200)), "PNG")
    text = png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"A" * (16 << 20), 9))
    return png[:33] + text + png[33:]  # after the 8-byte signature and the 25-byte IHDR chunk


@cache
def sample_bytes(name: str) -> bytes:
    return (SAMPLES_DIR / name).read_bytes()


def small_photo(max_side: int = 96) -> Image.Image:
    """A real photo, shrunk (the base of the mutated files the fuzzer starts from)."""
    img = Image.open(io.BytesIO(sample_bytes("coffee.png"))).convert("RGB")
    img.thumbnail((max_side, max_side))
    return img


def gradient(width: int, height: int) -> Image.Image:
    """A smooth colour gradient, generated fast with numpy (compresses well; decodes to w*h*3 bytes)."""
    x = np.linspace(0, 255, width).astype(np.uint16)[None, :]
    y = np.linspace(0, 255, height).astype(np.uint16)[:, None]
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = x
    rgb[..., 1] = y
    rgb[..., 2] = (x + y) >> 1
    return Image.fromarray(rgb, "RGB")


def exif_jpeg(stored: Image.Image, orientation: int, quality: int = 95) -> bytes:
    """`stored` as a JPEG tagged with an EXIF orientation (what a phone held sideways writes)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(stored, "JPEG", quality=quality, exif=exif)


def as_stored_for_orientation(upright: Image.Image, orientation: int) -> Image.Image:
    """The pixels a camera stores for an `upright` picture whose EXIF says `orientation` (6 or 8).

    Orientation 6: the viewer must turn the stored pixels 90 degrees clockwise, so the camera stored
    the upright picture turned 90 degrees anticlockwise; 8 is the other way round.
    """
    if orientation == 6:
        return upright.transpose(Image.Transpose.ROTATE_90)  # anticlockwise
    if orientation == 8:
        return upright.transpose(Image.Transpose.ROTATE_270)  # clockwise
    raise ValueError(f"orientation {orientation} is not a quarter turn")


def eps_file() -> bytes:
    """An Encapsulated PostScript file. PIL reads EPS by running Ghostscript on it: never on a server."""
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n%%EndComments\n"
        b"newpath 0 0 moveto 32 0 lineto 32 32 lineto closepath fill\nshowpage\n%%EOF\n"
    )


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 48), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def palette_png_with_transparency() -> bytes:
    img = Image.new("P", (64, 40), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (0, 0, 32, 40))
    return encode(img, "PNG", transparency=0)


def gray16_png() -> bytes:
    ramp = (np.arange(80 * 60, dtype=np.uint32).reshape(60, 80) * 13 % 65536).astype(np.uint16)
    img = Image.fromarray(ramp)  # uint16 -> mode I;16
    return encode(img, "PNG")


def tiff(pixels: np.ndarray, photometric: int, sample_format: int = 1, extra_samples: tuple[int, ...] = ()) -> bytes:
    """A baseline little-endian TIFF written by hand (not by PIL): one uncompressed strip of `pixels`
    ([h, w] or [h, w, samples], any numpy dtype), with the given photometric interpretation
    (1 min-is-black, 2 RGB, 8 CIELab), SampleFormat (1 unsigned, 2 signed, 3 float) and ExtraSamples
    (2: unassociated alpha)."""
    arr = np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder("<")))
    h, w = arr.shape[:2]
    n = 1 if arr.ndim == 2 else arr.shape[2]
    bits = arr.dtype.itemsize * 8
    data = arr.tobytes()
    tags = [  # (tag, type: 3 SHORT / 4 LONG, values)
        (256, 4, [w]), (257, 4, [h]), (258, 3, [bits] * n), (259, 3, [1]), (262, 3, [photometric]),
        (273, 4, [0]), (277, 3, [n]), (278, 4, [h]), (279, 4, [len(data)]), (284, 3, [1]),
        (339, 3, [sample_format] * n),
    ]  # fmt: skip
    if extra_samples:
        tags.append((338, 3, list(extra_samples)))
    tags.sort()
    ifd_size = 2 + 12 * len(tags) + 4
    extra_at = 8 + ifd_size
    blobs, entries = b"", []
    for tag, kind, values in tags:
        raw = b"".join(struct.pack("<H" if kind == 3 else "<I", v) for v in values)
        entries.append((tag, kind, len(values), raw))
        if len(raw) > 4:
            blobs += raw + b"\0" * (len(raw) % 2)
    strip_at = extra_at + len(blobs)
    out, blob_pos = [struct.pack("<2sHI", b"II", 42, 8), struct.pack("<H", len(entries))], extra_at
    for tag, kind, count, raw in entries:
        if tag == 273:
            raw = struct.pack("<I", strip_at)
        if len(raw) > 4:
            out.append(struct.pack("<HHII", tag, kind, count, blob_pos))
            blob_pos += len(raw) + len(raw) % 2
        else:
            out.append(struct.pack("<HHI", tag, kind, count) + raw.ljust(4, b"\0"))
    out.append(struct.pack("<I", 0))
    return b"".join(out) + blobs + data


def decoded(data: bytes) -> Image.Image:
    """PIL's own reading of `data`: its stored pixels as a fresh RGB image (no EXIF, no metadata)."""
    return Image.fromarray(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def turned_clockwise(data: bytes) -> Image.Image:
    return decoded(data).transpose(Image.Transpose.ROTATE_270)


def turned_anticlockwise(data: bytes) -> Image.Image:
    return decoded(data).transpose(Image.Transpose.ROTATE_90)


def palette_reference() -> Image.Image:
    """What `palette_png_with_transparency` shows: blue left half, the transparent red right half on white."""
    img = Image.new("RGB", (64, 40), (255, 255, 255))
    img.paste((0, 0, 255), (0, 0, 32, 40))
    return img


def cmyk_jpeg() -> bytes:
    return encode(small_photo(120).convert("CMYK"), "JPEG", quality=90)


# ------------------------------------------------------------------------------------------------
# the corpus


def corpus(include_huge: bool = True) -> list[Case]:
    """Every hostile or odd file, with what must happen to it."""
    photo = small_photo(120)
    jpeg = sample_bytes("grace_hopper.jpg")
    png = sample_bytes("coffee.png")
    sideways = gradient(300, 200)
    exif6, exif8 = exif_jpeg(sideways, 6), exif_jpeg(sideways, 8)
    photo_png, photo_jpeg = encode(photo, "PNG"), encode(photo, "JPEG", quality=90)
    cases = [
        Case("empty", "empty.jpg", b"", False, message="empty", why="zero bytes"),
        Case("text", "notes.jpg", b"shopping list: milk, eggs\n" * 20, False, message="not an image",
             why="a text file renamed .jpg"),
        Case("truncated_jpeg", "cut_jpeg.jpg", jpeg[: len(jpeg) // 2], False, message="truncated",
             why="a real JPEG cut in half"),
        Case("truncated_png", "cut_png.png", png[: len(png) // 2], False, message="truncated",
             why="a real PNG cut in half"),
        Case("png_bomb", "bomb.png", png_bomb(), False, message="too large",
             why="a header claiming 100000x100000 pixels (30 GB decoded) in a few hundred bytes"),
        Case("ztxt_bomb", "text_bomb.png", ztxt_bomb(), True, (16, 16),
             why="a 16 MB zlib bomb in a text chunk: text chunks are dropped unread, the pixels are analyzed",
             reference=lambda: Image.new("RGB", (16, 16), (40, 90, 200))),
        Case("eps", "drawing.jpg", eps_file(), False, message="not an image",
             why="PostScript: PIL would run Ghostscript on it, so it must not even be opened"),
        Case("one_pixel", "dot.png", encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"), True, (1, 1),
             why="a 1x1 image (resized up to the model's short side)",
             reference=lambda: Image.new("RGB", (1, 1), (200, 30, 30))),
        Case("strip", "strip.png", encode(gradient(10_000, 10), "PNG"), False, message="too narrow",
             why="10000x10: its short side would be less than one feature cell"),
        Case("gray16", "gray16.png", gray16_png(), True, (80, 60), why="16-bit grayscale PNG"),
        Case("cmyk", "cmyk.jpg", cmyk_jpeg(), True, photo.size, why="a CMYK JPEG (print workflows)"),
        Case("palette_alpha", "palette.png", palette_png_with_transparency(), True, (64, 40),
             why="palette PNG with a transparent index", reference=palette_reference),
        Case("animated", "anim.gif", animated_gif(), True, (64, 48), why="animated GIF: its first frame",
             reference=lambda: Image.new("RGB", (64, 48), (255, 0, 0))),
        Case("exif6", "sideways6.jpg", exif6, True, (200, 300),
             why="stored 300x200, EXIF orientation 6: shown upright as 200x300",
             reference=lambda: turned_clockwise(exif6)),
        Case("exif8", "sideways8.jpg", exif8, True, (200, 300),
             why="stored 300x200, EXIF orientation 8: shown upright as 200x300",
             reference=lambda: turned_anticlockwise(exif8)),
        Case("png_named_jpg", "photo.jpg", photo_png, True, photo.size,
             why="a valid PNG under a .jpg name: the content decides, not the name", reference=lambda: photo),
        Case("jpeg_named_txt", "snapshot.txt", photo_jpeg, True, photo.size,
             why="a valid JPEG under a .txt name", reference=lambda: decoded(photo_jpeg)),
    ]  # fmt: skip
    if include_huge:
        huge = encode(gradient(6000, 4000), "JPEG", quality=85)
        cases.append(
            Case("huge_jpeg", "huge.jpg", huge, True, (6000, 4000),
                 why="6000x4000 (24 megapixels), legal: below the 40-megapixel limit",
                 reference=lambda: decoded(huge))
        )  # fmt: skip
    return cases


def write_corpus(folder: Path, cases: list[Case] | None = None) -> dict[str, Path]:
    """Write each case to `folder/<filename>` (file names are unique) -> {case name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in cases if cases is not None else corpus():
        path = folder / case.filename
        assert not path.exists(), f"two cases write {path.name}"
        path.write_bytes(case.data)
        paths[case.name] = path
    return paths


# ------------------------------------------------------------------------------------------------
# structure: JPEG segments and PNG chunks (tests/test_fuzz.py mutates files at this level)

_JPEG_NO_LENGTH = {0x01, *range(0xD0, 0xDA)}  # TEM, RSTn, SOI and EOI have no length field
_END_OF_ENTROPY = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # entropy data stuffs 0xFF as FF00; RSTn lie inside it


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    """One marker segment: 0xFF, the marker, the big-endian length (payload + 2), the payload."""
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_segments(data: bytes) -> list[bytes]:
    """A JPEG -> its segments, which `b"".join` puts back together byte for byte.

    SOI; each marker segment (marker, length, payload); a SOS segment together with the entropy-coded
    data after its header (RSTn markers included); each 0xFF fill byte on its own; EOI; and whatever
    follows EOI, or bytes that are not a marker where one should be, as one last piece.
    """
    out, pos, end = [], 0, len(data)
    while pos < end:
        if data[pos] != 0xFF or pos + 1 >= end:
            out.append(data[pos:])
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before a marker
            out.append(data[pos : pos + 1])
            pos += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            out.append(data[pos : pos + 2])
            pos += 2
            if marker == 0xD9 and pos < end:
                out.append(data[pos:])
                break
            continue
        stop = min(pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big"), end)
        if marker == 0xDA:
            found = _END_OF_ENTROPY.search(data, stop)
            stop = found.start() if found else end
        out.append(data[pos:stop])
        pos = stop
    return out


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes) -> list[bytes]:
    """A valid PNG -> its chunks, each whole (length, type, data, CRC); `png_file` joins them again."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    out, pos = [], 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos : pos + 12 + length])
        pos += 12 + length
    assert pos == len(data), "a PNG with bytes after its last chunk"
    return out


def png_file(chunks: list[bytes]) -> bytes:
    return PNG_SIGNATURE + b"".join(chunks)


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def png_scanlines(pixels: np.ndarray, depth: int) -> bytes:
    """Rows of `pixels` ([h, w] or [h, w, c] of integers below 2**depth), each after filter byte 0."""
    h = pixels.shape[0]
    flat = pixels.reshape(h, -1).astype(np.uint32)
    if depth == 16:
        rows = flat.astype(">u2").view(np.uint8).reshape(h, -1)
    elif depth == 8:
        rows = flat.astype(np.uint8)
    else:  # 1, 2 or 4 bits: several samples to a byte, the first in the high bits
        per = 8 // depth
        padded = np.zeros((h, -(-flat.shape[1] // per) * per), np.uint32)
        padded[:, : flat.shape[1]] = flat
        groups = padded.reshape(h, -1, per)
        shifts = np.arange(per - 1, -1, -1, dtype=np.uint32) * depth
        rows = (groups << shifts).sum(axis=2).astype(np.uint8)
    return b"".join(b"\x00" + row.tobytes() for row in rows)


def png_raw(
    pixels: np.ndarray,
    depth: int,
    colour: int,
    interlace: bool = False,
    palette: bytes | None = None,
    idat_pieces: int = 1,
) -> bytes:
    """A PNG written by hand (not by PIL): any legal bit depth and colour type, Adam7 interlaced or
    not, its zlib stream split into `idat_pieces` IDAT chunks of about the same size."""
    h, w = pixels.shape[:2]
    if interlace:
        passes = [pixels[y0::dy, x0::dx] for x0, y0, dx, dy in _ADAM7]
        raw = b"".join(png_scanlines(p, depth) for p in passes if p.size)
    else:
        raw = png_scanlines(pixels, depth)
    stream = zlib.compress(raw, 9)
    step = -(-len(stream) // idat_pieces)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, int(interlace))
    chunks = [png_chunk(b"IHDR", ihdr)]
    if palette is not None:
        chunks.append(png_chunk(b"PLTE", palette))
    chunks += [png_chunk(b"IDAT", stream[i : i + step]) for i in range(0, len(stream), step)]
    return png_file([*chunks, png_chunk(b"IEND", b"")])
