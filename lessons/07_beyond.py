# %% [markdown]
# # Lesson 7: Beyond the basics
#
# Module 1's three parameter-efficient methods each pick one place to add something: LoRA a low-rank sum
# beside a weight, an adapter a small network after a sublayer, prompt tuning vectors before the input.
# The four strategies here are the ones a reader of today's fine-tuning code meets next, and each is one of
# those ideas moved or cut down: DoRA, (IA)3, prefix tuning and QLoRA. This chapter trains all eight on two
# tasks (topic classification and question answering), measures what each costs, what 4 bits do to the
# base, what each forgets, and what each newer strategy trades against the one it grew from.
#
# **Read alongside:** `minitune/strategies/dora.py`, `ia3.py`, `prefix.py`, `nf4.py` and `qlora.py` (each
# opens with its math and trainable count), `minitune/course/runs.py` (how each run is trained, scored and
# traced), `minitune/memory.py` (what training memory counts) and `minitune/course/stats.py` (the noise rule).
#
# **Run:** `python lessons/07_beyond.py` (24 of its 48 runs are lesson 6's, read back when lesson 6 ran
# first), or `--quick` (seconds, the nano base). The results of the last full run, beside this text:
# `docs/lessons/07.md`.
#
# **How to read a result.** Every score is the mean of 3 seeds with its sample standard deviation. A
# claim's verdict comes from Welch's t on the per-seed values at p < 0.05: *agrees* or *contradicts* when
# the gap is beyond noise, *not told apart* when it is not, with the smallest gap the design could see.
# Parameter counts, bytes and file sizes do not vary by seed and are stated as measured.

# %%
import copy
import statistics
from dataclasses import fields

import torch

from minitune.course.lesson import Lesson, bar_groups
from minitune.course.report import Bytes, and_list, best_per_task
from minitune.course.stats import summarize
from minitune.course.recorded import recorded_choices, recorded_results, recorded_sweeps, table_rows
from minitune.evaluate import HEADLINE_METRIC, perplexity
from minitune.memory import tensor_bytes
from minitune.strategies import (AdapterConfig, DoRAConfig, FullConfig, IA3Config, LoRAConfig, PrefixTuningConfig,
                                 PromptTuningConfig, QLoRAConfig, apply_strategy, trainable_state)
from minitune.strategies.nf4 import NF4Weight, quantize_base
from minitune.strategies.prefix import fold

lesson = Lesson.start(7, "Beyond the basics")
TASKS = ("topic", "qa")
STRATEGIES = (FullConfig(), LoRAConfig(), AdapterConfig(), PromptTuningConfig(),
              DoRAConfig(), IA3Config(), PrefixTuningConfig(), QLoRAConfig())  # each at its defaults
NAMES = [c.name for c in STRATEGIES]
CONFIG = dict(zip(NAMES, STRATEGIES))
NEWER = ("dora", "ia3", "prefix", "qlora")

# %% [markdown]
# ## 1. The newer strategies' learning rates, chosen on the validation split
#
# As in lesson 6: a recorded sweep (`minitune sweep`, 160 steps, seeds 0, 1 and 2, validation split only)
# tried each strategy's default and its neighbours on the 1-3-10 ladder, on sentiment for classification
# and qa for generation. The latest sweep re-ran all eight, takes the lowest mean validation loss whatever
# the old default was, and adds a rung beyond any best rate at the end of its grid until it is bracketed;
# the latest sweep of each strategy and family is the one that counts.

# %%
for record in [r for r in recorded_sweeps() if set(r["settings"]["strategies"]) & set(NEWER)]:  # the rest: lesson 6
    rows = [r for r in table_rows(record) if r["strategy"] in NEWER]
    lesson.table(f"Sweep of {', '.join(record['settings']['strategies'])}, the newer strategies' rows", rows)
chosen = recorded_choices()  # {strategy: {family: rate}}, the latest sweep of each winning
latest = recorded_results()  # {(family, strategy): the latest sweep's result}
edge = {s: and_list([f for (f, name), r in latest.items() if name == s and r["edge"]]) for s in NAMES}
lesson.table("The rates each strategy trains at, and the families whose latest grid chose at its edge",
             {s: chosen[s] | {"at the grid's edge": edge[s]} for s in NAMES}, index="strategy")

