"""Each strategy's learning rate, chosen on the validation split by a recorded sweep (`minitune sweep`).

The good learning rate differs by strategy (full fine-tuning wants small steps, a soft prompt large ones),
and strategies compared each at a guessed rate compare the guesses. So, for each strategy and each task
family, on one task of the family (classification: sentiment; generation: qa, facts the base never read):

    grid     the strategy's current default rate for the family with `span` neighbours each side on the
             1-3-10 ladder (... 1e-3, 3e-3, 1e-2 ...): with span 1, three rates about 3x (half a decade) apart
    runs     every rate with every seed (default three), the same steps, batch size and data; each run's
             evaluations are kept as its curve: [step, training loss, validation loss]
    score    the validation loss: mean cross-entropy per answer token on the validation split (never
             test), at the checkpoint fine-tuning keeps (the lowest of its evaluations). It is the
             objective itself, continuous, and does not saturate the way accuracy does once most
             answers are right; the task's headline metric on validation is measured and shown beside it
    choose   the rate with the lowest mean loss (stats.best_of), whatever the current default is. The
             rates within noise of it (Welch's t over seeds) are reported beside it, never used to keep
             an old default: with three seeds "within noise" is wide, and a rule that keeps the default
             inside it keeps whatever was guessed first
    diverged a rate at which any seed's training stopped on a non-finite loss cannot be chosen
    extend   a best rate at either end of the grid has not been bracketed: the sweep adds the next rung
             beyond it (all seeds) and chooses again, up to MAX_EXTENSIONS times per strategy and family.
             A rate whose neighbour above diverged is bracketed by the divergence. A choice still at the
             edge after that is flagged, and the package refuses it as a default (tests/course/test_sweep.py)

The test split is drawn first, then validation, then train (minitune.data.tasks), and the sweep draws
the default test size, so its validation questions are never any lesson's test questions.

The same machinery compares recipes (minitune.course.arms: "lora(r=4, targets=c_attn+mlp.c_fc)") and runs
on other tasks (`tasks`); such a record is evidence for a lesson, never a package default (recorded_results).

Output, written atomically: sweep.json (every run, every cell with each seed's value, the choices, and
the command, seeds, steps, grid, base, machine and date that produced them) and sweep.md (the same as
tables). A lesson shows it with `table_rows(read_sweep())` (minitune.course.recorded).
"""

from __future__ import annotations

import math
import os
import platform
import shlex
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
from minitune.data.tasks import DEFAULT_SIZES, TASKS, load_task, task_kind
from minitune.errors import ConfigError, TrainingError
from minitune.evaluate import HEADLINE_METRIC, evaluate_task
from minitune.finetune import RUN, finetune
from minitune.pretrain import runs_dir
from minitune.course.arms import FAMILIES, arm
from minitune.course.recorded import SWEEP_JSON, SWEEP_MD, markdown
from minitune.course.pool import run_all, workers_wanted
from minitune.course.stats import ALPHA, SeedValues, best_of, differs
from minitune.strategies import STRATEGIES
from minitune.train import resolve_device

MAX_EXTENSIONS = 4  # rungs a sweep may add beyond its grid per strategy and family (two decades)


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
    tasks: tuple[str, ...] = ()       # tasks to sweep instead of the families' own (each in its kind's family)

    def __post_init__(self) -> None:
        if not self.strategies:
            raise ConfigError(f"strategies must be among {sorted(STRATEGIES)}, got none")
        for spec in self.strategies:
            arm(spec)  # raises on an unknown strategy or a malformed setting
        if not self.families or any(f not in FAMILIES for f in self.families):
            raise ConfigError(f"families must be among {sorted(FAMILIES)}, got {list(self.families)}")
        if any(t not in TASKS for t in self.tasks):
            raise ConfigError(f"tasks must be among {list(TASKS)}, got {list(self.tasks)}")
        if not (isinstance(self.span, int) and self.span >= 0):
            raise ConfigError(f"span must be an integer >= 0, got {self.span!r}")
        if len(set(self.seeds)) < 2:
            raise ConfigError(f"a sweep needs at least 2 distinct seeds to see noise, got {list(self.seeds)}")
        if self.steps < 1 or self.batch_size < 1 or self.evals < 1 or self.train_size < 1:
            raise ConfigError("steps, batch_size, evals and train_size must be >= 1")

    def task_names(self) -> tuple[str, ...]:
        """The tasks swept: `tasks` if given, else each family's own task."""
        return self.tasks or tuple(FAMILIES[f] for f in self.families)

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


