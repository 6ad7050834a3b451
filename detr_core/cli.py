"""Command line: analyze photos without the dashboard.

    python -m detr_core IMAGE... --model NAME [--threshold T] [--points X,Y ...] --out DIR
    python -m detr_core IMAGE... --checkpoint PATH [--classes FILE] --out DIR     (your own DETR)

writes, per image, into DIR/<image stem>/: detections.json, boxes.png, one decoder_q<Q>_<class>.png
per detection (its cross-attention beside its box) and one encoder_x<X>_y<Y>.png per point (original
pixel coordinates). A bad file is reported on stderr and skipped; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from PIL import Image

from .analysis.attention import decoder_map, encoder_map
from .analysis.pipeline import analyze
from .errors import DETRError
from .io.image import load_image
from .io.render import draw_boxes, draw_cell, overlay
from .models.own import load_own_model
from .models.zoo import MODELS, load_model, register

__all__ = ["main"]


def _point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a point is X,Y in pixels, e.g. 120,80; got {text!r}") from None
    return x, y


def _side_by_side(left: Image.Image, right: Image.Image, gap: int = 8) -> Image.Image:
    out = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (left.width + gap, 0))
    return out


def _progress(i: int, n: int, name: str, start: float) -> None:
    width = 24
    filled = round(width * i / n)
    bar = "#" * filled + "." * (width - filled)
    sys.stderr.write(f"\r[{bar}] {i}/{n} {time.perf_counter() - start:5.1f}s {name[:40]:40}")
    if i == n:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _safe_stem(path: Path, used: set[str]) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.stem) or "image"
    name, k = stem, 2
    while name in used:
        name, k = f"{stem}_{k}", k + 1
    used.add(name)
    return name


def analyze_file(
    model, spec_name: str, path: Path, out_dir: Path, threshold: float, points: list[tuple[float, float]]
) -> int:
    """Write every output for one image; returns the number of detections. Raises DETRError."""
    image = load_image(path)
    analysis = analyze(model, image, spec_name)
    detections = analysis.detections(threshold)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "detections.json").write_text(
        json.dumps(
            {
                "image": path.name,
                "model": spec_name,
                "threshold": threshold,
                "size": [image.width, image.height],
                "detections": [d.to_dict() for d in detections],
            },
            indent=2,
        )
    )
    boxed = draw_boxes(image, detections)
    boxed.save(out_dir / "boxes.png")
    for det in detections:
        attn = overlay(image, decoder_map(analysis, det.query), analysis.geometry)
        name = "".join(c if c.isalnum() else "_" for c in det.class_name)
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
    parser.add_argument("--threshold", type=float, help="keep detections above this score (default: the model's)")
    parser.add_argument(
        "--points",
        nargs="*",
        type=_point,
        default=[],
        metavar="X,Y",
        help="pixels (original image) whose encoder self-attention to draw",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)

    try:
        if args.model is None and args.checkpoint is not None:  # your own DETR
            own = load_own_model(
                args.checkpoint, args.classes, dilation=args.dilation, nheads=args.nheads, device=args.device
            )
            model, spec = own.model, own.spec
            if spec.name in MODELS:  # never shadow a zoo model
                spec = replace(spec, name=f"{spec.name} (yours)")
            register(spec)  # checked against the model contract; analyzed by name below, like a zoo model
            args.model = spec.name
            sys.stderr.write(f"{spec.title}: {spec.notes}\n")
        else:
            args.model = args.model or "detr_resnet50"
            spec = MODELS[args.model]
            model = load_model(args.model, checkpoint=args.checkpoint, device=args.device)
    except DETRError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threshold = args.threshold if args.threshold is not None else spec.default_threshold
    failures, used, start = 0, set(), time.perf_counter()
    for i, path in enumerate(args.images):
        try:
            n = analyze_file(model, args.model, path, args.out / _safe_stem(path, used), threshold, args.points)
            sys.stderr.write(f"\r{path}: {n} detection(s)\033[K\n")
        except DETRError as e:
            failures += 1
            sys.stderr.write(f"\r{path}: error: {e}\033[K\n")
        if len(args.images) > 1:
            _progress(i + 1, len(args.images), path.name, start)
    return 1 if failures else 0
