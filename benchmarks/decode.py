"""Decoding budget: what the worker pool adds to a normal 12-megapixel JPEG, against an in-process decode.

    PYTHONPATH=. python benchmarks/decode.py [--repeat N]

Prints a table with the CPU model: median wall time of `load_image` (worker, budget) and of the same
decode in this process (`decode_rgb`), and the difference (the target is at most ~30 ms).
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time

import numpy as np
from PIL import Image

from detr_core.io import decode_budget
from detr_core.io.image import decode_rgb, load_image


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def median_time(fn, data: bytes, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    y, x = np.mgrid[0:3000, 0:4000]
    rng = np.random.default_rng(0)
    pixels = np.stack([(x // 7) % 256, (y // 5) % 256, (x + y) // 30 % 256], -1) + rng.integers(0, 24, (3000, 4000, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    decode_budget.warm_up()
    worker = median_time(load_image, data, args.repeat)
    local = median_time(decode_rgb, data, args.repeat)
    print(f"CPU: {cpu_model()}; 4000x3000 JPEG, {len(data) / 2**20:.1f} MB; median of {args.repeat}")
    print(f"| {'decode':32} | {'ms':>8} |")
    print(f"| {'-' * 32} | {'-' * 8}:|")
    print(f"| {'in process (decode_rgb)':32} | {local * 1e3:8.0f} |")
    print(f"| {'budgeted worker (load_image)':32} | {worker * 1e3:8.0f} |")
    print(f"| {'overhead of the budget':32} | {(worker - local) * 1e3:8.0f} |")


if __name__ == "__main__":
    main()
