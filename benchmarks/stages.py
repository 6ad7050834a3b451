"""Where the time of one forward pass goes: each backbone stage and the transformer, for the model as
loaded (official architecture) and for the served copy (detr_core.models.fast.optimize_for_inference), with
the work each part does. Prints one Markdown table.

    python benchmarks/stages.py [--model detr_resnet50] [--size 800x1066] [--runs 3]

Times are the minimum over --runs after a warm-up (a part's own cost, not its noise). GFLOP counts
multiply-adds as 2: convolutions from their output sizes, attention as QK^T plus AV per head.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detr_core import build_model
from detr_core.models.fast import optimize_for_inference

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def best_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return min(times)


def conv_gflop(module: nn.Module, x: torch.Tensor) -> float:
    """GFLOP of every nn.Conv2d that runs in module(x)."""
    total = 0.0

    def hook(conv: nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += 2 * out.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1] / 1e9

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        module(x)
    finally:
        for h in handles:
            h.remove()
    return total


def stage_inputs(body: nn.Module, x: torch.Tensor) -> dict:
    """The input of each stage, and a call running it."""
    stem = lambda t: body.maxpool(body.relu(body.bn1(body.conv1(t))))  # noqa: E731
    parts, inputs = {"stem": stem}, {}
    parts.update({n: getattr(body, n) for n in STAGES[1:]})
    for name in STAGES:
        inputs[name] = x
        x = parts[name](x)
    return {n: (parts[n], inputs[n]) for n in STAGES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="detr_resnet50")
    parser.add_argument("--size", default="800x1066")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    base = build_model(args.model).eval().requires_grad_(False)
    fast = optimize_for_inference(base)
    x = torch.randn(1, 3, h, w)
    rows = []
    with torch.inference_mode():
        base_parts = stage_inputs(base.backbone[0].body, x)
        fast_parts = stage_inputs(fast.backbone[0].body, x)
        for name in STAGES:
            fn_b, x_b = base_parts[name]
            fn_f, x_f = fast_parts[name]
            gflop = conv_gflop(fn_b if isinstance(fn_b, nn.Module) else base.backbone[0].body.conv1, x_b)
            t_b = best_ms(lambda fn=fn_b, t=x_b: fn(t), args.runs)
            t_f = best_ms(lambda fn=fn_f, t=x_f: fn(t), args.runs)
            rows.append((name, gflop, t_b, t_f))
        features, pos = fast.backbone(x)
        src = fast.input_proj(features)
        attn = fast.transformer.encoder.layers[0].self_attn
        tokens, d = src.shape[-2] * src.shape[-1], attn.embed_dim // attn.num_heads
        enc_attention = 4 * len(fast.transformer.encoder.layers) * attn.num_heads * tokens**2 * d / 1e9
        t_b = best_ms(lambda: base.transformer(src.contiguous(), base.query_embed.weight, pos), args.runs)
        t_f = best_ms(lambda: fast.transformer(src, fast.query_embed.weight, pos), args.runs)
        what = f"transformer ({tokens} tokens; encoder attention alone {enc_attention:.0f} GFLOP)"
        rows.append((what, None, t_b, t_f))

    print(f"{args.model} {h}x{w}, {torch.get_num_threads()} threads, best of {args.runs} runs\n")
    print("| part | conv GFLOP | as loaded (ms) | served (ms) | ratio | served GFLOP/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, gflop, t_b, t_f in rows:
        g = f"{gflop:.1f}" if gflop is not None else ""
        rate = f"{gflop / t_f * 1000:.0f}" if gflop is not None else ""
        print(f"| {name} | {g} | {t_b:.0f} | {t_f:.0f} | {t_f / t_b:.2f} | {rate} |")
    gflop, body_b, body_f = (sum(r[i] for r in rows[:-1]) for i in (1, 2, 3))
    rate = gflop / body_f * 1000
    print(f"| backbone body | {gflop:.1f} | {body_b:.0f} | {body_f:.0f} | {body_f / body_b:.2f} | {rate:.0f} |")


if __name__ == "__main__":
    main()
