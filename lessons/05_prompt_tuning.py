"""Lesson 5: Prompt tuning, soft prompts.

What this lesson shows, by measuring it on your machine:
  1. on a model this small, prompt tuning is unstable: one setting, three seeds, and the spread of
     their results (which every later comparison is held against);
  2. how the soft prompt starts: random vectors, the embeddings of random vocabulary tokens (the
     package's default), or the embeddings of a text about the task (its label words), compared by their
     loss curves from step 0 and where they end;
  3. a soft prompt of n vectors trains n x d numbers (checked against the count) and takes n positions
     of the context away from the input; how quality and step time change with n from 1 to 50;
  4. it needs a learning rate far larger than the other strategies use;
  5. the gap to full fine-tuning at two model sizes: Lester et al. (2021) found that it closes as the
     model grows. Whether it does at this tiny scale is measured, not assumed.

Read alongside: minitune/strategies/prompt.py (~130 lines), and GPT.forward_embeddings in
minitune/model.py (the one seam prompt tuning enters through).

Run:  python lessons/05_prompt_tuning.py            about 4.5 minutes on 2 CPU cores with the tiny base
                                                    cached (this includes pretraining a second, smaller
                                                    base for part 5 on the first run: about 15 seconds)
      python lessons/05_prompt_tuning.py --quick    about 15 seconds, nano base and toy sizes

The idea. A prompt steers a frozen model through the embeddings of its tokens. Those embeddings are
vectors in R^d, and nothing forces them to be embeddings of real tokens: prompt tuning learns n free
vectors P_1..P_n, puts them before the input's embeddings, and trains only them, by the same
fine-tuning loss, with every weight of the model frozen:

    tokens t_1..t_T  ->  [ P_1 ... P_n , wte(t_1) ... wte(t_T) ]  ->  frozen GPT  ->  logits for t_1..t_T

    trainable:  n x d   (tiny base, d = 128: 20 vectors are 2,560 numbers, 0.24% of the model)
    context:    the model sees n + T positions, so an input may have at most block_size - n tokens
    cost:       every step and every prediction runs n more positions through the whole model

This is the smallest change of all the strategies: the model's function is untouched, only its input
is. The price is expressiveness: the soft prompt can only steer what the frozen layers already compute
(attention lets every later position read the prompt, but no weight changes). Lester et al. found
that this is enough when the model is large (at about 10B parameters prompt tuning matched full
fine-tuning on SuperGLUE) and clearly worse when it is small.

The learning rate. Only a few vectors train, each gets a small gradient, and they must move a long way
at the scale of the token embeddings; Lester et al. trained with a learning rate of 0.3, where full
fine-tuning uses about 1e-4 to 1e-3. minitune's default for prompt tuning is 0.1.

How quality is measured. Topic classification (five topics: sport, food, weather, trade, animals),
chosen because a soft prompt on the tiny base learns it within a few hundred steps: test accuracy, and
the test label loss, -log p(right topic | news item) with p normalised over the five topic words.
"""

from __future__ import annotations

import copy


from minitune.checkpoint import read_json
from minitune.data.tasks import load_task
from minitune.evaluate import classify_scores
from minitune.finetune import finetune, supervised
from minitune.lesson import Lesson, seed_spread, step_time_ms
from minitune.pretrain import load_run, pretrain
from minitune.strategies import FullConfig, LoRAConfig, PromptTuningConfig, apply_strategy
from minitune.train import evaluate_loss, seed_everything

TASK = "topic"
N_TOKENS = 20



def _steps(lesson: Lesson) -> int:
    return lesson.size(20, 240)  # a soft prompt learns slowly: more steps than lessons 3 and 4 use


