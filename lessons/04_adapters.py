# %% [markdown]
# # Lesson 4: Bottleneck adapters
#
# Full fine-tuning changes the base's weights (lesson 2); LoRA adds a low-rank term beside them (lesson 3).
# An adapter leaves both alone: it inserts a small new layer into each block and trains only that. This
# chapter counts what an adapter trains, then measures how its width, its place in the block, its
# initialisation and the LayerNorms change what it learns and what it costs.
#
# **Read alongside:** `minitune/strategies/adapter.py` (the whole method, 98 lines) and
# `minitune/course/studies.py` (how each setting is fine-tuned over seeds and scored; shared with lesson 5).
#
# **Run:** `python lessons/04_adapters.py` (from an empty cache: 33 fine-tuning runs of 160 steps, and
# timing the placements), or `--quick` (the nano base and 8-step runs). The results of the last full run,
# beside this text: `docs/lessons/04.md`.
#
# **How quality is measured.** Topic classification (five topics: sport, food, weather, trade, animals),
# at the standard budget (160 steps of batch 16 from 1000 training examples) and the adapters' default
# learning rate for classification (chosen by the recorded sweep; the first table's title gives it), three
# seeds per setting. Each run is scored on 300
# test items by accuracy and by the label loss, -log p(right topic) with p normalised over the five topic
# words: where accuracy saturates near 1, the label loss still separates settings. A claim's
# verdict comes from the noise rule (Welch's t over the seeds, `minitune/course/stats.py`).

# %%
import copy

import torch

from minitune.bench import inference_case, run_interleaved, training_case
from minitune.course.lesson import Lesson, held_out_text
from minitune.course.stats import best_of
from minitune.course.studies import (BATCH, EVALS, curve, draw_curves, draw_quality, fine_tune_each, fine_tune_seeds,
                                     test_scores, validation_batches)
from minitune.evaluate import perplexity
from minitune.finetune import supervised
from minitune.strategies import AdapterConfig, apply_strategy, load_trainable, save_trainable, trainable_parameters
from minitune.strategies.adapter import PLACEMENTS, Bottleneck
from minitune.train import TrainConfig, evaluate_loss, train

lesson = Lesson.start(4, "Bottleneck adapters")
task = lesson.budget.task("topic")
base, enc = lesson.load_base()
d, L = base.config.n_embd, base.config.n_layer
M = AdapterConfig().bottleneck  # the package's default width, used from section 2 on


# %% [markdown]
# ## 1. The bottleneck: what an adapter trains
#
# The adapter is a residual MLP with a narrow middle, applied to the output h (width d) of a sublayer's
# projection:
#
#     adapter(h) = h + W_up f(W_down h + b_down) + b_up      W_down: m x d,  W_up: d x m,  f = GELU
#
#     trainable per adapter:  d m (down) + m (its bias) + m d (up) + d (its bias)  =  2 d m + d + m
#
# With two adapters per block (Houlsby et al., 2019) the tiny base (d = 128, 4 blocks) at m = 16 trains
# 8 x 4,240 = 33,920 numbers. The width m is the knob that trades quality for parameters, like LoRA's
# rank. Unlike LoRA's update the adapter is non-linear and sits in sequence with the base's layers, so it
# cannot be folded into W after training: inference always pays for the extra layers.
#
# First the count, against that closed form, for m = 1 to 256:

# %%
def closed_form(m: int, placement: str = "houlsby", train_layernorm: bool = False) -> int:
    """(2 d m + d + m) per adapter x adapters per block x blocks (+ 2 d per LayerNorm if they train)."""
    layernorms = (2 * L + 1) * 2 * d if train_layernorm else 0  # ln_1, ln_2 per block and ln_f: weight + bias
    return L * len(PLACEMENTS[placement]) * (2 * d * m + d + m) + layernorms


counted = {m: trainable_parameters(apply_strategy(copy.deepcopy(base), AdapterConfig(bottleneck=m)))[0]
           for m in (1, 4, 16, 64, 256)}
