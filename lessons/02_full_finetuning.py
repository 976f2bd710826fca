# %% [markdown]
# # Lesson 2: Full fine-tuning
#
# Full fine-tuning is pretraining continued on task data: every weight trains. This chapter measures
# what that costs (the bytes of the training state, the activations kept for backward, a full-size file
# per task) and what it risks: forgetting what the base knew, measured as its perplexity on general text.
#
# **Read alongside:** `minitune/strategies/full.py` (the whole strategy, 30 lines: unfreeze everything),
# `minitune/memory.py` (the two memory formulas and the measurements they are checked against),
# `minitune/train.py` (the loop that holds the gradients and AdamW's state), `minitune/course/runs.py`
# (section 5's shared runs: at the default rates they are the very runs lesson 1 shows).
#
# **Run:** `python lessons/02_full_finetuning.py` (about 4 minutes on 2 busy CPU cores from an empty
# cache; less after lesson 1, whose runs it reads back), or `--quick` (the nano base, seconds). The
# results of the last full run, beside this text: `docs/lessons/02.md`.

# %%
from functools import partial

import torch

from minitune.course.lesson import Lesson, plot_seeds
from minitune.course.report import Bytes
from minitune.data.tasks import load_task
from minitune.finetune import finetune
from minitune.memory import (activation_bytes, file_size, measure_training_memory, memory_formula,
                             saved_activation_bytes, tensor_bytes)
from minitune.model import GPT, GPTConfig
from minitune.strategies import (AdapterConfig, FullConfig, LoRAConfig, PromptTuningConfig, QLoRAConfig,
                                 apply_strategy, trainable_parameters)
from minitune.strategies.lora import hold_frozen_in

lesson = Lesson.start(2, "Full fine-tuning")
STRATEGIES = (FullConfig(), LoRAConfig(), AdapterConfig(), PromptTuningConfig())  # the package's defaults

# %% [markdown]
# ## 1. Four numbers per parameter
#
# Each AdamW step updates a weight w from its gradient g and two running averages, m of g and v of g^2.
# So training holds four numbers per trainable parameter. With P parameters in b-byte floats:
#
#     training state = b (P + P + 2P) = 4 b P      (+ one 4-byte step counter per trainable tensor)
#
# which is 16 bytes per parameter in fp32, against 2 per parameter to serve the model in bf16. A PEFT
# strategy keeps every frozen weight (b bytes each) but gradients and moments only for what it trains.
# Below, the formula against the bytes PyTorch really holds after one step of full fine-tuning.

# %%
def train_state(preset: str) -> dict:
    """The bytes of one AdamW step of full fine-tuning, measured from the tensors and by the formula."""
    torch.manual_seed(0)
    model = apply_strategy(GPT(GPTConfig.from_preset(preset)), FullConfig())  # random weights: only shapes matter
    x = torch.randint(model.config.vocab_size, (2, 16))
    measured, formula, P = measure_training_memory(model, (x, x)), memory_formula(model), trainable_parameters(model)[1]
    return {"parameters": P, **{k: Bytes(measured[k]) for k in ("weights", "gradients", "optimizer")},
            "measured (B)": measured["total"], "formula (B)": formula["total"],
            "measured - formula (B)": measured["total"] - formula["total"],
            "bytes per parameter": measured["total"] / P, "step counters (B)": measured["optimizer_step"]}


state = {preset: train_state(preset) for preset in lesson.size(("nano", "tiny"), ("nano", "tiny", "small"))}
lesson.table("Training state after one AdamW step, measured from the tensors (fp32; optimizer: AdamW's m and v)",
             state, index="model")

# %% [markdown]
# ## 2. Activations: the formula against what autograd saves
#
# Backward also needs results of the forward pass: a LayerNorm its input, a linear layer its input (to
# form its weight's gradient), attention q, k, v and its output. These activations grow with batch x
# tokens x depth x width, whatever the number of trainable parameters. PEFT does not make them vanish: to
# reach a trainable tensor in block 0 the gradient must pass down through every frozen block, and each
# keeps what it needs for that (only the inputs of frozen linear layers can go). Prompt tuning trains the
# very input, so it keeps nearly everything. `activation_bytes` writes this down for the package's GPT-2
# block; `saved_activation_bytes` counts the tensors autograd really saves (each buffer once, parameters
# excluded). Section 3 uses the formula at sizes this machine cannot hold, so here it is checked first.

