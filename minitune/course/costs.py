"""What training a strategy costs, measured: parameter counts, bytes of the training state, the file a
task needs and the time of one step (lessons 1, 2, 6 and 7 show them side by side)."""

from __future__ import annotations

import copy
import statistics
import tempfile
import time

import torch

from minitune.course.report import Bytes
from minitune.train import TrainConfig, make_optimizer


def strategy_costs(model, x: torch.Tensor, y: torch.Tensor, device="cpu") -> dict:
    """What training this (strategy-applied) model costs on batch (x, y), one flat row of a table:

    trainable, total, trainable %    parameter counts
    weights, gradients, optimizer    bytes of each part of the training state, measured after one step
    training state                   gradients + optimizer: what a strategy's choice of trainables decides
    train memory                     weights, gradients and optimizer together
    file                             bytes of the saved trainable part: what one task needs on disk
    step ms                          the median time of one training step
    """
    from minitune.memory import file_size, measure_training_memory
    from minitune.strategies import save_trainable, trainable_parameters

    trainable, total = trainable_parameters(model)
    with tempfile.TemporaryDirectory() as tmp:
        size = file_size(save_trainable(model, tmp) / "trainable.safetensors")
    memory = measure_training_memory(model, (x, y))
    return {"trainable": trainable, "total": total, "trainable %": 100 * trainable / total,
            **{k: Bytes(memory[k]) for k in ("weights", "gradients", "optimizer")},
            "training state": Bytes(memory["gradients"] + memory["optimizer"]), "train memory": Bytes(memory["total"]),
            "file": Bytes(size), "step ms": step_time_ms(model, x, y, device=device)}


def step_time_ms(model, x: torch.Tensor, y: torch.Tensor, repeats: int = 5, device="cpu") -> float:
    """Median milliseconds of one training step (forward, backward, AdamW), timed on a copy of the model."""
    model = copy.deepcopy(model).to(device).train()
    x, y = x.to(device), y.to(device)
    optimizer = make_optimizer(model, TrainConfig(), torch.device(device))
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step pays for allocating the optimizer state
            times.append((time.perf_counter() - t0) * 1000)
    model.eval()
    return statistics.median(times)
