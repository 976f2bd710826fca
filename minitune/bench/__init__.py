"""`minitune bench`: what each strategy costs in time and bytes, measured on this machine, in one run.

    sizes.py    what runs on each device (bench_sizes) and how a step's work is counted (FLOPs, MFU)
    cases.py    the timed cases: training steps, forward passes, generation, the matmul reference
    timing.py   warm-up, round-robin rounds, medians; the machine's description
    run.py      one run: build the cases, time them, collect the results, check the targets
    report.py   the results as aligned text, Markdown, and files (bench.json, bench.md, bench.txt)
    profile.py  torch.profiler over a few training steps: time by kind of op
    reference.py  the same work on Hugging Face's GPT-2 and PEFT's LoRA (`--reference hf`)

Targets (checked on the largest size run, printed as met / NOT MET, never tuned to pass). On the CPU:
LoRA step <= 0.72 x full; LoRA optimizer and gradient bytes <= 2% of full; merged LoRA forward within
3% of the base, unmerged within 15%; generation with the cache >= 5 x without; full fine-tuning MFU
>= 75%. On a GPU, at GPT-2's 124M shape: LoRA step <= 0.70 x full (with a float32 base and with a bf16
one); full fine-tuning MFU >= 25%; on an H100 at 8 x 1024, a full step <= 42 ms; the rest as on the CPU.

What bounds each case. On the CPU, as `--profile` measured it (large size, one thread); on a GPU, what to
expect until a GPU run's `--profile` confirms or corrects it:

- Training step, full fine-tuning: the matmuls (6N FLOPs per token). On the CPU at the large size they
  run near the matmul reference and take most of the step; attention (SDPA), GELU and the loss are most
  of the rest. On a GPU the matmuls should run near the bf16 peak, leaving the memory-bound work
  (LayerNorm, GELU, residual adds, autocast's casts, the float32 logits and the cross-entropy over 50,257
  words, AdamW) as what keeps MFU below the reference.
- Training step, LoRA: the forward pass and the gradients with respect to every layer's input (4N), but
  no weight gradient for a frozen layer and no optimizer state. On the CPU its matmul time is that of a
  step with gradients for the input alone (a frozen base); what keeps its time ratio above 4N/6N is the
  work it shares with full fine-tuning (attention, GELU, the loss), and its own thin r-wide matmuls,
  which run far below the reference, add little. On a GPU a bf16 base also removes the cast of every
  frozen weight that autocast otherwise repeats in each forward pass.
- Forward at batch 1: matmul-bound at the larger sizes on the CPU; on a GPU a pass of one sequence is
  expected to be bound by kernel launches, so unmerged LoRA would cost its extra launches, not its FLOPs.
- Generation at batch 1: each cached token is matrix-vector work (weight reads, per-op overhead) on the
  CPU, and kernel launches on a GPU, where a host read per token (a sync) would cost more than the
  token's arithmetic: `GPT.generate` makes none. Without the cache each token re-runs the whole prefix.
"""

from __future__ import annotations

import argparse

from minitune.bench.cases import STRATEGIES, build_models, generation_case, inference_case, matmul_case, training_case
from minitune.bench.profile import profile_steps
from minitune.bench.report import format_markdown, format_report, write_outputs
from minitune.bench.run import check_targets, parse_sizes, run_bench
from minitune.bench.sizes import SIZES, BenchPlan, bench_sizes, flop_counts, flops_per_token, mfu
from minitune.bench.timing import Case, run_interleaved
from minitune.checkpoint import atomic_write_json


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `minitune bench` on an argparse subparsers object."""
    p = subparsers.add_parser("bench", help="time and size every strategy on this machine")
    p.add_argument("--sizes", default="auto", help=f"comma-separated, from {sorted(SIZES)} "
                   "(default: auto = tiny,large on a CPU, gpt2 on a GPU)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds, round-robin over cases (default: 5)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="training batch (default: 8 on a CPU; on a GPU 8 x 1024 tokens, halved to fit its memory)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write bench.json, bench.md, bench.txt (and profile.txt with --profile) to this folder")
    p.add_argument("--quick", action="store_true", help="nano model, 2 rounds: a smoke test in seconds")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--profile", action="store_true",
                   help="afterwards, profile the training steps of full fine-tuning and LoRA on the largest size")
    p.add_argument("--reference", choices=["hf"], default=None,
                   help="also time Hugging Face's GPT-2 and PEFT's LoRA on the largest size (needs transformers, peft)")
    p.set_defaults(handler=handle)
    return p


def handle(args: argparse.Namespace) -> dict:
    """Run the bench the flags describe, print the tables, and write the files asked for."""
    result = run_bench(sizes=args.sizes, rounds=args.rounds, batch_size=args.batch_size, device=args.device,
                       quick=args.quick, reference=getattr(args, "reference", None))
    print(format_report(result), flush=True)
    profile_text = None
    if getattr(args, "profile", False):
        st = result["settings"]
        strategies = tuple(s for s in ("full", "lora", "lora-bf16") if s in st["strategies"])
        profile_text, result["profile"] = profile_steps(st["target_size"], strategies, st["batch_size"], args.device)
        print(profile_text, flush=True)
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    if getattr(args, "out", None):
        for path in write_outputs(args.out, result, profile_text):
            print(f"wrote {path}")
    return result


__all__ = ["SIZES", "STRATEGIES", "BenchPlan", "Case", "add_parser", "bench_sizes", "build_models", "check_targets",
           "flop_counts", "flops_per_token", "format_markdown", "format_report", "generation_case", "handle",
           "inference_case", "matmul_case", "mfu", "parse_sizes", "profile_steps", "run_bench", "run_interleaved",
           "training_case", "write_outputs"]
