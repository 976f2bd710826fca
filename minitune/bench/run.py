"""One bench run: build every case the plan names, time them interleaved, collect the results, check targets."""

from __future__ import annotations

import copy
import dataclasses
import sys
import time

import torch

from minitune.bench.cases import (PROMPT_TOKENS, STRATEGY_NOTES, build_models, generation_case, inference_case,
                                  inference_models, matmul_case, random_batch, training_case)
from minitune.bench.reference import COUNTERPARTS, hf_generation_case, hf_training_cases
from minitune.bench.sizes import SIZES, BenchPlan, bench_sizes, flop_counts, flops_per_token, mfu
from minitune.bench.timing import Case, machine_info, run_interleaved
from minitune.errors import ConfigError
from minitune.memory import measure_training_memory, memory_formula
from minitune.model import GPT
from minitune.strategies import trainable_parameters
from minitune.train import resolve_device


def parse_sizes(sizes: str | list[str] | tuple[str, ...]) -> list[str]:
    """'tiny,large' -> ['tiny', 'large'], checked against SIZES."""
    names = [s.strip() for s in sizes.split(",")] if isinstance(sizes, str) else list(sizes)
    names = [s for s in names if s]
    unknown = [s for s in names if s not in SIZES]
    if unknown or not names:
        raise ConfigError(f"unknown bench sizes {unknown or names}; choose from {sorted(SIZES)}")
    return names


def plan_for(device: torch.device, sizes=None, batch_size: int | None = None, quick: bool = False) -> BenchPlan:
    """bench_sizes(device), with the sizes and batch the caller chose (None or 'auto': the device's)."""
    plan = bench_sizes(device, quick=quick)
    if sizes not in (None, "auto") and not quick:
        plan = dataclasses.replace(plan, sizes=tuple(parse_sizes(sizes)))
    if batch_size is not None and not quick:
        plan = dataclasses.replace(plan, batch_size=batch_size, note=f"{batch_size} (--batch-size)")
    if plan.batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {plan.batch_size}")
    return plan


def run_bench(sizes: str | list[str] | tuple[str, ...] | None = None, rounds: int = 5,
              batch_size: int | None = None, device: str = "auto", quick: bool = False,
              progress: bool = True, reference: str | None = None) -> dict:
    """Run every case interleaved and return the results (machine, settings, sections, targets).

    reference="hf" adds Hugging Face's GPT-2 (and PEFT's LoRA) on the largest size, timed in the same rounds.
    """
    if reference not in (None, "hf"):
        raise ConfigError(f"unknown reference {reference!r}; the one known is 'hf'")
    dev = resolve_device(device)
    rounds = min(rounds, 2) if quick else rounds
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    plan = plan_for(dev, sizes, batch_size, quick)
    log = (lambda s: print(f"bench: {s}", file=sys.stderr, flush=True)) if progress else (lambda s: None)
    t_start = time.perf_counter()
    machine = machine_info(dev)  # before the run: the load average then is other processes' only
    torch.manual_seed(0)
    bases = {s: GPT(SIZES[s]) for s in plan.sizes}
    largest = max(plan.sizes, key=lambda s: bases[s].num_parameters())
    if (plan.generation_tokens or 0) >= SIZES[largest].block_size - PROMPT_TOKENS:  # the full-context run is it
        plan = dataclasses.replace(plan, generation_tokens=None)

    log("measuring bytes of training state")
    memory, cases, train_models = [], [], {}
    for s in plan.sizes:
        train_models[s] = build_models(bases[s], plan.strategies)
        for strat, m in train_models[s].items():
            batch = random_batch(m.config, 1, min(16, m.max_input_tokens), torch.device("cpu"), seed=5)
            trainable, total = trainable_parameters(m)
            memory.append({"size": s, "strategy": strat, "trainable_params": trainable, "params": total,
                           "measured": measure_training_memory(m, batch),
                           "formula": memory_formula(m, bytes_per_param=None)})
            cases.append(training_case(s, strat, m, plan.batch_size, dev))
    for s in plan.sizes:
        cases += [inference_case(s, name, m, dev) for name, m in inference_models(bases[s], dev).items()]
    gen_model = copy.deepcopy(bases[largest])
    cases += [generation_case(largest, gen_model, c, dev) for c in (True, False)]
    if plan.generation_tokens:
        cases.append(generation_case(largest, gen_model, True, dev, plan.generation_tokens))
    if reference == "hf":
        cases += hf_training_cases(largest, SIZES[largest], plan.batch_size, dev)
        cases.append(hf_generation_case(largest, SIZES[largest], dev,
                                        plan.generation_tokens or SIZES[largest].block_size - PROMPT_TOKENS))
    cases += [matmul_case(n, dev, plan.matmul_dtype) for n in plan.matmul_sizes]

    log(f"{len(cases)} cases, {rounds} rounds")
    run_interleaved(cases, rounds, dev, min_group_s=0.1 if quick else 1.0, log=log)
    result = collect(cases, memory, train_models, plan, largest, rounds, dev, quick)
    result["machine"] = machine
    result["targets"] = check_targets(result)
    result["seconds"] = time.perf_counter() - t_start
    return result


