"""A deterministic fuzz run over structure-aware mutations of progressive JPEGs and chunked PNGs.

Valid files are made here in code (progressive JPEGs of several sizes and chroma subsamplings, one
with restart markers, a grayscale and a CMYK one; PNGs written by PIL and by hand: every bit depth
and colour type, Adam7-interlaced, palette with transparency, image data split over many IDATs).
Each is parsed into its structure (JPEG: SOI, APPn, DQT, SOF2, DHT, SOS + entropy data, EOI; PNG:
its chunks) and mutated at that level by the operators in `JPEG_OPS` and `PNG_OPS` (scans
duplicated, dropped and reordered, a segment length or a CRC wrong, SOF or IHDR dimensions
changed, fill bytes, a cut inside a scan or a zlib stream, DHT repeated, restart intervals,
spectral selection out of range, chunks duplicated, reordered, of unknown types, of impossible
lengths, bit depth and colour type combinations, ...), or by plain byte flips.

For every mutant `load_image`, the library's one decode entry for untrusted bytes (the dashboard,
the CLI and `analyze` all go through it), must return an RGB image of 8-bit samples within
`MAX_PIXELS`, or raise a `DETRError`; any other exception fails the test. Mutants whose operators
keep the picture (fill bytes, comments, unknown ancillary chunks, IDAT split differently, ...)
must decode to exactly the original's pixels: a refusal there is a false alarm of the structure
checks. Each decode must finish within `DECODE_SECONDS` (reason beside it).

The run is seeded ($DETR_FUZZ_SEED, default 12) and has `MUTANTS` mutants ($DETR_FUZZ_MUTANTS,
default 400: 200 JPEG from 6 bases, 200 PNG from 9). The decodes themselves take about 3 s; with the
budgeted worker's start (5-9 s) and the CLI run (5-15 s) the file takes 15-35 s on a 2-core machine
shared with other jobs. A failing mutant is named in its test id, e.g. `png-057-length+bad_crc`;
`mutant(57, "png")` rebuilds its bytes. Raise $DETR_FUZZ_MUTANTS for a longer hunt.
"""

from __future__ import annotations

import io
import itertools
import os
import random
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detr_core import DETRError, load_image
from detr_core.io import decode_budget
from detr_core.io import image as image_module
from detr_core.io.names import printable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile
from hostile import jpeg_segment, png_chunk

REPO = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("DETR_FUZZ_SEED", "12"))
MUTANTS = int(os.environ.get("DETR_FUZZ_MUTANTS", "400"))  # half JPEG, half PNG
# Wall-clock seconds one decode may take. These files are at most ~100 kB and decode in milliseconds
# (the slowest legal mutant, a header grown to a few megapixels, in ~0.3 s); the structure checks
# refuse the costly kinds (scan and fill bombs, chunk floods) before decoding. 3 s leaves a 10x
# margin for a shared 2-core CI machine running other jobs, while a decoder pathology (a scan bomb,
# a quadratic re-parse, a loop) costs tens of seconds to minutes and cannot hide under it.
DECODE_SECONDS = 3.0
# Through the budgeted worker ($DETR_DECODE_BUDGET=1) a decode may wait for the worker's own
# wall-clock limit, plus the round trip (the same allowance as tests/test_decode_budget.py).
BUDGETED_SECONDS = decode_budget.WALL_SECONDS + 3.0
BUDGET_SUBSET = 8  # every 8th mutant also goes through the budgeted worker (50 of the 400)


# ------------------------------------------------------------------------------------------------
# the valid files mutations start from


@dataclass(frozen=True)
class Base:
    name: str
    data: bytes
    png: dict | None = None  # PNG: width, height, depth, colour, interlace, raw (the inflated stream)


def _photo(w: int, h: int, mode: str = "RGB") -> Image.Image:
    img = hostile.small_photo(max(w, h)).resize((w, h), Image.BILINEAR)
    return img.convert(mode)


@cache
def jpeg_bases() -> list[Base]:
    """Progressive JPEGs: 4:2:0, 4:2:2 and 4:4:4; odd sizes (partial MCUs); restart markers; L and CMYK."""
    p = {"quality": 80, "progressive": True}
    return [
        Base("jpeg420_64x48", hostile.encode(_photo(64, 48), "JPEG", subsampling=2, **p)),
        Base("jpeg422_48x64", hostile.encode(_photo(48, 64), "JPEG", subsampling=1, **p)),
        Base("jpeg444_33x17", hostile.encode(_photo(33, 17), "JPEG", subsampling=0, **p)),
        Base("jpeg420_rst_96x72", hostile.encode(_photo(96, 72), "JPEG", subsampling=2, restart_marker_blocks=3, **p)),
        Base("jpeg_gray_40x30", hostile.encode(_photo(40, 30, "L"), "JPEG", **p)),
        Base("jpeg_cmyk_24x20", hostile.encode(_photo(24, 20, "CMYK"), "JPEG", **p)),
    ]


def _png_base(name: str, data: bytes) -> Base:
    chunks = hostile.png_chunks(data)
    w, h, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", chunks[0][8:21])
    raw = zlib.decompress(b"".join(c[8:-4] for c in chunks if c[4:8] == b"IDAT"))
    return Base(name, data, {"width": w, "height": h, "depth": depth, "colour": colour, "interlace": interlace,
                             "raw": raw})  # fmt: skip


