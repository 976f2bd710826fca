"""Lesson 6: Choosing a strategy

What this lesson shows, by measuring it on your machine:
  0. each strategy's learning rate, as the recorded sweeps (`minitune sweep`, on the validation split,
     3 seeds per rate) chose it; every lesson trains at these defaults unless it studies the rate;
  1. every strategy (full fine-tuning, LoRA, bottleneck adapters, prompt tuning) on four tasks (topic,
     summarization, question answering, code), 3 seeds each, one budget of steps: the test score in each
     task's own metric;
  2. what each strategy costs: trainable share of the parameters, training memory (measured), time per
     step and file per task;
  3. forgetting and speed at matched learning: general-text perplexity and training time at the first
     evaluation where each run reached the same validation loss on the task, and, for prompt tuning,
     what its soft prompt does to other text while the base stays bitwise unchanged;
  4. one frozen base serving several tasks: LoRA adapters swapped at run time answer exactly as the
     dedicated fine-tuned models do, a swap takes milliseconds, and the base plus N small files take a
     fraction of N full copies;
  5. which strategy to choose, in sentences computed from the numbers above, including the places where
     this small model disagrees with the course or the papers.

Read alongside: all of minitune/strategies/ (full.py, lora.py, adapter.py, prompt.py, and __init__.py for
apply_strategy, save_trainable and load_trainable, which also swaps), minitune/cells.py (how each run is
trained, scored and traced), minitune/stats.py (the noise rule), minitune/memory.py.

Run:  python lessons/06_comparison.py      4 minutes on 2 CPU cores after lessons 1-5 (measured; 30 of
                                            its 48 runs are theirs), about 9 on its own (estimated)
      python lessons/06_comparison.py --quick    seconds, nano sizes

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

Measuring. Every cell is 3 seeds (mean ± sd, every seed's value in results.json and on the plots), and
every comparison in a sentence is the package's one noise rule: Welch's t on the per-seed values, a
difference counted only at p < 0.05; otherwise the sentence says there is no difference beyond noise.
The runs are minitune.cells': 160 steps of 16 examples at each strategy's default learning rate, the same
runs lesson 1 shows for full fine-tuning and LoRA. Sentiment is left to lesson 1; topic stands for
classification here.

Forgetting, fairly. A strategy that learns the task faster also moves further from the base, so
comparing general-text perplexity at the end of equal budgets mixes how much a method forgets with
how far it got. Each run therefore records, at every evaluation (every 20 steps), its validation loss
and the perplexity of held-out general text. Per task, a target validation loss is set that every
full, LoRA and adapter run reached (the worst of their best losses), and each run is read at the first
evaluation at or below it: forgetting and training time there are compared at equal task quality.
A PEFT strategy never changes the base: with its trained part removed, the base's own perplexity is
exactly what it was. What rises is the perplexity of the model as served, with the LoRA weights, the
adapters or the soft prompt attached.
"""

from __future__ import annotations

import statistics
import time

import torch

from minitune.cells import common_target, first_reaching
from minitune.evaluate import HEADLINE_METRIC, evaluate_task
from minitune.finetune import open_run, supervised
from minitune.lesson import Lesson, and_list, bar_groups, best_per_task
from minitune.memory import human_bytes, tensor_bytes
from minitune.stats import p_text, summarize
from minitune.strategies import (AdapterConfig, FullConfig, LoRAConfig, PromptTuningConfig, load_trainable,
                                 trainable_state)
from minitune.sweep import recorded_choices, recorded_sweeps, table_rows

TASKS = {name: HEADLINE_METRIC[name] for name in ("topic", "summarization", "qa", "code")}
STRATEGIES = [FullConfig(), LoRAConfig(), AdapterConfig(), PromptTuningConfig()]  # the configs the sweep tuned
MATCHED = ("full", "lora", "adapter")  # the strategies whose forgetting is compared at equal task quality
SERVED = ("topic", "qa", "code")  # tasks whose LoRA adapters share one base in section 4


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