def _train(lesson: Lesson, task, config, name: str, base=None, lr: float | None = None, seed: int = 0) -> dict:
    """Fine-tune a base (the lesson's by default) with `config`; its loss history and test scores."""
    model, enc, out = finetune(base or lesson.base, task, config, lesson.run_dir(name), max_steps=_steps(lesson),
                               lr=lr, seed=seed, device=lesson.device, eval_every=lesson.size(5, 30), quiet=True,
                               checkpoint_every=0)
    run = read_json(out / "run.json")
    result = {**classify_scores(model, enc, task.test[:lesson.size(32, 200)], task.labels, device=lesson.device)[1], "history": run["history"],
              "trainable": run["trainable_params"], "params": run["total_params"] - run["trainable_params"]}
    if isinstance(config, FullConfig):
        result["params"] = run["total_params"]
    print(f"  {name}: test accuracy {result['accuracy']:.3f}, label loss {result['label loss']:.4f} "
          f"({run['seconds']:.0f}s)", flush=True)
    return result


def start_loss(lesson: Lesson, task, config) -> float:
    """Validation loss of the base with a fresh soft prompt, drawn as finetune() draws it."""
    model, enc, _ = load_run(lesson.base, lesson.device)
    seed_everything(0)  # finetune() seeds the same way before applying the strategy
    model = apply_strategy(model, config)
    val = supervised(task, "validation", enc, model.max_input_tokens, 16, max_eval_examples=200)
    return evaluate_loss(model, val.eval_batches(), lesson.device)


# ------------------------------------------------------------------------------------------- 1. seeds
def seeds(lesson: Lesson, task) -> tuple[dict, dict]:
    lesson.section("1. One setting, three seeds")
    config = PromptTuningConfig(n_tokens=lesson.size(5, N_TOKENS))
    runs = [_train(lesson, task, config, f"seed-{s}" if s else "default", seed=s) for s in (0, 1, 2)]
    rows = [{"seed": s, "test accuracy": r["accuracy"], "test label loss": r["label loss"],
             "final val loss": r["history"][-1]["val_loss"]} for s, r in enumerate(runs)]
    lesson.table(f"Soft prompt of {config.n_tokens} tokens (init {config.init!r}, lr {PromptTuningConfig.default_lr}), "
                 f"{TASK}, {_steps(lesson)} steps; only the seed differs (the prompt's start and the batch order)", rows)
    noise = seed_spread(rows, ("test accuracy", "test label loss"))
    lesson.record("seed_spread", noise)
    lesson.conclude(
        f"The same setting gave test accuracies from {min(r['test accuracy'] for r in rows):.3f} to "
        f"{max(r['test accuracy'] for r in rows):.3f} across three seeds (chance is {1 / len(task.labels):.2f})"
        + (f": on a model this small prompt tuning is unstable (the seed alone moved accuracy by "
           f"{noise['test accuracy']:.3f}), so below, only differences larger than this spread count."
           if noise["test accuracy"] > 0.1 else ": fairly stable; differences below this spread are noise."))
    return runs[0], noise