@cache
def png_bases() -> list[Base]:
    """PNGs by PIL (RGB, RGBA, L, palette + tRNS, 16-bit gray) and by hand (1- to 16-bit, Adam7, split IDATs)."""
    rng = np.random.default_rng(SEED)
    photo = _photo(41, 29)
    pal = bytes(rng.integers(0, 256, 3 * 16).astype(np.uint8))
    grey4 = (np.asarray(_photo(23, 19, "L")) >> 4).astype(np.uint8)
    bits = rng.integers(0, 2, (9, 30))
    rgb16 = np.asarray(_photo(17, 13)).astype(np.uint32) * 257
    rgba = np.concatenate([np.asarray(_photo(20, 14)), rng.integers(0, 256, (14, 20, 1))], axis=2)
    return [
        _png_base("png_rgb_41x29", hostile.encode(photo, "PNG")),
        _png_base("png_rgba_41x29", hostile.encode(photo.convert("RGBA"), "PNG")),
        _png_base("png_l_41x29", hostile.encode(photo.convert("L"), "PNG")),
        _png_base("png_palette_trns", hostile.palette_png_with_transparency()),
        _png_base("png_gray16_80x60", hostile.gray16_png()),
        _png_base("png_p4_adam7_split", hostile.png_raw(grey4, 4, 3, interlace=True, palette=pal, idat_pieces=5)),
        _png_base("png_g1_30x9", hostile.png_raw(bits, 1, 0)),
        _png_base("png_rgb16_adam7", hostile.png_raw(rgb16, 16, 2, interlace=True, idat_pieces=3)),
        _png_base("png_rgba8_split", hostile.png_raw(rgba, 8, 6, idat_pieces=12)),
    ]


# ------------------------------------------------------------------------------------------------
# JPEG operators: (rng, segments, base) -> (segments, benign). Benign: the picture must not change.

Segments = list[bytes]


def _marker(seg: bytes) -> int | None:
    return seg[1] if len(seg) >= 2 and seg[0] == 0xFF else None


def _where(segs: Segments, *markers: int) -> list[int]:
    return [i for i, s in enumerate(segs) if _marker(s) in markers]


SOF_MARKERS = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


def _sof(segs: Segments) -> int:
    found = _where(segs, *SOF_MARKERS)
    return found[0] if found else 1


def _put(seg: bytes, offset: int, value: bytes) -> bytes:
    """`seg` with `value` written at `offset` (within the segment; past its end the segment is kept)."""
    if offset + len(value) > len(seg):
        return seg
    return seg[:offset] + value + seg[offset + len(value) :]


def _sos_header_len(seg: bytes) -> int:
    return min(2 + int.from_bytes(seg[2:4], "big"), len(seg))


def _sos(rng, segs) -> int | None:
    found = _where(segs, 0xDA)
    return rng.choice(found) if found else None


def j_dup_scan(rng, segs, base):
    i = _sos(rng, segs)
    if i is not None:
        segs.insert(rng.randint(1, len(segs) - 1), segs[i])
    return segs, False


def j_drop_scan(rng, segs, base):
    i = _sos(rng, segs)
    if i is not None:
        del segs[i]
    return segs, False


def j_reorder_scans(rng, segs, base):
    where = _where(segs, 0xDA)
    scans = [segs[i] for i in where]
    rng.shuffle(scans)
    for i, s in zip(where, scans):
        segs[i] = s
    return segs, False


def j_drop_segment(rng, segs, base):
    if len(segs) > 2:
        del segs[rng.randrange(1, len(segs) - 1)]
    return segs, False


def j_segment_length(rng, segs, base):
    """A segment's length field wrong: 0, 1, 2 (no payload), one off, far past the end."""
    where = [i for i, s in enumerate(segs) if len(s) >= 4 and _marker(s) not in (None, 0xFF, 0xD8, 0xD9)]
    if where:
        i = rng.choice(where)
        length = int.from_bytes(segs[i][2:4], "big")
        new = rng.choice([0, 1, 2, 3, length - 1, length + 1, length + 64, 0xFFFF, rng.randrange(0x10000)])
        segs[i] = _put(segs[i], 2, struct.pack(">H", max(new, 0)))
    return segs, False


def j_sof_dims(rng, segs, base):
    """SOF's height and/or width changed: 0, 1, one MCU more or less, x2, x100, 65535."""
    i = _sof(segs)
    h, w = struct.unpack(">HH", segs[i][5:9])
    pick = lambda v: min(rng.choice([0, 1, 7, 8, 9, v - 1, v + 1, v * 2, v * 10, v * 100, 65535]), 65535)  # noqa: E731
    which = rng.choice(["h", "w", "both"])
    h2 = pick(h) if which != "w" else h
    w2 = pick(w) if which != "h" else w
    segs[i] = _put(segs[i], 5, struct.pack(">HH", max(h2, 0), max(w2, 0)))
    return segs, False


def j_sof_components(rng, segs, base):
    """SOF's component count, sampling factors, quantization table or component ids impossible."""
    i = _sof(segs)
    seg, n = segs[i], segs[i][9] if len(segs[i]) > 9 else 0
    k = rng.randrange(max(n, 1))
    what = rng.randrange(4)
    if what == 0:
        seg = _put(seg, 9, bytes([rng.choice([0, 1, 2, 4, 5, 255])]))
    elif what == 1:
        seg = _put(seg, 11 + 3 * k, bytes([rng.choice([0x00, 0x01, 0x10, 0x22, 0x44, 0x41, 0x14, 0x55, 0xFF])]))
    elif what == 2:
        seg = _put(seg, 12 + 3 * k, bytes([rng.choice([1, 2, 3, 4, 255])]))
    else:  # two components with the same id
        seg = _put(seg, 10 + 3 * k, seg[10:11])
    segs[i] = seg
    return segs, False


def j_sof_type(rng, segs, base):
    """The frame type changed: baseline, extended, lossless, hierarchical, arithmetic-coded."""
    i = _sof(segs)
    segs[i] = _put(segs[i], 1, bytes([rng.choice([m for m in SOF_MARKERS if m != 0xC2])]))
    return segs, False


