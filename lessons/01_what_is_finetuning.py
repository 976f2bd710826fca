# %% [markdown]
# # Lesson 1: What is fine-tuning?
#
# A pretrained model knows its world in general and no task in particular. Fine-tuning takes its
# weights and trains them a little further on examples of one task. This chapter measures, on your
# machine, what Module 1 of the course says fine-tuning buys: better task scores than prompting, a model
# at home in a new domain, facts the base never read, answers in the expected form; and what the two
# families of strategies (full fine-tuning and parameter-efficient fine-tuning) cost.
#
# **Read alongside:** `minitune/model.py` (the base), `minitune/data/` (the tiny world and its tasks),
# `minitune/train.py` (the one training loop), `minitune/strategies/` (what each strategy trains).
#
# **Run:** `python lessons/01_what_is_finetuning.py` (minutes on a laptop CPU from an empty cache; the
# tiny base ships with the package), or `--quick` (seconds, the nano base). The results of the last
# full run, beside this text, and how long it took: `docs/lessons/01.md`.
#
# **How to read a result.** Every score a sentence compares is the mean of 3 seeds (the seed picks the
# trainable weights' start, the batch order and, for two-shot prompts, the examples shown) with its
# sample standard deviation. A claim's verdict comes from one rule, Welch's t on the per-seed values at
# p < 0.05 (`minitune/course/stats.py`): *agrees* or *contradicts* when the gap is beyond noise, *not told
# apart* when it is not, with the smallest gap this design could have seen.

# %%
import statistics
from collections import Counter
from functools import partial

import torch

from minitune.course.lesson import Lesson, bar_groups
from minitune.course.stats import summarize
from minitune.data import domain_corpus, split
from minitune.evaluate import HEADLINE_METRIC, evaluate_task, generate_text, perplexity, prompt_for
from minitune.finetune import continue_pretraining, open_run, supervised
from minitune.strategies import AdapterConfig, FullConfig, LoRAConfig, PromptTuningConfig, apply_strategy
from minitune.strategies import trainable_report
from minitune.train import TrainConfig, seed_everything, train

lesson = Lesson.start(1, "What is fine-tuning?")
TASKS = ("sentiment", "topic", "summarization", "qa", "code")

# %% [markdown]
# ## 1. A general base, and no expert
#
# Pretraining fits a model to the next-token distribution of a large general corpus:
#
#     min_theta  E_{x ~ corpus} [ -sum_t log p_theta(x_t | x_<t) ]
#
# The shipped base (4 layers, 128 wide, about a million parameters) was pretrained on stories of a small
# generated world. It continues such a story fluently, but text of a domain it never read (veterinary
# clinic notes) surprises it: perplexity, exp of the mean cross-entropy per token, is the number of
# tokens it is as unsure between as if it guessed uniformly.

# %%
base, enc = lesson.load_base()
prompt = "Mira Tolan lives in Bramwick. One morning,"
story = generate_text(base, enc, prompt, 40, stop="<|endoftext|>", temperature=0.8, top_k=50,
                      generator=torch.Generator().manual_seed(0), device=lesson.device)
clinic = domain_corpus(target_bytes=lesson.size(30_000, 100_000), seed=1)
surprise = {"general tiny-world text (held out)": perplexity(base, enc, lesson.general_text, lesson.device),
            "veterinary clinic notes (a new domain)": perplexity(base, enc, clinic, lesson.device)}
lesson.table("Perplexity of the base (lower is better)", surprise, index="text", columns=("perplexity",),
             note=f"The base continues a story (sampled): {prompt}{story}")

# %% [markdown]
# ## 2. One fine-tuning run, in plain sight
#
# Fine-tuning starts from those weights and minimises the same loss on a small set of task examples
# (prompt, answer), counting only the answer's tokens:
#
#     min_theta  E_{(p, a) ~ task} [ -sum_t log p_theta(a_t | p, a_<t) ]
#
# Full fine-tuning updates every weight. Parameter-efficient fine-tuning (PEFT) freezes the base and
# trains a few new or chosen parameters; LoRA, here, adds two thin matrices beside each attention
# projection (lesson 3). Here is every step of one run: apply the strategy, batch the task, run the
# training loop, score the result on test reviews it never saw.

