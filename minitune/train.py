"""The training loop, by hand: one function for pretraining and for every fine-tuning strategy.

It trains whatever parameters have `requires_grad` (a strategy decides which, before the loop starts):

    for each step:
        lr = warm-up, then cosine decay
        for each micro-batch:  loss = model(x, y) / accum;  loss.backward()
        clip the gradient norm;  AdamW step;  zero the gradients
        every eval_every steps:  validation loss -> log, best checkpoint
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from minitune.errors import ConfigError


@dataclass
class TrainConfig:
    """Settings of one training run (validated on creation)."""

    max_steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-4  # the cosine decays to this
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    eval_every: int = 100
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    quiet: bool = False

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"TrainConfig.{name} must be {allowed}, got {getattr(self, name)!r}")

        need(self.max_steps >= 1, "max_steps", ">= 1")
        need(0 < self.lr <= 1, "lr", "in (0, 1]")
        need(0 <= self.min_lr <= self.lr, "min_lr", "in [0, lr]")
        need(self.warmup_steps >= 0, "warmup_steps", ">= 0")
        need(self.weight_decay >= 0, "weight_decay", ">= 0")
        need(all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)")
        need(self.grad_accum >= 1, "grad_accum", ">= 1")
        need(self.grad_clip >= 0, "grad_clip", ">= 0")
        need(self.eval_every >= 1, "eval_every", ">= 1")
        need(self.log_every >= 1, "log_every", ">= 1")
        resolve_device(self.device)  # an unknown device name fails here, before any work


@dataclass
class TrainResult:
    """What a run measured."""

    steps: int
    train_loss: float  # mean over the last logging window
    val_loss: float | None  # last evaluation
    best_val_loss: float | None
    tokens: int  # tokens processed (all positions, masked or not)
    seconds: float
    history: list[dict] = field(default_factory=list)  # one record per evaluation

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA, else Apple's MPS, else the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from e


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (dropout and initialisation draw from torch's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr over warmup_steps, then cosine decay to cfg.min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over trainable parameters only: decay on weight matrices; none on biases, norms, embeddings."""
    no_decay = {id(p) for m in model.modules() if isinstance(m, (nn.Embedding, nn.LayerNorm)) for p in m.parameters()}
    decay, rest, seen = [], [], set()
    for p in model.parameters():  # parameters() yields a tied tensor once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in no_decay else rest).append(p)
    if not decay and not rest:
        raise ConfigError("the model has no trainable parameters (every requires_grad is False)")
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    fused = device.type == "cuda"  # one kernel for the whole update on a GPU
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (matmuls in bf16, master weights in fp32); plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  device: torch.device | str = "cpu") -> float:
    """Mean cross-entropy per target token (targets of -100 excluded) over the given batches."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast_for(device):
            _, loss = model(x, y)
        n = int((y != -100).sum())
        total += float(loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


def train(
    model: nn.Module,
    train_data,
    val_data=None,
    cfg: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    save: Callable[[nn.Module, Path], None] | None = None,
) -> TrainResult:
    """Train model on train_data.batch(i) for cfg.max_steps steps; evaluate on val_data.eval_batches().

    With out_dir, every evaluation is appended to out_dir/log.jsonl, and `save(model, dir)` writes
    out_dir/best (lowest validation loss so far) and out_dir/last (end of the run).
    """
    cfg = cfg or TrainConfig()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model.to(device).train()
    optimizer = make_optimizer(model, cfg, device)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "log.jsonl").unlink(missing_ok=True)

    history: list[dict] = []
    best = val_loss = train_loss = None
    tokens = 0
    window_loss, window_n = 0.0, 0
    t0 = time.perf_counter()
    for step in range(cfg.max_steps):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(cfg.grad_accum):
            x, y = train_data.batch(step * cfg.grad_accum + micro)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast_for(device):
                _, loss = model(x, y)
            (loss / cfg.grad_accum).backward()
            window_loss += loss.item() / cfg.grad_accum
            tokens += x.numel()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window_n += 1

        last = step + 1 == cfg.max_steps
        if (step + 1) % cfg.log_every == 0 or last:
            train_loss = window_loss / window_n
            window_loss, window_n = 0.0, 0
            if not cfg.quiet:
                elapsed = time.perf_counter() - t0
                eta = elapsed / (step + 1) * (cfg.max_steps - step - 1)
                print(f"step {step + 1:>5}/{cfg.max_steps} | loss {train_loss:.4f} | lr {lr:.2e} | "
                      f"{tokens / elapsed:,.0f} tok/s | ETA {_fmt_time(eta)}", flush=True)
        if val_data is not None and ((step + 1) % cfg.eval_every == 0 or last):
            val_loss = evaluate_loss(model, val_data.eval_batches(), device)
            record = {"step": step + 1, "train_loss": train_loss,
                      "val_loss": val_loss, "lr": lr, "tokens": tokens,
                      "seconds": round(time.perf_counter() - t0, 3)}
            history.append(record)
            if not cfg.quiet:
                print(f"step {step + 1:>5}/{cfg.max_steps} | val loss {val_loss:.4f}", flush=True)
            if out is not None:
                with open(out / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            if best is None or val_loss < best:
                best = val_loss
                if out is not None and save is not None:
                    save(model, out / "best")
    seconds = time.perf_counter() - t0
    if out is not None and save is not None:
        save(model, out / "last")
    model.eval()
    return TrainResult(cfg.max_steps, train_loss, val_loss, best, tokens, seconds, history)


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def config_dict(cfg: TrainConfig) -> dict:
    """The run's settings as a JSON-ready dict."""
    return asdict(cfg)
