"""Lesson 3's recorded recipe sweeps (minitune/assets/sweep/lora-recipes/), shown as the chapter shows
them: each LoRA recipe at its own best rate beside full fine-tuning, the same at a longer budget, and at
three batch sizes over the same examples. Each function writes its tables, claims and plots on the lesson
and returns the cells it read, {(task, label): chosen_cells' entry}; the validation loss at each recipe's
own best rate is the primary measure throughout (the sweeps never score a test item).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from minitune.course.arms import arm_config, arm_label
from minitune.course.lesson import Lesson, plot_seeds
from minitune.course.recorded import chosen_cells, recorded_curves
from minitune.course.stats import SeedValues
from minitune.course.studies import draw_curves

ATTN8, MLP8, ALL8 = (f"LoRA r 8 on {w}" for w in ("c_attn", "mlp.c_fc + mlp.c_proj", "all four linear layers"))
HIGH = "LoRA r 64 on all four linear layers"
# recipes that train about as many numbers per block (4,096 or 16,384 against c_attn's 512 r)
MATCHED = {"LoRA r 8 on c_attn": ("LoRA r 3 on mlp.c_fc + mlp.c_proj", "LoRA r 2 on all four linear layers"),
           "LoRA r 32 on c_attn": ("LoRA r 13 on mlp.c_fc + mlp.c_proj", ALL8)}
SOURCE = "Schulman et al. 2025"


def cells_of(records: list[dict], task: str | None = None) -> dict[tuple[str, str], dict]:
    """{(task, the arm's label): its cells} over records (only `task`'s if given)."""
    return {(t, arm_label(spec)): c for rec in records for (t, spec), c in chosen_cells(rec).items()
            if task in (None, t)}


def at_best(c: dict, what: str = "val loss") -> SeedValues:
    """A recipe's recorded validation loss (or score) at its own best rate."""
    return c[what][c["chosen"]]


def rates(c: dict, which: str = "grid") -> str:
    return " ".join(f"{lr:g}" for lr in c[which] if which == "grid" or lr != c["chosen"]) or "-"


def show_recipes(lesson: Lesson, evidence: list[dict], trainable: Callable) -> dict:
    """Section 3: every recipe at 160 steps of 16, on every task recorded; trainable(config) counts it."""
    short = [rec for rec in evidence if (rec["settings"]["steps"], rec["settings"]["batch_size"]) == (160, 16)]
    specs = {arm_label(spec): spec for rec in short for (_, spec) in chosen_cells(rec)}
    cells = cells_of(short)
    lesson.note(f"The recorded sweeps hold {sum(len(rec['runs']) for rec in evidence)} fine-tuning runs, "
                f"{sum(rec['seconds'] for rec in evidence) / 3600:.1f} hours on {evidence[0]['machine']['cpus']} CPU cores.")
    lesson.table("Each recipe at its own best rate (validation; 160 steps of 16; recorded)", {f"{t}: {name}": {
        "trainable": trainable(arm_config(specs[name])), "rates tried": rates(c), "chosen rate": f"{c['chosen']:g}",
        "within noise of it": rates(c, "tied"), "grid edge": c["edge"], "val loss": at_best(c),
        "val " + c["metric"]: at_best(c, "score")} for (t, name), c in cells.items()}, index="task: recipe")
    for t in sorted({t for t, _ in cells}):
        best = {name: at_best(c) for (task, name), c in cells.items() if task == t}
        lesson.claim(f"LoRA on all four matrices learns better than on c_attn alone (r = 8; {t}, validation loss)",
                     SOURCE, best[ATTN8], best[ALL8], ("c_attn", "all four"))
        lesson.claim(f"LoRA on the MLP learns better than on attention (r = 8; {t}, validation loss)", SOURCE,
                     best[ATTN8], best[MLP8], ("c_attn", "MLP"))
        lesson.claim(f"LoRA on every layer matches full FT on small data ({t}, validation loss)", SOURCE,
                     best[ALL8], best["full FT"], ("LoRA r 8 on all four", "full FT"), None)
        lo, full = cells[t, ALL8], cells[t, "full FT"]
        lesson.note(f"{t}: LoRA r 8 on all four's best rate is {lo['chosen'] / full['chosen']:.2g}x full FT's "
                    f"({lo['chosen']:g} against {full['chosen']:g}; within noise {min(lo['tied']) / max(full['tied']):.2g}x "
                    f"to {max(lo['tied']) / min(full['tied']):.2g}x; Schulman et al.: about 10x)")
    for attn, others in MATCHED.items():
        for other in others:
            lesson.claim(f"at an equal trainable count, {other[5:]} learns better than {attn[5:]} (qa, validation loss)",
                         SOURCE, at_best(cells["qa", attn]), at_best(cells["qa", other]), (attn[5:], other[5:]))
    ranks = sorted((arm_config(specs[name]).r, name) for t, name in cells if t == "qa" and name.endswith("all four linear layers"))
    lesson.table("LoRA on all four linear layers, qa: the best rate at each rank (recorded)", {f"r = {r}": {
        "chosen rate": f"{cells['qa', name]['chosen']:g}", "val loss": at_best(cells["qa", name]),
        "val exact match": at_best(cells["qa", name], "score")} for r, name in ranks}, index="rank")
    (r_lo, low), (r_hi, high) = ranks[0], ranks[-1]
    own, other = cells["qa", high], cells["qa", low]["chosen"]
    if other in own["val loss"] and other != own["chosen"]:
        lesson.claim(f"under alpha / r the best rate barely moves with rank (all four; r = {r_hi}'s validation loss "
                     f"at r = {r_lo}'s best rate and at its own)", SOURCE, own["val loss"][other], at_best(own),
                     (f"{other:g}", f"{own['chosen']:g}"), None)
    title = "Validation loss against learning rate, each LoRA recipe and full FT (qa, recorded)"
    lesson.plot("recipes_qa.png", partial(draw_rates, cells={n: c for (t, n), c in cells.items() if t == "qa"},
                                          title=title), figsize=(7.6, 5.0), title=title)
    return cells


def show_longer(lesson: Lesson, evidence: list[dict], short: dict) -> dict:
    """Section 4: the recipes at 480 steps of 16 beside their 160-step results, and their curves."""
    long = next(rec for rec in evidence if rec["settings"]["steps"] == 480)
    cells = cells_of([long], "qa")
    lesson.table("Each recipe at its own best rate, 160 and 480 steps of 16 (qa, validation; recorded)", {name: {
        "rate at 160": f"{short['qa', name]['chosen']:g}", "val loss at 160": at_best(short["qa", name]),
        "rate at 480": f"{c['chosen']:g}" + (" (grid edge)" if c["edge"] else ""), "val loss at 480": at_best(c),
        "val exact match at 480": at_best(c, "score")} for (_, name), c in cells.items()}, index="recipe")
    best = {name: at_best(c) for (_, name), c in cells.items()}
    lesson.claim("given three times the steps, LoRA on every layer matches full FT (qa, validation loss)", SOURCE,
                 best[ALL8], best["full FT"], ("LoRA r 8 on all four", "full FT"), None)
    low = min((arm_config(spec).r, arm_label(spec)) for (_, spec) in chosen_cells(long) if "all four" in arm_label(spec))[1]
    lesson.claim(f"with more steps, a low rank falls behind a high one ({low[5:]} against r 64; qa, validation loss)",
                 SOURCE, best[low], best[HIGH], (low[5:], "r 64"))
    for column, what in (("train_loss", "training"), ("val_loss", "validation")):
        title = f"{what.capitalize()} loss along 480 steps, each recipe at its own best rate (qa, recorded)"
        curves = {arm_label(spec): recorded_curves(long, "qa", spec, c["chosen"], column)
                  for (_, spec), c in chosen_cells(long).items()}
        lesson.plot(f"long_{what}.png", partial(draw_curves, curves=curves, title=title, ylabel=f"{what} loss"),
                    figsize=(7.6, 4.6), title=title)
    return cells


def show_batches(lesson: Lesson, evidence: list[dict]) -> dict:
    """Section 5: full FT and LoRA r 8 on all four at each batch size over the same 2,560 examples."""
    same = [rec for rec in evidence if rec["settings"]["steps"] * rec["settings"]["batch_size"] == 2560
            and ("qa", ALL8) in cells_of([rec]) and ("qa", "full FT") in cells_of([rec])]
    by_batch = {rec["settings"]["batch_size"]: cells_of([rec], "qa")
                for rec in sorted(same, key=lambda rec: rec["settings"]["batch_size"])}
    lesson.table("Best rate and validation loss at each batch size, 2,560 examples (qa; recorded)", {
        f"{name}, batch {b}": {"chosen rate": f"{c['chosen']:g}" + (" (grid edge)" if c["edge"] else ""),
                               "val loss": at_best(c), "val exact match": at_best(c, "score")}
        for b, cells in by_batch.items() for (_, name), c in cells.items() if name in (ALL8, "full FT")},
        index="recipe, batch")
    gap = {b: SeedValues(tuple(lo - f for lo, f in zip(at_best(cells["qa", ALL8]).values,
                                                         at_best(cells["qa", "full FT"]).values)))
           for b, cells in by_batch.items()}  # LoRA's loss minus full FT's, seed by seed
    small, large = min(gap), max(gap)
    lesson.claim(f"LoRA loses more than full FT to a large batch (LoRA's validation loss minus full FT's, batch "
                 f"{large} against {small})", SOURCE, gap[large], gap[small], (f"batch {large}", f"batch {small}"))
    title = "LoRA's gap to full FT at each batch size (qa, recorded)"
    lesson.plot("batch.png", partial(draw_gap, gap=gap, title=title), title=title)
    return by_batch


def draw_rates(ax, cells: dict, title: str = "") -> None:
    """Validation loss against learning rate, one line per recipe (mean ± sd, every seed a dot)."""
    for name, c in cells.items():
        lrs = sorted(c["val loss"])
        plot_seeds(ax, lrs, [c["val loss"][lr] for lr in lrs], label=name, marker=".")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation loss (mean ± sd; dots: seeds)")
    ax.legend(fontsize=6)
    ax.set_title(title)


def draw_gap(ax, gap: dict, title: str = "") -> None:
    plot_seeds(ax, list(gap), list(gap.values()), label=f"{ALL8} minus full FT")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (2,560 examples in all)")
    ax.set_ylabel("validation loss gap (mean ± sd; dots: seeds)")
    ax.legend(fontsize=7)
    ax.set_title(title)


__all__ = ["ALL8", "ATTN8", "MATCHED", "MLP8", "at_best", "cells_of", "show_batches", "show_longer", "show_recipes"]