# %%
shapes = {"nano": GPTConfig.from_preset("nano"),
          "3 x 48, 3 heads": GPTConfig(vocab_size=500, block_size=64, n_layer=3, n_head=3, n_embd=48),
          "tiny": GPTConfig.from_preset("tiny")}
B, T = 4, 32
saved = []
for name, shape in list(shapes.items())[:lesson.size(2, 3)]:
    for config in STRATEGIES:
        torch.manual_seed(0)  # a random model saves the same tensors as a trained one
        model = apply_strategy(GPT(shape), config)
        x, y = (torch.randint(shape.vocab_size, (B, T)) for _ in range(2))
        measured, formula = saved_activation_bytes(model, x, y), activation_bytes(shape, config, B, T)
        saved.append({"model": name, "strategy": config.name, "formula (B)": formula, "measured (B)": measured,
                      "measured - formula (B)": measured - formula, "measured / formula": measured / formula})
lesson.table(f"Bytes autograd saves for backward, batch {B} x {T} tokens, fp32", saved)

# %% [markdown]
# ## 3. Both formulas at GPT-2's sizes and a 7B-class shape
#
# The same two formulas, on PyTorch's meta device (shapes and dtypes, no memory), for GPT-2's four
# published shapes and a GPT-2 block at 7B-class width and depth, batch 1 at the full context (1024
# tokens for GPT-2, 4096 for the 7B class; the 7B class also at half of it). In bf16, PEFT runs over a
# bf16 base, while full fine-tuning in bf16 mixed precision keeps fp32 weights, gradients and moments plus
# autocast's bf16 copy of every weight. *card* is the smallest of 8, 16, 24 and 80 GiB that holds the bf16
# total (count that column for what a 24 GiB consumer card holds); a real step's peak adds the logits, their
# gradient and the allocator's slack, not counted here.
#
# The course says PEFT brings a large model onto a consumer card. These are formulas, not measurements:
# they are the same at every seed, so the noise rule calls any gap between them real.

# %%
BIG = {name: GPTConfig(vocab, context, n_layer, n_head, n_embd) for name, (vocab, context, n_layer, n_head, n_embd) in {
    "GPT-2 124M": (50257, 1024, 12, 12, 768), "GPT-2 355M": (50257, 1024, 24, 16, 1024),
    "GPT-2 774M": (50257, 1024, 36, 20, 1280), "GPT-2 1.5B": (50257, 1024, 48, 25, 1600),
    "7B class (32 x 4096)": (32000, 4096, 32, 32, 4096)}.items()}  # (vocab, context, n_layer, n_head, n_embd)
GIB, CARDS, CONSUMER = 2**30, (8, 16, 24, 80), 24


def at_scale(shape: GPTConfig, config, tokens: int, checkpointed: bool = False) -> dict:
    """Training state and activations of one shape and strategy, batch 1, fp32 and bf16 (the formulas)."""
    with torch.device("meta"):
        model = apply_strategy(GPT(shape), config)
    tokens, trainable = min(tokens, model.max_input_tokens), trainable_parameters(model)[0]  # a soft prompt takes room
    four_bit = tensor_bytes(model.buffers())  # QLoRA's NF4 weights (buffers); 0 for the others
    state32 = memory_formula(model, 4)["total"] + four_bit
    if config.name != "full":
        hold_frozen_in(model, torch.bfloat16)  # PEFT over a bf16 base: frozen weights in 2 bytes
    state16 = memory_formula(model, None)["total"] + four_bit + 2 * trainable  # + autocast's bf16 copy of what trains
    acts32, acts16 = (activation_bytes(shape, config, 1, tokens, p, checkpointed) for p in ("fp32", "bf16"))
    return {"tokens": tokens, "trainable": trainable, "state fp32": Bytes(state32), "activations fp32": Bytes(acts32),
            "total fp32": Bytes(state32 + acts32), "activations share fp32": acts32 / (state32 + acts32),
            "state bf16": Bytes(state16), "activations bf16": Bytes(acts16), "total bf16": Bytes(state16 + acts16),
            "activations share bf16": acts16 / (state16 + acts16),
            "card (bf16)": next((f"{g} GiB" for g in CARDS if state16 + acts16 <= g * GIB), "over 80 GiB")}


