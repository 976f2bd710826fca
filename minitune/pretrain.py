"""Pretraining the base model on the tiny world, and loading it back (`minitune pretrain`, `load_base`).

The tiny base ships with the package (`minitune/assets/tiny-base`, made by `minitune pretrain --preset
tiny`), so a learner starts in seconds; `minitune pretrain` stays the way to build it yourself. A base is
only as good as the match between what it was trained on and the code that uses it, so every run
records, beside its weights (config.json):

    trained_on    sha256 of the corpus documents and of the tokenizer's vocabulary (every token's bytes)
    probe_loss    the trained weights' loss on a fixed probe (the first windows of the validation text)
    first_steps   the first steps of the run itself: the probe loss of the weights before each step and
                  after the last, and how far (L2) the weights had moved from their initial values
    command, seed, torch version, time, throughput

The model code is checked by what it computes, not by its text: the weights must give today the probe
loss they gave when they were trained. A hash of model.py would call a comment edit a new model; a
hash of output bytes would fail across CPUs and torch builds, whose floats differ in the last bits.
The probe is compared within `PROBE_TOLERANCE`, so "the same model" means the same function up to
float noise: a change below it (tanh-approximate to exact GELU moves the tiny base's probe by 1.2e-5
nats) keeps the base; one that matters (a LayerNorm epsilon of 1e-3 moves it by 1.9e-3) does not.
Changes to the training loop or the recipe show in the replay of the first steps. A cached base that no longer matches is rebuilt with a
message saying why (or refused, if it was trained on your own corpus), never silently reused.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tiktoken
import torch

from minitune import distributed
from minitune.checkpoint import RESUME_META, atomic_write_json, load_model, read_json, save_model
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


SHIPPED = {"tiny": Path(__file__).parent / "assets" / "tiny-base"}  # bases that come with the package
FIRST_STEPS = 3        # steps of a run recorded for a replay to check
PROBE_WINDOWS = 8      # validation windows the probe loss is measured on
PROBE_TOLERANCE = 1e-4  # nats: far above float noise between machines, far below any change of the model
BUILT_IN_CORPUS = "tiny-world"


def runs_dir() -> Path:
    """Where runs go by default: $MINITUNE_RUNS, else ./runs."""
    return Path(os.environ.get("MINITUNE_RUNS", "runs"))


def unigram_loss(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) on val of the best context-free model: train's token frequencies, add-one smoothed."""
    counts = np.bincount(train_tokens.astype(np.int64), minlength=vocab_size) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val_tokens.astype(np.int64)].mean())


@dataclass
class _Setup:
    """Everything a pretraining run starts from: data, seeded initial model, settings."""

    enc: tiktoken.Encoding
    docs: list[str]
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    model: GPT
    cfg: TrainConfig
    batch_size: int


