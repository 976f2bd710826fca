"""Lesson 1: What is fine-tuning?

What this lesson shows, by measuring it on your machine:
  1. a pretrained base knows its world in general but is expert at no task;
  2. on four tasks (classification, summarization, question answering, code), fine-tuning beats asking
     the base with zero or a few examples in the prompt;
  3. fine-tuning adapts a model to a domain's jargon (perplexity on veterinary notes, before and after);
  4. fine-tuning can teach facts the base never saw (questions about a company it never read about);
  5. a fine-tuned model answers in the expected form, and more consistently, than a prompted base;
  6. the two families of strategies, side by side: full fine-tuning against LoRA, adapters and prompt
     tuning (trainable parameters, training memory, file per task, step time).

Read alongside: minitune/model.py (the base), minitune/data/ (the tiny world and the tasks),
minitune/train.py (the one training loop), minitune/strategies/ (what each strategy trains).

Run:  python lessons/01_what_is_finetuning.py      7 minutes on 2 CPU cores (measured; the tiny base
                                                   ships with the package, the first table prints in 5 s)
      python lessons/01_what_is_finetuning.py --quick    seconds, nano sizes

Every score that a sentence compares is the mean of 3 seeds (the seed picks the trainable weights'
start, the batch order and, for two-shot prompts, which solved examples are shown), printed as
mean ± sd; whether two differ is decided by one rule, Welch's t on the per-seed values at p < 0.05
(minitune/stats.py). The fine-tuning runs are the same cells lesson 6 shows (minitune/cells.py: 160
steps of 16 examples at each strategy's swept learning rate), so both lessons print the same numbers.

The idea. Pretraining fits a model to the next-token distribution of a large general corpus:
    min_theta  E_{x ~ corpus} [ -sum_t log p_theta(x_t | x_<t) ]
Fine-tuning starts from those weights and minimises the same loss on a small set of task examples
(prompt, answer), counting only the answer's tokens:
    min_theta  E_{(p, a) ~ task} [ -sum_t log p_theta(a_t | p, a_<t) ]
Full fine-tuning updates every weight. Parameter-efficient fine-tuning (PEFT) freezes the base and
trains a small set of new or chosen parameters instead; the later lessons take each one apart.
"""

from __future__ import annotations

import statistics
from collections import Counter

import torch

from minitune.data import domain_corpus, split
from minitune.evaluate import HEADLINE_METRIC, evaluate_task, generate_text, prompt_for
from minitune.finetune import continue_pretraining, open_run
from minitune.lesson import Lesson, and_list, bar_groups, perplexity
from minitune.memory import human_bytes
from minitune.stats import p_text, summarize
from minitune.strategies import AdapterConfig, FullConfig, LoRAConfig, PromptTuningConfig, apply_strategy

TASKS = {name: HEADLINE_METRIC[name] for name in ("sentiment", "topic", "summarization", "qa", "code")}
FINETUNED = (FullConfig(), LoRAConfig())  # the package defaults: the configs the learning-rate sweep tuned
STRATEGIES = [FullConfig(), LoRAConfig(), AdapterConfig(), PromptTuningConfig()]


def general_but_no_expert(lesson: Lesson) -> None:
    lesson.section("1. A general base, and no expert")
    model, enc = lesson.load_base()
    prompt = "Mira Tolan lives in Bramwick. One morning,"
    text = generate_text(model, enc, prompt, 40, stop="<|endoftext|>", temperature=0.8, top_k=50,
                         generator=torch.Generator().manual_seed(0), device=lesson.device)
    print(f"The base continues a story (sampled):\n  {prompt}{text}")
    domain = domain_corpus(target_bytes=lesson.size(30_000, 100_000), seed=1)
    rows = [{"text": "general tiny-world text (held out)",
             "perplexity": perplexity(model, enc, lesson.general_text, lesson.device)},
            {"text": "veterinary clinic notes (a new domain)", "perplexity": perplexity(model, enc, domain, lesson.device)}]
    lesson.table("Perplexity of the base (lower is better)", rows)
    lesson.record("base_perplexity", {r["text"]: r["perplexity"] for r in rows})