def j_fill_bytes(rng, segs, base):
    """0xFF fill bytes before a marker (legal): up to the structure check's limit the picture is unchanged."""
    k = rng.choice([1, 2, 7, 100, 1023, 1024, 1025, 5000])
    segs.insert(rng.randrange(1, len(segs)), b"\xff" * k)
    fill = sum(len(s) for s in segs if s == b"\xff" * len(s))
    return segs, k <= image_module.MAX_JPEG_FILL_RUN and fill <= image_module.MAX_JPEG_FILL_BYTES


def j_junk_bytes(rng, segs, base):
    """Bytes that are not a marker between two segments (libjpeg skips them with a warning)."""
    junk = bytes(rng.randrange(255) for _ in range(rng.choice([1, 16, 1000])))  # no 0xFF: not a marker
    segs.insert(rng.randrange(2, len(segs)), junk)
    return segs, False


def j_stray_marker(rng, segs, base):
    """A marker inside a scan's entropy data: RSTn out of sequence, EOI, SOI, TEM, DHT, SOS, fill."""
    i = _sos(rng, segs)
    if i is None:
        return segs, False
    seg, start = segs[i], _sos_header_len(segs[i])
    spots = [p for p in range(start, len(seg) + 1) if p == start or seg[p - 1] != 0xFF]
    p = rng.choice(spots)
    marker = rng.choice([bytes([0xFF, 0xD0 + rng.randrange(8)]), b"\xff\xd9", b"\xff\xd8", b"\xff\x01",
                         b"\xff\xc4\x00\x03\x00", b"\xff\xda", b"\xff\xff\xff"])  # fmt: skip
    segs[i] = seg[:p] + marker + seg[p:]
    return segs, False


def j_truncate_in_scan(rng, segs, base):
    """The file ends inside a scan (its header or its entropy data), with or without EOI after."""
    i = _sos(rng, segs)
    if i is None:
        return segs, False
    cut = rng.randrange(2, len(segs[i]))
    return segs[:i] + [segs[i][:cut]] + ([b"\xff\xd9"] if rng.random() < 0.5 else []), False


def j_repeat_dht(rng, segs, base):
    """A DHT repeated: right after itself (the same tables defined again: benign) or somewhere else."""
    where = _where(segs, 0xC4)
    if not where:
        return segs, False
    i, k = rng.choice(where), rng.choice([1, 2, 10, 60])
    if rng.random() < 0.5:
        segs[i + 1 : i + 1] = [segs[i]] * k
        return segs, True
    at = rng.randrange(1, len(segs))
    segs[at:at] = [segs[i]] * k
    return segs, False


def j_dht_corrupt(rng, segs, base):
    """A DHT's table class/id, its code counts (more than 256, an over-full code space) or values wrong."""
    where = _where(segs, 0xC4)
    if not where:
        return segs, False
    i = rng.choice(where)
    seg, what = segs[i], rng.randrange(4)
    if what == 0:
        seg = _put(seg, 4, bytes([rng.choice([0x02, 0x04, 0x14, 0x2F, 0xFF])]))
    elif what == 1:
        seg = _put(seg, 5, bytes([0xFF] * 16))
    elif what == 2:
        seg = _put(seg, 5, bytes([3, 3]))  # three codes of 1 bit: more than the code space holds
    else:
        seg = seg[:21] + bytes(rng.randrange(256) for _ in range(len(seg) - 21))
    segs[i] = seg
    return segs, False


def j_restart_interval(rng, segs, base):
    """A DRI (restart interval) of 0, 1, 2, 7 or 65535 MCUs before the frame or before a scan."""
    dri = jpeg_segment(0xDD, struct.pack(">H", rng.choice([0, 1, 2, 7, 0xFFFF])))
    if rng.random() < 0.3:
        dri = dri[:4] + dri[4:5]  # a DRI cut short
    where = [*_where(segs, 0xDA), _sof(segs)]
    segs.insert(rng.choice(where), dri)
    return segs, False


def j_spectral(rng, segs, base):
    """A scan's spectral selection (Ss, Se) or successive approximation (Ah, Al) out of range."""
    i = _sos(rng, segs)
    if i is None:
        return segs, False
    seg = segs[i]
    end = _sos_header_len(seg)  # Ss, Se, AhAl are the header's last three bytes
    ss, se, a = seg[end - 3 : end] if end >= 7 else (0, 0, 0)
    what = rng.randrange(4)
    if what == 0:
        ss = rng.choice([1, 63, 64, 200, 255])
    elif what == 1:
        se = rng.choice([0, 64, 100, 255])
    elif what == 2:
        a = rng.randrange(16) << 4 | rng.randrange(16)
    else:
        ss, se, a = se, ss, rng.randrange(256)  # Ss > Se
    segs[i] = _put(seg, end - 3, bytes([ss, se, a]))
    return segs, False


def j_sos_components(rng, segs, base):
    """A scan's component count, component selectors or table selectors impossible."""
    i = _sos(rng, segs)
    if i is None:
        return segs, False
    seg, what = segs[i], rng.randrange(3)
    if what == 0:
        seg = _put(seg, 4, bytes([rng.choice([0, 2, 3, 4, 5, 255])]))
    elif what == 1:
        seg = _put(seg, 5, bytes([rng.choice([0, 4, 9, 255])]))
    else:
        seg = _put(seg, 6, bytes([rng.choice([0x44, 0x22, 0xFF, 0x0F])]))
    segs[i] = seg
    return segs, False


def j_dqt(rng, segs, base):
    """A DQT claiming 16-bit precision or table ids 4..15, all-zero quantizers, or cut short."""
    where = _where(segs, 0xDB)
    if not where:
        return segs, False
    i = rng.choice(where)
    seg, what = segs[i], rng.randrange(3)
    if what == 0:
        seg = _put(seg, 4, bytes([rng.choice([0x10, 0x11, 0x04, 0x0F, 0xFF])]))
    elif what == 1:
        seg = seg[:5] + bytes(len(seg) - 5)
    else:
        seg = jpeg_segment(0xDB, seg[4 : rng.randrange(5, len(seg))])
    segs[i] = seg
    return segs, False


