"""Lesson 5: Prompt tuning, soft prompts.

What this lesson shows, by measuring it on your machine:
  1. one setting (20 soft tokens) over three seeds: how far the seed alone moves the result;
  2. how the soft prompt starts: random vectors or the embeddings of random vocabulary tokens (the
     package's default), compared by their loss curves from step 0 and where they end;
  3. a soft prompt of n vectors trains n x d numbers (checked against the count) and takes n positions
     of the context away from the input; how quality and step time change with n = 5, 20, 50, each
     length at the learning rate that validation picks for it from 0.03, 0.1 and 0.3, so that a
     length is not judged at a rate that suits another length;
  4. the learning rate it needs, against the one LoRA and the adapters train with;
  5. what it changes in the base: nothing, bitwise. Attached, the trained prompt still changes how the
     model reads other text, and that interference is measured beside full fine-tuning's forgetting;
  6. the gap to full fine-tuning at two model sizes: Lester et al. (2021) found that it closes as the
     model grows. Whether it does at this tiny scale is measured, not assumed.

Read alongside: minitune/strategies/prompt.py (~130 lines), GPT.forward_embeddings in minitune/model.py
(the one seam prompt tuning enters through), and minitune/studies.py (how each setting is fine-tuned
over seeds, and how a learning rate is chosen on validation; shared with lesson 4).

Run:  python lessons/05_prompt_tuning.py            7.5 minutes on 2 CPU cores (measured: 42 fine-tuning
                                                    runs, 3 of them lesson 1's, and on the first run
                                                    pretraining a small base for part 6)
      python lessons/05_prompt_tuning.py --quick    about 15 seconds, nano base and toy sizes

The idea. A prompt steers a frozen model through the embeddings of its tokens. Those embeddings are
vectors in R^d, and nothing forces them to be embeddings of real tokens: prompt tuning learns n free
vectors P_1..P_n, puts them before the input's embeddings, and trains only them, by the same
fine-tuning loss, with every weight of the model frozen:

    tokens t_1..t_T  ->  [ P_1 ... P_n , wte(t_1) ... wte(t_T) ]  ->  frozen GPT  ->  logits for t_1..t_T

    trainable:  n x d   (tiny base, d = 128: 20 vectors are 2,560 numbers, 0.24% of the model)
    context:    the model sees n + T positions, so an input may have at most block_size - n tokens
    cost:       every step and every prediction runs n more positions through the whole model

This is the smallest change of all the strategies: the model's function is untouched, only its input
is. The price is expressiveness: the soft prompt can only steer what the frozen layers already compute
(attention lets every later position read the prompt, but no weight changes). Lester et al. found
that this is enough when the model is large (at about 10B parameters prompt tuning matched full
fine-tuning on SuperGLUE) and clearly worse when it is small.

The learning rate. Only a few vectors train, each gets a small gradient, and they must move a long way
at the scale of the token embeddings; Lester et al. trained with a learning rate of 0.3, where full
fine-tuning uses about 1e-4 to 1e-3. minitune's default for prompt tuning is 0.1.

How quality is measured. Topic classification (five topics: sport, food, weather, trade, animals), at
the standard budget (160 steps of batch 16, 1000 training examples), three seeds per setting: test
accuracy on 200 items, and the test label loss, -log p(right topic | news item) with p normalised over
the five topic words. Two settings are called different only when the package's noise rule (Welch's t
over the seeds, minitune/stats.py) says so. Learning rates are chosen on the validation loss, never on
test.
"""

from __future__ import annotations

import copy

from minitune.checkpoint import read_json
from minitune.finetune import supervised
from minitune.lesson import Lesson, SeedRuns, held_out_text, perplexity, plot_seeds, step_time_ms
from minitune.pretrain import pretrain
from minitune.stats import Cell, summarize
from minitune.strategies import FullConfig, LoRAConfig, PromptTuningConfig, apply_strategy, base_unchanged
from minitune.studies import (choose_rate, compare_runs, curve, draw_curves, draw_quality, fine_tune_seeds,
                              start_loss, steps, study_task)
from minitune.sweep import grid

TASK = "topic"
N_TOKENS = 20
LR = PromptTuningConfig.default_lr


def _default_n(lesson: Lesson) -> int:
    return lesson.size(4, N_TOKENS)  # the nano base's 64-token context has little room to spare


