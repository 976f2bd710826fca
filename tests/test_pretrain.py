"""Pretraining end to end (nano), saving and loading a run, the command line, and bad input."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from minitune import load_base, load_run, pretrain
from minitune.checkpoint import atomic_write_bytes, load_model, save_model
from minitune.cli import main
from minitune.errors import CheckpointError, DataError
from minitune.model import GPT, GPTConfig
from minitune.data import pretraining_corpus
from minitune.pretrain import (FIRST_STEPS, PROBE_TOLERANCE, RECIPES, base_mismatch, builtin_base,
                               replay_first_steps, trained_on, unigram_loss)
from minitune.tokenizer import BUILTIN_RANKS, encoding_from_ranks, get_tokenizer, read_ranks


def test_pretrain_writes_a_loadable_run_that_beats_the_unigram_baseline(nano_run):
    meta = json.loads((nano_run / "config.json").read_text())
    assert meta["tokenizer"] == "minitune" and meta["preset"] == "nano"
    assert meta["val_loss"] < meta["unigram_val_loss"]
    model, enc, _ = load_run(nano_run)
    assert model.config.vocab_size == enc.n_vocab
    ids = torch.tensor([enc.encode("The market in")])
    assert model.generate(ids, 5).shape == (1, ids.size(1) + 5)
    assert torch.equal(load_base(nano_run).transformer.wte.weight, model.transformer.wte.weight)


def test_unigram_baseline_is_the_entropy_for_a_uniform_stream():
    tokens = np.tile(np.arange(8), 100)
    assert unigram_loss(tokens, tokens, 8) == pytest.approx(np.log(8))


def test_user_corpus_replaces_the_tiny_world(tmp_path):
    corpus = tmp_path / "mine.txt"
    corpus.write_text("\n\n".join(f"Document {i} says the sky is {'blue' if i % 2 else 'grey'} today." for i in range(400)))
    out = pretrain("nano", out=tmp_path / "run", max_steps=3, corpus=corpus, device="cpu", quiet=True)
    assert json.loads((out / "config.json").read_text())["corpus"] == str(corpus)


def test_empty_or_missing_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    for path in (tmp_path / "empty.txt", tmp_path / "missing.txt"):
        with pytest.raises(DataError, match=path.name):
            pretrain("nano", out=tmp_path / "run", max_steps=1, corpus=path, quiet=True)
    assert not (tmp_path / "run").exists()


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    assert main(["pretrain", "--preset", "nano", "--corpus", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "r")]) == 2
    assert "nope.txt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "--preset", "huge"])


def test_console_module_runs():
    done = subprocess.run([sys.executable, "-m", "minitune", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "pretrain" in done.stdout


def test_load_refuses_a_run_of_another_shape(tmp_path):
    save_model(GPT(GPTConfig.from_preset("nano")), tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"]["n_embd"] = 64
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="wrong shape.*transformer"):
        load_model(tmp_path)


def test_load_refuses_a_truncated_weights_file(tmp_path):
    save_model(GPT(GPTConfig.from_preset("nano")), tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="not a minitune run folder"):
        load_model(tmp_path / "elsewhere")


def test_a_crash_mid_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "weights.bin"
    atomic_write_bytes(target, b"old complete file")

    def crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half of the new")
        raise RuntimeError("killed")

    from minitune.checkpoint import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_bytes() == b"old complete file"
    assert os.listdir(tmp_path) == ["weights.bin"]  # the temporary file is gone too


def test_pretraining_is_reproducible(nano_run, tmp_path):
    torch.manual_seed(1234)  # whatever the global generator holds, the run depends on its seed alone
    again = pretrain("nano", out=tmp_path / "again", device="cpu", quiet=True)
    a, b = load_model(nano_run)[0], load_model(again)[0]
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


# --- what a base records, and the checks built on it --------------------------------------------------------

def test_the_record_holds_what_the_run_was_trained_on(nano_run):
    meta = json.loads((nano_run / "config.json").read_text())
    docs = pretraining_corpus(target_bytes=RECIPES["nano"]["corpus_bytes"], seed=0)
    assert meta["trained_on"] == trained_on(docs, get_tokenizer("minitune"))
    assert meta["trained_on"] != trained_on(docs[:-1], get_tokenizer("minitune"))   # one document fewer
    ranks = read_ranks(BUILTIN_RANKS)
    a, b = sorted(ranks, key=ranks.get)[300:302]
    ranks[a], ranks[b] = ranks[b], ranks[a]                                      # two merges in another order
    assert meta["trained_on"] != trained_on(docs, encoding_from_ranks("minitune", ranks))
    assert meta["command"] == "minitune pretrain --preset nano --seed 0" and meta["torch"] == torch.__version__


def test_a_replay_repeats_the_first_steps_the_run_recorded(nano_run):
    recorded = json.loads((nano_run / "config.json").read_text())["first_steps"]
    replayed = replay_first_steps("nano", seed=0)
    assert recorded["steps"] == replayed["steps"] == FIRST_STEPS
    assert replayed["probe_losses"] == pytest.approx(recorded["probe_losses"], abs=1e-6)
    assert replayed["moved"] == pytest.approx(recorded["moved"], rel=1e-6)
    # the steps did something: the weights moved further each step and the probe loss fell
    assert 0 < recorded["moved"][0] < recorded["moved"][1] < recorded["moved"][2]
    assert recorded["probe_losses"][-1] < recorded["probe_losses"][0] - 0.05


def test_a_short_run_records_the_steps_it_took(tmp_path):
    out = pretrain("nano", out=tmp_path / "short", max_steps=2, device="cpu", quiet=True, checkpoint_every=0)
    steps = json.loads((out / "config.json").read_text())["first_steps"]
    assert steps["steps"] == 2 and len(steps["probe_losses"]) == 3 and len(steps["moved"]) == 2


def _edit_record(folder, **changes):
    meta = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value(meta[key]) if callable(value) else value
    (folder / "config.json").write_text(json.dumps(meta))


def test_base_mismatch_names_what_changed(nano_run, tmp_path):
    assert base_mismatch(nano_run) is None
    cases = {
        "corpus": dict(trained_on=lambda t: {**t, "corpus_sha256": "0" * 64}),
        "model code": dict(probe_loss=lambda loss: loss + 10 * PROBE_TOLERANCE),
        "predates": dict(trained_on=None),
        "not the built-in": dict(corpus="mine.txt"),
    }
    for words, changes in cases.items():
        folder = tmp_path / words.replace(" ", "-")
        shutil.copytree(nano_run, folder)
        _edit_record(folder, **changes)
        assert words in base_mismatch(folder)


def test_builtin_base_uses_a_fitting_cache_and_rebuilds_an_out_of_date_one(nano_run, tmp_path, monkeypatch):
    monkeypatch.setenv("MINITUNE_RUNS", str(tmp_path))
    cache = tmp_path / "base-nano"
    shutil.copytree(nano_run, cache)
    _edit_record(cache, probe_loss=lambda loss: loss + 1.0)   # as if model.py had changed since
    assert builtin_base("nano", quiet=True) == cache
    assert base_mismatch(cache) is None                      # pretrained again, with today's code
    stamp = (cache / "model.safetensors").stat().st_mtime_ns
    assert builtin_base("nano", quiet=True) == cache and (cache / "model.safetensors").stat().st_mtime_ns == stamp
    _edit_record(cache, corpus="mine.txt")                   # your own corpus is never overwritten
    with pytest.raises(CheckpointError, match="base-nano"):
        builtin_base("nano", quiet=True)
