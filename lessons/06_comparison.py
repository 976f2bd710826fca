# %% [markdown]
# # Lesson 6: Choosing a strategy
#
# Lessons 2 to 5 took the strategies one at a time. This chapter puts the four of Module 1 (full
# fine-tuning, LoRA, bottleneck adapters, prompt tuning) side by side on four tasks (topic classification,
# summarization, question answering, code) at one budget, and measures what each scores, what it costs,
# what it forgets at equal task quality, and how one frozen base serves several tasks by swapping LoRA
# weights. Sentiment is lesson 1's; topic stands for classification here.
#
# **Read alongside:** all of `minitune/strategies/` (`full.py`, `lora.py`, `adapter.py`, `prompt.py`, and
# `__init__.py` for apply_strategy, save_trainable and load_trainable, which also swaps),
# `minitune/course/runs.py` (how each run is trained, scored and traced), `minitune/course/stats.py` (the
# noise rule) and `minitune/memory.py` (what training memory counts).
#
# **Run:** `python lessons/06_comparison.py` (its full fine-tuning and LoRA runs are lesson 1's, read back
# when lesson 1 ran first), or `--quick` (seconds, the nano base). The results of the last full run, beside
# this text: `docs/lessons/06.md`.
#
# **How to read a result.** Every score is the mean of 3 seeds with its sample standard deviation. A
# claim's verdict comes from Welch's t on the per-seed values at p < 0.05: *agrees* or *contradicts* when
# the gap is beyond noise, *not told apart* when it is not, with the smallest gap the design could see.

# %%
import statistics
import time
from itertools import product
from pathlib import Path

import torch

from minitune.course.lesson import Lesson, SeedRuns, bar_groups
from minitune.course.report import Bytes, best_per_task
from minitune.course.runs import common_target, first_reaching
from minitune.course.stats import summarize
from minitune.course.recorded import recorded_choices, recorded_sweeps, table_rows
from minitune.evaluate import HEADLINE_METRIC, evaluate_task
from minitune.finetune import open_run, supervised
from minitune.memory import human_bytes, tensor_bytes
from minitune.strategies import AdapterConfig, FullConfig, LoRAConfig, PromptTuningConfig, load_trainable
from minitune.strategies import trainable_state

lesson = Lesson.start(6, "Choosing a strategy")
TASKS = ("topic", "summarization", "qa", "code")
STRATEGIES = (FullConfig(), LoRAConfig(), AdapterConfig(), PromptTuningConfig())  # the configs the sweep tuned
NAMES = [c.name for c in STRATEGIES]
MATCHED = ("full", "lora", "adapter")  # the strategies whose forgetting is compared at equal task quality
SERVED = ("topic", "qa", "code")       # tasks whose LoRA adapters share one base in section 5

# %% [markdown]
# ## 1. Each strategy's learning rate, chosen on the validation split
#
# The good learning rate differs by strategy: full fine-tuning moves every pretrained weight and wants
# small steps; a soft prompt is a few input vectors that start far from anything useful and wants large
# ones. Strategies compared each at a guessed rate compare the guesses. The recorded sweeps
# (`minitune sweep`, shipped in `minitune/assets/sweep/`) ran each strategy's default and its neighbours on
# the 1-3-10 ladder, 3 seeds per rate, on the validation split of one task per family (sentiment for
# classification, qa for generation). The earlier sweeps kept the old default unless another rate beat it
# beyond noise; with 3 seeds that keeps whatever was guessed first, so the latest sweep re-ran every
# strategy and takes the lowest mean validation loss, whatever the old default, reporting the rates within
# noise of it beside it. When the best rate is the lowest or highest tried, the sweep adds the next rung
# beyond it and chooses again, so every chosen rate has a worse (or diverged) neighbour on both sides.
# Every lesson trains at the chosen rates unless it studies the rate.

# %%
for record in recorded_sweeps():  # oldest first; `minitune sweep` runs one again
    s = record["settings"]
    lesson.table(f"Sweep of {', '.join(s['strategies'])} ({s['steps']} steps; seeds {s['seeds']})", table_rows(record))