def every_strategy_on_every_task(lesson: Lesson) -> dict:
    lesson.section("1. Every strategy on four tasks")
    runs = lesson.cells_over_seeds(TASKS, STRATEGIES)
    names = [c.name for c in STRATEGIES]
    quality = [{"task": t, "metric": m, **{s: runs[(t, s)]["score"] for s in names},
                "test items": runs[(t, "full")].runs[0]["n"]} for t, m in TASKS.items()]
    lrs = ", ".join(f"{c.name} {c.default_lr:g}" for c in STRATEGIES)
    lesson.table(f"Test score per task and strategy ({lesson.budget.steps} steps of {lesson.budget.batch_size} at each "
                 f"strategy's default learning rate: {lrs}; best validation checkpoint)", quality)

    def draw(ax):
        bar_groups(ax, [f"{r['task']}\n({r['metric']})" for r in quality], {s: [r[s] for r in quality] for s in names})
        ax.set_ylim(0, 1.05)
        ax.set_title("Test score, task x strategy")

    lesson.plot("scores.png", draw, figsize=(7.6, 4.2))
    lesson.record("steps", lesson.budget.steps)
    return runs


def costs(lesson: Lesson, runs: dict) -> list[dict]:
    lesson.section("2. What each strategy costs")
    rows = []
    for config in STRATEGIES:
        c = lesson.training_costs(config, "topic")
        files = [run["file"] for t in TASKS for run in runs[(t, config.name)].runs]
        rows.append({"strategy": config.name, "trainable %": 100 * c["trainable"] / c["total"],
                     "train memory": human_bytes(c["memory"]["total"]), "step ms": c["step_ms"],
                     "file per task": human_bytes(statistics.mean(files)),
                     "_memory": c["memory"]["total"], "_file": statistics.mean(files)})
    for r in rows:
        lesson.record(f"cost_{r['strategy']}", {"memory_bytes": r.pop("_memory"), "file_bytes": r.pop("_file")})
    lesson.table("What training costs (train memory: weights, gradients and AdamW state in fp32, activations not "
                 "counted; step ms: median of 5 steps on a batch of 16 topic examples, one measurement)", rows)
    return rows


def matched_learning(lesson: Lesson, runs: dict, base_ppl: float) -> dict:
    lesson.section("3. Forgetting and time at matched learning")
    at_end, matched, rows = {}, {}, []
    for t in TASKS:
        target = common_target([run for s in MATCHED for run in runs[(t, s)].runs])
        for config in STRATEGIES:
            cell = runs[(t, config.name)]
            at_end[(t, config.name)] = summarize([run["general_ppl"] / base_ppl for run in cell.runs])
            hits = [first_reaching(run, target) for run in cell.runs]
            reached = [h for h in hits if h is not None]
            matched[(t, config.name)] = {
                "reached": len(reached), "n": len(hits),
                "ppl": summarize([h["general_ppl"] / base_ppl for h in reached]) if reached else None,
                "steps": summarize([h["step"] for h in reached]) if reached else None,
                "seconds": summarize([h["train_seconds"] for h in reached]) if reached else None}
            m = matched[(t, config.name)]
            rows.append({"task": t, "target val loss": target, "strategy": config.name,
                         "runs reaching it": f"{m['reached']}/{m['n']}",
                         "steps to target": m["steps"] or "-", "train s to target": m["seconds"] or "-",
                         "general ppl x base there": m["ppl"] or "-", "at the end": at_end[(t, config.name)]})
    lesson.table(f"At the first evaluation (every {lesson.budget.eval_every} steps) where a run's validation loss "
                 f"reached the task's target (the worst best-loss among the {', '.join(MATCHED)} runs): steps, "
                 f"training seconds, and general-text perplexity over the base's {base_ppl:.3f}; 'at the end': the "
                 "same ratio for the best checkpoint", rows)
    lesson.plot("forgetting.png", lambda ax: _forgetting_plot(ax, runs, base_ppl))
    return {"at_end": at_end, "matched": matched}


def _forgetting_plot(ax, runs: dict, base_ppl: float) -> None:
    task = "qa"
    for config in STRATEGIES:
        color = None
        for run in runs[(task, config.name)].runs:
            xs = [r["val_loss"] for r in run["history"]]
            ys = [r["general_ppl"] / base_ppl for r in run["history"]]
            line = ax.plot(xs, ys, marker=".", alpha=0.7, color=color,
                           label=config.name if color is None else None)[0]
            color = line.get_color()
    ax.invert_xaxis()
    ax.set_yscale("log")
    ax.set_xlabel("validation loss on qa (learning goes right)")
    ax.set_ylabel("general-text perplexity / base's")
    ax.legend(fontsize=8)
    ax.set_title("Forgetting against learning, every run (qa)")