# --- what is swept ---------------------------------------------------------------------------------------------

def strategy_config(spec: str, settings: SweepSettings):
    """The arm's config: the strategy's defaults, the settings' overrides for it, then the arm's own."""
    name, fields = arm(spec)
    return STRATEGIES[name][0](**{**settings.overrides.get(name, {}), **fields})


def current_default(spec: str, family: str) -> float:
    """The learning rate the package uses now for the arm's strategy on the family's tasks."""
    return STRATEGIES[arm(spec)[0]][0].default_lr[family]


# --- one run -------------------------------------------------------------------------------------------------

def sweep_task(name: str, settings: SweepSettings, seed: int = 0):
    """A task to sweep on; its test split is drawn first at the default size, so validation holds no test item."""
    if task_kind(name) == "generation":  # qa: every fact once per split, each in a phrasing of its own
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
        record = read_json(out / RUN)
    scores = evaluate_task(model, enc, task, "validation", limit=settings.val_limit, device=device)
    curve = [[h["step"], h["train_loss"], h["val_loss"]] for h in record["history"]]
    return {"diverged": False, "val_loss": record["best_val_loss"], metric: scores[metric], "n_validation": scores["n"],
            "curve": curve, "seconds": time.perf_counter() - t0}


# --- choosing -------------------------------------------------------------------------------------------------

def choose(runs: list[dict], rates: Sequence[float], default: float, metric: str) -> dict:
    """The cells of one strategy and family, and the rate the rule picks (see the module docstring)."""
    rates = sorted(rates)
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
    if not usable:  # every rate diverged: try the rung below the lowest
        return {"cells": cells, "best": None, "chosen": None, "default": default, "changed": False,
                "edge": True, "extend": rung(nearest_rung(rates[0]) - 1), "tied": [], "versus_default": None}
    pick = best_of({f"{lr:g}": v for lr, v in usable.items()}, higher_is_better=False)
    best = next(lr for lr in usable if f"{lr:g}" == pick.best)
    tied = [lr for lr in usable if f"{lr:g}" in pick.tied]  # reported: within noise of the best
    versus = None
    if default in usable and best != default:
        c = differs(usable[best], usable[default], (f"lr {best:g}", f"lr {default:g}"))
        versus = {**c.to_dict(), "text": c.text(verb="has a higher validation loss than")}
    edge = edge_of(best, rates)
    return {"cells": cells, "best": best, "chosen": best, "default": default, "changed": best != default,
            "edge": edge is not None, "extend": edge, "tied": tied, "versus_default": versus}


def edge_of(best: float, rates: Sequence[float]) -> float | None:
    """The next rung beyond `best` if it is the lowest or highest rate tried (None when it is bracketed).
    A diverged rate above it counts as tried: it brackets the best from above."""
    if len(rates) < 2:
        return None
    if best == min(rates):
        return rung(nearest_rung(best) - 1)
    if best == max(rates):
        return rung(nearest_rung(best) + 1)
    return None


# --- the sweep -------------------------------------------------------------------------------------------------

