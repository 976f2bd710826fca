"""QLoRA: LoRA over the 4-bit base starts as that base, quantises every block linear, refuses to merge, and
its files know which 4-bit weights they were trained on.

The 4-bit weights themselves are tested in test_nf4.py; the properties every strategy shares (counts,
training steps with the 4-bit codes bitwise unchanged, saving and loading) in test_strategy_api.py.
"""

import copy

import pytest
import torch
import torch.nn as nn

from minitune.errors import CheckpointError, ConfigError
from minitune.strategies import QLoRAConfig, apply_strategy, load_trainable, merge, save_trainable
from minitune.strategies.nf4 import quantize_base
from strategy_cases import ids, large_base


def test_qlora_starts_as_its_4bit_base_and_every_block_linear_is_4bit():
    """Catches LoRA's B initialised non-zero, and quantising only the adapted layers (the base's other linear
    weights left in float, so the model is not the 4-bit base it claims)."""
    plain = large_base()
    model = apply_strategy(copy.deepcopy(plain), QLoRAConfig(r=2, targets=("c_attn",)))
    quantised = quantize_base(copy.deepcopy(plain))
    x = ids()
    assert torch.equal(model(x)[0], quantised(x)[0])
    assert not torch.equal(model(x)[0], plain(x)[0])
    assert not any(isinstance(m, nn.Linear) for m in model.transformer.h.modules())
    with pytest.raises(ConfigError, match="cannot be merged"):
        merge(model)
    with pytest.raises(ConfigError, match="already held in NF4"):
        apply_strategy(quantised, QLoRAConfig(r=2, quant_block=32))


def test_a_qlora_file_is_refused_on_a_base_whose_4bit_weights_differ(tmp_path):
    """Catches a base fingerprint over parameters only: the 4-bit weights are buffers, so a base differing only
    in them would pass as the base the file was trained on."""
    plain = large_base()
    other = copy.deepcopy(plain)
    with torch.no_grad():
        other.transformer.h[1].mlp.c_fc.weight[0, :8] *= -1  # same shapes, and the same everywhere else
    model = apply_strategy(copy.deepcopy(plain), QLoRAConfig(r=2))
    save_trainable(model, tmp_path)
    with pytest.raises(CheckpointError, match="other weights"):
        load_trainable(other, tmp_path)
