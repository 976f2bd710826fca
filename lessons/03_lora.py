"""Lesson 3: LoRA, low-rank updates.

What this lesson shows, by measuring it on your machine:
  1. LoRA trains exactly r (in + out) numbers per adapted layer (the count is checked against the
     closed form), and how quality on a task changes as the rank r goes from 1 to 64, next to full
     fine-tuning;
  2. why the update is scaled by alpha / r: with that scale, the first steps change the model by about
     the same amount at every rank, so one learning rate serves them all; with a fixed scale the change
     grows with r. The rank-stabilised variant (rsLoRA, alpha / sqrt(r)) is measured beside both;
  3. which weight matrices to adapt (attention's c_attn or c_proj, the MLP's c_fc or c_proj, or all
     four) at equal rank, and, at an equal parameter budget, one matrix at a high rank against four at
     a low rank;
  4. merging: W + s B A folded into W gives the same logits as the unmerged model, loads into a plain
     GPT, and makes inference as fast as the base, while the unmerged model pays for two extra thin
     matmuls per adapted layer;
  5. the file a task needs: the LoRA tensors against a full copy of the model.

Read alongside: minitune/strategies/lora.py (the whole method, ~200 lines), and save_trainable /
trainable_parameters in minitune/strategies/__init__.py.

Run:  python lessons/03_lora.py            about 4 minutes on 2 CPU cores, with the tiny base cached
      python lessons/03_lora.py --quick    about 15 seconds, nano base and toy sizes

The idea. Fine-tuning changes a weight matrix W0 (out x in) into W0 + dW. Full fine-tuning learns dW
freely: in * out numbers per matrix. LoRA bets that the change a task needs has low rank, and writes it
as a product of two thin matrices:

    h = W0 x + s * B (A x)          A: r x in (random at the start)   B: out x r (zero at the start)

    trainable per matrix:   r (in + out)   instead of   in * out
    e.g. c_attn of the tiny base (in 128, out 384):  r = 8 gives 4,096 numbers against 49,152

B = 0 at the start, so the adapted model begins exactly as the base and training moves it away from
there. W0 never changes and never gets a gradient; only A and B do (and AdamW keeps moments for them
alone, which is where LoRA's memory saving comes from: lesson 2).

Why the scale s = alpha / r. AdamW moves each entry of B by roughly the learning rate per step, whatever
the size of its gradient. In the first steps column k of B moves along the output's gradient g, signed
by the k-th feature a_k = (A x)_k, so after t steps B A x ~ t * lr * g * sum_k |a_k|: r terms that add
up with the same sign. At a fixed learning rate the early change of the output thus grows about in
proportion to r, and dividing by r cancels that: with s = alpha / r, one learning rate (and one alpha)
serves every rank. rsLoRA (Kalajdzievski, 2023) argues that later in training the r terms stop being
aligned, that the right divisor is then sqrt(r), and that with alpha / r a large rank learns too slowly
to pay off. Part 2 measures the three choices side by side, early and at the end of training.

Merging. After training, W = W0 + s B A is one matrix of the base's shape: fold it in once and the
model is a plain GPT again, with no extra work per token. Take it out (W - s B A) and the base is back,
up to float rounding, ready for another task's A and B.

How quality is measured. Sentiment is a three-way classification: accuracy on the test reviews, and
the test label loss, -log p(right label | review) with p normalised over the three label words. The
label loss is the smoother of the two (it sees how sure the model is, not only whether it is right),
so small differences show in it first. Every comparison is set against the spread of three seeds.
"""

from __future__ import annotations

import copy
import math

import torch

from minitune.bench import inference_case, run_interleaved
from minitune.checkpoint import read_json
from minitune.data.tasks import load_task
from minitune.evaluate import classify_scores
from minitune.finetune import finetune, supervised
from minitune.lesson import Lesson, seed_spread
from minitune.memory import file_size, human_bytes
from minitune.model import GPT, count_parameters
from minitune.pretrain import load_run
from minitune.strategies import (FullConfig, LoRAConfig, apply_strategy, merge, save_trainable,
                                 trainable_parameters, unmerge)
from minitune.strategies.lora import lora_layers, merged_state_dict
from minitune.train import TrainConfig, seed_everything, train

