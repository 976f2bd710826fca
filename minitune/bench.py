"""`minitune bench`: what each strategy costs in time and bytes, measured on this machine, in one run.

Every timed case (a training step of each strategy on each size, a forward pass, a generation, a large
matmul) runs round-robin for several rounds, so a burst of machine noise hits every case alike; cases
compared with each other alternate run by run; a case's time is the median of its per-round times. An
untimed warm-up comes first (it allocates AdamW's state and picks how many runs fill a round). The
generation pair (with and without the KV cache), by far the slowest, runs in every other round only.

Targets (checked on the largest size run, printed as met / NOT MET, never tuned to pass): LoRA step
<= 0.72 x full; LoRA optimizer and gradient bytes <= 2% of full; merged LoRA forward within 3% of the
base, unmerged within 15%; generation with the cache >= 5 x without; full fine-tuning MFU >= 75%.

FLOPs per token of a training step on a sequence of T positions, L layers of width d:

    full fine-tuning:   6 N + 12 L d T                     (Chowdhery et al., 2022, PaLM, appendix B)
    PEFT:               4 N + 2 N_trainable + 12 L d T

    N            all parameters except the position embedding wpe (and a soft prompt): the token
                 embedding counts once, since, tied, it is the lm_head matmul (2 V d per token forward);
                 LoRA and adapter tensors count too, since they run in the forward pass
    N_trainable  the trainable part of N (LoRA's A and B, the adapters; none for prompt tuning: the soft
                 prompt is concatenated to the input, not multiplied)

    Why: forward = 2N (one multiply-add per weight per token). Backward = 2N for the gradient with
    respect to each layer's input (needed through every frozen layer, so the gradient can reach the
    trainable tensors below it) + 2 N_trainable for the weight gradients (a frozen weight, with
    requires_grad=False, gets none). Attention scores add 4 L d T forward and 8 L d T backward, all of it
    activation gradients. For full fine-tuning N_trainable = N and the formula is PaLM's 6N + 12LdT.
    It slightly overstates PEFT's work: autograd skips the input gradients below the lowest trainable
    tensor (part of layer 0 for LoRA and adapters), which the formula still counts.

MFU is the model's FLOP/s (formula x positions / step time) as a fraction of the best fp32 matmul
throughput measured in the same run (square matrices of 1024 and 2048), not of a datasheet peak.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from minitune.checkpoint import atomic_write_json
from minitune.errors import ConfigError
from minitune.memory import human_bytes, measure_training_memory, memory_formula
from minitune.model import GPT, GPTConfig
from minitune.strategies import AdapterConfig, FullConfig, LoRAConfig, PromptTuningConfig, apply_strategy, merge
from minitune.strategies import trainable_parameters
from minitune.strategies.lora import lora_layers
from minitune.train import TrainConfig, autocast_for, make_optimizer, resolve_device

SIZES = {
    "nano": GPTConfig.from_preset("nano"),
    "tiny": GPTConfig.from_preset("tiny"),
    # ~11M parameters: written out here rather than borrowed from a preset, so the bench stays fixed
    "large": GPTConfig(vocab_size=2048, block_size=256, n_layer=6, n_head=6, n_embd=384),
}
STRATEGIES = {
    "full": FullConfig(),
    "lora": LoRAConfig(r=8, alpha=16, targets=("c_attn",)),
    "adapter": AdapterConfig(bottleneck=16, placement="houlsby"),
    "prompt": PromptTuningConfig(n_tokens=20, init="vocab"),
}
STRATEGY_NOTES = {"full": "all parameters", "lora": "r=8, alpha=16, on c_attn",
                  "adapter": "houlsby (2 per block), bottleneck 16, GELU", "prompt": "20 soft tokens"}
PROMPT_TOKENS = 6  # generation prompt; the rest of the context is generated
MATMUL_SIZES = (1024, 2048)


# ----------------------------------------------------------------------------------------------- FLOPs
def flop_counts(model: nn.Module) -> tuple[int, int]:
    """(N, N_trainable): parameters that do matmul work per token (all but wpe and a soft prompt)."""
    n = n_tr = 0
    for name, p in model.named_parameters():  # a tied tensor is named once (transformer.wte.weight)
        if name == "transformer.wpe.weight" or "soft_prompt" in name:
            continue
        n += p.numel()
        n_tr += p.numel() if p.requires_grad else 0
    return n, n_tr


def flops_per_token(model: nn.Module, seq_len: int) -> tuple[int, str]:
    """Training FLOPs per position of a sequence of seq_len positions, and the formula used."""
    n, n_tr = flop_counts(model)
    cfg = model.config
    attention = 12 * cfg.n_layer * cfg.n_embd * seq_len
    if n_tr == n:
        return 6 * n + attention, "6N+12LdT"
    return 4 * n + 2 * n_tr + attention, "4N+2Ntr+12LdT"


# ----------------------------------------------------------------------------------------- the timer
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _time(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds of one fn()."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def run_interleaved(cases: list[Case], rounds: int, device: torch.device, min_group_s: float,
                    log: Callable[[str], None]) -> None:
    """Warm up every case, then time all of them round-robin for `rounds` rounds.

    Cases compared with each other (a section on one size: the four training steps, the three forward
    passes) form a group. A round runs every group; within a group the cases alternate run by run
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
        t = sum(_time(c.warmup or c.fn, device) for c in group)
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
                    runs[c.name].append(_time(c.fn, device))
            for c in groups[key]:
                c.times.append(statistics.median(runs[c.name]))
        log(f"round {r + 1}/{rounds} done ({time.perf_counter() - t1:.1f}s, {time.perf_counter() - t0:.0f}s so far)")


