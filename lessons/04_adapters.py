"""Lesson 4: Bottleneck adapters.

What this lesson shows, by measuring it on your machine:
  1. an adapter trains 2 d m + d + m numbers (m = its bottleneck width; checked against the count for
     m = 1 ... 256), and how quality changes as m goes from 1 to 256;
  2. where the adapters go: two per block after attention and after the MLP (Houlsby et al., 2019)
     against one per block after the MLP (Pfeiffer et al., 2021): quality, parameters, step time;
  3. why the up-projection starts at zero: the adapted model then starts exactly as the base (its
     logits and its validation loss are the base's, to the last bit); adapters started at random
     instead (small, larger, and PyTorch's default for a Linear layer) are compared by where they
     start and where they end;
  4. whether also training the LayerNorms (2 d numbers each) makes a difference.

Read alongside: minitune/strategies/adapter.py (the whole method, ~100 lines), and minitune/studies.py
(how each setting is fine-tuned over seeds and scored; shared with lesson 5).

Run:  python lessons/04_adapters.py            5.5 minutes on 2 CPU cores (measured on its own: 33
                                               fine-tuning runs, and timing the placements)
      python lessons/04_adapters.py --quick    about 15 seconds, nano base and toy sizes

The idea. Instead of changing the base's weights (full fine-tuning) or adding a low-rank term beside
them (LoRA, lesson 3), insert a small new layer into each block and train only that. The layer is a
residual MLP with a narrow middle, applied to the output h (width d) of a sublayer's projection:

    adapter(h) = h + W_up f(W_down h + b_down) + b_up      W_down: m x d,  W_up: d x m,  f = GELU

    trainable per adapter:  d m (down) + m (its bias) + m d (up) + d (its bias)  =  2 d m + d + m
    e.g. the tiny base (d = 128) with m = 16: 4,240 numbers per adapter

The narrow width m (the "bottleneck", m << d) is the knob that trades quality for parameters, like
LoRA's rank. Unlike LoRA, the adapter is non-linear and sits in sequence with the base's layers, so it
cannot be folded into W after training: inference always pays for the extra layers.

Near-identity initialisation. With W_up = 0 and b_up = 0 the adapter returns h unchanged, so the
adapted model computes exactly what the base computes: fine-tuning starts from the pretrained
function, not from a damaged copy of it. W_down is small and random so that the features
f(W_down h) differ from each other; the first gradient step then moves W_up (its gradient is
g f(W_down h)^T, not zero), and from the next step on W_down learns too.

Placement. Houlsby et al. put two adapters per block (after the attention projection and after the
MLP's); Pfeiffer et al. found that one per block, after the MLP, keeps most of the quality with half
the adapters, so training and inference run faster.

How quality is measured. Topic classification (five topics), because on sentiment the tiny base's
adapters reach the ceiling of accuracy and every setting looks alike. Every trained setting runs with
three seeds at the adapters' default learning rate (1e-2, from the recorded sweep) and the standard
budget (160 steps of batch 16, 1000 training examples), and is scored on 300 test items: accuracy,
and the label loss, -log p(right topic), p normalised over the five topic words. Two settings are
called different only when the package's noise rule (Welch's t over the seeds, minitune/stats.py)
says so; otherwise the lesson says there is no difference beyond noise at this scale.
"""

from __future__ import annotations

import copy

import torch

from minitune.bench import inference_case, run_interleaved, training_case
from minitune.finetune import supervised
from minitune.lesson import Lesson, held_out_text, perplexity
from minitune.stats import best_of
from minitune.strategies import AdapterConfig, apply_strategy, load_trainable, save_trainable, trainable_parameters
from minitune.strategies.adapter import PLACEMENTS, Bottleneck
from minitune.studies import (BATCH, EVALS, compare_runs, curve, draw_curves, draw_quality, steps,
                              study_task, test_scores, validation_batches, fine_tune_seeds)
from minitune.train import TrainConfig, evaluate_loss, train