# %%
task = lesson.budget.task("sentiment")
seed_everything(0)
model = apply_strategy(lesson.load_base()[0], LoRAConfig())   # freeze the base; A and B beside c_attn
print(trainable_report(model))
room, lr, steps = model.max_input_tokens, LoRAConfig.default_lr[task.kind], lesson.budget.steps
result = train(model, supervised(task, "train", enc, room, batch_size=16, seed=0),
               supervised(task, "validation", enc, room, batch_size=16),
               TrainConfig(max_steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=steps // 10,
                           eval_every=lesson.budget.eval_every, seed=0, device=lesson.device, quiet=True))
scores = evaluate_task(model, enc, task, device=lesson.device)
lesson.table(f"LoRA on sentiment, one seed: test accuracy {scores['accuracy']:.3f} on {scores['n']} reviews; "
             "validation loss along the run", result.history, columns=("step", "val_loss"))

# %% [markdown]
# ## 3. Five tasks: prompting the base against fine-tuning it
#
# The base can also be *asked*: a task's prompt alone (zero-shot), or after two solved examples from the
# training split (two-shot). Against that stand full fine-tuning and LoRA, each trained 160 steps of 16
# examples at its own learning rate (chosen on validation by the recorded sweep, `minitune sweep`).
# These are shared runs (`minitune/course/runs.py`): lesson 6 reads the same ones.
#
# Expect little from the prompts. Learning a task from a few examples in the prompt (in-context
# learning) showed up in language models only with scale: Brown et al. (2020) saw few-shot gains grow
# with model size, to billions of parameters. This base has about a million, so the prompted columns
# show what a model this small cannot do, not what prompting can. Two shots also have to fit the
# context beside the question: "shots kept" is how many did, on average; where it is 0, the two-shot
# prompt is the zero-shot one.

# %%
runs = lesson.shared_runs(TASKS, (FullConfig(), LoRAConfig()))   # {(task, strategy): one run per seed}
scores = {}
for name in TASKS:
    task, metric, limit = lesson.budget.task(name), HEADLINE_METRIC[name], lesson.budget.limit(name)
    zero = evaluate_task(base, enc, task, shots=0, limit=limit, device=lesson.device)[metric]
    two = lesson.over_seeds(lambda s: evaluate_task(base, enc, task, shots=2, seed=s, limit=limit, device=lesson.device))
    scores[name] = {"metric": metric, "0-shot": summarize([zero] * len(lesson.seeds)),  # greedy: the same every seed
                    "2-shot": two[metric], "shots kept": two["shots_kept"], "full FT": runs[name, "full"]["score"],
                    "lora FT": runs[name, "lora"]["score"]}
prompting = {name: max(s["0-shot"], s["2-shot"], key=lambda c: c.mean) for name, s in scores.items()}
lesson.table("Test scores (0-shot is greedy: the same every seed)", scores, index="task")
for name in TASKS:
    lesson.claim(f"fine-tuning beats prompting ({name})", "Module 1", scores[name]["lora FT"], prompting[name],
                 ("LoRA", "the better of 0- and 2-shot"))
    lesson.claim(f"full fine-tuning against LoRA ({name})", "", scores[name]["full FT"], scores[name]["lora FT"],
                 ("full", "LoRA"), expect=None)
lesson.plot("tasks.png", lambda ax: bar_groups(ax, [f"{n}\n({s['metric']})" for n, s in scores.items()], {
    m: [s[m] for s in scores.values()] for m in ("0-shot", "2-shot", "full FT", "lora FT")}),
    figsize=(7.6, 4.0), title="Prompting the base against fine-tuning it")

# %% [markdown]
# ## 4. Domain adaptation: a register and its jargon
#
# Continued pretraining on a domain's own text (language modelling, every token counts) teaches the
# model its words and phrasing. Below, 100 steps on clinic notes; perplexity on held-out notes shows
# what it learned, perplexity on general tiny-world text what it kept. Each strategy runs at its task
# learning rate, so the two rows compare two recipes, not forgetting at equal learning (lesson 6 does that).

# %%
notes = domain_corpus(target_bytes=lesson.size(60_000, 400_000), seed=2)
train_notes, val_notes = split(notes, 0.1, seed=2)


def adapt(config, seed: int) -> dict:
    model = apply_strategy(lesson.load_base()[0], config)
    continue_pretraining(model, enc, train_notes, val_notes, max_steps=lesson.size(8, 100), lr=config.default_lr["generation"],
                         seed=seed, device=lesson.device)
    return {"clinic": perplexity(model, enc, val_notes, lesson.device),
            "general": perplexity(model, enc, lesson.general_text, lesson.device)}


