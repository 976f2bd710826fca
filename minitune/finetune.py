"""Fine-tuning a base on a task with a strategy, and opening the result (`minitune finetune`).

A fine-tuning run folder holds only what the strategy trained, never a copy of the base:

    run.json              which base, which task, which strategy and settings, what was measured
    best/, last/          trainable tensors + strategy config (save_trainable), lowest-val-loss and final
    log.jsonl             one line per evaluation during training
"""

from __future__ import annotations

import time
from pathlib import Path

from minitune import distributed
from minitune.checkpoint import atomic_write_json, read_json
from minitune.data.batches import SupervisedBatches, TokenStream, encode_documents
from minitune.data.jsonl import load_jsonl_task
from minitune.data.tasks import Example, Task, load_task
from minitune.pretrain import builtin_base, load_run, runs_dir
from minitune.strategies import apply_strategy, load_trainable, save_trainable, trainable_parameters
from minitune.train import TrainConfig, seed_everything, train

RUN = "run.json"


def resolve_task(name: str | None = None, data: str | Path | None = None, kind: str | None = None,
                 seed: int = 0) -> Task:
    """A built-in task by name, or your JSONL file read as `kind`."""
    if data is not None:
        return load_jsonl_task(data, kind or "classification", seed=seed)
    return load_task(name or "sentiment", seed=seed)


def supervised(task: Task, split: str, enc, block_size: int, batch_size: int, seed: int = 0,
               max_eval_examples: int | None = None) -> SupervisedBatches:
    """Batches of one split: each prompt followed by its target and the task's stop string."""
    examples = [Example(ex.prompt, task.completion(ex)) for ex in task.split(split)]
    return SupervisedBatches(examples, enc, block_size, batch_size, seed, max_eval_examples)


def finetune(base: str | Path | None, task: Task, strategy, out: str | Path | None = None,
             max_steps: int = 300, batch_size: int = 16, lr: float | None = None, seed: int = 0,
             device: str = "auto", eval_every: int = 100, quiet: bool = False, resume: bool = False,
             checkpoint_every: int = 100, on_eval=None):
    """Apply `strategy` (a config) to the base, train it on task.train, keep the best on validation.

    Returns (model, tokenizer, run folder); the model holds the best checkpoint's weights. `on_eval` is
    passed to train(): numbers it returns join each evaluation's record in the run's history.
    """
    base = Path(base) if base is not None else builtin_base()  # the shipped tiny base, or runs/base-tiny
    out = Path(out) if out is not None else runs_dir() / f"{task.name}-{strategy.name}"
    model, enc, base_meta = load_run(base)
    seed_everything(seed)
    model = apply_strategy(model, strategy)
    trainable, total = trainable_parameters(model)
    lr = lr or strategy.default_lr[task.kind]
    cfg = TrainConfig(max_steps=max_steps, lr=lr, min_lr=lr / 10,
                      warmup_steps=max_steps // 10, eval_every=eval_every, seed=seed, device=device, quiet=quiet,
                      checkpoint_every=checkpoint_every)
    room = model.max_input_tokens
    train_data = supervised(task, "train", enc, room, batch_size, seed)
    val_data = supervised(task, "validation", enc, room, batch_size, max_eval_examples=200)
    if not quiet and distributed.is_main():
        print(f"{task.name} with {strategy.name}: trainable params: {trainable:,} || all params: {total:,} "
              f"|| trainable%: {100 * trainable / total:.2f}", flush=True)
    t0 = time.perf_counter()
    result = train(model, train_data, val_data, cfg, out_dir=out, save=save_trainable, resume=resume,
                   on_eval=on_eval)
    model = load_trainable(model, out / "best")
    if distributed.is_main():
        atomic_write_json(out / RUN, {
            "base": str(base.resolve()), "tokenizer": base_meta.get("tokenizer", "minitune"), "task": task.name,
            "strategy": strategy.name, "train": {**vars(cfg), "batch_size": batch_size},
            "trainable_params": trainable, "total_params": total, "best_val_loss": result.best_val_loss,
            "history": result.history, "seconds": round(time.perf_counter() - t0, 1),
            "tokens_per_s": round(result.tokens_per_s, 1),
        })
    return model, enc, out


def continue_pretraining(model, enc, train_docs: list[str], val_docs: list[str], max_steps: int = 200,
                         batch_size: int = 16, lr: float = 1e-3, seed: int = 0, device: str = "auto",
                         quiet: bool = True):
    """Go on with the language-modelling objective on new documents (domain adaptation, new facts)."""
    block = model.max_input_tokens
    train_data = TokenStream(encode_documents(enc, train_docs), block, batch_size, seed=seed)
    val_data = TokenStream(encode_documents(enc, val_docs), block, batch_size, seed=seed, max_eval_batches=10)
    cfg = TrainConfig(max_steps=max_steps, lr=lr, min_lr=lr / 10, warmup_steps=max_steps // 10,
                      eval_every=max_steps, seed=seed, device=device, quiet=quiet)
    return train(model, train_data, val_data, cfg)


def open_run(path: str | Path, device="cpu"):
    """(model, tokenizer, metadata) of any run folder: a pretrained base, or a fine-tuned one on its base."""
    path = Path(path)
    if not (path / RUN).is_file():
        return load_run(path, device)
    meta = read_json(path / RUN)
    model, enc, _ = load_run(meta["base"], device)
    return load_trainable(model, path / "best").to(device).eval(), enc, meta
