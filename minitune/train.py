"""The training loop, by hand: one function for pretraining and for every fine-tuning strategy.

It trains whatever parameters have `requires_grad` (a strategy decides which, before the loop starts):

    for each step:
        lr = warm-up, then cosine decay
        N = target tokens (not -100) in all of the step's micro-batches, on every process
        for each micro-batch:  loss = (sum of its tokens' cross-entropy) / N;  loss.backward()
        clip the gradient norm;  AdamW step;  zero the gradients
        every eval_every steps:        validation loss -> log, best checkpoint
        every checkpoint_every steps:  resume state (weights, optimizer, step, random generators)

A run is a pure function of its settings: batch i is the same whenever it is asked for, the learning
rate is a function of the step, and the random generators are saved with the weights. So a run that
is killed and resumed from its last resume state ends with exactly the weights of one that never
stopped. Under torchrun the same loop runs in every process (see minitune/distributed.py). The
bookkeeping it calls (resume state, stopping on SIGINT/SIGTERM, skipping non-finite steps) is in
minitune/train_state.py.

Why divide by N and not average each micro-batch's mean: fine-tuning batches mask their prompt tokens,
so micro-batches hold different numbers of targets. Averaging means would weigh a token of a sparse
micro-batch more than one of a full one; dividing every summed loss by the step's N makes the step
exactly the one a single big batch would take, however it is split across micro-batches or processes.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from minitune import distributed
from minitune.errors import ConfigError
from minitune.model import IGNORE_INDEX
from minitune.train_state import (Progress, StopOnSignal, open_out_dir, out_of_memory, record_eval, restore,
                                  save_or_stop, skip_non_finite)


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
    checkpoint_every: int = 0  # write resume state every N steps (0: only when stopped by a signal)
    max_bad_steps: int = 0  # steps with a non-finite loss or gradient to skip before stopping

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"TrainConfig.{name} must be {allowed}, got {getattr(self, name)!r}")

        need(isinstance(self.max_steps, int) and self.max_steps >= 1, "max_steps", "an integer >= 1")
        need(0 < self.lr <= 1, "lr", "in (0, 1]")
        need(0 <= self.min_lr <= self.lr, "min_lr", "in [0, lr]")
        need(self.warmup_steps >= 0, "warmup_steps", ">= 0")
        need(self.weight_decay >= 0, "weight_decay", ">= 0")
        need(all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)")
        need(self.grad_accum >= 1, "grad_accum", ">= 1")
        need(self.grad_clip >= 0, "grad_clip", ">= 0")
        need(self.eval_every >= 1, "eval_every", ">= 1")
        need(self.log_every >= 1, "log_every", ">= 1")
        need(self.checkpoint_every >= 0, "checkpoint_every", ">= 0")
        need(self.max_bad_steps >= 0, "max_bad_steps", ">= 0")
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


def device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are: the device its inputs must be built on."""
    return next(model.parameters()).device


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
    decay, rest = [], []
    for p in model.parameters():  # parameters() yields a tied tensor once
        if p.requires_grad:
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


