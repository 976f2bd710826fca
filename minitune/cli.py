"""The `minitune` command line: pretrain, finetune, evaluate, generate, sweep, time-runs, docs, bench, build-tokenizer.

Each subcommand calls the same functions the lessons call, so what a lesson shows can be repeated on
your own data.
"""

from __future__ import annotations

import argparse
import json
import sys

from minitune import distributed
from minitune.errors import MinituneError, TrainingInterrupted
from minitune.model import PRESETS


def _pretrain(args: argparse.Namespace) -> None:
    from minitune.pretrain import pretrain

    pretrain(args.preset, out=args.out, max_steps=args.max_steps, seed=args.seed, device=args.device,
             corpus=args.corpus, tokenizer=args.tokenizer, resume=args.resume,
             checkpoint_every=args.checkpoint_every)


def _build_tokenizer(args: argparse.Namespace) -> None:
    from minitune.tokenizer import BUILTIN_RANKS, build_builtin_tokenizer

    path = build_builtin_tokenizer(args.out or BUILTIN_RANKS)
    print(f"wrote {path}")


def strategy_from_args(args: argparse.Namespace):
    """The strategy config the finetune flags describe."""
    from minitune.strategies import (
        AdapterConfig, DoRAConfig, FullConfig, IA3Config, LoRAConfig, PrefixTuningConfig, PromptTuningConfig,
        QLoRAConfig,
    )

    low_rank = dict(r=args.r, alpha=args.alpha, dropout=args.lora_dropout, rslora=args.rslora,
                    train_embedding=args.train_embedding,
                    targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()))
    n_tokens = {} if args.n_tokens is None else {"n_tokens": args.n_tokens}  # each strategy has its own default
    if args.strategy == "full":
        return FullConfig()
    if args.strategy == "lora":
        return LoRAConfig(**low_rank)
    if args.strategy == "dora":
        return DoRAConfig(**low_rank)
    if args.strategy == "qlora":
        return QLoRAConfig(**low_rank, quant_block=args.quant_block, double_quant=not args.no_double_quant)
    if args.strategy == "adapter":
        return AdapterConfig(bottleneck=args.bottleneck, placement=args.placement, activation=args.activation,
                             train_layernorm=args.train_layernorm)
    if args.strategy == "ia3":
        return IA3Config()
    if args.strategy == "prefix":
        return PrefixTuningConfig(**n_tokens, hidden=args.prefix_hidden)
    return PromptTuningConfig(**n_tokens, init=args.prompt_init, init_text=args.init_text)


def _finetune(args: argparse.Namespace) -> None:
    from minitune.evaluate import evaluate_task
    from minitune.finetune import finetune, resolve_task

    task = resolve_task(args.task, args.data, args.kind, args.seed)
    model, enc, out = finetune(args.base, task, strategy_from_args(args), args.out, args.max_steps,
                               args.batch_size, args.lr, args.seed, args.device, resume=args.resume,
                               checkpoint_every=args.checkpoint_every)
    print(f"saved to {out}")
    if args.eval:
        _print_metrics(evaluate_task(model, enc, task, "test", seed=args.seed, limit=args.limit))


def _evaluate(args: argparse.Namespace) -> None:
    from minitune.evaluate import evaluate_task
    from minitune.finetune import open_run, resolve_task

    model, enc, _ = open_run(args.run)
    task = resolve_task(args.task, args.data, args.kind, args.seed)
    _print_metrics(evaluate_task(model, enc, task, args.split, args.shots, args.limit, args.seed))


def _print_metrics(result: dict) -> None:
    for sample in result.pop("samples"):
        print(f"--- prompt\n{sample['prompt']}\n--- model: {sample['prediction']!r}   expected: {sample['target']!r}")
    print(json.dumps(result, indent=2))


def _generate(args: argparse.Namespace) -> None:
    import torch

    from minitune.evaluate import generate_text
    from minitune.finetune import open_run

    model, enc, _ = open_run(args.run)
    g = torch.Generator().manual_seed(args.seed)
    print(generate_text(model, enc, args.prompt, args.max_new_tokens, args.stop, args.temperature,
                        args.top_k, generator=g))


def _sweep(args: argparse.Namespace) -> None:
    from minitune.course.lesson import default_base
    from minitune.course.arms import split_arms
    from minitune.course.recorded import changes
    from minitune.course.sweep import SweepSettings, run_sweep

    names = lambda text: tuple(t.strip() for t in text.split(",") if t.strip())  # noqa: E731
    given = {"strategies": split_arms(args.strategies) if args.strategies else None,
             "families": names(args.families) if args.families else None,
             "tasks": names(args.tasks) if args.tasks else None,
             "seeds": tuple(int(s) for s in names(args.seeds)) if args.seeds else None,
             "steps": args.steps, "span": args.span, "batch_size": args.batch_size,
             "evals": args.evals}
    settings = SweepSettings.for_mode(args.quick, **{k: v for k, v in given.items() if v is not None})
    base = default_base(args.quick, args.base, quiet=args.quick)
    record = run_sweep(base, settings, args.out, args.device, workers=args.workers)  # records the command, every setting spelled out
    changed = changes(record)
    print(f"sweep took {record['seconds'] / 60:.1f} min; defaults it would change: "
          + ("; ".join(changed) if changed else "none"))


