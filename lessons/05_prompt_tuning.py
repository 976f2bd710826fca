# %% [markdown]
# # Lesson 5: Prompt tuning: soft prompts
#
# A prompt steers a frozen model through the embeddings of its tokens. Those embeddings are vectors in
# R^d, and nothing forces them to be embeddings of real tokens: prompt tuning (Lester et al., 2021) learns
# n free vectors, puts them before the input, and trains only them. This chapter measures how much the
# seed alone moves the result, how the soft prompt should start, how long it should be and how fast it
# must learn, what it does to the base, and how far it stays behind full fine-tuning at two model sizes.
#
# **Read alongside:** `minitune/strategies/prompt.py` (the whole method, 115 lines), `GPT.forward_embeddings`
# in `minitune/model.py` (the one seam prompt tuning enters through), and `minitune/course/studies.py`
# (how each setting is fine-tuned over seeds, and how a learning rate is chosen on validation).
#
# **Run:** `python lessons/05_prompt_tuning.py` (from an empty cache: 42 fine-tuning runs of 160 steps,
# 3 of them lesson 1's, and once, pretraining a small base for section 6), or `--quick` (the nano base
# and 8-step runs). The results of the last full run, beside this text: `docs/lessons/05.md`.
#
# **How quality is measured.** Topic classification (five topics: sport, food, weather, trade, animals)
# at the standard budget (160 steps of batch 16 from 1000 training examples), three seeds per setting:
# test accuracy on 300 items, and the test label loss, -log p(right topic | news item) with p normalised
# over the five topic words. A claim's verdict comes from the noise rule (Welch's t over the seeds,
# `minitune/course/stats.py`). Learning rates are chosen on the validation loss, never on test.

# %%
import copy

from minitune.checkpoint import read_json
from minitune.course.lesson import Lesson, held_out_text, plot_seeds, step_time_ms
from minitune.course.stats import SeedValues, summarize
from minitune.course.studies import choose_rate, curve, draw_curves, draw_quality, fine_tune_seeds, start_loss
from minitune.course.sweep import grid
from minitune.evaluate import perplexity
from minitune.finetune import supervised
from minitune.pretrain import pretrain
from minitune.strategies import FullConfig, LoRAConfig, PromptTuningConfig, apply_strategy, base_unchanged

lesson = Lesson.start(5, "Prompt tuning: soft prompts")
task = lesson.budget.task("topic")
base, enc = lesson.load_base()
general = held_out_text(lesson.size(60_000, 300_000))  # text like the base's own, not seen in pretraining
LR = PromptTuningConfig.default_lr[task.kind]
N = lesson.size(4, 20)  # the default length (the nano base's 64-token context has little room to spare)


# %% [markdown]
# ## 1. The idea, and one setting over the seeds
#
#     tokens t_1..t_T  ->  [ P_1 ... P_n , wte(t_1) ... wte(t_T) ]  ->  frozen GPT  ->  logits for t_1..t_T
#
#     trainable:  n x d   (tiny base, d = 128: 20 vectors are 2,560 numbers, 0.24% of the model)
#     context:    the model sees n + T positions, so an input may have at most block_size - n tokens
#     cost:       every step and every prediction runs n more positions through the whole model
#
# The model's function is untouched, only its input changes: the smallest change of all the strategies.
# The price is expressiveness: the soft prompt can only steer what the frozen layers already compute
# (attention lets every later position read it, but no weight changes). Lester et al. found that enough
# when the model is large (at about 10B parameters prompt tuning matched full fine-tuning on SuperGLUE)
# and clearly worse when it is small. First one setting, 20 soft tokens, once per seed: the seed picks
# the prompt's start and the batch order. Each run also measures what section 5 needs.

# %%
def interference(model, enc) -> dict:
    """General-text perplexity with the trained prompt attached, and of the base inside, prompt detached."""
    detached = copy.deepcopy(base)
    detached.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("soft_prompt")})
    return {"base unchanged": base_unchanged(model, base),
            "general ppl, prompt attached": perplexity(model, enc, general, lesson.device, max_batches=8),
            "general ppl, prompt detached": perplexity(detached, enc, general, lesson.device, max_batches=8)}


