"""Where a training step's time goes: torch.profiler over a few steps, each op's own time sorted into kinds.

On the CPU an op's own (self) time is host time; on a GPU it is the time of the kernels it launched,
so a step that is bound by launching rather than computing shows up as a device total well under the
step's wall time.
"""

from __future__ import annotations

import copy

import torch

from minitune.bench.cases import STRATEGIES, training_step
from minitune.bench.sizes import SIZES
from minitune.bench.timing import synchronize, time_once
from minitune.model import GPT
from minitune.strategies import apply_strategy
from minitune.train import resolve_device

# kind of op -> substrings of profiler op names; the first kind that matches takes the op
KINDS = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv")),
    ("attention (SDPA)", ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention")),
    ("cross-entropy", ("log_softmax", "nll_loss")),
    ("AdamW", ("adam", "_foreach", "lerp", "addcdiv", "addcmul", "aten::sqrt")),
    ("casts and copies", ("aten::copy_", "aten::_to_copy", "aten::clone")),
    ("GELU", ("gelu",)),
    ("LayerNorm", ("layer_norm",)),
    ("zero fills", ("aten::fill_", "aten::zero_")),
    ("other aten ops", ("aten::",)),
)


def kind_of(op: str) -> str:
    """The kind an op's name belongs to ('framework' for autograd, optimizer and Python overhead)."""
    for kind, parts in KINDS:
        if any(p in op for p in parts):
            return kind
    return "framework"


def _self_us(event, on_device: bool) -> float:
    if not on_device:
        return event.self_cpu_time_total
    return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)


def profile_strategy(size: str, strategy: str, batch_size: int, device: str = "auto", steps: int = 3):
    """(torch.profiler's result over `steps` training steps, wall ms per step) for one strategy."""
    from torch.profiler import ProfilerActivity, profile

    dev = resolve_device(device)
    torch.manual_seed(0)
    model = apply_strategy(copy.deepcopy(GPT(SIZES[size])), STRATEGIES[strategy])
    step = training_step(model, batch_size, dev)
    step()  # warm-up: allocates AdamW's state
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        wall = sum(time_once(step, dev) for _ in range(steps))
        synchronize(dev)
    return prof, 1000 * wall / steps


def breakdown(prof, steps: int, on_device: bool) -> dict[str, float]:
    """Milliseconds per step by kind of op (on a GPU: device time of aten ops, each kernel counted once)."""
    out: dict[str, float] = {}
    for e in prof.key_averages():
        if on_device and not e.key.startswith("aten::"):  # a kernel's own row repeats its op's time
            continue
        kind = kind_of(e.key)
        out[kind] = out.get(kind, 0.0) + _self_us(e, on_device) / 1000 / steps
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def profile_steps(size: str = "large", strategies: tuple[str, ...] = ("full", "lora"), batch_size: int = 8,
                  device: str = "auto", steps: int = 3, row_limit: int = 15) -> tuple[str, dict]:
    """The profiler's top ops of each strategy's training step, and the time by kind of op, per step.

    Returns (the text to print, {strategy: {"wall_ms": ..., "by_kind_ms": {...}}}).
    """
    on_device = resolve_device(device).type == "cuda"
    sort = "self_cuda_time_total" if on_device else "self_cpu_time_total"
    text, summary = [], {}
    for name in strategies:
        prof, wall = profile_strategy(size, name, batch_size, device, steps)
        kinds = breakdown(prof, steps, on_device)
        summary[name] = {"wall_ms": wall, "by_kind_ms": kinds}
        text += [f"== {name} on {size}, batch {batch_size}, {steps} steps: {wall:.1f} ms per step (wall, profiled) ==",
                 prof.key_averages().table(sort_by=sort, row_limit=row_limit)]
    text += ["", "WHERE THE TIME GOES (ms per step, self time by kind of op" +
             (", device time)" if on_device else ", host time)")]
    kinds = list(dict.fromkeys(k for s in summary.values() for k in s["by_kind_ms"]))
    header = ["kind"] + [f"{n:>10}" for n in strategies]
    text.append("  ".join(f"{h:<18}" if i == 0 else h for i, h in enumerate(header)))
    for k in kinds + ["total", "wall"]:
        vals = [sum(s["by_kind_ms"].values()) if k == "total" else s["wall_ms"] if k == "wall"
                else s["by_kind_ms"].get(k, 0.0) for s in summary.values()]
        text.append(f"{k:<18}  " + "  ".join(f"{v:>10.1f}" for v in vals))
    return "\n".join(text), summary
