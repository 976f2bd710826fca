"""Each strategy's learning rate, chosen on the validation split by a recorded sweep (`minitune sweep`).

The learning rate matters more than any other setting, and the good one differs by strategy: full
fine-tuning moves every weight of a pretrained model and wants small steps; a soft prompt is a few
thousand input vectors that start far from anything useful and wants large ones. Strategies compared
each at a guessed rate compare the guesses. So, for each strategy and each task family, on one
representative task of the family (classification: sentiment, the task lessons 3 to 5 study;
generation: qa, question answering over facts the base never read):

    grid     the strategy's current default_lr with `span` neighbours each side on the 1-3-10 ladder
             (... 1e-3, 3e-3, 1e-2 ...): with span 1, three rates about 3x apart
    runs     every rate with every seed (default three), the same steps, batch size and data
    score    the validation loss: mean cross-entropy per answer token on the validation split (never
             test), at the checkpoint fine-tuning keeps (the lowest of its evaluations). It is the
             objective itself, continuous, and does not saturate the way accuracy does once most
             answers are right; the task's headline metric on validation is measured and shown beside it
    choose   the rate with the lowest mean loss (stats.best_of). If the current default is within noise
             of it (stats.differs, Welch's t over seeds), the default stays: a default changes only when
             another rate beats it beyond noise, never on noise alone
    diverged a rate at which any seed's training stopped on a non-finite loss cannot be chosen
    edge     a choice at either end of the grid is flagged: the best rate may lie beyond it (--span 2)

The test split is drawn first, then validation, then train (minitune.data.tasks), and the sweep draws
the default test size, so its validation questions are never any lesson's test questions.

Output, written atomically: sweep.json (every run, every cell with each seed's value, the choices, and
the command, seeds, steps, grid, base, machine and date that produced them) and sweep.md (the same as
tables). A lesson shows it with `table_rows(read_sweep())`.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from datetime import datetime, timezone
from pathlib import Path

import torch

from minitune.checkpoint import atomic_write_bytes, atomic_write_json, read_json
from minitune.data.tasks import DEFAULT_SIZES, load_task
from minitune.errors import ConfigError, TrainingError
from minitune.evaluate import HEADLINE_METRIC, evaluate_task
from minitune.finetune import RUN, finetune
from minitune.pretrain import runs_dir
from minitune.course.pool import run_all, workers_wanted
from minitune.course.stats import ALPHA, SeedValues, best_of, differs
from minitune.strategies import STRATEGIES
from minitune.train import resolve_device

FAMILIES = {"classification": "sentiment", "generation": "qa"}  # the task that stands for each family
SWEEP_JSON, SWEEP_MD = "sweep.json", "sweep.md"


@dataclass(frozen=True)
class SweepSettings:
    """What one sweep runs: which strategies and families, the grid's span, seeds, steps and data sizes."""

    strategies: tuple[str, ...] = ("full", "lora", "adapter", "prompt")
    families: tuple[str, ...] = ("classification", "generation")
    span: int = 1                     # ladder rungs each side of the default: 2 * span + 1 rates
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 160
    batch_size: int = 16
    evals: int = 4                    # validation evaluations per run (fine-tuning keeps the best)
    train_size: int = 1000            # classification: training examples drawn (qa always has its own)
    val_limit: int | None = None      # validation items scored by the headline metric (None: all)
    quick: bool = False
    overrides: dict = field(default_factory=dict)  # strategy -> config fields (e.g. a shorter soft prompt)

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise ConfigError(f"strategies must be among {sorted(STRATEGIES)}, got {list(self.strategies)}")
        if not self.families or any(f not in FAMILIES for f in self.families):
            raise ConfigError(f"families must be among {sorted(FAMILIES)}, got {list(self.families)}")
        if not (isinstance(self.span, int) and self.span >= 0):
            raise ConfigError(f"span must be an integer >= 0, got {self.span!r}")
        if len(set(self.seeds)) < 2:
            raise ConfigError(f"a sweep needs at least 2 distinct seeds to see noise, got {list(self.seeds)}")
        if self.steps < 1 or self.batch_size < 1 or self.evals < 1 or self.train_size < 1:
            raise ConfigError("steps, batch_size, evals and train_size must be >= 1")

    @classmethod
    def for_mode(cls, quick: bool, **changes) -> "SweepSettings":
        """The full sweep's settings, or with quick=True nano-sized ones that run in seconds (for tests)."""
        if quick:
            # the nano base's 64-token context leaves too little room beside a 20-token soft prompt
            changes = {"seeds": (0, 1), "steps": 4, "evals": 1, "train_size": 32, "val_limit": 8,
                       "overrides": {"prompt": {"n_tokens": 4}}, **changes}
        return cls(quick=quick, **changes)


