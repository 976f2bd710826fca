"""The training loop's bookkeeping, kept beside it (minitune/train.py): what the run has done so far, its
resume state, stopping cleanly on SIGINT/SIGTERM, and the policy for steps with a non-finite loss.

Resume state is out_dir/resume.pt: the trainable tensors, the optimizer's state, every random generator
and the loop's progress, with the settings it was started with; a run resumes only under the same ones.
"""

from __future__ import annotations

import json
import math
import signal
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn

from minitune import distributed
from minitune.checkpoint import load_resume, rng_state, save_resume, set_rng_state
from minitune.errors import CheckpointError, TrainingError, TrainingInterrupted

if TYPE_CHECKING:
    from minitune.train import TrainConfig


@dataclass
class Progress:
    """What the loop has done so far; saved with the resume state."""

    step: int = 0
    tokens: int = 0
    best: float | None = None
    skipped: int = 0
    history: list[dict] = field(default_factory=list)


class StopOnSignal:
    """While active, SIGINT and SIGTERM ask the loop to stop cleanly at the end of the current step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        """Whether a signal asked any process to stop (every process gets the same answer)."""
        stopping = self.signal is not None
        if distributed.world_size() > 1:
            stopping = distributed.sum_across_ranks(float(stopping))[0] > 0
        return stopping


def settings(cfg: TrainConfig) -> dict:
    """The settings a resumed run must share with the run it continues."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("device", "quiet", "log_every", "checkpoint_every")}


def save_state(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, progress: Progress,
               cfg: TrainConfig) -> Path:
    """Write out/resume.pt: trainable tensors, optimizer state, random generators and progress."""
    state = {"model": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
             "optimizer": optimizer.state_dict(), "rng": rng_state(), "progress": asdict(progress)}
    return save_resume(out, state, {"step": progress.step, "settings": settings(cfg)})


def restore(out: Path, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> Progress:
    """Load out/resume.pt into the model, optimizer and generators; a fresh Progress when there is none."""
    loaded = load_resume(out)
    if loaded is None:
        return Progress()
    state, info = loaded
    saved = json.loads(json.dumps(info.get("settings")))
    now = json.loads(json.dumps(settings(cfg)))
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
    return Progress(**state["progress"])


def open_out_dir(out: Path | None, progress: Progress) -> None:
    """Create the output folder (main process); a run that starts from step 0 starts a fresh log.jsonl."""
    if distributed.is_main() and out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if progress.step == 0:
            (out / "log.jsonl").unlink(missing_ok=True)


def record_eval(out: Path | None, progress: Progress, record: dict, val_loss: float) -> bool:
    """Keep one evaluation in the history and out/log.jsonl; True when its validation loss is the best so far."""
    progress.history.append(record)
    if distributed.is_main() and out is not None:
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    if progress.best is None or val_loss < progress.best:
        progress.best = val_loss
        return True
    return False


def out_of_memory(device: torch.device, step: int) -> TrainingError:
    """The error for running out of memory at a step, with what to lower."""
    return TrainingError(
        f"out of memory on {device} at step {step + 1}: lower the batch size (gradient "
        "accumulation keeps the effective batch), the context length or the model size")


def skip_non_finite(step_loss: float, norm: torch.Tensor, step: int, optimizer: torch.optim.Optimizer,
                    progress: Progress, cfg: TrainConfig, out: Path | None, say: Callable[..., None]) -> bool:
    """True (gradients dropped, step counted) when the step's loss or gradient is non-finite on any process.

    Past cfg.max_bad_steps such steps, raises TrainingError naming the step, its batch and the last resume state.
    """
    W, rank = distributed.world_size(), distributed.rank()
    bad = not (math.isfinite(step_loss) and math.isfinite(float(norm)))
    if W > 1:
        bad = distributed.sum_across_ranks(float(bad))[0] > 0
    if not bad:
        return False
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
    return True


def save_or_stop(stop: StopOnSignal, out: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer,
                 progress: Progress, cfg: TrainConfig) -> None:
    """At a step's end: write resume state when due or asked to stop; on a signal, raise TrainingInterrupted."""
    stopping = stop.requested()
    due = cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0
    if distributed.is_main() and out is not None and (stopping or due):
        save_state(out, model, optimizer, progress, cfg)
    if stopping and progress.step != cfg.max_steps:
        distributed.barrier()
        raise TrainingInterrupted(
            f"stopped by a signal after step {progress.step}/{cfg.max_steps}; the run is saved in {out}: "
            "run the same command with --resume to continue" if out is not None else
            f"stopped by a signal after step {progress.step}/{cfg.max_steps} (no output folder, nothing saved)")
