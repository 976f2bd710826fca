"""A lesson's run: its flags, the base it starts from, what it measured, and the chapter page it writes.

A lesson is a percent-format script (cells marked `# %%` for code and `# %% [markdown]` for prose), so
it runs top to bottom as `python lessons/NN_name.py` and opens cell by cell as a notebook (jupytext,
VS Code). Its code cells call the library (apply_strategy, train, evaluate) and a few of these:

    lesson = Lesson.start(3, "LoRA")                 # --quick --device --base --out; loads the base
    runs = lesson.over_seeds(lambda seed: {...})     # one dict of numbers per seed; runs["accuracy"] is a SeedValues
    run = lesson.shared_run("qa", LoRAConfig(), 0)   # a fine-tuning run other lessons share (course/runs.py)
    lesson.table("Rank sweep", rows)                 # prints an aligned table, keeps the rows
    lesson.claim("small ranks suffice", "Hu et al. 2021", r8, r64, ("r 8", "r 64"), expect=None)
    lesson.note(f"... {ratio:.0%} ...")              # a sentence of measured numbers that compares nothing
    lesson.plot("rank.png", draw)                    # draw(ax) fills one matplotlib axis
    lesson.finish()                                  # runs/lessons/NN/results.json; docs/lessons/NN.md

Every claim goes through the noise rule (minitune.course.stats) and is worded by report.Claim. A full
run (not --quick) of a lesson file in lessons/ writes its chapter page, docs/lessons/NN.md: the
lesson's prose and code cell by cell, each code cell followed by the tables, claims and plots it made.
In a notebook the flags come from the environment variable MINITUNE_LESSON_ARGS (e.g. "--quick").
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

from minitune.checkpoint import atomic_write, atomic_write_json
from minitune.course.costs import strategy_costs, step_time_ms  # noqa: F401  (lessons import them from here)
from minitune.course import pool
from minitune.course.pool import WORKERS_VARIABLE, run_all, workers_wanted
from minitune.course.plots import bar_groups, bar_seeds, plot_seeds  # noqa: F401  (lessons import them from here)
from minitune.course.report import Claim, chapter_page, correct_cited, format_table, markdown_table, seeds_note
from minitune.course.runs import Budget, shared_run
from minitune.course.stats import SeedValues, Comparison, differs, log_differs, summarize
from minitune.data import pretraining_corpus, split
from minitune.evaluate import perplexity
from minitune.pretrain import load_run, runs_dir
from minitune.train import resolve_device

SEEDS = (0, 1, 2)     # every compared setting of a full run: at least three seeds
QUICK_SEEDS = (0, 1)  # --quick: the fewest that still have a spread, so the tests run the same code
ARGS_VARIABLE = "MINITUNE_LESSON_ARGS"  # a notebook's flags (a kernel's own argv is not the lesson's)


def default_base(quick: bool, base: str | Path | None = None, quiet: bool = False) -> Path:
    """The base a lesson (or the sweep) starts from: `base` if given, else the built-in nano (quick) or tiny
    base (pretrain.builtin_base: the shipped one if it fits, else the cache, pretrained when missing)."""
    if base is not None:
        return Path(base)
    from minitune.pretrain import builtin_base

    return builtin_base("nano" if quick else "tiny", quiet=quiet)


def lesson_args(argv: list[str] | None) -> list[str] | None:
    """The flags: argv if given; in a notebook kernel, MINITUNE_LESSON_ARGS; else the command line's."""
    if argv is not None:
        return argv
    if _in_kernel():
        return shlex.split(os.environ.get(ARGS_VARIABLE, ""))
    return None


def _in_kernel() -> bool:
    """True inside a running Jupyter kernel (where sys.argv holds the kernel's flags, not the lesson's)."""
    app = sys.modules.get("ipykernel.kernelapp")
    return app is not None and app.IPKernelApp.initialized()


