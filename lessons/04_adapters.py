"""Lesson 4: Bottleneck adapters.

What this lesson shows, by measuring it on your machine:
  1. an adapter trains 2 d m + d + m numbers (m = its bottleneck width; checked against the count), and
     how quality changes as m goes from 1 to 256;
  2. where the adapters go: two per block after attention and after the MLP (Houlsby et al., 2019)
     against one per block after the MLP (Pfeiffer et al., 2021): quality, parameters, step time;
  3. why the up-projection starts at zero: the adapted model then starts exactly as the base (its
     logits and its validation loss are the base's, to the last bit); adapters started at random
     instead (small, larger, and PyTorch's default for a Linear layer) are compared by where they
     start and where they end;
  4. whether also training the LayerNorms (2 d numbers each) helps.

Read alongside: minitune/strategies/adapter.py (the whole method, ~100 lines).

Run:  python lessons/04_adapters.py            about 3 minutes on 2 CPU cores, with the tiny base cached
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

How quality is measured: as in lesson 3, test accuracy on three-way sentiment and the test label loss
(-log p(right label), p normalised over the three label words), each set against the spread of three
seeds.
"""

from __future__ import annotations

import copy

import torch

from minitune.bench import inference_case, run_interleaved, training_case
from minitune.checkpoint import read_json
from minitune.data.tasks import load_task
from minitune.evaluate import classify_scores
from minitune.finetune import finetune, supervised
from minitune.lesson import Lesson, held_out_text, perplexity, seed_spread
from minitune.strategies import AdapterConfig, apply_strategy, load_trainable, save_trainable, trainable_parameters
from minitune.strategies.adapter import PLACEMENTS, Bottleneck
from minitune.train import TrainConfig, evaluate_loss, train

TASK = "sentiment"


def closed_form(config, m: int, placement: str, train_layernorm: bool = False) -> int:
    """(2 d m + d + m) per adapter x adapters per block x blocks (+ 2 d per LayerNorm if they train)."""
    d, L = config.n_embd, config.n_layer
    per_adapter = 2 * d * m + d + m
    layernorms = (2 * L + 1) * 2 * d if train_layernorm else 0  # ln_1, ln_2 per block and ln_f: weight + bias
    return L * len(PLACEMENTS[placement]) * per_adapter + layernorms




def _scored(lesson: Lesson, name: str, model, enc, task, history: list[dict]) -> dict:
    """Test accuracy and label loss of a trained model, with its trainable count and loss history."""
    limit = lesson.size(32, 200)
    trainable, total = trainable_parameters(model)
    result = {"model": model, **classify_scores(model, enc, task.test[:limit], task.labels, device=lesson.device)[1],
              "trainable": trainable,
              "base params": total - trainable, "history": history}
    print(f"  {name}: test accuracy {result['accuracy']:.3f}, label loss {result['label loss']:.4f}", flush=True)
    return result


def _train(lesson: Lesson, task, config: AdapterConfig, name: str, seed: int = 0) -> dict:
    """Fine-tune the base with `config` (minitune.finetune); the model, its losses and test scores."""
    model, enc, out = finetune(lesson.base, task, config, lesson.run_dir(name), max_steps=lesson.size(20, 160),
                               seed=seed, device=lesson.device, eval_every=lesson.size(5, 20), quiet=True,
                               checkpoint_every=0)
    return _scored(lesson, name, model, enc, task, read_json(out / "run.json")["history"])


def _train_model(lesson: Lesson, task, model, enc, name: str) -> dict:
    """Fine-tune an already adapted (here, deliberately altered) model with the settings finetune() uses."""
    steps, lr = lesson.size(20, 160), AdapterConfig.default_lr
    cfg = TrainConfig(max_steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=steps // 10,
                      eval_every=lesson.size(5, 20), device=lesson.device, quiet=True)
    room = model.max_input_tokens
    out = lesson.run_dir(name)
    result = train(model, supervised(task, "train", enc, room, 16), _val(task, enc, room), cfg, out_dir=out,
                   save=save_trainable)
    model = load_trainable(model, out / "best")  # the best checkpoint, as finetune() keeps
    return _scored(lesson, name, model, enc, task, result.history)