scale = {}
for name, shape in BIG.items():
    for tokens in (shape.block_size, shape.block_size // 2) if name.startswith("7B") else (shape.block_size,):
        full = at_scale(shape, FullConfig(), tokens)
        for config in STRATEGIES:
            m = scale[name, tokens, config.name] = at_scale(shape, config, tokens)
            m["activations / full's"] = m["activations bf16"] / full["activations bf16"]
rows = [{"model": name, "strategy": s, **m} for (name, _, s), m in scale.items()]
lesson.table("Training memory from the formulas, fp32: weights + gradients + AdamW (state) and saved activations",
             rows, columns=("model", "strategy", "tokens", "trainable", "state fp32", "activations fp32", "total fp32",
                            "activations share fp32"))
lesson.table("The same in bf16", rows, columns=("model", "strategy", "tokens", "state bf16", "activations bf16",
                                                "total bf16", "activations share bf16", "activations / full's",
                                                "card (bf16)"))
# %% [markdown]
# The 7B rows above hold the frozen base in bf16 and keep every activation autograd saves. Two standard
# tools cut each of those. *Activation checkpointing* keeps only each block's input in the forward pass and
# recomputes one block at a time during backward (about one more forward pass of compute), so at most one
# block's activations are alive. An *NF4 base* holds the blocks' linear weights in 4 bits, about 0.52 bytes
# each (QLoRA, lesson 7, whose 4-bit layers dequantise again in backward rather than keep a float copy);
# Dettmers et al. fit a 65B model's fine-tuning on one 48 GB card this way, with paged optimizers for the
# spikes. This package does not implement checkpointing, so those rows are the formula only; the NF4 bytes
# are the package's own 4-bit layout. Whether PEFT fits a consumer card is read from every row.

# %%
SEVEN_B = BIG["7B class (32 x 4096)"]
ROUTES = {"full": (FullConfig(), False), "full + checkpointing": (FullConfig(), True),
          "LoRA, bf16 base": (LoRAConfig(), False), "LoRA + checkpointing": (LoRAConfig(), True),
          "QLoRA, NF4 base": (QLoRAConfig(), False), "QLoRA + checkpointing": (QLoRAConfig(), True)}
routes = {(name, tokens): at_scale(SEVEN_B, config, tokens, ckpt) for name, (config, ckpt) in ROUTES.items()
          for tokens in (4096, 2048)}
lesson.table("The 7B class on one card, bf16, batch 1: the base's precision and activation checkpointing",
             [{"route": name, **m} for (name, _), m in routes.items()],
             columns=("route", "tokens", "state bf16", "activations bf16", "total bf16", "card (bf16)"))
for name in [n for n in ROUTES if not n.startswith("full")]:
    gib = routes[name, 4096]["total bf16"] / GIB
    lesson.claim(f"PEFT brings a large model onto a consumer card ({name}, 7B class, batch 1 x 4096 tokens, bf16)",
                 "Module 2", [gib] * len(lesson.seeds), [CONSUMER] * len(lesson.seeds),  # formulas: no seed noise
                 (f"{name}: total (GiB)", "a 24 GiB card"), expect="lower")

# %% [markdown]
# ## 4. One full-size copy per task
#
# What a fine-tuned task leaves on disk is what its strategy trained. For full fine-tuning that is every
# weight: each task is a whole new model to store, load and serve. Three tasks, a few steps each (the
# file's size does not depend on how long it trained).

# %%
sizes = lesson.size({"train": 64, "validation": 16, "test": 16}, {"train": 1000, "validation": 50, "test": 50})
steps = lesson.size(4, 20)
files = {"the base's weights": tensor_bytes(lesson.load_base()[0].parameters())}
for name in ("sentiment", "topic", "qa"):
    task = load_task(name, sizes=None if name == "qa" else sizes)
    _, _, out = finetune(lesson.base, task, FullConfig(), lesson.run_dir(f"{name}-full"), max_steps=steps,
                         eval_every=steps, device=lesson.device, quiet=True, checkpoint_every=0)
    files[name] = file_size(out / "best")  # what save_trainable wrote: every tensor + the strategy's config
files["the 3 tasks together"] = sum(files[name] for name in ("sentiment", "topic", "qa"))
lesson.table(f"Full fine-tuning, {steps} steps per task: the files it saves",
             {k: {"bytes": Bytes(v), "x base weights": v / files["the base's weights"]} for k, v in files.items()},
             index="what")

# %% [markdown]
# ## 5. Forgetting
#
# Fine-tuning lowers the loss on the task's answers and nothing else: nothing in the objective asks the
# model to keep predicting general text. Its perplexity on held-out general text, exp(mean cross-entropy
# per token), divided by the base's, measures how much of that was lost (1.0: nothing). The runs are the
# shared sentiment runs (160 steps of batch 16): full fine-tuning at several learning rates, nothing else
# changed, and LoRA both at full fine-tuning's default rate and at its own. The course says PEFT avoids the
# forgetting of full fine-tuning; at the same rate only the strategy differs, at the defaults two recipes
# are compared. What LoRA keeps for certain is the base itself: its weights stay bitwise unchanged (last
# column), so removing the adapter gives back the base's perplexity exactly.

# %%
before = lesson.base_perplexity()
lesson.record("perplexity_before", before)
F, L = FullConfig.default_lr["classification"], LoRAConfig.default_lr["classification"]  # sentiment's defaults
rates = {"full": sorted(set(lesson.size((1e-4, F), (1e-4, 3e-4, 1e-3, 3e-3, F)))), "lora": sorted({F, L})}


def forgetting(config, lr: float, seed: int) -> dict:
    run = lesson.shared_run("sentiment", config, seed, lr=lr)
    return {"accuracy": run["score"], "perplexity / base's": run["general_ppl"] / before, "base": run["base_intact"]}


runs = lesson.each_over_seeds({(c.name, lr): partial(forgetting, c, lr)
                               for c in (FullConfig(), LoRAConfig()) for lr in rates[c.name]})
lesson.table(f"Sentiment: test accuracy, and general-text perplexity over the base's ({before:.2f})", {
    f"{s} at {lr:g}": {**r.measures(("accuracy", "perplexity / base's")),
                       "base unchanged (seeds)": sum(x["base"] for x in r.runs)} for (s, lr), r in runs.items()},
    index="strategy at rate")


def draw(ax) -> None:
    for strategy, lrs in rates.items():
        plot_seeds(ax, lrs, [runs[strategy, lr]["perplexity / base's"] for lr in lrs], label=strategy)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":", label="base")
    ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="general-text perplexity / base's")
    ax.legend(fontsize=8)


lesson.plot("forgetting.png", draw, title="Forgetting after fine-tuning on sentiment (mean ± sd over seeds)")
ppl = {key: r["perplexity / base's"] for key, r in runs.items()}
for lo, hi in zip(rates["full"], rates["full"][1:]):
    lesson.claim(f"forgetting as full FT's learning rate grows ({lo:g} to {hi:g})", "", ppl["full", hi],
                 ppl["full", lo], (f"lr {hi:g}", f"lr {lo:g}"), expect=None, log=True)
lesson.claim("test accuracy, full FT at its default rate against its smallest", "", runs["full", F]["accuracy"],
             runs["full", 1e-4]["accuracy"], (f"lr {F:g}", "lr 0.0001"), expect=None)
for lr, what in ((F, "at the same rate"), (L, "each at its default rate")):
    lesson.claim(f"PEFT avoids the forgetting of full fine-tuning ({what})", "Module 2", ppl["full", F],
                 ppl["lora", lr], (f"full at {F:g}", f"LoRA at {lr:g}"), log=True)
lesson.claim("test accuracy, each at its default rate", "", runs["full", F]["accuracy"], runs["lora", L]["accuracy"],
             (f"full at {F:g}", f"LoRA at {L:g}"), expect=None)
lesson.finish()
