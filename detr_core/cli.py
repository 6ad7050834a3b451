"""Command line: analyze photos without the dashboard.

    python -m detr_core IMAGE... --model NAME [--threshold T] [--points X,Y ...] --out DIR
    python -m detr_core IMAGE... --checkpoint PATH [--classes FILE] --out DIR     (your own DETR)

writes, per image, into DIR/<image stem>/: detections.json, boxes.png, one decoder_q<Q>_<class>.png
per detection (its cross-attention beside its box) and one encoder_x<X>_y<Y>.png per point (original
pixel coordinates). Exit codes: 0 all done; 1 some files failed (each is reported on stderr in one
line, and the batch goes on with the next); 2 nothing was done, because an option is wrong (argparse's
usage errors, and a non-finite threshold or point, a device this machine cannot use, an --out that
is not a writable folder) or the model cannot be loaded. File names are printed with control
characters escaped (`names.printable`) and become output folder names through `names.safe_name`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from PIL import Image

from .analysis.attention import decoder_map, encoder_map
from .analysis.pipeline import analyze
from .errors import DETRError
from .io.image import MAX_PIXELS, load_image
from .io.names import printable, safe_name
from .io.render import draw_boxes, draw_cell, overlay
from .models.own import load_own_model
from .models.zoo import MODELS, load_model, register, resolve_device

__all__ = ["main"]


USAGE_ERROR = 2  # nothing was done: a wrong option (argparse uses 2 for its own usage errors too)
FILES_FAILED = 1  # some files were reported and skipped
CLASS_NAME_BYTES = 64  # a class name's share of an output file name


def _point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a point is X,Y in pixels, e.g. 120,80; got {text!r}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise argparse.ArgumentTypeError(f"a point's X and Y must be finite numbers of pixels; got {text!r}")
    if not (0 <= x <= MAX_PIXELS and 0 <= y <= MAX_PIXELS):
        raise argparse.ArgumentTypeError(
            f"a point is X,Y in pixels from the top-left corner, each between 0 and {MAX_PIXELS:,} "
            f"(the longest side an accepted image can have); got {text!r}"
        )
    return x, y


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a threshold is a score, e.g. 0.7; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"a threshold must be a finite score, e.g. 0.7; got {text!r}")
    return value


def _output_folder(out: Path) -> list[Path]:
    """Create `out` if needed and check that files can be written into it; `DETRError` if not.

    Returns the folders it created, first the outermost (so a run refused later can remove them).
    """
    shown = printable(out)
    created: list[Path] = []
    try:
        if out.exists() and not out.is_dir():
            raise DETRError(f"--out {shown} is a file, not a folder")
        created = [p for p in (out, *out.parents) if not p.exists()][::-1]
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        _remove_empty(created)
        raise DETRError(f"--out {shown} cannot be used as the output folder: {e.strerror or e}") from None
    return created


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def _side_by_side(left: Image.Image, right: Image.Image, gap: int = 8) -> Image.Image:
    out = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (left.width + gap, 0))
    return out


def _progress(i: int, n: int, name: str, start: float) -> None:
    width = 24
    filled = round(width * i / n)
    bar = "#" * filled + "." * (width - filled)
    sys.stderr.write(f"\r[{bar}] {i}/{n} {time.perf_counter() - start:5.1f}s {printable(name)[:40]:40}")
    if i == n:
        sys.stderr.write("\n")
    sys.stderr.flush()


def analyze_file(
    model, spec_name: str, path: Path, out_dir: Path, threshold: float, points: list[tuple[float, float]]
) -> int:
    """Write every output for one image; returns the number of detections. Raises DETRError."""
    image = load_image(path)
    analysis = analyze(model, image, spec_name)
    detections = analysis.detections(threshold)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "detections.json").write_text(
        json.dumps(  # allow_nan=False: the file is always valid JSON (a NaN score raises ValueError)
            {
                "image": path.name,
                "model": spec_name,
                "threshold": threshold,
                "size": [image.width, image.height],
                "detections": [d.to_dict() for d in detections],
            },
            indent=2,
            allow_nan=False,
        )
    )
    boxed = draw_boxes(image, detections)
    boxed.save(out_dir / "boxes.png")
    for det in detections:
        attn = overlay(image, decoder_map(analysis, det.query), analysis.geometry)
        name = safe_name(det.class_name.replace(".", "_"), fallback="class", limit=CLASS_NAME_BYTES)
        _side_by_side(attn, draw_boxes(image, [det])).save(out_dir / f"decoder_q{det.query}_{name}.png")
    for x, y in points:
        m = encoder_map(analysis, x, y)
        picture = draw_cell(overlay(image, m.map, analysis.geometry), analysis.geometry, m.row, m.col)
        picture.save(out_dir / f"encoder_x{round(x)}_y{round(y)}.png")
    return len(detections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detr_core", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path, help="photos to analyze")
    parser.add_argument("--model", choices=sorted(MODELS), help="model of the zoo (default: detr_resnet50)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="a local checkpoint: with --model, that model's file; alone, your own DETR (a main.py checkpoint, "
        "a state dict, or a Hugging Face save_pretrained folder)",
    )
    parser.add_argument("--classes", type=Path, help="your model's class names (one per line, JSON, or COCO file)")
    parser.add_argument(
        "--dilation", action=argparse.BooleanOptionalAction, help="your model's backbone is DC5 (if it has no args)"
    )
    parser.add_argument("--nheads", type=int, help="your model's attention heads (if its checkpoint has no args)")
    parser.add_argument("--threshold", type=_threshold, help="keep detections above this score (default: the model's)")
    parser.add_argument(
        "--points",
        nargs="*",
        type=_point,
        default=[],
        metavar="X,Y",
        help="pixels (original image) whose encoder self-attention to draw",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    args = parser.parse_args(argv)

    created: list[Path] = []
    try:
        device = resolve_device(args.device)
        created = _output_folder(args.out)
        if args.model is None and args.checkpoint is not None:  # your own DETR
            own = load_own_model(
                args.checkpoint, args.classes, dilation=args.dilation, nheads=args.nheads, device=device
            )
            model, spec = own.model, own.spec
            if spec.name in MODELS:  # never shadow a zoo model
                spec = replace(spec, name=f"{spec.name} (yours)")
            register(spec)  # checked against the model contract; analyzed by name below, like a zoo model
            args.model = spec.name
            sys.stderr.write(f"{printable(spec.title)}: {printable(spec.notes)}\n")
        else:
            args.model = args.model or "detr_resnet50"
            spec = MODELS[args.model]
            model = load_model(args.model, checkpoint=args.checkpoint, device=device)
    except DETRError as e:
        _remove_empty(created)
        print(f"error: {printable(e)}", file=sys.stderr)
        return USAGE_ERROR
    threshold = args.threshold if args.threshold is not None else spec.default_threshold
    failures, used, start = 0, set(), time.perf_counter()
    for i, path in enumerate(args.images):
        try:
            folder = args.out / safe_name(path.stem, used)
            n = analyze_file(model, args.model, path, folder, threshold, args.points)
            sys.stderr.write(f"\r{printable(path)}: {n} detection(s)\033[K\n")
        except Exception as e:  # one line per bad file, never a traceback; the batch goes on
            failures += 1
            sys.stderr.write(f"\r{printable(path)}: error: {printable(_reason(e))}\033[K\n")
        if len(args.images) > 1:
            _progress(i + 1, len(args.images), path.name, start)
    return FILES_FAILED if failures else 0


def _reason(error: Exception) -> str:
    """The one-line reason a file failed: the core's message, or what the system or the bug said."""
    if isinstance(error, DETRError):
        return str(error)
    if isinstance(error, OSError):
        where = f" ({printable(error.filename)})" if error.filename else ""
        return f"cannot write its outputs{where}: {error.strerror or error}"
    if isinstance(error, MemoryError):
        return "not enough memory for this image"
    return f"unexpected {type(error).__name__}: {error}"
