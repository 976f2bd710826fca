"""Fine-tuning studies on a classification task, over seeds: the pieces lessons 4 and 5 share.

A study varies one setting of a strategy (an adapter's width, a soft prompt's length, a learning rate)
and measures each value over the lesson's seeds:

    task = study_task(lesson, "topic")                             # train 1000 / validation 100 / test 300
    runs = fine_tune_seeds(lesson, task, AdapterConfig(bottleneck=4), "m4")   # SeedRuns, one run per seed
    widths = fine_tune_each(lesson, task, {m: AdapterConfig(bottleneck=m) for m in (4, 16)})  # all side by side
    runs["label loss"]                                             # a SeedValues: '0.412 ± 0.031'
    choice = choose_rate(lesson, task, PromptTuningConfig(n_tokens=5), (0.03, 0.1, 0.3), "n5")
    choice.rate, choice.tied, choice.runs[choice.rate]             # picked on validation; test scores beside

Every run is a shared run (minitune.course.runs.shared_run) at the lessons' standard budget (160 steps of batch
16, the same as the learning-rate sweep), and is scored on the test split by two numbers:

    accuracy     the share of test items whose most likely label word is the right one
    label loss   -log p(right label | item), p normalised over the label words: continuous, so it still
                 separates two settings after accuracy has saturated

and, for choosing, by its validation loss (mean cross-entropy per answer token, at the best of the
run's evaluations, as fine-tuning keeps it). A learning rate is chosen on that validation loss, never
on test; the test scores are reported at the chosen rate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from minitune.course.runs import Budget
from minitune.evaluate import classify_scores
from minitune.finetune import open_run, supervised
from minitune.course.lesson import Lesson, SeedRuns, plot_seeds
from minitune.course.stats import Best, SeedValues, best_of, summarize
from minitune.strategies import apply_strategy
from minitune.train import evaluate_loss, seed_everything

BATCH = Budget().batch_size                   # the standard budget (minitune.course.runs), as every lesson trains
EVALS = Budget().steps // Budget().eval_every  # validation evaluations per run: fine-tuning keeps the best

Measure = Callable[[object, object], dict]  # (trained model, tokenizer) -> more numbers for the run


def study_task(lesson: Lesson, name: str):
    """The task at the standard budget's sizes (minitune.course.runs.Budget), as lessons 1 and 6 see it."""
    return lesson.budget.task(name)


def steps(lesson: Lesson) -> int:
    """Training steps per run: the standard 160, or a handful with --quick."""
    return lesson.budget.steps


def test_scores(lesson: Lesson, model, enc, task) -> dict:
    """Test accuracy and label loss of a (fine-tuned) model."""
    return classify_scores(model, enc, task.test, task.labels, device=lesson.device)[1]


def validation_batches(task, enc, model):
    """The validation split as fine-tuning evaluates it (batch 16, the model's usable context)."""
    return supervised(task, "validation", enc, model.max_input_tokens, BATCH, max_eval_examples=200)


def fine_tune(lesson: Lesson, task, config, seed: int = 0, lr: float | None = None,
              base: str | Path | None = None, measure: Measure | None = None) -> dict:
    """One fine-tuning run at the standard budget, as a shared run (minitune.course.runs: the same run, and the
    same numbers, as any other lesson that trains this setting): its scores, counts and loss history.

    Returns accuracy, label loss (test), val loss (validation, the kept checkpoint's), trainable, total,
    seconds (training only), history (every evaluation), and whatever measure(model, enc) adds.
    """
    run = lesson.shared_run(task.name, config, seed, lr=lr, base=base)
    result = {"accuracy": run["score"], "label loss": run["label_loss"], "val loss": run["best_val_loss"],
              "trainable": run["trainable"], "total": run["total"], "seconds": run["train_seconds"],
              "history": run["history"]}
    if measure is not None:
        model, enc, _ = open_run(run["run"], lesson.device)
        result.update(measure(model, enc))
    return result


def fine_tune_seeds(lesson: Lesson, task, config, name: str, lr: float | None = None,
                    base: str | Path | None = None, measure: Measure | None = None) -> SeedRuns:
    """fine_tune once per lesson seed, the seeds side by side (the lesson's pool of workers)."""
    return fine_tune_each(lesson, task, {name: config}, lr=lr, base=base, measure=measure)[name]


def fine_tune_each(lesson: Lesson, task, configs: Mapping, lr: float | None = None,
                   base: str | Path | None = None, measure: Measure | None = None) -> dict:
    """{name: config}: fine_tune every config once per lesson seed, all side by side: {name: SeedRuns}."""
    return lesson.each_over_seeds({name: partial(_fine_tune_seed, lesson, task, config, lr, base, measure)
                                   for name, config in configs.items()})


def _fine_tune_seed(lesson: Lesson, task, config, lr, base, measure, seed: int) -> dict:
    return fine_tune(lesson, task, config, seed=seed, lr=lr, base=base, measure=measure)


def start_loss(lesson: Lesson, task, config, seed: int = 0, base: str | Path | None = None,
               alter: Callable | None = None) -> float:
    """Validation loss at step 0: the base with `config` applied as finetune() applies it for `seed`
    (then changed by alter(model), if given), before any training."""
    model, enc = load_base(lesson, base)
    seed_everything(seed)  # finetune() seeds the same way before applying the strategy
    model = apply_strategy(model, config)
    if alter is not None:
        alter(model)
    return evaluate_loss(model, validation_batches(task, enc, model).eval_batches(), lesson.device)


