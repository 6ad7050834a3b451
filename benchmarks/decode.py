"""Decoding budget: what the worker pool adds to a normal 12-megapixel JPEG, against an in-process decode.

    PYTHONPATH=. python benchmarks/decode.py [--repeat N]

Prints a table with the CPU model: median wall time of `load_image` in the budgeted worker pool
(the default) and in this process ($DETR_DECODE_BUDGET=0), the difference (the target is at most
~30 ms), the same for the photo stored sideways (EXIF orientation 6, turned upright in this process),
and the one-off start of the pool (forkserver and workers, as `warm_up()` at a server's start).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

import numpy as np
from machine import cpu_description  # benchmarks/machine.py (this script's folder)
from PIL import Image

from detr_core.io import decode_budget
from detr_core.io.image import DECODE_BUDGET_ENV, load_image

PAUSE_S = 0.2  # between decodes, as between uploads: a worker readies its next result's memory meanwhile


def median_times(data: bytes, repeat: int, pause: float) -> tuple[float, float]:
    """Median seconds of `load_image(data)` in process and in the budgeted pool, measured in turns
    (the load of a shared machine drifts: both see the same)."""
    times: dict[str, list[float]] = {"0": [], "1": []}
    for _ in range(repeat):
        for setting, samples in times.items():
            os.environ[DECODE_BUDGET_ENV] = setting
            time.sleep(pause)
            start = time.perf_counter()
            load_image(data)
            samples.append(time.perf_counter() - start)
    return statistics.median(times["0"]), statistics.median(times["1"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--pause", type=float, default=PAUSE_S, help=f"seconds between decodes ({PAUSE_S})")
    args = parser.parse_args()
    y, x = np.mgrid[0:3000, 0:4000]
    rng = np.random.default_rng(0)
    pixels = np.stack([(x // 7) % 256, (y // 5) % 256, (x + y) // 30 % 256], -1) + rng.integers(0, 24, (3000, 4000, 3))
    photo = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=90, exif=exif)
    sideways = buf.getvalue()
    start = time.perf_counter()
    decode_budget.warm_up()
    cold = time.perf_counter() - start
    rows = []
    for name, blob in (("12 MP JPEG", data), ("12 MP JPEG, EXIF orientation 6", sideways)):
        local, worker = median_times(blob, args.repeat, args.pause)
        rows += [(f"{name}: in process", local), (f"{name}: budgeted worker", worker),
                 (f"{name}: overhead of the budget", worker - local)]  # fmt: skip
    rows.append(("start of the pool (warm_up, once)", cold))
    print(f"CPU: {cpu_description()}; 4000x3000 JPEG, {len(data) / 2**20:.1f} MB; "
          f"median of {args.repeat}, {args.pause} s apart; load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print(f"| {'load_image':{width}} | {'ms':>8} |")
    print(f"| {'-' * width} | {'-' * 8}:|")
    for name, seconds in rows:
        print(f"| {name:{width}} | {seconds * 1e3:8.0f} |")


if __name__ == "__main__":
    main()