def collect(cases: list[Case], memory: list[dict], train_models: dict, plan: BenchPlan, largest: str,
            rounds: int, dev: torch.device, quick: bool) -> dict:
    """Turn per-round times into the result sections."""
    by = {(c.section, c.size, c.name): c for c in cases}
    matmul = [{"n": int(c.name.split("x")[0]), "flops_per_s": 2 * int(c.name.split("x")[0]) ** 3 / c.median,
               "rounds_ms": [1000 * t for t in c.times]} for c in cases if c.section == "matmul"]
    peak = max(m["flops_per_s"] for m in matmul)
    training = []
    for s in plan.sizes:
        for strat, m in train_models[s].items():
            c = by[("training", s, strat)]
            positions = m.config.block_size  # a soft prompt's positions are computed like any other
            fpt, formula = flops_per_token(m, positions)
            training.append({
                "size": s, "strategy": strat, "trainable_params": trainable_parameters(m)[0],
                "flop_params": flop_counts(m)[0], "ms_per_step": 1000 * c.median,
                "tokens_per_s": plan.batch_size * m.max_input_tokens / c.median,
                "flops_per_token": fpt, "flop_formula": formula,
                "flops_per_s": fpt * plan.batch_size * positions / c.median,
                "mfu": mfu(fpt, plan.batch_size * positions, c.median, peak), "rounds_ms": [1000 * t for t in c.times],
            })
    inference = []
    for s in plan.sizes:
        base_ms = by[("inference", s, "base")].median
        for name in ("base", "lora unmerged", "lora merged"):
            c = by[("inference", s, name)]
            inference.append({"size": s, "case": name, "batch": 1, "seq_len": SIZES[s].block_size,
                              "ms": 1000 * c.median, "vs_base": c.median / base_ms,
                              "rounds_ms": [1000 * t for t in c.times]})
    full_context = SIZES[largest].block_size - PROMPT_TOKENS
    generation = []
    for c in (c for c in cases if c.section == "generation" and not c.name.startswith("hf ")):
        new = plan.generation_tokens if c.name.endswith(" new") else full_context
        generation.append({"size": largest, "case": c.name, "prompt_tokens": PROMPT_TOKENS, "new_tokens": new,
                           "seconds": c.median, "tokens_per_s": new / c.median, "runs": len(c.times),
                           "rounds_s": c.times})
    # a reference case against minitune's same work: speedup = its time / minitune's
    pairs = {**COUNTERPARTS, "hf generation": "with KV cache" + (f", {plan.generation_tokens} new"
                                                                 if plan.generation_tokens else "")}
    reference = [{"size": largest, "case": c.name, "seconds": c.median, "rounds_s": c.times,
                  "minitune_case": pairs[c.name], "minitune_seconds": by[(c.section, largest, pairs[c.name])].median,
                  "speedup": c.median / by[(c.section, largest, pairs[c.name])].median}
                 for c in cases if c.name in pairs]
    settings = {"sizes": list(plan.sizes), "rounds": rounds, "batch_size": plan.batch_size, "batch_note": plan.note,
                "quick": quick, "target_size": largest, "device_type": dev.type,
                "dtype": "bf16 autocast" if dev.type == "cuda" else "fp32",
                "matmul_dtype": str(plan.matmul_dtype).replace("torch.", ""),
                "strategies": {k: STRATEGY_NOTES[k] for k in plan.strategies},
                "model_configs": {s: SIZES[s].to_dict() for s in plan.sizes}}
    return {"settings": settings, "matmul": {"peak_flops_per_s": peak, "sizes": matmul},
            "training": training, "memory": memory, "inference": inference, "generation": generation,
            **({"reference": reference} if reference else {})}


