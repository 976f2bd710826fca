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

Run:  python lessons/01_what_is_finetuning.py      about 5 minutes on 2 CPU cores with the base cached
      python lessons/01_what_is_finetuning.py --quick    seconds, nano sizes

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
from minitune.data.tasks import load_task
from minitune.evaluate import HEADLINE_METRIC, evaluate_task, generate_text, prompt_for
from minitune.finetune import continue_pretraining, finetune, supervised
from minitune.lesson import Lesson, held_out_text, perplexity, strategy_costs
from minitune.memory import human_bytes
from minitune.strategies import AdapterConfig, FullConfig, LoRAConfig, PromptTuningConfig, apply_strategy

TASKS = {name: HEADLINE_METRIC[name] for name in ("sentiment", "summarization", "qa", "code")}
STRATEGIES = [FullConfig(), LoRAConfig(r=8, targets=("c_attn", "c_fc")), AdapterConfig(bottleneck=16),
              PromptTuningConfig(n_tokens=20)]


def general_but_no_expert(lesson: Lesson) -> None:
    lesson.section("1. A general base, and no expert")
    model, enc = lesson.load_base()
    prompt = "Mira Tolan lives in Bramwick. One morning,"
    text = generate_text(model, enc, prompt, 40, stop="<|endoftext|>", temperature=0.8, top_k=50,
                         generator=torch.Generator().manual_seed(0))
    print(f"The base continues a story (sampled):\n  {prompt}{text}")
    general = held_out_text(lesson.size(100_000, 300_000))
    domain = domain_corpus(target_bytes=lesson.size(30_000, 100_000), seed=1)
    rows = [{"text": "general tiny-world text (held out)", "perplexity": perplexity(model, enc, general, lesson.device)},
            {"text": "veterinary clinic notes (a new domain)", "perplexity": perplexity(model, enc, domain, lesson.device)}]
    lesson.table("Perplexity of the base (lower is better)", rows)
    lesson.record("base_perplexity", {r["text"]: r["perplexity"] for r in rows})


def tasks_before_and_after(lesson: Lesson) -> dict:
    lesson.section("2. Four tasks: prompting the base against fine-tuning it")
    sizes = lesson.size({"train": 64, "validation": 16, "test": 16}, {"train": 1500, "validation": 100, "test": 100})
    steps, limit = lesson.size(15, 250), lesson.size(8, 100)
    rows, finetuned = [], {}
    for name, metric in TASKS.items():
        task = load_task(name, sizes=None if name == "qa" else sizes)
        base, enc = lesson.load_base()
        row = {"task": name, "metric": metric}
        for shots in (0, 2):
            row[f"{shots}-shot"] = evaluate_task(base, enc, task, shots=shots, limit=limit, device=lesson.device)[metric]
        for config in (FullConfig(), LoRAConfig(r=8, targets=("c_attn", "c_fc"))):
            model, enc, _ = finetune(lesson.base, task, config, lesson.run_dir(f"{name}-{config.name}"),
                                     max_steps=steps, device=lesson.device, quiet=True, checkpoint_every=0)
            row[f"{config.name} FT"] = evaluate_task(model, enc, task, limit=limit, device=lesson.device)[metric]
            finetuned[(name, config.name)] = model
        rows.append(row)
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True)
    lesson.table(f"Test scores ({limit} examples per task; 2-shot = two solved examples in the prompt)", rows)
    wins = [r for r in rows if r["lora FT"] > max(r["0-shot"], r["2-shot"])]
    gains = [r["lora FT"] - max(r["0-shot"], r["2-shot"]) for r in rows]
    lesson.conclude(f"LoRA fine-tuning beat the better of zero- and two-shot prompting on {len(wins)} of {len(rows)} "
                    f"tasks, by {statistics.mean(gains):+.3f} on average (in each task's own metric).")
    full_wins = sum(r["full FT"] >= r["lora FT"] for r in rows)
    lesson.conclude(f"Full fine-tuning scored at least as well as LoRA on {full_wins} of {len(rows)} tasks.")
    lesson.plot("tasks.png", lambda ax: _bars(ax, rows))
    return finetuned


def _bars(ax, rows: list[dict]) -> None:
    methods = ["0-shot", "2-shot", "full FT", "lora FT"]
    width = 0.2
    for i, m in enumerate(methods):
        ax.bar([j + i * width for j in range(len(rows))], [r[m] for r in rows], width, label=m)
    ax.set_xticks([j + 1.5 * width for j in range(len(rows))], [f"{r['task']}\n({r['metric']})" for r in rows])
    ax.set_ylim(0, 1)
    ax.set_ylabel("test score")
    ax.legend()
    ax.set_title("Prompting the base vs fine-tuning it")


def domain_adaptation(lesson: Lesson) -> None:
    lesson.section("3. Domain adaptation: learning a register and its jargon")
    docs = domain_corpus(target_bytes=lesson.size(60_000, 400_000), seed=2)
    train_docs, val_docs = split(docs, 0.1, seed=2)
    general = held_out_text(lesson.size(100_000, 300_000))
    rows = []
    base, enc = lesson.load_base()
    rows.append({"model": "base", "domain perplexity": perplexity(base, enc, val_docs, lesson.device),
                 "general perplexity": perplexity(base, enc, general, lesson.device)})
    for config in (FullConfig(), LoRAConfig(r=8, targets=("c_attn", "c_fc"))):
        model, enc = lesson.load_base()
        model = apply_strategy(model, config)
        continue_pretraining(model, enc, train_docs, val_docs, max_steps=lesson.size(15, 150),
                             lr=config.default_lr, device=lesson.device)
        rows.append({"model": f"{config.name} on clinic notes",
                     "domain perplexity": perplexity(model, enc, val_docs, lesson.device),
                     "general perplexity": perplexity(model, enc, general, lesson.device)})
    lesson.table("Held-out clinic notes and general text, before and after adapting", rows)
    b, f, l = rows
    lesson.conclude(f"Adapting cut the perplexity on unseen clinic notes from {b['domain perplexity']:.1f} to "
                    f"{f['domain perplexity']:.1f} (full) and {l['domain perplexity']:.1f} (LoRA); on general text it "
                    f"went from {b['general perplexity']:.2f} to {f['general perplexity']:.2f} (full) and "
                    f"{l['general perplexity']:.2f} (LoRA).")