TASK = "topic"
M = AdapterConfig().bottleneck  # the package default width, used by parts 2 to 4


def closed_form(config, m: int, placement: str, train_layernorm: bool = False) -> int:
    """(2 d m + d + m) per adapter x adapters per block x blocks (+ 2 d per LayerNorm if they train)."""
    d, L = config.n_embd, config.n_layer
    per_adapter = 2 * d * m + d + m
    layernorms = (2 * L + 1) * 2 * d if train_layernorm else 0  # ln_1, ln_2 per block and ln_f: weight + bias
    return L * len(PLACEMENTS[placement]) * per_adapter + layernorms


# ---------------------------------------------------------------------------------------- 1. bottleneck
def bottleneck_sweep(lesson: Lesson, task, base_config) -> dict:
    lesson.section("1. Bottleneck width: parameters and quality, m = 1 ... 256")
    base, _ = lesson.load_base()
    counted = {m: trainable_parameters(apply_strategy(copy.deepcopy(base), AdapterConfig(bottleneck=m)))
               for m in (1, 4, 16, 64, 256)}
    exact = all(t == closed_form(base_config, m, "houlsby") for m, (t, _) in counted.items())
    lesson.conclude(f"The trainable count equalled n_layer x 2 x (2 d m + d + m) exactly for all {len(counted)} "
                    f"widths from 1 to 256." if exact else
                    "The trainable count did NOT match the closed form: see the table.")
    widths = lesson.size((1, M), (1, 4, M, 64, 256))
    runs = {m: fine_tune_seeds(lesson, task, AdapterConfig(bottleneck=m), f"bottleneck-{m}") for m in widths}
    rows = [{"m": m, "trainable": counted.get(m, (r.runs[0]["trainable"],))[0],
             "closed form": closed_form(base_config, m, "houlsby"),
             "% of base": 100 * r.runs[0]["trainable"] / (r.runs[0]["total"] - r.runs[0]["trainable"]),
             "test accuracy": r["accuracy"], "test label loss": r["label loss"], "val loss": r["val loss"]}
            for m, r in runs.items()]
    lesson.table(f"Houlsby adapters (2 per block), {TASK}, lr {AdapterConfig.default_lr:g}, {steps(lesson)} steps",
                 rows, note=f"closed form: n_layer x 2 x (2 d m + d + m), d = {base_config.n_embd}")
    pick = best_of({m: r["label loss"] for m, r in runs.items()}, higher_is_better=False)
    lesson.record("bottleneck_best", {"best": pick.best, "tied": list(pick.tied)})
    lo, hi = widths[0], widths[-1]
    text, _ = compare_runs(lesson, runs[hi], runs[lo], (f"m = {hi}", f"m = {lo}"))
    narrowest = min(pick.tied)
    grew = runs[hi].runs[0]["trainable"] / runs[lo].runs[0]["trainable"]
    others = [f"m = {m}" for m in pick.tied if m != pick.best]
    lesson.conclude(
        f"From m = {lo} to m = {hi} the adapters grew {grew:.0f}x; {text}. The lowest mean test label loss was at "
        f"m = {pick.best}" + (f"; the noise rule could not tell {', '.join(others)} from it." if others else
                              ", beyond noise of every other width."))
    lesson.conclude(
        f"The narrowest width within noise of the best was m = {narrowest}"
        + (f", well below the model's width d = {base_config.n_embd}: no loss of quality from a narrow bottleneck "
           "was shown here, as Houlsby et al. found on their larger models." if narrowest < base_config.n_embd // 2
           else f", close to the model's width d = {base_config.n_embd}, hardly a bottleneck: unlike on Houlsby et "
           "al.'s larger models, the narrower adapters lost quality here.")
        + (f" ({len(widths) - 1} widths were each compared with the best at the 5% level, so one in twenty such "
           "comparisons comes out different by chance.)" if len(widths) > 2 else ""))
    lesson.plot("bottleneck_sweep.png", lambda ax: draw_quality(
        ax, widths, list(runs.values()), "bottleneck m (log scale)", f"Adapter bottleneck on {TASK} (Houlsby placement)"))
    return runs


