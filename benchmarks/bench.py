"""Speed and memory of one analysis, against the official architecture and a peer. Prints one
Markdown table (and writes it to --out if given).

    python benchmarks/bench.py [--runs 5] [--sizes 800x1066 800x1333] [--models detr_resnet50 ...]

Rows, on one input per size, same process, same device, same thread count, median of --runs after a
warm-up (the runs of the rows are interleaved, so a slower spell of the machine hits every row):
- official architecture: the plain forward of our detr_resnet50 (fp32, eval, no capture), which
  the tests prove equal to the official model: the baseline of every ratio;
- official architecture + full capture: the same model with every attention map captured;
- ours, default (exact): batch norm folded, ReLUs fused, channels-last backbone, full capture;
- ours, fast: the same under the device's reduced precision (float16 on a GPU, bfloat16 on a CPU
  with native bfloat16); not run where detr_core.models.fast.fast_dtype offers none (--force-bf16 runs it);
- peer: Hugging Face transformers' DetrForObjectDetection (R50 built offline from its config with
  random weights, eager attention, output_attentions=True), if `transformers` is installed
  (pip install -r benchmarks/requirements.txt).
Then, from one cached analysis: a click -> a new encoder map (p50/p95 over 200 random pixels), a
decoder map for a random query (p50/p95), relevance for one query (its time, and in a fresh process
how far it raises the peak resident memory above that of a captured pass), and the memory the
analysis holds. Cold start = in a fresh process, after importing torch and detr_core (timed separately):
load an R50 checkpoint from a local file (random weights saved in the official format) + fold +
first analysis.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import cpu_description  # benchmarks/machine.py (this script's folder)

from detr_core import build_model
from detr_core.analysis.attention import decoder_map, encoder_map
from detr_core.analysis.capture import capture
from detr_core.analysis.relevance import relevance
from detr_core.io.image import Geometry, PreparedImage
from detr_core.models.fast import fast_dtype, optimize_for_inference

OFFICIAL = ("detr_resnet50", "detr_resnet50_dc5", "detr_resnet101", "detr_resnet101_dc5", "detr_demo")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, runs: int, device: torch.device) -> dict:
    """Median wall time in ms of each fn over `runs` rounds (one call of each per round, in turn),
    after one warm-up call of each."""
    for fn in fns.values():
        fn()
        sync(device)
    times: dict = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append((time.perf_counter() - t0) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def timed(fn, runs: int, device: torch.device = torch.device("cpu")) -> float:
    return interleaved({"fn": fn}, runs, device)["fn"]


def percentiles(fn, args: list) -> tuple[float, float]:
    times = []
    for a in args:
        t0 = time.perf_counter()
        fn(*a)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


def hf_peer(h: int, w: int, device: torch.device):
    """A call running the Hugging Face peer on one [1, 3, h, w] input, or None without transformers."""
    try:
        from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
    except ImportError:
        return None
    cfg = DetrConfig(
        use_timm_backbone=False,
        backbone=None,  # transformers >= 4.45 refuses a backbone_config beside its default backbone name
        use_pretrained_backbone=False,
        backbone_config=ResNetConfig(out_features=["stage4"]),
        num_labels=91,
        attn_implementation="eager",
    )
    model = DetrForObjectDetection(cfg).eval().to(device)
    x = torch.randn(1, 3, h, w, device=device)

    def run():
        with torch.inference_mode():
            model(pixel_values=x, output_attentions=True)

    return run


def cold_start(name: str, h: int, w: int) -> tuple[float, float]:
    """(import s, load s) in a fresh process: importing torch and detr_core, then loading a checkpoint
    file, folding it and running the first analysis (the cold start the dashboard's user waits for)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.pth"
        torch.save({"model": build_model(name).state_dict()}, path)
        code = (
            "import time; t0=time.perf_counter(); import torch; from detr_core import load_model; "
            "from detr_core.models.fast import optimize_for_inference; from detr_core.analysis.capture import capture; "
            "from detr_core.io.image import Geometry, PreparedImage; t1=time.perf_counter(); "
            f"m=optimize_for_inference(load_model({name!r}, checkpoint={str(path)!r}, device='cpu')); "
            f"g=Geometry({h},{w},{h},{w},{-(-h // 32)},{-(-w // 32)},32); "
            f"capture(m, PreparedImage(torch.randn(1,3,{h},{w}), g)); print(t1-t0, time.perf_counter()-t1)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        imports, load = (float(v) for v in out.stdout.strip().splitlines()[-1].split())
        return imports, load


def relevance_memory(name: str, h: int, w: int) -> float:
    """MB by which one relevance pass raises a fresh process's peak resident memory (random weights),
    from Linux's VmHWM (ru_maxrss would carry over the benchmark's own size across fork + exec)."""
    code = (
        "import torch; from detr_core import build_model; from detr_core.models.fast import optimize_for_inference; "
        "from detr_core.io.image import Geometry, PreparedImage; from detr_core.analysis.relevance import relevance; "
        "from detr_core.analysis.capture import capture; "
        "hwm=lambda: int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]); "
        f"m=optimize_for_inference(build_model({name!r})); s=m.stride; "
        f"p=PreparedImage(torch.randn(1,3,{h},{w}), Geometry({h},{w},{h},{w},-(-{h}//s),-(-{w}//s),s)); "
        "capture(m, p); r0=hwm(); relevance(m, p, 0); print((hwm()-r0)/1024)"  # above a captured pass's peak
    )
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    return float(out.stdout.strip().splitlines()[-1])


def bench_model(name: str, h: int, w: int, runs: int, rows: list, extras: dict, args) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = build_model(name).eval().requires_grad_(False).to(device)
    fast = optimize_for_inference(base)
    stride = base.stride
    g = Geometry(h, w, h, w, -(-h // stride), -(-w // stride), stride)
    prepared = PreparedImage(torch.randn(1, 3, h, w), g)
    x = prepared.tensor.to(device)
    label = f"{name} {h}x{w}"
    arch = "official architecture" if name in OFFICIAL else "the model as loaded"

    def plain():
        with torch.inference_mode():
            base(x)

    fns = {
        f"{arch}, plain forward (baseline)": plain,
        f"{arch} + full capture": lambda: capture(base, prepared),
        "ours, default (exact): folded BN + fused ReLU + channels-last + full capture": lambda: capture(fast, prepared),
    }
    dtype = torch.bfloat16 if args.force_bf16 else fast_dtype(device)
    if dtype is not None:
        fns[f"ours, fast: + {str(dtype).removeprefix('torch.')} autocast + full capture"] = lambda: capture(
            fast, prepared, autocast_dtype=dtype
        )
    peer = hf_peer(h, w, device) if name == "detr_resnet50" else None
    if peer is not None:
        fns["peer: HF DetrForObjectDetection, output_attentions=True"] = peer
    times = interleaved(fns, runs, device)
    t_base = times[f"{arch}, plain forward (baseline)"]
    rows.extend((label, what, ms) for what, ms in times.items())
    if dtype is None:
        rows.append((label, "ours, fast: not offered here (no native bfloat16 on this CPU; see fast_dtype)", None))
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
        "relevance, one query (ms)": timed(lambda: relevance(fast, prepared, 0), 1, device),
        "relevance: peak memory over a captured pass, fresh process (MB)": relevance_memory(name, h, w),
        "analysis memory held (MB)": analysis.nbytes() / 1e6,
        "base": t_base,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=["800x1066", "800x1333"])
    parser.add_argument("--models", nargs="+", default=["detr_resnet50", "detr_resnet50_dc5"])
    parser.add_argument("--no-shapes", action="store_true", help="skip the project's small model")
    parser.add_argument("--no-cold-start", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--force-bf16", action="store_true", help="run the bfloat16 row even where it is emulated")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()

    rows: list = []
    extras: dict = {}
    for name in args.models:
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            print(f"... {name} {h}x{w}", file=sys.stderr, flush=True)
            bench_model(name, h, w, args.runs, rows, extras, args)
    if not args.no_shapes:
        print("... detr_shapes 128x128", file=sys.stderr, flush=True)
        bench_model("detr_shapes", 128, 128, max(args.runs, 20), rows, extras, args)

    on_gpu = args.device.startswith("cuda")
    device = torch.cuda.get_device_name(0) if on_gpu else f"CPU ({cpu_description()})"
    lines = [
        f"Machine: {device}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"median of {args.runs} interleaved runs (at least 20 for detr_shapes) after a warm-up.",
        "",
        "| model, input | what | time (ms) | x baseline |",
        "|---|---|---:|---:|",
    ]
    for label, what, ms in rows:
        if ms is None:
            lines.append(f"| {label} | {what} | – | – |")
        else:
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
        imports, load = cold_start("detr_resnet50", 800, 1066)
        lines.append(
            f"| detr_resnet50 800x1066 | cold start: load checkpoint file + fold + first analysis (s) | {load:.2f} |"
        )
        lines.append(f"| (fresh process) | before it: import torch + detr_core (s) | {imports:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
