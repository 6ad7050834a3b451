"""What an encoder analysis costs against the number of feature tokens: the figures behind
detr_core/analysis/budget.py.

    PYTHONPATH=. python benchmarks/analysis_budget.py [--tokens 1000 2000 4000] [--threads N]

Builds the stored queries, keys and log-sum-exps of one R50 encoder (8 heads of 32 dimensions,
6 layers) for N tokens, and times, per N: the entropy of one encoder layer (`encoder_entropy`), one
rollout map through the 6 layers (`rollout_vector`), and reports the peak resident memory each
added (a fresh process per measurement). Prints a table with the CPU model, the load average and
seconds per token^2 (the cost is quadratic in the tokens).
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
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(_one(args.child[0], int(args.child[1]), args.repeat)))
        return
    from benchmarks.decode import cpu_model

    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, torch threads {args.threads}, load {os.getloadavg()[0]:.1f}")
    print("| kind | tokens | seconds (fastest of --repeat) | s per token^2 | peak MB added |")
    print("|---|---:|---:|---:|---:|")
    for kind in ("entropy", "rollout"):
        for n in args.tokens:
            child = ["--threads", str(args.threads), "--repeat", str(args.repeat), "--child", kind, str(n)]
            out = subprocess.run(
                [sys.executable, __file__, *child],
                capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": "."},
            )  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {kind} | {n:,} | {r['seconds']:.2f} | {r['seconds'] / n**2:.2e} | {r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