def run_sweep(base: str | Path, settings: SweepSettings, out: str | Path | None = None, device: str = "auto",
              command: str | None = None, workers: int | None = None) -> dict:
    """Run every family x strategy x rate x seed, choose each rate, write sweep.json and sweep.md; returns all."""
    base, device = Path(base), str(resolve_device(device))
    out = Path(out) if out is not None else runs_dir() / ("sweep-quick" if settings.quick else "sweep")
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    tasks = {t: sweep_task(t, settings) for t in settings.task_names()}
    rates = {(t, s): grid(current_default(s, task.kind), settings.span) for t, task in tasks.items()
             for s in settings.strategies}
    plan = [(t, s, lr, seed) for (t, s), grid_ in rates.items() for lr in grid_ for seed in settings.seeds]
    width = max(map(len, settings.strategies))

    def point(i: int, total: int, task_name: str, name: str, lr: float, seed: int) -> dict:  # one run, in a worker
        task = tasks[task_name]
        r = run_point(base, task, strategy_config(name, settings), lr, seed, settings, device)
        run = {"family": task.kind, "task": task.name, "strategy": name, "lr": lr, "seed": seed, **r}
        print(_progress(i, total, run, time.perf_counter() - t0, width), flush=True)  # printed in the plan's order
        return run

    def outcome(task_name: str, name: str) -> dict:
        mine = [r for r in runs if r["task"] == task_name and r["strategy"] == name]
        return choose(mine, rates[task_name, name], current_default(name, tasks[task_name].kind),
                      HEADLINE_METRIC[task_name])

    runs: list[dict] = []
    extensions = dict.fromkeys(rates, 0)
    while plan:  # a round of runs, then one more rung for every choice still at its grid's edge
        done = len(runs)
        runs += run_all([partial(point, done + i, done + len(plan), *p) for i, p in enumerate(plan, 1)],
                        [f"{f} / {s} / lr {lr:g} / seed {seed}" for f, s, lr, seed in plan], workers)
        plan = []
        for key in rates:
            beyond = outcome(*key)["extend"]
            if beyond is not None and extensions[key] < MAX_EXTENSIONS:
                extensions[key] += 1
                rates[key] = sorted(rates[key] + [beyond])
                plan += [(*key, beyond, seed) for seed in settings.seeds]
                print(f"{key[1]} on {key[0]}: the best rate is at the grid's edge; adding lr {beyond:g}", flush=True)
    results = [{"family": task.kind, "task": t, "metric": HEADLINE_METRIC[t], "strategy": name, "grid": rates[t, name],
                "extensions": extensions[t, name], **outcome(t, name)}
               for t, task in tasks.items() for name in settings.strategies]
    record = {
        "command": command or describe_command(settings, base, out, device),
        "base": str(base.resolve()), "settings": asdict(settings),
        "configs": {s: {"name": s, **asdict(strategy_config(s, settings))} for s in settings.strategies},
        "tasks": {t.kind if not settings.tasks else t.name: {
            "task": t.name, "metric": HEADLINE_METRIC[t.name], "train": len(t.train),
            "validation": len(t.validation)} for t in tasks.values()},
        "selection": "lowest mean validation loss, whatever the current default; the rates within noise of it "
                     f"(Welch t over seeds, two-sided p < {ALPHA}) are reported; a rate with any diverged seed is not "
                     f"chosen; a best rate at the grid's edge gets the next rung beyond it (up to {MAX_EXTENSIONS})",
        "machine": machine(device) | {"workers": workers_wanted(workers), "threads_per_run": 1},
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1), "runs": runs, "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SWEEP_JSON, record)
    atomic_write_bytes(out / SWEEP_MD, markdown(record).encode("utf-8"))
    return record


def _progress(i: int, total: int, run: dict, elapsed: float, width: int = 7) -> str:
    metric = HEADLINE_METRIC[run["task"]]
    what = ("diverged" if run["diverged"] else
            f"val loss {run['val_loss']:.3f}, {metric} {run[metric]:.3f}")
    left = elapsed / i * (total - i)  # runs finish out of order in a pool: a rough guess
    return (f"[{i:>{len(str(total))}}/{total}] {run['family']:<14} {run['task']:<13} {run['strategy']:<{width}} "
            f"lr {run['lr']:<7g} seed {run['seed']}: {what}  ({run['seconds']:.1f}s; ~{left / 60:.0f} min left)")


def machine(device: str = "auto") -> dict:
    """Where the sweep ran: enough to judge its timings and to repeat it."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": sys.version.split()[0], "device": device}


def describe_command(settings: SweepSettings, base: Path, out: Path, device: str) -> str:
    """The `minitune sweep` command line that repeats these settings."""
    parts = ["minitune sweep"] + (["--quick"] if settings.quick else [])
    parts += [f"--base {base}", f"--out {out}", f"--strategies {shlex.quote(','.join(settings.strategies))}",
              f"--tasks {','.join(settings.tasks)}" if settings.tasks else f"--families {','.join(settings.families)}", f"--seeds {','.join(map(str, settings.seeds))}",
              f"--steps {settings.steps}", f"--batch-size {settings.batch_size}", f"--evals {settings.evals}",
              f"--span {settings.span}", f"--device {device}"]
    return " ".join(parts)


__all__ = ["FAMILIES", "MAX_EXTENSIONS", "SweepSettings", "choose", "edge_of", "grid", "run_sweep", "sweep_task"]
