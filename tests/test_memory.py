"""Bytes of training state: measured from the tensors == the closed-form formula, byte for byte."""

import copy

import pytest
import torch

from minitune.memory import (
    file_size, human_bytes, measure_training_memory, memory_formula, tensor_bytes, training_memory,
)
from minitune.model import GPT, GPTConfig, count_parameters
from minitune.strategies import AdapterConfig, FullConfig, LoRAConfig, PromptTuningConfig, apply_strategy
from minitune.train import TrainConfig, make_optimizer

ALL = [FullConfig(), LoRAConfig(r=8, targets=("c_attn",)), AdapterConfig(bottleneck=16), PromptTuningConfig(n_tokens=20)]
KEYS = ("weights", "gradients", "optimizer", "optimizer_step", "total")


def nano(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_preset("nano"))


def batch(model, B: int = 2, T: int = 16):
    x = torch.randint(0, model.config.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(1))
    return x[:, :-1], x[:, 1:]


@pytest.mark.parametrize("config", ALL, ids=lambda c: c.name)
def test_measured_equals_formula(config):
    model = apply_strategy(nano(), config)
    measured = measure_training_memory(model, batch(model))
    assert {k: measured[k] for k in KEYS} == {k: memory_formula(model)[k] for k in KEYS}
    assert measured["total"] == measured["weights"] + measured["gradients"] + measured["optimizer"]


def test_full_fine_tuning_is_16_bytes_per_parameter_plus_step_counters():
    model = apply_strategy(nano(), FullConfig())
    measured = measure_training_memory(model, batch(model))
    P = count_parameters(model.config)  # closed form, tied head counted once
    n_tensors = len(list(model.parameters()))
    assert measured["weights"] == 4 * P
    assert measured["total"] == 16 * P + 4 * n_tensors
    assert measured["optimizer_step"] == 4 * n_tensors


def test_lora_optimizer_and_gradient_bytes_are_a_small_fraction_of_full():
    full = measure_training_memory(apply_strategy(nano(), FullConfig()), batch(nano()))
    lora = measure_training_memory(apply_strategy(nano(), LoRAConfig(r=8)), batch(nano()))
    assert lora["optimizer"] < 0.05 * full["optimizer"]
    assert lora["gradients"] < 0.05 * full["gradients"]
    assert lora["weights"] > full["weights"]  # the frozen base is all still there, plus A and B


@pytest.mark.parametrize("config", ALL, ids=lambda c: c.name)
def test_measuring_leaves_the_model_unchanged(config):
    model = apply_strategy(nano(), config)
    before = copy.deepcopy(model.state_dict())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.eval()
    measure_training_memory(model, batch(model), lr=0.5)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert not model.training


def test_training_memory_counts_only_what_exists():
    model = apply_strategy(nano(), FullConfig())
    fresh = training_memory(model)
    assert fresh["gradients"] == 0 and fresh["optimizer"] == 0
    assert fresh["total"] == fresh["weights"] == 4 * model.num_parameters()
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    assert training_memory(model, optimizer)["optimizer"] == 0  # AdamW's state appears at the first step


def test_tensor_bytes_counts_each_tensor_once_and_respects_dtype():
    a = torch.zeros(10, 3)
    assert tensor_bytes([a, a]) == 10 * 3 * 4
    assert tensor_bytes([a, torch.zeros(5, dtype=torch.float16)]) == 10 * 3 * 4 + 5 * 2
    assert tensor_bytes([]) == 0


def test_formula_scales_with_bytes_per_param():
    model = apply_strategy(nano(), LoRAConfig())
    f4, f2 = memory_formula(model, 4), memory_formula(model, 2)
    assert f4["weights"] == 2 * f2["weights"] and f4["gradients"] == 2 * f2["gradients"]
    assert f4["optimizer"] - f4["optimizer_step"] == 2 * (f2["optimizer"] - f2["optimizer_step"])


def test_file_size_of_a_file_and_of_a_folder(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 23)
    assert file_size(tmp_path / "a.bin") == 100
    assert file_size(tmp_path) == 123


@pytest.mark.parametrize("n, text", [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1_234_567, "1.2 MB"),
                                      (999_960, "1.0 MB"), (45_600_000_000, "45.6 GB")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text