default = fine_tune_seeds(lesson, task, PromptTuningConfig(n_tokens=N), f"n{N}-lr{LR:g}", measure=interference)
lesson.table(f"Soft prompt of {N} tokens (init 'vocab', lr {LR:g}), topic, {lesson.budget.steps} steps; only the "
             "seed differs", {**dict(zip(default.seeds, default.runs)), "all": default}, index="seed",
             columns=("accuracy", "label loss", "val loss"), note=f"chance accuracy: {1 / len(task.labels):.2f}")

# %% [markdown]
# ## 2. Initialisation: random vectors or vocabulary embeddings
#
# A soft prompt can start as random vectors (at the scale of the token embeddings) or as the embeddings
# of n tokens drawn from the vocabulary, the package's default. Lester et al. found real embeddings the
# better start, most of all for small models. Both are compared by their validation loss (the mean
# cross-entropy of every target token: topic word, newline, end of text) at step 0, at the first
# evaluation, at the best of the run ("val loss"), and by where they end on test.

# %%
configs = {"random": PromptTuningConfig(n_tokens=N, init="random"), "vocab (default)": PromptTuningConfig(n_tokens=N)}
inits = {"random": fine_tune_seeds(lesson, task, configs["random"], "init-random"), "vocab (default)": default}
starts = {name: summarize([start_loss(lesson, task, c, seed=s) for s in lesson.seeds]) for name, c in configs.items()}
early = inits["random"].runs[0]["history"][0]["step"]  # the first evaluation after step 0
at_early = {name: summarize([r["history"][0]["val_loss"] for r in runs.runs]) for name, runs in inits.items()}
lesson.table(f"Soft prompt of {N} tokens on topic, lr {LR:g}, same steps", {name: {
    "step-0 val loss": starts[name], f"val loss @ step {early}": at_early[name],
    **runs.measures(("val loss", "accuracy", "label loss"))} for name, runs in inits.items()}, index="init")
lesson.claim("validation loss at step 0", "", starts["random"], starts["vocab (default)"], ("random", "vocab"), None)
lesson.claim_quality("random vectors end worse than vocabulary embeddings", "Lester et al. 2021",
                     inits["random"], inits["vocab (default)"], ("random", "vocab"), expect="higher")
curves = {name: curve(inits[name], starts[name].values) for name in configs}
lesson.plot("init_curves.png", lambda ax: draw_curves(ax, curves, "Soft prompt initialisations: loss from step 0"))

# %% [markdown]
# ## 3. Prompt length, each at its own learning rate
#
# A soft prompt of n vectors trains n x d numbers and takes n positions of the context away from the
# input. Quality and step time are measured at n = 5, 20 and 50. A length is not judged at a rate that
# suits another length: each is trained at the default rate and its neighbours on the 1-3-10 ladder
# (`grid` in `minitune/course/sweep.py`), and validation picks its rate. The first table
# has every run of that sweep (test scores are reported, never used to choose); the second each length
# at its chosen rate, with the rates the noise rule cannot tell from the choice, whether the choice lies
# at the grid's edge (a better rate may lie beyond), and the time of a training step (one timing run).
# Lester et al. saw little to gain past about 20 tokens, on much larger models.

# %%
lengths = lesson.size((1, 4), (5, 20, 50))
choices = {n: choose_rate(lesson, task, PromptTuningConfig(n_tokens=n), grid(LR, span=1), f"n{n}",
                          done={LR: default} if n == N else {}) for n in lengths}
lesson.table(f"Every run of the sweep (topic, init 'vocab', {lesson.budget.steps} steps; chosen on validation)", [{
    "n tokens": n, "lr": lr, **r.measures(("val loss", "accuracy", "label loss")), "chosen": lr == c.rate}
    for n, c in choices.items() for lr, r in c.runs.items()])