# %% [markdown]
# ## 2. Eight strategies on two tasks: scores, and what each forgets
#
# - **DoRA** splits each adapted weight into a length and a direction. Every output feature's row of W has
#   a length (its norm); DoRA trains that length as a vector m of its own and lets LoRA's B A turn only the
#   direction: W' = m * (W + s B A) / ||W + s B A||, row by row. LoRA's update moves length and direction
#   together; here they can move apart. Trainable: LoRA's r (in + out) per layer, plus out. It merges into
#   W like LoRA.
# - **(IA)3** trains no matrix at all: three vectors per block, started at 1, that multiply the keys, the
#   values and the MLP's inner activation feature by feature. It can turn features up or down but not make
#   new ones: 6 d numbers per block, 6 L d in all, the order of a soft prompt's n d rather than LoRA's.
#   Scaling a layer's outputs (or inputs) scales the rows (or columns) of its W, so it merges too.
# - **Prefix tuning** is prompt tuning moved inside: instead of input vectors that every layer must carry
#   up, each layer gets n positions of keys and values of its own to attend to, which is what a KV cache
#   holds after n tokens. It trains through a small MLP (the paper found the bare table unstable) and is
#   folded into the table for serving: n x 2 L d numbers per task.
# - **QLoRA** is LoRA over a frozen base stored in 4 bits (section 4).
#
# Each run trains 160 steps of 16 at its strategy's rate, keeps its best validation checkpoint and is
# scored on test; these are shared runs, the first four strategies' the same as lesson 6's. Forgetting is
# the general-text perplexity of the model as served (its trained part attached) over the fp32 base's, at
# that checkpoint: read at the end of equal budgets, not at equal task quality (lesson 6 does that), so a
# method that learned more may also have moved further. Beside it, the runs after which every float tensor
# of the base was bitwise what it was: removing the trained part then gives back the base. Full
# fine-tuning trains those tensors; QLoRA's model holds its linear weights in 4 bits, so they are not the
# base's fp32 tensors at all, and removing its LoRA factors gives back the 4-bit base of section 4.

# %%
runs = lesson.shared_runs(TASKS, STRATEGIES)  # {(task, strategy): one run per seed}
base_ppl = lesson.base_perplexity()  # the general text under the fp32 base, as the runs measure it
ratio = {(t, s): summarize([run["general_ppl"] / base_ppl for run in runs[t, s].runs]) for t in TASKS for s in NAMES}
intact = {s: [run["base_intact"] for t in TASKS for run in runs[t, s].runs] for s in NAMES}
lesson.table(f"Test score, and general-text perplexity over the base's {base_ppl:.3f}", {s: {
    **{f"{t} ({HEADLINE_METRIC[t]}, {runs[t, s].runs[0]['n']} items)": runs[t, s]["score"] for t in TASKS},
    **{f"{t}: ppl x base": ratio[t, s] for t in TASKS}, "base intact": f"{sum(intact[s])}/{len(intact[s])} runs"}
    for s in NAMES}, index="strategy")
lesson.note(best_per_task(runs, TASKS, NAMES)[1])
lesson.plot("scores.png", lambda ax: bar_groups(ax, TASKS, {s: [runs[t, s]["score"] for t in TASKS] for s in NAMES}),
            (8.4, 4.2), "Test score, every strategy")
lesson.plot("forgetting.png", lambda ax: bar_groups(ax, TASKS, {s: [ratio[t, s] for t in TASKS] for s in NAMES},
                                                    "general ppl / base's"), (8.4, 4.2), "Forgetting at the end")

# %% [markdown]
# ## 3. What each strategy costs
#
# Memory and one step's time on a batch of 16 topic examples, as in lesson 6 (weights: every parameter
# and buffer, the 4-bit codes included; train memory: weights, gradients and AdamW state, activations not
# counted; step ms: the median of 5 steps, one measurement). Beside them, each run's own training seconds
# per step, read back with the runs, so possibly timed while another lesson ran. Prefix tuning's run files
# hold its training-time MLP; the file to serve holds only the table it computes (`prefix.fold`).

# %%


def costs_of(config) -> dict:
    """training_costs on topic, and what the runs measured: their files and their milliseconds per step."""
    c = lesson.training_costs(config, "topic")
    c["file per task"] = c["file to serve"] = Bytes(statistics.mean(
        run["file"] for t in TASKS for run in runs[t, config.name].runs))
    return c | {f"ms/step, {t} runs": summarize([1000 * run["train_seconds"] / lesson.budget.steps
                                                for run in runs[t, config.name].runs]) for t in TASKS}


costs = {c.name: costs_of(c) for c in STRATEGIES}
folded = fold(apply_strategy(lesson.load_base()[0], PrefixTuningConfig()))  # the table's size needs no training
costs["prefix"]["file to serve"] = Bytes(tensor_bytes(trainable_state(folded).values()))
lesson.record("costs", costs)
lesson.table("What training costs", costs, index="strategy", columns=("trainable", "trainable %", "weights",
             "train memory", "step ms", *(f"ms/step, {t} runs" for t in TASKS), "file per task", "file to serve"))
lesson.plot("step_time.png", lambda ax: bar_groups(ax, NAMES, {t: [costs[s][f"ms/step, {t} runs"] for s in NAMES]
                                                               for t in TASKS}, "ms per step"), (8.4, 4.2), "Step time")