# ----------------------------------------------------------------------------------------- the cases
def _batch(cfg: GPTConfig, batch: int, seq: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=g)
    return x[:, :-1].contiguous().to(device), x[:, 1:].contiguous().to(device)


def build_models(base: GPT) -> dict[str, nn.Module]:
    """The base with each strategy applied (each on its own copy)."""
    return {name: apply_strategy(copy.deepcopy(base), cfg) for name, cfg in STRATEGIES.items()}


def training_case(size: str, name: str, model: nn.Module, batch_size: int, device: torch.device) -> Case:
    """One optimizer step: forward, backward, AdamW step (make_optimizer), zero_grad."""
    model.to(device).train()
    optimizer = make_optimizer(model, TrainConfig(lr=1e-4, warmup_steps=0), device)
    x, y = _batch(model.config, batch_size, model.max_input_tokens, device, seed=1)

    def step() -> None:
        with autocast_for(device):
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return Case("training", size, name, step)


def inference_models(base: GPT, device: torch.device) -> dict[str, nn.Module]:
    """The base, a LoRA model with its update beside W, and the same LoRA model merged into W."""
    lora = apply_strategy(copy.deepcopy(base), STRATEGIES["lora"])
    with torch.no_grad():  # a non-zero update, as after training (B starts at zero)
        for layer in lora_layers(lora).values():
            layer.lora_B.normal_(std=0.02)
    merged = merge(copy.deepcopy(lora))
    return {name: m.to(device).eval() for name, m in
            (("base", copy.deepcopy(base)), ("lora unmerged", lora), ("lora merged", merged))}


def inference_case(size: str, name: str, model: nn.Module, device: torch.device) -> Case:
    """One forward pass of batch 1 over the full context, logits at every position."""
    x, _ = _batch(model.config, 1, model.config.block_size, device, seed=2)

    def forward() -> None:
        with torch.inference_mode(), autocast_for(device):
            model(x)

    return Case("inference", size, name, forward)


