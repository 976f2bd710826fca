"""Lesson 2: Full fine-tuning: what it costs in memory, and what it forgets

What this lesson shows, by measuring it on your machine:
  1. training with AdamW keeps four numbers for every parameter (the weight, its gradient, Adam's two
     moving averages): 16 bytes per parameter in fp32, and the bytes PyTorch holds match that to the byte;
  2. the activations autograd keeps for backward, predicted by a formula for this GPT-2 block and checked
     against the tensors autograd really saves, for three small shapes and four strategies (full, LoRA,
     adapters, prompt tuning);
  3. both formulas carried to GPT-2's four sizes and a GPT-2 block at 7B-class width and depth: what full
     fine-tuning and each PEFT strategy needs, and which fits an 8, 16, 24 or 80 GB card;
  4. every task fine-tuned in full is a full-size copy of the model on disk;
  5. forgetting: perplexity on general text after fine-tuning on sentiment, for full fine-tuning at four
     learning rates (its default, 1e-3, among them) and LoRA at two, three seeds each, compared by the
     package's noise rule.

Read alongside: minitune/strategies/full.py (the whole strategy: unfreeze everything), minitune/memory.py
(the two formulas and the measurements they are checked against), minitune/train.py (the loop that holds
the gradients and AdamW's state), minitune/cells.py (section 5's runs: the course's standard budget,
shared with lessons 1 and 6, so the runs at the default rates are the very ones lesson 1 shows),
minitune/stats.py (the noise rule).

Run:  python lessons/02_full_finetuning.py           2 minutes on 2 CPU cores after lesson 1 (measured;
                                                     6 of its 18 runs are lesson 1's), about 3 on its own
      python lessons/02_full_finetuning.py --quick   about 10 seconds, nano sizes

Memory. Full fine-tuning is pretraining continued on task data: every weight w trains, and each AdamW
step updates it from its gradient g with two running averages, m of g and v of g^2. So the training
state is four numbers per parameter; with P parameters in b-byte floats it is b (P + P + 2P) = 4bP,
16 bytes per parameter in fp32, against 2 per parameter to serve the model in bf16. A PEFT strategy
keeps the frozen weights (b bytes each) but gradients and moments only for the few it trains.

The state is not all. Backward needs results of the forward pass: a LayerNorm needs its input, a linear
layer needs its input to form its weight's gradient, attention needs q, k, v and its output. These
activations grow with batch x tokens x depth x width, whatever the parameter count. PEFT does not make
them vanish: to reach a trainable tensor in block 0 the gradient must pass down through every frozen
block, and each keeps what it needs for that (only the inputs of frozen linear layers can go). Prompt
tuning trains the very input, so it keeps nearly all of them. Section 2 checks the formula for this on
small models before section 3 uses it at sizes this machine cannot hold.

Forgetting. Fine-tuning lowers the loss on the task's answers and nothing else; nothing in the objective
asks the model to keep predicting general text. The perplexity of the fine-tuned model on general text
it never saw, exp(mean cross-entropy per token), divided by the base's, measures how much of that was
lost (1.0: nothing). Section 5 varies the learning rate with everything else fixed, and compares LoRA
with full fine-tuning both at the same rate and each at its own default rate.
"""

from __future__ import annotations

import torch

from minitune.data.tasks import load_task
from minitune.finetune import finetune
from minitune.lesson import Lesson, perplexity, plot_seeds
from minitune.memory import (activation_bytes, file_size, human_bytes, measure_training_memory, memory_formula,
                             saved_activation_bytes, tensor_bytes)
from minitune.model import GPT, GPTConfig
from minitune.strategies import (AdapterConfig, FullConfig, LoRAConfig, PromptTuningConfig, apply_strategy,
                                 trainable_parameters)
from minitune.strategies.lora import hold_frozen_in

STRATEGIES = (FullConfig(), LoRAConfig(), AdapterConfig(), PromptTuningConfig())  # package defaults
BIG = {  # (n_layer, n_head, n_embd, vocab, context): GPT-2's published shapes, and a GPT-2 block at 7B-class size
    "GPT-2 124M": (12, 12, 768, 50257, 1024), "GPT-2 355M": (24, 16, 1024, 50257, 1024),
    "GPT-2 774M": (36, 20, 1280, 50257, 1024), "GPT-2 1.5B": (48, 25, 1600, 50257, 1024),
    "7B class (32 x 4096)": (32, 32, 4096, 32000, 4096),
}
BATCH = 1  # sequences per step in section 3, each the full context; activations grow in proportion
GPUS = (8, 16, 24, 80)  # GiB: consumer cards up to 24, then a data-centre card
CONSUMER = 24