def _exif_garbage(rng) -> bytes:
    """An EXIF block: a TIFF header and an IFD with odd orientations, types and counts, maybe a loop."""
    entries = [(0x0112, 3, 1, rng.choice([0, 1, 3, 6, 8, 9, 0xFFFF]) << 16)]  # SHORT in the high half (MM)
    for _ in range(rng.randrange(4)):
        entries.append((rng.randrange(0x10000), rng.randrange(14), rng.choice([0, 1, 0xFFFF, 0xFFFFFFFF]),
                        rng.randrange(1 << 32)))  # fmt: skip
    ifd = struct.pack(">H", len(entries)) + b"".join(struct.pack(">HHII", *e) for e in entries)
    following = 8 if rng.random() < 0.5 else rng.randrange(1 << 32)  # 8: the IFD links to itself
    return b"Exif\x00\x00MM\x00*" + struct.pack(">I", 8) + ifd + struct.pack(">I", following)


def j_app_segment(rng, segs, base):
    """Before the frame: a comment or an unknown APP15 (benign), or EXIF, ICC, Adobe, JFIF garbage."""
    kind = rng.randrange(6)
    payload = rng.choice([
        bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 16, 300]))),
        b"\xff" * 2000,  # payload bytes, not padding (a white EXIF thumbnail, a clipped ICC curve)
        b"\xff\xda" * 200,  # nor scans
    ])  # fmt: skip
    marker, body = {
        0: (0xFE, payload),  # COM
        1: (0xEF, payload),  # APP15, nobody's
        2: (0xE1, _exif_garbage(rng)),
        3: (0xE2, b"ICC_PROFILE\x00" + rng.choice([b"\x01\x01", bytes(rng.randrange(4) for _ in "ab")]) + payload),
        4: (0xEE, b"Adobe" + bytes([0, 100, 0, 0, 0, 0, rng.randrange(4)])[: rng.randrange(8)]),  # colour transform
        5: (0xE0, b"JFIF\x00" + payload[:9]),
    }[kind]
    segs.insert(rng.randrange(1, _sof(segs) + 1), jpeg_segment(marker, body))
    return segs, kind < 2


def j_soi_eoi(rng, segs, base):
    """EOI early, twice or missing; a second SOI; bytes after EOI."""
    what = rng.randrange(4)
    if what == 0:
        segs.insert(rng.randrange(1, len(segs)), b"\xff\xd9")
    elif what == 1:
        segs.insert(rng.randrange(1, len(segs)), b"\xff\xd8")
    elif what == 2:
        segs = [s for s in segs if s != b"\xff\xd9"]
    else:
        segs.append(bytes(rng.randrange(256) for _ in range(rng.choice([1, 50, 2000]))))
    return segs, False


JPEG_OPS: dict[str, Callable] = {f.__name__[2:]: f for f in (
    j_dup_scan, j_drop_scan, j_reorder_scans, j_drop_segment, j_segment_length, j_sof_dims, j_sof_components,
    j_sof_type, j_fill_bytes, j_stray_marker, j_truncate_in_scan, j_repeat_dht, j_dht_corrupt, j_restart_interval,
    j_spectral, j_sos_components, j_dqt, j_app_segment, j_soi_eoi, j_junk_bytes,
)}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# PNG operators: (rng, chunks, base) -> (chunks, benign). A chunk is its whole bytes (length, type,
# data, CRC); an operator that breaks a length or a CRC leaves the rest of the chunk as it was.

Chunks = list[bytes]


def _type(chunk: bytes) -> bytes:
    return chunk[4:8]


def _body(chunk: bytes) -> bytes:
    return chunk[8:-4]


def _idats(chunks: Chunks) -> list[int]:
    return [i for i, c in enumerate(chunks) if _type(c) == b"IDAT"]


def _stream(chunks: Chunks) -> bytes:
    return b"".join(_body(chunks[i]) for i in _idats(chunks))