# ------------------------------------------------------------------------------------ 2. initialisation
def initialisation(lesson: Lesson, task, default: dict, noise: dict) -> None:
    lesson.section("2. Initialisation: random vectors, vocabulary embeddings, or a text")
    n = lesson.size(5, N_TOKENS)
    label_words = " ".join(task.labels)
    configs = {"random": PromptTuningConfig(n_tokens=n, init="random"),
               "vocab (default)": PromptTuningConfig(n_tokens=n, init="vocab"),
               f"text {label_words!r}": PromptTuningConfig(n_tokens=n, init="text", init_text=label_words)}
    rows, curves = [], {}
    for name, config in configs.items():
        run = default if config.init == "vocab" else _train(lesson, task, config, f"init-{config.init}")
        first = start_loss(lesson, task, config)
        curves[name] = [(0, first)] + [(h["step"], h["val_loss"]) for h in run["history"]]
        early = run["history"][1]  # the second evaluation, just after warm-up
        rows.append({"init": name, "step-0 val loss": first, f"val loss @ step {early['step']}": early["val_loss"],
                     "final val loss": run["history"][-1]["val_loss"], "test accuracy": run["accuracy"],
                     "test label loss": run["label loss"]})
    lesson.table(f"Soft prompt of {n} tokens on {TASK}, lr {PromptTuningConfig.default_lr}, same steps and seed", rows,
                 note="val loss: mean cross-entropy of every target token (topic word, newline, end of text)")
    early_key = list(rows[0])[2]
    fastest = min(rows, key=lambda r: r[early_key])
    random_row, real_rows = rows[0], rows[1:]
    best_real = max(real_rows, key=lambda r: r["test accuracy"])
    gap = best_real["test accuracy"] - random_row["test accuracy"]
    verdict = ("; as Lester et al. found, starting from real embeddings beat random vectors, beyond the seed spread."
               if gap > noise["test accuracy"] else
               "; random vectors beat real embeddings beyond the seed spread, which contradicts Lester et al. (real "
               "embeddings better, most of all for small models)." if -gap > noise["test accuracy"] else
               f"; the differences were within the seed spread ({noise['test accuracy']:.3f}), so no initialisation "
               "clearly won, where Lester et al. found real embeddings better.")
    lesson.conclude(
        "Starting losses: " + ", ".join(f"{r['init']} {r['step-0 val loss']:.3f}" for r in rows)
        + f". Early in training ({early_key.split('@ ')[1]}) {fastest['init']} was ahead ({fastest[early_key]:.3f}). "
        "Test accuracy: " + ", ".join(f"{r['init']} {r['test accuracy']:.3f}" for r in rows) + verdict)
    lesson.plot("init_curves.png", lambda ax: _draw_curves(ax, curves))


def _draw_curves(ax, curves: dict) -> None:
    for name, points in curves.items():
        ax.plot([s for s, _ in points], [v for _, v in points], "o-", ms=3, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.legend(fontsize=8)
    ax.set_title("Soft prompt initialisations: loss from step 0")


# -------------------------------------------------------------------------------------------- 3. length
def length_sweep(lesson: Lesson, task, default: dict, noise: dict) -> dict:
    lesson.section("3. Prompt length: n = 1 ... 50 soft tokens")
    lengths = lesson.size((1, 5), (1, 5, 10, 20, 50))
    n_default = lesson.size(5, N_TOKENS)
    runs = {n: default if n == n_default else _train(lesson, task, PromptTuningConfig(n_tokens=n), f"length-{n}")
            for n in lengths}
    base, enc = lesson.load_base()
    rows = []
    for n, run in runs.items():
        model = apply_strategy(copy.deepcopy(base), PromptTuningConfig(n_tokens=n))
        x, y = supervised(task, "train", enc, model.max_input_tokens, 16).batch(0)
        rows.append({"n tokens": n, "trainable": run["trainable"], "n x d": n * base.config.n_embd,
                     "usable context": model.max_input_tokens, "step ms": step_time_ms(model, x, y, device=lesson.device),
                     "test accuracy": run["accuracy"], "test label loss": run["label loss"]})
    lesson.table(f"Prompt tuning on {TASK} (init 'vocab', lr {PromptTuningConfig.default_lr}); context "
                 f"{base.config.block_size} tokens; step: batch 16", rows)
    exact = all(r["trainable"] == r["n x d"] for r in rows)
    lesson.conclude(f"The trainable count was exactly n x d for every length, and each soft token took one position "
                    f"of the {base.config.block_size}-token context." if exact else
                    "The trainable count did NOT equal n x d: see the table.")
    best = max(rows, key=lambda r: (r["test accuracy"], -r["test label loss"]))
    enough = next(r for r in rows if r["test accuracy"] >= best["test accuracy"] - noise["test accuracy"])
    first, last = rows[0], rows[-1]
    lesson.conclude(
        f"From n = {first['n tokens']} to n = {last['n tokens']} test accuracy went from {first['test accuracy']:.3f} to "
        f"{last['test accuracy']:.3f} (best {best['test accuracy']:.3f} at n = {best['n tokens']}) while a training step "
        f"went from {first['step ms']:.0f} to {last['step ms']:.0f} ms. n = {enough['n tokens']} was the shortest prompt "
        f"within the seed spread of the best"
        + (", in line with Lester et al., who saw gains up to about 20 tokens." if enough["n tokens"] >= 20 else
           "; Lester et al. saw gains up to about 20 tokens, but here a shorter prompt was not distinguishable from the "
           "best (the seed spread is wide)."))
    longer = [r for r in rows if r["n tokens"] > best["n tokens"]
              and r["test accuracy"] < best["test accuracy"] - noise["test accuracy"]]
    if longer:
        lesson.conclude(
            "Longer prompts did worse beyond the seed spread: "
            + ", ".join(f"n = {r['n tokens']} ({r['test accuracy']:.3f})" for r in longer)
            + ". In the same number of steps the longer prompt had not caught up, and it costs context and step "
              "time; Lester et al. likewise found little to gain past about 20 tokens.")
    lesson.plot("length_sweep.png", lambda ax: _draw_length(ax, rows))
    return runs


def _draw_length(ax, rows: list[dict]) -> None:
    n = [r["n tokens"] for r in rows]
    ax.plot(n, [r["test accuracy"] for r in rows], "o-", color="tab:blue", label="test accuracy")
    ax.set_xscale("log")
    ax.set_xlabel("soft prompt length n (log scale)")
    ax.set_ylabel("test accuracy", color="tab:blue")
    loss_ax = ax.twinx()
    loss_ax.plot(n, [r["test label loss"] for r in rows], "^--", color="tab:red", label="test label loss")
    loss_ax.set_ylabel("test label loss", color="tab:red")
    handles = ax.get_legend_handles_labels()[0] + loss_ax.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8)
    ax.set_title(f"Soft prompt length on {TASK}")


