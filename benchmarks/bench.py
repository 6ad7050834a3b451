"""Speed and memory of one analysis, against the official architecture and a peer. Prints one
Markdown table (and writes it to --out if given).

    python benchmarks/bench.py [--runs 5] [--sizes 800x1066 800x1333] [--models detr_resnet50 ...]

Rows, on one input per size, same process, same thread count, median of --runs after a warm-up:
- official architecture: the plain forward of our detr_resnet50 (fp32, eval, no capture), which
  the tests prove equal to the official model: the baseline of every ratio;
- official architecture + capture: the same model with every attention map captured;
- ours, default (exact): batch norm folded, channels-last backbone, full capture;
- ours, fast: the same under bfloat16 autocast (a CPU without native bf16 runs it emulated);
- peer: Hugging Face transformers' DetrForObjectDetection (R50 built offline from its config with
  random weights, eager attention, output_attentions=True), if `transformers` is installed
  (pip install -r benchmarks/requirements.txt).
Then, from one cached analysis: a click -> a new encoder map (p50/p95 over 200 random pixels), a
decoder map for a random query (p50/p95), relevance for one query, and the analysis' memory. Cold
start = load an R50 checkpoint from a local file (random weights saved in the official format) +
fold + first analysis, in a fresh process.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detr_core import build_model
from detr_core.attention import decoder_map, encoder_map
from detr_core.capture import capture
from detr_core.fast import optimize_for_inference
from detr_core.image import Geometry, PreparedImage
from detr_core.relevance import relevance


def timed(fn, runs: int) -> float:
    """Median wall time in ms of `fn()` over `runs` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def percentiles(fn, args: list) -> tuple[float, float]:
    times = []
    for a in args:
        t0 = time.perf_counter()
        fn(*a)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


def hf_peer(h: int, w: int, runs: int):
    try:
        from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
    except ImportError:
        return None
    cfg = DetrConfig(backbone_config=ResNetConfig(out_features=["stage4"]), num_labels=91, attn_implementation="eager")
    model = DetrForObjectDetection(cfg).eval()
    x = torch.randn(1, 3, h, w)

    def run():
        with torch.inference_mode():
            model(pixel_values=x, output_attentions=True)

    return timed(run, runs)


def cold_start(name: str, h: int, w: int) -> float:
    """Seconds for a fresh process to load a checkpoint file, fold it and run the first analysis."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.pth"
        torch.save({"model": build_model(name).state_dict()}, path)
        code = (
            "import time; t=time.perf_counter(); import torch; from detr_core import load_model; "
            "from detr_core.fast import optimize_for_inference; from detr_core.capture import capture; "
            "from detr_core.image import Geometry, PreparedImage; "
            f"m=optimize_for_inference(load_model({name!r}, checkpoint={str(path)!r}, device='cpu')); "
            f"g=Geometry({h},{w},{h},{w},{-(-h // 32)},{-(-w // 32)},32); "
            f"capture(m, PreparedImage(torch.randn(1,3,{h},{w}), g)); print(time.perf_counter()-t)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        return float(out.stdout.strip().splitlines()[-1])


def bench_model(name: str, h: int, w: int, runs: int, rows: list, extras: dict) -> None:
    torch.manual_seed(0)
    base = build_model(name).eval().requires_grad_(False)
    fast = optimize_for_inference(base)
    stride = base.stride
    g = Geometry(h, w, h, w, -(-h // stride), -(-w // stride), stride)
    prepared = PreparedImage(torch.randn(1, 3, h, w), g)
    label = f"{name} {h}x{w}"

    def plain():
        with torch.inference_mode():
            base(prepared.tensor)

    t_base = timed(plain, runs)
    rows.append((label, "official architecture, plain forward (baseline)", t_base))
    rows.append((label, "official architecture + full capture", timed(lambda: capture(base, prepared), runs)))
    rows.append(
        (
            label,
            "ours, default (exact): folded BN + channels-last + full capture",
            timed(lambda: capture(fast, prepared), runs),
        )
    )
    rows.append(
        (
            label,
            "ours, fast: + bfloat16 autocast + full capture",
            timed(lambda: capture(fast, prepared, autocast_dtype=torch.bfloat16), runs),
        )
    )
    if name == "detr_resnet50":
        t_hf = hf_peer(h, w, runs)
        if t_hf is not None:
            rows.append((label, "peer: HF DetrForObjectDetection, output_attentions=True", t_hf))
    analysis = capture(fast, prepared)
    rng = random.Random(0)
    clicks = [(analysis, rng.uniform(0, w), rng.uniform(0, h)) for _ in range(200)]
    extras[label] = {
        "encoder map p50/p95 (ms)": percentiles(lambda a, x, y: encoder_map(a, x, y), clicks),
        "encoder map, mean of layers p50/p95 (ms)": percentiles(
            lambda a, x, y: encoder_map(a, x, y, "mean"), clicks[:50]
        ),
        "decoder map p50/p95 (ms)": percentiles(
            lambda a, q: decoder_map(a, q), [(analysis, rng.randrange(analysis.num_queries)) for _ in range(200)]
        ),
        "relevance, one query (ms)": timed(lambda: relevance(fast, prepared, 0), 1),
        "analysis memory (MB)": analysis.nbytes() / 1e6,
        "base": t_base,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=["800x1066", "800x1333"])
    parser.add_argument("--models", nargs="+", default=["detr_resnet50", "detr_resnet50_dc5"])
    parser.add_argument("--no-shapes", action="store_true", help="skip the project's small model")
    parser.add_argument("--no-cold-start", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()

    rows: list = []
    extras: dict = {}
    for name in args.models:
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            print(f"... {name} {h}x{w}", file=sys.stderr, flush=True)
            bench_model(name, h, w, args.runs, rows, extras)
    if not args.no_shapes:
        print("... detr_shapes 128x128", file=sys.stderr, flush=True)
        bench_model("detr_shapes", 128, 128, max(args.runs, 20), rows, extras)

    cpu = platform.processor() or platform.machine()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({cpu}, {os.cpu_count()} cores)"
    lines = [
        f"Machine: {device}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"median of {args.runs} runs after a warm-up.",
        "",
        "| model, input | what | time (ms) | x baseline |",
        "|---|---|---:|---:|",
    ]
    for label, what, ms in rows:
        lines.append(f"| {label} | {what} | {ms:.0f} | {ms / extras[label]['base']:.2f} |")
    lines += ["", "| model, input | after one analysis | value |", "|---|---|---:|"]
    for label, facts in extras.items():
        for what, v in facts.items():
            if what == "base":
                continue
            value = f"{v[0]:.1f} / {v[1]:.1f}" if isinstance(v, tuple) else f"{v:.1f}"
            lines.append(f"| {label} | {what} | {value} |")
    if not args.no_cold_start:
        print("... cold start", file=sys.stderr, flush=True)
        lines.append(
            f"| detr_resnet50 800x1066 | cold start: load checkpoint file + fold + first analysis (s) "
            f"| {cold_start('detr_resnet50', 800, 1066):.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