def _time_runs(args: argparse.Namespace) -> None:
    from minitune.course.lesson import default_base, held_out_text
    from minitune.course.runs import Budget
    from minitune.course.timing import format_rows, time_runs
    from minitune.strategies import config_from_dict

    budget = Budget.for_mode(args.quick)
    configs = [config_from_dict(name.strip(), {}) for name in args.strategies.split(",")]  # a bad name: ConfigError
    base = default_base(args.quick, args.base, quiet=args.quick)
    general = held_out_text(60_000 if args.quick else 200_000)  # the lessons' general text
    rows = time_runs(base, args.tasks.split(","), configs, budget, general, workers=args.workers)
    print(f"One shared run per task and strategy ({budget.steps} steps of {budget.batch_size}, evaluated every "
          f"{budget.eval_every}), wall seconds by part (minitune/course/timing.py):")
    print(format_rows(rows))


def _docs(args: argparse.Namespace) -> None:
    from minitune.course.docs import build_docs

    for path in build_docs(args.docs, args.readme):
        print(f"wrote {path}")


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="minitune", description="Fine-tuning, built by hand.")
    sub = p.add_subparsers(dest="command", required=True)

    pre = sub.add_parser("pretrain", help="pretrain a base model on the tiny world (or your corpus)")
    pre.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model size (default: tiny)")
    pre.add_argument("--out", default=None, help="run folder to write (default: runs/base-PRESET)")
    pre.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    pre.add_argument("--corpus", default=None, help="a .txt (blank-line separated) or .jsonl ({'text'}) corpus")
    pre.add_argument("--tokenizer", default="minitune", help="minitune, gpt2, or a GPT-2 tokenizer folder")
    _resume_args(pre)
    pre.set_defaults(handler=_pretrain)

    ft = sub.add_parser("finetune", help="fine-tune a base on a task with one strategy")
    ft.add_argument("--base", default=None, help="base run folder or GPT-2 checkpoint (default: the tiny base shipped with the package)")
    _task_args(ft)
    ft.add_argument("--strategy", default="lora",
                    choices=["full", "lora", "adapter", "prompt", "dora", "ia3", "prefix", "qlora"])
    ft.add_argument("--out", default=None, help="run folder to write (default: runs/TASK-STRATEGY)")
    ft.add_argument("--max-steps", type=int, default=300)
    ft.add_argument("--batch-size", type=int, default=16)
    ft.add_argument("--lr", type=float, default=None,
                    help="peak learning rate (default: the strategy's for the task's kind, classification or generation)")
    ft.add_argument("--device", default="auto")
    ft.add_argument("--eval", action="store_true", help="evaluate on the test split afterwards")
    ft.add_argument("--limit", type=int, default=None, help="evaluate on at most this many examples")
    _resume_args(ft)
    lora = ft.add_argument_group("LoRA (and DoRA, QLoRA)")
    lora.add_argument("--r", type=int, default=8)
    lora.add_argument("--alpha", type=float, default=16)
    lora.add_argument("--lora-dropout", type=float, default=0.0)
    lora.add_argument("--targets", default="c_attn", help="comma-separated: c_attn, attn.c_proj, c_fc, mlp.c_proj")
    lora.add_argument("--rslora", action="store_true", help="scale by alpha/sqrt(r) instead of alpha/r")
    lora.add_argument("--train-embedding", action="store_true",
                      help="also train the token embedding (and the output head tied to it), as PEFT's modules_to_save")
    lora.add_argument("--quant-block", type=int, default=64, help="QLoRA: weights per NF4 absmax block")
    lora.add_argument("--no-double-quant", action="store_true", help="QLoRA: keep the absmaxes in float32")
    ad = ft.add_argument_group("adapters")
    ad.add_argument("--bottleneck", type=int, default=16)
    ad.add_argument("--placement", default="houlsby", choices=["houlsby", "pfeiffer"])
    ad.add_argument("--activation", default="gelu", choices=["gelu", "relu"])
    ad.add_argument("--train-layernorm", action="store_true")
    pt = ft.add_argument_group("prompt and prefix tuning")
    pt.add_argument("--n-tokens", type=int, default=None, help="soft prompt or prefix length (default: 20 for "
                    "prompt, 10 for prefix)")
    pt.add_argument("--prompt-init", default="vocab", choices=["random", "vocab", "text"])
    pt.add_argument("--init-text", default=None)
    pt.add_argument("--prefix-hidden", type=int, default=64, help="prefix: width of the training-time MLP (0: none)")
    ft.set_defaults(handler=_finetune)

    ev = sub.add_parser("evaluate", help="score a run (base or fine-tuned) on a task")
    ev.add_argument("--run", required=True, help="a base or fine-tuning run folder")
    _task_args(ev)
    ev.add_argument("--split", default="test", choices=["train", "validation", "test"])
    ev.add_argument("--shots", type=int, default=0, help="solved examples placed before each prompt")
    ev.add_argument("--limit", type=int, default=None, help="at most this many examples")
    ev.set_defaults(handler=_evaluate)

    gen = sub.add_parser("generate", help="continue a prompt with a run's model")
    gen.add_argument("--run", required=True)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=60)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--stop", default="<|endoftext|>", help="cut the text where this string appears")
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(handler=_generate)

    sw = sub.add_parser("sweep", help="choose each strategy's learning rate on the validation split")
    sw.add_argument("--quick", action="store_true", help="nano base, a few steps, 2 seeds: seconds (for tests)")
    sw.add_argument("--base", default=None, help="base run folder (default: the built-in tiny base; nano with --quick)")
    sw.add_argument("--out", default=None, help="where sweep.json and sweep.md go (default: runs/sweep[-quick])")
    sw.add_argument("--strategies", default=None, help="comma-separated (default: full,lora,adapter,prompt); a "
                    "recipe sets fields of a strategy's config: 'lora(r=4, targets=c_attn+mlp.c_fc)'")
    sw.add_argument("--families", default=None, help="comma-separated (default: classification,generation)")
    sw.add_argument("--tasks", default=None, help="comma-separated tasks to sweep instead of the families' own "
                    "(sentiment, qa); a recipe or another task's choice is recorded, never a package default")
    sw.add_argument("--seeds", default=None, help="comma-separated seeds (default: 0,1,2)")
    sw.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: 160)")
    sw.add_argument("--batch-size", type=int, default=None, help="examples per step (default: 16)")
    sw.add_argument("--evals", type=int, default=None, help="validation evaluations per run, each kept in the "
                    "record as the run's curve (default: 4)")
    sw.add_argument("--span", type=int, default=None, help="ladder rungs each side of the default (default: 1)")
    sw.add_argument("--device", default="auto")
    sw.add_argument("--workers", type=int, default=None, help="runs side by side, one torch thread each "
                    "(default: $MINITUNE_WORKERS, else one per core; 1: one after another)")
    sw.set_defaults(handler=_sweep)

    tr = sub.add_parser("time-runs", help="where a lesson's fine-tuning run spends its time, task by task")
    tr.add_argument("--tasks", default="sentiment,topic,summarization,qa,code", help="comma-separated")
    tr.add_argument("--strategies", default="full,lora", help="comma-separated (default: full,lora)")
    tr.add_argument("--quick", action="store_true", help="the nano base and the --quick budget")
    tr.add_argument("--base", default=None, help="base run folder (default: the built-in tiny base)")
    tr.add_argument("--workers", type=int, default=1, help="runs side by side (default: 1, so none slows another)")
    tr.set_defaults(handler=_time_runs)

    do = sub.add_parser("docs", help="docs/claims.md and README's headline table, from docs/lessons/NN.json")
    do.add_argument("--docs", default="docs", help="the docs folder (its lessons/ holds the full runs' results)")
    do.add_argument("--readme", default="README.md", help="the README whose headline table to rewrite")
    do.set_defaults(handler=_docs)

    from minitune.bench import add_parser as add_bench_parser

    add_bench_parser(sub)

    tok = sub.add_parser("build-tokenizer", help="retrain the built-in BPE vocabulary (reproducible)")
    tok.add_argument("--out", default=None, help="ranks file to write (default: the package asset)")
    tok.set_defaults(handler=_build_tokenizer)
    return p


def _resume_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between resume states (0: only on a signal)")


def _task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=None, help="built-in task: sentiment, topic, summarization, qa, code")
    p.add_argument("--data", default=None, help="your JSONL file instead of a built-in task")
    p.add_argument("--kind", default=None, choices=["classification", "summarization", "qa", "code"],
                   help="how to read --data")
    p.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `minitune` console script."""
    args = parser().parse_args(argv)
    try:
        args.handler(args)
    except TrainingInterrupted as e:
        print(f"minitune: {e}", file=sys.stderr)
        return 130
    except MinituneError as e:
        print(f"minitune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minitune: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.teardown()
    return 0