# ------------------------------------------------------------------------------------- 4. learning rate
def learning_rate(lesson: Lesson, task, default: dict, noise: dict) -> None:
    lesson.section("4. The learning rate prompt tuning needs")
    config = PromptTuningConfig(n_tokens=lesson.size(5, N_TOKENS))
    small = LoRAConfig.default_lr  # what LoRA and the adapters train with
    low = _train(lesson, task, config, f"lr-{small:g}", lr=small)
    rows = [{"learning rate": lr, "test accuracy": run["accuracy"], "test label loss": run["label loss"],
             "final val loss": run["history"][-1]["val_loss"]}
            for lr, run in ((small, low), (PromptTuningConfig.default_lr, default))]
    lesson.table(f"Soft prompt of {config.n_tokens} tokens, init 'vocab', {TASK}, same steps and seed", rows)
    lo, hi = rows
    lesson.conclude(
        f"At lr {lo['learning rate']:g} (LoRA's and the adapters' default) the soft prompt reached accuracy "
        f"{lo['test accuracy']:.3f} and label loss {lo['test label loss']:.3f}; at {hi['learning rate']:g}, "
        f"{hi['test accuracy']:.3f} and {hi['test label loss']:.3f}"
        + (": the large rate is what lets it learn in this many steps."
           if hi["test accuracy"] > lo["test accuracy"] + noise["test accuracy"] else
           ": better in label loss, but not beyond the seed spread in accuracy."
           if hi["test label loss"] < lo["test label loss"]
           else ": no clear difference, contrary to the usual advice."))


# ----------------------------------------------------------------------------------------------- 5. scale
def smaller_base(lesson: Lesson):
    """A nano base (~93k parameters) pretrained 6x longer than the test recipe's 100 steps, cached here."""
    path = lesson.out / "base-nano-600"
    if not (path / "config.json").is_file():
        print("(pretraining a nano base for 600 steps, once; it is cached in the lesson's folder)", flush=True)
        pretrain("nano", out=path, max_steps=600, quiet=True, checkpoint_every=0, device=lesson.device)
    return path


