"""Lesson 6: Choosing a strategy

What this lesson shows, by measuring it on your machine:
  0. each strategy's learning rate, as the recorded sweeps (`minitune sweep`, on the validation split,
     3 seeds per rate) chose it; every lesson trains at these defaults unless it studies the rate;
  1. every strategy (full fine-tuning, LoRA, bottleneck adapters, prompt tuning) on every task
     (sentiment, topic, summarization, question answering, code), from one base with one budget of
     steps: the test score in each task's own metric;
  2. what each strategy costs and what it forgets: trainable share of the parameters, training memory
     (measured), time per step, file per task, and the perplexity of the fine-tuned model on general
     text against the base's;
  3. one frozen base serving several tasks: LoRA adapters swapped at run time answer exactly as the
     dedicated fine-tuned models do, a swap takes milliseconds, and the base plus N small files take a
     fraction of N full copies;
  4. which strategy to choose, in sentences computed from the numbers above, including the places where
     this small model disagrees with the course or the papers.

Read alongside: all of minitune/strategies/ (full.py, lora.py, adapter.py, prompt.py, and __init__.py for
apply_strategy, save_trainable and load_trainable, which also swaps), minitune/memory.py,
minitune/finetune.py, minitune/evaluate.py.

Run:  python lessons/06_comparison.py      about 4 minutes on 2 CPU cores with the base cached (5 when busy)
      python lessons/06_comparison.py --quick    about 15 seconds, nano sizes

The idea. The four strategies differ in what they let move. With the base's weights W (P numbers):

    full      W -> W + dW, any dW                    trainable P
    LoRA      W -> W + s B A per adapted matrix      trainable r (d_in + d_out) per matrix
    adapter   h -> h + up(f(down(h))) per sublayer   trainable 2 d m + d + m per adapter
    prompt    input -> [p_1..p_n, input]             trainable n d, and nothing inside the model

Each costs, while training with AdamW in fp32 (lesson 2), about 4 P + 12 P_trainable bytes of weights,
gradients and moments, and stores 4 P_trainable bytes per task. Time per step falls far less than
memory: backward must still run through every frozen layer that lies between the loss and a trainable
tensor, and for prompt tuning that is all of them, down to the input.

What they can express runs the other way: full fine-tuning can reach any weights, LoRA any low-rank
change of the chosen matrices, an adapter a small non-linear correction after each sublayer, and a soft
prompt only what the frozen network does with some extra input vectors. Whether that capacity matters
depends on the task and on the base's size, which is why this lesson measures rather than ranks.

Forgetting is measured the way the model is used: the perplexity, exp(mean cross-entropy per token), of
held-out general text under the fine-tuned model with its trained part attached (LoRA, adapters, soft
prompt), over the base's. A PEFT strategy can raise it too; what it cannot do is change the base, which
is still there, bit for bit, once the trained part is taken off.

Serving. Under a PEFT strategy the base never changes, so one copy in memory can serve every task:
swapping task i's small tensors in (load_trainable on a model that already carries the strategy) turns
the one model into task i's model exactly. N tasks then cost 4 P + N * 4 P_trainable bytes instead
of N * 4 P.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from minitune.data.tasks import load_task
from minitune.evaluate import HEADLINE_METRIC, evaluate_task
from minitune.finetune import finetune, supervised
from minitune.lesson import Lesson, held_out_text, perplexity, strategy_costs
from minitune.memory import file_size, human_bytes, tensor_bytes
from minitune.strategies import (AdapterConfig, FullConfig, LoRAConfig, PromptTuningConfig, apply_strategy,
                                 base_unchanged, load_trainable, trainable_state)
from minitune.sweep import recorded_choices, recorded_sweeps, table_rows

TASKS = HEADLINE_METRIC
STRATEGIES = [FullConfig(), LoRAConfig(r=8, targets=("c_attn", "c_fc")), AdapterConfig(bottleneck=16),
              PromptTuningConfig(n_tokens=20)]
SERVED = ("sentiment", "topic", "qa")  # tasks whose LoRA adapters share one base in section 3


def general_text(lesson: Lesson) -> list[str]:
    """Held-out general text: a world built with another seed, the same kinds of documents and words."""
    return held_out_text(lesson.size(60_000, 200_000))


def every_strategy_on_every_task(lesson: Lesson, base, general: list[str], eval_batches: int
                                 ) -> tuple[list, dict, dict]:
    lesson.section("1. Every strategy on every task")
    sizes = lesson.size({"train": 64, "validation": 8, "test": 16}, {"train": 1000, "validation": 32, "test": 100})
    steps, limit = lesson.size(8, 100), lesson.size(4, 50)
    cells, models, tasks = [], {}, {}
    for name, metric in TASKS.items():
        task = tasks[name] = load_task(name, sizes=None if name == "qa" else sizes)
        for config in STRATEGIES:
            model, enc, out = finetune(lesson.base, task, config, lesson.run_dir(f"{name}-{config.name}"),
                                       max_steps=steps, eval_every=steps, device=lesson.device, quiet=True,
                                       checkpoint_every=0)
            result = evaluate_task(model, enc, task, limit=limit, device=lesson.device)
            cells.append({"task": name, "strategy": config.name, "score": result[metric], "n": result["n"],
                          "perplexity": perplexity(model, enc, general, lesson.device, max_batches=eval_batches),
                          "file": file_size(out / "best" / "trainable.safetensors"),
                          "base intact": base_unchanged(model, base)})
            models[(name, config.name)] = (model, result)
        print(f"  {name}: " + ", ".join(f"{c['strategy']} {c['score']:.3f}" for c in cells[-len(STRATEGIES):]),
              flush=True)
    names = [c.name for c in STRATEGIES]
    quality = [{"task": t, "metric": m, **{s: _cell(cells, t, s)["score"] for s in names}} for t, m in TASKS.items()]
    lrs = ", ".join(f"{c.name} {c.default_lr:g}" for c in STRATEGIES)
    lesson.table(f"Test score per task and strategy ({steps} steps of batch 16 each, at each strategy's default "
                 f"learning rate: {lrs}; up to {limit} test examples per task)", quality)
    lesson.plot("scores.png", lambda ax: _heat_map(ax, quality, names), figsize=(6.4, 4.2))
    lesson.record("steps", steps)
    return cells, models, tasks


def costs_and_forgetting(lesson: Lesson, cells: list[dict], base_ppl: float) -> list[dict]:
    lesson.section("2. What each strategy costs, and what it forgets")
    task = load_task("sentiment", sizes={"train": 32, "validation": 8, "test": 8})
    rows = []
    for config in STRATEGIES:
        model, enc = lesson.load_base()
        model = apply_strategy(model, config)
        x, y = supervised(task, "train", enc, model.max_input_tokens, batch_size=16).batch(0)
        c = strategy_costs(model, x, y, lesson.device)
        trainable, total, memory = c["trainable"], c["total"], c["memory"]["total"]
        mine = [c for c in cells if c["strategy"] == config.name]
        ratios = [c["perplexity"] / base_ppl for c in mine]
        rows.append({"strategy": config.name, "mean score": statistics.mean(c["score"] for c in mine),
                     "trainable %": 100 * trainable / total,
                     "train memory": human_bytes(memory),
                     "step ms": c["step_ms"],
                     "file per task": human_bytes(statistics.mean(c["file"] for c in mine)),
                     "general ppl x base": math.exp(statistics.mean(math.log(r) for r in ratios)),
                     "worst ppl x base": max(ratios),
                     "base intact (tasks)": sum(c["base intact"] for c in mine),
                     "_memory": memory, "_file": mine[0]["file"]})
    for r in rows:
        lesson.record(f"cost_{r['strategy']}", {"memory_bytes": r.pop("_memory"), "file_bytes": r.pop("_file")})
    lesson.table("Summary: quality, cost and forgetting per strategy (train memory: weights, gradients and AdamW "
                 "state in fp32, activations not counted; one step on a batch of 16 sentiment examples)", rows,
                 note=f"(general ppl x base: general-text perplexity with the fine-tuned model over the base's "
                      f"{base_ppl:.2f}, geometric mean over the five tasks; worst: the largest of the five; base "
                      "intact: runs after which every tensor of the base is bitwise what it was)")
    per_task = [{"task": t, **{s.name: _cell(cells, t, s.name)["perplexity"] for s in STRATEGIES}} for t in TASKS]
    lesson.table(f"General-text perplexity after fine-tuning on each task (base: {base_ppl:.2f})", per_task)
    lesson.plot("quality_vs_size.png", lambda ax: _tradeoff(ax, rows))
    return rows


def one_base_many_adapters(lesson: Lesson, tasks: dict, models: dict, cells: list[dict]) -> None:
    lesson.section("3. One frozen base, several tasks: swapping LoRA adapters at run time")
    limit = lesson.size(4, 50)
    served, enc = lesson.load_base()
    base_bytes = tensor_bytes(served.parameters())
    served = load_trainable(served, lesson.run_dir(f"{SERVED[0]}-lora") / "best")  # applies LoRA, first adapter
    rows, switch_ms = [], []
    for name in SERVED:
        task = tasks[name]
        times = []
        for _ in range(3):  # swap in the previous task's adapter, then this one's, timing the second
            load_trainable(served, lesson.run_dir(f"{SERVED[SERVED.index(name) - 1]}-lora") / "best")
            t0 = time.perf_counter()
            load_trainable(served, lesson.run_dir(f"{name}-lora") / "best")
            times.append((time.perf_counter() - t0) * 1000)
        switch_ms += times
        dedicated, dedicated_result = models[(name, "lora")]
        result = evaluate_task(served, enc, task, limit=limit, device=lesson.device)
        x, _ = next(supervised(task, "test", enc, served.max_input_tokens, batch_size=16).eval_batches())
        with torch.no_grad():
            diff = (served(x.to(lesson.device))[0] - dedicated(x.to(lesson.device))[0]).abs().max().item()
        metric = TASKS[name]
        rows.append({"task": name, "dedicated model": dedicated_result[metric], "shared base, swapped": result[metric],
                     "first answers same": [s["prediction"] for s in result["samples"]] ==
                                           [s["prediction"] for s in dedicated_result["samples"]],
                     "max |logit diff|": diff, "swap ms (median)": statistics.median(times),
                     "adapter": human_bytes(tensor_bytes(trainable_state(served).values()))})
    lesson.table(f"After a swap vs the dedicated LoRA model: score on {limit} test examples, their first answers, "
                 "logits on 16 test prompts (swap: load_trainable from disk onto the model carrying LoRA)", rows)
    adapters = sum(tensor_bytes(trainable_state(models[(n, "lora")][0]).values()) for n in SERVED)
    full_copies = sum(tensor_bytes(models[(n, "full")][0].parameters()) for n in SERVED)
    disk_lora = sum(_cell(cells, n, "lora")["file"] for n in SERVED)
    disk_full = sum(_cell(cells, n, "full")["file"] for n in SERVED)
    memory = [{"serving": f"{len(SERVED)} full fine-tuned copies", "in memory": human_bytes(full_copies),
               "on disk": human_bytes(disk_full)},
              {"serving": f"1 base + {len(SERVED)} LoRA adapters", "in memory": human_bytes(base_bytes + adapters),
               "on disk": human_bytes(disk_lora)}]
    lesson.table("Bytes to serve the tasks (fp32 tensors; on disk: the fine-tuning runs' files, the base's not "
                 "counted)", memory)
    lesson.record("serving", {"full_copies_bytes": full_copies, "base_plus_adapters_bytes": base_bytes + adapters,
                              "disk_full": disk_full, "disk_lora": disk_lora, "switch_ms": switch_ms})
    same = sum(r["first answers same"] and r["max |logit diff|"] == 0.0
               and r["dedicated model"] == r["shared base, swapped"] for r in rows)
    lesson.conclude(f"After a swap the one shared base matched the dedicated model exactly (same score, same first "
                    f"answers, identical logits) on {same} of {len(rows)} tasks; a swap from disk took a median "
                    f"{statistics.median(switch_ms):.1f} ms; serving {len(SERVED)} tasks took "
                    f"{human_bytes(base_bytes + adapters)} in memory instead of {human_bytes(full_copies)} "
                    f"({(base_bytes + adapters) / full_copies:.0%}), and {human_bytes(disk_lora)} on disk instead of "
                    f"{human_bytes(disk_full)} ({disk_lora / disk_full:.1%}).")


def conclusions(lesson: Lesson, cells: list[dict], rows: list[dict]) -> None:
    lesson.section("4. Choosing")
    winners = []
    for t, metric in TASKS.items():
        scores = sorted(((_cell(cells, t, s.name)["score"], s.name) for s in STRATEGIES), reverse=True)
        best = scores[0][0]
        won = [s.name for s in STRATEGIES if _cell(cells, t, s.name)["score"] == best]
        text = f"{t}: {' = '.join(won)} ({best:.2f})"
        behind = [(score, name) for score, name in scores if score < best]
        if behind and metric != "rougeL_f1":  # a share of n examples: is the lead larger than sampling noise?
            z = _two_proportion_z(best, behind[0][0], _cell(cells, t, won[0])["n"])
            if z < 2:
                text += f", within sampling noise of {behind[0][1]} ({behind[0][0]:.2f}; z = {z:.1f})"
        winners.append(text)
    lesson.conclude("Best score per task: " + "; ".join(winners) + ".")

    by = {r["strategy"]: r for r in rows}
    full, lora, adapter, prompt = (by[n] for n in ("full", "lora", "adapter", "prompt"))
    ranked = sorted(rows, key=lambda r: -r["mean score"])
    top = [r["strategy"] for r in rows if r["mean score"] == ranked[0]["mean score"]]
    if top == ["full"]:
        verdict = "Full fine-tuning came first, as the course expects."
    elif top[0] == "full":
        verdict = f"Full fine-tuning tied for first with {_names(top[1:])}."
    else:
        verdict = (f"Full fine-tuning did not come first ({_names(top)} did), against the course's 'highest possible "
                   "performance', at this budget of steps.")
    means = ", ".join(f"{r['strategy']} {r['mean score']:.3f}" for r in ranked)
    lesson.conclude(f"Mean score over the five tasks: {means}. {verdict}")

    cost = lesson.results["numbers"]
    lesson.conclude(f"For that, LoRA trained {lora['trainable %']:.1f}% of the parameters with "
                    f"{cost['cost_lora']['memory_bytes'] / cost['cost_full']['memory_bytes']:.0%} of full "
                    f"fine-tuning's training memory and a "
                    f"{cost['cost_lora']['file_bytes'] / cost['cost_full']['file_bytes']:.1%} file per task; adapters "
                    f"trained {adapter['trainable %']:.1f}% and prompt tuning {prompt['trainable %']:.2f}%.")

    speed = {r["strategy"]: r["step ms"] / full["step ms"] for r in rows if r is not full}
    slower = [s for s, v in speed.items() if v >= 1.0]
    took = ", ".join(f"{s} {v:.0%}" for s, v in speed.items())
    if slower:
        why = (f"against the course's 'much faster', {_names(slower)} did not beat full fine-tuning per step here; "
               "at this size backward still runs through every frozen layer, and the saving is memory, not compute.")
    else:
        why = ("every PEFT step was faster, though by far less than its memory saving, since backward still runs "
               "through the frozen layers.")
    lesson.conclude(f"A training step took, as a share of full fine-tuning's: {took}: {why}")

    cheap = sorted(rows, key=lambda r: r["trainable %"])
    picks = []
    for t in TASKS:
        bar = _cell(cells, t, "full")["score"] - 0.05
        picks.append(f"{t}: " + next(r["strategy"] for r in cheap if _cell(cells, t, r["strategy"])["score"] >= bar))
    lesson.conclude("The cheapest strategy that came within 0.05 of full fine-tuning's score: " + "; ".join(picks)
                    + ". Where that is full fine-tuning, the small strategies needed more than this budget of steps.")

    _conclude_forgetting(lesson, full, [lora, adapter, prompt])

    share = prompt["mean score"] / full["mean score"] if full["mean score"] else float("nan")
    if share < 0.9:
        lester = ("Lester et al. found soft prompts catch up with full fine-tuning only as models approach ten "
                  "billion parameters; on this ~1M-parameter base it lags, as their results predict.")
    else:
        lester = ("Lester et al. found it lags on small models and closes the gap only near ten billion parameters; "
                  "this small base did not show that gap.")
    lesson.conclude(f"Prompt tuning reached {share:.0%} of full fine-tuning's mean score here. {lester}")


def _conclude_forgetting(lesson: Lesson, full: dict, peft: list[dict]) -> None:
    f = full["general ppl x base"]
    groups: dict[str, list[str]] = {"clearly less than": [], "about as much as": [], "more than": []}
    for r in peft:  # compare the rises in log-perplexity (nats per token), so that 1.05x is far from 1.5x
        rise, full_rise = math.log(r["general ppl x base"]), math.log(f)
        groups["clearly less than" if rise < 0.8 * full_rise else "more than" if rise > 1.25 * full_rise
               else "about as much as"].append(r["strategy"])
    text = (f"General-text perplexity rose {f:.2f}x under full fine-tuning, "
            + ", ".join(f"{r['general ppl x base']:.2f}x under {r['strategy']}" for r in peft)
            + " (geometric mean over the tasks, each strategy at its default learning rate).")
    if groups["clearly less than"]:
        text += (f" With {_names(groups['clearly less than'])}, the model forgot clearly less than with full "
                 "fine-tuning, as the course says.")
    for how in ("about as much as", "more than"):
        if groups[how]:
            text += (f" Against the course's claim that PEFT avoids forgetting, with {_names(groups[how])} the "
                     f"model forgot {how} with full fine-tuning here.")
    lesson.conclude(text)
    worst = max(peft, key=lambda r: r["general ppl x base"])
    if worst["general ppl x base"] > 1.05:
        intact = sum(r["base intact (tasks)"] for r in peft)
        lesson.conclude(f"With its trained part attached, {worst['strategy']} still raised general-text perplexity "
                        f"{worst['general ppl x base']:.2f}x. What PEFT keeps is the base itself: every base tensor "
                        f"was bitwise unchanged after {intact} of {len(peft) * len(TASKS)} PEFT runs (and after "
                        f"{full['base intact (tasks)']} of {len(TASKS)} full runs), so removing the adapter or soft "
                        "prompt gives the base back exactly. Lesson 2 shows how steeply full fine-tuning's forgetting "
                        "falls with a smaller learning rate.")




def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _two_proportion_z(p1: float, p2: float, n: int) -> float:
    """How many standard errors apart two success rates measured on n examples each are."""
    p = (p1 + p2) / 2
    return abs(p1 - p2) / math.sqrt(p * (1 - p) * 2 / n) if 0 < p < 1 else float("inf")


def _cell(cells: list[dict], task: str, strategy: str) -> dict:
    return next(c for c in cells if c["task"] == task and c["strategy"] == strategy)


def _heat_map(ax, quality: list[dict], names: list[str]) -> None:
    grid = [[r[s] for s in names] for r in quality]
    ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(quality)), [f"{r['task']}\n({r['metric']})" for r in quality])
    ax.set_title("Test score, task x strategy")


def _tradeoff(ax, rows: list[dict]) -> None:
    for r in rows:
        ax.scatter(r["trainable %"], r["mean score"], s=60)
        ax.annotate(f"{r['strategy']}\n{r['file per task']}", (r["trainable %"], r["mean score"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    xs = [r["trainable %"] for r in rows]
    ax.set_xlim(min(xs) / 2, max(xs) * 4)  # room for the labels
    ax.set_xlabel("trainable parameters (% of the model, log scale)")
    ax.set_ylabel("mean test score over the five tasks")
    ax.set_title("Quality vs trainable share (label: file per task)")


def learning_rates(lesson: Lesson) -> None:
    lesson.section("0. Each strategy's learning rate, chosen on the validation split")
    for record in recorded_sweeps():  # shipped with the package; `minitune sweep` runs one again
        lesson.table(f"Learning-rate sweep: {record['settings']['steps']} steps, seeds {record['settings']['seeds']}, "
                     f"validation split only (`{record['command']}`)", table_rows(record))
    chosen = recorded_choices()
    full = chosen["full"]["classification"]
    lesson.conclude("Defaults the package uses, as the recorded sweeps chose them: " + ", ".join(
        f"{name} {sorted(set(by.values()))[0]:g}" for name, by in chosen.items()) + f"; LoRA's is "
        f"{chosen['lora']['classification'] / full:g} times full fine-tuning's.")


def main(argv: list[str] | None = None) -> dict:
    lesson = Lesson.start(6, "Choosing a strategy", __doc__, argv)
    learning_rates(lesson)
    general, eval_batches = general_text(lesson), lesson.size(4, 8)
    base, enc = lesson.load_base()
    base_ppl = perplexity(base, enc, general, lesson.device, max_batches=eval_batches)
    lesson.record("base_general_perplexity", base_ppl)
    cells, models, tasks = every_strategy_on_every_task(lesson, base, general, eval_batches)
    rows = costs_and_forgetting(lesson, cells, base_ppl)
    one_base_many_adapters(lesson, tasks, models, cells)
    conclusions(lesson, cells, rows)
    return lesson.finish()


if __name__ == "__main__":
    main()
