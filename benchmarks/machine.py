"""The machine a benchmark ran on, in one line: the CPU's model name, its core count and whether it
computes bfloat16 natively (AVX-512 BF16 or AMX), which decides the fast-mode rows."""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["cpu_description", "cpu_name", "python_loop_ms"]

_NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_name() -> str:
    """The CPU's model name (`/proc/cpuinfo`), or what `platform` knows elsewhere."""
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_description() -> str:
    """e.g. 'Intel(R) Xeon(R) Processor, 2 cores, native bfloat16 (avx512_bf16, amx_bf16)'."""
    flags: set[str] = set()
    for line in _cpuinfo():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    native = [f for f in _NATIVE_BF16 if f in flags]
    bf16 = f"native bfloat16 ({', '.join(native)})" if native else "no native bfloat16"
    return f"{cpu_name()}, {os.cpu_count()} cores, {bf16}"


def python_loop_ms(iterations: int = 5_000_000) -> float:
    """ms one core takes for a fixed pure-Python loop (best of three): the same machine runs it in very
    different times when a neighbour shares the host, so a timing table can say how fast the CPU was
    while it was measured (seen on the 2-core Xeon within 15 minutes: 340 ms, and 900-1200 ms on a slow spell)."""
    import time

    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for i in range(iterations):
            total += i
        best = min(best, time.perf_counter() - start)
    return 1000 * best