def _setup(preset: str, seed: int, corpus: str | Path | None, tokenizer: str, max_steps: int | None,
           device: str, quiet: bool, checkpoint_every: int) -> _Setup:
    """The corpus, tokens, initial model and train settings of `preset`: shared by a run and its replay."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    recipe = RECIPES[preset]
    enc = get_tokenizer(tokenizer)
    docs = load_text_corpus(corpus) if corpus is not None else pretraining_corpus(
        target_bytes=recipe["corpus_bytes"], seed=seed)
    train_docs, val_docs = split(docs, val_fraction=0.05, seed=seed)
    config = GPTConfig.from_preset(preset, vocab_size=enc.n_vocab)
    seed_everything(seed)  # the initial weights depend on the seed alone
    model = GPT(config)
    steps = max_steps or recipe["max_steps"]
    cfg = TrainConfig(
        max_steps=steps, lr=recipe["lr"], min_lr=recipe["lr"] / 10,
        warmup_steps=min(recipe["warmup_steps"], steps // 10),
        eval_every=recipe["eval_every"], seed=seed, device=device, quiet=quiet, checkpoint_every=checkpoint_every,
    )
    return _Setup(enc, docs, encode_documents(enc, train_docs), encode_documents(enc, val_docs), model, cfg,
                  recipe["batch_size"])


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
    out = Path(out) if out is not None else runs_dir() / f"base-{preset}"
    main = distributed.is_main()  # under torchrun only rank 0 speaks and writes
    say = (lambda *a: None) if quiet or not main else (lambda *a: print(*a, flush=True))

    t0 = time.perf_counter()
    run = _setup(preset, seed, corpus, tokenizer, max_steps, device, quiet, checkpoint_every)
    model, cfg, batch = run.model, run.cfg, run.batch_size
    say(f"corpus: {len(run.docs):,} documents, {len(run.train_tokens):,} train / {len(run.val_tokens):,} val "
        f"tokens ({time.perf_counter() - t0:.1f}s)")
    say(f"model: {preset}, {model.num_parameters():,} parameters")
    train_data = TokenStream(run.train_tokens, model.config.block_size, batch, seed=seed)
    val_data = TokenStream(run.val_tokens, model.config.block_size, batch, seed=seed, max_eval_batches=20)
    # the first steps are recorded only for a run that starts at step 0 in one process, which a replay can repeat
    resumed = resume and (out / RESUME_META).is_file() and read_json(out / RESUME_META).get("step", 0) > 0
    watch = _FirstSteps(model, FIRST_STEPS) if not resumed and distributed.world_size() == 1 else None
    try:
        result = train(model, train_data, val_data, cfg, out_dir=out, resume=resume)
    finally:
        if watch is not None:
            watch.close(model)

    baseline = unigram_loss(run.train_tokens, run.val_tokens, run.enc.n_vocab)
    seconds = time.perf_counter() - t0
    if not main:
        return out
    model = model.cpu()  # the probe is measured on the CPU, as every later check measures it
    save_model(model, out, tokenizer=tokenizer, preset=preset, seed=seed, corpus=str(corpus or BUILT_IN_CORPUS),
               command=_command(preset, seed, max_steps, corpus, tokenizer),
               trained_on=trained_on(run.docs, run.enc), probe_loss=probe_loss(model, run.val_tokens),
               first_steps=watch.summary(run.val_tokens) if watch is not None else None,
               val_loss=result.val_loss, unigram_val_loss=baseline, steps=result.steps,
               train_tokens_seen=result.tokens, tokens_per_s=round(result.tokens_per_s, 1),
               seconds=round(seconds, 1), torch=torch.__version__, python=platform.python_version())
    atomic_write_json(out / "history.json", result.history)
    say(f"validation loss {result.val_loss:.4f} nats/token (perplexity {math.exp(result.val_loss):.2f}); "
        f"unigram baseline {baseline:.4f} (perplexity {math.exp(baseline):.2f})")
    say(f"{result.tokens_per_s:,.0f} tokens/s, {seconds:.0f}s in all; saved to {out}")
    return out


def _command(preset: str, seed: int, max_steps: int | None, corpus: str | Path | None, tokenizer: str) -> str:
    """The `minitune pretrain` command line that makes this run again."""
    parts = ["minitune pretrain", f"--preset {preset}", f"--seed {seed}"]
    parts += [f"--max-steps {max_steps}"] if max_steps else []
    parts += [f"--corpus {corpus}"] if corpus is not None else []
    parts += [f"--tokenizer {tokenizer}"] if tokenizer != "minitune" else []
    return " ".join(parts)


# --- what a base was trained on, and checks that it still matches ------------------------------------------

def trained_on(docs: list[str], enc) -> dict:
    """Fingerprints of a run's inputs: the corpus documents, and the tokenizer's vocabulary."""
    corpus = hashlib.sha256()
    for doc in docs:  # length-prefixed, so where one document ends is part of what is hashed
        data = doc.encode("utf-8")
        corpus.update(len(data).to_bytes(8, "little") + data)
    vocab = hashlib.sha256()
    for i in range(enc.n_vocab):
        data = enc.decode_single_token_bytes(i)
        vocab.update(len(data).to_bytes(4, "little") + data)
    return {"corpus_sha256": corpus.hexdigest(), "documents": len(docs),
            "corpus_bytes": sum(len(d.encode("utf-8")) for d in docs),
            "tokenizer": enc.name, "vocabulary_sha256": vocab.hexdigest()}


@torch.no_grad()
def probe_loss(model: GPT, val_tokens: np.ndarray) -> float:
    """Mean cross-entropy of `model` (in eval mode) on the probe: the first PROBE_WINDOWS windows of the
    validation stream."""
    probe = TokenStream(val_tokens, model.config.block_size, PROBE_WINDOWS, max_eval_batches=1)
    x, y = next(iter(probe.eval_batches()))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss = float(model(x.to(device), y.to(device))[1])
    model.train(was_training)
    return loss


class _FirstSteps:
    """Copies of the weights as a run's first `n` steps begin, and once they are done.

    A forward pre-hook sees the weights as each training forward pass starts; in pretraining (one
    micro-batch per step) that is the start of each step, so the (n+1)-th copy holds the weights after
    n steps. A run that stops sooner (a replay of n steps) takes its last copy in `close`.
    """

    def __init__(self, model: GPT, n: int):
        self.n, self.config, self.weights = n, model.config, []
        self.handle = model.register_forward_pre_hook(self._before_forward)

    def _before_forward(self, model: GPT, args) -> None:
        if model.training and len(self.weights) <= self.n:  # evaluation passes run in eval mode
            self._copy(model)

    def _copy(self, model: GPT) -> None:
        self.weights.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})

    def close(self, model: GPT) -> None:
        """Stop watching; a run that ended within the first n steps gives its final weights as the last copy."""
        self.handle.remove()
        if len(self.weights) <= self.n:
            self._copy(model)

    def summary(self, val_tokens: np.ndarray) -> dict:
        """Probe loss before each step and after the last; L2 distance moved from the start after each."""
        start, model = self.weights[0], GPT(self.config)
        losses, moved = [], []
        for w in self.weights:
            model.load_state_dict(w)
            losses.append(probe_loss(model, val_tokens))
            moved.append(math.sqrt(sum(float(((w[k] - start[k]).double() ** 2).sum()) for k in start
                                       if k != "lm_head.weight")))  # tied to wte: counted once
        return {"steps": len(self.weights) - 1, "probe_losses": losses, "moved": moved[1:]}


def load_run(path: str | Path, device: str | torch.device = "cpu"):
    """A saved base: (model, tokenizer, metadata). Also reads a Hugging Face GPT-2 checkpoint folder,
    with GPT-2's tokenizer (from the folder's vocab.json + merges.txt if present, else tiktoken's)."""
    path = Path(path)
    if is_hf_checkpoint(path):
        from minitune.interop import load_hf_gpt2

        tokenizer = str(path) if (path / "vocab.json").is_file() else "gpt2"
        model, enc = load_hf_gpt2(path, device), get_tokenizer(tokenizer)
        if enc.n_vocab > model.config.vocab_size:
            source = path / "vocab.json" if tokenizer != "gpt2" else "tiktoken's gpt2 encoding"
            raise CheckpointError(
                f"{source} has {enc.n_vocab} tokens, but the model in {path} has an embedding of "
                f"{model.config.vocab_size} rows (config.json's vocab_size): ids from {model.config.vocab_size} up "
                f"would have no row. Use the vocab.json and merges.txt that were trained with these weights"
            )
        return model, enc, {"tokenizer": tokenizer, "hf_checkpoint": True}
    model, meta = load_model(path, device)
    return model, get_tokenizer(meta.get("tokenizer", "minitune")), meta


