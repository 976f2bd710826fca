"""Shared fixtures: one pretrained nano base per test session (a few seconds on a CPU)."""

import os

import pytest
from hypothesis import settings

# CI draws the same examples every run (a red build then means a change, not a new draw); a developer's
# runs draw fresh ones and keep what failed in .hypothesis/ to replay.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from minitune.pretrain import load_run, pretrain


@pytest.fixture(scope="session")
def nano_run(tmp_path_factory):
    """The folder of a nano base pretrained on the tiny world with the built-in recipe."""
    out = tmp_path_factory.mktemp("runs") / "base-nano"
    pretrain("nano", out=out, device="cpu", quiet=True)
    return out


@pytest.fixture
def nano_base(nano_run):
    """A fresh copy of the pretrained nano base (tests may change it freely)."""
    return load_run(nano_run)[0]


def random_hf_gpt2(vocab: int, context: int, layers: int, heads: int, width: int, seed: int = 0):
    """A transformers GPT2LMHeadModel of the given shape with N(0, 0.2) weights, in eval mode (for parity tests)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=context, n_embd=width, n_layer=layers,
                                     n_head=heads, bos_token_id=vocab - 1, eos_token_id=vocab - 1,
                                     layer_norm_epsilon=1e-3)  # not the default: a dropped epsilon shows
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()
