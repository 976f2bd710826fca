"""Pretraining end to end (nano), saving and loading a run, the command line, and bad input."""

import json
import os
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
from minitune.pretrain import unigram_loss


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
