"""Lesson 2: Full fine-tuning: what it costs, and what it forgets

What this lesson shows, by measuring it on your machine:
  1. training with AdamW keeps four numbers for every parameter: the weight, its gradient and Adam's two
     moving averages; in fp32 that is 16 bytes per parameter, and the bytes PyTorch really holds match
     that formula to the byte (nano, tiny and, in full mode, small); activations, measured at three
     batch sizes, come on top and grow with the batch;
  2. the same formula, carried to GPT-2's sizes (124M to 1.5B parameters, and a 7B-class shape), shows
     why full fine-tuning needs a large GPU before a single activation is stored;
  3. every task fine-tuned in full is a full-size copy of the model: N tasks cost N bases on disk;
  4. catastrophic forgetting: perplexity on general text the base models well, before and during full
     fine-tuning on one task at three learning rates, against LoRA at two, for the same steps.

Read alongside: minitune/strategies/full.py (the whole strategy: unfreeze everything),
minitune/memory.py (bytes measured from the tensors, and the formula), minitune/train.py (the loop that
holds the gradients and AdamW's state), minitune/finetune.py (the run this lesson repeats per task).

Run:  python lessons/02_full_finetuning.py      about 2-3 minutes on 2 CPU cores with the base cached
      python lessons/02_full_finetuning.py --quick    about 10 seconds, nano sizes

The idea. Full fine-tuning is pretraining continued on task data: every weight theta_i is trainable,
and each step of AdamW (the optimizer of train.py) updates it from its gradient g_i:

    m_i <- b1 m_i + (1 - b1) g_i               first moment: a running mean of the gradient
    v_i <- b2 v_i + (1 - b2) g_i^2             second moment: a running mean of its square
    theta_i <- theta_i - lr (m^_i / (sqrt(v^_i) + eps) + wd theta_i)     (m^, v^: bias-corrected)

So while it trains, the model holds four numbers per parameter, theta, g, m and v. With P parameters
stored as b-byte floats:

    memory = b (P + P + 2P) = 4 b P          fp32 (b = 4): 16 bytes per parameter

(PyTorch adds one 4-byte `step` counter per tensor, a few hundred bytes in all.) Serving the same model
needs only theta: 4P bytes in fp32, 2P in bf16, so training holds four to eight times the memory.

What the formula leaves out: activations, the intermediate results of the forward pass that backward
needs (each layer's input, the attention probabilities, ...). They scale with batch x sequence length x
depth x width (attention adds batch x heads x length^2 per layer), and backward frees them layer by
layer as it walks down. For a given model their size is set by the batch and sequence length you
choose, so no bytes-per-parameter formula can hold them. Section 1 measures them at three batch sizes.

Forgetting. Fine-tuning minimises the loss on the task's answers and nothing else. No term of that
objective says "keep predicting general text well", and under full fine-tuning every weight is free to
move to lower the task loss. How far the weights drift grows with the learning rate and the number of
steps. The perplexity of the fine-tuned model on held-out general text, exp(mean cross-entropy per
token), measures how much of the base was lost: it is the number of tokens the model is, in effect,
choosing among at each position, so a rise from 4 to 40 means ten times less certain.
LoRA moves the same layers only through a low-rank update B A that starts at zero; section 4 measures
whether that keeps more of the base.
"""

from __future__ import annotations

import math
import tempfile

import torch

from minitune.data.batches import TokenStream, encode_documents
from minitune.data.tasks import load_task
from minitune.evaluate import HEADLINE_METRIC, evaluate_task
from minitune.finetune import finetune, supervised
from minitune.lesson import Lesson, held_out_text, perplexity
from minitune.memory import file_size, human_bytes, measure_training_memory, memory_formula, tensor_bytes
from minitune.model import GPT, GPTConfig, count_parameters
from minitune.strategies import (FullConfig, LoRAConfig, apply_strategy, base_unchanged, save_trainable,
                                 trainable_parameters)
from minitune.train import TrainConfig, train

METRIC = HEADLINE_METRIC
GPT2 = {  # GPT-2's published shapes: (n_layer, n_head, n_embd), vocabulary 50,257, context 1,024
    "GPT-2 124M": (12, 12, 768), "GPT-2 355M": (24, 16, 1024),
    "GPT-2 774M": (36, 20, 1280), "GPT-2 1.5B": (48, 25, 1600),
    "GPT-2 shape, 32 x 4096 (7B class)": (32, 32, 4096),  # for scale: the width and depth of today's 7B models
}
GPUS = {"8 GB": 8, "12 GB": 12, "16 GB": 16, "24 GB": 24, "40 GB": 40, "80 GB": 80}  # common cards, in GiB
LORA = LoRAConfig(r=8, targets=("c_attn", "c_fc"))