def is_hf_checkpoint(path: str | Path) -> bool:
    """Does the folder hold a Hugging Face GPT-2 checkpoint (its config.json has GPT-2's fields)?"""
    try:
        config = read_json(Path(path) / "config.json")
    except CheckpointError:
        return False
    return "model" not in config and "n_layer" in config


def replay_first_steps(preset: str = "tiny", seed: int = 0, steps: int = FIRST_STEPS) -> dict:
    """Run the first `steps` steps of `minitune pretrain --preset PRESET --seed SEED` again, on the CPU, and
    return what the run records as `first_steps`. The settings are the full run's: during warm-up the
    learning rate does not depend on the run's length, so stopping early changes none of these steps."""
    run = _setup(preset, seed, None, "minitune", None, "cpu", True, 0)
    if steps > run.cfg.warmup_steps:
        raise ConfigError(f"a replay can repeat at most the {run.cfg.warmup_steps} warm-up steps, {steps} asked for")
    train_data = TokenStream(run.train_tokens, run.model.config.block_size, run.batch_size, seed=seed)
    watch = _FirstSteps(run.model, steps)
    try:
        train(run.model, train_data, None, replace(run.cfg, max_steps=steps))
    finally:
        watch.close(run.model)
    return watch.summary(run.val_tokens)