# The course's claims as ratios on the largest size; on a GPU, the speed an H100 should reach at GPT-2's
# shape (plain PyTorch: no torch.compile, no custom kernels).
CPU_LIMITS = {"lora_step": 0.72, "mfu": 0.75}
GPU_LIMITS = {"lora_step": 0.70, "mfu": 0.25, "h100_full_ms": 42.0}


def check_targets(result: dict) -> list[dict]:
    """Each target on the largest size: its measured value, the limit, met or not."""
    st = result["settings"]
    s, gpu = st["target_size"], st.get("device_type") == "cuda"
    limits = GPU_LIMITS if gpu else CPU_LIMITS
    train = {r["strategy"]: r for r in result["training"] if r["size"] == s}
    mem = {r["strategy"]: r["measured"] for r in result["memory"] if r["size"] == s}
    inf = {r["case"]: r for r in result["inference"] if r["size"] == s}
    gen = {r["case"]: r for r in result["generation"]}

    def target(name: str, value: float, op: str, limit: float) -> dict:
        met = value <= limit if op == "<=" else value >= limit
        return {"name": name, "size": s, "value": value, "op": op, "limit": limit, "met": bool(met)}

    out = [target("LoRA step time / full step time",
                  train["lora"]["ms_per_step"] / train["full"]["ms_per_step"], "<=", limits["lora_step"])]
    if "lora-bf16" in train:
        out.append(target("LoRA (bf16 base) step time / full step time",
                          train["lora-bf16"]["ms_per_step"] / train["full"]["ms_per_step"], "<=", limits["lora_step"]))
    out += [
        target("LoRA optimizer bytes / full", mem["lora"]["optimizer"] / mem["full"]["optimizer"], "<=", 0.02),
        target("LoRA gradient bytes / full", mem["lora"]["gradients"] / mem["full"]["gradients"], "<=", 0.02),
        target("merged LoRA forward / base", inf["lora merged"]["vs_base"], "<=", 1.03),
        target("unmerged LoRA forward / base", inf["lora unmerged"]["vs_base"], "<=", 1.15),
        target("generation tok/s, cache / no cache",
               gen["with KV cache"]["tokens_per_s"] / gen["without cache"]["tokens_per_s"], ">=", 5.0),
        target("full fine-tuning MFU", train["full"]["mfu"], ">=", limits["mfu"]),
    ]
    ref = {r["case"]: r for r in result.get("reference", [])}
    if "hf full" in ref:  # minitune ahead of Hugging Face: time ratios below 1, generation at least 2x on a GPU
        out += [target("full step time / Hugging Face's", 1 / ref["hf full"]["speedup"], "<=", 1.0),
                target("LoRA step time / Hugging Face + PEFT's", 1 / ref["hf+peft lora"]["speedup"], "<=", 1.0),
                target("generation tok/s / Hugging Face's", ref["hf generation"]["speedup"], ">=",
                       2.0 if gpu else 1.0)]
    accelerator = result.get("machine", {}).get("accelerator", "")
    if gpu and "H100" in accelerator and s == "gpt2" and st["batch_size"] == 8:
        out.append(target("full step ms (H100, 8 x 1024)", train["full"]["ms_per_step"], "<=",
                          limits["h100_full_ms"]))
    return out
