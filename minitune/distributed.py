"""Several processes, one training run: PyTorch's DistributedDataParallel, set up from torchrun's variables.

    torchrun --nproc_per_node=N -m minitune finetune ...       # N processes on this machine
    torchrun --nnodes=2 --node_rank=0 --rdzv_endpoint=HOST:PORT --nproc_per_node=N -m minitune ...

Each process (rank) reads its own share of the data: training batch i of the run is made of the data
source's batches i*W + 0 ... i*W + W-1, rank r taking i*W + r, so W processes see W times the batch of
one. DDP averages the gradients of the trainable parameters across ranks after every backward pass
(frozen parameters are not registered, so PEFT sends less). Only rank 0 prints and writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched() -> bool:
    """True in a process started by torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> None:
    """Join the process group torchrun describes: NCCL between GPUs, gloo on CPUs."""
    if launched() and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Only rank 0 logs and writes files (before the group is joined, torchrun's RANK says who is 0)."""
    return rank() == 0 if dist.is_initialized() else int(os.environ.get("RANK", "0")) == 0


def local_device(device: torch.device) -> torch.device:
    """Each process on a multi-GPU machine takes the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and launched():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def sum_across_ranks(*values: float) -> list[float]:
    """Add up numbers over all ranks (every rank gets the totals)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Leave the process group (a process that exits still in it can abort in the backend's threads)."""
    if dist.is_initialized():
        dist.destroy_process_group()