TASK = "sentiment"
ALPHA = 16
# (name, LoRAConfig.targets): the four linear layers of a block, and all of them
TARGETS = [("c_attn (q, k, v)", ("c_attn",)), ("attn.c_proj", ("attn.c_proj",)), ("mlp.c_fc", ("mlp.c_fc",)),
           ("mlp.c_proj", ("mlp.c_proj",)), ("all four", ("c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))]


def layer_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer of a block, from the model's width alone (GPT-2's layout)."""
    d = config.n_embd
    return {"c_attn": (d, 3 * d), "attn.c_proj": (d, d), "mlp.c_fc": (d, 4 * d), "mlp.c_proj": (4 * d, d)}


def closed_form(config, r: int, targets: tuple[str, ...]) -> int:
    """r (in + out) per adapted layer, summed over the blocks."""
    shapes = layer_shapes(config)
    return config.n_layer * sum(r * sum(shapes[t]) for t in targets)



def _train(lesson: Lesson, task, config, name: str, seed: int = 0) -> dict:
    """Fine-tune the base with `config`; the model, its validation-loss history and its test scores."""
    model, enc, out = finetune(lesson.base, task, config, lesson.run_dir(name), max_steps=lesson.size(20, 160),
                               seed=seed, device=lesson.device, eval_every=lesson.size(5, 20), quiet=True,
                               checkpoint_every=0)
    run = read_json(out / "run.json")
    limit = lesson.size(32, 200)
    result = {"model": model, **classify_scores(model, enc, task.test[:limit], task.labels, device=lesson.device)[1],
              "history": run["history"],
              "trainable": run["trainable_params"], "base params": run["total_params"] - run["trainable_params"]}
    if isinstance(config, FullConfig):
        result["base params"] = run["total_params"]
    print(f"  {name}: test accuracy {result['accuracy']:.3f}, label loss {result['label loss']:.4f} "
          f"({run['seconds']:.0f}s)", flush=True)
    return result



# --------------------------------------------------------------------------------------------- 1. rank
def rank_sweep(lesson: Lesson, task, base_config) -> tuple[dict, dict]:
    lesson.section("1. Rank: trainable parameters and quality, r = 1 ... 64")
    ranks = lesson.size((1, 4, 16), (1, 2, 4, 8, 16, 32, 64))
    runs = {r: _train(lesson, task, LoRAConfig(r=r, alpha=ALPHA), f"rank-{r}") for r in ranks}
    full = _train(lesson, task, FullConfig(), "full")
    mid = ranks[len(ranks) // 2]
    noise = seed_spread([runs[mid]] + [_train(lesson, task, LoRAConfig(r=mid, alpha=ALPHA), f"rank-{mid}-seed{s}", seed=s)
                                       for s in (1, 2)])
    lesson.record(f"seed_spread_r{mid}", noise)
    rows = [{"method": f"LoRA r = {r}", "trainable": run["trainable"],
             "closed form": closed_form(base_config, r, ("c_attn",)),
             "% of base": 100 * run["trainable"] / run["base params"], "test accuracy": run["accuracy"],
             "test label loss": run["label loss"]} for r, run in runs.items()]
    rows.append({"method": "full FT", "trainable": full["trainable"], "closed form": count_parameters(base_config),
                 "% of base": 100.0, "test accuracy": full["accuracy"], "test label loss": full["label loss"]})
    lesson.table(f"LoRA on c_attn, {TASK}, alpha = {ALPHA} (s = alpha / r), same steps and learning rate", rows,
                 note=f"closed form: n_layer x r x (in + out) for LoRA, count_parameters(config) for full FT.\n"
                      f"Seed-to-seed spread at r = {mid} (3 seeds): accuracy {noise['accuracy']:.3f}, label loss "
                      f"{noise['label loss']:.4f}. Differences smaller than this are noise.")
    lora_rows = rows[:-1]
    exact = all(r["trainable"] == r["closed form"] for r in rows)
    lesson.conclude(f"The trainable count equalled the closed form exactly in all {len(rows)} rows."
                    if exact else "The trainable count did NOT match the closed form: see the table.")
    best_i = max(range(len(ranks)), key=lambda i: lora_rows[i]["test accuracy"])
    enough_i = next(i for i in range(len(ranks))
                    if lora_rows[i]["test accuracy"] >= lora_rows[best_i]["test accuracy"] - noise["accuracy"])
    best, enough = lora_rows[best_i], lora_rows[enough_i]
    lo, hi = lora_rows[0], lora_rows[-1]
    lesson.conclude(
        f"From r = {ranks[0]} to r = {ranks[-1]} the trainable count grew {hi['trainable'] / lo['trainable']:.0f}x; test "
        f"accuracy went from {lo['test accuracy']:.3f} to {hi['test accuracy']:.3f} (label loss {lo['test label loss']:.3f} "
        f"to {hi['test label loss']:.3f}). The best accuracy was {best['test accuracy']:.3f} ({best['method']}), and "
        f"{enough['method']} was the smallest rank within the seed spread of it"
        + (", so a small rank was enough, as the LoRA paper found for GPT-3 (r = 1 to 8 competitive)."
           if ranks[enough_i] <= mid else
           ": here a large rank was needed, which the LoRA paper did not see with GPT-3 (r = 1 to 8 sufficed)."))
    worse = [f"r = {r} ({row['test accuracy']:.3f})" for r, row in zip(ranks, lora_rows)
             if r > ranks[best_i] and row["test accuracy"] < best["test accuracy"] - noise["accuracy"]]
    lesson.conclude(
        (f"Ranks above the best did worse beyond seed noise: {', '.join(worse)}. With s = alpha / r and one "
         "learning rate, a larger rank takes smaller steps, the slow learning rsLoRA blames on the 1/r (part 2 "
         "measures it)." if worse else
         f"No rank above r = {ranks[best_i]} did worse than it beyond seed noise."))
    lesson.conclude(
        f"Full fine-tuning reached accuracy {full['accuracy']:.3f} (label loss {full['label loss']:.3f}), training "
        f"{full['trainable'] / best['trainable']:.0f}x more parameters than {best['method']}; "
        + ("the best LoRA was within the seed spread of it." if best["test accuracy"] >= full["accuracy"] - noise["accuracy"]
           else f"the best LoRA stayed {full['accuracy'] - best['test accuracy']:.3f} below it in this many steps."))
    lesson.plot("rank_sweep.png", lambda ax: _draw_rank(ax, lora_rows, rows[-1], ranks))
    return runs, noise


def _draw_rank(ax, rows: list[dict], full: dict, ranks) -> None:
    x = [r["trainable"] for r in rows]
    ax.plot(x, [r["test accuracy"] for r in rows], "o-", color="tab:blue", label="LoRA: test accuracy")
    for r, row in zip(ranks, rows):
        ax.annotate(f"r={r}", (row["trainable"], row["test accuracy"]), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=8)
    ax.plot([full["trainable"]], [full["test accuracy"]], "s", color="tab:blue", label="full FT: test accuracy")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("test accuracy", color="tab:blue")
    loss_ax = ax.twinx()
    loss_ax.plot(x, [r["test label loss"] for r in rows], "^--", color="tab:red", label="LoRA: label loss")
    loss_ax.plot([full["trainable"]], [full["test label loss"]], "s", color="tab:red", mfc="none",
                 label="full FT: label loss")
    loss_ax.set_ylabel("test label loss", color="tab:red")
    handles = ax.get_legend_handles_labels()[0] + loss_ax.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="center right")
    ax.set_title(f"LoRA rank sweep on {TASK} (c_attn)")


# ------------------------------------------------------------------------------------------ 2. scaling
def early_change(lesson: Lesson, task, config, steps: int) -> float:
    """RMS change of the logits (vs the base) after `steps` AdamW steps at a constant learning rate."""
    base, enc, _ = load_run(lesson.base, lesson.device)
    seed_everything(0)
    model = apply_strategy(copy.deepcopy(base), config)
    data = supervised(task, "train", enc, model.max_input_tokens, 16)
    lr = LoRAConfig.default_lr
    train(model, data, None, TrainConfig(max_steps=steps, lr=lr, min_lr=lr, warmup_steps=0, device=lesson.device,
                                         quiet=True))
    x, _ = next(supervised(task, "validation", enc, model.max_input_tokens, 16).eval_batches())
    with torch.no_grad():
        x = x.to(lesson.device)
        return float((model.eval()(x)[0] - base(x)[0]).pow(2).mean().sqrt())


def scaling(lesson: Lesson, task, runs: dict, noise: dict) -> None:
    lesson.section("2. The scale: alpha / r, a fixed s, and rsLoRA's alpha / sqrt(r)")
    ranks = sorted(runs)
    rs = (ranks[0], ranks[len(ranks) // 2], ranks[-1])
    ref = rs[1]  # the three schemes agree here: s = ALPHA / ref
    s_ref = ALPHA / ref
    fixed, rslora = f"fixed s = {s_ref:g}", "rsLoRA alpha / sqrt(r)"
    schemes = {"alpha / r": lambda r: LoRAConfig(r=r, alpha=ALPHA),
               fixed: lambda r: LoRAConfig(r=r, alpha=s_ref * r),
               rslora: lambda r: LoRAConfig(r=r, alpha=s_ref * math.sqrt(ref), rslora=True)}
    first = lesson.size(3, 10)
    results = {}
    for scheme, make in schemes.items():
        for r in rs:
            config = make(r)
            made = r == ref or scheme == "alpha / r"  # those runs were made in part 1
            run = runs[r] if made else _train(lesson, task, config, f"scale-{scheme.split()[0]}-{r}")
            results[(scheme, r)] = {**run, "s": config.scaling, "early": early_change(lesson, task, config, first)}
    rows = [{"scheme": scheme, "r": r, "s": run["s"], f"logit change after {first} steps": run["early"],
             "test accuracy": run["accuracy"], "test label loss": run["label loss"]}
            for (scheme, r), run in results.items()]
    lesson.table(f"Same learning rate ({LoRAConfig.default_lr}) for every row; the schemes agree at r = {ref}", rows,
                 note="logit change: root-mean-square difference from the base's logits on a validation batch")
    ratio = {k: results[(k, rs[-1])]["early"] / results[(k, rs[0])]["early"] for k in schemes}
    spread = {k: max(results[(k, r)]["accuracy"] for r in rs) - min(results[(k, r)]["accuracy"] for r in rs)
              for k in schemes}
    lesson.record("scaling", {"early_change_ratio_largest_to_smallest_rank": ratio, "accuracy_spread_over_ranks": spread})
    flattest = min(schemes, key=lambda k: abs(math.log(ratio[k])))
    lesson.conclude(
        f"After {first} steps, going from r = {rs[0]} to r = {rs[-1]} multiplied the change of the logits by "
        f"{ratio['alpha / r']:.2f} with alpha / r, {ratio[fixed]:.2f} with {fixed} and {ratio[rslora]:.2f} with rsLoRA"
        + (": dividing by r is what keeps the first steps the same size at every rank, as the argument above predicts."
           if flattest == "alpha / r" else
           f": here {flattest} kept the first steps closest in size across ranks, not alpha / r as the argument above "
           f"predicts (that argument assumes the r terms stay aligned, which they need not)."))
    steadiest = min(schemes, key=lambda k: spread[k])
    lesson.conclude(
        f"After training, test accuracy across the three ranks spread over {spread['alpha / r']:.3f} with alpha / r, "
        f"{spread[fixed]:.3f} with {fixed} and {spread[rslora]:.3f} with rsLoRA (seed noise {noise['accuracy']:.3f}); "
        + ("alpha / r kept the three ranks' results closest together, as the LoRA paper intends."
           if steadiest == "alpha / r" else
           f"{steadiest} gave the most rank-independent results here, not alpha / r."))
    top = max(rows, key=lambda row: (row["test accuracy"], -row["test label loss"]))
    lesson.conclude(
        f"The best of these runs was {top['scheme']} at r = {top['r']} (accuracy {top['test accuracy']:.3f}, s = "
        f"{top['s']:g})"
        + (f": a larger scale than alpha / r gives that rank (s = {ALPHA / top['r']:g}). At a fixed learning rate alpha / r "
           "under-scales large ranks, which is rsLoRA's point." if top["r"] == rs[-1] and top["scheme"] != "alpha / r"
           else "."))
    big = {k: results[(k, rs[-1])] for k in schemes}
    lesson.conclude(
        f"At r = {rs[-1]}, rsLoRA reached accuracy {big[rslora]['accuracy']:.3f} against {big['alpha / r']['accuracy']:.3f} "
        f"for alpha / r: " + ("the larger scale helped the large rank, as the rsLoRA paper reports."
                              if big[rslora]["accuracy"] > big["alpha / r"]["accuracy"] + noise["accuracy"] else
                              "no gain beyond seed noise at this scale, though the rsLoRA paper reports one for "
                              "large ranks."))
    lesson.plot("scaling_curves.png", lambda ax: _draw_curves(ax, results, rs, fixed), figsize=(6.4, 4.4))


def _draw_curves(ax, results: dict, rs: tuple[int, ...], fixed: str) -> None:
    styles = {"alpha / r": "-", fixed: "--"}
    colors = dict(zip(rs, ("tab:blue", "tab:orange", "tab:green")))
    for (scheme, r), run in results.items():
        if r == rs[1] and scheme != "alpha / r":
            continue  # the same run as alpha / r at this rank
        steps = [h["step"] for h in run["history"]]
        ax.plot(steps, [h["val_loss"] for h in run["history"]], styles.get(scheme, ":"), color=colors[r],
                label=f"{scheme}, r={r}" + (" (all three)" if r == rs[1] else ""))
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (every target token)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Loss curves: colour = rank, line = scaling scheme")


# ------------------------------------------------------------------------------------------ 3. targets
def targets(lesson: Lesson, task, base_config, runs: dict, noise: dict):
    lesson.section("3. Which matrices to adapt")
    r = sorted(runs)[len(runs) // 2]
    rows, models = [], {}
    for name, tgt in TARGETS:
        run = runs[r] if tgt == ("c_attn",) else _train(lesson, task, LoRAConfig(r=r, alpha=ALPHA, targets=tgt),
                                                         "targets-" + "+".join(tgt))
        models[name] = run["model"]
        rows.append({"adapted": name, "r": r, "trainable": run["trainable"], "closed form": closed_form(base_config, r, tgt),
                     "test accuracy": run["accuracy"], "test label loss": run["label loss"]})
    lesson.table(f"LoRA at r = {r} on different weight matrices ({TASK})", rows)
    singles, every = rows[:-1], rows[-1]
    best = max(singles, key=lambda x: (x["test accuracy"], -x["test label loss"]))
    worst = min(singles, key=lambda x: (x["test accuracy"], -x["test label loss"]))
    lesson.conclude(
        f"Alone, {best['adapted']} did best (accuracy {best['test accuracy']:.3f}) and {worst['adapted']} worst "
        f"({worst['test accuracy']:.3f}); adapting all four ({every['trainable']:,} parameters) gave "
        f"{every['test accuracy']:.3f}, "
        + ("better than any single matrix beyond seed noise."
           if every["test accuracy"] > best["test accuracy"] + noise["accuracy"]
           else "no better than the best single matrix beyond seed noise."))
    # GPT-2's shapes make all four at rank r cost exactly what c_attn alone costs at rank 4r
    same = next((x for x in runs if closed_form(base_config, x, ("c_attn",)) == every["trainable"]), None)
    if same is not None:
        one = runs[same]
        lesson.conclude(
            f"At the same budget of {every['trainable']:,} parameters, c_attn alone at r = {same} reached accuracy "
            f"{one['accuracy']:.3f} (label loss {one['label loss']:.3f}) against {every['test accuracy']:.3f} "
            f"({every['test label loss']:.3f}) for all four matrices at r = {r}: "
            + ("spreading the budget over more matrices won, as the LoRA paper found (its Table 5)."
               if every["test accuracy"] > one["accuracy"] + noise["accuracy"] else
               "a higher rank on one matrix won here, the opposite of the LoRA paper's Table 5."
               if one["accuracy"] > every["test accuracy"] + noise["accuracy"] else
               "no difference beyond seed noise at this scale."))
    return models["all four"]


# ------------------------------------------------------------------------------------------ 4. merging
@torch.no_grad()
def merging(lesson: Lesson, task, model, enc) -> None:
    lesson.section("4. Merging: same outputs, no added latency")
    x, _ = next(supervised(task, "test", enc, model.max_input_tokens, batch_size=16).eval_batches())
    x = x.to(lesson.device)
    base, _ = lesson.load_base()
    before = model(x)[0]
    merge(model)
    after = model(x)[0]
    plain = GPT(model.config).to(lesson.device).eval()
    plain.load_state_dict(merged_state_dict(model), strict=True)  # no lora_ tensors left: a plain GPT-2
    as_plain = plain(x)[0]
    back = dict(unmerge(copy.deepcopy(model)).named_parameters())
    diffs = {"merged vs unmerged (same model)": float((after - before).abs().max()),
             "plain GPT with merged weights vs unmerged": float((as_plain - before).abs().max()),
             "weights after unmerge vs the base's weights": max(float((back[n] - p).abs().max())
                                                                for n, p in base.named_parameters())}
    lesson.record("merge_max_abs_difference", diffs)
    lesson.table(f"Logits on {x.size(0)} test prompts (largest |logit|: {float(before.abs().max()):.2f})",
                 [{"comparison": k, "max |difference|": f"{v:.1e}"} for k, v in diffs.items()])
    logits_diff, weights_diff = max(list(diffs.values())[:2]), list(diffs.values())[2]
    lesson.conclude(f"Merging changed no logit by more than {logits_diff:.1e} "
                    + ("(float32 rounding)" if logits_diff < 1e-3 else "(MORE than float32 rounding: a bug?)")
                    + f", and unmerging returned the base's weights to within {weights_diff:.1e}.")

    models = {"base": base.eval(), "LoRA unmerged": unmerge(copy.deepcopy(model)).eval(), "LoRA merged": model.eval()}
    cases = [inference_case("lesson", name, m, torch.device(lesson.device)) for name, m in models.items()]
    run_interleaved(cases, rounds=lesson.size(3, 9), device=torch.device(lesson.device),
                    min_group_s=lesson.size(0.05, 0.4), log=lambda s: None)
    ms = {c.name: 1000 * c.median for c in cases}
    spread = {c.name: 1000 * (max(c.times) - min(c.times)) for c in cases}
    rows = [{"model": n, "median ms per forward": ms[n], "% vs base": 100 * (ms[n] / ms["base"] - 1),
             "rounds' spread (max-min) ms": spread[n]} for n in models]
    layers = len(lora_layers(model))
    lesson.table(f"One forward pass, batch 1 x {model.config.block_size} tokens, {layers} adapted layers "
                 "(interleaved rounds, median)", rows)
    lesson.record("latency_ms", ms)
    merged, unmerged = rows[2]["% vs base"], rows[1]["% vs base"]
    noise = 100 * spread["base"] / ms["base"]
    lesson.conclude(f"Merged, the LoRA model ran {merged:+.1f}% against the base "
                    + ("(within the timing noise" if abs(merged) <= noise else "(OUTSIDE the timing noise")
                    + f": the base's own rounds spread over {noise:.0f}%); unmerged it ran {unmerged:+.1f}%, the cost of "
                    f"the two thin matmuls beside each of its {layers} adapted layers.")


# ------------------------------------------------------------------------------------------ 5. files
def file_sizes(lesson: Lesson, runs: dict, all_four) -> None:
    lesson.section("5. What a task costs on disk")
    full_bytes = file_size(lesson.base / "model.safetensors")
    base_params = trainable_parameters(all_four)[1] - trainable_parameters(all_four)[0]
    rows = [{"what is stored": "a full copy of the model (full FT)", "parameters": base_params,
             "4 bytes x parameters": 4 * base_params, "file bytes": full_bytes, "% of full copy": 100.0}]
    choices = [(f"LoRA r = {r}, c_attn", f"rank-{r}", runs[r]["model"]) for r in (min(runs), max(runs))]
    for name, folder, model in choices + [("LoRA r = %d, all four" % sorted(runs)[len(runs) // 2], "all-four", all_four)]:
        n = trainable_parameters(model)[0]
        size = file_size(save_trainable(model, lesson.out / "adapters" / folder) / "trainable.safetensors")
        rows.append({"what is stored": name, "parameters": n, "4 bytes x parameters": 4 * n, "file bytes": size,
                     "% of full copy": 100 * size / full_bytes})
    lesson.table("Bytes per task (safetensors: 4 bytes per float32 number, plus a small header naming the tensors)",
                 rows)
    smallest, largest = rows[1], max(rows[1:], key=lambda r: r["file bytes"])
    lesson.conclude(f"A full copy takes {human_bytes(full_bytes)}; a LoRA file takes {human_bytes(smallest['file bytes'])} "
                    f"to {human_bytes(largest['file bytes'])} ({smallest['% of full copy']:.2f}% to "
                    f"{largest['% of full copy']:.1f}% of it), so one base can serve many tasks, each a small file.")


def main(argv: list[str] | None = None) -> dict:
    lesson = Lesson.start(3, "LoRA: low-rank updates", __doc__, argv)
    sizes = lesson.size({"train": 64, "validation": 16, "test": 32}, {"train": 800, "validation": 64, "test": 200})
    task = load_task(TASK, sizes=sizes)
    base, enc = lesson.load_base()
    runs, noise = rank_sweep(lesson, task, base.config)
    scaling(lesson, task, runs, noise)
    all_four = targets(lesson, task, base.config, runs, noise)
    merging(lesson, task, copy.deepcopy(all_four), enc)
    file_sizes(lesson, runs, all_four)
    return lesson.finish()


if __name__ == "__main__":
    main()
