"""Where a shared run's time goes, task by task (`minitune time-runs`).

A shared run (minitune.course.runs) keeps the wall seconds of each of its parts in scores["seconds"]:

    load                       the base and the general text, before fine-tuning starts
    train                      optimizer steps: forward, backward, update (train(): train_seconds)
    evaluations along the run  validation loss and general-text perplexity every eval_every steps, the
                               best checkpoint's saving, and fine-tuning's own setup
    test score                 the task's metric on test (label scoring, or batched greedy generation and,
                               for code, running each function in the sandbox)
    test loss and checks       cross-entropy on test, and the check that the base is untouched
    saving                     clearing the run folder down to the best checkpoint

`time_runs` trains one fresh run per task and strategy (in a throwaway cache) and tabulates the parts:
the share outside training is what evaluation costs beside the learning it measures.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

from minitune.course.pool import run_all
from minitune.course.report import format_table
from minitune.course.runs import Budget, shared_run


def time_runs(base: str | Path, tasks, configs, budget: Budget, general: list[str] | None = None,
              workers: int = 1) -> list[dict]:
    """One fresh shared run (seed 0) per task and config: a row of wall seconds by part for each, with the
    share of the run spent outside training. One run at a time by default, so none slows another."""
    plan = [(t, c) for t in tasks for c in configs]
    with tempfile.TemporaryDirectory() as cache:
        runs = run_all([partial(shared_run, base, t, c, 0, budget, general=general, cache=cache) for t, c in plan],
                       [f"{t} / {c.name}" for t, c in plan], workers)
    rows = []
    for run in runs:
        parts = run["seconds"]
        wall = sum(parts.values())
        rows.append({"task": run["task"], "strategy": run["strategy"], "wall s": wall, **parts,
                     "outside training": f"{1 - parts['train'] / wall:.0%}"})
    return rows


def format_rows(rows: list[dict]) -> str:
    """The rows as an aligned table, seconds to one decimal."""
    return format_table([{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()} for r in rows])