def generation_case(size: str, model: GPT, use_cache: bool, device: torch.device) -> Case:
    """Greedy generation, batch 1, from a short prompt until the context is full."""
    model.to(device).eval()
    prompt, _ = _batch(model.config, 1, PROMPT_TOKENS, device, seed=3)
    new = model.config.block_size - PROMPT_TOKENS

    def run(n: int) -> Callable[[], None]:
        def go() -> None:
            with autocast_for(device):
                model.generate(prompt, n, use_cache=use_cache)
        return go

    return Case("generation", size, "with KV cache" if use_cache else "without cache", run(new),
                warmup=run(min(8, new)), every=2)


def matmul_case(n: int, device: torch.device) -> Case:
    """One n x n @ n x n matmul, in the precision training uses on this device."""
    g = torch.Generator().manual_seed(4)
    a, b = (torch.randn(n, n, generator=g).to(device) for _ in range(2))

    def mm() -> None:
        with autocast_for(device):
            a @ b

    return Case("matmul", "", f"{n}x{n}", mm)


# ------------------------------------------------------------------------------------------ the run
def machine_info(device: torch.device) -> dict:
    """CPU model, cores, torch version and threads, and the accelerator if one is used."""
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
        info["accelerator"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):  # other processes' CPU use skews every timing here
        info["load_average_1min"] = os.getloadavg()[0]
    return info


def parse_sizes(sizes: str | list[str] | tuple[str, ...]) -> list[str]:
    """'tiny,large' -> ['tiny', 'large'], checked against SIZES."""
    names = [s.strip() for s in sizes.split(",")] if isinstance(sizes, str) else list(sizes)
    names = [s for s in names if s]
    unknown = [s for s in names if s not in SIZES]
    if unknown or not names:
        raise ConfigError(f"unknown bench sizes {unknown or names}; choose from {sorted(SIZES)}")
    return names


def run_bench(sizes: str | list[str] | tuple[str, ...] = ("tiny", "large"), rounds: int = 5,
              batch_size: int = 8, device: str = "auto", quick: bool = False,
              progress: bool = True) -> dict:
    """Run every case interleaved and return the results (machine, settings, sections, targets)."""
    if quick:  # the test's setting: the nano model, two rounds, small matmuls
        sizes, rounds, batch_size = ("nano",), min(rounds, 2), min(batch_size, 4)
    names = parse_sizes(sizes)
    if rounds < 1 or batch_size < 1:
        raise ConfigError(f"rounds and batch size must be >= 1, got {rounds} and {batch_size}")
    dev = resolve_device(device)
    log = (lambda s: print(f"bench: {s}", file=sys.stderr, flush=True)) if progress else (lambda s: None)
    t_start = time.perf_counter()
    machine = machine_info(dev)  # before the run: the load average then is other processes' only
    torch.manual_seed(0)
    bases = {s: GPT(SIZES[s]) for s in names}
    largest = max(names, key=lambda s: bases[s].num_parameters())

    log("measuring bytes of training state")
    memory, cases, train_models = [], [], {}
    for s in names:
        models = build_models(bases[s])
        train_models[s] = models
        for strat, m in models.items():
            batch = _batch(m.config, 1, min(16, m.max_input_tokens), torch.device("cpu"), seed=5)
            trainable, total = trainable_parameters(m)
            memory.append({"size": s, "strategy": strat, "trainable_params": trainable, "params": total,
                           "measured": measure_training_memory(m, batch), "formula": memory_formula(m)})
            cases.append(training_case(s, strat, m, batch_size, dev))
    infer = {s: inference_models(bases[s], dev) for s in names}
    for s in names:
        cases += [inference_case(s, name, m, dev) for name, m in infer[s].items()]
    gen_model = copy.deepcopy(bases[largest])
    cases += [generation_case(largest, gen_model, c, dev) for c in (True, False)]
    cases += [matmul_case(n, dev) for n in (MATMUL_SIZES[:1] if quick else MATMUL_SIZES)]

    log(f"{len(cases)} cases, {rounds} rounds")
    run_interleaved(cases, rounds, dev, min_group_s=0.1 if quick else 1.0, log=log)
    result = _collect(cases, memory, train_models, names, largest, batch_size, rounds, dev, quick)
    result["machine"] = machine
    result["seconds"] = time.perf_counter() - t_start
    return result