chosen = {n: c.runs[c.rate] for n, c in choices.items()}
lengths_rows = []
for n, c in choices.items():
    model = apply_strategy(copy.deepcopy(base), PromptTuningConfig(n_tokens=n))
    x, y = supervised(task, "train", enc, model.max_input_tokens, 16).batch(0)
    lengths_rows.append({"n tokens": n, "trainable": chosen[n].runs[0]["trainable"], "n x d": n * base.config.n_embd,
                         "usable context": model.max_input_tokens,
                         "step ms": step_time_ms(model, x, y, device=lesson.device),
                         "chosen lr": c.rate, "rates within noise": c.tied, "at the grid's edge": c.at_edge,
                         **chosen[n].measures(("accuracy", "label loss"))})
lesson.table(f"Each length at its chosen rate; context {base.config.block_size}; step: batch 16", lengths_rows)
lesson.record("chosen_rates", {n: {"rate": c.rate, "tied": list(c.tied), "edge": c.at_edge}
                               for n, c in choices.items()})
short, long_ = lengths[-2], lengths[-1]
lesson.claim_quality(f"{long_} soft tokens against {short}, each at its chosen rate", "", chosen[long_],
                     chosen[short], (f"{long_} tokens", f"{short} tokens"))
lesson.claim_quality(f"{long_} soft tokens against {short}, both at the default rate {LR:g}", "",
                     choices[long_].runs[LR], choices[short].runs[LR],
                     (f"{long_} tokens at rate {LR:g}", f"{short} tokens at rate {LR:g}"))


def draw_rates(ax) -> None:
    for n, c in choices.items():
        rates = sorted(c.runs)
        plot_seeds(ax, rates, [c.runs[lr]["val loss"] for lr in rates], label=f"n = {n} (chosen {c.rate:g})")
    ax.set(xscale="log", xlabel="learning rate (log scale)", ylabel="validation loss (best of the run)",
           title="Where the learning rate is best, by prompt length")
    ax.legend(fontsize=8)


lesson.plot("length_rates.png", draw_rates)
lesson.plot("length_sweep.png", lambda ax: draw_quality(
    ax, lengths, [c.runs[c.rate] for c in choices.values()], "soft prompt length n (log scale)",
    "Soft prompt length on topic, each at its chosen rate"))

# %% [markdown]
# ## 4. The learning rate prompt tuning needs
#
# Only a few vectors train, each gets a small gradient, and they must move a long way at the scale of
# the token embeddings. Lester et al. trained with a learning rate of 0.3, where full fine-tuning uses
# about 1e-4 to 1e-3. Here the soft prompt at its own default rate (chosen by the recorded sweep) against
# the same prompt at LoRA's default rate for classification; the table names both.

# %%
small = LoRAConfig.default_lr[task.kind]
low = fine_tune_seeds(lesson, task, PromptTuningConfig(n_tokens=N), f"n{N}-lr{small:g}", lr=small)
lesson.table(f"Soft prompt of {N} tokens, init 'vocab', topic, same steps", {small: low, LR: default},
             index="learning rate", columns=("accuracy", "label loss", "val loss"))
lesson.claim_quality(f"a soft prompt learns less at LoRA's rate {small:g} than at its own {LR:g}",
                     "Lester et al. 2021", low, default, (f"rate {small:g}", f"rate {LR:g}"), expect="higher")

# %% [markdown]
# ## 5. What prompt tuning changes in the base, and how the prompt reads other text
#
# Prompt tuning trains no weight of the base, so every tensor of the base should be bitwise what it was,
# and with the prompt detached its perplexity on general text should be the base's own. Attached, the
# trained prompt is read before every input, other text included: how much it changes the model's view
# of general text is interference, not forgetting. Beside it, full fine-tuning on the same task, which
# changes the weights themselves. (The base's perplexity is one number, the same for every seed, so the
# tests against it set the seeds' spread against a fixed value.)

# %%
full = fine_tune_seeds(lesson, task, FullConfig(), "full", measure=lambda model, enc: {
    "general ppl": perplexity(model, enc, general, lesson.device, max_batches=8)})
base_ppl = perplexity(base, enc, general, lesson.device, max_batches=8)
ppl = {"the base": SeedValues((base_ppl,) * len(default)),  # one number, the same whatever the seed
       "prompt detached (the base inside)": default["general ppl, prompt detached"],
       "prompt attached": default["general ppl, prompt attached"], "fully fine-tuned": full["general ppl"]}