@functools.lru_cache(maxsize=4)
def _built_in_inputs(preset: str, seed: int) -> tuple[dict, np.ndarray]:
    """(trained_on, validation tokens) of today's built-in corpus for `preset`: made once per process."""
    enc = get_tokenizer("minitune")
    docs = pretraining_corpus(target_bytes=RECIPES[preset]["corpus_bytes"], seed=seed)
    return trained_on(docs, enc), encode_documents(enc, split(docs, val_fraction=0.05, seed=seed)[1])


def _built_in(meta: dict) -> bool:
    """Was the base with this record pretrained on the built-in corpus with the built-in tokenizer?"""
    return meta.get("corpus") == BUILT_IN_CORPUS and meta.get("tokenizer", "minitune") == "minitune"


def base_mismatch(path: str | Path) -> str | None:
    """Why the base in `path`, pretrained on the built-in corpus, no longer fits today's corpus, tokenizer
    or model code; None when it fits."""
    model, meta = load_model(path)
    if not _built_in(meta):
        return f"it was pretrained on {meta.get('corpus')!r} with tokenizer {meta.get('tokenizer')!r}, not the built-in ones"
    if "trained_on" not in meta or "probe_loss" not in meta:
        return "it does not record what it was trained on (it predates that record)"
    now, val_tokens = _built_in_inputs(meta["preset"], meta["seed"])
    changed = [k for k in now if meta["trained_on"].get(k) != now[k]]
    if changed:
        return f"the built-in corpus or tokenizer has changed since it was pretrained ({', '.join(changed)} differ)"
    loss = probe_loss(model, val_tokens)
    if abs(loss - meta["probe_loss"]) > PROBE_TOLERANCE:
        return (f"the model code has changed since it was pretrained: its probe loss is {loss:.6f} now, "
                f"{meta['probe_loss']:.6f} when it was saved")
    return None


def builtin_base(preset: str = "tiny", quiet: bool = False) -> Path:
    """The folder of the base used when none is named: the shipped one if it fits today's code, else the
    cache runs/base-PRESET, pretrained (or pretrained again, saying why) when missing or out of date."""
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    shipped = SHIPPED.get(preset)
    if shipped is not None and (shipped / "config.json").is_file():
        reason = base_mismatch(shipped)
        if reason is None:
            return shipped
        say(f"(the {preset} base shipped with minitune does not fit this code: {reason}; using runs/ instead)")
    cache = runs_dir() / f"base-{preset}"
    if (cache / "config.json").is_file():
        reason = base_mismatch(cache)
        if reason is None:
            return cache
        if not _built_in(read_json(cache / "config.json")):   # your own base is never overwritten
            raise CheckpointError(f"{cache} is not a base of the built-in tiny world ({reason}); pass it by path "
                                  f"to use it, or move it away so that the default base can be pretrained there")
        say(f"({cache} is out of date: {reason}; pretraining it again)")
    else:
        say(f"(no {preset} base yet: pretraining it once, it is cached in {cache} for next time)")
    return pretrain(preset, out=cache, quiet=quiet)


def load_base(path: str | Path | None = None, device: str | torch.device = "cpu") -> GPT:
    """The model saved in a run folder (or a GPT-2 checkpoint folder); with no path, the default tiny
    base (`builtin_base`)."""
    return load_run(path if path is not None else builtin_base("tiny"), device)[0]