def memory_measured(lesson: Lesson) -> None:
    lesson.section("1. Four numbers per parameter: weights, gradients, two AdamW moments")
    rows = []
    for preset in lesson.size(("nano", "tiny"), ("nano", "tiny", "small")):
        torch.manual_seed(0)
        model = apply_strategy(GPT(GPTConfig.from_preset(preset)), FullConfig())  # only shapes matter here
        x = torch.randint(model.config.vocab_size, (2, 16))
        measured, formula = measure_training_memory(model, (x, x)), memory_formula(model)
        P = trainable_parameters(model)[1]
        rows.append({"model": preset, "parameters": P, "weights": human_bytes(measured["weights"]),
                     "gradients": human_bytes(measured["gradients"]), "AdamW m, v": human_bytes(measured["optimizer"]),
                     "measured": measured["total"], "formula": formula["total"],
                     "bytes per parameter": measured["total"] / P,
                     "step counters (B)": measured["optimizer_step"]})
    lesson.table("Training state after one AdamW step, measured from the tensors (bytes, fp32)", rows)
    exact = sum(r["measured"] == r["formula"] for r in rows)
    lesson.record("memory_rows_matching_formula", exact)
    per_param = [r["bytes per parameter"] for r in rows]
    lesson.conclude(f"For {exact} of {len(rows)} model sizes the measured bytes equal the formula "
                    f"4 bytes x (P + P + 2P) + the step counters exactly; that is {min(per_param):.3f} to "
                    f"{max(per_param):.3f} bytes per parameter.")

    activations(lesson)


def activations(lesson: Lesson) -> None:
    model, enc = lesson.load_base()
    model = apply_strategy(model, FullConfig())
    task = load_task("sentiment", sizes={"train": 32, "validation": 8, "test": 8})
    x, y = supervised(task, "train", enc, model.max_input_tokens, batch_size=32).batch(0)
    state = measure_training_memory(model, (x, y))["total"]  # the same for every batch size
    rows = []
    for b in (8, 16, 32):
        acts = _activation_bytes(model, x[:b].to(lesson.device), y[:b].to(lesson.device))
        rows.append({"batch (examples x tokens)": f"{b} x {x.shape[1]}", "activations": human_bytes(acts),
                     "weights + gradients + AdamW": human_bytes(state), "activations / state": acts / state,
                     "_bytes": acts})
    for r in rows:
        lesson.record(f"activation_bytes_{r['batch (examples x tokens)']}", r.pop("_bytes"))
    lesson.table("Not in the formula: what autograd keeps from the forward pass for backward (this lesson's base, "
                 "sentiment batches)", rows)
    first, last = rows[0], rows[-1]
    lesson.conclude(f"Activations grew from {first['activations']} to {last['activations']} as the batch went from "
                    f"{first['batch (examples x tokens)']} to {last['batch (examples x tokens)']} tokens, while the "
                    f"training state stayed at {human_bytes(state)}: at the largest batch they were "
                    f"{last['activations / state']:.1f}x the weights, gradients and moments. Their size is set by the "
                    "batch you choose, not by the formula.")


def memory_extrapolated(lesson: Lesson) -> None:
    lesson.section("2. The same formula at GPT-2's sizes")
    rows = []
    for name, (n_layer, n_head, n_embd) in GPT2.items():
        P = count_parameters(GPTConfig(vocab_size=50257, block_size=1024, n_layer=n_layer, n_head=n_head,
                                       n_embd=n_embd))
        train_bytes = 4 * (P + P + 2 * P)
        fits = [g for g, gib in GPUS.items() if train_bytes <= gib * 2**30]
        rows.append({"model": name, "parameters": P, "serve, bf16 (2P)": human_bytes(2 * P),
                     "weights, fp32 (4P)": human_bytes(4 * P), "train full, fp32 (16P)": human_bytes(train_bytes),
                     "smallest GPU that holds it": fits[0] if fits else "none (needs several)"})
        lesson.record(f"train_bytes_{name}", train_bytes)
    lesson.table("Weights, gradients and AdamW moments of full fine-tuning, before any activation", rows,
                 note="(parameter counts from minitune.model.count_parameters with GPT-2's shapes, LM head tied; "
                      "GPU sizes in GiB)")
    small, big, huge = rows[0], rows[-2], rows[-1]

    def card(r: dict) -> str:
        gpu = r["smallest GPU that holds it"]
        return f"one {gpu} GPU or larger" if gpu in GPUS else "more than any single GPU listed"

    lesson.conclude(f"Full fine-tuning {small['model']} in fp32 holds {small['train full, fp32 (16P)']} of training "
                    f"state before any activation ({card(small)}); {big['model']} holds "
                    f"{big['train full, fp32 (16P)']}, 8x the {big['serve, bf16 (2P)']} that serving it in bf16 takes "
                    f"({card(big)}); a 7B-class model holds {huge['train full, fp32 (16P)']} ({card(huge)}).")