# --- the grid -----------------------------------------------------------------------------------------------

def rung(i: int) -> float:
    """Rung i of the 1-3-10 ladder: rung(2k) = 10^k, rung(2k + 1) = 3 x 10^k."""
    return float(f"{1 if i % 2 == 0 else 3}e{i // 2}")


def nearest_rung(lr: float) -> int:
    """The index of the ladder rung closest to lr on a log scale."""
    guess = round(2 * math.log10(lr))
    return min(range(guess - 2, guess + 3), key=lambda i: abs(math.log(rung(i) / lr)))


def grid(default: float, span: int = 1) -> list[float]:
    """The default itself, with `span` ladder rungs below and above it, ascending."""
    centre = nearest_rung(default)
    return ([rung(centre - k) for k in range(span, 0, -1)] + [default]
            + [rung(centre + k) for k in range(1, span + 1)])


def strategy_config(name: str, settings: SweepSettings):
    """The strategy's default config (with the settings' overrides for it)."""
    return STRATEGIES[name][0](**settings.overrides.get(name, {}))


def current_default(name: str, family: str) -> float:
    """The learning rate the package uses now for strategy `name` (one default per strategy, all families)."""
    return STRATEGIES[name][0].default_lr


# --- one run -------------------------------------------------------------------------------------------------

def sweep_task(family: str, settings: SweepSettings, seed: int = 0):
    """The family's task; its test split is drawn first at the default size, so validation holds no test item."""
    name = FAMILIES[family]
    if name == "qa":  # every fact once per split, in a phrasing of its own: no overlap by construction
        return load_task(name, seed=seed)
    return load_task(name, seed=seed, sizes={"train": settings.train_size, **{
        split: DEFAULT_SIZES[split] for split in ("validation", "test")}})