# ------------------------------------------------------------------------------------------- 1. seeds
def seeds(lesson: Lesson, task, general: list[str]) -> SeedRuns:
    lesson.section(f"1. One setting, {len(lesson.seeds)} seeds")
    config = PromptTuningConfig(n_tokens=_default_n(lesson))
    base, _ = lesson.load_base()

    def interference(model, enc) -> dict:
        """General-text perplexity with the trained prompt attached, and of the base inside, prompt detached."""
        detached = copy.deepcopy(base)
        detached.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("soft_prompt")})
        return {"base unchanged": base_unchanged(model, base),
                "general ppl, prompt attached": perplexity(model, enc, general, lesson.device, max_batches=8),
                "general ppl, prompt detached": perplexity(detached, enc, general, lesson.device, max_batches=8)}

    runs = fine_tune_seeds(lesson, task, config, f"n{config.n_tokens}-lr{LR:g}", measure=interference)
    rows = [{"seed": s, "test accuracy": r["accuracy"], "test label loss": r["label loss"], "val loss": r["val loss"]}
            for s, r in zip(runs.seeds, runs.runs)]
    rows.append({"seed": "all", "test accuracy": runs["accuracy"], "test label loss": runs["label loss"],
                 "val loss": runs["val loss"]})
    lesson.table(f"Soft prompt of {config.n_tokens} tokens (init {config.init!r}, lr {LR:g}), {TASK}, {steps(lesson)} "
                 "steps; only the seed differs (the prompt's start and the batch order)", rows)
    acc = runs["accuracy"]
    lesson.conclude(f"The same setting gave test accuracies from {acc.range()} across {acc.n} seeds (mean {acc}; "
                    f"chance is {1 / len(task.labels):.2f}): every setting below is run with as many seeds and "
                    "compared by the noise rule, not by a single run.")
    return runs


# ------------------------------------------------------------------------------------ 2. initialisation
def initialisation(lesson: Lesson, task, default: SeedRuns) -> None:
    lesson.section("2. Initialisation: random vectors or vocabulary embeddings")
    n = _default_n(lesson)
    configs = {"random": PromptTuningConfig(n_tokens=n, init="random"),
               "vocab (default)": PromptTuningConfig(n_tokens=n, init="vocab")}
    runs = {name: default if config.init == "vocab" else fine_tune_seeds(lesson, task, config, f"init-{config.init}")
            for name, config in configs.items()}
    starts = {name: [start_loss(lesson, task, config, seed=s) for s in lesson.seeds]
              for name, config in configs.items()}
    curves = {name: curve(runs[name], starts[name]) for name in configs}
    early = [h["step"] for h in runs["random"].runs[0]["history"]][0]  # the first evaluation after step 0
    rows = [{"init": name, "step-0 val loss": summarize(starts[name]),
             f"val loss @ step {early}": summarize([r["history"][0]["val_loss"] for r in runs[name].runs]),
             "best val loss": runs[name]["val loss"], "test accuracy": runs[name]["accuracy"],
             "test label loss": runs[name]["label loss"]} for name in configs]
    lesson.table(f"Soft prompt of {n} tokens on {TASK}, lr {LR:g}, same steps", rows,
                 note="val loss: mean cross-entropy of every target token (topic word, newline, end of text)")
    start = lesson.compare(summarize(starts["random"]), summarize(starts["vocab (default)"]), ("random", "vocab"))
    text, loss = compare_runs(lesson, runs["random"], runs["vocab (default)"], ("random", "vocab"))
    lesson.conclude(
        f"At step 0, validation loss: {start.text()}. After training, {text}. Lester et al. found real "
        "embeddings a better start than random vectors, most of all for small models"
        + ("; here random vectors ended with the higher label loss beyond noise, in line with them."
           if loss.winner == "random" else
           "; here random vectors ended with the LOWER label loss beyond noise, against their finding."
           if loss.winner == "vocab" else
           "; here the noise rule found no difference in where the two ended."))
    lesson.plot("init_curves.png", lambda ax: draw_curves(ax, curves, "Soft prompt initialisations: loss from step 0"))