def tasks_before_and_after(lesson: Lesson) -> dict:
    lesson.section("2. Five tasks: prompting the base against fine-tuning it")
    base, enc = lesson.load_base()
    rows, cells = [], {}
    for name, metric in TASKS.items():
        task = lesson.budget.task(name)
        limit = lesson.budget.limit(name)
        row = {"task": name, "metric": metric}
        zero = evaluate_task(base, enc, task, shots=0, limit=limit, device=lesson.device)
        row["0-shot"] = summarize([zero[metric]] * len(lesson.seeds))  # greedy: every seed gives this
        row["2-shot"] = lesson.over_seeds(lambda s: {metric: evaluate_task(
            base, enc, task, shots=2, seed=s, limit=limit, device=lesson.device)[metric]})[metric]
        for config in FINETUNED:
            runs = lesson.over_seeds(lambda s: lesson.cell(name, config, s))
            cells[(name, config.name)] = runs
            row[f"{config.name} FT"] = runs["score"]
        row["test items"] = zero["n"]
        rows.append(row)
        print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("task", "metric")), flush=True)
    lesson.table(f"Test scores (fine-tuned: {lesson.budget.steps} steps of {lesson.budget.batch_size} at each "
                 "strategy's default learning rate; 2-shot: two solved training examples in the prompt, "
                 "chosen by the seed; 0-shot is greedy, the same every seed)", rows)
    prompting = {r["task"]: max(r["0-shot"], r["2-shot"], key=lambda c: c.mean) for r in rows}
    ahead, level = [], []
    for r in rows:
        c = lesson.compare(r["lora FT"], prompting[r["task"]], ("LoRA", "prompting"))
        (ahead if c.winner == "LoRA" else level).append(f"{r['task']} ({c.mean_a:.2f} vs {c.mean_b:.2f}, {p_text(c.p)})")
    text = (f"LoRA fine-tuning scored higher than the better of zero- and two-shot prompting beyond noise on "
            f"{len(ahead)} of {len(rows)} tasks")
    text += f": {'; '.join(ahead)}." if ahead else "."
    if level:
        text += f" Not beyond noise (or lower) on {and_list(level)}."
    lesson.conclude(text)
    groups = {"full": [], "LoRA": [], None: []}
    for r in rows:
        c = lesson.compare(r["full FT"], r["lora FT"], ("full", "LoRA"))
        groups[c.winner].append(f"{r['task']} ({c.mean_a:.2f} vs {c.mean_b:.2f}, {p_text(c.p)})")
    lesson.conclude("Full fine-tuning against LoRA at the same budget: full higher beyond noise on "
                    f"{and_list(groups['full'])}; LoRA higher on {and_list(groups['LoRA'])}; no difference beyond noise "
                    f"at this scale on {and_list(groups[None])}.")
    lesson.plot("tasks.png", lambda ax: _bars(ax, rows), figsize=(7.6, 4.0))
    return {"rows": rows, "cells": cells}


def _bars(ax, rows: list[dict]) -> None:
    methods = ["0-shot", "2-shot", "full FT", "lora FT"]
    bar_groups(ax, [f"{r['task']}\n({r['metric']})" for r in rows], {m: [r[m] for r in rows] for m in methods})
    ax.set_ylim(0, 1.05)
    ax.set_title("Prompting the base vs fine-tuning it")


def domain_adaptation(lesson: Lesson) -> None:
    lesson.section("3. Domain adaptation: learning a register and its jargon")
    docs = domain_corpus(target_bytes=lesson.size(60_000, 400_000), seed=2)
    train_docs, val_docs = split(docs, 0.1, seed=2)
    general, steps = lesson.general_text, lesson.size(8, 100)
    base, enc = lesson.load_base()
    base_row = {"domain": perplexity(base, enc, val_docs, lesson.device),
                "general": perplexity(base, enc, general, lesson.device)}

    def adapt(config, seed: int) -> dict:
        model = apply_strategy(lesson.load_base()[0], config)
        continue_pretraining(model, enc, train_docs, val_docs, max_steps=steps, lr=config.default_lr, seed=seed,
                             device=lesson.device)
        return {"domain": perplexity(model, enc, val_docs, lesson.device),
                "general": perplexity(model, enc, general, lesson.device)}

    rows = [{"model": "base", "domain perplexity": base_row["domain"], "general perplexity": base_row["general"]}]
    adapted = {}
    for config in FINETUNED:
        runs = adapted[config.name] = lesson.over_seeds(lambda s: adapt(config, s))
        rows.append({"model": f"{config.name} on clinic notes", "domain perplexity": runs["domain"],
                     "general perplexity": runs["general"]})
    lesson.table(f"Held-out clinic notes and general text, before and after {steps} steps of language modelling "
                 "on clinic notes (each strategy at its default learning rate)", rows)
    full, lora = adapted["full"], adapted["lora"]
    lesson.conclude(f"Adapting cut the perplexity on unseen clinic notes from {base_row['domain']:,.1f} to "
                    f"{full['domain']} (full) and {lora['domain']} (LoRA); on general text it went from "
                    f"{base_row['general']:.2f} to {full['general']} (full) and {lora['general']} (LoRA).")
    c = lesson.compare(full["domain"], lora["domain"], ("full", "LoRA"), log=True)
    g = lesson.compare(full["general"], lora["general"], ("full", "LoRA"), log=True)
    lesson.conclude(f"Clinic-note perplexity, full against LoRA: {c.text('is higher than', 2)}. General-text "
                    f"perplexity after adapting: {g.text('is higher than', 2)}. Both ran the same steps at their own "
                    "learning rates, so this compares the two recipes, not forgetting at equal learning (lesson 6).")