def _with_stream(chunks: Chunks, stream: bytes, pieces: int = 1) -> Chunks:
    """The IDATs replaced by `stream` in `pieces` chunks, where the first IDAT was."""
    where = _idats(chunks)
    at = where[0] if where else max(len(chunks) - 1, 0)
    step = max(-(-len(stream) // pieces), 1)
    new = [png_chunk(b"IDAT", stream[i : i + step]) for i in range(0, len(stream), step)] or [png_chunk(b"IDAT", b"")]
    rest = [c for i, c in enumerate(chunks) if i not in where]
    return rest[:at] + new + rest[at:]


def _ihdr(chunks: Chunks) -> int | None:
    return next((i for i, c in enumerate(chunks) if _type(c) == b"IHDR"), None)


def _set_ihdr(chunks: Chunks, offset: int, value: bytes) -> Chunks:
    """IHDR with `value` at `offset` of its data, its CRC correct (the change reaches the decoder)."""
    i = _ihdr(chunks)
    if i is not None:
        body = _body(chunks[i])
        chunks[i] = png_chunk(b"IHDR", body[:offset] + value + body[offset + len(value) :])
    return chunks


def p_bad_crc(rng, chunks, base):
    i = rng.randrange(len(chunks))
    crc = int.from_bytes(chunks[i][-4:], "big") ^ rng.randrange(1, 1 << 32)
    chunks[i] = chunks[i][:-4] + struct.pack(">I", crc)
    return chunks, False


def p_dup_ihdr(rng, chunks, base):
    i = _ihdr(chunks)
    if i is not None:
        copy = chunks[i]
        if rng.random() < 0.5:  # a second IHDR that disagrees with the first
            body = _body(copy)
            copy = png_chunk(b"IHDR", struct.pack(">II", rng.randrange(1, 5000), rng.randrange(1, 5000)) + body[8:])
        chunks.insert(rng.randrange(1, len(chunks) + 1), copy)
    return chunks, False


def p_dup_idat(rng, chunks, base):
    where = _idats(chunks)
    if where:
        i = rng.choice(where)
        chunks.insert(rng.choice([i + 1, rng.randrange(len(chunks) + 1)]), chunks[i])
    return chunks, False


def p_reorder(rng, chunks, base):
    """Chunks out of order: all shuffled, IEND early, two swapped, IDAT before IHDR."""
    what = rng.randrange(4)
    if what == 0:
        rng.shuffle(chunks)
    elif what == 1:
        end = chunks.pop()
        chunks.insert(rng.randrange(len(chunks) + 1), end)
    elif what == 2 and len(chunks) > 1:
        a, b = rng.sample(range(len(chunks)), 2)
        chunks[a], chunks[b] = chunks[b], chunks[a]
    else:
        where = _idats(chunks)
        if where:
            chunks.insert(0, chunks.pop(where[0]))
    return chunks, False


def p_length(rng, chunks, base):
    """A chunk's length field wrong: zero, one off, 2**31 - 1 and up (negative as a signed int)."""
    i = rng.randrange(len(chunks))
    length = len(_body(chunks[i]))
    new = rng.choice([0, 1, length - 1, length + 1, length + 1000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                      0xFFFFFFF4, (1 << 31) + length])  # fmt: skip
    chunks[i] = struct.pack(">I", max(new, 0)) + chunks[i][4:]
    return chunks, False


def p_unknown_ancillary(rng, chunks, base):
    """Unknown ancillary chunks (lowercase first letter), once or many times, before or after the
    image data (benign: a decoder skips them), or among the IDATs (not allowed)."""
    name = bytes([rng.choice(b"abcdefghijklmnopqrstuvwxyz"), *rng.sample(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh", 3)])
    body = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 13, 200])))
    k = rng.choice([1, 3, 50, 999, 1001])
    where = _idats(chunks)
    spot = rng.randrange(3)
    at = {0: 1, 1: where[-1] + 1 if where else len(chunks) - 1, 2: where[-1] if where else 1}[spot]
    chunks[at:at] = [png_chunk(name, body)] * k
    ancillary = sum(len(c) >= 12 and _type(c)[0] & 0x20 != 0 for c in chunks)
    benign = spot != 2 or len(where) < 2
    return chunks, benign and ancillary <= image_module.MAX_PNG_ANCILLARY


def p_unknown_critical(rng, chunks, base):
    name = bytes([rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"), *rng.sample(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefgh", 3)])
    chunks.insert(rng.randrange(1, len(chunks)), png_chunk(name, bytes(rng.randrange(256) for _ in range(9))))
    return chunks, False


def p_ihdr_dims(rng, chunks, base):
    """IHDR's width and/or height disagree with the image data: 0, one off, x2, x64, 2**31 and up."""
    w, h = base.png["width"], base.png["height"]
    pick = lambda v: rng.choice([0, 1, v - 1, v + 1, v * 2, v * 64, 40001, 100_000, 0x7FFFFFFF, 0x80000000,  # noqa: E731
                                 0xFFFFFFFF])  # fmt: skip
    which = rng.choice(["w", "h", "both"])
    w2 = pick(w) if which != "h" else w
    h2 = pick(h) if which != "w" else h
    return _set_ihdr(chunks, 0, struct.pack(">II", w2, h2)), False


def p_interlace(rng, chunks, base):
    flag = rng.choice([v for v in (0, 1, 2, 255) if v != base.png["interlace"]])
    return _set_ihdr(chunks, 12, bytes([flag])), False


def p_depth_colour(rng, chunks, base):
    """Any bit depth with any colour type, legal or not, over the same image data."""
    depth = rng.choice([0, 1, 2, 3, 4, 8, 16, 32, 255])
    colour = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 255])
    return _set_ihdr(chunks, 8, bytes([depth, colour])), False


def p_ihdr_methods(rng, chunks, base):
    """IHDR's compression or filter method not 0, or IHDR itself of the wrong length."""
    what = rng.randrange(3)
    if what < 2:
        return _set_ihdr(chunks, 10 + what, bytes([rng.choice([1, 2, 255])])), False
    i = _ihdr(chunks)
    if i is not None:
        body = _body(chunks[i])
        chunks[i] = png_chunk(b"IHDR", rng.choice([body[:12], body[:1], b"", body + b"\x00" * 7]))
    return chunks, False


def p_zlib_truncate(rng, chunks, base):
    """The zlib stream cut short: in its header, its data, or its Adler-32."""
    stream = _stream(chunks)
    return _with_stream(chunks, stream[: rng.randrange(len(stream) + 1)], rng.choice([1, 3])), False


def p_zlib_inflate(rng, chunks, base):
    """A valid zlib stream that inflates to more than the image needs (up to 16 MB), or to less."""
    raw = base.png["raw"]
    what = rng.randrange(3)
    if what == 0:
        raw = raw + bytes(rng.choice([1, 1000, 1 << 20, 16 << 20]))
    elif what == 1:
        raw = raw * rng.choice([2, 50])
    else:
        raw = raw[: rng.randrange(len(raw))]
    return _with_stream(chunks, zlib.compress(raw, 6), rng.choice([1, 4])), False