base_size = trainable_parameters(base)[1]
lesson.table(f"Trainable parameters of Houlsby adapters (2 per block), d = {d}, {L} blocks",
             {m: {"trainable": n, "closed form": closed_form(m), "% of base": 100 * n / base_size}
              for m, n in counted.items()}, index="m")

# %% [markdown]
# Then quality across the widths. Houlsby et al. found that small bottlenecks lose little on their
# (far larger) models. The table marks every width the noise rule cannot tell from the one with the
# lowest label loss; each is compared with the best at the 5% level, so among several widths one such
# comparison in twenty comes out different by chance.

# %%
widths = lesson.size((1, M), (1, 4, M, 64, 256))
runs = fine_tune_each(lesson, task, {m: AdapterConfig(bottleneck=m) for m in widths})
pick = best_of({m: r["label loss"] for m, r in runs.items()}, higher_is_better=False)
lesson.record("bottleneck_best", {"best": pick.best, "tied": list(pick.tied)})
lesson.table(f"Houlsby adapters on topic, lr {AdapterConfig.default_lr[task.kind]:g}, {lesson.budget.steps} steps",
             {m: {**r.measures(("accuracy", "label loss", "val loss")),
                  "best label loss or within noise": m in pick.tied} for m, r in runs.items()}, index="m")
lesson.claim_quality("the widest bottleneck against the narrowest", "", runs[widths[-1]], runs[widths[0]],
                     (f"width {widths[-1]}", f"width {widths[0]}"))
lesson.plot("bottleneck_sweep.png", lambda ax: draw_quality(
    ax, widths, list(runs.values()), "bottleneck m (log scale)", "Adapter bottleneck on topic (Houlsby placement)"))

# %% [markdown]
# ## 2. Placement: two adapters per block, or one
#
# Houlsby et al. put two adapters in each block, after the attention's output projection and after the
# MLP's. Pfeiffer et al. (2021) found that one per block, after the MLP, keeps most of the quality with
# half the adapters, so training and inference run faster. Three variants: Houlsby at m = 16, Pfeiffer at
# m = 16 (half the parameters), and Pfeiffer at m = 32 (about Houlsby's budget). Their training step
# (batch 16, full context) and forward pass (batch 1, full context, against the base's) are timed
# round-robin, so the machine's noise hits all alike; one timing run, medians of the rounds.

# %%
variants = {f"{w.capitalize()}, m = {k}": AdapterConfig(bottleneck=k, placement=w) for w, k in
            (("houlsby", M), ("pfeiffer", M), ("pfeiffer", 2 * M))}
placed = fine_tune_each(lesson, task, {name: c for name, c in variants.items() if c.placement != "houlsby"}) | {
    name: runs[c.bottleneck] for name, c in variants.items() if c.placement == "houlsby"}
placed = {name: placed[name] for name in variants}  # in the variants' order
models = {name: apply_strategy(copy.deepcopy(base), c) for name, c in variants.items()}
device = torch.device(lesson.device)
steps_timed = [training_case("lesson", name, model, BATCH, device) for name, model in models.items()]
forwards = [inference_case("lesson", name, model, device) for name, model in {"base": base, **models}.items()]
for cases in (steps_timed, forwards):
    run_interleaved(cases, rounds=lesson.size(3, 7), device=device, min_group_s=lesson.size(0.05, 0.4),
                    log=lambda s: None)
step_ms = {c.name: 1000 * c.median for c in steps_timed}
forward_ms = {c.name: 1000 * c.median for c in forwards}
lesson.record("forward_ms", forward_ms)
rows = {name: {"adapters": L * len(PLACEMENTS[c.placement]), "trainable": placed[name].runs[0]["trainable"],
               "closed form": closed_form(c.bottleneck, c.placement),
               **placed[name].measures(("accuracy", "label loss")), "train step ms": step_ms[name],
               "forward +% vs base": 100 * (forward_ms[name] / forward_ms["base"] - 1)} for name, c in variants.items()}