# ----------------------------------------------------------------------------------------- 2. placement
def placement(lesson: Lesson, task, base_config, runs: dict) -> None:
    lesson.section("2. Placement: two adapters per block (Houlsby) or one (Pfeiffer)")
    variants = [("houlsby", M), ("pfeiffer", M), ("pfeiffer", 2 * M)]  # the last has about Houlsby's budget
    results = {(where, width): runs[width] if where == "houlsby" else
               fine_tune_seeds(lesson, task, AdapterConfig(bottleneck=width, placement=where), f"{where}-{width}")
               for where, width in variants}
    base, _ = lesson.load_base()
    models = {f"{w}, m = {k}": apply_strategy(copy.deepcopy(base), AdapterConfig(bottleneck=k, placement=w))
              for w, k in variants}
    device = torch.device(lesson.device)
    step_cases = [training_case("lesson", name, model, BATCH, device) for name, model in models.items()]
    forwards = [inference_case("lesson", name, model, device) for name, model in {"base": base, **models}.items()]
    for cases in (step_cases, forwards):
        run_interleaved(cases, rounds=lesson.size(3, 7), device=device, min_group_s=lesson.size(0.05, 0.4),
                        log=lambda s: None)
    step_ms = {c.name: 1000 * c.median for c in step_cases}
    forward_ms = {c.name: 1000 * c.median for c in forwards}
    rows = []
    for (where, width), run in results.items():
        name = f"{where}, m = {width}"
        rows.append({"placement": name, "adapters": base_config.n_layer * len(PLACEMENTS[where]),
                     "trainable": run.runs[0]["trainable"], "closed form": closed_form(base_config, width, where),
                     "test accuracy": run["accuracy"], "test label loss": run["label loss"],
                     "train step ms": step_ms[name],
                     "forward +% vs base": 100 * (forward_ms[name] / forward_ms["base"] - 1)})
    lesson.table(f"Placement ({TASK}). Step: batch {BATCH} x full context; forward: batch 1 x full context, the base "
                 f"alone {forward_ms['base']:.2f} ms; medians of interleaved rounds (one timing run)", rows)
    lesson.record("forward_ms", forward_ms)
    h, p, p2 = rows
    text, _ = compare_runs(lesson, results[("pfeiffer", M)], results[("houlsby", M)],
                           (f"Pfeiffer m = {M}", f"Houlsby m = {M}"))
    lesson.conclude(
        f"At m = {M}, one adapter per block (Pfeiffer) trained {p['trainable'] / h['trainable']:.0%} of Houlsby's "
        f"parameters; its training step took {p['train step ms'] / h['train step ms']:.0%} of Houlsby's time and its "
        f"forward pass added {p['forward +% vs base']:.1f}% to the base's against Houlsby's "
        f"{h['forward +% vs base']:.1f}%. Quality: {text}.")
    text2, loss2 = compare_runs(lesson, results[("pfeiffer", 2 * M)], results[("houlsby", M)],
                                (f"Pfeiffer m = {2 * M}", f"Houlsby m = {M}"))
    lesson.conclude(
        f"Given about Houlsby's budget (m = {2 * M}: {p2['trainable']:,} parameters against {h['trainable']:,}), "
        f"one adapter per block: {text2}. Pfeiffer et al. report that one adapter per block keeps the quality"
        + (f"; here {loss2.higher} had the higher label loss beyond noise, so at this scale the placement made a "
           "difference." if loss2.beyond_noise else
           f"; here the noise rule found no difference ({len(lesson.seeds)} seeds each), which agrees with them but "
           "cannot show the two are equal."))