chosen = recorded_choices()  # {strategy: {family: rate}}, the latest sweep of each strategy winning
lesson.table("The learning rates the package trains at (default_lr), per family", chosen, index="strategy")

# %% [markdown]
# ## 2. Every strategy on four tasks
#
# The four differ in what they let move. With the base's weights W (P numbers):
#
#     full      W -> W + dW, any dW                    trainable P
#     LoRA      W -> W + s B A per adapted matrix      trainable r (d_in + d_out) per matrix
#     adapter   h -> h + up(f(down(h))) per sublayer   trainable 2 d m + d + m per adapter
#     prompt    input -> [p_1..p_n, input]             trainable n d, and nothing inside the model
#
# What they can express falls in the same order: full fine-tuning can reach any weights, LoRA any low-rank
# change of the chosen matrices, an adapter a small non-linear correction after each sublayer, and a soft
# prompt only what the frozen network does with some extra input vectors. Whether that capacity matters
# depends on the task and on the base's size, so it is measured, not ranked. Each run trains 160 steps of 16
# examples at its strategy's rate above, keeps its best validation checkpoint and is scored on test in the
# task's own metric. These are shared runs (`minitune/course/runs.py`): lessons 1 and 7 show the same
# runs where they train the same strategy on the same task.

# %%
runs = lesson.shared_runs(TASKS, STRATEGIES)  # {(task, strategy): one run per seed}
scores = {t: {"metric": HEADLINE_METRIC[t], **{s: runs[t, s]["score"] for s in NAMES},
              "test items": runs[t, "full"].runs[0]["n"]} for t in TASKS}
lesson.table(f"Test score ({lesson.budget.steps} steps of {lesson.budget.batch_size})", scores, index="task")
lesson.plot("scores.png", lambda ax: (bar_groups(ax, [f"{t}\n({HEADLINE_METRIC[t]})" for t in TASKS], {
    s: [runs[t, s]["score"] for t in TASKS] for s in NAMES}), ax.set_ylim(0, 1.05)), (7.6, 4.2), "Test scores")
lesson.note(best_per_task(runs, TASKS, NAMES)[1])

# %% [markdown]
# ## 3. What each strategy costs
#
# Training with AdamW in fp32 (lesson 2) holds about 4 P + 12 P_trainable bytes: every weight, and a
# gradient and two moments per trainable number. A task then needs 4 P_trainable bytes on disk. Time per
# step falls far less than memory: backward must still run through every frozen layer between the loss and
# a trainable tensor, and for prompt tuning that is all of them, down to the input. Below, memory and step
# time on a batch of 16 topic examples (activations not counted; step ms is the median of 5 steps, one
# measurement), and the file per task as the runs above saved it.

# %%
costs = {c.name: lesson.training_costs(c, "topic") for c in STRATEGIES}
RELATIVE = ("train memory", "step ms", "file per task")  # each also as a share of full fine-tuning's
for s, c in costs.items():  # full comes first, so its row is complete before the others divide by it
    c["file per task"] = Bytes(statistics.mean(run["file"] for t in TASKS for run in runs[t, s].runs))
    c |= {f"{k} x full": c[k] / costs["full"][k] for k in RELATIVE}
lesson.table("What training costs, and as a share of full fine-tuning", costs, index="strategy", columns=(
    "trainable %", "train memory", "step ms", "file per task", *(f"{k} x full" for k in RELATIVE)))

# %% [markdown]
# ## 4. Forgetting and time, at matched learning
#
# A strategy that learns the task faster also moves further from the base, so general-text perplexity at
# the end of equal budgets mixes how much a method forgets with how far it got. Each run records, at every
# evaluation (every 20 steps), its validation loss and the perplexity of held-out general text. Per task, a
# target validation loss is set that every full, LoRA and adapter run reached (the worst of their best
# losses, `common_target`), and each run is read at its first evaluation at or below it (`first_reaching`):
# forgetting and training time there are compared at equal task quality. Prompt tuning may never get
# there; its row says how many runs did.
#
# The course says PEFT forgets less. A PEFT strategy never changes the base: with its trained part removed,
# the base's perplexity is exactly what it was. What rises is the perplexity of the model as served, with
# the LoRA weights, the adapters or the soft prompt attached; for a soft prompt that is its interference
# with other text, not a change to the model.