unchanged = [r["base unchanged"] for r in default.runs]
lesson.record("base_bitwise_unchanged", unchanged)
lesson.table(f"Perplexity on held-out general tiny-world text after fine-tuning on topic (soft prompt of {N} tokens)",
             ppl, index="model", columns=("general perplexity",))
lesson.note(f"After prompt tuning every tensor of the base was bitwise unchanged in {sum(unchanged)} of "
            f"{len(unchanged)} seeds (strategies.base_unchanged).")
for a, b in [(name, "the base") for name in list(ppl)[1:]] + [("prompt attached", "fully fine-tuned")]:
    lesson.claim(f"general-text perplexity, {a} against {b}", "", ppl[a], ppl[b], (a, b), expect=None, log=True)

# %% [markdown]
# ## 6. The gap to full fine-tuning, at two model sizes
#
# Lester et al. (their figure 1) found that the gap between prompt tuning and full fine-tuning closes as
# the model grows. Here two sizes: a nano base (about 93k parameters, pretrained here once for 600 steps,
# 6x the built-in nano base's 100, and cached in the lesson's folder) and the tiny base, each fine-tuned
# in full and with a 5-token soft prompt (the nano base's 64-token context leaves 59 for the news item).
# Two sizes about 12x apart, far below the billions of parameters where their curves meet, on bases that
# also differ in how well they were pretrained, are two points, not a trend. With `--quick`: one base.

# %%
def smaller_base():
    """A nano base pretrained for 600 steps, cached in the lesson's folder."""
    path = lesson.out / "base-nano-600"
    if not (path / "config.json").is_file():
        pretrain("nano", out=path, max_steps=600, quiet=True, checkpoint_every=0, device=lesson.device)
    return path


def gap_at(path, n: int) -> dict:
    """Full fine-tuning and an n-token soft prompt from the base at `path` (on the lesson's base: sections 3 and 5)."""
    meta, here = read_json(path / "config.json"), path == lesson.base
    tuned = full if here else fine_tune_seeds(lesson, task, FullConfig(), f"scale-{path.name}-full", base=path)
    soft = choices[n].runs[LR] if here else fine_tune_seeds(lesson, task, PromptTuningConfig(n_tokens=n),
                                                            f"scale-{path.name}-prompt", base=path)
    return {"base": f"{meta.get('preset', 'base')}, {meta.get('steps', '?')} pretraining steps",
            "parameters": tuned.runs[0]["total"], "pretraining val loss": meta["val_loss"],
            "full FT accuracy": tuned["accuracy"], "prompt accuracy": soft["accuracy"], "gap (full - prompt)":
            SeedValues(tuple(f["accuracy"] - p["accuracy"] for f, p in zip(tuned.runs, soft.runs)))}


n = lesson.size(4, 5)
scale = [gap_at(path, n) for path in ([lesson.base] if lesson.quick else [smaller_base(), lesson.base])]
lesson.table(f"Full fine-tuning (lr {FullConfig.default_lr[task.kind]:g}) against a {n}-token soft prompt (lr {LR:g}), topic, "
             "same steps", scale)
if len(scale) == 2:  # --quick has one base: no second point
    lesson.claim("the gap to full fine-tuning shrinks as the model grows", "Lester et al. 2021",
                 scale[0]["gap (full - prompt)"], scale[1]["gap (full - prompt)"],
                 ("the smaller base", "the larger base"))


def draw_scale(ax) -> None:
    x = [row["parameters"] for row in scale]
    plot_seeds(ax, x, [row["full FT accuracy"] for row in scale], label="full fine-tuning", marker="s")
    plot_seeds(ax, x, [row["prompt accuracy"] for row in scale], label="prompt tuning")
    ax.set(xscale="log", xlabel="base parameters (log scale)", ylabel="test accuracy", ylim=(0, 1.05),
           title="Prompt tuning against full fine-tuning as the base grows")
    ax.legend()


lesson.plot("scale_gap.png", draw_scale)
lesson.finish()