def knowledge_infusion(lesson: Lesson, tasks: dict) -> None:
    lesson.section("4. Knowledge infusion: facts the base never read")
    row = next(r for r in tasks["rows"] if r["task"] == "qa")
    rows = [{"model": name, "facts answered exactly": row[key]} for name, key in
            (("base, 0-shot", "0-shot"), ("base, 2-shot", "2-shot"), ("full FT", "full FT"), ("LoRA FT", "lora FT"))]
    lesson.table(f"Questions about Quillon Works, in phrasings never used in training ({row['test items']} "
                 "questions; the same runs as section 2)", rows)
    model, enc, _ = open_run(tasks["cells"][("qa", "lora")].runs[0]["run"], lesson.device)
    sample = evaluate_task(model, enc, lesson.budget.task("qa"), limit=1, device=lesson.device)["samples"][0]
    print(f"  e.g. (LoRA, seed {lesson.seeds[0]}) {sample['prompt']!r} -> {sample['prediction']!r} "
          f"(expected {sample['target']!r})")
    prompting = max(row["0-shot"], row["2-shot"], key=lambda c: c.mean)
    c = lesson.compare(row["lora FT"], prompting, ("LoRA", "the prompted base"))
    lesson.conclude(f"After training on other phrasings of the same facts: {c.text('answered more than', 2)}; "
                    f"full fine-tuning answered {row['full FT']}.")


def reliability(lesson: Lesson, tasks: dict) -> None:
    lesson.section("5. Reliability: answers in the expected form, and the same answer each time")
    task = lesson.budget.task("sentiment")
    reviews, samples = task.test[:lesson.size(8, 40)], 5
    base, enc = lesson.load_base()
    finetuned = tasks["cells"][("sentiment", "lora")].runs

    def sample_answers(model, shots: int, seed: int) -> dict:
        well_formed, agreement = [], []
        for i, ex in enumerate(reviews):
            prompt = prompt_for(task, ex, shots, enc, model.max_input_tokens - 8, seed=seed)
            g = torch.Generator().manual_seed(1000 * seed + i)
            answers = [generate_text(model, enc, prompt, 6, task.stop, temperature=1.0, generator=g,
                                     device=lesson.device) for _ in range(samples)]
            well_formed += [a.strip() in task.labels for a in answers]
            agreement.append(Counter(answers).most_common(1)[0][1] / samples)
        return {"well-formed": statistics.mean(well_formed), "agreement": statistics.mean(agreement)}

    prompted = lesson.over_seeds(lambda s: sample_answers(base, 2, s))
    tuned = lesson.over_seeds(lambda s: sample_answers(open_run(finetuned[lesson.seeds.index(s)]["run"],
                                                                lesson.device)[0], 0, s))
    rows = [{"model": name, "well-formed answers": r["well-formed"], "agreement across samples": r["agreement"]}
            for name, r in (("base, 2-shot prompt", prompted), ("LoRA fine-tuned (section 2)", tuned))]
    lesson.table(f"Sentiment, {samples} sampled answers (temperature 1) per review, {len(reviews)} reviews", rows)
    form = lesson.compare(tuned["well-formed"], prompted["well-formed"], ("fine-tuned", "prompted"))
    agree = lesson.compare(tuned["agreement"], prompted["agreement"], ("fine-tuned", "prompted"))
    lesson.conclude(f"Share of sampled answers that were a valid label: {form.text('is higher than', 2)}. Agreement "
                    f"between samples of the same review: {agree.text('is higher than', 2)}.")


def strategies_overview(lesson: Lesson) -> None:
    lesson.section("6. Two families of strategies, side by side")
    rows, measured = [], {}
    for config in STRATEGIES:
        c = lesson.training_costs(config, "sentiment")
        mem = measured[config.name] = {**c["memory"], "file": c["file"], "step_ms": c["step_ms"]}
        rows.append({"strategy": config.name, "trainable params": c["trainable"],
                     "trainable %": 100 * c["trainable"] / c["total"],
                     "weights": human_bytes(mem["weights"]), "gradients": human_bytes(mem["gradients"]),
                     "optimizer": human_bytes(mem["optimizer"]), "file per task": human_bytes(c["file"]),
                     "step ms": c["step_ms"]})
    lesson.record("costs", measured)
    lesson.table("Training one step on a batch of 16 sentiment examples (fp32; step ms: median of 5 steps)", rows)
    mf, ml = measured["full"], measured["lora"]
    lesson.conclude(f"LoRA trains {rows[1]['trainable %']:.1f}% of the parameters; its gradients and optimizer states "
                    f"take {(ml['gradients'] + ml['optimizer']) / (mf['gradients'] + mf['optimizer']):.1%} of full "
                    f"fine-tuning's, its file per task is {ml['file'] / mf['file']:.1%} of a full copy, and a step "
                    f"took {ml['step_ms'] / mf['step_ms']:.0%} of full fine-tuning's time in this one measurement.")


def main(argv: list[str] | None = None) -> dict:
    lesson = Lesson.start(1, "What is fine-tuning?", __doc__, argv)
    general_but_no_expert(lesson)
    tasks = tasks_before_and_after(lesson)
    domain_adaptation(lesson)
    knowledge_infusion(lesson, tasks)
    reliability(lesson, tasks)
    strategies_overview(lesson)
    return lesson.finish()


if __name__ == "__main__":
    main()