# %% [markdown]
# ## 4. The 4-bit base
#
# QLoRA stores every block's linear weight in NF4: blocks of 64 weights, each block one scale (its
# largest |w|) and one 4-bit code per weight into a table of 16 values placed at the quantiles of a normal
# curve, the scales themselves stored in 8 bits. A layer's weight is decoded just before it is used, so the
# blocks' linear weights take about an eighth of their fp32 size. The embeddings, LayerNorms and biases
# stay in fp32, as do the LoRA factors, so the saving on a whole model approaches the 4-bit ratio only as
# their share of the parameters shrinks. What is lost is the rounding: below, how far it moves the weights
# and what it alone does to the general-text perplexity before any training (deterministic: no seeds).

# %%
fp32, enc = lesson.load_base()
quantised = quantize_base(copy.deepcopy(fp32), **QLoRAConfig().nf4)
nf4 = [m for m in quantised.modules() if isinstance(m, NF4Weight)]
n_quantised = sum(w.packed_parameters for w in nf4)
sizes = {"fp32": Bytes(tensor_bytes(fp32.parameters())),
         "bf16": Bytes(tensor_bytes(copy.deepcopy(fp32).to(torch.bfloat16).parameters())),
         "NF4 linears, the rest fp32": Bytes(tensor_bytes([*quantised.parameters(), *quantised.buffers()]))}
fp32_layers = dict(fp32.named_modules())
pairs = [(m.weight(), fp32_layers[n].weight.detach()) for n, m in quantised.named_modules()
         if isinstance(getattr(m, "weight", None), NF4Weight)]  # (dequantised, fp32) per quantised layer
errors = torch.cat([(q - w).abs().flatten() for q, w in pairs])
q_ppl = perplexity(quantised, enc, lesson.general_text, lesson.device, max_batches=lesson.budget.general_batches)
rounding = {"bytes per quantised weight (fp32: 4, bf16: 2)": sum(tensor_bytes(w.buffers()) for w in nf4) / n_quantised,
            "share of parameters NF4 does not hold": 1 - n_quantised / fp32.num_parameters(),
            "mean |w|": torch.cat([w.abs().flatten() for _, w in pairs]).mean().item(),
            "mean |w - dequant(w)|": errors.mean().item(), "max |w - dequant(w)|": errors.max().item(),
            "general ppl, fp32 base": base_ppl, "general ppl, NF4 base": q_ppl, "general ppl ratio": q_ppl / base_ppl}
lesson.table(f"The base's tensors ({fp32.num_parameters():,} parameters; NF4 holds {n_quantised:,})", {k: {"bytes": v,
             "x fp32": v / sizes["fp32"], "x bfloat16": v / sizes["bf16"]} for k, v in sizes.items()}, index="held in")
lesson.table("What rounding to 4 bits does", rounding, index="measure", columns=("value",))

# %% [markdown]
# ## 5. What each newer strategy trades
#
# Each newer strategy against the Module-1 strategy it grew from: which of their shared settings (the
# learning rate included) differ, what it trains and holds as a multiple of the older one's, then its
# test score, its forgetting and its time per step. QLoRA and LoRA share rank, alpha, targets and rate, so
# they differ only in how the frozen base is stored. Two of the papers state a direction: Liu et al. (2024)
# report that DoRA learns better than LoRA at the same rank, and Li & Liang (2021) that a prefix at every
# layer does much better than trainable vectors at the input alone.

# %%
PAIRS = (("dora", "DoRA", "lora", "LoRA", "Liu et al. 2024", "higher"), ("ia3", "(IA)3", "lora", "LoRA", "", None),
         ("prefix", "prefix tuning", "prompt", "prompt tuning", "Li & Liang 2021", "higher"),
         ("qlora", "QLoRA", "lora", "LoRA", "", None))  # new, its name, the one it grew from, its name, who says


def trade(new: str, old: str) -> dict:
    """Which settings new's config shares with old's differ; its costs as multiples of old's."""
    a, b = CONFIG[new], CONFIG[old]
    shared = sorted({f.name for f in fields(a)} & {f.name for f in fields(b)}) + ["default_lr"]
    differ = [k for k in shared if getattr(a, k) != getattr(b, k)]
    return {"against": old, "shared settings that differ": and_list(differ), **{f"{k} x old": costs[new][k] / costs[
        old][k] for k in ("trainable", "train memory", "weights", "file per task", "file to serve")}}


lesson.table("Against the strategy each grew from", {new: trade(new, old) for new, _, old, *_ in PAIRS}, index="new")
for new, new_name, old, old_name, source, expect in PAIRS:
    names = (new_name, old_name)
    for t in TASKS:
        lesson.claim(f"{new_name} scores above {old_name} ({t})", source, runs[t, new]["score"], runs[t, old]["score"],
                     names, expect)
        lesson.claim(f"general-text perplexity / the base's ({t})", "", ratio[t, new], ratio[t, old], names, None, True)
    lesson.claim("ms per step, topic runs", "", *(costs[s]["ms/step, topic runs"] for s in (new, old)), names, None)
lesson.finish()
