"""Training CLI for the project's own small DETR (`detr_shapes`) on procedurally generated scenes.

    python -m detr_core.training.train --seed 0 --steps 4500 --out runs/shapes

Every step draws a fresh batch of scenes (scene seeds 0, 1, 2, ... in order, never the held-out
range), runs DETR's set loss with auxiliary decoding losses, and takes an AdamW step with gradient
clipping, a linear warm-up and a tenfold learning-rate drop at 80% of the steps. A progress bar goes
to stderr; the loss and periodic held-out metrics go to DIR/train.log. The state dict is written to
DIR/checkpoint.pth, with the step and the AdamW state in DIR/optimizer.pth (refreshed every --save-every
steps); `--resume DIR/checkpoint.pth` continues from there on the same data stream. `--max-minutes`
bounds the wall time (the lr drop moves to 80% of it if that comes first), and the log's last line says
which --steps / --drop-step reproduce the run. `--export FILE` instead writes FILE as the bundled
checkpoint `detr_core/weights/detr_shapes-<sha256[:8]>.pth` and prints its name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import queue
import random
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..models.weights import BUNDLED_DIR
from ..models.zoo import MODELS, SHAPES_MODEL, build_model
from .criterion import SetCriterion
from .synthetic import BASE_SIZE, HELDOUT_FIRST_SEED, TRAIN_FIRST_SEED, make_batch

__all__ = ["TrainConfig", "export_checkpoint", "learning_rate", "main", "train"]

MODEL_NAME = SHAPES_MODEL


class TrainConfig(argparse.Namespace):
    seed: int = 0
    steps: int = 4500
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 1e-4
    clip: float = 0.1
    warmup: int = 200
    drop_at: float = 0.8
    drop_step: int | None = None  # explicit step of the lr drop (overrides drop_at)
    max_minutes: float | None = None  # wall-time budget: drop at 80% of it, stop at it (whichever comes first)
    size: int = BASE_SIZE
    threads: int = 2
    eval_every: int = 500
    eval_scenes: int = 200
    save_every: int = 500
    out: Path = Path("runs/shapes")
    resume: Path | None = None  # a checkpoint.pth to continue from (its optimizer.pth beside it, if any)
    start_step: int | None = None  # with resume and no optimizer.pth: the step the checkpoint was saved at
    warmup_from: int = 0  # the step the warm-up starts at (a resume without optimizer state warms up again)


def drop_step(cfg: TrainConfig) -> int:
    """The first step trained at lr / 10."""
    return cfg.drop_step if cfg.drop_step is not None else int(cfg.drop_at * cfg.steps)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup` steps, then constant, then /10 from `drop_step(cfg)`."""
    if step - cfg.warmup_from < cfg.warmup:
        return cfg.lr * (step - cfg.warmup_from + 1) / cfg.warmup
    return cfg.lr * (0.1 if step >= drop_step(cfg) else 1.0)