@dataclass
class Lesson:
    """One run of a lesson: where it writes, how big it runs, and everything it measured."""

    number: int
    title: str
    quick: bool
    device: str
    base: Path
    out: Path
    source: Path | None = None  # the lesson's script, when it runs as one: its cells make the chapter page
    docs: Path | None = None    # where the chapter page goes (None: no page)
    results: dict = field(default_factory=lambda: {"tables": {}, "claims": [], "notes": [], "numbers": {},
                                                   "comparisons": []})
    started: float = field(default_factory=time.perf_counter)
    blocks: list[tuple[int, str]] = field(default_factory=list)  # (line of the lesson, markdown) for the page
    origins: Counter = field(default_factory=lambda: Counter({"trained": 0, "read back": 0}))  # shared runs
    workers: int | None = None  # runs side by side (None: $MINITUNE_WORKERS, else every core; course/pool.py)

    @classmethod
    def start(cls, number: int, title: str, argv: list[str] | None = None) -> "Lesson":
        """Parse the lesson's flags, print its title, and make sure its base exists."""
        p = argparse.ArgumentParser(description=f"Lesson {number}: {title}")
        p.add_argument("--quick", action="store_true", help="nano sizes, seconds (what the tests run)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
        p.add_argument("--workers", type=int, default=None, help="fine-tuning runs side by side, one torch thread "
                       f"each (default: ${WORKERS_VARIABLE}, else one per core; 1: one after another)")
        p.add_argument("--base", default=None, help="a base run folder (default: the built-in tiny base)")
        p.add_argument("--out", default=None, help="where results go (default: runs/lessons/NN)")
        p.add_argument("--docs", default=None, help="where the chapter page goes (default: docs/lessons/ beside "
                       "the lessons folder on a full run; out/ with --quick)")
        args = p.parse_args(lesson_args(argv))
        base = default_base(args.quick, args.base, quiet=args.quick)
        out = Path(args.out) if args.out else runs_dir() / "lessons" / f"{number:02d}"
        out.mkdir(parents=True, exist_ok=True)
        source = Path(sys._getframe(1).f_code.co_filename).resolve()
        source = source if source.suffix == ".py" and source.is_file() else None
        docs = Path(args.docs) if args.docs else (
            source.parent.parent / "docs" / "lessons" if source and source.parent.name == "lessons" and not args.quick
            else out)
        lesson = cls(number, title, args.quick, str(resolve_device(args.device)), base, out, source, docs,
                     workers=workers_wanted(args.workers))
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
        """The seeds each compared setting is run with: SEEDS, or QUICK_SEEDS with --quick."""
        return self.size(QUICK_SEEDS, SEEDS)

    def over_seeds(self, fn: Callable[[int], dict], seeds: Sequence[int] | None = None) -> "SeedRuns":
        """Run fn(seed) for each of the lesson's seeds (or `seeds`), side by side: every run's numbers."""
        return self.each_over_seeds({"": fn}, seeds)[""]

    def each_over_seeds(self, fns: Mapping, seeds: Sequence[int] | None = None) -> dict:
        """{name: fn}: run every fn(seed) for each seed, all side by side in the pool of workers
        (minitune.course.pool: one torch thread each, results in order): {name: SeedRuns}."""
        seeds = tuple(self.seeds if seeds is None else seeds)
        if not seeds:
            raise ValueError("over_seeds needs at least one seed")
        pairs = [(name, s) for name in fns for s in seeds]
        answers = run_all([partial(self._counted, fns[name], s) for name, s in pairs],
                          [_run_name(name, s) for name, s in pairs], self.workers)
        for _, counted in answers:
            self.origins.update(counted)
        return {name: SeedRuns(seeds, [run for (n, _), (run, _) in zip(pairs, answers) if n == name]) for name in fns}

    def _counted(self, fn: Callable[[int], dict], seed: int) -> tuple[dict, Counter]:
        """fn(seed), and the shared runs it trained or read back: counted where the lesson runs, not in a worker."""
        before = Counter(self.origins)
        run = fn(seed)
        counted = Counter(self.origins)
        counted.subtract(before)
        self.origins = before
        return run, counted

    def compare(self, a, b, names: tuple[str, str] = ("A", "B"), log: bool = False) -> Comparison:
        """The noise rule (stats.differs: Welch's t on per-seed values) on a against b, kept for results.json.
        With log=True, on the values' logarithms (stats.log_differs: for perplexities and ratios)."""
        result = (log_differs if log else differs)(a, b, names)
        self.results["comparisons"].append(result.to_dict())
        return result

    @property
    def budget(self) -> Budget:
        """The standard fine-tuning budget of this mode (minitune.course.runs)."""
        return Budget.for_mode(self.quick)

    @cached_property
    def general_text(self) -> list[str]:
        """The held-out general text every lesson measures forgetting on (the same documents in each)."""
        return held_out_text(self.size(60_000, 200_000))

    def shared_run(self, task_name: str, config, seed: int, lr: float | None = None,
                   base: str | Path | None = None) -> dict:
        """`config` fine-tuned on the task with `seed` at the standard budget (and the strategy's default
        learning rate unless `lr`; from the lesson's base unless `base`), scored on test, with the general
        text's perplexity along the run: the same numbers in every lesson (minitune.course.runs)."""
        run = shared_run(base or self.base, task_name, config, seed, self.budget, self.device,
                         general=self.general_text, lr=lr)
        self.origins["trained" if run["trained"] else "read back"] += 1
        rate = "" if lr is None else f" / lr {lr:g}"
        origin = f"{run['train_seconds']:.1f} s of training" if run["trained"] else "read back from runs/shared"
        print(f"    {task_name} / {config.name}{rate} / seed {seed}: {run['metric']} {run['score']:.3f} ({origin})",
              flush=True)
        return run

    def shared_runs(self, tasks, configs) -> dict:
        """Every config on every task over the lesson's seeds: {(task, config name): SeedRuns of shared runs}."""
        return self.each_over_seeds({(t, c.name): partial(self._shared_run_seed, t, c) for t in tasks for c in configs})

    def _shared_run_seed(self, task_name: str, config, seed: int) -> dict:
        return self.shared_run(task_name, config, seed)

    def base_perplexity(self) -> float:
        """The base's perplexity on the general text, measured as the shared runs measure it along each run."""
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

    def run_dir(self, name: str) -> Path:
        """A folder for one fine-tuning run of this lesson."""
        return self.out / "runs" / name

    # --- what the reader sees ---------------------------------------------------------------------------

    def _show(self, printed: str, markdown: str) -> None:
        """Print a result, and keep it for the chapter page under the code cell that made it."""
        print(f"\n{printed}", flush=True)
        self.blocks.append((self._line(), markdown))

    def _line(self) -> int:
        """The line of the lesson's own code (its outermost frame in the lesson file) running now; 0 if none."""
        line, frame = 0, sys._getframe(1)
        while frame is not None and self.source is not None:
            if Path(frame.f_code.co_filename).resolve() == self.source:
                line = frame.f_lineno
            frame = frame.f_back
        return line

    def table(self, title: str, rows, note: str | None = None, index: str = "", columns: Sequence[str] | None = None
              ) -> None:
        """Print rows (dicts with the same keys) as an aligned table, and keep them for results.json.
        A value may be a SeedValues (several seeds): it prints as mean ± sd and is kept with every seed's value.

        rows may also be a mapping {row name: dict or SeedRuns}: each becomes a row whose first column,
        headed `index`, is its name, and whose other columns are `columns` of it (default: all of its numbers).
        `columns` also picks the columns of a list of dicts.
        """
        if isinstance(rows, Mapping):
            rows = [{index: name, **_columns(row, columns)} for name, row in rows.items()]
        elif columns is not None:
            rows = [_columns(row, columns) for row in rows]
        self.results["tables"][title] = plain(rows)
        notes = [n for n in (seeds_note(rows), note) if n]
        self._show("\n".join([title, format_table(rows), *notes]),
                   "\n\n".join([f"**{title}**", markdown_table(rows), *notes]))

    def claim(self, statement: str, source: str, a, b, names: tuple[str, str], expect: str | None = "higher",
              log: bool = False) -> Claim:
        """Test what `source` says (a above b when expect="higher") by the noise rule, print its verdict line."""
        claim = Claim(statement, source, self.compare(a, b, names, log=log), expect)
        self.results["claims"].append(claim.to_dict())
        self._show(f"=> {claim.line()}", f"- {claim.line()}")
        return claim

    def claim_quality(self, statement: str, source: str, a: "SeedRuns", b: "SeedRuns", names: tuple[str, str],
                      expect: str | None = None) -> None:
        """Two claims on two settings' runs (minitune.course.studies' measures): a's test label loss `expect`
        than b's ("lower": a is better), and its accuracy the other way round."""
        self.claim(f"{statement} (test label loss, lower is better)", source, a["label loss"], b["label loss"], names,
                   expect=expect)
        self.claim(f"{statement} (test accuracy)", source, a["accuracy"], b["accuracy"], names,
                   expect={"higher": "lower", "lower": "higher"}.get(expect))

    def note(self, sentence: str) -> None:
        """Print a sentence built from measured numbers (one that compares nothing) and keep it."""
        self.results["notes"].append(sentence)
        self._show(f"=> {sentence}", sentence)

    def record(self, name: str, value) -> None:
        """Keep one named number (or small structure, Cells and Comparisons included) for results.json."""
        self.results["numbers"][name] = plain(value)

    def plot(self, name: str, draw, figsize=(6.4, 4.0), title: str | None = None) -> Path:
        """Save a PNG drawn by draw(ax) into the lesson's folder (and beside its chapter page)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=figsize)
        draw(ax)
        fig.tight_layout()
        path = self.out / name
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)
        self._show(f"(plot: {path})", f"![{title or name}]({self.number:02d}/{name})")
        return path

    def finish(self) -> dict:
        """Correct the cited claims for multiplicity, write results.json and the page, say how long it took."""
        from minitune.course.sweep import machine

        if table := correct_cited(self.results["claims"]):  # Holm's correction over the lesson's cited claims
            self.table(*table)
        seconds = time.perf_counter() - self.started
        m, n = machine(self.device), workers_wanted(self.workers)
        workers = f"{n} worker{'s' if n > 1 else ''} of one torch thread" + (
            f" ({pool.cut_to} for a while: the machine was busy)" if pool.cut_to else "")
        self.results.update(lesson=self.number, title=self.title, quick=self.quick, base=str(self.base),
                            device=self.device, seconds=round(seconds, 1), origins=dict(self.origins),
                            machine=f"{m['processor']}, {m['cpus']} CPUs, {workers}, torch {m['torch']}",
                            date=time.strftime("%Y-%m-%d"))
        atomic_write_json(self.out / "results.json", self.results)
        page = self.write_page() if self.docs and self.source else None
        print(f"\nLesson {self.number} took {seconds:.0f}s; every number above is in {self.out / 'results.json'}"
              + (f"; the chapter page is {page}" if page else ""))
        return self.results

    def write_page(self) -> Path:
        """docs/NN.md (the chapter with its results), NN/ (its plots) and NN.json (its claims and tables,
        for the course's claims page and README's headline table: minitune docs)."""
        r, stem = self.results, f"{self.number:02d}"
        pictures = self.docs / stem
        pictures.mkdir(parents=True, exist_ok=True)
        for png in self.out.glob("*.png"):
            shutil.copyfile(png, pictures / png.name)
        runs = sum(self.origins.values())
        shared = f" Of its {runs} shared fine-tuning runs, {self.origins['read back']} were read back, trained " \
                 "by an earlier lesson." if self.origins["read back"] else ""
        mode = " --quick" if self.quick else ""
        header = (f"<!-- written by `python lessons/{self.source.name}{mode}`; do not edit by hand -->\n\n"
                  f"_These results were measured by `python lessons/{self.source.name}{mode}` in {r['seconds']:.0f} s "
                  f"on {r['machine']}, device {self.device}, {r['date']}.{shared} Every table below was printed by "
                  "that run._")
        page = self.docs / f"{stem}.md"
        text = chapter_page(self.source.read_text(), self.blocks, header)
        atomic_write(page, lambda tmp: Path(tmp).write_text(text))
        atomic_write_json(self.docs / f"{stem}.json", {k: r[k] for k in (
            "lesson", "title", "quick", "seconds", "machine", "date", "claims", "tables", "origins")})
        return page


def _columns(row, columns: Sequence[str] | None) -> dict:
    """One table row from a dict or a SeedRuns (the named columns, or every number it holds), or from a
    single value (in the one column named)."""
    if not isinstance(row, (Mapping, SeedRuns)):
        return {(columns or ("value",))[0]: row}
    if isinstance(row, SeedRuns):
        return row.measures(columns)
    return dict(row) if columns is None else {c: row[c] for c in columns}


@dataclass
class SeedRuns:
    """One setting run once per seed: each run's dict of numbers, and a SeedValues per measure."""

    seeds: tuple[int, ...]
    runs: list[dict]

    def __getitem__(self, key: str) -> SeedValues:
        """The SeedValues of one measure over the seeds."""
        return summarize([r[key] for r in self.runs])

    def __len__(self) -> int:
        return len(self.runs)

    def measures(self, keys: Sequence[str] | None = None) -> dict[str, SeedValues]:
        """A SeedValues for each of `keys` (default: every measure that is a number in every run)."""
        if keys is None:
            keys = [k for k, v in self.runs[0].items()
                    if _is_real(v) and all(_is_real(r.get(k)) for r in self.runs)]
        return {k: self[k] for k in keys}


def _run_name(name, seed: int) -> str:
    """'qa / lora / seed 0': how a pool names one run when it reports it."""
    parts = name if isinstance(name, tuple) else (name,)
    return " / ".join([*(f"{p:g}" if isinstance(p, float) else str(p) for p in parts if p != ""), f"seed {seed}"])


def plain(obj):
    """obj with every SeedValues and Comparison turned into plain numbers, ready for JSON."""
    if isinstance(obj, (SeedValues, Comparison, Claim)):
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


def held_out_text(target_bytes: int) -> list[str]:
    """General tiny-world documents drawn with another seed than the base's corpus: a test of what it knows."""
    return split(pretraining_corpus(target_bytes=target_bytes, seed=1), 0.5, seed=1)[1]