def memory_measured(lesson: Lesson) -> None:
    lesson.section("1. Four numbers per parameter: weights, gradients, two AdamW moments")
    rows = []
    for preset in lesson.size(("nano", "tiny"), ("nano", "tiny", "small")):
        torch.manual_seed(0)
        model = apply_strategy(GPT(GPTConfig.from_preset(preset)), FullConfig())  # only shapes matter here
        x = torch.randint(model.config.vocab_size, (2, 16))
        measured, formula = measure_training_memory(model, (x, x)), memory_formula(model)
        P = trainable_parameters(model)[1]
        rows.append({"model": preset, "parameters": P, "weights": human_bytes(measured["weights"]),
                     "gradients": human_bytes(measured["gradients"]), "AdamW m, v": human_bytes(measured["optimizer"]),
                     "measured": measured["total"], "formula": formula["total"],
                     "bytes per parameter": measured["total"] / P,
                     "step counters (B)": measured["optimizer_step"]})
    lesson.table("Training state after one AdamW step, measured from the tensors (bytes, fp32)", rows)
    exact = sum(r["measured"] == r["formula"] for r in rows)
    lesson.record("memory_rows_matching_formula", exact)
    per_param = [r["bytes per parameter"] for r in rows]
    lesson.conclude(f"For {exact} of {len(rows)} model sizes the measured bytes equal the formula "
                    f"4 bytes x (P + P + 2P) + the step counters exactly; that is {min(per_param):.3f} to "
                    f"{max(per_param):.3f} bytes per parameter.")


def activations_checked(lesson: Lesson) -> None:
    lesson.section("2. Activations: the formula against what autograd saves")
    shapes = {"nano": GPTConfig.from_preset("nano"),
              "3 x 48, 3 heads": GPTConfig(vocab_size=500, block_size=64, n_layer=3, n_head=3, n_embd=48),
              "tiny": GPTConfig.from_preset("tiny")}
    if lesson.quick:
        shapes.pop("tiny")
    B, T = 4, 32
    rows = []
    for name, shape in shapes.items():
        for config in STRATEGIES:
            torch.manual_seed(0)  # only the shapes matter: a random model saves the same tensors as a trained one
            model = apply_strategy(GPT(shape), config)
            x, y = (torch.randint(shape.vocab_size, (B, T)) for _ in range(2))
            measured, formula = saved_activation_bytes(model, x, y), activation_bytes(shape, config, B, T)
            rows.append({"model": name, "strategy": config.name, "formula (B)": formula, "measured (B)": measured,
                         "measured / formula": measured / formula})
    lesson.table(f"Bytes autograd saves for backward, batch {B} x {T} tokens, fp32 (measured with "
                 "saved_tensors_hooks, each buffer once, parameters excluded)", rows)
    exact = sum(r["formula (B)"] == r["measured (B)"] for r in rows)
    ratios = [r["measured / formula"] for r in rows]
    lesson.record("activation_rows_matching_formula", exact)
    lesson.conclude(f"The activation formula gave the measured bytes exactly in {exact} of {len(rows)} cases "
                    f"(measured / formula from {min(ratios):.4f} to {max(ratios):.4f}); section 3 uses it at "
                    "sizes this machine cannot hold." + ("" if exact == len(rows) else
                                                        " Where it is not exact, section 3 is off by as much."))


def _meta_model(shape: GPTConfig, config):
    """The model with the strategy applied, built on PyTorch's meta device: shapes and dtypes, no memory."""
    with torch.device("meta"):
        return apply_strategy(GPT(shape), config)


def _at_scale(shape: GPTConfig, config) -> dict:
    """Training state and activations of one shape and strategy, fp32 and bf16 (from the formulas)."""
    model = _meta_model(shape, config)
    trainable, _ = trainable_parameters(model)
    tokens = model.max_input_tokens  # the full context (prompt tuning's prompt fills the rest)
    state32 = memory_formula(model, 4)["total"]
    if config.name != "full":
        hold_frozen_in(model, torch.bfloat16)  # PEFT over a bf16 base: the frozen weights in 2 bytes
    # bf16 mixed: trained weights, gradients and AdamW in fp32, + autocast's bf16 copy of each trained weight
    state16 = memory_formula(model, None)["total"] + 2 * trainable
    acts32 = activation_bytes(shape, config, BATCH, tokens, "fp32")
    acts16 = activation_bytes(shape, config, BATCH, tokens, "bf16")
    return {"trainable": trainable, "state32": state32, "acts32": acts32, "total32": state32 + acts32,
            "state16": state16, "acts16": acts16, "total16": state16 + acts16}