adapted = {"base": {"clinic": perplexity(base, enc, val_notes, lesson.device), "general": surprise[
    "general tiny-world text (held out)"]}} | lesson.each_over_seeds(
    {c.name: partial(adapt, c) for c in (FullConfig(), LoRAConfig())})
lesson.table("Perplexity of held-out clinic notes and of general text, before and after adapting", adapted, index="model")
for measure in ("clinic", "general"):
    lesson.claim(f"{measure}-text perplexity after adapting, full against LoRA", "", adapted["full"][measure],
                 adapted["lora"][measure], ("full", "LoRA"), expect=None, log=True)

# %% [markdown]
# ## 5. Knowledge infusion: facts the base never read
#
# The qa task asks about Quillon Works, a company no pretraining document mentions, in phrasings that no
# training example uses. A model that answers them has taken the facts in, not the wording.

# %%
model, _, _ = open_run(runs["qa", "lora"].runs[0]["run"], lesson.device)
sample = evaluate_task(model, enc, lesson.budget.task("qa"), limit=3, device=lesson.device)["samples"]
lesson.table("Questions about Quillon Works, answered by the LoRA run of section 3 (seed 0)", sample,
             columns=("prompt", "prediction", "target"))
lesson.claim("fine-tuning can infuse knowledge the base never saw", "Module 1", scores["qa"]["lora FT"],
             prompting["qa"], ("LoRA", "the prompted base"))

# %% [markdown]
# ## 6. Reliability: the expected form, and the same answer each time
#
# Sampled at temperature 1, five times per review: how often is the answer one of the task's labels, and
# how often do the five samples agree? A prompted base has to guess the format from two examples; a
# fine-tuned one was trained on it.

# %%
sentiment = lesson.budget.task("sentiment")
reviews = sentiment.test[:lesson.size(8, 40)]


def sample_answers(model, shots: int, seed: int) -> dict:
    valid, agree = [], []
    for i, ex in enumerate(reviews):
        prompt = prompt_for(sentiment, ex, shots, enc, model.max_input_tokens - 8, seed=seed)
        g = torch.Generator().manual_seed(1000 * seed + i)
        answers = [generate_text(model, enc, prompt, 6, sentiment.stop, temperature=1.0, generator=g,
                                 device=lesson.device) for _ in range(5)]
        valid += [a.strip() in sentiment.labels for a in answers]
        agree.append(Counter(answers).most_common(1)[0][1] / 5)
    return {"valid": statistics.mean(valid), "agreement": statistics.mean(agree)}


prompted = lesson.over_seeds(lambda s: sample_answers(base, 2, s))
tuned = lesson.over_seeds(lambda s: sample_answers(
    open_run(runs["sentiment", "lora"].runs[lesson.seeds.index(s)]["run"], lesson.device)[0], 0, s))
lesson.table(f"Sentiment, 5 sampled answers per review, {len(reviews)} reviews",
             {"base, 2-shot prompt": prompted, "LoRA fine-tuned": tuned}, index="model")
lesson.claim("fine-tuned outputs take the expected form", "Module 1", tuned["valid"], prompted["valid"],
             ("fine-tuned", "prompted"))
lesson.claim("fine-tuned outputs are more consistent", "Module 1", tuned["agreement"], prompted["agreement"],
             ("fine-tuned", "prompted"))

# %% [markdown]
# ## 7. Two families of strategies, side by side
#
# What one training step costs each strategy on a batch of 16 sentiment examples: the parameters it
# trains, the bytes of the training state (weights, gradients, AdamW's two moments per trainable
# number), the file a task needs, and the time of a step (fp32; the median of 5 steps, one measurement).

# %%
costs = {c.name: lesson.training_costs(c, "sentiment") for c in (FullConfig(), LoRAConfig(), AdapterConfig(),
                                                                 PromptTuningConfig())}
lesson.table("Training one step on 16 sentiment examples", costs, index="strategy")
full, lora = costs["full"], costs["lora"]
lesson.note(f"LoRA's gradients and optimizer states take {lora['training state'] / full['training state']:.1%} "
            f"of full fine-tuning's, and its file per task {lora['file'] / full['file']:.1%} of a full copy.")
lesson.finish()
