"""What every lesson script shares: its flags, the base it starts from, tables, plots and the results file.

    lesson = Lesson.start(3, "LoRA", __doc__)     # parses --quick --device --base --out, loads the base
    lesson.table("Rank sweep", rows)              # prints an aligned table, keeps the rows
    lesson.conclude(f"... {ratio:.0%} ...")       # a sentence computed from measured numbers
    lesson.plot("rank.png", draw)                 # draw(ax) fills one matplotlib axis
    lesson.finish()                               # runs/lessons/03/results.json with every number

With --quick the lesson runs on the nano base and small sizes (seconds: the tests use it); without it,
on the tiny base (pretrained once, then cached under runs/).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minitune.checkpoint import atomic_write, atomic_write_json
from minitune.data import pretraining_corpus, split
from minitune.data.batches import TokenStream, encode_documents
from minitune.pretrain import load_run, pretrain, runs_dir
from minitune.train import evaluate_loss, make_optimizer, TrainConfig, resolve_device


@dataclass
class Lesson:
    """One run of a lesson: where it writes, how big it runs, and everything it measured."""

    number: int
    title: str
    quick: bool
    device: str
    base: Path
    out: Path
    results: dict = field(default_factory=lambda: {"tables": {}, "conclusions": [], "numbers": {}})
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, number: int, title: str, doc: str | None = None, argv: list[str] | None = None) -> "Lesson":
        """Parse the lesson's flags, print its title, and make sure its base exists."""
        p = argparse.ArgumentParser(description=(doc or title).strip().splitlines()[0])
        p.add_argument("--quick", action="store_true", help="nano sizes, seconds (what the tests run)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
        p.add_argument("--base", default=None, help="a base run folder (default: the cached tiny base)")
        p.add_argument("--out", default=None, help="where results go (default: runs/lessons/NN)")
        args = p.parse_args(argv)
        preset = "nano" if args.quick else "tiny"
        base = Path(args.base) if args.base else runs_dir() / f"base-{preset}"
        if args.base is None and not (base / "config.json").is_file():
            print(f"(no {preset} base yet: pretraining it once, it is cached for next time)", flush=True)
            pretrain(preset, out=base, quiet=args.quick)
        out = Path(args.out) if args.out else runs_dir() / "lessons" / f"{number:02d}"
        out.mkdir(parents=True, exist_ok=True)
        lesson = cls(number, title, args.quick, str(resolve_device(args.device)), base, out)
        bar = "=" * (len(title) + 11)
        print(f"{bar}\nLesson {number}: {title}\n{bar}\nbase: {base}{'   (quick mode)' if args.quick else ''}\n",
              flush=True)
        return lesson

    def load_base(self):
        """A fresh copy of the base: (model, tokenizer)."""
        model, enc, _ = load_run(self.base, self.device)
        return model, enc

    def size(self, quick, full):
        """Pick the quick-mode or the full-mode value of a setting."""
        return quick if self.quick else full

    def run_dir(self, name: str) -> Path:
        """A folder for one fine-tuning run of this lesson."""
        return self.out / "runs" / name

    def section(self, heading: str) -> None:
        print(f"\n--- {heading} " + "-" * max(0, 70 - len(heading)), flush=True)

    def table(self, title: str, rows: list[dict], note: str | None = None) -> None:
        """Print rows (dicts with the same keys) as an aligned table, and keep them for results.json."""
        self.results["tables"][title] = rows
        print(f"\n{title}")
        print(format_table(rows))
        if note:
            print(note)

    def record(self, name: str, value) -> None:
        """Keep one named number (or small structure) for results.json."""
        self.results["numbers"][name] = value

    def conclude(self, sentence: str) -> None:
        """Print a conclusion (built from measured numbers by the caller) and keep it."""
        self.results["conclusions"].append(sentence)
        print(f"=> {sentence}", flush=True)

    def plot(self, name: str, draw, figsize=(6.4, 4.0)) -> Path:
        """Save a PNG drawn by draw(ax) into the lesson's folder."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=figsize)
        draw(ax)
        fig.tight_layout()
        path = self.out / name
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)
        print(f"(plot: {path})")
        return path

    def finish(self) -> dict:
        """Write results.json and say how long the lesson took."""
        seconds = time.perf_counter() - self.started
        self.results.update(lesson=self.number, title=self.title, quick=self.quick, base=str(self.base),
                            device=self.device, seconds=round(seconds, 1))
        atomic_write_json(self.out / "results.json", self.results)
        print(f"\nLesson {self.number} took {seconds:.0f}s; every number above is in {self.out / 'results.json'}")
        return self.results


def format_table(rows: list[dict]) -> str:
    """Rows of dicts as aligned text columns: numbers right-aligned, text left."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    numeric = [all(isinstance(r.get(c), (int, float)) for r in rows) for c in cols]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(row) for row in cells])


def _cell(v) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def seed_spread(runs: list[dict], keys: tuple[str, ...] = ("accuracy", "label loss")) -> dict:
    """Largest minus smallest of each measure over runs that differ only in their seed: the noise floor."""
    return {k: max(r[k] for r in runs) - min(r[k] for r in runs) for k in keys}


def held_out_text(target_bytes: int) -> list[str]:
    """General tiny-world documents drawn with another seed than the base's corpus: a test of what it knows."""
    return split(pretraining_corpus(target_bytes=target_bytes, seed=1), 0.5, seed=1)[1]


def perplexity(model, enc, docs: list[str], device="cpu", max_batches: int = 20) -> float:
    """exp(mean cross-entropy per token) of the model on documents (joined by <|endoftext|>)."""
    stream = TokenStream(encode_documents(enc, docs), model.max_input_tokens, batch_size=16,
                         max_eval_batches=max_batches)
    return math.exp(evaluate_loss(model, stream.eval_batches(), device))


def strategy_costs(model, x: torch.Tensor, y: torch.Tensor, device="cpu") -> dict:
    """What training this (strategy-applied) model costs on batch (x, y): parameter counts, bytes of the
    training state (measured), the size of its saved trainable part, and the median step time."""
    from minitune.memory import file_size, measure_training_memory
    from minitune.strategies import save_trainable, trainable_parameters

    trainable, total = trainable_parameters(model)
    with tempfile.TemporaryDirectory() as tmp:
        size = file_size(save_trainable(model, tmp) / "trainable.safetensors")
    return {"trainable": trainable, "total": total, "memory": measure_training_memory(model, (x, y)), "file": size,
            "step_ms": step_time_ms(model, x, y, device=device)}


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