def summed_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Cross-entropy summed over the target tokens of one batch (0 when every target is -100)."""
    with autocast_for(device):
        logits, _ = model(x)  # (B, T, V): the logits of the input positions
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def accumulate_gradients(net: nn.Module, micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
                         device: torch.device) -> float:
    """Forward and backward over one optimizer step's micro-batches; returns this process's mean loss per target.

    Each summed loss is divided by N, the step's target count over all micro-batches and processes, so the
    gradients add up to exactly those of one big batch. Under DDP (`net` wrapped) gradients are averaged
    across the W processes once, after the last micro-batch; that average divides by W, so each process
    multiplies its loss by W first.
    """
    W = distributed.world_size()
    n_local = sum(int((y != IGNORE_INDEX).sum()) for _, y in micro_batches)  # counted on the host: no sync
    n_step = distributed.sum_across_ranks(n_local)[0] if W > 1 else n_local
    step_sum = 0.0
    for micro, (x, y) in enumerate(micro_batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        sync = micro == len(micro_batches) - 1
        with nullcontext() if sync or W == 1 else net.no_sync():
            loss_sum = summed_loss(net, x, y, device)
            (loss_sum * (W / max(n_step, 1))).backward()
        step_sum += loss_sum.detach()
    return float(step_sum) / max(n_local, 1)


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  device: torch.device | str | None = None) -> float:
    """Mean cross-entropy per target token (targets of -100 excluded) over the given batches.

    Batches go to `device` (default: where the model is). Under torchrun each process scores every W-th
    batch and the sums are added across processes.
    """
    device = torch.device(device) if device is not None else device_of(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for b, (x, y) in enumerate(batches):
        if b % distributed.world_size() != distributed.rank():
            continue
        total += float(summed_loss(model, x.to(device), y.to(device), device))
        count += int((y != IGNORE_INDEX).sum())
    model.train(was_training)
    total, count = distributed.sum_across_ranks(total, count)
    return total / max(count, 1)


def train(model: nn.Module, train_data, val_data=None, cfg: TrainConfig | None = None,
          out_dir: str | Path | None = None, save: Callable[[nn.Module, Path], None] | None = None,
          resume: bool = False, on_eval: Callable[[nn.Module], dict] | None = None) -> TrainResult:
    """Train model on train_data.batch(i) for cfg.max_steps steps; evaluate on val_data.eval_batches().

    With out_dir: every evaluation is appended to out_dir/log.jsonl; `save(model, dir)` writes
    out_dir/best (lowest validation loss so far) and out_dir/last (end of the run); resume state goes to
    out_dir/resume.pt every cfg.checkpoint_every steps and when SIGINT/SIGTERM stops the run; and
    `resume=True` continues from it. `on_eval(model)` may add numbers to each evaluation's record (e.g. a
    second measure to watch along the run); its time, like the evaluation's, is kept out of
    `train_seconds`, the seconds spent training so far.
    """
    cfg = cfg or TrainConfig()
    device = distributed.local_device(resolve_device(cfg.device))
    distributed.setup(device)
    W, rank, main = distributed.world_size(), distributed.rank(), distributed.is_main()
    out = Path(out_dir) if out_dir is not None else None
    if out is None and (resume or cfg.checkpoint_every):
        raise ConfigError("resume state needs an output folder: pass out_dir")
    seed_everything(cfg.seed)
    model.to(device).train()
    optimizer = make_optimizer(model, cfg, device)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    net = DistributedDataParallel(model) if W > 1 else model  # averages gradients across processes
    progress = restore(out, model, optimizer, cfg) if resume else Progress()
    open_out_dir(out, progress)
    say = print if main and not cfg.quiet else (lambda *a, **k: None)
    if progress.step:
        say(f"resuming at step {progress.step}/{cfg.max_steps}", flush=True)

    val_loss = train_loss = None
    window_loss, window_n = 0.0, 0
    t0, tokens0, start_step, eval_seconds = time.perf_counter(), progress.tokens, progress.step, 0.0
    with StopOnSignal() as stop:
        for step in range(progress.step, cfg.max_steps):
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # this process's share of the step: micro-batch m is batch (step * accum + m) * W + rank
            micro_batches = [train_data.batch((step * cfg.grad_accum + m) * W + rank) for m in range(cfg.grad_accum)]
            try:
                step_loss = accumulate_gradients(net, micro_batches, device)
                progress.tokens += sum(x.numel() for x, _ in micro_batches) * W
                norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip or float("inf"))
            except torch.OutOfMemoryError as e:
                raise out_of_memory(device, step) from e
            if not skip_non_finite(step_loss, norm, step, optimizer, progress, cfg, out, say):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                window_loss += step_loss
                window_n += 1
            progress.step = step + 1

            last = progress.step == cfg.max_steps
            if (progress.step % cfg.log_every == 0 or last) and window_n:
                train_loss, window_loss, window_n = window_loss / window_n, 0.0, 0
                say(_progress_line(progress, cfg, train_loss, lr, t0, tokens0, start_step), flush=True)
            if val_data is not None and (progress.step % cfg.eval_every == 0 or last):
                e0 = time.perf_counter()
                val_loss = evaluate_loss(model, val_data.eval_batches(), device)
                record = {"step": progress.step, "train_loss": train_loss, "val_loss": val_loss, "lr": lr,
                          "tokens": progress.tokens, "seconds": round(time.perf_counter() - t0, 3),
                          "train_seconds": round(e0 - t0 - eval_seconds, 3)}
                if on_eval is not None:
                    record.update(on_eval(model))
                    model.train()
                say(f"step {progress.step:>5}/{cfg.max_steps} | val loss {val_loss:.4f}", flush=True)
                if record_eval(out, progress, record, val_loss) and main and out is not None and save is not None:
                    save(model, out / "best")
                eval_seconds += time.perf_counter() - e0  # evaluating and saving are not training
            save_or_stop(stop, out, model, optimizer, progress, cfg)
    seconds = time.perf_counter() - t0
    if val_data is not None and val_loss is None:  # resumed a finished run: nothing trained, still report
        val_loss = evaluate_loss(model, val_data.eval_batches(), device)
    if main and out is not None and save is not None:
        save(model, out / "last")
    distributed.barrier()
    model.eval()
    return TrainResult(progress.step, train_loss, val_loss, progress.best, progress.tokens - tokens0, seconds,
                       progress.history)


def _progress_line(progress: Progress, cfg: TrainConfig, train_loss: float, lr: float, t0: float, tokens0: int,
                   start_step: int) -> str:
    """The log line of a step: loss, learning rate, tokens per second since t0 and the time left."""
    elapsed = time.perf_counter() - t0
    rate = (progress.tokens - tokens0) / elapsed
    eta = elapsed / (progress.step - start_step) * (cfg.max_steps - progress.step)
    return (f"step {progress.step:>5}/{cfg.max_steps} | loss {train_loss:.4f} | lr {lr:.2e} | "
            f"{rate:,.0f} tok/s | ETA {_fmt_time(eta)}")


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"

