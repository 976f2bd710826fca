"""Timing many cases fairly on a noisy machine: warm-up, then round-robin rounds, medians.

Every timed case runs round-robin for several rounds, so a burst of machine noise hits every case alike;
cases compared with each other alternate run by run; a case's time is the median of its per-round times.
An untimed warm-up comes first (it allocates AdamW's state and picks how many runs fill a round). On a
GPU each run is bracketed by a device synchronise, so a time is the device's work, not its queueing.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch


@dataclass
class Case:
    """One timed piece of work: `fn` runs it once."""

    section: str
    size: str
    name: str
    fn: Callable[[], None]
    warmup: Callable[[], None] | None = None  # a cheaper stand-in for the warm-up run
    every: int = 1  # run in every `every`-th round only (for the one case that takes most of a round)
    times: list[float] = field(default_factory=list)  # seconds per run, one per round it ran in

    @property
    def group(self) -> tuple[str, str]:
        return self.section, self.size

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU, whose work is done when a call returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_once(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds of one fn()."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def run_interleaved(cases: list[Case], rounds: int, device: torch.device, min_group_s: float,
                    log: Callable[[str], None]) -> None:
    """Warm up every case, then time all of them round-robin for `rounds` rounds.

    Cases compared with each other (a section on one size: the training steps, the forward passes)
    form a group. A round runs every group; within a group the cases alternate run by run
    (a b c a b c ...), `reps` runs each, so noise hits them alike even at short time scales. A case's
    per-round time is the median of its runs in that round; its result, the median over rounds.
    A group with `every` = k runs in rounds 1, 1 + k, 1 + 2k, ... only (generation, whose uncached half
    alone would take most of each round).
    """
    groups: dict[tuple[str, str], list[Case]] = {}
    for c in cases:
        groups.setdefault(c.group, []).append(c)
    reps = {}
    t0 = time.perf_counter()
    for key, group in groups.items():  # warm-up; picks reps so a group's round lasts about min_group_s
        t = sum(time_once(c.warmup or c.fn, device) for c in group)
        slow = any(c.warmup is not None for c in group)  # its real run is far longer than its warm-up
        reps[key] = 1 if slow else max(1, min(50, math.ceil(min_group_s / max(t, 1e-6))))
    log(f"warm-up done ({time.perf_counter() - t0:.1f}s)")
    order = list(groups)
    for r in range(rounds):
        t1 = time.perf_counter()
        k = r % len(order)  # start each round at another group, so no group always runs first
        for key in order[k:] + order[:k]:
            if r % groups[key][0].every:
                continue
            runs: dict[str, list[float]] = {c.name: [] for c in groups[key]}
            for _ in range(reps[key]):
                for c in groups[key]:
                    runs[c.name].append(time_once(c.fn, device))
            for c in groups[key]:
                c.times.append(statistics.median(runs[c.name]))
        log(f"round {r + 1}/{rounds} done ({time.perf_counter() - t1:.1f}s, {time.perf_counter() - t0:.0f}s so far)")


def machine_info(device: torch.device) -> dict:
    """CPU model, cores, torch version and threads, the load average, and the accelerator if one is used."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count() or 1, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(accelerator=props.name, accelerator_memory_bytes=props.total_memory,
                    cuda=torch.version.cuda or "")
    if hasattr(os, "getloadavg"):  # other processes' CPU use skews every timing here
        info["load_average_1min"] = os.getloadavg()[0]
    return info