def p_zlib_header(rng, chunks, base):
    """The zlib wrapper wrong: a random header, a preset dictionary, raw deflate, a bad Adler-32."""
    stream = _stream(chunks)
    what = rng.randrange(4)
    if what == 0:
        stream = bytes([rng.randrange(256), rng.randrange(256)]) + stream[2:]
    elif what == 1:
        stream = b"\x78\xbb" + b"\x00\x00\x00\x01" + stream[2:]  # FDICT set (and a dictionary id)
    elif what == 2:
        stream = stream[2:-4]
    else:
        stream = stream[:-4] + bytes(rng.randrange(256) for _ in range(4))
    return _with_stream(chunks, stream), False


def p_filter_bytes(rng, chunks, base):
    """Scanline filter types 5..255 (only 0..4 exist) on some rows, the stream valid zlib."""
    raw = bytearray(base.png["raw"])
    info = base.png
    if info["interlace"] or info["depth"] not in (1, 2, 4, 8, 16) or info["colour"] not in hostile.PNG_CHANNELS:
        starts = [0]
    else:
        row = 1 + -(-info["width"] * hostile.PNG_CHANNELS[info["colour"]] * info["depth"] // 8)
        starts = list(range(0, len(raw), row))
    for p in rng.sample(starts, min(len(starts), rng.choice([1, 3]))):
        raw[p] = rng.randrange(5, 256)
    return _with_stream(chunks, zlib.compress(bytes(raw))), False


def p_rechunk_idat(rng, chunks, base):
    """The same zlib stream in other IDAT pieces: uneven, one byte each, with empty IDATs (benign)."""
    stream, where = _stream(chunks), _idats(chunks)
    if not where:
        return chunks, False
    if rng.random() < 0.3:
        cuts = list(range(len(stream) + 1))  # one byte per IDAT
    else:
        cuts = sorted({0, len(stream), *(rng.randrange(len(stream) + 1) for _ in range(rng.randrange(1, 40)))})
    pieces = [stream[a:b] for a, b in itertools.pairwise(cuts)]
    for _ in range(rng.randrange(3)):
        pieces.insert(rng.randrange(len(pieces) + 1), b"")
    rest = [c for i, c in enumerate(chunks) if i not in where]
    at = where[0]
    return rest[:at] + [png_chunk(b"IDAT", p) for p in pieces] + rest[at:], True


def p_drop_chunk(rng, chunks, base):
    del chunks[rng.randrange(len(chunks))]
    return chunks, False


def p_after_iend(rng, chunks, base):
    """Bytes after IEND: garbage, or a whole second image's chunks."""
    junk = bytes(rng.randrange(256) for _ in range(rng.choice([1, 12, 500])))
    chunks.append(rng.choice([junk, b"".join(chunks[1:])]))
    return chunks, False


def p_palette(rng, chunks, base):
    """PLTE too short for the indices, of a length not a multiple of 3, too long, missing, or where
    none belongs; tRNS longer than the palette or of the wrong size for the colour type."""
    where = [i for i, c in enumerate(chunks) if _type(c) == b"PLTE"]
    what = rng.randrange(5)
    if what == 0 and where:
        chunks[where[0]] = png_chunk(b"PLTE", _body(chunks[where[0]])[: rng.choice([0, 3, 6, 7])])
    elif what == 1 and where:
        del chunks[where[0]]
    elif what == 2:
        chunks.insert(1, png_chunk(b"PLTE", bytes(rng.randrange(256) for _ in range(rng.choice([3, 768, 771])))))
    else:
        trns = png_chunk(b"tRNS", bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 2, 5, 6, 257]))))
        at = _idats(chunks)[0] if _idats(chunks) else 1
        chunks.insert(at, trns)
    return chunks, False


def p_ancillary_garbage(rng, chunks, base):
    """Known ancillary chunks with garbage data: gAMA, cHRM, sRGB, pHYs, sBIT, bKGD, tIME, eXIf, ..."""
    kind = rng.choice([b"gAMA", b"cHRM", b"sRGB", b"pHYs", b"sBIT", b"bKGD", b"tIME", b"eXIf", b"hIST", b"sPLT",
                       b"iCCP", b"zTXt", b"iTXt", b"tEXt"])  # fmt: skip
    body = _exif_garbage(rng)[6:] if kind == b"eXIf" else bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    chunks.insert(rng.randrange(1, len(chunks)), png_chunk(kind, body))
    return chunks, False


def p_apng(rng, chunks, base):
    """An APNG control chunk (acTL, fcTL, fdAT) with frame counts, sizes, offsets and sequence numbers
    out of range, before or after the image data."""
    w, h = base.png["width"], base.png["height"]
    actl = png_chunk(b"acTL", struct.pack(">II", rng.choice([0, 1, 2, 0x7FFFFFFF, 0xFFFFFFFF]), rng.randrange(3)))
    fw, fh = rng.choice([(w, h), (w + 1, h), (w * 100, h * 100), (0, 0), (1, 1)])
    x, y = rng.choice([(0, 0), (1, 1), (0xFFFFFFFF, 0), (w, h)])
    fctl = png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", rng.choice([0, 1, 7]), fw, fh, x, y, 1, rng.choice([0, 10]),
                                          rng.randrange(4), rng.randrange(3)))  # fmt: skip
    fdat = png_chunk(b"fdAT", struct.pack(">I", rng.randrange(5)) + _stream(chunks)[: rng.randrange(200)])
    where = _idats(chunks)
    first = where[0] if where else 1
    chunks.insert(1, actl)
    if rng.random() < 0.7:
        chunks.insert(first + 1, fctl)
    if rng.random() < 0.5:
        chunks.insert(len(chunks) - 1, fctl)
        chunks.insert(len(chunks) - 1, fdat)
    return chunks, False