# ------------------------------------------------------------------------------------- 3. initialisation
def _train_model(lesson: Lesson, task, model, enc, name: str, seed: int) -> dict:
    """Fine-tune an already adapted (here, deliberately altered) model exactly as finetune() would."""
    n, lr = steps(lesson), AdapterConfig.default_lr
    cfg = TrainConfig(max_steps=n, lr=lr, min_lr=lr / 10, warmup_steps=n // 10, eval_every=max(1, n // EVALS),
                      seed=seed, device=lesson.device, quiet=True, checkpoint_every=0)
    out = lesson.run_dir(name)
    room = model.max_input_tokens
    result = train(model, supervised(task, "train", enc, room, BATCH, seed), validation_batches(task, enc, model), cfg,
                   out_dir=out, save=save_trainable)
    model = load_trainable(model, out / "best")  # the best checkpoint, as finetune() keeps
    scores = {**test_scores(lesson, model, enc, task), "val loss": result.best_val_loss, "history": result.history}
    print(f"  {name}: test accuracy {scores['accuracy']:.3f}, label loss {scores['label loss']:.4f}", flush=True)
    return scores


def _altered(alter):
    """alter(bottleneck) applied to every adapter of a model, without tracking gradients."""
    def apply_to(model) -> None:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, Bottleneck):
                    alter(module)
    return apply_to


def initialisation(lesson: Lesson, task, runs: dict) -> None:
    lesson.section("3. Near-identity initialisation, and what happens without it")
    base, enc = lesson.load_base()
    x, _ = next(validation_batches(task, enc, base).eval_batches())
    x = x.to(lesson.device)
    general = held_out_text(lesson.size(60_000, 300_000))  # text like the base's own, not seen in pretraining
    with torch.no_grad():
        base_logits = base(x)[0]
    base_loss = evaluate_loss(base, validation_batches(task, enc, base).eval_batches(), lesson.device)
    base_ppl = perplexity(base, enc, general, lesson.device, max_batches=8)
    config = AdapterConfig(bottleneck=M)

    def start(seed: int, alter) -> dict:
        """Where a seed's adapted model starts: its logits against the base's, task loss, general perplexity."""
        torch.manual_seed(seed)  # finetune() seeds the same way before applying the strategy
        model = apply_strategy(copy.deepcopy(base), config)
        if alter is not None:
            alter(model)
        with torch.no_grad():
            diff = float((model(x)[0] - base_logits).abs().max())
        return model, {"max |logit - base|": diff,
                       "task val loss": evaluate_loss(model, validation_batches(task, enc, model).eval_batches(),
                                                      lesson.device),
                       "general perplexity": perplexity(model, enc, general, lesson.device, max_batches=8)}

    def run(folder, alter):
        def one(seed: int) -> dict:
            model, at_start = start(seed, alter)
            trained = runs[M].runs[lesson.seeds.index(seed)] if alter is None else \
                _train_model(lesson, task, model, enc, f"{folder}-seed{seed}", seed)
            return {**{f"start {k}": v for k, v in at_start.items()}, **trained}
        return lesson.over_seeds(one)

    normal = lambda std: _altered(lambda b: torch.nn.init.normal_(b.up.weight, std=std))  # noqa: E731
    inits = {"identity (W_up = 0, package default)": run(None, None),
             "W_up ~ N(0, 0.02^2)": run("init-up-0.02", normal(0.02)),
             "W_up ~ N(0, 0.2^2)": run("init-up-0.2", normal(0.2)),
             "nn.Linear's default init, down and up": run("init-linear-default", _altered(
                 lambda b: (b.down.reset_parameters(), b.up.reset_parameters())))}
    rows = [{"initialisation": name, "step 0: max |logit - base|": f"{r['start max |logit - base|'].max:.1e}",
             "step 0: task val loss": r["start task val loss"],
             "step 0: general perplexity": r["start general perplexity"],
             "trained: test accuracy": r["accuracy"], "trained: test label loss": r["label loss"]}
            for name, r in inits.items()]
    lesson.record("step0_base", {"task val loss": base_loss, "general perplexity": base_ppl})
    lesson.table(f"Houlsby adapters, m = {M}. The base: task val loss {base_loss:.4f}, general perplexity "
                 f"{base_ppl:.3f}", rows,
                 note="step 0: before training (max |logit - base|: the largest over the seeds); task val loss: mean "
                      "cross-entropy of the target tokens\n(topic word, newline, end of text); general perplexity: on "
                      "held-out tiny-world text, what the base was pretrained to model")
    names = list(inits)
    ident, others = inits[names[0]], names[1:]
    exact = (ident["start max |logit - base|"].max == 0
             and ident["start task val loss"].values == (base_loss,) * len(ident)
             and ident["start general perplexity"].values == (base_ppl,) * len(ident))
    lesson.conclude(
        f"With W_up = 0 the adapted model's logits differed from the base's by at most "
        f"{ident['start max |logit - base|'].max:.1e} in every seed; its task loss and its perplexity on general text "
        + ("were the base's to the last bit: it starts as the base, exactly." if exact else
           "were NOT exactly the base's (a bug?)."))
    worse = [k for k in others if inits[k]["start general perplexity"].min > base_ppl]
    lesson.conclude(
        "Before any training, the random starts took the general-text perplexity from "
        f"{base_ppl:.3f} to " + ", ".join(f"{inits[k]['start general perplexity']} ({k})" for k in others)
        + f": {len(worse)} of {len(others)} made the base worse at what it was pretrained for in every seed. Their "
        "task loss at step 0 was " + ", ".join(f"{inits[k]['start task val loss']}" for k in others)
        + f" against the base's {base_loss:.4f}.")
    texts, losses = [], []
    for k in others:
        text, loss = compare_runs(lesson, inits[k], ident, (k, "identity"))
        texts.append(text)
        losses.append(loss)
    hurt = [k for k, loss in zip(others, losses) if loss.winner == k]
    lesson.conclude("After the same training, against the identity start: " + " | ".join(texts) + ".")
    lesson.conclude(
        f"{len(hurt)} of {len(others)} random starts ended with a higher test label loss than the identity start "
        "beyond noise" + (f" ({', '.join(hurt)}): the lasting harm Houlsby et al. report from larger initial scales."
                          if hurt else ": at this scale training recovered from every start tried, so here the "
                          "near-identity start decided where training began more than where it ended (Houlsby et "
                          "al. report lasting harm from larger initial scales on their tasks)."))
    curves = {name: curve(r, r["start task val loss"].values) for name, r in inits.items()}
    lesson.plot("init_curves.png", lambda ax: draw_curves(ax, curves, "Validation loss from step 0, by adapter "
                                                                       "initialisation", base_loss))