# %%
base_ppl = lesson.base_perplexity()  # the general text under the base, as the runs measure it


def read_at(t: str, s: str, target: float) -> dict:
    """Each run of s on t at its first evaluation at or below the target; its general text at the end."""
    hits = [h for h in (first_reaching(run, target) for run in runs[t, s].runs) if h is not None]
    there = SeedRuns(runs[t, s].seeds, [{"steps to target": h["step"], "s to target": h["train_seconds"],
                                         "ppl there": h["general_ppl"] / base_ppl} for h in hits])
    return {"target val loss": target, "runs reaching it": f"{len(hits)}/{len(runs[t, s])}",
            **(there.measures() if hits else {}),
            "ppl at the end": summarize([run["general_ppl"] / base_ppl for run in runs[t, s].runs]),
            "base bitwise intact": f"{sum(run['base_intact'] for run in runs[t, s].runs)}/{len(runs[t, s])}"}


targets = {t: common_target([run for s in MATCHED for run in runs[t, s].runs]) for t in TASKS}
matched = {(t, s): read_at(t, s, targets[t]) for t in TASKS for s in NAMES}
lesson.table(f"General-text perplexity / the base's ({base_ppl:.3f}), at the target validation loss and at the end",
             {f"{t} / {s}": row for (t, s), row in matched.items()}, index="task / strategy")
for t, s in product(TASKS, ("lora", "adapter")):
    lesson.claim(f"PEFT forgets less, at matched task quality ({s} on {t})", "Module 1", matched[t, s]["ppl there"],
                 matched[t, "full"]["ppl there"], (s.replace("lora", "LoRA"), "full"), expect="lower", log=True)
for t in TASKS:
    lesson.claim(f"training seconds to the matched validation loss ({t})", "", matched[t, "lora"]["s to target"],
                 matched[t, "full"]["s to target"], ("LoRA", "full"), expect=None)


def forgetting_plot(ax, task: str = "qa") -> None:
    for k, s in enumerate(NAMES):  # every run, one colour per strategy
        for i, run in enumerate(runs[task, s].runs):
            ax.plot([r["val_loss"] for r in run["history"]], [r["general_ppl"] / base_ppl for r in run["history"]],
                    ".-", alpha=0.7, color=f"C{k}", label=None if i else s)
    ax.invert_xaxis()
    ax.set(yscale="log", xlabel=f"validation loss on {task} (learning goes right)", ylabel="general ppl / base's")
    ax.legend(fontsize=8)


lesson.plot("forgetting.png", forgetting_plot, title="Forgetting against learning, every run (qa)")

# %% [markdown]
# ## 5. One frozen base, several tasks: swapping LoRA adapters at run time
#
# A PEFT model is the shared base plus a small file per task. Here one copy of the base carries LoRA
# layers, and `load_trainable` swaps in each task's trained A and B from disk (seed 0's run of section 2).
# After a swap it should answer exactly as a model built for that task alone: the same score on the first
# test examples, the same first answers, the same logits. A swap is timed from the previous task's adapter
# (median of 3), and serving N tasks takes the base once plus N adapters instead of N full copies.

# %%
served, enc = lesson.load_base()
base_bytes = tensor_bytes(served.parameters())
adapter = {t: Path(runs[t, "lora"].runs[0]["run"]) / "best" for t in SERVED}  # seed 0's trained LoRA tensors
served = load_trainable(served, adapter[SERVED[0]]).to(lesson.device)
swap_ms = []


