"""The tiny base shipped in minitune/assets still fits the code: same corpus, same vocabulary, same model
code, same first steps of pretraining. When one of these fails, regenerate it (about 15 minutes on 2 cores):

    minitune pretrain --preset tiny --out runs/tiny-base && cp runs/tiny-base/{model.safetensors,config.json,history.json} minitune/assets/tiny-base/
"""

import json
from pathlib import Path

import pytest
import torch

from minitune.checkpoint import load_model
from minitune.data import pretraining_corpus, split
from minitune.data.batches import encode_documents
from minitune.pretrain import (FIRST_STEPS, PROBE_TOLERANCE, RECIPES, SHIPPED, builtin_base, load_base,
                               probe_loss, replay_first_steps, trained_on)
from minitune.tokenizer import get_tokenizer

BASE = SHIPPED["tiny"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped():
    """(model, record) of the shipped tiny base."""
    return load_model(BASE)


@pytest.fixture(scope="module")
def corpus(shipped) -> list[str]:
    """Today's built-in corpus for the tiny preset, with the shipped base's seed (about 1.5 s)."""
    return pretraining_corpus(target_bytes=RECIPES["tiny"]["corpus_bytes"], seed=shipped[1]["seed"])


def test_shipped_base_was_made_by_the_tiny_recipe(shipped):
    _, meta = shipped
    assert meta["preset"] == "tiny" and meta["corpus"] == "tiny-world" and meta["tokenizer"] == "minitune"
    assert meta["steps"] == RECIPES["tiny"]["max_steps"]
    assert meta["command"] == f"minitune pretrain --preset tiny --seed {meta['seed']}"
    assert meta["val_loss"] < meta["unigram_val_loss"]


def test_todays_corpus_and_vocabulary_are_what_the_shipped_base_was_trained_on(shipped, corpus):
    assert trained_on(corpus, get_tokenizer("minitune")) == shipped[1]["trained_on"]


def test_todays_model_code_computes_what_the_shipped_weights_computed_when_saved(shipped, corpus):
    model, meta = shipped
    val_tokens = encode_documents(get_tokenizer("minitune"), split(corpus, val_fraction=0.05, seed=meta["seed"])[1])
    assert probe_loss(model, val_tokens) == pytest.approx(meta["probe_loss"], abs=PROBE_TOLERANCE)


def test_replaying_the_first_steps_of_pretraining_gives_the_recorded_numbers(shipped):
    recorded = shipped[1]["first_steps"]
    replayed = replay_first_steps("tiny", seed=shipped[1]["seed"], steps=FIRST_STEPS)
    assert replayed["steps"] == recorded["steps"] == FIRST_STEPS
    assert replayed["probe_losses"] == pytest.approx(recorded["probe_losses"], abs=PROBE_TOLERANCE)
    assert replayed["moved"] == pytest.approx(recorded["moved"], rel=1e-4)


def test_load_base_uses_the_shipped_base_and_writes_nothing(shipped, tmp_path, monkeypatch):
    monkeypatch.setenv("MINITUNE_RUNS", str(tmp_path))
    assert builtin_base("tiny", quiet=True) == BASE
    model = load_base()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), shipped[0].state_dict().values()))
    assert list(tmp_path.iterdir()) == []


def test_package_data_ships_every_asset():
    tomllib = pytest.importorskip("tomllib")   # Python 3.11+
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["minitune"]
    shipped = {p for pattern in patterns for p in (REPO / "minitune").glob(pattern) if p.is_file()}
    assets = {p for p in (REPO / "minitune" / "assets").rglob("*") if p.is_file()}
    assert {BASE / "model.safetensors", BASE / "config.json"} <= assets
    assert assets <= shipped
    assert json.loads((BASE / "config.json").read_text())["sha256"]   # load_model checks the weights against it
