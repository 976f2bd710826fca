"""The `minitune` command line: `minitune pretrain`, `minitune build-tokenizer`."""

from __future__ import annotations

import argparse
import sys

from minitune.errors import MinituneError
from minitune.model import PRESETS


def _pretrain(args: argparse.Namespace) -> None:
    from minitune.pretrain import pretrain

    pretrain(args.preset, out=args.out, max_steps=args.max_steps, seed=args.seed, device=args.device,
             corpus=args.corpus, tokenizer=args.tokenizer)


def _build_tokenizer(args: argparse.Namespace) -> None:
    from minitune.tokenizer import BUILTIN_RANKS, build_builtin_tokenizer

    path = build_builtin_tokenizer(args.out or BUILTIN_RANKS)
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
    pre.set_defaults(run=_pretrain)

    tok = sub.add_parser("build-tokenizer", help="retrain the built-in BPE vocabulary (reproducible)")
    tok.add_argument("--out", default=None, help="ranks file to write (default: the package asset)")
    tok.set_defaults(run=_build_tokenizer)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `minitune` console script."""
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except MinituneError as e:
        print(f"minitune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minitune: interrupted", file=sys.stderr)
        return 130
    return 0
