"""Lesson 3: LoRA, low-rank updates.

What this lesson shows, by measuring it on your machine:
  1. why the update is scaled by alpha / r: with that scale the first AdamW steps (three, at a tenth of
     LoRA's default rate, so that the change stays small) change the model's output by about the same
     amount at every rank; with a fixed scale the change grows with r, and rsLoRA's alpha / sqrt(r)
     lies between (one short run per setting: a mechanism, not a ranking);
  2. rank and learning rate together: LoRA on c_attn at r = 1, 8 and 64, each trained at three
     learning rates with three seeds, under alpha / r and under rsLoRA. Per rank, the rate with the
     lowest validation loss is chosen and the test scores are read there, next to full fine-tuning
     tuned the same way. So the lesson shows how the best rate moves with r, what rank buys once each
     rank has its own best rate, and (at one fixed rate) whether rsLoRA helps the largest rank. The
     trainable counts are checked against the closed form;
  3. which matrices to adapt: attention's c_attn (q, k, v: the package's default), the MLP's two
     layers, or all four, at r = 8 and LoRA's default rate, three seeds each, next to full fine-tuning;
  4. merging: W + s B A folded into W gives the same logits as the unmerged model, loads into a plain
     GPT, and makes inference as fast as the base, while the unmerged model pays for two extra thin
     matmuls per adapted layer;
  5. the file a task needs: the LoRA tensors against a full copy of the model.
Every comparison in parts 2 and 3 goes through the package's noise rule (minitune/stats.py: Welch's t
on the per-seed values); where it finds no difference, the lesson says so rather than pick a winner.

Read alongside: minitune/strategies/lora.py (the whole method, ~200 lines); save_trainable and
trainable_parameters in minitune/strategies/__init__.py; grid() in minitune/sweep.py (the rates tried:
each default with the 1-3-10 ladder's neighbours, 3e-3, 1e-2, 3e-2 for LoRA, 3e-4, 1e-3, 3e-3 for full
fine-tuning); differs and best_of in minitune/stats.py (the noise rule).

Run:  python lessons/03_lora.py            6 minutes on 2 CPU cores after lesson 1 (measured: 60
                                           fine-tunes of 160 steps, 6 of them lesson 1's)
      python lessons/03_lora.py --quick    about 20 seconds, nano base and 8-step runs

The idea. Fine-tuning changes a weight matrix W0 (out x in) into W0 + dW. Full fine-tuning learns dW
freely: in * out numbers per matrix. LoRA bets that the change a task needs has low rank, and writes it
as a product of two thin matrices:

    h = W0 x + s * B (A x)          A: r x in (random at the start)   B: out x r (zero at the start)

    trainable per matrix:   r (in + out)   instead of   in * out
    e.g. c_attn of the tiny base (in 128, out 384):  r = 8 gives 4,096 numbers against 49,152

B = 0 at the start, so the adapted model begins exactly as the base and training moves it away from
there. W0 never changes and never gets a gradient; only A and B do (and AdamW keeps moments for them
alone, which is where LoRA's memory saving comes from: lesson 2).

Why the scale s = alpha / r. AdamW moves each entry of B by roughly the learning rate per step, whatever
the size of its gradient. In the first steps column k of B moves along the output's gradient g, signed
by the k-th feature a_k = (A x)_k, so after t steps B A x ~ t * lr * g * sum_k |a_k|: r terms that add
up with the same sign. At a fixed learning rate the early change of the output thus grows about in
proportion to r, and dividing by r cancels that. rsLoRA (Kalajdzievski, 2023) argues that later in
training the r terms stop being aligned, that the right divisor is then sqrt(r), and that with
alpha / r a large rank learns too slowly to pay off.

The scale and the rate are nearly one knob. Because AdamW's step is about lr per entry whatever s is,
each step changes s B A by about s * lr: doubling s acts much like doubling the rate. A rate tuned per
rank can therefore make up for the choice of scale; what the choice really decides is where the best
rate lies at each rank. If alpha / r keeps the steps the same size at every rank, its best rate should
not depend on r. rsLoRA's scale here is alpha / r times sqrt(r / 8) (the two agree at r = 8), so its
best rate should then fall as r grows, by about sqrt(64) = 8x from r = 1 to r = 64. Part 2 measures
both.

What the papers report, to hold the measurements against. Hu et al. (2021) found a very small rank
(1 to 8) about as good as larger ones on GPT-3, and a fixed parameter budget better spent on several
matrices than on one. Schulman et al. ("LoRA Without Regret", Thinking Machines, 2025) report that
under alpha / r LoRA's best learning rate is about ten times full fine-tuning's and moves little with
rank, and that on small datasets LoRA on every layer, the MLP's above all, reaches full fine-tuning's
loss while LoRA on attention alone falls behind (their attention-only runs also adapt the output
projection, attn.c_proj; here "attention" is c_attn alone). This lesson's model and task are far
smaller than theirs; where it agrees or disagrees, it says so and by how much.

Merging. After training, W = W0 + s B A is one matrix of the base's shape: fold it in once and the
model is a plain GPT again, with no extra work per token. Take it out (W - s B A) and the base is back,
up to float rounding, ready for another task's A and B.

How quality is measured. The task is qa: short questions about facts, each fact asked in several
phrasings in the training split and in a new phrasing in validation and in test (sentiment, the other
task the package tunes on, sits near 100% accuracy for every setting, too close to the ceiling to rank
them). Each run keeps the checkpoint with the lowest validation loss (mean cross-entropy per answer
token, evaluated every 40 steps); that validation loss picks the learning rate. The test split is used
only for the scores reported at the chosen rate: the test loss (the same cross-entropy) and exact
match (the generated answer equals the right one). Training is the package's standard budget: 160
steps of batch 16.
"""

