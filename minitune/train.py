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
stopped. Under torchrun the same loop runs in every process (see minitune/distributed.py).

Why divide by N and not average each micro-batch's mean: fine-tuning batches mask their prompt tokens,
so micro-batches hold different numbers of targets. Averaging means would weigh a token of a sparse
micro-batch more than one of a full one; dividing every summed loss by the step's N makes the step
exactly the one a single big batch would take, however it is split across micro-batches or processes.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from minitune import distributed
from minitune.checkpoint import load_resume, rng_state, save_resume, set_rng_state
from minitune.errors import CheckpointError, ConfigError, TrainingError, TrainingInterrupted
from minitune.model import IGNORE_INDEX


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


@dataclass
class _Progress:
    """What the loop has done so far; saved with the resume state."""

    step: int = 0
    tokens: int = 0
    best: float | None = None
    skipped: int = 0
    history: list[dict] = field(default_factory=list)


class _StopOnSignal:
    """While active, SIGINT and SIGTERM ask the loop to stop cleanly at the end of the current step."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _save_state(out: Path, model, optimizer, progress: _Progress, cfg: TrainConfig) -> Path:
    state = {"model": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
             "optimizer": optimizer.state_dict(), "rng": rng_state(), "progress": asdict(progress)}
    return save_resume(out, state, {"step": progress.step, "settings": _settings(cfg)})


def _settings(cfg: TrainConfig) -> dict:
    """The settings a resumed run must share with the run it continues."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("device", "quiet", "log_every", "checkpoint_every")}


def _restore(out: Path, model, optimizer, cfg: TrainConfig) -> _Progress:
    loaded = load_resume(out)
    if loaded is None:
        return _Progress()
    state, info = loaded
    saved = json.loads(json.dumps(info.get("settings")))
    now = json.loads(json.dumps(_settings(cfg)))
    if saved != now:
        diff = {k: (saved.get(k), now.get(k)) for k in now if saved.get(k) != now.get(k)}
        raise CheckpointError(f"{out} was started with other settings (saved, now): {diff}; resume with the same ones")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state["model"]) or any(params[n].shape != t.shape for n, t in state["model"].items()):
        raise CheckpointError(f"{out / 'resume.pt'} holds the trainable tensors of another model or strategy")
    with torch.no_grad():
        for n, t in state["model"].items():
            params[n].copy_(t)
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return _Progress(**state["progress"])


def train(
    model: nn.Module,
    train_data,
    val_data=None,
    cfg: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    save: Callable[[nn.Module, Path], None] | None = None,
    resume: bool = False,
    on_eval: Callable[[nn.Module], dict] | None = None,
) -> TrainResult:
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
    progress = _restore(out, model, optimizer, cfg) if resume else _Progress()
    if main and out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if progress.step == 0:
            (out / "log.jsonl").unlink(missing_ok=True)
    say = print if main and not cfg.quiet else (lambda *a, **k: None)
    if progress.step:
        say(f"resuming at step {progress.step}/{cfg.max_steps}", flush=True)

    val_loss = train_loss = None
    window_loss, window_n = 0.0, 0
    t0, tokens0, start_step = time.perf_counter(), progress.tokens, progress.step
    eval_seconds = 0.0
    with _StopOnSignal() as stop:
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
                raise TrainingError(
                    f"out of memory on {device} at step {step + 1}: lower the batch size (gradient "
                    "accumulation keeps the effective batch), the context length or the model size") from e
            bad = not (math.isfinite(step_loss) and math.isfinite(float(norm)))
            if W > 1:
                bad = distributed.sum_across_ranks(float(bad))[0] > 0
            if bad:
                optimizer.zero_grad(set_to_none=True)
                progress.skipped += 1
                if progress.skipped > cfg.max_bad_steps:
                    last_good = out / "resume.pt" if out is not None and (out / "resume.pt").is_file() else None
                    raise TrainingError(
                        f"non-finite loss or gradient at step {step + 1} (batch {step * cfg.grad_accum * W + rank}, "
                        f"loss {step_loss}, gradient norm {float(norm)}); last good checkpoint: "
                        f"{last_good or 'none (set checkpoint_every)'}. Lower the learning rate, or allow "
                        "skipping with max_bad_steps")
                say(f"step {step + 1}: non-finite loss or gradient, step skipped "
                    f"({progress.skipped}/{cfg.max_bad_steps})", flush=True)
            else:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                window_loss += step_loss
                window_n += 1
            progress.step = step + 1

            last = progress.step == cfg.max_steps
            if (progress.step % cfg.log_every == 0 or last) and window_n:
                train_loss = window_loss / window_n
                window_loss, window_n = 0.0, 0
                elapsed = time.perf_counter() - t0
                rate = (progress.tokens - tokens0) / elapsed
                eta = elapsed / (progress.step - start_step) * (cfg.max_steps - progress.step)
                say(f"step {progress.step:>5}/{cfg.max_steps} | loss {train_loss:.4f} | lr {lr:.2e} | "
                    f"{rate:,.0f} tok/s | ETA {_fmt_time(eta)}", flush=True)
            if val_data is not None and (progress.step % cfg.eval_every == 0 or last):
                e0 = time.perf_counter()
                val_loss = evaluate_loss(model, val_data.eval_batches(), device)
                record = {"step": progress.step, "train_loss": train_loss, "val_loss": val_loss, "lr": lr,
                          "tokens": progress.tokens, "seconds": round(time.perf_counter() - t0, 3),
                          "train_seconds": round(e0 - t0 - eval_seconds, 3)}
                if on_eval is not None:
                    record.update(on_eval(model))
                    model.train()
                progress.history.append(record)
                say(f"step {progress.step:>5}/{cfg.max_steps} | val loss {val_loss:.4f}", flush=True)
                if main and out is not None:
                    with open(out / "log.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                if progress.best is None or val_loss < progress.best:
                    progress.best = val_loss
                    if main and out is not None and save is not None:
                        save(model, out / "best")
                eval_seconds += time.perf_counter() - e0  # evaluating and saving are not training
            stopping = stop.signal is not None
            if W > 1:
                stopping = distributed.sum_across_ranks(float(stopping))[0] > 0
            if main and out is not None and (stopping or (cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0)):
                _save_state(out, model, optimizer, progress, cfg)
            if stopping and not last:
                distributed.barrier()
                raise TrainingInterrupted(
                    f"stopped by a signal after step {progress.step}/{cfg.max_steps}; the run is saved in {out}: "
                    "run the same command with --resume to continue" if out is not None else
                    f"stopped by a signal after step {progress.step}/{cfg.max_steps} (no output folder, nothing saved)")
    seconds = time.perf_counter() - t0
    if val_data is not None and val_loss is None:  # resumed a finished run: nothing trained, still report
        val_loss = evaluate_loss(model, val_data.eval_batches(), device)
    if main and out is not None and save is not None:
        save(model, out / "last")
    distributed.barrier()
    model.eval()
    return TrainResult(progress.step, train_loss, val_loss, progress.best, progress.tokens - tokens0, seconds,
                       progress.history)


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"

