"""What every lesson script shares: its flags, the base it starts from, tables, plots and the results file.

    lesson = Lesson.start(3, "LoRA", __doc__)     # parses --quick --device --base --out, loads the base
    lesson.table("Rank sweep", rows)              # prints an aligned table, keeps the rows
    lesson.conclude(f"... {ratio:.0%} ...")       # a sentence computed from measured numbers
    lesson.plot("rank.png", draw)                 # draw(ax) fills one matplotlib axis
    lesson.finish()                               # runs/lessons/03/results.json with every number,
                                                  # and summary.md, from which README's section is built

Every cell a sentence compares is measured over several seeds and compared by the package's one noise
rule (minitune.stats):

    runs = lesson.over_seeds(lambda seed: train_and_score(seed))   # one dict of numbers per seed
    runs["accuracy"]                              # a Cell: mean, sd, min, max, n; prints '0.812 ± 0.021'
    c = lesson.compare(lora["accuracy"], full["accuracy"], ("LoRA", "full"))
    lesson.conclude(f"On sentiment, {c.text()}.")  # '... beyond noise (Welch t, p = 0.013; 3 seeds each)'
    lesson.plot("acc.png", lambda ax: plot_seeds(ax, ranks, cells))   # every seed's point and mean ± sd

With --quick the lesson runs on the nano base and small sizes (seconds: the tests use it); without it,
on the tiny base (the one shipped with the package, or pretrained once and cached under runs/).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from minitune.cells import Budget, task_cell
from minitune.checkpoint import atomic_write, atomic_write_json
from minitune.data import pretraining_corpus, split
from minitune.evaluate import perplexity  # noqa: F401  (lessons import it from here)
from minitune.plots import bar_groups, bar_seeds, plot_seeds  # noqa: F401  (lessons import them from here)
from minitune.pretrain import load_run, runs_dir
from minitune.stats import Cell, Comparison, number_spec, best_of, differs, log_differs, summarize
from minitune.train import make_optimizer, TrainConfig, resolve_device

SEEDS = (0, 1, 2)     # every compared cell of a full run: at least three seeds
QUICK_SEEDS = (0, 1)  # --quick: the fewest that still have a spread, so the tests run the same code


def default_base(quick: bool, base: str | Path | None = None, quiet: bool = False) -> Path:
    """The base a lesson (or the sweep) starts from: `base` if given, else the built-in nano (quick) or tiny
    base (pretrain.builtin_base: the shipped one if it fits, else the cache, pretrained when missing)."""
    if base is not None:
        return Path(base)
    from minitune.pretrain import builtin_base

    return builtin_base("nano" if quick else "tiny", quiet=quiet)


@dataclass
class Lesson:
    """One run of a lesson: where it writes, how big it runs, and everything it measured."""

    number: int
    title: str
    quick: bool
    device: str
    base: Path
    out: Path
    results: dict = field(default_factory=lambda: {"tables": {}, "conclusions": [], "numbers": {},
                                                   "comparisons": []})
    started: float = field(default_factory=time.perf_counter)
    printed: list[str] = field(default_factory=list)  # the tables and conclusions, in order, for summary.md
    cells: dict = field(default_factory=lambda: {"trained": 0, "read back": 0})  # fine-tuning runs, by origin

    @classmethod
    def start(cls, number: int, title: str, doc: str | None = None, argv: list[str] | None = None) -> "Lesson":
        """Parse the lesson's flags, print its title, and make sure its base exists."""
        p = argparse.ArgumentParser(description=(doc or title).strip().splitlines()[0])
        p.add_argument("--quick", action="store_true", help="nano sizes, seconds (what the tests run)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
        p.add_argument("--base", default=None, help="a base run folder (default: the built-in tiny base)")
        p.add_argument("--out", default=None, help="where results go (default: runs/lessons/NN)")
        args = p.parse_args(argv)
        base = default_base(args.quick, args.base, quiet=args.quick)
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

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seeds each compared cell is run with: SEEDS, or QUICK_SEEDS with --quick."""
        return self.size(QUICK_SEEDS, SEEDS)

    def over_seeds(self, fn: Callable[[int], dict], seeds: Sequence[int] | None = None) -> "SeedRuns":
        """Run fn(seed) for each of the lesson's seeds (or `seeds`): every run's numbers and their Cells."""
        return over_seeds(fn, self.seeds if seeds is None else seeds)

    def compare(self, a, b, names: tuple[str, str] = ("A", "B"), log: bool = False) -> Comparison:
        """The noise rule (stats.differs: Welch's t on per-seed values) on a against b, kept for results.json.
        With log=True, on the values' logarithms (stats.log_differs: for perplexities and ratios)."""
        result = (log_differs if log else differs)(a, b, names)
        self.results["comparisons"].append(result.to_dict())
        return result

    @property
    def budget(self) -> Budget:
        """The standard fine-tuning budget of this mode (minitune.cells)."""
        return Budget.for_mode(self.quick)

    @cached_property
    def general_text(self) -> list[str]:
        """The held-out general text every lesson measures forgetting on (the same documents in each)."""
        return held_out_text(self.size(60_000, 200_000))

    def cell(self, task_name: str, config, seed: int, lr: float | None = None, base: str | Path | None = None
             ) -> dict:
        """`config` fine-tuned on the task with `seed` at the standard budget (and the strategy's default
        learning rate unless `lr`; from the lesson's base unless `base`), scored on test, with the general
        text's perplexity along the run: the same numbers in every lesson (minitune.cells)."""
        cell = task_cell(base or self.base, task_name, config, seed, self.budget, self.device,
                         general=self.general_text, lr=lr)
        self.cells["trained" if cell["trained"] else "read back"] += 1
        rate = "" if lr is None else f" / lr {lr:g}"
        origin = f"{cell['train_seconds']:.1f} s of training" if cell["trained"] else "read back from runs/cells"
        print(f"    {task_name} / {config.name}{rate} / seed {seed}: {cell['metric']} {cell['score']:.3f} ({origin})",
              flush=True)
        return cell

    def base_perplexity(self) -> float:
        """The base's perplexity on the general text, measured as the cells measure it along each run."""
        model, enc = self.load_base()
        return perplexity(model, enc, self.general_text, self.device, max_batches=self.budget.general_batches)

    def training_costs(self, config, task_name: str) -> dict:
        """strategy_costs of `config` applied to the base, on the first batch of 16 of the task's training split."""
        from minitune.finetune import supervised
        from minitune.strategies import apply_strategy

        model, enc = self.load_base()
        model = apply_strategy(model, config)
        x, y = supervised(self.budget.task(task_name), "train", enc, model.max_input_tokens, batch_size=16).batch(0)
        return strategy_costs(model, x, y, self.device)

    def cells_over_seeds(self, tasks, configs) -> dict:
        """Every config on every task over the lesson's seeds: {(task, config name): SeedRuns of cells}."""
        return {(t, c.name): self.over_seeds(lambda s, t=t, c=c: self.cell(t, c, s)) for t in tasks for c in configs}

    def run_dir(self, name: str) -> Path:
        """A folder for one fine-tuning run of this lesson."""
        return self.out / "runs" / name

    def section(self, heading: str) -> None:
        print(f"\n--- {heading} " + "-" * max(0, 70 - len(heading)), flush=True)

    def table(self, title: str, rows: list[dict], note: str | None = None) -> None:
        """Print rows (dicts with the same keys) as an aligned table, and keep them for results.json.

        A value may be a Cell (several seeds): it prints as mean ± sd and is kept with every seed's value.
        """
        self.results["tables"][title] = plain(rows)
        lines = [title, format_table(rows)]
        counts = sorted({v.n for r in rows for v in r.values() if isinstance(v, Cell)})
        if counts:
            seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
            lines.append(f"(cells with ±: mean ± sample sd over {seeds} seeds)")
        if note:
            lines.append(note)
        text = "\n".join(lines)
        self.printed.append(text)
        print(f"\n{text}", flush=True)

    def record(self, name: str, value) -> None:
        """Keep one named number (or small structure, Cells and Comparisons included) for results.json."""
        self.results["numbers"][name] = plain(value)

    def conclude(self, sentence: str) -> None:
        """Print a conclusion (built from measured numbers by the caller) and keep it."""
        self.results["conclusions"].append(sentence)
        self.printed.append(f"=> {sentence}")
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
        atomic_write(self.out / "summary.md", lambda tmp: Path(tmp).write_text(self.summary(seconds)))
        print(f"\nLesson {self.number} took {seconds:.0f}s; every number above is in {self.out / 'results.json'}")
        return self.results

    def summary(self, seconds: float) -> str:
        """The lesson's tables and conclusions as markdown, with where and how long it ran (README's
        "What the lessons show" is built from these files: `minitune summary --readme README.md`)."""
        from minitune.sweep import machine

        m = machine(self.device)
        where = (f"{m['processor']}, {m['cpus']} CPUs, {m['torch_threads']} torch threads, device {self.device}, "
                 f"torch {m['torch']}")
        mode = " (--quick)" if self.quick else ""
        body = "\n\n".join(self.printed)
        runs = sum(self.cells.values())
        reused = (f" Of its {runs} fine-tuning runs, {self.cells['read back']} were read back from runs/cells, "
                  "trained by an earlier lesson (minitune/cells.py)." if self.cells["read back"] else "")
        return (f"### Lesson {self.number}: {self.title}{mode}\n\n"
                f"Ran in {seconds:.0f} s on {where}, {time.strftime('%Y-%m-%d')}.{reused}\n\n```\n{body}\n```\n")


def format_table(rows: list[dict]) -> str:
    """Rows of dicts as aligned text columns: numbers right-aligned, text left."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    numeric = [all(isinstance(r.get(c), (int, float, Cell)) for r in rows) for c in cols]

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
        return format(v, number_spec(v))
    return str(v)


def seed_spread(runs: list[dict], keys: tuple[str, ...] = ("accuracy", "label loss")) -> dict:
    """Largest minus smallest of each measure over runs that differ only in their seed (a description of
    the noise; whether two settings differ is decided by minitune.stats.differs)."""
    return {k: max(r[k] for r in runs) - min(r[k] for r in runs) for k in keys}


@dataclass
class SeedRuns:
    """One setting run once per seed: each run's dict of numbers, and a Cell per measure."""

    seeds: tuple[int, ...]
    runs: list[dict]

    def __getitem__(self, key: str) -> Cell:
        """The Cell of one measure over the seeds."""
        return summarize([r[key] for r in self.runs])

    def __len__(self) -> int:
        return len(self.runs)

    def cells(self, keys: Sequence[str] | None = None) -> dict[str, Cell]:
        """A Cell for each of `keys` (default: every measure that is a number in every run)."""
        if keys is None:
            keys = [k for k, v in self.runs[0].items()
                    if _is_real(v) and all(_is_real(r.get(k)) for r in self.runs)]
        return {k: self[k] for k in keys}


def over_seeds(fn: Callable[[int], dict], seeds: Sequence[int] = SEEDS) -> SeedRuns:
    """Call fn(seed) once per seed (fn returns a dict of numbers) and keep every run."""
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("over_seeds needs at least one seed")
    return SeedRuns(seeds, [fn(s) for s in seeds])


def plain(obj):
    """obj with every Cell and Comparison turned into plain numbers, ready for JSON."""
    if isinstance(obj, (Cell, Comparison)):
        return obj.to_dict()
    if isinstance(obj, SeedRuns):
        return {"seeds": list(obj.seeds), "runs": plain(obj.runs)}
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def and_list(items: Sequence[str], empty: str = "none") -> str:
    """'a', 'a and b', 'a, b and c' (or `empty`): names in a sentence. Items that hold commas themselves
    (a name with its numbers) are joined by semicolons: 'a (1, 2); b (3, 4)'."""
    items = list(items)
    if not items:
        return empty
    if any("," in item for item in items):
        return "; ".join(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def best_per_task(runs: dict, tasks: Sequence[str], names: Sequence[str], key: str = "score") -> tuple[dict, str]:
    """For each task, the strategy with the best mean `key` and those the noise rule cannot tell from it
    (runs: {(task, strategy): SeedRuns}): the stats.Best per task, and the sentence that says it."""
    best = {t: best_of({s: runs[(t, s)][key] for s in names}) for t in tasks}
    sentence = "Best test score per task, with every strategy the noise rule cannot tell from it: " + "; ".join(
        f"{t}: {b.best} ({runs[(t, b.best)][key].mean:.3f})"
        + (f", tied with {and_list([s for s in b.tied if s != b.best])}" if len(b.tied) > 1 else ", ahead of all")
        for t, b in best.items()) + "."
    return best, sentence


def held_out_text(target_bytes: int) -> list[str]:
    """General tiny-world documents drawn with another seed than the base's corpus: a test of what it knows."""
    return split(pretraining_corpus(target_bytes=target_bytes, seed=1), 0.5, seed=1)[1]


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