# ------------------------------------------------------------------------------------ 3. length x rate
def length_sweep(lesson: Lesson, task, default: SeedRuns) -> dict:
    lengths = lesson.size((1, 4), (5, N_TOKENS, 50))
    rates = grid(LR, span=1)
    lesson.section(f"3. Prompt length n = {', '.join(map(str, lengths))}, each at its own learning rate")
    choices = {}
    for n in lengths:
        done = {LR: default} if n == _default_n(lesson) else {}
        print(f"(n = {n}: {len(rates)} learning rates x {len(lesson.seeds)} seeds)", flush=True)
        choices[n] = choose_rate(lesson, task, PromptTuningConfig(n_tokens=n), rates, f"n{n}", done=done)
    lesson.table(f"Every run of the sweep ({TASK}, init 'vocab', {steps(lesson)} steps): the rate is chosen on the "
                 "validation loss; test scores are reported, never used to choose",
                 [{"n tokens": n, "lr": lr, "val loss": r["val loss"], "test accuracy": r["accuracy"],
                   "test label loss": r["label loss"], "chosen": "<-" if lr == c.rate else ""}
                  for n, c in choices.items() for lr, r in c.runs.items()])
    base, enc = lesson.load_base()
    rows = []
    for n, c in choices.items():
        model = apply_strategy(copy.deepcopy(base), PromptTuningConfig(n_tokens=n))
        x, y = supervised(task, "train", enc, model.max_input_tokens, 16).batch(0)
        chosen = c.runs[c.rate]
        rows.append({"n tokens": n, "trainable": chosen.runs[0]["trainable"], "n x d": n * base.config.n_embd,
                     "usable context": model.max_input_tokens,
                     "step ms": step_time_ms(model, x, y, device=lesson.device),
                     "chosen lr": c.rate, "within noise": ", ".join(f"{lr:g}" for lr in c.tied),
                     "test accuracy": chosen["accuracy"], "test label loss": chosen["label loss"]})
    lesson.table(f"Each length at its chosen rate; context {base.config.block_size} tokens; step: batch 16 "
                 "(one timing run)", rows)
    lesson.record("chosen_rates", {n: {"rate": c.rate, "tied": list(c.tied), "edge": c.at_edge}
                                   for n, c in choices.items()})
    exact = all(r["trainable"] == r["n x d"] for r in rows)
    lesson.conclude(f"The trainable count was exactly n x d for every length, and each soft token took one position "
                    f"of the {base.config.block_size}-token context." if exact else
                    "The trainable count did NOT equal n x d: see the table.")
    moved = len({c.rate for c in choices.values()}) > 1
    shared = set.intersection(*(set(c.tied) for c in choices.values()))
    edges = [n for n, c in choices.items() if c.at_edge]
    lesson.conclude(
        "Validation chose " + ", ".join(f"lr {c.rate:g} for n = {n}" for n, c in choices.items())
        + ((": the best rate moved with the length" + (
            f", though not beyond noise: lr {', '.join(f'{lr:g}' for lr in sorted(shared))} is within noise of every "
            "choice" if shared else ", beyond noise: no rate was within noise of every length's choice, so comparing "
            "lengths at one shared rate would compare how well each suits that rate") + ".")
           if moved else ": the same rate for every length tried.")
        + " Within noise of each choice: " + "; ".join(f"n = {n}: {', '.join(f'{lr:g}' for lr in c.tied)}"
                                                       for n, c in choices.items()) + "."
        + (f" For n = {', '.join(map(str, edges))} the choice is at the edge of the grid, so a better rate may lie "
           "beyond it." if edges else ""))
    short, long_ = lengths[-2], lengths[-1]
    text, loss = compare_runs(lesson, choices[long_].runs[choices[long_].rate],
                              choices[short].runs[choices[short].rate], (f"n = {long_}", f"n = {short}"))
    at_one, one_loss = compare_runs(lesson, choices[long_].runs[LR], choices[short].runs[LR],
                                    (f"n = {long_} at lr {LR:g}", f"n = {short} at lr {LR:g}"))
    lesson.conclude(f"Each at its chosen rate, {text}. At the one default rate {LR:g}, {at_one}."
                    + (" The verdict depends on the rate each length gets." if _side(loss) != _side(one_loss) else
                       " The verdict is the same at the default rate and at each length's own.")
                    + " Lester et al. saw little to gain past about 20 tokens on much larger models.")
    lesson.plot("length_rates.png", lambda ax: _draw_rates(ax, choices))
    lesson.plot("length_sweep.png", lambda ax: draw_quality(
        ax, lengths, [c.runs[c.rate] for c in choices.values()], "soft prompt length n (log scale)",
        f"Soft prompt length on {TASK}, each at its chosen rate"))
    return choices


def _side(c) -> int:
    """+1 when the first-named setting is higher beyond noise, -1 when the second is, 0 when neither."""
    return 0 if c.winner is None else 1 if c.winner == c.a else -1