def knowledge_infusion(lesson: Lesson, finetuned: dict) -> None:
    lesson.section("4. Knowledge infusion: facts the base never read")
    task = load_task("qa")
    limit = lesson.size(8, None)
    base, enc = lesson.load_base()
    rows = []
    for name, model in [("base, 0-shot", base), ("base, 2-shot", base), ("full FT", finetuned[("qa", "full")]),
                        ("LoRA FT", finetuned[("qa", "lora")])]:
        r = evaluate_task(model, enc, task, shots=2 if "2-shot" in name else 0, limit=limit, device=lesson.device)
        rows.append({"model": name, "facts answered exactly": r["exact_match"], "token F1": r["token_f1"],
                     "questions": r["n"]})
        sample = r["samples"][0]
    lesson.table("Questions about Quillon Works, in phrasings never used in training", rows)
    print(f"  e.g. {sample['prompt']!r} -> {sample['prediction']!r} (expected {sample['target']!r})")
    lesson.conclude(f"The base answered {rows[0]['facts answered exactly']:.0%} of the questions; after fine-tuning on "
                    f"other phrasings of the same facts, LoRA answered {rows[3]['facts answered exactly']:.0%} and full "
                    f"fine-tuning {rows[2]['facts answered exactly']:.0%}.")


def reliability(lesson: Lesson, finetuned: dict) -> None:
    lesson.section("5. Reliability: answers in the expected form, and the same answer each time")
    task = load_task("sentiment", sizes={"train": 64, "validation": 8, "test": lesson.size(8, 50)})
    samples = 5
    base, enc = lesson.load_base()
    rows = []
    for name, model, shots in [("base, 2-shot prompt", base, 2), ("LoRA fine-tuned", finetuned[("sentiment", "lora")], 0)]:
        well_formed, agreement = [], []
        for i, ex in enumerate(task.test):
            prompt = prompt_for(task, ex, shots, enc, model.max_input_tokens - 8)
            g = torch.Generator().manual_seed(i)
            answers = [generate_text(model, enc, prompt, 6, task.stop, temperature=1.0, generator=g, device=lesson.device)
                       for _ in range(samples)]
            well_formed += [a.strip() in task.labels for a in answers]
            agreement.append(Counter(answers).most_common(1)[0][1] / samples)
        rows.append({"model": name, "well-formed answers": statistics.mean(well_formed),
                     "agreement across samples": statistics.mean(agreement)})
    lesson.table(f"Sentiment, {samples} sampled answers (temperature 1) per review, {len(task.test)} reviews", rows)
    lesson.conclude(f"Sampled answers were a valid label {rows[0]['well-formed answers']:.0%} of the time from the "
                    f"prompted base and {rows[1]['well-formed answers']:.0%} from the fine-tuned model; samples agreed "
                    f"with each other {rows[0]['agreement across samples']:.0%} vs {rows[1]['agreement across samples']:.0%}.")


def strategies_overview(lesson: Lesson) -> None:
    lesson.section("6. Two families of strategies, side by side")
    task = load_task("sentiment", sizes={"train": 32, "validation": 8, "test": 8})
    rows = []
    for config in STRATEGIES:
        model, enc = lesson.load_base()
        model = apply_strategy(model, config)
        x, y = supervised(task, "train", enc, model.max_input_tokens, batch_size=16).batch(0)
        c = strategy_costs(model, x, y, lesson.device)
        mem = c["memory"]
        rows.append({"strategy": config.name, "trainable params": c["trainable"],
                     "trainable %": 100 * c["trainable"] / c["total"],
                     "weights": human_bytes(mem["weights"]), "gradients": human_bytes(mem["gradients"]),
                     "optimizer": human_bytes(mem["optimizer"]), "file per task": human_bytes(c["file"]),
                     "step ms": c["step_ms"], "_bytes": mem, "_file": c["file"]})
    for r in rows:
        lesson.record(f"memory_{r['strategy']}", {**r.pop("_bytes"), "file": r.pop("_file")})
    lesson.table("Training one step on a batch of 16 sentiment examples (fp32)", rows)
    full, lora = rows[0], rows[1]
    mf, ml = lesson.results["numbers"]["memory_full"], lesson.results["numbers"]["memory_lora"]
    lesson.conclude(f"LoRA trains {lora['trainable %']:.1f}% of the parameters; its gradients and optimizer states take "
                    f"{(ml['gradients'] + ml['optimizer']) / (mf['gradients'] + mf['optimizer']):.1%} of full "
                    f"fine-tuning's, its file per task is {ml['file'] / mf['file']:.1%} of a full copy, and a step takes "
                    f"{lora['step ms'] / full['step ms']:.0%} of the time.")


def main(argv: list[str] | None = None) -> dict:
    lesson = Lesson.start(1, "What is fine-tuning?", __doc__, argv)
    general_but_no_expert(lesson)
    finetuned = tasks_before_and_after(lesson)
    domain_adaptation(lesson)
    knowledge_infusion(lesson, finetuned)
    reliability(lesson, finetuned)
    strategies_overview(lesson)
    return lesson.finish()


if __name__ == "__main__":
    main()
