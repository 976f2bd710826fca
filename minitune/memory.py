"""Bytes of training state, measured from the tensors and predicted by formula.

Training with AdamW keeps, per parameter:

    weights     every parameter, trainable or frozen          P_total     x b bytes
    gradients   one per trainable parameter                    P_trainable x b
    optimizer   AdamW's two moments (exp_avg, exp_avg_sq)      2 P_trainable x b
                + one `step` counter per trainable tensor      n_tensors x 4 bytes (a float32 scalar)

so full fine-tuning in fp32 (b = 4) costs 4 x 4 = 16 bytes per parameter, and a parameter-efficient
strategy costs 4 bytes per frozen parameter plus 16 per trainable one. The tiny `step` tensors are
counted too, so the formula matches what PyTorch holds exactly, byte for byte.

Not counted: activations. They are what backward needs from the forward pass (each layer's inputs,
attention probabilities, ...), so they grow with batch size x sequence length x depth rather than with
the parameter count, and they are freed as backward runs. PEFT hardly shrinks them: the gradient still
flows back through every frozen layer above the lowest trainable tensor, which needs those layers'
activations. Measure them with a profiler (or torch.cuda.max_memory_allocated) for a given batch.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn

from minitune.train import TrainConfig, autocast_for, make_optimizer

KEYS = ("weights", "gradients", "optimizer", "total")


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by the given tensors, each tensor counted once (a tied tensor appears once)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def _optimizer_tensors(optimizer: torch.optim.Optimizer, step_only: bool = False) -> list[torch.Tensor]:
    """Every tensor in optimizer.state (or only the `step` counters)."""
    return [v for state in optimizer.state.values() for k, v in state.items()
            if torch.is_tensor(v) and (k == "step" or not step_only)]


def training_memory(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes of weights, gradients (the .grad that exist) and optimizer state, measured from the tensors.

    `optimizer_step` is the part of `optimizer` held by AdamW's per-tensor `step` counters.
    """
    params = list(model.parameters())  # each tensor once, tied weights included
    out = {
        "weights": tensor_bytes(params),
        "gradients": tensor_bytes(p.grad for p in params if p.grad is not None),
        "optimizer": tensor_bytes(_optimizer_tensors(optimizer)) if optimizer is not None else 0,
        "optimizer_step": tensor_bytes(_optimizer_tensors(optimizer, True)) if optimizer is not None else 0,
    }
    out["total"] = out["weights"] + out["gradients"] + out["optimizer"]
    return out


def measure_training_memory(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], lr: float = 1e-3
) -> dict[str, int]:
    """training_memory after one forward/backward/AdamW step on a copy of model (model is untouched).

    Measured before zero_grad, the moment gradients and optimizer state are both alive.
    """
    model = copy.deepcopy(model)
    model.train()
    for p in model.parameters():
        p.grad = None
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, TrainConfig(lr=lr, warmup_steps=0), device)
    x, y = (t.to(device) for t in batch)
    with autocast_for(device):
        _, loss = model(x, y)
    loss.backward()
    optimizer.step()
    return training_memory(model, optimizer)


def step_bytes() -> int:
    """Size of AdamW's `step` counter: PyTorch keeps it as a float32 scalar (float64 if that is the default)."""
    return 8 if torch.get_default_dtype() == torch.float64 else 4


def memory_formula(model: nn.Module, bytes_per_param: int | None = 4) -> dict[str, int]:
    """Predicted bytes: weights P_total b, gradients P_trainable b, optimizer 2 P_trainable b + steps.

    `bytes_per_param=None` takes b from each tensor's own dtype (a bf16 frozen base beside fp32 LoRA factors).
    """
    def nbytes(p: torch.Tensor) -> int:
        return p.numel() * (p.element_size() if bytes_per_param is None else bytes_per_param)

    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    trainable_bytes = sum(nbytes(p) for p in trainable)  # a gradient and AdamW's moments take p's dtype
    steps = len(trainable) * step_bytes()  # one scalar `step` per trainable tensor
    out = {
        "weights": sum(nbytes(p) for p in params),
        "gradients": trainable_bytes,
        "optimizer": 2 * trainable_bytes + steps,
        "optimizer_step": steps,
    }
    out["total"] = out["weights"] + out["gradients"] + out["optimizer"]
    return out


def file_size(path: str | Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def human_bytes(n: float) -> str:
    """Bytes in decimal units: 512 B, 1.2 kB, 45.6 MB, 1.0 GB."""
    if abs(n) < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if round(abs(n), 1) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


__all__ = [
    "file_size", "human_bytes", "measure_training_memory", "memory_formula", "step_bytes",
    "tensor_bytes", "training_memory",
]