def one_base_many_adapters(lesson: Lesson, runs: dict) -> None:
    lesson.section("4. One frozen base, several tasks: swapping LoRA adapters at run time")
    served, enc = lesson.load_base()
    base_bytes = tensor_bytes(served.parameters())
    folder = {t: f"{runs[(t, 'lora')].runs[0]['run']}/best" for t in SERVED}  # seed 0's adapter of each task
    served = load_trainable(served, folder[SERVED[0]]).to(lesson.device)
    rows, switch_ms, dedicated = [], [], {}
    for i, name in enumerate(SERVED):
        task, metric, limit = lesson.budget.task(name), TASKS[name], lesson.size(4, 50)
        times = []
        for _ in range(3):  # swap in the previous task's adapter, then this one's, timing the second
            load_trainable(served, folder[SERVED[i - 1]])
            t0 = time.perf_counter()
            load_trainable(served, folder[name])
            times.append((time.perf_counter() - t0) * 1000)
        switch_ms += times
        model = dedicated[name] = open_run(runs[(name, "lora")].runs[0]["run"], lesson.device)[0]
        own, shared = (evaluate_task(m, enc, task, limit=limit, device=lesson.device) for m in (model, served))
        x, _ = next(supervised(task, "test", enc, served.max_input_tokens, batch_size=16).eval_batches())
        with torch.no_grad():
            diff = (served(x.to(lesson.device))[0] - model(x.to(lesson.device))[0]).abs().max().item()
        rows.append({"task": name, "dedicated model": own[metric], "shared base, swapped": shared[metric],
                     "same answers": [s["prediction"] for s in own["samples"]] ==
                                     [s["prediction"] for s in shared["samples"]],
                     "max |logit diff|": diff, "swap ms (median)": statistics.median(times),
                     "adapter": human_bytes(tensor_bytes(trainable_state(served).values()))})
    lesson.table(f"After a swap vs a model built for that task alone: score on {lesson.size(4, 50)} test examples, "
                 "their first answers, logits on 16 test prompts (swap: load_trainable from disk onto the model "
                 "carrying LoRA)", rows)
    adapters = sum(tensor_bytes(trainable_state(m).values()) for m in dedicated.values())
    full_copies = len(SERVED) * base_bytes
    lesson.record("serving", {"full_copies_bytes": full_copies, "base_plus_adapters_bytes": base_bytes + adapters,
                              "switch_ms": switch_ms})
    same = sum(r["same answers"] and r["max |logit diff|"] == 0.0 and r["dedicated model"] == r["shared base, swapped"]
               for r in rows)
    lesson.conclude(f"After a swap the one shared base matched the task's own model exactly (same score, same first "
                    f"answers, identical logits) on {same} of {len(rows)} tasks; a swap from disk took a median "
                    f"{statistics.median(switch_ms):.1f} ms; serving {len(SERVED)} tasks took "
                    f"{human_bytes(base_bytes + adapters)} in memory instead of {human_bytes(full_copies)} for "
                    f"{len(SERVED)} full copies ({(base_bytes + adapters) / full_copies:.0%}).")


def conclusions(lesson: Lesson, runs: dict, cost_rows: list[dict], forgetting: dict) -> None:
    lesson.section("5. Choosing")
    names = [c.name for c in STRATEGIES]
    best, sentence = best_per_task(runs, TASKS, names)
    lesson.conclude(sentence)
    full_first = [t for t, b in best.items() if b.best == "full" and len(b.tied) == 1]
    lesson.conclude(f"Full fine-tuning was ahead of every other strategy beyond noise on {len(full_first)} of "
                    f"{len(TASKS)} tasks ({and_list(full_first) if full_first else 'none'}). The course expects it to "
                    "give the highest quality; on the other tasks a cheaper strategy scored as well (within noise) "
                    "or better at this budget.")

    by = {r["strategy"]: r for r in cost_rows}
    cost = lesson.results["numbers"]
    lesson.conclude(f"LoRA trained {by['lora']['trainable %']:.1f}% of the parameters with "
                    f"{cost['cost_lora']['memory_bytes'] / cost['cost_full']['memory_bytes']:.0%} of full "
                    f"fine-tuning's training memory and a "
                    f"{cost['cost_lora']['file_bytes'] / cost['cost_full']['file_bytes']:.1%} file per task; adapters "
                    f"trained {by['adapter']['trainable %']:.1f}% and prompt tuning {by['prompt']['trainable %']:.2f}%. "
                    "A step took, as a share of full fine-tuning's: " + ", ".join(
                        f"{s} {by[s]['step ms'] / by['full']['step ms']:.0%}" for s in names[1:]) + " (one timing each).")

    cheap = sorted(cost_rows, key=lambda r: r["trainable %"])
    picks = []
    for t in TASKS:
        for r in cheap:  # the first, by trainable share, that full fine-tuning does not beat beyond noise
            c = lesson.compare(runs[(t, "full")]["score"], runs[(t, r["strategy"])]["score"], ("full", r["strategy"]))
            if c.winner != "full":
                picks.append(f"{t}: {r['strategy']}")
                break
    lesson.conclude("The cheapest strategy whose score full fine-tuning did not beat beyond noise: " + "; ".join(picks)
                    + ". Where that is full fine-tuning itself, every smaller strategy fell behind at this budget.")

    _conclude_forgetting(lesson, forgetting, runs)

    behind = [t for t in TASKS if lesson.compare(runs[(t, "full")]["score"], runs[(t, "prompt")]["score"],
                                                  ("full", "prompt")).winner == "full"]
    lesson.conclude(f"Prompt tuning scored below full fine-tuning beyond noise on {len(behind)} of {len(TASKS)} tasks. "
                    "Lester et al. found soft prompts close the gap only as models approach ten billion parameters; "
                    + ("on this ~1M-parameter base it lags, as their results predict." if len(behind) > len(TASKS) / 2
                       else "this small base did not show a consistent gap."))