class ProgressBar:
    """A one-line progress bar on stderr: steps, rate, time left and the latest loss."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.stream, self.start = total, stream, time.monotonic()

    def update(self, done: int, note: str = "") -> None:
        elapsed = time.monotonic() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else 0.0
        filled = int(30 * done / max(self.total, 1))
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} {rate:.2f} it/s "
            f"{elapsed / 60:.1f} min, {left / 60:.1f} min left {note}   "
        )
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _batches(cfg: TrainConfig, first_step: int) -> Iterator[tuple[Tensor, list[dict[str, Tensor]]]]:
    """Training batches in step order, generated one ahead in a thread (numpy and PIL release the GIL)."""
    ready: queue.Queue = queue.Queue(maxsize=2)

    def produce() -> None:
        for step in range(first_step, cfg.steps):
            first = TRAIN_FIRST_SEED + step * cfg.batch_size
            ready.put(make_batch(range(first, first + cfg.batch_size), cfg.size))

    threading.Thread(target=produce, daemon=True).start()
    for _ in range(first_step, cfg.steps):
        yield ready.get()


def _log(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, checkpoint: Path) -> None:
    """The plain state dict to `checkpoint`, and what resuming needs to optimizer.pth beside it."""
    torch.save(model.state_dict(), checkpoint)
    torch.save({"step": step, "optimizer": optimizer.state_dict()}, checkpoint.parent / "optimizer.pth")


def train(cfg: TrainConfig) -> Path:
    """Trains `detr_shapes` from scratch; returns the path of the final state dict."""
    if TRAIN_FIRST_SEED + cfg.steps * cfg.batch_size > HELDOUT_FIRST_SEED:
        raise ValueError("training would reach the held-out scene seeds; use fewer steps or a smaller batch")
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    log_path = cfg.out / "train.log"
    log_path.write_text("")
    _log(log_path, {"config": {k: str(getattr(cfg, k)) for k in TrainConfig.__annotations__}, "argv": sys.argv})

    from .evaluate import evaluate  # evaluation imports the model zoo too; keep the import local

    model = build_model(MODEL_NAME)
    model.train()
    criterion = SetCriterion(num_classes=len(MODELS[MODEL_NAME].class_names))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    first_step = 0
    if cfg.resume is not None:
        model.load_state_dict(torch.load(cfg.resume, map_location="cpu", weights_only=True))
        state_path = cfg.resume.parent / "optimizer.pth"
        if state_path.is_file():
            state = torch.load(state_path, map_location="cpu", weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            first_step = int(state["step"])
        elif cfg.start_step is None:
            raise ValueError(f"{state_path} is missing: say which step {cfg.resume} was saved at (--start-step)")
        else:
            first_step = cfg.warmup_from = cfg.start_step
        _log(log_path, {"resumed_from": str(cfg.resume), "step": first_step, "optimizer_state": state_path.is_file()})
    bar = ProgressBar(cfg.steps - first_step)
    checkpoint = cfg.out / "checkpoint.pth"
    start = time.monotonic()
    running = None
    stopped_early = False
    for step, (images, targets) in zip(range(first_step, cfg.steps), _batches(cfg, first_step), strict=False):
        if cfg.max_minutes is not None:  # a wall-time budget moves the drop and the end earlier, never later
            elapsed = (time.monotonic() - start) / 60
            if elapsed >= cfg.drop_at * cfg.max_minutes and step < drop_step(cfg):
                cfg.drop_step = step
                _log(log_path, {"step": step, "lr_drop_at_step": step, "reason": "time budget"})
            if elapsed >= cfg.max_minutes:
                cfg.steps, stopped_early = step, True
                _log(log_path, {"step": step, "stopped_at_step": step, "reason": "time budget"})
                break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        outputs = model(images)  # images [B, 3, H, W] -> pred_logits [B, Q, K+1], pred_boxes [B, Q, 4], aux
        loss, parts = criterion(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip))
        optimizer.step()
        value = float(loss)
        running = value if running is None else 0.98 * running + 0.02 * value
        done = step + 1
        bar.update(done - first_step, f"loss {running:.3f}")
        if done % 50 == 0 or done == cfg.steps or done == drop_step(cfg):
            _log(log_path, {
                "step": done, "loss": round(value, 4), "loss_avg": round(running, 4), "grad_norm": round(grad_norm, 3),
                "lr": optimizer.param_groups[0]["lr"], "minutes": round((time.monotonic() - start) / 60, 2),
                **{k: round(v, 4) for k, v in parts.items()},
            })  # fmt: skip
        if done % cfg.save_every == 0 or done == cfg.steps:
            _save(model, optimizer, done, checkpoint)
        if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
            model.eval()
            metrics = evaluate(model, count=cfg.eval_scenes, size=cfg.size)
            model.train()
            _log(log_path, {"step": done, "heldout": metrics})
            bar.stream.write(f"\nstep {done}: {json.dumps(metrics)}\n")
    bar.close()
    _save(model, optimizer, cfg.steps, checkpoint)
    if cfg.eval_every and stopped_early:
        model.eval()
        _log(log_path, {"step": cfg.steps, "heldout": evaluate(model, count=cfg.eval_scenes, size=cfg.size)})
    reproduce = f"--seed {cfg.seed} --steps {cfg.steps} --drop-step {drop_step(cfg)} --batch-size {cfg.batch_size}"
    if cfg.resume is not None:
        reproduce += f" --resume {cfg.resume} (from step {first_step}, warm-up from step {cfg.warmup_from})"
    _log(log_path, {"done": cfg.steps, "minutes": round((time.monotonic() - start) / 60, 2), "reproduce": reproduce})
    return checkpoint


def export_checkpoint(state_dict_path: Path, half: bool = False, dest_dir: Path = BUNDLED_DIR) -> Path:
    """Writes a plain state dict as `detr_shapes-<first 8 hex of its SHA-256>.pth` (torch.hub's check_hash)."""
    state_dict = torch.load(state_dict_path, map_location="cpu", weights_only=True)
    if half:
        state_dict = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / f"{MODEL_NAME}.tmp"
    torch.save(state_dict, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    dest = dest_dir / f"{MODEL_NAME}-{digest[:8]}.pth"
    tmp.replace(dest)
    return dest


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig
    p = argparse.ArgumentParser(prog="python -m detr_core.training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the weights' initialization")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--clip", type=float, default=d.clip, help="gradient-norm clipping")
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--drop-at", type=float, default=d.drop_at, help="fraction of the steps where lr drops tenfold")
    p.add_argument("--drop-step", type=int, default=None, help="explicit step of the lr drop (overrides --drop-at)")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-time budget: the lr drops at --drop-at of it and training stops at it, if earlier",
    )
    p.add_argument("--size", type=int, default=d.size, help="scene size in pixels")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="held-out evaluation period (0: never)")
    p.add_argument("--eval-scenes", type=int, default=d.eval_scenes)
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--out", type=Path, default=d.out)
    p.add_argument("--resume", type=Path, default=None, help="continue from a checkpoint.pth (same data stream)")
    p.add_argument(
        "--start-step",
        type=int,
        default=None,
        help="with --resume and no optimizer.pth: the checkpoint's step (the lr warms up again)",
    )
    p.add_argument("--export", type=Path, metavar="FILE", help="bundle a trained state dict instead of training")
    p.add_argument("--half", action="store_true", help="with --export: store float16")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv, namespace=TrainConfig())
    if args.export:
        dest = export_checkpoint(args.export, half=args.half)
        print(f"{dest.name} ({dest.stat().st_size / 1e6:.2f} MB)")
        return 0
    path = train(args)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
