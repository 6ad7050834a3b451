"""Issue #12's files that cost minutes, through the library and the command line: what each gets and
how long it takes, under the default decoding budget. Prints a Markdown table with the CPU.

    python benchmarks/hostile_files.py

Rows: the generators of tests/test_decode_budget.py (a progressive-JPEG scan bomb, 20 MB of 0xFF
fill, 2 million PNG chunks, 40-megapixel RLE8 and RLE4 BMPs, an 8000x5000 16-bit RGBA PNG).
Library: `load_image` on the bytes, in this process (the decode in the budgeted workers, started
first). Command line: one `python -m detr_core --model detr_shapes` batch over all of them and a
good picture last; its wall time includes the interpreter's start and torch's import, its exit code
must be 1 and the good picture must be analyzed. The browser's answer to the same files is the
dashboard calling the same `load_image` (benchmarks/load_test.py --burst, tests/test_browser_two_sessions.py).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # the generators

from machine import cpu_description  # noqa: E402  (benchmarks/machine.py)
from PIL import Image  # noqa: E402
from test_decode_budget import KINDS  # noqa: E402

from detr_core.errors import DETRError  # noqa: E402
from detr_core.io import decode_budget  # noqa: E402
from detr_core.io.image import load_image  # noqa: E402

LABELS = {
    "scan_bomb": "progressive JPEG, thousands of tiny scans",
    "fill_bomb": "JPEG with ~20 MB of 0xFF fill",
    "chunk_bomb": "PNG with 2 million unknown chunks",
    "bmp_rle8": "40 MP RLE8 BMP",
    "bmp_rle4": "40 MP RLE4 BMP",
    "rgba16_png": "8000x5000 RGBA 16-bit PNG",
}


def library(data: bytes) -> tuple[str, float]:
    start = time.perf_counter()
    try:
        img = load_image(data)
        outcome = f"decoded, {img.width}x{img.height}"
    except DETRError as e:
        outcome = f"refused: {str(e)[:70]}"
    return outcome, time.perf_counter() - start


def main() -> None:
    decode_budget.warm_up()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for kind, make in KINDS.items():
            data = make()
            path = Path(tmp) / f"{kind}.{'jpg' if 'bomb' in kind and kind != 'chunk_bomb' else kind[-3:]}"
            path.write_bytes(data)
            files.append(path)
            outcome, seconds = library(data)
            rows.append((kind, len(data), outcome, seconds))
        good = Path(tmp) / "good.png"
        Image.new("RGB", (128, 128), (40, 160, 90)).save(good)
        start = time.perf_counter()
        cli = subprocess.run(
            [sys.executable, "-m", "detr_core", "--model", "detr_shapes", "--out", str(Path(tmp) / "out"),
             *map(str, files), str(good)],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        cli_seconds = time.perf_counter() - start
        analyzed = (Path(tmp) / "out" / "good" / "detections.json").exists()
    print(f"CPU: {cpu_description()}\n")
    print("| file | size | library: answer | library: time (s) |")
    print("|---|---:|---|---:|")
    for kind, size, outcome, seconds in rows:
        print(f"| {LABELS[kind]} | {size / 1e6:.2f} MB | {outcome} | {seconds:.2f} |")
    errors = [line for line in cli.stderr.splitlines() if "Traceback" in line]
    print(
        f"\nCommand line, one batch of the {len(rows)} files and a good picture: exit code {cli.returncode}, "
        f"{cli_seconds:.1f} s in all, the good picture {'analyzed' if analyzed else 'NOT analyzed'}, "
        f"{len(errors)} tracebacks."
    )


if __name__ == "__main__":
    main()