def swap_to(name: str, previous: str) -> dict:
    """Swap the served model to name's adapter (timed), and set it against the model built for name alone."""
    task, metric = lesson.budget.task(name), HEADLINE_METRIC[name]
    for _ in range(3):  # swap in the previous task's adapter, then this one's, timing the second
        load_trainable(served, adapter[previous])
        t0 = time.perf_counter()
        load_trainable(served, adapter[name])
        swap_ms.append((time.perf_counter() - t0) * 1000)
    own = open_run(runs[name, "lora"].runs[0]["run"], lesson.device)[0]
    alone, shared = (evaluate_task(m, enc, task, limit=lesson.size(4, 50), device=lesson.device) for m in (own, served))
    x, _ = next(supervised(task, "test", enc, served.max_input_tokens, batch_size=16).eval_batches())
    with torch.no_grad():
        diff = (served(x.to(lesson.device))[0] - own(x.to(lesson.device))[0]).abs().max().item()
    return {"dedicated model": alone[metric], "shared base, swapped": shared[metric],
            "same first answers": [a["prediction"] for a in alone["samples"]] ==
                                  [a["prediction"] for a in shared["samples"]],
            "max |logit diff|": diff, "swap ms (median)": statistics.median(swap_ms[-3:]),
            "adapter": Bytes(tensor_bytes(trainable_state(served).values()))}


serving = {name: swap_to(name, SERVED[i - 1]) for i, name in enumerate(SERVED)}
lesson.table(f"After a swap, against the task's own model ({lesson.size(4, 50)} test items)", serving, index="task")
together = base_bytes + sum(row["adapter"] for row in serving.values())
copies = len(SERVED) * base_bytes
lesson.record("serving", {"full_copies_bytes": copies, "base_plus_adapters_bytes": together, "switch_ms": swap_ms})
lesson.note(f"A swap from disk took a median {statistics.median(swap_ms):.1f} ms; the base and {len(SERVED)} adapters "
            f"took {human_bytes(together)}, {together / copies:.0%} of {len(SERVED)} copies' {human_bytes(copies)}.")

# %% [markdown]
# ## 6. Choosing
#
# The course expects full fine-tuning to give the highest quality and the PEFT methods to come close for a
# fraction of the cost. Each task's first claim below sets full fine-tuning against the strongest of the
# others there (by mean). Where it is not ahead beyond noise, a cheaper strategy did as well at this budget;
# the table names the cheapest (by trainable share) that full fine-tuning does not beat beyond noise, and
# where that is full fine-tuning itself, every smaller strategy fell behind. Last, Lester et al. (2021)
# found that soft prompts close the gap to full fine-tuning only as models approach ten billion
# parameters; on this base of about a million they should lag.

# %%
for t in TASKS:
    rival = max(NAMES[1:], key=lambda s: runs[t, s]["score"].mean)  # the best of the others
    lesson.claim(f"full fine-tuning gives the highest quality ({t}; against the best other there)", "Module 1",
                 runs[t, "full"]["score"], runs[t, rival]["score"], ("full", rival.replace("lora", "LoRA")))
    lesson.claim(f"on a small base, soft prompts fall short of full fine-tuning ({t})", "Lester et al. 2021",
                 runs[t, "full"]["score"], runs[t, "prompt"]["score"], ("full", "prompt tuning"))


def cheapest_match(t: str) -> dict:
    """The strategy with the smallest trainable share whose score full fine-tuning does not beat beyond noise."""
    full = runs[t, "full"]["score"]
    beaten = {s: lesson.compare(full, runs[t, s]["score"], ("full", s)).winner == "full" for s in NAMES}
    s = min((s for s in NAMES if not beaten[s]), key=lambda s: costs[s]["trainable %"])  # full never beats itself
    return {"strategy": s, "trainable %": costs[s]["trainable %"], "its score": runs[t, s]["score"]}


lesson.table("The cheapest strategy whose test score full fine-tuning did not beat beyond noise",
             {t: cheapest_match(t) for t in TASKS}, index="task")
lesson.finish()