PNG_OPS: dict[str, Callable] = {f.__name__[2:]: f for f in (
    p_bad_crc, p_dup_ihdr, p_dup_idat, p_reorder, p_length, p_unknown_ancillary, p_unknown_critical, p_ihdr_dims,
    p_interlace, p_depth_colour, p_ihdr_methods, p_zlib_truncate, p_zlib_inflate, p_zlib_header, p_filter_bytes,
    p_rechunk_idat, p_drop_chunk, p_after_iend, p_palette, p_ancillary_garbage, p_apng,
)}  # fmt: skip


# operators that keep the picture in some of their variants (they say which in their answer)
KEEPERS = {"jpeg": ["fill_bytes", "app_segment", "repeat_dht"], "png": ["rechunk_idat", "unknown_ancillary"]}


def byte_flips(rng, data: bytes) -> bytes:
    """Plain byte flips: 1 to 8 bytes anywhere (signature and headers included) XORed with 1..255."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        buf[rng.randrange(len(buf))] ^= rng.randrange(1, 256)
    return bytes(buf)


# ------------------------------------------------------------------------------------------------
# the mutants


@dataclass(frozen=True)
class Mutant:
    fmt: str  # "jpeg" or "png"
    index: int
    base: str
    kinds: tuple[str, ...]
    benign: bool  # every operator kept the picture: it must decode to the base's pixels
    data: bytes

    @property
    def name(self) -> str:
        return f"{self.fmt}-{self.index:03d}-{'+'.join(self.kinds)}"

    def __repr__(self) -> str:
        return f"Mutant({self.name!r} of {self.base}, {len(self.data)} bytes)"


def mutant(index: int, fmt: str, seed: int = SEED) -> Mutant:
    """Mutant `index` of `fmt`, from its own seeded generator (the same bytes on every run).

    One mutant in 8 is plain byte flips only, one in 8 is made only of `KEEPERS` (picture-keeping
    variants, so the check that they decode unchanged has work), and the others' first operator goes
    round the list (every operator is used), 0 to 2 more drawn at random. One in 10 of those that are
    not flips already gets flips too.
    """
    rng = random.Random(f"{seed}:{fmt}:{index}")
    bases, ops = (jpeg_bases(), JPEG_OPS) if fmt == "jpeg" else (png_bases(), PNG_OPS)
    base = bases[index % len(bases)]
    if index % 8 == 7:
        return Mutant(fmt, index, base.name, ("byte_flips",), False, byte_flips(rng, base.data))
    names = list(ops)
    if index % 8 == 3:  # only operators that can keep the picture: those mutants must decode unchanged
        kinds = rng.sample(KEEPERS[fmt], rng.randint(1, len(KEEPERS[fmt])))
    else:
        kinds = [names[(index - index // 4) % len(names)]]
        kinds += rng.sample(names, rng.choice([0, 0, 1, 1, 2]))
    parts = hostile.jpeg_segments(base.data) if fmt == "jpeg" else hostile.png_chunks(base.data)
    benign = True
    for kind in kinds:
        parts, kept = ops[kind](rng, list(parts), base)
        benign = benign and kept
    data = b"".join(parts) if fmt == "jpeg" else hostile.png_file(parts)
    if rng.random() < 0.1:
        data, benign = byte_flips(rng, data), False
        kinds.append("byte_flips")
    return Mutant(fmt, index, base.name, tuple(kinds), benign, data)


@cache
def mutants() -> list[Mutant]:
    half = MUTANTS // 2
    return [mutant(i, "jpeg") for i in range(MUTANTS - half)] + [mutant(i, "png") for i in range(half)]


@cache
def base_pixels(name: str) -> bytes:
    base = next(b for b in jpeg_bases() + png_bases() if b.name == name)
    return load_image(base.data).tobytes()


# ------------------------------------------------------------------------------------------------
# the property


def decode(data: bytes) -> tuple[Image.Image | None, str, float]:
    """load_image(data) -> (image or None, the DETRError's message or "", seconds). Any exception but
    a DETRError propagates (and fails the test); an image is checked against the contract."""
    start = time.perf_counter()
    try:
        img = load_image(data)
    except DETRError as e:
        seconds = time.perf_counter() - start
        assert str(e).strip(), f"a DETRError without a message: {e!r}"
        return None, str(e), seconds
    seconds = time.perf_counter() - start
    assert isinstance(img, Image.Image) and img.mode == "RGB", img
    w, h = img.size
    assert w > 0 and h > 0 and w * h <= image_module.MAX_PIXELS, img.size
    arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.shape == (h, w, 3), (arr.dtype, arr.shape)
    return img, "", seconds


@pytest.fixture
def in_process(monkeypatch):
    """Decode in this process, whatever the default of $DETR_DECODE_BUDGET becomes."""
    monkeypatch.setenv(image_module.DECODE_BUDGET_ENV, "0")


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the corrupt files it reads
@pytest.mark.parametrize("m", mutants(), ids=lambda m: m.name)
def test_a_mutant_decodes_to_a_valid_image_or_raises_a_detr_error_in_time(m, in_process):
    img, error, seconds = decode(m.data)
    assert seconds < DECODE_SECONDS, f"{m}: {seconds:.2f} s ({error or 'decoded'})"
    if m.benign:  # fill bytes, comments, unknown ancillary chunks, IDATs split otherwise: the same picture
        assert img is not None, f"{m}: a picture-keeping mutation was refused: {error}"
        assert img.tobytes() == base_pixels(m.base), f"{m}: a picture-keeping mutation changed the pixels"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_run_uses_every_operator_on_every_format_and_both_outcomes(in_process):
    kinds = [k for m in mutants() for k in m.kinds]
    for name in [*JPEG_OPS, *PNG_OPS, "byte_flips"]:
        assert kinds.count(name) >= 2 or MUTANTS < 200, f"operator {name} is used {kinds.count(name)} time(s)"
    assert len({m.data for m in mutants()}) > 0.9 * len(mutants()), "the mutants are not different enough"
    assert sum(m.benign for m in mutants()) >= MUTANTS // 20
    # the mutants are not all refused at once (then the run would test only the first check)
    outcomes = [decode(m.data)[0] is not None for m in mutants()[::5]]
    assert 0.05 < sum(outcomes) / len(outcomes) < 0.95, sum(outcomes)
    m = mutants()[MUTANTS - MUTANTS // 2 + 5]
    assert mutant(m.index, m.fmt).data == m.data and m.fmt == "png"  # rebuilt from its index alone


# ------------------------------------------------------------------------------------------------
# what this run found (the minimal mutants)


def _with_segment(data: bytes, seg: bytes, at: int = 2) -> bytes:
    segs = hostile.jpeg_segments(data)
    return b"".join(segs[:at]) + seg + b"".join(segs[at:])


def test_payload_bytes_are_not_taken_for_fill_or_scans(in_process):
    """Found by this run: a comment or an ICC profile holding a run of 2,000 0xFF bytes (a white EXIF
    thumbnail, a clipped ICC curve can) was refused as "2000 bytes of 0xFF padding between markers;
    at most 65536 are accepted", and one holding 200 0xFFDA pairs as a 210-scan "scan bomb":
    the structure check counted bytes in the whole file, payloads included."""
    base = jpeg_bases()[0]
    icc = b"ICC_PROFILE\x00\x01\x01" + b"\x00" * 128
    for seg in (jpeg_segment(0xFE, b"\xff" * 2000), jpeg_segment(0xE2, icc + b"\xff\xda" * 200),
                jpeg_segment(0xE1, b"Exif\x00\x00" + b"\xff" * 60_000)):  # fmt: skip
        img, error, _ = decode(_with_segment(base.data, seg))
        assert img is not None, error
        assert img.tobytes() == base_pixels(base.name)


def test_fill_bytes_are_refused_past_their_limits_with_a_message_that_says_which(in_process):
    """Found by this run: 1,024 fill bytes before one marker were refused as "512 bytes of 0xFF padding
    between markers; at most 65536 are accepted" (pairs were counted, and the marker's own 0xFF)."""
    base = jpeg_bases()[0]
    limit = image_module.MAX_JPEG_FILL_RUN
    img, error, _ = decode(_with_segment(base.data, b"\xff" * limit))
    assert img is not None and img.tobytes() == base_pixels(base.name), error
    _, error, _ = decode(_with_segment(base.data, b"\xff" * (limit + 1)))
    assert f"has {limit + 1} bytes of 0xFF padding in a row before a marker; at most {limit} in a row" in error
    _, error, _ = decode(_with_segment(base.data, (b"\xff" * 1000 + jpeg_segment(0xFE, b"")) * 100))
    assert error.startswith(f"this JPEG has 100000 bytes of 0xFF padding between markers; at most {2**16} are")


# ------------------------------------------------------------------------------------------------
# the same through the budgeted worker ($DETR_DECODE_BUDGET=1, decode_budget.py)


@pytest.fixture(scope="module")
def pool():
    """The worker pool started once (its start, seconds, is not a decode)."""
    decode_budget.warm_up()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("m", mutants()[::BUDGET_SUBSET], ids=lambda m: m.name)
def test_a_mutant_gets_the_same_answer_through_the_budgeted_worker(m, pool, monkeypatch):
    monkeypatch.setenv(image_module.DECODE_BUDGET_ENV, "0")
    local, local_error, _ = decode(m.data)
    monkeypatch.setenv(image_module.DECODE_BUDGET_ENV, "1")
    img, error, seconds = decode(m.data)
    assert seconds < BUDGETED_SECONDS, f"{m}: {seconds:.2f} s ({error or 'decoded'})"
    assert error == local_error, f"{m}: in process {local_error!r}, in the worker {error!r}"
    if local is not None:
        assert img.size == local.size and img.tobytes() == local.tobytes(), m


# ------------------------------------------------------------------------------------------------
# the batch CLI: refused mutants are reported one line each, the batch goes on to the good file


def test_the_cli_reports_refused_mutants_and_goes_on_to_the_good_file(tmp_path, in_process):
    refused: dict[Mutant, str] = {}  # the first two refused JPEG mutants and the first refused PNG one
    for m in mutants():
        if sum(r.fmt == m.fmt for r in refused) < {"jpeg": 2, "png": 1}[m.fmt]:
            error = decode(m.data)[1]
            if error:
                refused[m] = error
    assert len(refused) == 3
    paths = []
    for m in refused:
        paths.append(tmp_path / f"{m.name}.{m.fmt}")
        paths[-1].write_bytes(m.data)
    good = tmp_path / "good.png"
    _photo(64, 48).save(good)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "detr_core", *map(str, paths), str(good), "--model", "detr_shapes", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    log = proc.stderr
    assert proc.returncode == 1, log
    assert "Traceback" not in log, log
    assert f"{len(paths) + 1}/{len(paths) + 1}" in log  # the progress bar reached the end
    for path, error in zip(paths, refused.values()):
        assert f"{printable(path)}: error: {printable(error)}" in log, (path.name, error, log)
        assert not (out / path.stem).exists()
    assert f"{good}: " in log and f"{good}: error" not in log
    assert (out / "good" / "detections.json").exists() and Image.open(out / "good" / "boxes.png").size == (64, 48)


def test_the_bases_are_progressive_jpegs_and_valid_pngs(in_process):
    for base in jpeg_bases():
        info = Image.open(io.BytesIO(base.data)).info
        assert info.get("progressive") or info.get("progression"), base.name
    for base in jpeg_bases() + png_bases():
        assert decode(base.data)[0] is not None, base.name
    assert any(len(hostile.png_chunks(b.data)) > 6 for b in png_bases())  # image data over many IDATs