def _collect(cases: list[Case], memory: list[dict], train_models: dict, names: list[str], largest: str,
             batch_size: int, rounds: int, dev: torch.device, quick: bool) -> dict:
    """Turn per-round times into the result sections."""
    by = {(c.section, c.size, c.name): c for c in cases}
    matmul = [{"n": int(c.name.split("x")[0]), "flops_per_s": 2 * int(c.name.split("x")[0]) ** 3 / c.median,
               "rounds_ms": [1000 * t for t in c.times]} for c in cases if c.section == "matmul"]
    peak = max(m["flops_per_s"] for m in matmul)
    training = []
    for s in names:
        for strat, m in train_models[s].items():
            c = by[("training", s, strat)]
            positions = m.config.block_size  # a soft prompt's positions are computed like any other
            fpt, formula = flops_per_token(m, positions)
            n, _ = flop_counts(m)
            achieved = fpt * batch_size * positions / c.median
            training.append({
                "size": s, "strategy": strat, "trainable_params": trainable_parameters(m)[0],
                "flop_params": n, "ms_per_step": 1000 * c.median,
                "tokens_per_s": batch_size * m.max_input_tokens / c.median,
                "flops_per_token": fpt, "flop_formula": formula, "flops_per_s": achieved,
                "mfu": achieved / peak, "rounds_ms": [1000 * t for t in c.times],
            })
    inference = []
    for s in names:
        base_ms = by[("inference", s, "base")].median
        for name in ("base", "lora unmerged", "lora merged"):
            c = by[("inference", s, name)]
            inference.append({"size": s, "case": name, "batch": 1, "seq_len": SIZES[s].block_size,
                              "ms": 1000 * c.median, "vs_base": c.median / base_ms,
                              "rounds_ms": [1000 * t for t in c.times]})
    new = SIZES[largest].block_size - PROMPT_TOKENS
    generation = [{"size": largest, "case": name, "prompt_tokens": PROMPT_TOKENS, "new_tokens": new,
                   "seconds": by[("generation", largest, name)].median,
                   "tokens_per_s": new / by[("generation", largest, name)].median,
                   "runs": len(by[("generation", largest, name)].times),
                   "rounds_s": by[("generation", largest, name)].times}
                  for name in ("with KV cache", "without cache")]
    result = {
        "settings": {"sizes": names, "rounds": rounds, "batch_size": batch_size, "quick": quick,
                     "target_size": largest, "dtype": "bf16 autocast" if dev.type == "cuda" else "fp32",
                     "strategies": STRATEGY_NOTES,
                     "model_configs": {s: SIZES[s].to_dict() for s in names}},
        "matmul": {"peak_flops_per_s": peak, "sizes": matmul},
        "training": training, "memory": memory, "inference": inference, "generation": generation,
    }
    result["targets"] = check_targets(result)
    return result


def check_targets(result: dict) -> list[dict]:
    """The course's claims, as ratios on the largest size, each met or not."""
    s = result["settings"]["target_size"]
    train = {r["strategy"]: r for r in result["training"] if r["size"] == s}
    mem = {r["strategy"]: r["measured"] for r in result["memory"] if r["size"] == s}
    inf = {r["case"]: r for r in result["inference"] if r["size"] == s}
    gen = {r["case"]: r for r in result["generation"]}

    def target(name: str, value: float, op: str, limit: float) -> dict:
        met = value <= limit if op == "<=" else value >= limit
        return {"name": name, "size": s, "value": value, "op": op, "limit": limit, "met": bool(met)}

    return [
        target("LoRA step time / full step time", train["lora"]["ms_per_step"] / train["full"]["ms_per_step"],
               "<=", 0.72),
        target("LoRA optimizer bytes / full", mem["lora"]["optimizer"] / mem["full"]["optimizer"], "<=", 0.02),
        target("LoRA gradient bytes / full", mem["lora"]["gradients"] / mem["full"]["gradients"], "<=", 0.02),
        target("merged LoRA forward / base", inf["lora merged"]["vs_base"], "<=", 1.03),
        target("unmerged LoRA forward / base", inf["lora unmerged"]["vs_base"], "<=", 1.15),
        target("generation tok/s, cache / no cache",
               gen["with KV cache"]["tokens_per_s"] / gen["without cache"]["tokens_per_s"], ">=", 5.0),
        target("full fine-tuning MFU", train["full"]["mfu"], ">=", 0.75),
    ]