def load_base(lesson: Lesson, base: str | Path | None = None):
    """A fresh copy of a base (the lesson's by default): (model, tokenizer)."""
    from minitune.pretrain import load_run

    model, enc, _ = load_run(base or lesson.base, lesson.device)
    return model, enc


# --- choosing a learning rate ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RateChoice:
    """A small learning-rate sweep of one setting: every rate's runs, and the one validation picks."""

    rate: float                    # the rate with the lowest mean validation loss
    tied: tuple[float, ...]        # the rates the noise rule cannot tell from it (it included)
    runs: dict[float, SeedRuns]    # every rate's runs (test scores too)
    pick: Best                     # the comparisons behind the choice

    @property
    def at_edge(self) -> bool:
        """Whether the pick is the grid's lowest or highest rate (the best may lie beyond the grid)."""
        rates = sorted(self.runs)
        return len(rates) > 1 and self.rate in (rates[0], rates[-1])


def pick_rate(val_losses: Mapping[float, SeedValues | Sequence[float]]) -> tuple[float, tuple[float, ...], Best]:
    """The rate with the lowest mean validation loss, and the rates within noise of it (stats.best_of)."""
    pick = best_of({f"{lr:g}": summarize(v) for lr, v in val_losses.items()}, higher_is_better=False)
    by_name = {f"{lr:g}": lr for lr in val_losses}
    return by_name[pick.best], tuple(by_name[k] for k in pick.tied), pick


def choose_rate(lesson: Lesson, task, config, rates: Sequence[float], name: str,
                done: Mapping[float, SeedRuns] | None = None) -> RateChoice:
    """Fine-tune `config` at each rate over the seeds, side by side (reusing `done` runs), and pick one on
    validation."""
    done = dict(done or {})
    new = lesson.each_over_seeds({lr: partial(_fine_tune_seed, lesson, task, config, lr, None, None)
                                  for lr in rates if lr not in done})
    runs = {lr: done[lr] if lr in done else new[lr] for lr in rates}
    rate, tied, pick = pick_rate({lr: r["val loss"] for lr, r in runs.items()})
    return RateChoice(rate, tied, runs, pick)


# --- plots ----------------------------------------------------------------------------------------------

def curve_over_seeds(histories: Sequence[Sequence[tuple[int, float]]]) -> tuple[list[int], list[SeedValues]]:
    """Several seeds' loss curves, [(step, loss), ...] each, as the steps and a SeedValues per step."""
    steps_seen = [[s for s, _ in h] for h in histories]
    if not histories or any(s != steps_seen[0] for s in steps_seen):
        raise ValueError(f"the seeds' curves must be evaluated at the same steps, got {steps_seen}")
    return steps_seen[0], [summarize([h[i][1] for h in histories]) for i in range(len(steps_seen[0]))]


def curve(runs: SeedRuns, starts: Sequence[float]) -> list[list[tuple[int, float]]]:
    """Each seed's validation-loss curve from step 0 (its start loss) through every evaluation."""
    return [[(0, s)] + [(h["step"], h["val_loss"]) for h in r["history"]] for s, r in zip(starts, runs.runs)]


def draw_curves(ax, curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]], title: str,
                base_loss: float | None = None, ylabel: str = "validation loss") -> None:
    """A loss against step (validation unless `ylabel` says otherwise), one line (mean ± sd, every seed a
    dot) per setting."""
    for name, histories in curves.items():
        xs, points = curve_over_seeds(histories)
        plot_seeds(ax, xs, points, label=name, marker=".")
    if base_loss is not None:
        ax.axhline(base_loss, color="grey", ls=":", label="the base, before training")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.set_title(title)


def draw_quality(ax, xs: Sequence, runs: Sequence[SeedRuns], xlabel: str, title: str, log_x: bool = True) -> None:
    """Test accuracy (left axis) and test label loss (right axis) against a setting, over seeds."""
    plot_seeds(ax, xs, [r["accuracy"] for r in runs], label="test accuracy", color="tab:blue")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy", color="tab:blue")
    loss_ax = ax.twinx()
    plot_seeds(loss_ax, xs, [r["label loss"] for r in runs], label="test label loss", color="tab:red", marker="^")
    loss_ax.set_ylabel("test label loss", color="tab:red")
    (h1, l1), (h2, l2) = ax.get_legend_handles_labels(), loss_ax.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8)
    ax.set_title(title)


# --- sentences ------------------------------------------------------------------------------------------

def compare_runs(lesson: Lesson, a: SeedRuns, b: SeedRuns, names: tuple[str, str]):
    """The noise rule on test label loss and on test accuracy of a against b: a sentence, and the loss test.

    The label-loss comparison is returned for branching (it is continuous, so it still separates
    settings after accuracy has saturated); the sentence gives both.
    """
    loss = lesson.compare(a["label loss"], b["label loss"], names)
    acc = lesson.compare(a["accuracy"], b["accuracy"], names)
    return (f"test label loss: {loss.text(verb='is higher than')}; test accuracy: {acc.text()}", loss)