# -------------------------------------------------------------------------------------- 4. LayerNorms
def layernorms(lesson: Lesson, task, base_config, runs: dict) -> None:
    lesson.section("4. Training the LayerNorms too")
    with_ln = fine_tune_seeds(lesson, task, AdapterConfig(bottleneck=M, train_layernorm=True), f"layernorm-{M}")
    rows = [{"LayerNorms": name, "trainable": run.runs[0]["trainable"],
             "closed form": closed_form(base_config, M, "houlsby", ln),
             "test accuracy": run["accuracy"], "test label loss": run["label loss"]}
            for name, run, ln in (("frozen", runs[M], False), ("trained", with_ln, True))]
    lesson.table(f"Houlsby adapters, m = {M}, with and without the LayerNorms' weights and biases", rows)
    off, on = rows
    text, _ = compare_runs(lesson, with_ln, runs[M], ("LayerNorms trained", "frozen"))
    lesson.conclude(f"Training the LayerNorms added {on['trainable'] - off['trainable']:,} parameters; {text}.")


def main(argv: list[str] | None = None) -> dict:
    lesson = Lesson.start(4, "Bottleneck adapters", __doc__, argv)
    task = study_task(lesson, TASK)
    base_config = lesson.load_base()[0].config
    runs = bottleneck_sweep(lesson, task, base_config)
    placement(lesson, task, base_config, runs)
    initialisation(lesson, task, runs)
    layernorms(lesson, task, base_config, runs)
    return lesson.finish()


if __name__ == "__main__":
    main()