def _draw_rates(ax, choices: dict) -> None:
    for n, c in choices.items():
        rates = sorted(c.runs)
        plot_seeds(ax, rates, [c.runs[lr]["val loss"] for lr in rates], label=f"n = {n} (chosen {c.rate:g})")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("validation loss (best of the run)")
    ax.legend(fontsize=8)
    ax.set_title("Where the learning rate is best, by prompt length")


# ------------------------------------------------------------------------------------- 4. learning rate
def learning_rate(lesson: Lesson, task, default: SeedRuns) -> None:
    lesson.section("4. The learning rate prompt tuning needs")
    config = PromptTuningConfig(n_tokens=_default_n(lesson))
    small = LoRAConfig.default_lr  # what LoRA and the adapters train with
    low = fine_tune_seeds(lesson, task, config, f"n{config.n_tokens}-lr{small:g}", lr=small)
    rows = [{"learning rate": lr, "test accuracy": run["accuracy"], "test label loss": run["label loss"],
             "val loss": run["val loss"]} for lr, run in ((small, low), (LR, default))]
    lesson.table(f"Soft prompt of {config.n_tokens} tokens, init 'vocab', {TASK}, same steps", rows)
    text, loss = compare_runs(lesson, low, default, (f"lr {small:g}", f"lr {LR:g}"))
    lesson.conclude(
        f"At LoRA's and the adapters' rate {small:g} against prompt tuning's default {LR:g}: {text}"
        + (". In this many steps the soft prompt needed the larger rate." if loss.winner == f"lr {small:g}" else
           ". The smaller rate did better here, against the usual advice." if loss.winner == f"lr {LR:g}" else
           "."))


# ---------------------------------------------------------------------------------------- 5. the base
def interference(lesson: Lesson, task, default: SeedRuns, general: list[str]) -> SeedRuns:
    lesson.section("5. What prompt tuning changes in the base, and how the prompt reads other text")
    base, enc = lesson.load_base()
    base_ppl = perplexity(base, enc, general, lesson.device, max_batches=8)
    full = fine_tune_seeds(lesson, task, FullConfig(), "full", measure=lambda model, enc: {
        "general ppl": perplexity(model, enc, general, lesson.device, max_batches=8)})
    unchanged = [r["base unchanged"] for r in default.runs]
    constant = Cell((base_ppl,) * len(default))  # the base's perplexity: the same number whatever the seed
    rows = [{"model": "the base", "general perplexity": base_ppl},
            {"model": "prompt-tuned, prompt detached (the base inside)", "general perplexity":
             default["general ppl, prompt detached"]},
            {"model": "prompt-tuned, prompt attached", "general perplexity": default["general ppl, prompt attached"]},
            {"model": "fully fine-tuned", "general perplexity": full["general ppl"]}]
    lesson.table(f"Perplexity on held-out general tiny-world text, after fine-tuning on {TASK} ({steps(lesson)} "
                 f"steps; soft prompt of {_default_n(lesson)} tokens)", rows)
    lesson.record("base_bitwise_unchanged", unchanged)
    same = all(v == base_ppl for v in default["general ppl, prompt detached"].values)
    lesson.conclude(
        f"After prompt tuning, every tensor of the base was bitwise unchanged in {sum(unchanged)} of {len(unchanged)} "
        "seeds (strategies.base_unchanged)" + (", and with the prompt detached its perplexity on general text was "
                                               f"the base's own, {base_ppl:.3f}: prompt tuning forgets nothing."
                                               if same and all(unchanged) else
                                               ": NOT the base (a bug?).")
        if all(unchanged) else "; the base changed (a bug?).")
    attached = lesson.compare(default["general ppl, prompt attached"], constant, ("prompt attached", "the base"), log=True)
    forgot = lesson.compare(full["general ppl"], constant, ("fully fine-tuned", "the base"), log=True)
    versus = lesson.compare(default["general ppl, prompt attached"], full["general ppl"],
                            ("prompt attached", "fully fine-tuned"), log=True)
    lesson.conclude(
        f"With the trained prompt attached, general-text perplexity: {attached.text()}"
        + (". Since the base is unchanged, that rise is the soft prompt's interference with text it was not trained "
           "for (it is read before every input), not forgetting: detach it and the base is back."
           if attached.winner == "prompt attached" else
           ". The attached prompt did not raise it beyond noise: no interference was measured.")
        + f" Full fine-tuning changes the weights themselves: {forgot.text()}. Prompt attached against fully "
        f"fine-tuned: {versus.text(verb='is higher than')}. (The base's perplexity is one number, the same for every "
        "seed, so those tests set the seeds' spread against a fixed value.)")
    return full