def _card(nbytes: int) -> str:
    fits = [g for g in GPUS if nbytes <= g * 2**30]
    return f"{fits[0]} GB" if fits else f"> {GPUS[-1]} GB"


def memory_at_scale(lesson: Lesson) -> None:
    lesson.section("3. Both formulas at GPT-2's sizes and a 7B-class shape")
    rows, cells = [], {}
    for name, (n_layer, n_head, n_embd, vocab, context) in BIG.items():
        shape = GPTConfig(vocab_size=vocab, block_size=context, n_layer=n_layer, n_head=n_head, n_embd=n_embd)
        for config in STRATEGIES:
            m = cells[name, config.name] = _at_scale(shape, config)
            rows.append({"model": name, "strategy": config.name, "trainable": m["trainable"],
                         "state fp32": human_bytes(m["state32"]), "activations fp32": human_bytes(m["acts32"]),
                         "total fp32": human_bytes(m["total32"]), "state bf16": human_bytes(m["state16"]),
                         "activations bf16": human_bytes(m["acts16"]), "total bf16": human_bytes(m["total16"]),
                         "card (bf16)": _card(m["total16"])})
    lesson.record("memory_at_scale", {f"{k[0]} / {k[1]}": v for k, v in cells.items()})
    lesson.table(f"Training memory, batch {BATCH} x the full context (1024 tokens for GPT-2, 4096 for the 7B "
                 "class): weights + gradients + AdamW (state) and saved activations", rows,
                 note="(state bf16: PEFT over a bf16 base; full fine-tuning in bf16 mixed precision keeps fp32 "
                      "weights, gradients and moments plus autocast's bf16 copy. card: the smallest of "
                      f"{', '.join(f'{g}' for g in GPUS)} GiB that holds the bf16 total; the peak of a real step "
                      "adds the logits and their gradient and the allocator's slack, not counted here. Computed "
                      "from the formulas of sections 1 and 2, not measured.)")
    _conclude_at_scale(lesson, cells)