def _val(task, enc, room: int):
    return supervised(task, "validation", enc, room, 16, max_eval_examples=200)


def _better(a: dict, b: dict, noise: dict) -> str:
    """'better', 'worse' or 'same': a against b in test accuracy, beyond the seed spread."""
    if a["accuracy"] > b["accuracy"] + noise["accuracy"]:
        return "better"
    if a["accuracy"] < b["accuracy"] - noise["accuracy"]:
        return "worse"
    return "same"


# ---------------------------------------------------------------------------------------- 1. bottleneck
def bottleneck_sweep(lesson: Lesson, task, base_config) -> tuple[dict, dict]:
    lesson.section("1. Bottleneck width: parameters and quality, m = 1 ... 256")
    widths = lesson.size((1, 4, 16), (1, 4, 16, 64, 256))
    runs = {m: _train(lesson, task, AdapterConfig(bottleneck=m), f"bottleneck-{m}") for m in widths}
    mid = widths[len(widths) // 2]
    noise = seed_spread([runs[mid]] + [_train(lesson, task, AdapterConfig(bottleneck=mid), f"bottleneck-{mid}-seed{s}",
                                               seed=s) for s in (1, 2)])
    lesson.record(f"seed_spread_m{mid}", noise)
    rows = [{"m": m, "trainable": run["trainable"], "closed form": closed_form(base_config, m, "houlsby"),
             "% of base": 100 * run["trainable"] / run["base params"], "test accuracy": run["accuracy"],
             "test label loss": run["label loss"]} for m, run in runs.items()]
    lesson.table(f"Houlsby adapters (2 per block), {TASK}, same steps and learning rate", rows,
                 note=f"closed form: n_layer x 2 x (2 d m + d + m), d = {base_config.n_embd}.\n"
                      f"Seed-to-seed spread at m = {mid} (3 seeds): accuracy {noise['accuracy']:.3f}, label loss "
                      f"{noise['label loss']:.4f}. Differences smaller than this are noise.")
    exact = all(r["trainable"] == r["closed form"] for r in rows)
    lesson.conclude(f"The trainable count equalled n_layer x 2 x (2 d m + d + m) exactly for all {len(rows)} widths."
                    if exact else "The trainable count did NOT match the closed form: see the table.")
    best = max(rows, key=lambda r: (r["test accuracy"], -r["test label loss"]))
    enough = next(r for r in rows if r["test accuracy"] >= best["test accuracy"] - noise["accuracy"])
    lo, hi = rows[0], rows[-1]
    lesson.conclude(
        f"From m = {lo['m']} to m = {hi['m']} the adapters grew {hi['trainable'] / lo['trainable']:.0f}x; test accuracy "
        f"went from {lo['test accuracy']:.3f} to {hi['test accuracy']:.3f} (label loss {lo['test label loss']:.3f} to "
        f"{hi['test label loss']:.3f}). The best accuracy was {best['test accuracy']:.3f} at m = {best['m']}, and "
        f"m = {enough['m']} was the narrowest within the seed spread of it"
        + (", so a narrow bottleneck sufficed, as Houlsby et al. found (small m came within a fraction of a point "
           "of full fine-tuning on GLUE)." if enough["m"] < base_config.n_embd // 2 else
           f": quality kept improving until m approached the model's width d = {base_config.n_embd}, i.e. hardly a "
           "bottleneck at all, which is not what Houlsby et al. saw on their larger models."))
    lesson.plot("bottleneck_sweep.png", lambda ax: _draw_sweep(ax, rows))
    return runs, noise


def _draw_sweep(ax, rows: list[dict]) -> None:
    x = [r["trainable"] for r in rows]
    ax.plot(x, [r["test accuracy"] for r in rows], "o-", color="tab:blue", label="test accuracy")
    for r in rows:
        ax.annotate(f"m={r['m']}", (r["trainable"], r["test accuracy"]), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("test accuracy", color="tab:blue")
    loss_ax = ax.twinx()
    loss_ax.plot(x, [r["test label loss"] for r in rows], "^--", color="tab:red", label="test label loss")
    loss_ax.set_ylabel("test label loss", color="tab:red")
    handles = ax.get_legend_handles_labels()[0] + loss_ax.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="center right")
    ax.set_title(f"Adapter bottleneck sweep on {TASK} (Houlsby placement)")


# ----------------------------------------------------------------------------------------- 2. placement
def placement(lesson: Lesson, task, base_config, runs: dict, noise: dict) -> None:
    lesson.section("2. Placement: two adapters per block (Houlsby) or one (Pfeiffer)")
    m = sorted(runs)[len(runs) // 2]
    variants = [("houlsby", m), ("pfeiffer", m), ("pfeiffer", 2 * m)]  # the last has about Houlsby's budget
    results = {(where, width): runs[width] if where == "houlsby" else
               _train(lesson, task, AdapterConfig(bottleneck=width, placement=where), f"{where}-{width}")
               for where, width in variants}
    base, _ = lesson.load_base()
    models = {f"{w}, m = {k}": apply_strategy(copy.deepcopy(base), AdapterConfig(bottleneck=k, placement=w))
              for w, k in variants}
    device = torch.device(lesson.device)
    steps = [training_case("lesson", name, model, 16, device) for name, model in models.items()]
    forwards = [inference_case("lesson", name, model, device) for name, model in {"base": base, **models}.items()]
    for cases in (steps, forwards):
        run_interleaved(cases, rounds=lesson.size(3, 7), device=device, min_group_s=lesson.size(0.05, 0.4),
                        log=lambda s: None)
    step_ms = {c.name: 1000 * c.median for c in steps}
    forward_ms = {c.name: 1000 * c.median for c in forwards}
    rows = []
    for (where, width), run in results.items():
        name = f"{where}, m = {width}"
        rows.append({"placement": name, "adapters": base_config.n_layer * len(PLACEMENTS[where]),
                     "trainable": run["trainable"], "closed form": closed_form(base_config, width, where),
                     "test accuracy": run["accuracy"], "test label loss": run["label loss"],
                     "train step ms": step_ms[name],
                     "forward +% vs base": 100 * (forward_ms[name] / forward_ms["base"] - 1)})
    lesson.table(f"Placement ({TASK}). Step: batch 16 x full context; forward: batch 1 x full context, the base "
                 f"alone {forward_ms['base']:.2f} ms; medians of interleaved rounds", rows)
    lesson.record("forward_ms", forward_ms)
    h, p, p2 = rows
    verdict = _better(results[("pfeiffer", m)], results[("houlsby", m)], noise)
    lesson.conclude(
        f"At m = {m}, one adapter per block (Pfeiffer) trained {p['trainable'] / h['trainable']:.0%} of Houlsby's "
        f"parameters; its training step took {p['train step ms'] / h['train step ms']:.0%} of Houlsby's time and its "
        f"forward pass added {p['forward +% vs base']:.1f}% to the base's against Houlsby's {h['forward +% vs base']:.1f}%. "
        f"Its accuracy was {p['test accuracy']:.3f} against {h['test accuracy']:.3f}: "
        + {"same": "within seed noise, so one adapter kept the quality, as Pfeiffer et al. report.",
           "better": "better beyond seed noise.",
           "worse": "worse beyond seed noise: with half the parameters it lost quality here."}[verdict])
    verdict2 = _better(results[("pfeiffer", 2 * m)], results[("houlsby", m)], noise)
    lesson.conclude(
        f"Given about Houlsby's budget (m = {2 * m}: {p2['trainable']:,} parameters against {h['trainable']:,}), one "
        f"adapter per block reached accuracy {p2['test accuracy']:.3f} against {h['test accuracy']:.3f} "
        + {"same": "(within seed noise): at an equal budget one adapter per block did as well, as Pfeiffer et al. "
                   "found, and its forward pass stayed cheaper.",
           "better": "(better beyond seed noise): at an equal budget one adapter per block did better.",
           "worse": "(worse beyond seed noise): even at an equal budget the adapters after attention mattered here, "
                    "unlike in Pfeiffer et al.'s results."}[verdict2])


# ------------------------------------------------------------------------------------- 3. initialisation
def initialisation(lesson: Lesson, task, runs: dict, noise: dict) -> None:
    lesson.section("3. Near-identity initialisation, and what happens without it")
    m = sorted(runs)[len(runs) // 2]
    base, enc = lesson.load_base()
    room = base.max_input_tokens
    x, _ = next(_val(task, enc, room).eval_batches())
    x = x.to(lesson.device)
    general = held_out_text(lesson.size(60_000, 300_000))  # text like the base's own, not seen in pretraining
    with torch.no_grad():
        base_logits = base(x)[0]
    base_loss = evaluate_loss(base, _val(task, enc, room).eval_batches(), lesson.device)
    base_ppl = perplexity(base, enc, general, lesson.device)

    # (name, run folder, what to change in every adapter after the package has built it)
    inits = [("identity (W_up = 0, package default)", None, None),
             ("W_up ~ N(0, 0.02^2)", "init-up-0.02", lambda b: torch.nn.init.normal_(b.up.weight, std=0.02)),
             ("W_up ~ N(0, 0.2^2)", "init-up-0.2", lambda b: torch.nn.init.normal_(b.up.weight, std=0.2)),
             ("nn.Linear's default init, down and up", "init-linear-default",
              lambda b: (b.down.reset_parameters(), b.up.reset_parameters()))]
    rows, curves, starts, found = [], {}, {}, {}
    for name, folder, alter in inits:
        torch.manual_seed(0)  # finetune() seeds the same way before applying the strategy
        model = apply_strategy(copy.deepcopy(base), AdapterConfig(bottleneck=m))
        if alter is not None:
            with torch.no_grad():
                for module in model.modules():
                    if isinstance(module, Bottleneck):
                        alter(module)
        with torch.no_grad():
            diff = float((model(x)[0] - base_logits).abs().max())
        start = {"max |logit - base|": diff, "task val loss": evaluate_loss(model, _val(task, enc, room).eval_batches(),
                                                                             lesson.device),
                 "general perplexity": perplexity(model, enc, general, lesson.device)}
        run = found[name] = runs[m] if alter is None else _train_model(lesson, task, model, enc, folder)
        starts[name] = start
        curves[name] = [(0, start["task val loss"])] + [(h["step"], h["val_loss"]) for h in run["history"]]
        rows.append({"initialisation": name, "step 0: max |logit - base|": f"{diff:.1e}",
                     "step 0: task val loss": f"{start['task val loss']:.4f}",
                     "step 0: general perplexity": start["general perplexity"],
                     "trained: test accuracy": run["accuracy"], "trained: test label loss": run["label loss"]})
    lesson.record("step0", {"base": {"task val loss": base_loss, "general perplexity": base_ppl}, **starts})
    lesson.table(f"Houlsby adapters, m = {m}. The base: task val loss {base_loss:.4f}, general perplexity {base_ppl:.3f}",
                 rows, note="task val loss: mean cross-entropy of the target tokens (label, newline, end of text); "
                            "general perplexity: on held-out\ntiny-world text, what the base was pretrained to model")
    ident, others = list(starts)[0], list(starts)[1:]
    exact = (starts[ident]["max |logit - base|"] == 0 and starts[ident]["task val loss"] == base_loss
             and starts[ident]["general perplexity"] == base_ppl)
    lesson.conclude(
        f"With W_up = 0 the adapted model's logits differed from the base's by at most "
        f"{starts[ident]['max |logit - base|']:.1e}; its task loss ({starts[ident]['task val loss']:.4f}) and its "
        f"perplexity on general text ({starts[ident]['general perplexity']:.3f}) were the base's: "
        + ("it starts as the base, exactly." if exact else "NOT exactly the base (a bug?)."))
    damaged = [k for k in others if starts[k]["general perplexity"] > base_ppl]
    lower = [k for k in others if starts[k]["task val loss"] < base_loss]
    lesson.conclude(
        "Before any training, the random starts took the general-text perplexity from "
        f"{base_ppl:.3f} to " + ", ".join(f"{starts[k]['general perplexity']:.3f} ({k})" for k in others)
        + f": {len(damaged)} of {len(others)} made the base worse at what it was pretrained for. Their task loss was "
        + ", ".join(f"{starts[k]['task val loss']:.4f}" for k in others) + f" against the base's {base_loss:.4f}"
        + (f"; {len(lower)} of them lower, since the base is so poor at this answer format that noise can happen to "
           "help it." if lower else "; all higher."))
    hurt = [k for k in others if _better(found[k], found[ident], noise) == "worse"]
    lesson.conclude(
        "After the same training, "
        + (f"{len(hurt)} of {len(others)} random starts stayed below the identity start's accuracy beyond seed noise ("
           + ", ".join(f"{k}: {found[k]['accuracy']:.3f}" for k in hurt)
           + f", against {found[ident]['accuracy']:.3f}): the harm Houlsby et al. warn of." if hurt else
           f"no random start ended below the identity start's accuracy ({found[ident]['accuracy']:.3f}) beyond seed "
           "noise: at this scale training recovered, so the near-identity start decided where training began more "
           "than where it ended (Houlsby et al. report lasting harm from larger initial scales on their tasks)."))
    lesson.plot("init_curves.png", lambda ax: _draw_curves(ax, curves, base_loss))


def _draw_curves(ax, curves: dict, base_loss: float) -> None:
    for name, points in curves.items():
        ax.plot([s for s, _ in points], [v for _, v in points], "o-", ms=3, label=name)
    ax.axhline(base_loss, color="grey", ls=":", label="the base, before training")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("task validation loss")
    ax.legend(fontsize=7)
    ax.set_title("Validation loss from step 0, by adapter initialisation")


# -------------------------------------------------------------------------------------- 4. LayerNorms
def layernorms(lesson: Lesson, task, base_config, runs: dict, noise: dict) -> None:
    lesson.section("4. Training the LayerNorms too")
    m = sorted(runs)[len(runs) // 2]
    with_ln = _train(lesson, task, AdapterConfig(bottleneck=m, train_layernorm=True), f"layernorm-{m}")
    rows = [{"LayerNorms": name, "trainable": run["trainable"], "closed form": closed_form(base_config, m, "houlsby", ln),
             "test accuracy": run["accuracy"], "test label loss": run["label loss"]}
            for name, run, ln in (("frozen", runs[m], False), ("trained", with_ln, True))]
    lesson.table(f"Houlsby adapters, m = {m}, with and without the LayerNorms' weights and biases", rows)
    off, on = rows
    verdict = _better(with_ln, runs[m], noise)
    lesson.conclude(
        f"Training the LayerNorms added {on['trainable'] - off['trainable']:,} parameters and moved test accuracy from "
        f"{off['test accuracy']:.3f} to {on['test accuracy']:.3f} (label loss {off['test label loss']:.3f} to "
        f"{on['test label loss']:.3f}): " + {"same": "no difference beyond seed noise.",
                                             "better": "a gain beyond seed noise.",
                                             "worse": "worse beyond seed noise."}[verdict])


def main(argv: list[str] | None = None) -> dict:
    lesson = Lesson.start(4, "Bottleneck adapters", __doc__, argv)
    sizes = lesson.size({"train": 64, "validation": 16, "test": 32}, {"train": 800, "validation": 64, "test": 200})
    task = load_task(TASK, sizes=sizes)
    base_config = lesson.load_base()[0].config
    runs, noise = bottleneck_sweep(lesson, task, base_config)
    placement(lesson, task, base_config, runs, noise)
    initialisation(lesson, task, runs, noise)
    layernorms(lesson, task, base_config, runs, noise)
    return lesson.finish()


if __name__ == "__main__":
    main()
