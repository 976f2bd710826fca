"""Shared runs: one fine-tuning run at the course's standard budget, scored on test and kept on disk.

Several lessons show the same thing: full fine-tuning or LoRA on a task, trained the same way. They all
ask `shared_run` for it, so a (base, task, strategy, seed) gives the same number in every lesson that
shows it, and the second lesson to ask reads the first one's result instead of training again.

    budget = Budget.for_mode(quick=False)                  # 160 steps of 16, evaluated every 20
    run = shared_run(base, "qa", LoRAConfig(...), seed=0, budget=budget, general=docs)
    run["score"], run["history"][-1]["general_ppl"]         # test score; general-text perplexity on the way

A shared run is kept under runs/shared/ by a key over everything its numbers depend on: the base's
weight file, the library's source (every file of minitune/ outside course/, and this file, which trains
and scores the run; the rest of course/ only reports), the task and its sizes, the strategy's config and
learning rate, the budget, the seed and the general-text documents. Change any of them and the run is
trained again; a stale number is never read back.

Along the run, every evaluation records the validation loss, the seconds spent training so far (not
counting evaluation) and, when `general` documents are given, the perplexity of that held-out general
text under the model as it is at that step. That trace is what lets lesson 6 compare strategies'
forgetting at the same task quality, and their time to reach it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from minitune.checkpoint import atomic_write_json
from minitune.data.tasks import load_task, task_kind
from minitune.errors import ConfigError
from minitune.evaluate import HEADLINE_METRIC, evaluate_task, perplexity
from minitune.memory import file_size
from minitune.pretrain import runs_dir
from minitune.strategies import base_unchanged
from minitune.train import evaluate_loss

PACKAGE = Path(__file__).parents[1]


@dataclass(frozen=True)
class Budget:
    """How every shared run is trained and scored. The steps and batch are the learning-rate sweep's (minitune
    sweep), so the default rates were chosen for exactly this budget."""

    steps: int = 160
    batch_size: int = 16
    eval_every: int = 20
    sizes: dict = field(default_factory=lambda: {"train": 1000, "validation": 100, "test": 300})
    test_limit: dict = field(default_factory=lambda: {"summarization": 100, "code": 100})  # others: whole split
    general_batches: int = 2  # batches of general text scored at each evaluation (16 x context tokens each)

    @classmethod
    def for_mode(cls, quick: bool) -> "Budget":
        """The full budget, or a seconds-long one for --quick (and the tests)."""
        if not quick:
            return cls()
        return cls(steps=8, eval_every=4, sizes={"train": 64, "validation": 8, "test": 16},
                   test_limit={"summarization": 4, "code": 4, "qa": 8}, general_batches=1)

    def task(self, name: str):
        """The task as the shared runs see it (qa's sizes are fixed by its facts)."""
        return load_task(name, sizes=None if name == "qa" else self.sizes)

    def limit(self, name: str) -> int | None:
        return self.test_limit.get(name)


def shared_run(base: str | Path, task_name: str, config, seed: int, budget: Budget, device: str = "cpu",
              general: list[str] | None = None, cache: str | Path | None = None, quiet: bool = True,
              lr: float | None = None) -> dict:
    """Fine-tune `config` on the task from `base` with `seed` (at learning rate `lr`, default the strategy's
    default), score it on test; cached (see the module doc).

    Returns a dict: task, strategy, seed, metric, score, n (test items scored), test_loss (cross-entropy per
    answer token over the whole test split), label_loss (classification: -log p(gold label), p normalised
    over the labels), best_val_loss, lr, trainable and total (parameter counts), train_seconds, file (bytes of the saved trainable tensors), base_intact (is every tensor of the base
    bitwise what it was: true of PEFT, never of full fine-tuning), general_ppl (at the best checkpoint, if
    `general`), history (one record per evaluation: step, val_loss, train_seconds, general_ppl) and run
    (the run folder, whose best/ holds the trained tensors), seconds (wall seconds by part: load, train,
    evaluations along the run, test score, ...; minitune.course.timing) and trained (False when read back).
    """
    if task_name not in HEADLINE_METRIC:
        raise ConfigError(f"unknown task {task_name!r}: shared runs exist for {sorted(HEADLINE_METRIC)}")
    base = Path(base)
    key = run_key(base, task_name, config, seed, budget, general, lr)
    if lr == config.default_lr[task_kind(task_name)]:
        lr = None  # the default named: the same run as the default left out
    rate = "" if lr is None else f"-lr{lr:g}"
    folder = Path(cache if cache is not None else runs_dir() / "shared") / f"{task_name}-{config.name}{rate}-s{seed}-{key}"
    if (folder / "scores.json").is_file():
        return json.loads((folder / "scores.json").read_text()) | {"run": str(folder), "trained": False}

    try:
        scores = _train_and_score(base, task_name, config, seed, budget, device, general, quiet, lr, folder)
    except BaseException:  # stopped (Ctrl-C, a pool's SIGTERM) or failed: leave no unfinished run behind
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return scores | {"run": str(folder), "trained": True}


def _train_and_score(base: Path, task_name: str, config, seed: int, budget: Budget, device: str,
                     general: list[str] | None, quiet: bool, lr: float | None, folder: Path) -> dict:
    """shared_run's work: fine-tune into `folder`, score on test, write scores.json last. The seconds
    each part took go in scores["seconds"] (a run's evaluation costs beside its training)."""
    from minitune.finetune import finetune, supervised
    from minitune.pretrain import load_run

    clock = Clock()
    task = budget.task(task_name)
    fresh_base, general_enc, _ = load_run(base)  # to check the base after training, and to read the general text

    def watch(model) -> dict:  # the general text's perplexity at every evaluation along the run
        return {"general_ppl": perplexity(model, general_enc, general, max_batches=budget.general_batches)}

    if folder.exists():  # a run that stopped half-way: start it again
        shutil.rmtree(folder)
    clock.lap("load")
    model, enc, out = finetune(base, task, config, folder, max_steps=budget.steps, batch_size=budget.batch_size,
                               lr=lr, seed=seed, device=device, eval_every=budget.eval_every, quiet=quiet,
                               checkpoint_every=0, on_eval=watch if general else None)
    run = json.loads((out / "run.json").read_text())
    train_seconds = run["history"][-1]["train_seconds"]
    clock.split("evaluations along the run", train=train_seconds)  # and finetune's setup and saving
    metric = HEADLINE_METRIC[task_name]
    result = evaluate_task(model, enc, task, limit=budget.limit(task_name), device=device)
    clock.lap("test score")
    test = supervised(task, "test", enc, model.max_input_tokens, budget.batch_size)
    scores = {"task": task_name, "strategy": config.name, "seed": seed, "metric": metric, "score": result[metric],
              "n": result["n"], "test_loss": evaluate_loss(model, test.eval_batches(), device),
              "best_val_loss": run["best_val_loss"], "lr": run["train"]["lr"],
              "trainable": run["trainable_params"], "total": run["total_params"],
              "train_seconds": train_seconds,
              "file": file_size(out / "best" / "trainable.safetensors"),
              "base_intact": base_unchanged(model, fresh_base),  # every base tensor bitwise as loaded
              "history": [{k: r[k] for k in ("step", "val_loss", "train_seconds", "general_ppl") if k in r}
                          for r in run["history"]]}
    if task.kind == "classification":  # a continuous score beside accuracy, for when accuracy saturates
        scores["label_loss"] = result["label_loss"]
    clock.lap("test loss and checks")
    if general:  # the kept checkpoint's, as its own evaluation measured it (the first lowest validation loss)
        scores["general_ppl"] = min(run["history"], key=lambda r: r["val_loss"])["general_ppl"]
    shutil.rmtree(out / "last", ignore_errors=True)  # best/ is what the lessons load
    clock.lap("saving")
    atomic_write_json(folder / "scores.json", scores | {"seconds": clock.seconds})
    return scores | {"seconds": clock.seconds}


class Clock:
    """Wall seconds by part of a run: lap(name) ends a part; split() divides one part into named pieces."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self.last, 3)
        self.last = now

    def split(self, name: str, **pieces: float) -> None:
        """End a part made of the given pieces; what the pieces leave of its time is `name`'s own."""
        self.lap(name)
        total = self.seconds.pop(name)
        self.seconds.update({k: round(v, 3) for k, v in pieces.items()})
        self.seconds[name] = round(max(0.0, total - sum(pieces.values())), 3)


def common_target(runs: list[dict]) -> float:
    """A validation loss every one of these runs reached: the highest of their best losses. Reading each
    run where it first got there compares them at equal task quality (first_reaching)."""
    return max(min(r["val_loss"] for r in run["history"]) for run in runs)


def first_reaching(run: dict, target: float) -> dict | None:
    """The first evaluation of a run at or below the target validation loss (step, val_loss, train_seconds,
    general_ppl), or None if it never got there."""
    return next((r for r in run["history"] if r["val_loss"] <= target), None)


def run_key(base: Path, task_name: str, config, seed: int, budget: Budget, general: list[str] | None,
            lr: float | None = None) -> str:
    """A short hash of everything a shared run's numbers depend on."""
    h = hashlib.sha256()
    for part in (_file_hash(base / "model.safetensors"), source_hash(), task_name, repr(config),
                 config.default_lr[task_kind(task_name)] if lr is None else lr,
                 json.dumps(asdict(budget), sort_keys=True), seed,
                 hashlib.sha256("\x00".join(general or []).encode()).hexdigest()):
        h.update(str(part).encode() + b"\x1f")
    return h.hexdigest()[:16]


def source_hash() -> str:
    """sha256 over the source that trains and scores a shared run: the library (every file of minitune/
    outside course/) and this file. A change there makes new runs; a change to how the course words,
    tabulates or plots the numbers does not."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if not name.startswith("course/") or name == "course/runs.py":
            h.update(name.encode() + b"\x00" + path.read_bytes())
    return h.hexdigest()


def _file_hash(path: Path) -> str:
    if not path.is_file():  # e.g. a Hugging Face folder: hash what is there
        files = sorted(p for p in path.parent.iterdir() if p.is_file())
        return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()
