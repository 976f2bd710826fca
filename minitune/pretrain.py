"""Pretraining the base model on the tiny world, and loading it back (`minitune pretrain`, `load_base`)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from minitune import distributed
from minitune.checkpoint import atomic_write_json, load_model, read_json, save_model
from minitune.data import load_text_corpus, pretraining_corpus, split
from minitune.data.batches import TokenStream, encode_documents
from minitune.errors import CheckpointError, ConfigError
from minitune.model import GPT, GPTConfig, PRESETS
from minitune.tokenizer import get_tokenizer
from minitune.train import TrainConfig, seed_everything, train

# Per preset: corpus size, batch and steps that fit the budget on a 2-core CPU (tiny: under 10 minutes).
RECIPES = {
    "nano": dict(corpus_bytes=300_000, batch_size=16, max_steps=100, lr=1e-2, warmup_steps=10, eval_every=50),
    "tiny": dict(corpus_bytes=12_000_000, batch_size=32, max_steps=1500, lr=2e-3, warmup_steps=100, eval_every=250),
    "small": dict(corpus_bytes=30_000_000, batch_size=64, max_steps=5000, lr=1e-3, warmup_steps=200, eval_every=500),
}


def runs_dir() -> Path:
    """Where runs go by default: $MINITUNE_RUNS, else ./runs."""
    return Path(os.environ.get("MINITUNE_RUNS", "runs"))


def unigram_loss(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) on val of the best context-free model: train's token frequencies, add-one smoothed."""
    counts = np.bincount(train_tokens.astype(np.int64), minlength=vocab_size) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val_tokens.astype(np.int64)].mean())


def pretrain(
    preset: str = "tiny",
    out: str | Path | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    device: str = "auto",
    corpus: str | Path | None = None,
    tokenizer: str = "minitune",
    quiet: bool = False,
    resume: bool = False,
    checkpoint_every: int = 100,
) -> Path:
    """Generate (or read) the corpus, pretrain a GPT of the preset, write it to out; returns out.

    Resume state is written to out every `checkpoint_every` steps (and on SIGINT/SIGTERM); with
    `resume`, a killed run continues from it and ends exactly where an uninterrupted run would.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    recipe = RECIPES[preset]
    out = Path(out) if out is not None else runs_dir() / f"base-{preset}"
    main = distributed.is_main()  # under torchrun only rank 0 speaks and writes
    say = (lambda *a: None) if quiet or not main else (lambda *a: print(*a, flush=True))

    t0 = time.perf_counter()
    enc = get_tokenizer(tokenizer)
    docs = load_text_corpus(corpus) if corpus is not None else pretraining_corpus(
        target_bytes=recipe["corpus_bytes"], seed=seed)
    train_docs, val_docs = split(docs, val_fraction=0.05, seed=seed)
    train_tokens, val_tokens = encode_documents(enc, train_docs), encode_documents(enc, val_docs)
    say(f"corpus: {len(docs):,} documents, {len(train_tokens):,} train / {len(val_tokens):,} val tokens "
        f"({time.perf_counter() - t0:.1f}s)")

    config = GPTConfig.from_preset(preset, vocab_size=enc.n_vocab)
    seed_everything(seed)  # the initial weights depend on the seed alone
    model = GPT(config)
    say(f"model: {preset}, {model.num_parameters():,} parameters")
    cfg = TrainConfig(
        max_steps=max_steps or recipe["max_steps"], lr=recipe["lr"], min_lr=recipe["lr"] / 10,
        warmup_steps=min(recipe["warmup_steps"], (max_steps or recipe["max_steps"]) // 10),
        eval_every=recipe["eval_every"], seed=seed, device=device, quiet=quiet, checkpoint_every=checkpoint_every,
    )
    batch = recipe["batch_size"]
    train_data = TokenStream(train_tokens, config.block_size, batch, seed=seed)
    val_data = TokenStream(val_tokens, config.block_size, batch, seed=seed, max_eval_batches=20)
    result = train(model, train_data, val_data, cfg, out_dir=out, resume=resume)

    baseline = unigram_loss(train_tokens, val_tokens, enc.n_vocab)
    seconds = time.perf_counter() - t0
    if not main:
        return out
    save_model(model, out, tokenizer=tokenizer, preset=preset, seed=seed, corpus=str(corpus or "tiny-world"),
               val_loss=result.val_loss, unigram_val_loss=baseline, steps=result.steps,
               train_tokens_seen=result.tokens, tokens_per_s=round(result.tokens_per_s, 1),
               seconds=round(seconds, 1))
    atomic_write_json(out / "history.json", result.history)
    say(f"validation loss {result.val_loss:.4f} nats/token (perplexity {math.exp(result.val_loss):.2f}); "
        f"unigram baseline {baseline:.4f} (perplexity {math.exp(baseline):.2f})")
    say(f"{result.tokens_per_s:,.0f} tokens/s, {seconds:.0f}s in all; saved to {out}")
    return out


def load_run(path: str | Path, device: str | torch.device = "cpu"):
    """A saved base: (model, tokenizer, metadata). Also reads a Hugging Face GPT-2 checkpoint folder,
    with GPT-2's tokenizer (from the folder's vocab.json + merges.txt if present, else tiktoken's)."""
    path = Path(path)
    if is_hf_checkpoint(path):
        from minitune.interop import load_hf_gpt2

        tokenizer = str(path) if (path / "vocab.json").is_file() else "gpt2"
        return load_hf_gpt2(path, device), get_tokenizer(tokenizer), {"tokenizer": tokenizer, "hf_checkpoint": True}
    model, meta = load_model(path, device)
    return model, get_tokenizer(meta.get("tokenizer", "minitune")), meta


def is_hf_checkpoint(path: str | Path) -> bool:
    """Does the folder hold a Hugging Face GPT-2 checkpoint (its config.json has GPT-2's fields)?"""
    try:
        config = read_json(Path(path) / "config.json")
    except CheckpointError:
        return False
    return "model" not in config and "n_layer" in config


def load_base(path: str | Path | None = None, device: str | torch.device = "cpu") -> GPT:
    """The model saved in a run folder (or a GPT-2 checkpoint folder); with no path, the cached `tiny`
    base, pretrained first if missing."""
    if path is None:
        path = runs_dir() / "base-tiny"
        if not (path / "config.json").is_file():
            pretrain("tiny", out=path)
    return load_run(path, device)[0]