# ----------------------------------------------------------------------------------------------- 6. scale
def smaller_base(lesson: Lesson):
    """A nano base (~93k parameters) pretrained 6x longer than the test recipe's 100 steps, cached here."""
    path = lesson.out / "base-nano-600"
    if not (path / "config.json").is_file():
        print("(pretraining a nano base for 600 steps, once; it is cached in the lesson's folder)", flush=True)
        pretrain("nano", out=path, max_steps=600, quiet=True, checkpoint_every=0, device=lesson.device)
    return path


def _gap(full: SeedRuns, prompt: SeedRuns) -> Cell:
    """Full fine-tuning's accuracy minus prompt tuning's, seed by seed (the runs are independent)."""
    return Cell(tuple(f["accuracy"] - p["accuracy"] for f, p in zip(full.runs, prompt.runs)))


def scale(lesson: Lesson, task, choices: dict, full_here: SeedRuns) -> None:
    lesson.section("6. The gap to full fine-tuning, at two model sizes")
    n = lesson.size(4, 5)  # the nano base has a 64-token context: 5 soft tokens leave 59 for the news item
    bases = [lesson.base] if lesson.quick else [smaller_base(lesson), lesson.base]
    rows, gaps = [], []
    for path in bases:
        meta = read_json(path / "config.json")
        here = path == lesson.base
        full = full_here if here else fine_tune_seeds(lesson, task, FullConfig(), f"scale-{path.name}-full", base=path)
        soft = choices[n].runs[LR] if here else fine_tune_seeds(lesson, task, PromptTuningConfig(n_tokens=n),
                                                                f"scale-{path.name}-prompt", base=path)
        gaps.append(_gap(full, soft))
        rows.append({"base": f"{meta.get('preset', 'base')}, {meta.get('steps', '?')} pretraining steps",
                     "parameters": full.runs[0]["total"], "pretraining val loss": meta["val_loss"],
                     "full FT accuracy": full["accuracy"], "prompt accuracy": soft["accuracy"],
                     "gap (full - prompt)": gaps[-1]})
    lesson.table(f"Full fine-tuning (lr {FullConfig.default_lr:g}) against a {n}-token soft prompt (lr {LR:g}), "
                 f"{TASK}, same steps", rows)
    lesson.plot("scale_gap.png", lambda ax: _draw_scale(ax, rows))
    if len(rows) < 2:
        lesson.conclude(f"Only one base in quick mode: the accuracy gap was {rows[0]['gap (full - prompt)']}.")
        return
    small, big = rows
    c = lesson.compare(gaps[0], gaps[1], (f"the gap at {small['parameters']:,} parameters",
                                          f"the gap at {big['parameters']:,}"))
    lesson.conclude(
        f"The accuracy gap between full fine-tuning and prompt tuning: {c.text()}"
        + (". It shrank as the model grew, the direction of Lester et al.'s figure 1." if c.winner == c.a else
           ". It grew with the model, unlike Lester et al.'s figure 1." if c.winner == c.b else
           ". No shrinking is shown at this scale.")
        + f" Two sizes {big['parameters'] / small['parameters']:.0f}x apart, far below the billions of parameters "
        f"where their curves meet, on bases that also differ in how well they were pretrained (val loss "
        f"{small['pretraining val loss']:.2f} against {big['pretraining val loss']:.2f}), are two points, not a trend.")


def _draw_scale(ax, rows: list[dict]) -> None:
    x = [r["parameters"] for r in rows]
    plot_seeds(ax, x, [r["full FT accuracy"] for r in rows], label="full fine-tuning", marker="s")
    plot_seeds(ax, x, [r["prompt accuracy"] for r in rows], label="prompt tuning")
    ax.set_xscale("log")
    ax.set_xlabel("base parameters (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("Prompt tuning against full fine-tuning as the base grows")


def main(argv: list[str] | None = None) -> dict:
    lesson = Lesson.start(5, "Prompt tuning: soft prompts", __doc__, argv)
    task = study_task(lesson, TASK)
    general = held_out_text(lesson.size(60_000, 300_000))  # text like the base's own, not seen in pretraining
    default = seeds(lesson, task, general)
    initialisation(lesson, task, default)
    choices = length_sweep(lesson, task, default)
    learning_rate(lesson, task, default)
    full = interference(lesson, task, default, general)
    scale(lesson, task, choices, full)
    return lesson.finish()


if __name__ == "__main__":
    main()