def copy_per_task(lesson: Lesson) -> None:
    lesson.section("3. One full-size copy per task")
    sizes = lesson.size({"train": 64, "validation": 16, "test": 16}, {"train": 1000, "validation": 50, "test": 50})
    steps, limit = lesson.size(10, 100), lesson.size(8, 50)
    base, _ = lesson.load_base()
    base_bytes = tensor_bytes(base.parameters())
    rows, total = [], 0
    for name in ("sentiment", "topic", "qa"):
        task = load_task(name, sizes=None if name == "qa" else sizes)
        model, enc, out = finetune(lesson.base, task, FullConfig(), lesson.run_dir(f"{name}-full"), max_steps=steps,
                                   eval_every=steps, device=lesson.device, quiet=True, checkpoint_every=0)
        score = evaluate_task(model, enc, task, limit=limit, device=lesson.device)[METRIC[name]]
        size = file_size(out / "best")  # what save_trainable wrote: every tensor + the strategy config
        rows.append({"task": name, "metric": METRIC[name], "test score": score, "file per task": human_bytes(size),
                     "x base weights": size / base_bytes})
        total += size
    lesson.table(f"Full fine-tuning, {steps} steps per task; each run saves what it trained (all of it)", rows)
    lesson.record("full_copies_bytes", total)
    lesson.record("base_weight_bytes", base_bytes)
    lesson.conclude(f"{len(rows)} tasks fine-tuned in full take {human_bytes(total)} on disk, "
                    f"{total / base_bytes:.2f}x the base's {human_bytes(base_bytes)} of weights: each task is a whole "
                    "new model to store, load and serve.")


def forgetting(lesson: Lesson) -> None:
    lesson.section("4. Catastrophic forgetting: general text, before and during fine-tuning")
    base, enc = lesson.load_base()
    # A world built with another seed: the same kinds of documents and words, sentences the base never read.
    general = held_out_text(lesson.size(60_000, 200_000))
    eval_batches = lesson.size(4, 10)  # batches of 16 windows read per perplexity, before and during training
    before = perplexity(base, enc, general, lesson.device, max_batches=eval_batches)
    task = load_task("sentiment", sizes=lesson.size({"train": 64, "validation": 16, "test": 16},
                                                    {"train": 1000, "validation": 50, "test": 100}))
    steps, every = lesson.size(12, 150), lesson.size(4, 25)
    settings = [(FullConfig(), lr) for lr in (1e-4, 3e-4, 1e-3)] + [(LORA, lr) for lr in (1e-3, LORA.default_lr)]
    curves, rows = {}, []
    for config, lr in settings:
        model, _ = lesson.load_base()
        model = apply_strategy(model, config)
        history = _train_watching_general(model, enc, task, general, steps, lr, every, eval_batches, lesson.device)
        curves[f"{config.name}, lr {lr:g}"] = [(0, before)] + history
        trainable, total = trainable_parameters(model)
        with tempfile.TemporaryDirectory() as tmp:
            size = file_size(save_trainable(model, tmp))
        rows.append({"strategy": config.name, "lr": f"{lr:g}", "trainable %": 100 * trainable / total,
                     "accuracy": evaluate_task(model, enc, task, device=lesson.device)["accuracy"],
                     "perplexity before": before, "perplexity after": history[-1][1],
                     "x before": history[-1][1] / before, "file": human_bytes(size),
                     "base weights unchanged": base_unchanged(model, base)})
    lesson.table(f"Sentiment, {steps} steps of batch 16: test accuracy, and general-text perplexity (lower is "
                 "better) before and after", rows)
    lesson.record("forgetting_curves", {k: [[s, p] for s, p in v] for k, v in curves.items()})
    lesson.plot("forgetting.png", lambda ax: _curves(ax, curves, before))
    _conclude_forgetting(lesson, rows, steps)


