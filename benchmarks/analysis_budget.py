"""What an encoder analysis costs against the number of feature tokens: the figures behind
detr_core/analysis/budget.py.

    PYTHONPATH=. python benchmarks/analysis_budget.py [--tokens 1000 2000 4000] [--threads N]
        [--kinds entropy rollout relevance] [--relevance-inputs detr_resnet50_dc5:800x1066 ...]

Entropy and rollout: builds the stored queries, keys and log-sum-exps of one R50 encoder (8 heads
of 32 dimensions, 6 layers) for N tokens, and times, per N: the entropy of one encoder layer
(`encoder_entropy`), one rollout map through the 6 layers (`rollout_vector`), and reports the peak
resident memory each added (ru_maxrss).

Relevance: a real model (random weights, folded as the dashboard runs it) on a random image of the
given size: one captured pass first (the warm-up, and the peak the dashboard has already reached),
then `relevance` for query 0 --repeat times; the fastest time and how far the process's peak
resident memory (VmHWM of /proc/self/status) rose above that of the captured pass.

A fresh process per measurement. Prints tables with the CPU model, the load average and seconds per
token^2 (the cost is quadratic in the tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from types import SimpleNamespace

import torch

from detr_core.analysis import kernel
from detr_core.analysis.rollout import rollout_vector
from detr_core.analysis.stats import encoder_entropy

HEADS, DIM, LAYERS = 8, 32, 6


def _fake_analysis(tokens: int) -> SimpleNamespace:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(LAYERS, HEADS, tokens, DIM, generator=g) * 0.3
    k = torch.randn(LAYERS, HEADS, tokens, DIM, generator=g) * 0.3
    lse = torch.stack([kernel.row_logsumexp(a, b) for a, b in zip(q, k, strict=True)])
    side = int(tokens**0.5)
    geometry = SimpleNamespace(tokens=tokens, feat_h=side, feat_w=tokens // side)
    return SimpleNamespace(enc_q=q, enc_k=k, enc_lse=lse, enc_layers=LAYERS, geometry=geometry)


def _run(kind: str, analysis: SimpleNamespace) -> None:
    if kind == "entropy":
        encoder_entropy(analysis, 0)
    else:
        rollout_vector(analysis, analysis.geometry.tokens // 2)


def _peak_rss_mb() -> float:
    """The process's peak resident memory, VmHWM (Linux; ru_maxrss would carry over a parent's size
    across fork + exec)."""
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 1024


def _relevance(name: str, h: int, w: int, repeat: int) -> dict:
    from detr_core import build_model
    from detr_core.analysis.capture import capture
    from detr_core.analysis.relevance import relevance
    from detr_core.io.image import Geometry, PreparedImage
    from detr_core.models.fast import optimize_for_inference

    torch.manual_seed(0)
    model = optimize_for_inference(build_model(name))
    s = model.stride
    prepared = PreparedImage(torch.randn(1, 3, h, w), Geometry(h, w, h, w, -(-h // s), -(-w // s), s))
    capture(model, prepared)  # warm-up, and the peak a captured pass reaches
    before = _peak_rss_mb()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        relevance(model, prepared, 0)
        times.append(time.perf_counter() - start)
    tokens = prepared.geometry.feat_h * prepared.geometry.feat_w
    return {"seconds": min(times), "peak_mb": _peak_rss_mb() - before, "tokens": tokens}


def _one(kind: str, tokens: int, repeat: int) -> dict:
    _run(kind, _fake_analysis(64))  # warm up (first calls into torch's kernels)
    analysis = _fake_analysis(tokens)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeat):  # the fastest run: the least disturbed by other processes on the cores
        start = time.perf_counter()
        _run(kind, analysis)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"seconds": seconds, "peak_mb": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", default=["entropy", "rollout", "relevance"])
    parser.add_argument(
        "--relevance-inputs",
        nargs="+",
        default=["detr_resnet50:800x1066", "detr_resnet50_dc5:800x1066", "detr_resnet50_dc5:800x1333"],
        help="model:HxW pairs for the relevance rows",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        kind, what = args.child
        if kind == "relevance":
            name, size = what.split(":")
            h, w = (int(v) for v in size.split("x"))
            print(json.dumps(_relevance(name, h, w, args.repeat)))
        else:
            print(json.dumps(_one(kind, int(what), args.repeat)))
        return
    from machine import cpu_description  # benchmarks/machine.py (this script's folder)

    def child(kind: str, what: str) -> dict:
        opts = ["--threads", str(args.threads), "--repeat", str(args.repeat), "--child", kind, what]
        out = subprocess.run(
            [sys.executable, __file__, *opts],
            capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": "."},
        )  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])

    print(f"CPU: {cpu_description()}, torch threads {args.threads}, load {os.getloadavg()[0]:.1f}")
    print("| kind | tokens | seconds (fastest of --repeat) | s per token^2 | peak MB added |")
    print("|---|---:|---:|---:|---:|")
    for kind in [k for k in ("entropy", "rollout") if k in args.kinds]:
        for n in args.tokens:
            r = child(kind, str(n))
            print(f"| {kind} | {n:,} | {r['seconds']:.2f} | {r['seconds'] / n**2:.2e} | {r['peak_mb']:.0f} |")
    if "relevance" in args.kinds:
        print()
        print("| relevance, one query | tokens | seconds (fastest of --repeat) | peak RSS above a captured pass (MB) |")
        print("|---|---:|---:|---:|")
        for what in args.relevance_inputs:
            r = child("relevance", what)
            print(f"| {what} | {r['tokens']:,} | {r['seconds']:.2f} | {r['peak_mb']:.0f} |")
        print(f"(load average after: {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
