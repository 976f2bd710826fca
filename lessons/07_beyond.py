"""Lesson 7: Beyond the basics

What this lesson shows, by measuring it on your machine:
  0. the learning rates of the four newer strategies, as a recorded sweep (`minitune sweep`, validation
     split, 3 seeds per rate) chose them;
  1. all eight strategies (full fine-tuning, LoRA, bottleneck adapters, prompt tuning, and DoRA, (IA)3,
     prefix tuning and QLoRA) on two tasks, topic and question answering, 3 seeds each, one budget of
     steps: the test score in each task's own metric;
  2. what each costs: trainable share, training memory (measured from the tensors, the 4-bit codes
     included), time per step, file per task;
  3. the 4-bit base on its own: bytes in fp32, bf16 and NF4, the round-trip error of its weights, and what
     rounding alone does to its perplexity before any training;
  4. forgetting: general-text perplexity with each trained part attached, and whether the base survived;
  5. what each newer strategy trades against the Module-1 strategy it grew from, in sentences computed
     from the numbers above.

Read alongside: minitune/strategies/dora.py, ia3.py, prefix.py, nf4.py and qlora.py (each opens with its
math and trainable count), minitune/cells.py (how each run is trained, scored and traced),
minitune/memory.py (what "training memory" counts) and minitune/stats.py (the noise rule).

Run:  python lessons/07_beyond.py           6.5 minutes on 2 CPU cores on its own, 3.5 after lesson 6
                                             (measured; lesson 6 trains 24 of its 48 runs)
      python lessons/07_beyond.py --quick   seconds, nano sizes

The idea. Module 1's three parameter-efficient methods each pick one place to add something: LoRA a
low-rank sum beside a weight, an adapter a small network after a sublayer, prompt tuning vectors before
the input. The four here are the ones a reader of today's fine-tuning code meets next, and each is one of
those ideas moved or cut down.

    DoRA     splits each adapted weight into a length and a direction. Every output feature's row of W has
             a length (its norm); DoRA trains that length as a vector m of its own, and lets LoRA's B A
             turn only the direction:  W' = m * (W + s B A) / ||W + s B A||  (row by row). LoRA's
             update moves length and direction together; here they can move apart. Trainable: LoRA's
             r (in + out) per layer, plus out. It merges into W like LoRA.
    (IA)3    trains no matrix at all: three vectors per block, started at 1, that multiply the keys, the
             values and the MLP's inner activation feature by feature. The model can turn features up or
             down but cannot make new ones: 6 d numbers per block, 6 L d in all, the order of a soft
             prompt's n d rather than LoRA's. Scaling a layer's outputs (or inputs) scales the rows (or
             columns) of its W, so it merges too.
    prefix   is prompt tuning moved inside: instead of vectors at the input that every layer must carry
             up, each layer gets n positions of keys and values of its own to attend to, which is what a
             KV cache holds after n tokens. Trained through a small MLP (the paper found the bare table
             unstable) and folded into the table for serving: n x 2 L d numbers per task.
    QLoRA    is LoRA with the frozen base stored in 4 bits: every block's linear weight in blocks of 64,
             each block one scale (its largest |w|) and one 4-bit code per weight into a table of 16
             values placed at the quantiles of a normal curve (NF4), the scales themselves stored in 8
             bits. A layer's weight is decoded just before it is used, so the blocks' linear weights take
             about an eighth of their fp32 size; what is lost is the rounding, and that loss is measured here.

Measuring. The runs are minitune.cells': 160 steps of 16 at each strategy's default learning rate, each
cell 3 seeds, the same runs lesson 6 shows for the first four strategies. Every comparison in a sentence
is the noise rule: Welch's t on per-seed values, a difference counted only at p < 0.05, otherwise the
sentence says there is no difference beyond noise. Parameter counts, bytes and file sizes do not vary by
seed and are stated as measured. Forgetting is read at the end of equal budgets, not at equal task
quality (lesson 6 does that for its three strategies): a method that learned more may also have moved
further.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import fields

import torch

from minitune.evaluate import HEADLINE_METRIC
from minitune.lesson import Lesson, and_list, bar_groups, best_per_task, perplexity
from minitune.memory import human_bytes, tensor_bytes
from minitune.stats import summarize
from minitune.strategies import (AdapterConfig, DoRAConfig, FullConfig, IA3Config, LoRAConfig, PrefixTuningConfig,
                                 PromptTuningConfig, QLoRAConfig, apply_strategy, trainable_state)
from minitune.strategies.nf4 import NF4Weight, quantize_base
from minitune.strategies.prefix import fold
from minitune.sweep import recorded_choices, recorded_sweeps, table_rows

TASKS = {name: HEADLINE_METRIC[name] for name in ("topic", "qa")}
STRATEGIES = [FullConfig(), LoRAConfig(), AdapterConfig(), PromptTuningConfig(),
              DoRAConfig(), IA3Config(), PrefixTuningConfig(), QLoRAConfig()]  # each at its defaults
NEWER = ("dora", "ia3", "prefix", "qlora")
GREW_FROM = {"dora": "lora", "ia3": "lora", "prefix": "prompt", "qlora": "lora"}  # the Module-1 relative


def learning_rates(lesson: Lesson) -> None:
    lesson.section("0. The newer strategies' learning rates, chosen on the validation split")
    for record in recorded_sweeps():
        if set(record["settings"]["strategies"]) & set(NEWER):
            rows = [r for r in table_rows(record) if r["strategy"] in NEWER]
            lesson.table(f"Learning-rate sweep: {record['settings']['steps']} steps, seeds "
                         f"{record['settings']['seeds']}, validation split only (`{record['command']}`)", rows)
    chosen = recorded_choices()
    rates = lambda name: "/".join(f"{lr:g}" for lr in sorted(set(chosen[name].values())))  # noqa: E731
    latest = {(r["family"], r["strategy"]): r for record in recorded_sweeps() for r in record["results"]}
    edge = sorted({s for (_, s), r in latest.items() if s in NEWER and r["edge"]})
    lesson.conclude("Defaults the package uses, as the recorded sweeps chose them: " + ", ".join(
        f"{name} {rates(name)}" for name in NEWER if name in chosen) + f"; for comparison, LoRA {rates('lora')} and "
        f"prompt tuning {rates('prompt')}. " + (f"Chosen at the edge of the latest grid, so the best rate may lie "
        f"beyond it: {and_list(edge)}." if edge else "Each was chosen inside its latest grid, with a rate tried on "
        "either side of it."))


def every_strategy(lesson: Lesson) -> dict:
    lesson.section("1. Eight strategies on two tasks")
    runs = lesson.cells_over_seeds(TASKS, STRATEGIES)
    names = [c.name for c in STRATEGIES]
    quality = [{"strategy": s, **{f"{t} ({m})": runs[(t, s)]["score"] for t, m in TASKS.items()},
                "lr": STRATEGIES[i].default_lr} for i, s in enumerate(names)]
    lesson.table(f"Test score ({lesson.budget.steps} steps of {lesson.budget.batch_size} at each strategy's default "
                 f"learning rate; best validation checkpoint; test items: " + ", ".join(
                     f"{t} {runs[(t, 'full')].runs[0]['n']}" for t in TASKS) + ")", quality)

    def draw(ax):
        bar_groups(ax, [f"{t}\n({m})" for t, m in TASKS.items()], {s: [runs[(t, s)]["score"] for t in TASKS]
                                                                    for s in names})
        ax.set_ylim(0, 1.05)
        ax.set_title("Test score, every strategy (dots: seeds)")

    lesson.plot("scores.png", draw, figsize=(8.4, 4.2))
    lesson.conclude(best_per_task(runs, TASKS, names)[1])
    return runs


def costs(lesson: Lesson, runs: dict) -> dict:
    lesson.section("2. What each strategy costs")
    rows, by = [], {}
    for config in STRATEGIES:
        c = lesson.training_costs(config, "topic")
        per_step = {t: summarize([1000 * run["train_seconds"] / lesson.budget.steps for run in runs[(t, config.name)].runs])
                    for t in TASKS}
        file = statistics.mean(run["file"] for t in TASKS for run in runs[(t, config.name)].runs)
        by[config.name] = {"trainable": c["trainable"], "total": c["total"], "memory": c["memory"], "file": file,
                           "step_ms": c["step_ms"], "run_ms": per_step}
        if config.name == "prefix":  # what serving needs: the table the MLP computes, not the MLP
            model = apply_strategy(lesson.load_base()[0], config)  # the table's size does not depend on training
            by["prefix"]["folded_file"] = tensor_bytes(trainable_state(fold(model)).values())
        rows.append({"strategy": config.name, "trainable": c["trainable"], "trainable %": 100 * c["trainable"] / c["total"],
                     "weights": human_bytes(c["memory"]["weights"]), "train memory": human_bytes(c["memory"]["total"]),
                     "step ms": c["step_ms"], **{f"ms/step, {t} runs": per_step[t] for t in TASKS},
                     "file per task": human_bytes(file)})
    lesson.record("costs", by)
    lesson.table("What training costs (weights: every parameter and buffer, the 4-bit codes included; train memory: "
                 "weights + gradients + AdamW state, activations not counted; step ms: median of 5 steps on 16 topic "
                 "examples, one measurement; ms/step, runs: each run's training seconds / steps, read back with the "
                 "cells, so possibly timed during another lesson's run)", rows)
    lesson.plot("step_time.png", lambda ax: _step_plot(ax, by))
    return by


def _step_plot(ax, by: dict) -> None:
    bar_groups(ax, list(by), {t: [by[s]["run_ms"][t] for s in by] for t in TASKS}, ylabel="training ms per step")
    ax.set_title("Time per training step in the runs")
    ax.tick_params(axis="x", labelsize=8)


def four_bit_base(lesson: Lesson, base_ppl: float) -> dict:
    lesson.section("3. The 4-bit base")
    fp32, enc = lesson.load_base()
    quantised = quantize_base(copy.deepcopy(fp32), **QLoRAConfig().nf4)
    nf4 = [m for m in quantised.modules() if isinstance(m, NF4Weight)]
    n_quantised = sum(w.packed_parameters for w in nf4)
    code_bytes = sum(tensor_bytes(w.buffers()) for w in nf4)
    sizes = {"fp32": tensor_bytes(fp32.parameters()),
             "bf16": tensor_bytes(copy.deepcopy(fp32).to(torch.bfloat16).parameters()),
             "NF4 linears, the rest fp32": tensor_bytes([*quantised.parameters(), *quantised.buffers()])}
    fp32_layers = dict(fp32.named_modules())
    pairs = [(m.weight(), fp32_layers[n].weight.detach()) for n, m in quantised.named_modules()
             if isinstance(getattr(m, "weight", None), NF4Weight)]  # (dequantised, fp32) per quantised layer
    errors = torch.cat([(q - w).abs().flatten() for q, w in pairs])
    magnitudes = torch.cat([w.abs().flatten() for _, w in pairs])
    q_ppl = perplexity(quantised, enc, lesson.general_text, lesson.device, max_batches=lesson.budget.general_batches)
    rows = [{"base held in": k, "bytes": v, "size": human_bytes(v), "x fp32": v / sizes["fp32"]} for k, v in sizes.items()]
    lesson.table(f"The base's tensors ({fp32.num_parameters():,} parameters, {n_quantised:,} of them in the blocks' "
                 "linear layers, which are the ones NF4 holds)", rows)
    out = {"sizes": sizes, "bytes_per_quantised_weight": code_bytes / n_quantised, "max_abs_error": errors.max().item(),
           "mean_abs_error": errors.mean().item(), "mean_abs_weight": magnitudes.mean().item(),
           "general_ppl_ratio": q_ppl / base_ppl, "unquantised_share": 1 - n_quantised / fp32.num_parameters()}
    lesson.record("nf4", out)
    lesson.conclude(f"In NF4 the blocks' linear weights took {out['bytes_per_quantised_weight']:.4f} bytes each "
                    f"(4 in fp32, 2 in bf16), so the whole base took {sizes['NF4 linears, the rest fp32'] / sizes['fp32']:.0%} "
                    f"of its fp32 bytes and {sizes['NF4 linears, the rest fp32'] / sizes['bf16']:.0%} of its bf16 bytes; "
                    f"the embeddings, LayerNorms and biases stay in fp32.")
    lesson.conclude(f"Rounding to 4 bits moved each weight by {out['mean_abs_error']:.2g} on average and at most "
                    f"{out['max_abs_error']:.2g}, against a mean |w| of {out['mean_abs_weight']:.2g}; before any "
                    f"training the 4-bit base's general-text perplexity was {q_ppl:.3f}, {out['general_ppl_ratio']:.3f} "
                    f"times the fp32 base's {base_ppl:.3f} (one deterministic measurement: no seeds involved).")
    return out


def forgetting(lesson: Lesson, runs: dict, base_ppl: float) -> dict:
    lesson.section("4. Forgetting, and what is left of the base")
    names = [c.name for c in STRATEGIES]
    ratio = {(t, s): summarize([run["general_ppl"] / base_ppl for run in runs[(t, s)].runs]) for t in TASKS for s in names}
    rows = [{"strategy": s, **{f"{t}: general ppl x base": ratio[(t, s)] for t in TASKS},
             "base bitwise intact": f"{sum(run['base_intact'] for t in TASKS for run in runs[(t, s)].runs)}"
                                    f"/{sum(len(runs[(t, s)].runs) for t in TASKS)} runs"} for s in names]
    lesson.table(f"General-text perplexity of the model as served (trained part attached), over the fp32 base's "
                 f"{base_ppl:.3f}, at the best checkpoint of each run; and the runs after which every float tensor of "
                 "the base was bitwise what it was", rows)

    def draw(ax):
        bar_groups(ax, list(TASKS), {s: [ratio[(t, s)] for t in TASKS] for s in names},
                   ylabel="general-text perplexity / base's")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title("Forgetting at the end of equal budgets (dots: seeds)")

    lesson.plot("forgetting.png", draw, figsize=(8.4, 4.2))
    intact = [s for s in names if all(run["base_intact"] for t in TASKS for run in runs[(t, s)].runs)]
    changed = [s for s in names if s not in intact]
    why = {"full": "Full fine-tuning trains them", "qlora": "QLoRA's model holds its linear weights in 4 bits, "
           "so they are not the base's fp32 tensors at all, and removing its LoRA factors gives back the 4-bit base "
           "of section 3"}
    text = (f"Every float tensor of the base was bitwise unchanged after every run of {and_list(intact)}, so removing "
            "their trained part gives back the base")
    if changed:
        text += f"; not after some run of {and_list(changed)}" + "".join(f". {why[s]}" for s in changed if s in why)
    lesson.conclude(text + ".")
    return ratio


def trades(lesson: Lesson, runs: dict, cost: dict, ratio: dict, nf4: dict) -> None:
    lesson.section("5. What each newer strategy trades")
    share = lambda c: 100 * c["trainable"] / c["total"]  # noqa: E731
    for new in NEWER:
        old = GREW_FROM[new]
        a, b = cost[new], cost[old]
        setting = ("both at the same learning rate" if STRATEGIES[_index(new)].default_lr == STRATEGIES[_index(old)].default_lr
              else "each at its own default learning rate")
        if new == "qlora" and _same_low_rank(STRATEGIES[_index(new)], STRATEGIES[_index(old)]):
            setting += ", the same rank, alpha and targets: the two differ only in how the frozen base is stored"
        lesson.conclude(f"{new} against {old} ({setting}): {new} trained {a['trainable']:,} parameters ({share(a):.2f}%) "
                        f"where {old} trained {b['trainable']:,} ({share(b):.2f}%), with {a['memory']['total'] / b['memory']['total']:.0%} "
                        f"of its training memory and a file {a['file'] / b['file']:.2f} times its size.")
        scores = [f"on {t}, " + lesson.compare(runs[(t, new)]["score"], runs[(t, old)]["score"], (new, old)).text(
            verb="is higher than") for t in TASKS]
        lesson.conclude(f"Test score, {new} against {old}: " + "; ".join(scores) + ".")
        ppl = [f"on {t}, " + lesson.compare(ratio[(t, new)], ratio[(t, old)], (new, old), log=True).text(
            verb="is higher than")
               for t in TASKS]
        c = lesson.compare(a["run_ms"]["topic"], b["run_ms"]["topic"], (new, old))
        lesson.conclude(f"General-text perplexity over the base's, {new} against {old}: " + "; ".join(ppl)
                        + f". Milliseconds per training step in the topic runs (timed as each was trained): {c.text(verb='is slower than', digits=1)}.")
    saving = cost["qlora"]["memory"]["weights"] / cost["lora"]["memory"]["weights"]
    lesson.conclude(f"The QLoRA model's weights (base and factors) took {saving:.0%} of the LoRA model's, while its 4-bit linear layers take "
                    f"{nf4['bytes_per_quantised_weight'] / 4:.1%} of their fp32 bytes: the base's tensors NF4 does not "
                    f"hold (embeddings, LayerNorms, biases) are {nf4['unquantised_share']:.0%} of its parameters and "
                    "stay in fp32, as do the LoRA factors. The saving on a whole model approaches the 4-bit ratio only as "
                    "that share shrinks.")
    folded = cost["prefix"]["folded_file"]
    lesson.conclude(f"Prefix tuning's run files hold its training-time MLP; folded into the table it computes "
                    f"(prefix.fold), the file to serve is {human_bytes(folded)}, {folded / cost['prompt']['file']:.1f} "
                    "times prompt tuning's.")


def _index(name: str) -> int:
    return [c.name for c in STRATEGIES].index(name)


def _same_low_rank(a, b) -> bool:
    """Do two low-rank configs agree on every setting they both have (rank, alpha, targets, ...) and the rate?"""
    shared = {f.name for f in fields(a)} & {f.name for f in fields(b)}
    return a.default_lr == b.default_lr and all(getattr(a, k) == getattr(b, k) for k in shared)


def main(argv: list[str] | None = None) -> dict:
    lesson = Lesson.start(7, "Beyond the basics", __doc__, argv)
    learning_rates(lesson)
    base_ppl = lesson.base_perplexity()
    lesson.record("base_general_perplexity", base_ppl)
    runs = every_strategy(lesson)
    cost = costs(lesson, runs)
    nf4 = four_bit_base(lesson, base_ppl)
    ratio = forgetting(lesson, runs, base_ppl)
    trades(lesson, runs, cost, ratio, nf4)
    return lesson.finish()


if __name__ == "__main__":
    main()