def _conclude_forgetting(lesson: Lesson, rows: list[dict], steps: int) -> None:
    full = [r for r in rows if r["strategy"] == "full"]
    lora = [r for r in rows if r["strategy"] == "lora"]
    most, least = max(full, key=lambda r: r["x before"]), min(full, key=lambda r: r["x before"])
    by_lr = [r["x before"] for r in sorted(full, key=lambda r: float(r["lr"]))]
    rising = all(a < b for a, b in zip(by_lr, by_lr[1:]))
    lesson.conclude(f"After {steps} steps on sentiment, full fine-tuning multiplied general-text perplexity by "
                    f"{least['x before']:.2f}x at lr {least['lr']} (test accuracy {least['accuracy']:.0%}) and by "
                    f"{most['x before']:.2f}x at lr {most['lr']} (accuracy {most['accuracy']:.0%}): " + (
                        "the larger the learning rate, the more of the base was lost." if rising else
                        "forgetting did not grow steadily with the learning rate here."))
    shared = [(f, l) for f in full for l in lora if f["lr"] == l["lr"]]
    if shared:
        lesson.conclude("At the same learning rate: " + "; ".join(
            f"lr {f['lr']}: full {f['x before']:.2f}x, LoRA {l['x before']:.2f}x "
            f"({'LoRA forgot less' if l['x before'] < f['x before'] else 'LoRA forgot as much or more'})"
            for f, l in shared) + ".")
    # The fair question: did any full run both keep more of the base and learn the task as well as LoRA?
    dominant = [f for f in full if all(f["x before"] < l["x before"] and f["accuracy"] >= l["accuracy"] for l in lora)]
    lora_x, lora_acc = [r["x before"] for r in lora], [r["accuracy"] for r in lora]
    if dominant:
        d = min(dominant, key=lambda r: r["x before"])
        lesson.conclude(f"Against the course's claim that PEFT avoids the forgetting full fine-tuning suffers: full "
                        f"fine-tuning at lr {d['lr']} forgot less ({d['x before']:.2f}x) than every LoRA run "
                        f"({min(lora_x):.2f}x to {max(lora_x):.2f}x) and scored at least as well ({d['accuracy']:.0%} "
                        f"against at most {max(lora_acc):.0%}). How much a run forgets depends on how far it moves "
                        "the model (learning rate and steps), not only on how many parameters it trains.")
    else:
        lesson.conclude(f"No full fine-tuning run both forgot less than every LoRA run ({min(lora_x):.2f}x to "
                        f"{max(lora_x):.2f}x) and scored as well (LoRA: up to {max(lora_acc):.0%}): here LoRA kept "
                        "more of the base for what it learned, as the course says.")
    worst_lora = max(lora, key=lambda r: r["x before"])
    kept_lora, kept_full = (sum(r["base weights unchanged"] for r in runs) for runs in (lora, full))
    if worst_lora["x before"] > 1.05:
        lesson.conclude(f"LoRA's adapted model is not the base either: with the adapter on, general-text perplexity "
                        f"rose up to {worst_lora['x before']:.2f}x. What LoRA keeps is the base itself: its weights "
                        f"are bitwise unchanged in {kept_lora} of {len(lora)} LoRA runs (and in {kept_full} of "
                        f"{len(full)} full runs), so removing the adapter gives the base back exactly.")


def _train_watching_general(model, enc, task, general: list[str], steps: int, lr: float, every: int,
                            eval_batches: int, device: str) -> list[tuple[int, float]]:
    """Fine-tune with finetune()'s schedule, but let the loop's evaluation measure general text instead of the task.

    Returns [(step, general-text perplexity)] every `every` steps.
    """
    room = model.max_input_tokens
    train_data = supervised(task, "train", enc, room, batch_size=16)
    watch = TokenStream(encode_documents(enc, general), room, batch_size=16, max_eval_batches=eval_batches)
    cfg = TrainConfig(max_steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=steps // 10, eval_every=every,
                      device=device, quiet=True)
    result = train(model, train_data, watch, cfg)
    return [(h["step"], math.exp(h["val_loss"])) for h in result.history]




def _activation_bytes(model, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves during the forward pass for backward, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())  # views of one buffer (q, k, v of one matmul) count once
            total += storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(x, y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    model.eval()
    return total


def _curves(ax, curves: dict, before: float) -> None:
    for label, points in curves.items():
        ax.plot([s for s, _ in points], [p for _, p in points], marker="o", ms=3,
                ls="--" if label.startswith("lora") else "-", label=label)
    ax.axhline(before, color="grey", lw=0.8, ls=":", label="base")
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning step (sentiment)")
    ax.set_ylabel("general-text perplexity (log scale)")
    ax.set_title("Forgetting: full fine-tuning vs LoRA")
    ax.legend(fontsize=8)


def main(argv: list[str] | None = None) -> dict:
    lesson = Lesson.start(2, "Full fine-tuning", __doc__, argv)
    memory_measured(lesson)
    memory_extrapolated(lesson)
    copy_per_task(lesson)
    forgetting(lesson)
    return lesson.finish()


if __name__ == "__main__":
    main()