from __future__ import annotations

import copy
import math
import time

import torch

from minitune.bench import inference_case, run_interleaved
from minitune.errors import TrainingError
from minitune.finetune import open_run, supervised
from minitune.lesson import Lesson, bar_seeds, plot_seeds
from minitune.memory import file_size, human_bytes
from minitune.model import GPT, count_parameters
from minitune.pretrain import load_run
from minitune.stats import Cell, best_of, summarize
from minitune.strategies import (FullConfig, LoRAConfig, apply_strategy, merge, save_trainable,
                                 trainable_parameters, unmerge)
from minitune.strategies.lora import lora_layers, merged_state_dict
from minitune.sweep import grid
from minitune.train import TrainConfig, seed_everything, train

TASK = "qa"
ALPHA = 16           # with alpha / r: s = 2 at the default r = 8
ALPHA_R, RSLORA, FIXED = "alpha / r", "rsLoRA", "fixed s"
ALL_FOUR = ("c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
# (name, LoRAConfig.targets) for part 3
TARGETS = [("attention: c_attn (q, k, v)", ("c_attn",)), ("MLP: c_fc and c_proj", ("mlp.c_fc", "mlp.c_proj")),
           ("all four", ALL_FOUR)]


def layer_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer of a block, from the model's width alone (GPT-2's layout)."""
    d = config.n_embd
    return {"c_attn": (d, 3 * d), "attn.c_proj": (d, d), "mlp.c_fc": (d, 4 * d), "mlp.c_proj": (4 * d, d)}


def closed_form(config, r: int, targets: tuple[str, ...]) -> int:
    """r (in + out) per adapted layer, summed over the blocks."""
    shapes = layer_shapes(config)
    return config.n_layer * sum(r * sum(shapes[t]) for t in targets)


def lora(scheme: str, r: int, ref: int, targets: tuple[str, ...] = ("c_attn",)) -> LoRAConfig:
    """LoRA at rank r under a scale scheme; the three schemes give the same s = ALPHA / ref at r = ref."""
    if scheme == ALPHA_R:
        return LoRAConfig(r=r, alpha=ALPHA, targets=targets)
    if scheme == RSLORA:  # s = alpha / sqrt(r)
        return LoRAConfig(r=r, alpha=ALPHA / math.sqrt(ref), targets=targets, rslora=True)
    return LoRAConfig(r=r, alpha=ALPHA / ref * r, targets=targets)  # FIXED: s = ALPHA / ref at every rank


class Progress:
    """One line per fine-tune: which run, its validation loss, and the time left at the pace so far."""

    def __init__(self, total: int):
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def tick(self, what: str, outcome: str) -> None:
        self.done += 1
        left = (time.perf_counter() - self.t0) / self.done * (self.total - self.done)
        print(f"  [{self.done:>{len(str(self.total))}}/{self.total}] {what}: {outcome}   (~{left / 60:.1f} min left)",
              flush=True)


def train_once(lesson: Lesson, task, config, lr: float, seed: int, name: str, progress: Progress) -> dict:
    """Fine-tune the base with `config` at rate lr (a shared cell, minitune.cells: at LoRA's and full
    fine-tuning's defaults these are the runs lessons 1 and 6 show): validation loss, test loss and exact
    match, counts and the run folder (or, when training stopped on a non-finite loss, diverged: this rate
    is too large for this setting)."""
    what = f"{name}, lr {lr:g}, seed {seed}"
    try:
        cell = lesson.cell(task.name, config, seed, lr=lr)
    except TrainingError:
        progress.tick(what, "diverged")
        return {"val loss": math.nan, "diverged": True}
    progress.tick(what, f"validation loss {cell['best_val_loss']:.3f}")
    return {"val loss": cell["best_val_loss"], "trainable": cell["trainable"], "total": cell["total"],
            "diverged": False, "run": cell["run"], "test loss": cell["test_loss"], "test exact match": cell["score"]}


def trained_model(lesson: Lesson, run: dict):
    """The model of one run, loaded from its folder."""
    return open_run(run["run"], lesson.device)[0]


def test_scores(runs) -> dict[str, Cell]:
    """Each seed's test scores (computed when its cell was trained): a Cell per measure."""
    return {k: summarize([run[k] for run in runs.runs]) for k in ("test loss", "test exact match")}


def sweep(lesson: Lesson, task, enc, config, name: str, progress: Progress, rates: list[float] | None = None) -> dict:
    """`config` at each rate (default: its grid around default_lr) over the seeds. The chosen rate is the
    lowest mean validation loss (stats.best_of) among the rates where no seed diverged; `tied` are the
    rates within noise of it; test scores are read at the chosen rate only."""
    rates = rates or grid(type(config).default_lr)
    runs = {lr: lesson.over_seeds(lambda seed: train_once(lesson, task, config, lr, seed, name, progress))
            for lr in rates}
    usable = [lr for lr in rates if not any(run["diverged"] for run in runs[lr].runs)]
    if not usable:
        raise TrainingError(f"{name}: training diverged at every rate ({rates_text(rates)})")
    pick = best_of({f"{lr:g}": runs[lr]["val loss"] for lr in usable}, higher_is_better=False)
    best = next(lr for lr in usable if f"{lr:g}" == pick.best)
    first = runs[best].runs[0]
    return {"config": config, "rates": rates, "runs": runs, "best": best, "usable": usable,
            "tied": [lr for lr in usable if f"{lr:g}" in pick.tied],
            "edge": len(rates) > 1 and best in (rates[0], rates[-1]),
            "trainable": first["trainable"], "total": first["total"],
            "test": test_scores(runs[best])}


def val_loss(cell: dict, lr: float) -> Cell | str:
    """The validation loss Cell of a swept cell at rate lr, or how many of its seeds diverged."""
    if lr in cell["usable"]:
        return cell["runs"][lr]["val loss"]
    runs = cell["runs"][lr].runs
    return f"diverged {sum(run['diverged'] for run in runs)}/{len(runs)}"


def at_rate(cell: dict, lr: float) -> dict[str, Cell]:
    """Test scores of a swept cell at rate lr (its chosen rate's are already there)."""
    if lr not in cell["usable"]:
        raise TrainingError(f"no test scores at rate {lr:g}: training diverged there")
    return cell["test"] if lr == cell["best"] else test_scores(cell["runs"][lr])


def rates_text(rates) -> str:
    return ", ".join(f"{lr:g}" for lr in rates)


def times(x: float) -> str:
    """A ratio as '3.3x' or '30x'."""
    return f"{x:.1f}x" if x < 10 else f"{x:.0f}x"


def lower(c) -> str | None:
    """The name with the lower mean when a comparison is beyond noise (for a loss: the better one)."""
    return None if c.winner is None else c.b if c.winner == c.a else c.a


# ------------------------------------------------------------------------------------- 1. the scale
EARLY_LR = LoRAConfig.default_lr / 10  # small enough that a few steps stay in the regime the argument describes


def early_change(lesson: Lesson, task, config, steps: int) -> float:
    """RMS change of the logits (vs the base) after `steps` AdamW steps at the constant rate EARLY_LR."""
    base, enc, _ = load_run(lesson.base, lesson.device)
    seed_everything(0)
    model = apply_strategy(copy.deepcopy(base), config)
    data = supervised(task, "train", enc, model.max_input_tokens, 16)
    train(model, data, None, TrainConfig(max_steps=steps, lr=EARLY_LR, min_lr=EARLY_LR, warmup_steps=0,
                                         device=lesson.device, quiet=True))
    x, _ = next(supervised(task, "validation", enc, model.max_input_tokens, 16).eval_batches())
    with torch.no_grad():
        x = x.to(lesson.device)
        return float((model.eval()(x)[0] - base(x)[0]).pow(2).mean().sqrt())


def scale_mechanism(lesson: Lesson, task, ranks: tuple[int, ...], ref: int) -> None:
    lesson.section("1. The scale: alpha / r, a fixed s, and rsLoRA's alpha / sqrt(r), in the first steps")
    first = 3
    early = {(scheme, r): early_change(lesson, task, lora(scheme, r, ref), first)
             for scheme in (ALPHA_R, FIXED, RSLORA) for r in ranks}
    rows = [{"scheme": scheme, "r": r, "s": lora(scheme, r, ref).scaling, f"logit change after {first} steps": v}
            for (scheme, r), v in early.items()]
    lesson.table(f"One seed, the same rate ({EARLY_LR:g}) for every row; the schemes agree at r = {ref}", rows,
                 note="logit change: root-mean-square difference from the base's logits on a validation batch. The rate is "
                      "a tenth of LoRA's default: at the default, a few steps already move the logits so far that every "
                      "setting ends up changed alike and the first-step argument no longer applies.")
    ratio = {k: early[(k, ranks[-1])] / early[(k, ranks[0])] for k in (ALPHA_R, FIXED, RSLORA)}
    lesson.record("early_change_ratio_largest_to_smallest_rank", ratio)
    flattest = min(ratio, key=lambda k: abs(math.log(ratio[k])))
    lesson.conclude(
        f"After {first} steps, going from r = {ranks[0]} to r = {ranks[-1]} multiplied the change of the logits by "
        f"{ratio[ALPHA_R]:.2f} with alpha / r, {ratio[FIXED]:.2f} with a fixed s and {ratio[RSLORA]:.2f} with rsLoRA"
        + (": dividing by r kept the first steps closest to the same size at every rank, as the argument above "
           "predicts." if flattest == ALPHA_R else
           f": here {flattest} kept the first steps closest in size across ranks, not alpha / r as the argument "
           "above predicts (it assumes the r terms stay aligned, which they need not)."))


# ------------------------------------------------------------------------------- 2. rank and rate
def rank_and_rate(lesson: Lesson, task, enc, base_config, ranks: tuple[int, ...], ref: int,
                  progress: Progress) -> tuple[dict, dict]:
    lesson.section(f"2. Rank and learning rate: r = {', '.join(map(str, ranks))} under alpha / r and rsLoRA, "
                   "full FT beside")
    cells = {}
    for scheme in (ALPHA_R, RSLORA):
        for r in ranks:
            shared = scheme == RSLORA and r == ref  # the same config as alpha / r at this rank
            cells[(scheme, r)] = cells[(ALPHA_R, r)] if shared else sweep(
                lesson, task, enc, lora(scheme, r, ref), f"{'rs' if scheme == RSLORA else 'lora'}-r{r}", progress)
    full = sweep(lesson, task, enc, FullConfig(), "full", progress)
    named = [(f"LoRA {scheme}", r, cell) for (scheme, r), cell in cells.items()] + [("full FT", None, full)]
    lesson.table(f"Validation loss at each rate ({TASK}, LoRA on c_attn, {lesson.budget.steps} steps)",
                 [{"method": name, "r": "" if r is None else r, "s": "" if r is None else cell["config"].scaling,
                   "rate": f"{lr:g}", "validation loss": val_loss(cell, lr),
                   "": ", ".join(m for m, on in (("chosen", lr == cell["best"]),
                                                  ("within noise of it", lr in cell["tied"] and lr != cell["best"]),
                                                  ("grid edge", lr == cell["best"] and cell["edge"])) if on)}
                  for name, r, cell in named for lr in cell["rates"]],
                 note=f"rsLoRA at r = {ref} is the same run as alpha / r (both s = {ALPHA / ref:g}). The chosen rate has "
                      "the lowest mean; 'within noise' rates are not worse beyond noise (Welch t, p >= 0.05).")
    rows = [{"method": name, "r": "" if r is None else r, "trainable": cell["trainable"],
             "closed form": count_parameters(base_config) if r is None else closed_form(base_config, r, ("c_attn",)),
             "% of base": 100.0 if r is None else 100 * cell["trainable"] / (cell["total"] - cell["trainable"]),
             "chosen rate": f"{cell['best']:g}", "test loss": cell["test"]["test loss"],
             "test exact match": cell["test"]["test exact match"]} for name, r, cell in named]
    lesson.table("Test scores at each setting's chosen rate", rows,
                 note="closed form: n_layer x r x (in + out) for LoRA, count_parameters(config) for full FT.")
    exact = all(row["trainable"] == row["closed form"] for row in rows)
    lesson.conclude(f"The trainable count equalled the closed form exactly in all {len(rows)} rows."
                    if exact else "The trainable count did NOT match the closed form: see the table.")
    rate_conclusions(lesson, cells, full, ranks, ref)
    quality_conclusions(lesson, task, enc, cells, full, ranks, ref)
    lesson.record("chosen_rates", {f"{scheme}, r = {r}": cell["best"] for (scheme, r), cell in cells.items()}
                  | {"full FT": full["best"]})
    lesson.plot("rank_rate.png", lambda ax: draw_rates(ax, cells, full, ranks, ref), figsize=(6.4, 4.4))
    lesson.plot("rank_test.png", lambda ax: draw_rank_test(ax, cells, full, ranks))
    return cells, full


def rate_conclusions(lesson: Lesson, cells: dict, full: dict, ranks, ref: int) -> None:
    """Where the best rate lay at each rank under each scheme, and against full FT's."""
    common = {}
    for scheme in (ALPHA_R, RSLORA):
        mine = [cells[(scheme, r)] for r in ranks]
        common[scheme] = sorted(set.intersection(*(set(c["tied"]) for c in mine)))
        edges = [f"r = {r}" for r, c in zip(ranks, mine) if c["edge"]]
        lesson.conclude(
            f"With {scheme}, the rate with the lowest validation loss was "
            + ", ".join(f"{c['best']:g} at r = {r}" for r, c in zip(ranks, mine)) + "; "
            + (f"{rates_text(common[scheme])} lay within noise of the best at every rank, so one rate served all "
               f"{len(ranks)} ranks" if common[scheme] else
               "no single rate lay within noise of the best at every rank: the best rate moved with r")
            + (f" (the best fell at the grid's edge for {', '.join(edges)}: it may lie beyond)." if edges else "."))
    lesson.conclude(
        "Schulman et al. (2025) find LoRA's best rate under alpha / r nearly independent of rank: "
        + ("this small model agrees on this grid of 3x steps." if common[ALPHA_R] else
           "this small model disagrees, on this grid of 3x steps.")
        + f" The argument above predicts that rsLoRA's best rate falls as r grows (about "
        f"{math.sqrt(ranks[-1] / ranks[0]):.0f}x from r = {ranks[0]} to r = {ranks[-1]}); " + rs_move(cells, ranks))
    lo_rank = cells[(ALPHA_R, ref)]
    lo, hi = min(lo_rank["tied"]) / max(full["tied"]), max(lo_rank["tied"]) / min(full["tied"])
    ratio = lo_rank["best"] / full["best"]
    edge = [name for name, c in (("LoRA's", lo_rank), ("full FT's", full)) if c["edge"]]
    lesson.conclude(
        f"Full fine-tuning's best rate was {full['best']:g} (within noise: {rates_text(full['tied'])}); LoRA's at "
        f"r = {ref} with alpha / r was {lo_rank['best']:g} (within noise: {rates_text(lo_rank['tied'])}): "
        f"{times(ratio)} for the best means, {times(lo)} to {times(hi)} allowing for noise. "
        + ("That range holds the 10x Schulman et al. report." if lo <= 10 <= hi else
           "That range misses the 10x Schulman et al. report: here the ratio was "
           + ("smaller." if hi < 10 else "larger."))
        + (f" ({' and '.join(edge)} best lay at the grid's edge, so the true ratio may lie further out.)"
           if edge else ""))


def rs_move(cells: dict, ranks) -> str:
    """How rsLoRA's best rate moved from the smallest rank to the largest, judged by the rates within noise."""
    small, big = cells[(RSLORA, ranks[0])], cells[(RSLORA, ranks[-1])]
    moved = f"its best rate went from {small['best']:g} to {big['best']:g}"
    if max(big["tied"]) < min(small["tied"]):
        return moved + ", and the rates within noise of the best no longer overlap: a fall beyond noise, as predicted."
    if min(big["tied"]) > max(small["tied"]):
        return moved + ", and the rates within noise of the best no longer overlap: a rise, against the prediction."
    return moved + ", but the rates within noise of the best overlap at the two ranks: no move beyond noise."


def fixed_rate_conclusion(lesson: Lesson, task, enc, cells: dict, big: int) -> None:
    """rsLoRA's own claim: at one fixed rate (LoRA's default), does it help the largest rank?"""
    lr, pair = LoRAConfig.default_lr, (cells[(ALPHA_R, big)], cells[(RSLORA, big)])
    if any(lr not in cell["usable"] for cell in pair):
        lesson.conclude(f"At r = {big} and rate {lr:g}, training diverged for a scheme: no fixed-rate comparison.")
        return
    c = lesson.compare(at_rate(pair[0], lr)["test loss"],
                       at_rate(pair[1], lr)["test loss"],
                       (f"alpha / r at r = {big}", f"rsLoRA at r = {big}"))
    lesson.conclude(
        f"At one fixed rate ({lr:g}), test loss: {c.text(verb='is higher than')}. Kalajdzievski reports that at a "
        "fixed rate alpha / r leaves a large rank learning too slowly and rsLoRA does better: "
        + {f"rsLoRA at r = {big}": "so it was here.", f"alpha / r at r = {big}": "here alpha / r did better."}.get(
            lower(c), "here no difference was found beyond noise."))


def quality_conclusions(lesson: Lesson, task, enc, cells: dict, full: dict, ranks, ref: int) -> None:
    """What rank buys at each rank's own best rate, whether the scheme matters, and LoRA against full FT."""
    rank_of = {f"r = {r}": r for r in ranks}
    losses = {name: cells[(ALPHA_R, r)]["test"]["test loss"] for name, r in rank_of.items()}
    pick = best_of(losses, higher_is_better=False)
    smallest = next(name for name in losses if name in pick.tied)
    worse = [name for name in losses if name not in pick.tied]
    lesson.conclude(
        f"At each rank's own best rate (alpha / r), the lowest test loss was at {pick.best} "
        f"({losses[pick.best]:.3f}); the smallest rank within noise of it was {smallest}"
        + (f", and {', '.join(worse)} did worse beyond noise." if worse else
           ", and no rank did worse than it beyond noise.")
        + (" A small rank was enough, as Hu et al. found on GPT-3." if rank_of[smallest] <= ref else
           f" A rank above {ref} was needed here, which Hu et al. did not see on GPT-3."))
    differ = []
    for r in (ranks[0], ranks[-1]):
        c = lesson.compare(cells[(ALPHA_R, r)]["test"]["test loss"], cells[(RSLORA, r)]["test"]["test loss"],
                           (f"alpha / r at r = {r}", f"rsLoRA at r = {r}"))
        lesson.conclude(f"Each at its own best rate, test loss: {c.text(verb='is higher than')}.")
        differ += [r] if c.beyond_noise else []
    lesson.conclude("Once the rate was tuned per rank, the scale scheme made "
                    + (f"a difference beyond noise at r = {' and '.join(map(str, differ))}." if differ else
                       "no difference beyond noise at either end of the rank range."))
    fixed_rate_conclusion(lesson, task, enc, cells, ranks[-1])
    best = cells[(ALPHA_R, rank_of[pick.best])]
    for key in ("test loss", "test exact match"):
        c = lesson.compare(best["test"][key], full["test"][key], (f"LoRA on c_attn at {pick.best}", "full FT"))
        ahead = c.winner if key == "test exact match" else lower(c)
        lesson.conclude(
            f"{key.capitalize()}: {c.text(verb='is higher than')}. Schulman et al. see LoRA on attention alone fall "
            "behind full fine-tuning: " + ("so it did here." if ahead == "full FT" else
                                           "here it was ahead of full fine-tuning." if ahead else
                                           "here no gap was found beyond noise."))


def draw_rates(ax, cells: dict, full: dict, ranks, ref: int) -> None:
    colors = dict(zip(ranks, ("tab:blue", "tab:orange", "tab:green")))
    for (scheme, r), cell in cells.items():
        if scheme == RSLORA and r == ref:
            continue  # the same runs as alpha / r
        label = f"{scheme}, r = {r}" + (" (both)" if r == ref else "")
        plot_seeds(ax, cell["usable"], [cell["runs"][lr]["val loss"] for lr in cell["usable"]], label=label,
                   color=colors[r], marker="o" if scheme == ALPHA_R else "s")
    plot_seeds(ax, full["usable"], [full["runs"][lr]["val loss"] for lr in full["usable"]], label="full FT",
               color="black", marker="D")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("validation loss (per answer token)")
    ax.legend(fontsize=7)
    ax.set_title(f"Rate against rank on {TASK}: colour = rank, circle = alpha / r, square = rsLoRA", fontsize=10)


def draw_rank_test(ax, cells: dict, full: dict, ranks) -> None:
    for scheme, marker in ((ALPHA_R, "o"), (RSLORA, "s")):
        plot_seeds(ax, ranks, [cells[(scheme, r)]["test"]["test loss"] for r in ranks], label=scheme, marker=marker)
    f = full["test"]["test loss"]
    ax.axhline(f.mean, color="black", linestyle="--", label="full FT (mean ± sd)")
    if f.n > 1:
        ax.axhspan(f.mean - f.sd, f.mean + f.sd, color="black", alpha=0.1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rank r (log scale)")
    ax.set_ylabel("test loss at the chosen rate")
    ax.legend(fontsize=8)
    ax.set_title(f"LoRA on c_attn, {TASK}: each rank at its own best rate")


# ------------------------------------------------------------------------------------------ 3. targets
def targets(lesson: Lesson, task, enc, base_config, cells: dict, full: dict, ref: int, progress: Progress):
    lesson.section("3. Which matrices to adapt")
    lr = LoRAConfig.default_lr
    scored = {}
    for name, tgt in TARGETS:
        if tgt == ("c_attn",):  # made in part 2
            cell = cells[(ALPHA_R, ref)]
            scored[name] = {"trainable": cell["trainable"], "val loss": val_loss(cell, lr),
                            **at_rate(cell, lr), "models": cell["runs"][lr].runs}
        else:
            cell = sweep(lesson, task, enc, lora(ALPHA_R, ref, ref, tgt), "targets-" + "+".join(tgt), progress, [lr])
            scored[name] = {"trainable": cell["trainable"], "val loss": val_loss(cell, lr), **cell["test"],
                            "models": cell["runs"][lr].runs}
    rows = [{"adapted": name, "trainable": s["trainable"], "closed form": closed_form(base_config, ref, tgt),
             "validation loss": s["val loss"], "test loss": s["test loss"], "test exact match": s["test exact match"]}
            for (name, tgt), s in zip(TARGETS, scored.values())]
    rows.append({"adapted": f"full FT (rate {full['best']:g})", "trainable": full["trainable"],
                 "closed form": count_parameters(base_config), "validation loss": full["runs"][full["best"]]["val loss"],
                 **full["test"]})
    lesson.table(f"LoRA at r = {ref}, alpha / r, rate {lr:g} (LoRA's default), on different weight matrices ({TASK})",
                 rows)
    target_conclusions(lesson, scored, full, lr)
    names = [name for name, _ in TARGETS] + ["full FT"]
    losses = [s["test loss"] for s in scored.values()] + [full["test"]["test loss"]]
    lesson.plot("targets.png", lambda ax: draw_targets(ax, names, losses), figsize=(6.4, 4.2))
    return trained_model(lesson, scored["all four"]["models"][0])


def target_conclusions(lesson: Lesson, scored: dict, full: dict, lr: float) -> None:
    """Which placement did best, and the two findings of Schulman et al. it can check."""
    attention, mlp, every = (name for name, _ in TARGETS)
    pick = best_of({name: s["test loss"] for name, s in scored.items()}, higher_is_better=False)
    lesson.conclude(
        f"The lowest test loss was with {pick.best} ({scored[pick.best]['test loss']:.3f}); "
        + (f"within noise of it: {', '.join(n for n in pick.tied if n != pick.best)}."
           if len(pick.tied) > 1 else "every other placement did worse beyond noise."))
    c = lesson.compare(scored[attention]["test loss"], scored[mlp]["test loss"], ("attention", "MLP"))
    lesson.conclude(
        f"Test loss: {c.text(verb='is higher than')}. Schulman et al. find LoRA on the MLP ahead of LoRA on "
        "attention: " + {"MLP": "so it is here.", "attention": "here it was the other way round."}.get(
            lower(c), "here the two could not be told apart."))
    for key in ("test loss", "test exact match"):
        c = lesson.compare(scored[every][key], full["test"][key], ("LoRA on all four", "full FT"))
        ahead = c.winner if key == "test exact match" else lower(c)
        lesson.conclude(
            f"{key.capitalize()}: {c.text(verb='is higher than')}. Schulman et al. find LoRA on every layer as good as "
            "full fine-tuning on small datasets: "
            + ("here full fine-tuning stayed ahead." if ahead == "full FT" else
               "here LoRA was ahead." if ahead else
               f"no gap was found beyond noise here ({c.n_a} seeds cannot show the two equal, only fail to part them)."))
    t = {name: s["trainable"] for name, s in scored.items()}
    lesson.conclude(
        f"These placements differ in size as well as place ({t[attention]:,}, {t[mlp]:,} and {t[every]:,} "
        f"trainable numbers) and all ran at rate {lr:g}, the rate the package's sweep chose for c_attn; the run "
        "varied neither separately, so a gap above may come from the count or the rate as much as from the place.")


def draw_targets(ax, names: list[str], losses: list[Cell]) -> None:
    bar_seeds(ax, [n.split(":")[0] for n in names], losses)
    ax.set_ylabel("test loss (per answer token)")
    ax.set_title(f"Which matrices LoRA adapts ({TASK}); full FT for reference")


# ------------------------------------------------------------------------------------------ 4. merging
@torch.no_grad()
def merging(lesson: Lesson, task, model, enc) -> None:
    lesson.section("4. Merging: same outputs, no added latency")
    x, _ = next(supervised(task, "test", enc, model.max_input_tokens, batch_size=16).eval_batches())
    x = x.to(lesson.device)
    base, _ = lesson.load_base()
    before = model(x)[0]
    merge(model)
    after = model(x)[0]
    plain = GPT(model.config).to(lesson.device).eval()
    plain.load_state_dict(merged_state_dict(model), strict=True)  # no lora_ tensors left: a plain GPT-2
    as_plain = plain(x)[0]
    back = dict(unmerge(copy.deepcopy(model)).named_parameters())
    diffs = {"merged vs unmerged (same model)": float((after - before).abs().max()),
             "plain GPT with merged weights vs unmerged": float((as_plain - before).abs().max()),
             "weights after unmerge vs the base's weights": max(float((back[n] - p).abs().max())
                                                                for n, p in base.named_parameters())}
    lesson.record("merge_max_abs_difference", diffs)
    lesson.table(f"Logits on {x.size(0)} test prompts (largest |logit|: {float(before.abs().max()):.2f})",
                 [{"comparison": k, "max |difference|": f"{v:.1e}"} for k, v in diffs.items()])
    logits_diff, weights_diff = max(list(diffs.values())[:2]), list(diffs.values())[2]
    lesson.conclude(f"Merging changed no logit by more than {logits_diff:.1e} "
                    + ("(float32 rounding)" if logits_diff < 1e-3 else "(MORE than float32 rounding: a bug?)")
                    + f", and unmerging returned the base's weights to within {weights_diff:.1e}.")

    models = {"base": base.eval(), "LoRA unmerged": unmerge(copy.deepcopy(model)).eval(), "LoRA merged": model.eval()}
    cases = [inference_case("lesson", name, m, torch.device(lesson.device)) for name, m in models.items()]
    run_interleaved(cases, rounds=lesson.size(3, 9), device=torch.device(lesson.device),
                    min_group_s=lesson.size(0.05, 0.4), log=lambda s: None)
    ms = {c.name: 1000 * c.median for c in cases}
    spread = {c.name: 1000 * (max(c.times) - min(c.times)) for c in cases}
    rows = [{"model": n, "median ms per forward": ms[n], "% vs base": 100 * (ms[n] / ms["base"] - 1),
             "rounds' spread (max-min) ms": spread[n]} for n in models]
    layers = len(lora_layers(model))
    lesson.table(f"One forward pass, batch 1 x {model.config.block_size} tokens, {layers} adapted layers "
                 "(interleaved rounds, median)", rows)
    lesson.record("latency_ms", ms)
    merged, unmerged = rows[2]["% vs base"], rows[1]["% vs base"]
    noise = 100 * spread["base"] / ms["base"]
    lesson.conclude(f"Merged, the LoRA model ran {merged:+.1f}% against the base "
                    + ("(within the timing noise" if abs(merged) <= noise else "(OUTSIDE the timing noise")
                    + f": the base's own rounds spread over {noise:.0f}%); unmerged it ran {unmerged:+.1f}%, the cost of "
                    f"the two thin matmuls beside each of its {layers} adapted layers.")


# ------------------------------------------------------------------------------------------ 5. files
def file_sizes(lesson: Lesson, cells: dict, ranks, ref: int, all_four) -> None:
    lesson.section("5. What a task costs on disk")
    full_bytes = file_size(lesson.base / "model.safetensors")
    base_params = trainable_parameters(all_four)[1] - trainable_parameters(all_four)[0]
    rows = [{"what is stored": "a full copy of the model (full FT)", "parameters": base_params,
             "4 bytes x parameters": 4 * base_params, "file bytes": full_bytes, "% of full copy": 100.0}]
    chosen = {r: cells[(ALPHA_R, r)] for r in (ranks[0], ranks[-1])}
    choices = [(f"LoRA r = {r}, c_attn", f"rank-{r}", trained_model(lesson, c["runs"][c["best"]].runs[0]))
               for r, c in chosen.items()]
    for name, folder, model in choices + [(f"LoRA r = {ref}, all four", "all-four", all_four)]:
        n = trainable_parameters(model)[0]
        size = file_size(save_trainable(model, lesson.out / "adapters" / folder) / "trainable.safetensors")
        rows.append({"what is stored": name, "parameters": n, "4 bytes x parameters": 4 * n, "file bytes": size,
                     "% of full copy": 100 * size / full_bytes})
    lesson.table("Bytes per task (safetensors: 4 bytes per float32 number, plus a small header naming the tensors)",
                 rows)
    smallest, largest = rows[1], max(rows[1:], key=lambda r: r["file bytes"])
    lesson.conclude(f"A full copy takes {human_bytes(full_bytes)}; a LoRA file takes {human_bytes(smallest['file bytes'])} "
                    f"to {human_bytes(largest['file bytes'])} ({smallest['% of full copy']:.2f}% to "
                    f"{largest['% of full copy']:.1f}% of it), so one base can serve many tasks, each a small file.")


def main(argv: list[str] | None = None) -> dict:
    lesson = Lesson.start(3, "LoRA: low-rank updates", __doc__, argv)
    task = lesson.budget.task(TASK)  # qa: every fact once per split, the same sizes in both modes
    base, enc = lesson.load_base()
    ranks = lesson.size((1, 2, 4), (1, 8, 64))
    ref = ranks[1]  # the default rank in the full run: where the scale schemes agree
    rates = len(grid(LoRAConfig.default_lr))
    # part 2: (2 schemes x ranks, less the shared one) + full FT, each at every rate; part 3: two new placements
    progress = Progress(len(lesson.seeds) * ((2 * len(ranks) - 1) * rates + len(grid(FullConfig.default_lr)) + 2))
    scale_mechanism(lesson, task, ranks, ref)
    cells, full = rank_and_rate(lesson, task, enc, base.config, ranks, ref, progress)
    all_four = targets(lesson, task, enc, base.config, cells, full, ref, progress)
    merging(lesson, task, copy.deepcopy(all_four), enc)
    file_sizes(lesson, cells, ranks, ref, all_four)
    return lesson.finish()


if __name__ == "__main__":
    main()