def run_point(base: Path, task, config, lr: float, seed: int, settings: SweepSettings, device: str) -> dict:
    """Fine-tune once at learning rate lr and seed; the validation loss and headline metric, or diverged."""
    metric = HEADLINE_METRIC[task.name]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model, enc, out = finetune(base, task, config, Path(tmp) / "run", max_steps=settings.steps,
                                       batch_size=settings.batch_size, lr=lr, seed=seed, device=device,
                                       eval_every=max(1, settings.steps // settings.evals), quiet=True,
                                       checkpoint_every=0)
        except TrainingError as e:  # a non-finite loss: this rate is too large for this strategy
            return {"diverged": True, "val_loss": None, metric: None, "seconds": time.perf_counter() - t0,
                    "error": str(e).splitlines()[0]}
        val_loss = read_json(out / RUN)["best_val_loss"]
    scores = evaluate_task(model, enc, task, "validation", limit=settings.val_limit, device=device)
    return {"diverged": False, "val_loss": val_loss, metric: scores[metric], "n_validation": scores["n"],
            "seconds": time.perf_counter() - t0}


# --- choosing -------------------------------------------------------------------------------------------------

def choose(runs: list[dict], rates: Sequence[float], default: float, metric: str) -> dict:
    """The cells of one strategy and family, and the rate the rule picks (see the module docstring)."""
    at = {lr: [r for r in runs if r["lr"] == lr] for lr in rates}
    cells, usable = [], {}
    for lr in rates:
        done = [r for r in at[lr] if not r["diverged"]]
        diverged = len(at[lr]) - len(done)
        cell = {"lr": lr, "diverged": diverged, "seeds": len(at[lr])}
        if done:
            cell["val_loss"] = SeedValues(tuple(r["val_loss"] for r in done)).to_dict()
            cell[metric] = SeedValues(tuple(r[metric] for r in done)).to_dict()
        if not diverged:
            usable[lr] = [r["val_loss"] for r in done]
        cells.append(cell)
    if not usable:
        return {"cells": cells, "best": None, "chosen": None, "default": default, "changed": False,
                "edge": False, "tied": [], "versus_default": None}
    pick = best_of({f"{lr:g}": v for lr, v in usable.items()}, higher_is_better=False)
    best = next(lr for lr in usable if f"{lr:g}" == pick.best)
    tied = [lr for lr in usable if f"{lr:g}" in pick.tied]
    chosen = default if default in tied else best  # keep the default unless it is beaten beyond noise
    versus = None
    if default in usable and best != default:
        c = differs(usable[best], usable[default], (f"lr {best:g}", f"lr {default:g}"))
        versus = {**c.to_dict(), "text": c.text(verb="has a higher validation loss than")}
    edge = len(rates) > 1 and chosen in (rates[0], rates[-1])
    return {"cells": cells, "best": best, "chosen": chosen, "default": default, "changed": chosen != default,
            "edge": edge, "tied": tied, "versus_default": versus}


# --- the sweep -------------------------------------------------------------------------------------------------

def run_sweep(base: str | Path, settings: SweepSettings, out: str | Path | None = None, device: str = "auto",
              command: str | None = None, workers: int | None = None) -> dict:
    """Run every family x strategy x rate x seed, choose each rate, write sweep.json and sweep.md; returns all."""
    base, device = Path(base), str(resolve_device(device))
    out = Path(out) if out is not None else runs_dir() / ("sweep-quick" if settings.quick else "sweep")
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    tasks = {f: sweep_task(f, settings) for f in settings.families}
    rates = {(f, s): grid(current_default(s, f), settings.span) for f in settings.families for s in settings.strategies}
    plan = [(f, s, lr, seed) for (f, s), grid_ in rates.items() for lr in grid_ for seed in settings.seeds]

    def point(i: int, family: str, name: str, lr: float, seed: int) -> dict:  # one run, in a worker of the pool
        task = tasks[family]
        r = run_point(base, task, strategy_config(name, settings), lr, seed, settings, device)
        run = {"family": family, "task": task.name, "strategy": name, "lr": lr, "seed": seed, **r}
        print(_progress(i, len(plan), run, time.perf_counter() - t0), flush=True)  # printed in the plan's order
        return run

    runs = run_all([partial(point, i, *p) for i, p in enumerate(plan, 1)],
                   [f"{f} / {s} / lr {lr:g} / seed {seed}" for f, s, lr, seed in plan], workers)
    results = []
    for family in settings.families:
        metric = HEADLINE_METRIC[tasks[family].name]
        for name in settings.strategies:
            mine = [r for r in runs if r["family"] == family and r["strategy"] == name]
            chosen = choose(mine, rates[family, name], current_default(name, family), metric)
            results.append({"family": family, "task": tasks[family].name, "metric": metric, "strategy": name,
                            "grid": rates[family, name], **chosen})
    record = {
        "command": command or describe_command(settings, base, out, device),
        "base": str(base.resolve()), "settings": asdict(settings),
        "configs": {s: {"name": s, **asdict(strategy_config(s, settings))} for s in settings.strategies},
        "tasks": {f: {"task": t.name, "metric": HEADLINE_METRIC[t.name], "train": len(t.train),
                      "validation": len(t.validation)} for f, t in tasks.items()},
        "selection": "lowest mean validation loss; the current default is kept unless beaten beyond noise "
                     f"(Welch t over seeds, two-sided p < {ALPHA}); a rate with any diverged seed is not chosen",
        "machine": machine(device) | {"workers": workers_wanted(workers), "threads_per_run": 1},
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1), "runs": runs, "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SWEEP_JSON, record)
    atomic_write_bytes(out / SWEEP_MD, markdown(record).encode("utf-8"))
    return record


def _progress(i: int, total: int, run: dict, elapsed: float) -> str:
    metric = HEADLINE_METRIC[run["task"]]
    what = ("diverged" if run["diverged"] else
            f"val loss {run['val_loss']:.3f}, {metric} {run[metric]:.3f}")
    left = elapsed / i * (total - i)  # runs finish out of order in a pool: a rough guess
    return (f"[{i:>{len(str(total))}}/{total}] {run['family']:<14} {run['task']:<9} {run['strategy']:<7} "
            f"lr {run['lr']:<7g} seed {run['seed']}: {what}  ({run['seconds']:.1f}s; ~{left / 60:.0f} min left)")


def machine(device: str = "auto") -> dict:
    """Where the sweep ran: enough to judge its timings and to repeat it."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": sys.version.split()[0], "device": device}


def describe_command(settings: SweepSettings, base: Path, out: Path, device: str) -> str:
    """The `minitune sweep` command line that repeats these settings."""
    parts = ["minitune sweep"] + (["--quick"] if settings.quick else [])
    parts += [f"--base {base}", f"--out {out}", f"--strategies {','.join(settings.strategies)}",
              f"--families {','.join(settings.families)}", f"--seeds {','.join(map(str, settings.seeds))}",
              f"--steps {settings.steps}", f"--span {settings.span}", f"--device {device}"]
    return " ".join(parts)


# --- reading it back -------------------------------------------------------------------------------------------

def read_sweep(path: str | Path | None = None) -> dict:
    """A sweep record: sweep.json in `path` (a folder or the file), default runs/sweep."""
    path = Path(path) if path is not None else runs_dir() / "sweep"
    return read_json(path / SWEEP_JSON if path.is_dir() or path.suffix != ".json" else path)


RECORDED = Path(__file__).parents[1] / "assets" / "sweep"  # the sweeps the package defaults come from


def recorded_sweeps() -> list[dict]:
    """The sweeps shipped with the package, oldest first (a later one re-examines some of an earlier one's)."""
    return [read_json(path) for path in sorted(RECORDED.glob("*.json"))]


def recorded_choices() -> dict[str, dict[str, float]]:
    """strategy -> {family: chosen learning rate}, the latest recorded sweep of each strategy winning."""
    chosen: dict[str, dict[str, float]] = {}
    for record in recorded_sweeps():
        for (family, strategy), lr in choices(record).items():
            chosen.setdefault(strategy, {})[family] = lr
    return chosen


def table_rows(record: dict) -> list[dict]:
    """One row per family, strategy and rate: validation loss and metric as Cells, and what was chosen."""
    rows = []
    for res in record["results"]:
        for cell in res["cells"]:
            lr = cell["lr"]
            marks = [m for m, on in (("default", lr == res["default"]), ("chosen", lr == res["chosen"]),
                                     ("best mean", lr == res["best"] and res["best"] != res["chosen"]),
                                     ("at the grid's edge", lr == res["chosen"] and res["edge"])) if on]
            if cell["diverged"]:
                marks.append(f"diverged {cell['diverged']}/{cell['seeds']}")
            rows.append({"family": res["family"], "task": res["task"], "strategy": res["strategy"], "lr": f"{lr:g}",
                         "validation loss": _cell(cell.get("val_loss")), "metric": res["metric"],
                         "validation score": _cell(cell.get(res["metric"])), "note": ", ".join(marks)})
    return rows


def choices(record: dict) -> dict[tuple[str, str], float | None]:
    """(family, strategy) -> the chosen learning rate."""
    return {(r["family"], r["strategy"]): r["chosen"] for r in record["results"]}


def _cell(d: dict | None) -> SeedValues | str:
    return SeedValues(tuple(d["values"])) if d else "-"


def markdown(record: dict) -> str:
    """The sweep as a Markdown page: how it was run, every cell, and the choices."""
    s = record["settings"]
    lines = [
        "# Learning-rate sweep", "",
        f"`{record['command']}`", "",
        f"{len(s['seeds'])} seeds ({', '.join(map(str, s['seeds']))}), {s['steps']} steps of batch {s['batch_size']}, "
        f"on the validation split; base `{record['base']}`; started {record['started']}, took "
        f"{record['seconds'] / 60:.1f} min on {record['machine']['processor']} ({record['machine']['cpus']} CPUs, "
        f"{record['machine']['torch_threads']} torch threads, {record['machine']['device']}).", "",
        f"Chosen by: {record['selection']}. Cells: mean ± sample sd over the seeds.", "",
    ]
    rows = table_rows(record)
    cols = list(rows[0]) if rows else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    lines += ["", "| family | strategy | current default | best mean | chosen | changes the default "
              "| best mean vs default |", "|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
    for res in record["results"]:
        verdict = "-" if res["versus_default"] is None else res["versus_default"]["text"]
        lines.append(f"| {res['family']} | {res['strategy']} | {fmt(res['default'])} | {fmt(res['best'])} | "
                     f"{fmt(res['chosen'])}{' (grid edge)' if res['edge'] else ''} | "
                     f"{'yes' if res['changed'] else 'no'} | {verdict} |")
    return "\n".join(lines) + "\n"


def changes(record: dict) -> list[str]:
    """One line per default the sweep would change."""
    return [f"{r['strategy']} on {r['family']} ({r['task']}): {r['default']:g} -> {r['chosen']:g}"
            + (" (at the grid's edge: the best may lie further out)" if r["edge"] else "")
            for r in record["results"] if r["changed"]]


__all__ = ["FAMILIES", "RECORDED", "SweepSettings", "changes", "choices", "choose", "grid", "markdown", "read_sweep",
           "recorded_choices", "recorded_sweeps", "run_sweep", "table_rows"]