def scale(lesson: Lesson, task, runs: dict, noise: dict) -> None:
    lesson.section("5. The gap to full fine-tuning, at two model sizes")
    n = lesson.size(5, 10)  # the nano base has a 64-token context: 10 soft tokens leave 54 for the news item
    bases = [lesson.base] if lesson.quick else [smaller_base(lesson), lesson.base]
    rows = []
    for path in bases:
        meta = read_json(path / "config.json")
        full = _train(lesson, task, FullConfig(), f"scale-{path.name}-full", base=path)
        soft = runs[n] if path == lesson.base and n in runs else _train(lesson, task, PromptTuningConfig(n_tokens=n),
                                                                         f"scale-{path.name}-prompt", base=path)
        rows.append({"base": f"{meta.get('preset', 'base')}, {meta.get('steps', '?')} pretraining steps",
                     "parameters": full["params"], "pretraining val loss": meta["val_loss"],
                     "full FT accuracy": full["accuracy"], "prompt accuracy": soft["accuracy"],
                     "gap (full - prompt)": full["accuracy"] - soft["accuracy"], "full FT label loss": full["label loss"],
                     "prompt label loss": soft["label loss"]})
    lesson.table(f"Full fine-tuning against a {n}-token soft prompt (init 'vocab'), {TASK}, same steps", rows)
    if len(rows) < 2:
        lesson.conclude(f"Only one base in quick mode: the accuracy gap was {rows[0]['gap (full - prompt)']:+.3f}.")
        return
    small, big = rows
    change = small["gap (full - prompt)"] - big["gap (full - prompt)"]
    lesson.conclude(
        f"The accuracy gap between full fine-tuning and prompt tuning was {small['gap (full - prompt)']:+.3f} on the "
        f"{small['parameters']:,}-parameter base and {big['gap (full - prompt)']:+.3f} on the "
        f"{big['parameters']:,}-parameter "
        "one: " + ("it shrank as the model grew, the direction of Lester et al.'s figure 1, by more than prompt tuning's "
                   "seed spread." if change > noise["test accuracy"] else
                   "it grew with the model, unlike Lester et al.'s figure 1." if -change > noise["test accuracy"] else
                   f"the change ({change:+.3f}) is within prompt tuning's seed spread ({noise['test accuracy']:.3f}), so "
                   "no shrinking is shown at this scale.")
        + f" Still, two sizes {big['parameters'] / small['parameters']:.0f}x apart, far below the billions of parameters "
        f"where their curves meet, on bases that also differ in how well they were pretrained (val loss "
        f"{small['pretraining val loss']:.2f} against {big['pretraining val loss']:.2f}), are two points, not a trend.")
    lesson.plot("scale_gap.png", lambda ax: _draw_scale(ax, rows))


def _draw_scale(ax, rows: list[dict]) -> None:
    x = [r["parameters"] for r in rows]
    ax.plot(x, [r["full FT accuracy"] for r in rows], "s-", label="full fine-tuning")
    ax.plot(x, [r["prompt accuracy"] for r in rows], "o-", label="prompt tuning")
    for r in rows:
        ax.annotate(r["base"].split(",")[0], (r["parameters"], r["prompt accuracy"]), textcoords="offset points",
                    xytext=(0, -14), ha="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("base parameters (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("Prompt tuning against full fine-tuning as the base grows")


def main(argv: list[str] | None = None) -> dict:
    lesson = Lesson.start(5, "Prompt tuning: soft prompts", __doc__, argv)
    sizes = lesson.size({"train": 64, "validation": 16, "test": 32}, {"train": 800, "validation": 64, "test": 200})
    task = load_task(TASK, sizes=sizes)
    default, noise = seeds(lesson, task)
    initialisation(lesson, task, default, noise)
    runs = length_sweep(lesson, task, default, noise)
    learning_rate(lesson, task, default, noise)
    scale(lesson, task, runs, noise)
    return lesson.finish()


if __name__ == "__main__":
    main()