lesson.table(f"Placement on topic; the base's forward pass alone: {forward_ms['base']:.2f} ms", rows, index="placement")
houlsby, pfeiffer, pfeiffer2 = rows
lesson.note(f"At m = {M}, one adapter per block trains {rows[pfeiffer]['trainable'] / rows[houlsby]['trainable']:.0%} "
            f"of Houlsby's parameters in {rows[pfeiffer]['train step ms'] / rows[houlsby]['train step ms']:.0%} of "
            "its step time.")
lesson.claim_quality("one adapter per block keeps the quality of two, at the same width",
                     "Pfeiffer et al. 2021", placed[pfeiffer], placed[houlsby], (pfeiffer, houlsby))
lesson.claim_quality("one adapter per block keeps the quality of two, at about the same parameters",
                     "Pfeiffer et al. 2021", placed[pfeiffer2], placed[houlsby], (pfeiffer2, houlsby))

# %% [markdown]
# ## 3. Near-identity initialisation, and what happens without it
#
# With W_up = 0 and b_up = 0 the adapter returns h unchanged, so the adapted model computes exactly what
# the base computes: fine-tuning starts from the pretrained function, not from a damaged copy of it.
# W_down is small and random (N(0, 0.02^2)) so that the features f(W_down h) differ from each other; the
# first gradient step then moves W_up (its gradient is g f(W_down h)^T, not zero), and from the next step
# on W_down learns too.
#
# Against that default, three random starts: W_up ~ N(0, 0.02^2), W_up ~ N(0, 0.2^2), and PyTorch's
# default for a Linear layer on both projections. For each seed: where the adapted model starts (its
# largest logit difference from the base on a validation batch, its task validation loss, its perplexity
# on held-out general tiny-world text, what the base was pretrained to model), and where the same
# training takes it. The identity start's training runs are section 1's at m = 16; the random starts
# are trained here by the same loop and budget, from the altered model. Houlsby et al. report lasting
# harm from initial scales far from the identity.

# %%
base, enc = lesson.load_base()
x = next(validation_batches(task, enc, base).eval_batches())[0].to(lesson.device)
general = held_out_text(lesson.size(60_000, 300_000))  # text like the base's own, not seen in pretraining
with torch.no_grad():
    base_logits = base(x)[0]
at_base = {"task val loss": evaluate_loss(base, validation_batches(task, enc, base).eval_batches(), lesson.device),
           "general perplexity": perplexity(base, enc, general, lesson.device, max_batches=8)}
lesson.record("step0_base", at_base)


def start(seed: int, alter):
    """The adapted model for `seed` with alter(adapter) applied to each adapter, and where it starts."""
    torch.manual_seed(seed)  # finetune() seeds the same way before applying the strategy
    model = apply_strategy(copy.deepcopy(base), AdapterConfig(bottleneck=M))
    with torch.no_grad():
        for adapter in [module for module in model.modules() if isinstance(module, Bottleneck)]:
            alter(adapter)
        diff = float((model(x)[0] - base_logits).abs().max())
    at = {"task val loss": evaluate_loss(model, validation_batches(task, enc, model).eval_batches(), lesson.device),
          "general perplexity": perplexity(model, enc, general, lesson.device, max_batches=8)}
    return model, {"step 0: largest logit change": diff, "step 0: exactly the base": diff == 0 and at == at_base,
                   **{f"step 0: {k}": v for k, v in at.items()}}