def _conclude_at_scale(lesson: Lesson, cells: dict) -> None:
    big, small = list(BIG)[-1], list(BIG)[0]
    full, lora, prompt = cells[big, "full"], cells[big, "lora"], cells[big, "prompt"]
    lesson.conclude(f"{big}: full fine-tuning needs {human_bytes(full['total16'])} in bf16 mixed precision "
                    f"({_card(full['total16'])} card), LoRA {human_bytes(lora['total16'])} ({_card(lora['total16'])}). "
                    f"LoRA cuts the state from {human_bytes(full['state16'])} to {human_bytes(lora['state16'])}, but "
                    f"keeps {lora['acts16'] / full['acts16']:.0%} of full fine-tuning's activations (prompt tuning "
                    f"{prompt['acts16'] / full['acts16']:.0%}): the gradient still passes down through every frozen "
                    f"block. Activations are {lora['acts16'] / lora['total16']:.0%} of LoRA's total there.")
    fit = {c.name: [n for n in BIG if cells[n, c.name]["total16"] <= CONSUMER * 2**30] for c in STRATEGIES}
    lesson.conclude(f"On a {CONSUMER} GB consumer card (bf16, batch {BATCH}, full context), of the {len(BIG)} shapes "
                    + ", ".join(f"{name} fits {len(names)}" for name, names in fit.items()) + ".")
    lora_fits, full_fits = big in fit["lora"], big in fit["full"]
    if lora_fits and not full_fits:
        lesson.conclude(f"That agrees with the course's claim that PEFT lets a consumer card fine-tune a large model: "
                        f"the {big} shape fits {CONSUMER} GB with LoRA and not in full.")
    else:
        # the activations are what a shorter context shrinks; the state stays
        shape = GPTConfig(**dict(zip(("n_layer", "n_head", "n_embd", "vocab_size", "block_size"), BIG[big])))
        half = lora["state16"] + activation_bytes(shape, LoRAConfig(), BATCH, BIG[big][4] // 2, "bf16")
        lesson.conclude(f"At batch {BATCH} x {BIG[big][4]} tokens the course's claim that PEFT brings a large model "
                        f"onto a consumer card does not hold for the {big} shape: LoRA "
                        f"{'fits' if lora_fits else 'does not fit'} {CONSUMER} GB, and full fine-tuning "
                        f"{'does too' if full_fits else 'does not either'}. With {BIG[big][4] // 2} tokens LoRA "
                        f"needs {human_bytes(half)} ({'within' if half <= CONSUMER * 2**30 else 'still over'} "
                        f"{CONSUMER} GB).")
    s = cells[small, "full"]
    lesson.conclude(f"Even {small} in full, fp32, holds {human_bytes(s['state32'])} of state and "
                    f"{human_bytes(s['acts32'])} of activations for one {BIG[small][4]}-token sequence: "
                    f"activations are {s['acts32'] / s['total32']:.0%} of the total.")


def copy_per_task(lesson: Lesson) -> None:
    lesson.section("4. One full-size copy per task")
    sizes = lesson.size({"train": 64, "validation": 16, "test": 16}, {"train": 1000, "validation": 50, "test": 50})
    steps = lesson.size(4, 20)  # the file's size does not depend on how long it trained
    base, _ = lesson.load_base()
    base_bytes = tensor_bytes(base.parameters())
    rows, total = [], 0
    for name in ("sentiment", "topic", "qa"):
        task = load_task(name, sizes=None if name == "qa" else sizes)
        _, _, out = finetune(lesson.base, task, FullConfig(), lesson.run_dir(f"{name}-full"), max_steps=steps,
                             eval_every=steps, device=lesson.device, quiet=True, checkpoint_every=0)
        size = file_size(out / "best")  # what save_trainable wrote: every tensor + the strategy config
        rows.append({"task": name, "file per task": human_bytes(size), "x base weights": size / base_bytes})
        total += size
    lesson.table(f"Full fine-tuning, {steps} steps per task; each run saves what it trained (all of it)", rows)
    lesson.record("full_copies_bytes", total)
    lesson.record("base_weight_bytes", base_bytes)
    lesson.conclude(f"{len(rows)} tasks fine-tuned in full take {human_bytes(total)} on disk, "
                    f"{total / base_bytes:.2f}x the base's {human_bytes(base_bytes)} of weights: each task is a whole "
                    "new model to store, load and serve.")


def forgetting(lesson: Lesson) -> None:
    lesson.section("5. Forgetting: general-text perplexity after fine-tuning on sentiment")
    base, enc = lesson.load_base()
    before = perplexity(base, enc, lesson.general_text, lesson.device, max_batches=lesson.budget.general_batches)
    steps = lesson.budget.steps
    settings = [(FullConfig(), lr) for lr in lesson.size((1e-4, 1e-3), (1e-4, 3e-4, 1e-3, 3e-3))]
    settings += [(LoRAConfig(), lr) for lr in (FullConfig.default_lr, LoRAConfig.default_lr)]
    runs = {}
    for config, lr in settings:
        def one(seed: int) -> dict:  # the shared cells: at the default rates, the very runs lesson 1 shows
            cell = lesson.cell("sentiment", config, seed, lr=None if lr == config.default_lr else lr)
            return {"x before": cell["general_ppl"] / before, "accuracy": cell["score"],
                    "base unchanged": float(cell["base_intact"])}
        runs[config.name, lr] = lesson.over_seeds(one)
    rows = []
    for config, lr in settings:
        r = runs[config.name, lr]
        rows.append({"strategy": config.name, "lr": f"{lr:g}" + (" (default)" if lr == config.default_lr else ""),
                     "accuracy": r["accuracy"], "perplexity / base's": r["x before"],
                     "base weights unchanged": f"{sum(x['base unchanged'] for x in r.runs):.0f} of {len(r)}"})
    lesson.table(f"Sentiment, {steps} steps of batch 16: test accuracy, and general-text perplexity as a multiple "
                 f"of the base's ({before:.2f}; higher = more forgotten)", rows)
    lesson.record("perplexity_before", before)
    lesson.record("forgetting", {f"{s} lr {lr:g}": r for (s, lr), r in runs.items()})
    lesson.plot("forgetting.png", lambda ax: _plot_forgetting(ax, runs))
    _conclude_learning_rate(lesson, runs)
    _conclude_lora(lesson, runs)


def _conclude_learning_rate(lesson: Lesson, runs: dict) -> None:
    lrs = sorted(lr for s, lr in runs if s == "full")
    steps = [lesson.compare(runs["full", hi]["x before"], runs["full", lo]["x before"], (f"lr {hi:g}", f"lr {lo:g}"),
                            log=True)
             for lo, hi in zip(lrs, lrs[1:])]
    lesson.conclude("Full fine-tuning, general-text perplexity / base's, one learning-rate step at a time (nothing "
                    "else changed): " + "; ".join(c.text() for c in steps) + ".")
    up = [c for c in steps if c.winner == c.a]  # the higher rate forgot more, beyond noise
    down = [c for c in steps if c.winner == c.b]
    if len(up) == len(steps):
        verdict = "forgetting grew with every increase of the learning rate in this grid."
    elif not up and not down:
        verdict = "no increase of the learning rate changed forgetting beyond noise at this scale."
    else:
        verdict = (f"forgetting grew beyond noise in {len(up)} of {len(steps)} increases of the learning rate"
                   + (f" and fell in {len(down)}" if down else "") + "; the other steps show no difference beyond noise.")
    lesson.conclude("So " + verdict)
    default, low = runs["full", FullConfig.default_lr], runs["full", lrs[0]]
    acc = lesson.compare(default["accuracy"], low["accuracy"], (f"lr {FullConfig.default_lr:g}", f"lr {lrs[0]:g}"))
    lesson.conclude(f"Test accuracy at the default rate against the smallest: {acc.text()}.")


def _conclude_lora(lesson: Lesson, runs: dict) -> None:
    same = FullConfig.default_lr
    c = lesson.compare(runs["full", same]["x before"], runs["lora", same]["x before"], ("full", "LoRA"), log=True)
    lesson.conclude(f"At the same learning rate ({same:g}), perplexity / base's: {c.text()}. Only the strategy "
                    "differed between these two cells.")
    full, lora = runs["full", FullConfig.default_lr], runs["lora", LoRAConfig.default_lr]
    names = (f"full at {FullConfig.default_lr:g}", f"LoRA at {LoRAConfig.default_lr:g}")
    forget, acc = lesson.compare(full["x before"], lora["x before"], names, log=True), lesson.compare(full["accuracy"],
                                                                                          lora["accuracy"], names)
    lesson.conclude(f"Each at its default learning rate: perplexity / base's, {forget.text()}; test accuracy, "
                    f"{acc.text()}.")
    if forget.winner == names[0]:
        lesson.conclude("That agrees with the course's claim that PEFT avoids the forgetting of full fine-tuning, for "
                        "these two recipes (they differ in learning rate as well as strategy).")
    elif forget.winner == names[1]:
        lesson.conclude("That disagrees with the course's claim that PEFT avoids the forgetting of full fine-tuning: "
                        f"here the LoRA recipe forgot more (it also used a "
                        f"{LoRAConfig.default_lr / FullConfig.default_lr:g}x larger learning rate).")
    else:
        lesson.conclude("The course says PEFT avoids the forgetting of full fine-tuning; these two recipes show no "
                        "difference in forgetting beyond noise at this scale.")
    kept = sum(x["base unchanged"] for r in (runs["lora", lr] for s, lr in runs if s == "lora") for x in r.runs)
    n = sum(len(r) for (s, _), r in runs.items() if s == "lora")
    lesson.conclude(f"What LoRA keeps for certain is the base itself: its weights were bitwise unchanged in {kept:.0f} "
                    f"of {n} LoRA runs, so removing the adapter gives back the base's perplexity exactly.")


def _plot_forgetting(ax, runs: dict) -> None:
    for strategy in ("full", "lora"):
        lrs = sorted(lr for s, lr in runs if s == strategy)
        plot_seeds(ax, lrs, [runs[strategy, lr]["x before"] for lr in lrs], label=strategy)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":", label="base")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("general-text perplexity / base's")
    ax.set_title("Forgetting after fine-tuning on sentiment (mean ± sd over seeds)")
    ax.legend(fontsize=8)


def main(argv: list[str] | None = None) -> dict:
    lesson = Lesson.start(2, "Full fine-tuning", __doc__, argv)
    memory_measured(lesson)
    activations_checked(lesson)
    memory_at_scale(lesson)
    copy_per_task(lesson)
    forgetting(lesson)
    return lesson.finish()


if __name__ == "__main__":
    main()