# ------------------------------------------------------------------------------------------ the table
def _table(headers: list[str], rows: list[list[str]], left: int = 2) -> list[str]:
    """Rows aligned under headers: the first `left` columns to the left, the rest to the right."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def format_report(result: dict) -> str:
    """The whole run as aligned text: machine, matmul reference, four sections, targets."""
    m, st = result["machine"], result["settings"]
    out = [f"minitune bench | {m['cpu']} | {m['cores']} cores | torch {m['torch']} | {m['threads']} threads | "
           f"device {m['device']}" + (f" ({m['accelerator']})" if "accelerator" in m else ""),
           f"sizes {', '.join(st['sizes'])} | {st['rounds']} rounds, interleaved, median | "
           f"train batch {st['batch_size']} | {st['dtype']} | wall time {result.get('seconds', 0):.0f}s",
           "strategies: " + "; ".join(f"{k}: {v}" for k, v in st["strategies"].items())]
    load = m.get("load_average_1min")
    if load is not None:
        busy = load > 0.5 * m["cores"]
        out.append(f"load average before the run: {load:.2f} on {m['cores']} cores"
                   + (" -- WARNING: other processes were using the CPU; every timing below is noisy, and "
                      "cases made of many small ops (LoRA's side path, cached generation) suffer most"
                      if busy else ""))
    out.append("")
    mm = result["matmul"]
    out.append("matmul reference: " + ", ".join(f"{r['n']}x{r['n']} {r['flops_per_s'] / 1e9:.1f} GFLOP/s"
                                                for r in mm["sizes"])
               + f" -> {mm['peak_flops_per_s'] / 1e9:.1f} GFLOP/s = 100% MFU")
    out += ["", "TRAINING STEP (forward + backward + AdamW step, full context)"]
    out += _table(["size", "strategy", "trainable", "ms/step", "rounds min-max", "tokens/s", "MFLOP/token",
                   "GFLOP/s", "MFU", "formula"],
                  [[r["size"], r["strategy"], f"{r['trainable_params']:,}", f"{r['ms_per_step']:.1f}",
                    f"{min(r['rounds_ms']):.0f}-{max(r['rounds_ms']):.0f}",
                    f"{r['tokens_per_s']:,.0f}", f"{r['flops_per_token'] / 1e6:.1f}",
                    f"{r['flops_per_s'] / 1e9:.1f}", f"{100 * r['mfu']:.0f}%", r["flop_formula"]]
                   for r in result["training"]])
    out += ["", "BYTES OF TRAINING STATE (fp32; measured after one step | formula: 4 B weights, "
            "4 B grads, 8 B AdamW moments per param + 4 B step per tensor)"]
    out += _table(["size", "strategy", "weights", "gradients", "optimizer", "total", "formula total",
                   "measured == formula"],
                  [[r["size"], r["strategy"], *(human_bytes(r["measured"][k]) for k in
                                                 ("weights", "gradients", "optimizer", "total")),
                    human_bytes(r["formula"]["total"]),
                    "yes" if all(r["measured"][k] == r["formula"][k] for k in ("weights", "gradients",
                                                                                "optimizer")) else "NO"]
                   for r in result["memory"]])
    out += ["", "INFERENCE (one forward pass, batch 1, full context)"]
    out += _table(["size", "model", "seq", "ms", "rounds min-max", "vs base"],
                  [[r["size"], r["case"], str(r["seq_len"]), f"{r['ms']:.2f}",
                    f"{min(r['rounds_ms']):.1f}-{max(r['rounds_ms']):.1f}", f"{r['vs_base']:.3f}x"]
                   for r in result["inference"]])
    g0 = result["generation"][0]
    out += ["", f"GENERATION (greedy, batch 1, {g0['prompt_tokens']}-token prompt + {g0['new_tokens']} new "
            f"tokens = the whole {g0['prompt_tokens'] + g0['new_tokens']}-token context; timed in every other "
            f"round: median of {g0['runs']} runs)"]
    out += _table(["size", "case", "new tokens", "seconds", "tokens/s"],
                  [[r["size"], r["case"], str(r["new_tokens"]), f"{r['seconds']:.2f}", f"{r['tokens_per_s']:,.1f}"]
                   for r in result["generation"]])
    out += ["", f"TARGETS (on {st['target_size']})"]
    out += _table(["target", "size", "measured", "target", "result"],
                  [[t["name"], t["size"], f"{t['value']:.3f}", f"{t['op']} {t['limit']:g}",
                    "met" if t["met"] else "NOT MET"] for t in result["targets"]], left=2)
    out += ["", "N = all parameters except wpe (and a soft prompt); the tied wte counts once, as the lm_head "
            "matmul.", "N_tr = the trainable part of N. T = positions per sequence (a soft prompt's "
            "included); tokens/s counts input tokens.",
            "MFU = (FLOPs/token x positions/s) / the matmul reference above, measured in this run."]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ profiling
def profile_steps(size: str = "large", strategies: tuple[str, ...] = ("full", "lora"), batch_size: int = 8,
                  device: str = "auto", steps: int = 3, row_limit: int = 15) -> str:
    """torch.profiler's table of the ops that take the time in a few training steps of each strategy."""
    from torch.profiler import ProfilerActivity, profile

    dev = resolve_device(device)
    torch.manual_seed(0)
    base = GPT(SIZES[size])
    out = []
    for name in strategies:
        case = training_case(size, name, apply_strategy(copy.deepcopy(base), STRATEGIES[name]), batch_size, dev)
        case.fn()  # warm-up: allocates AdamW's state
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(steps):
                case.fn()
        sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        out += [f"== {name} on {size}, batch {batch_size}, {steps} steps ==",
                prof.key_averages().table(sort_by=sort, row_limit=row_limit)]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `minitune bench` on an argparse subparsers object."""
    p = subparsers.add_parser("bench", help="time and size every strategy on this machine")
    p.add_argument("--sizes", default="tiny,large", help=f"comma-separated, from {sorted(SIZES)} (default: tiny,large)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds, round-robin over cases (default: 5)")
    p.add_argument("--batch-size", type=int, default=8, help="training batch (default: 8)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--quick", action="store_true", help="nano model, 2 rounds: a smoke test in seconds")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--profile", action="store_true",
                   help="afterwards, profile full and LoRA training steps on the largest size")
    p.set_defaults(handler=handle)
    return p


def handle(args: argparse.Namespace) -> dict:
    """Run the bench the flags describe, print the table, and write the JSON if asked."""
    result = run_bench(sizes=args.sizes, rounds=args.rounds, batch_size=args.batch_size, device=args.device,
                       quick=args.quick)
    print(format_report(result), flush=True)
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    if getattr(args, "profile", False):
        print(profile_steps(result["settings"]["target_size"], batch_size=result["settings"]["batch_size"],
                            device=args.device))
    return result


__all__ = ["SIZES", "STRATEGIES", "add_parser", "check_targets", "flop_counts", "flops_per_token",
           "format_report", "handle", "profile_steps", "run_bench"]