def train_from(model, seed: int, name: str) -> dict:
    """Fine-tune an already adapted (here, altered) model as finetune() would, and score its best checkpoint."""
    n, lr, out = lesson.budget.steps, AdapterConfig.default_lr[task.kind], lesson.run_dir(f"{name}-seed{seed}")
    config = TrainConfig(max_steps=n, lr=lr, min_lr=lr / 10, warmup_steps=n // 10, eval_every=max(1, n // EVALS),
                         seed=seed, device=lesson.device, quiet=True, checkpoint_every=0)
    result = train(model, supervised(task, "train", enc, model.max_input_tokens, BATCH, seed),
                   validation_batches(task, enc, model), config, out_dir=out, save=save_trainable)
    model = load_trainable(model, out / "best")  # the best checkpoint, as finetune() keeps
    return {**test_scores(lesson, model, enc, task), "val loss": result.best_val_loss, "history": result.history}


def from_start(alter, name: str | None):
    """Every seed started by `alter` and trained (name None: the identity start, section 1's runs)."""
    def one(seed: int) -> dict:
        model, at_start = start(seed, alter)
        trained = runs[M].runs[lesson.seeds.index(seed)] if name is None else train_from(model, seed, name)
        return at_start | trained
    return lesson.over_seeds(one)


inits = {"identity (W_up = 0, default)": from_start(lambda adapter: None, None),
         "W_up ~ N(0, 0.02^2)": from_start(lambda a: torch.nn.init.normal_(a.up.weight, std=0.02), "init-up-0.02"),
         "W_up ~ N(0, 0.2^2)": from_start(lambda a: torch.nn.init.normal_(a.up.weight, std=0.2), "init-up-0.2"),
         "PyTorch's Linear default, down and up": from_start(
             lambda a: (a.down.reset_parameters(), a.up.reset_parameters()), "init-linear-default")}
lesson.table(f"Houlsby adapters, m = {M}, by initialisation. The base: task val loss {at_base['task val loss']:.4f}, "
             f"general perplexity {at_base['general perplexity']:.3f}",
             {name: {"step 0: largest logit change (any seed)": r["step 0: largest logit change"].max,
                     "step 0: exactly the base (every seed)": all(s["step 0: exactly the base"] for s in r.runs),
                     **r.measures(("step 0: task val loss", "step 0: general perplexity", "accuracy", "label loss"))}
              for name, r in inits.items()}, index="initialisation",
             note="task val loss: mean cross-entropy of the target tokens (topic word, newline, end of text); "
                  "accuracy and label loss: on test, after training")
identity, *randoms = inits
for name in randoms:
    lesson.claim(f"general-text perplexity at step 0, {name} against the base", "", inits[name][
        "step 0: general perplexity"], [at_base["general perplexity"]] * len(lesson.seeds), (name, "the base"),
        expect=None, log=True)
for name in randoms:
    lesson.claim_quality(f"a start at {name} instead of the identity ends worse", "Houlsby et al. 2019",
                         inits[name], inits[identity], (name, "identity"), expect="higher")
curves = {name: curve(r, r["step 0: task val loss"].values) for name, r in inits.items()}
lesson.plot("init_curves.png", lambda ax: draw_curves(
    ax, curves, "Validation loss from step 0, by adapter initialisation", at_base["task val loss"]))

# %% [markdown]
# ## 4. Training the LayerNorms too
#
# The adapter can also train the model's LayerNorms: each has a weight and a bias of width d, and the
# tiny base has 2 per block and a final one, (2 x 4 + 1) x 2 x 128 = 2,304 numbers more.

# %%
with_ln = fine_tune_seeds(lesson, task, AdapterConfig(bottleneck=M, train_layernorm=True), f"layernorm-{M}")
lesson.table(f"Houlsby adapters, m = {M}, with and without the LayerNorms' weights and biases",
             {name: {"trainable": r.runs[0]["trainable"], "closed form": closed_form(M, "houlsby", ln),
                     **r.measures(("accuracy", "label loss"))}
              for name, r, ln in (("frozen", runs[M], False), ("trained", with_ln, True))}, index="LayerNorms")
lesson.claim_quality("training the LayerNorms too, against keeping them frozen", "", with_ln, runs[M],
                     ("LayerNorms trained", "frozen"))
lesson.finish()