def _conclude_forgetting(lesson: Lesson, forgetting: dict, runs: dict) -> None:
    matched, at_end = forgetting["matched"], forgetting["at_end"]
    verdicts = {"less": [], "more": [], "same": [], "untested": []}
    for t in TASKS:
        for s in ("lora", "adapter"):
            a, b = matched[(t, "full")]["ppl"], matched[(t, s)]["ppl"]
            if a is None or b is None:
                verdicts["untested"].append(f"{s} on {t}")
                continue
            c = lesson.compare(a, b, ("full", s), log=True)
            key = "same" if c.winner is None else "less" if c.winner == "full" else "more"
            verdicts[key].append(f"{s} on {t} ({b.mean:.2f}x vs full {a.mean:.2f}x, {p_text(c.p)})")
    text = ("At matched task quality, general-text perplexity (over the base's) was lower than full fine-tuning's "
            f"beyond noise for {and_list(verdicts['less'])}; higher for {and_list(verdicts['more'])}; no difference beyond "
            f"noise at this scale for {and_list(verdicts['same'])}.")
    if verdicts["untested"]:
        text += f" Too few runs reached the target to test {and_list(verdicts['untested'])}."
    lesson.conclude(text + (" The course says PEFT forgets less; on this base that held only for the pairs listed "
                            "as lower." if verdicts["less"] else " The course says PEFT forgets less; at matched "
                            "learning no pair on this base bore that out."))

    faster = []
    for t in TASKS:
        a, b = matched[(t, "full")]["seconds"], matched[(t, "lora")]["seconds"]
        if a is not None and b is not None:
            c = lesson.compare(a, b, ("full", "LoRA"))
            faster.append(f"{t}: {c.winner + ' took longer' if c.winner else 'no difference beyond noise'} "
                          f"({b.mean:.1f} s LoRA vs {a.mean:.1f} s full)")
    if faster:
        lesson.conclude("Training seconds to the matched validation loss, LoRA against full fine-tuning: " + "; ".join(faster) + ".")

    prompt_end = summarize([v for t in TASKS for v in at_end[(t, "prompt")].values])
    intact = sum(run["base_intact"] for t in TASKS for s in ("lora", "adapter", "prompt")
                 for run in runs[(t, s)].runs)
    total = sum(len(runs[(t, s)].runs) for t in TASKS for s in ("lora", "adapter", "prompt"))
    lesson.conclude(f"With the soft prompt attached, general-text perplexity was {prompt_end} times the base's "
                    f"(mean over tasks and seeds at the best checkpoint): that is the prompt's interference with "
                    f"other text, not a change to the model. Every base tensor was bitwise unchanged after {intact} "
                    f"of {total} PEFT runs, so removing the trained part gives back the base's own perplexity.")


def main(argv: list[str] | None = None) -> dict:
    lesson = Lesson.start(6, "Choosing a strategy", __doc__, argv)
    learning_rates(lesson)
    base_ppl = lesson.base_perplexity()
    lesson.record("base_general_perplexity", base_ppl)
    runs = every_strategy_on_every_task(lesson)
    cost_rows = costs(lesson, runs)
    forgetting = matched_learning(lesson, runs, base_ppl)
    one_base_many_adapters(lesson, runs)
    conclusions(lesson, runs, cost_rows, forgetting)
    return lesson.finish()


if __name__ == "__main__":
    main()
