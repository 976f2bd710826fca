"""Bytes of training state and of saved activations: measured from the tensors == the closed-form formulas,
byte for byte."""

import copy

import pytest
import torch

from minitune.memory import (
    activation_bytes, activation_count, file_size, human_bytes, measure_training_memory, memory_formula,
    saved_activation_bytes, tensor_bytes, training_memory,
)
from minitune.model import GPT, GPTConfig, count_parameters
from minitune.strategies import (AdapterConfig, FullConfig, LoRAConfig, PromptTuningConfig, QLoRAConfig,
                                 apply_strategy)
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


def test_a_4bit_base_counts_its_codes_and_absmaxes_as_weights():
    """QLoRA's frozen weights are NF4 buffers, not parameters. Catches counting parameters only, which leaves
    a 4-bit base's linear weights out of its memory altogether."""
    model = apply_strategy(nano(), QLoRAConfig(r=8, targets=("c_attn",)))
    measured = measure_training_memory(model, batch(model))
    c = model.config
    linear = [(3 * c.n_embd, c.n_embd), (c.n_embd, c.n_embd), (4 * c.n_embd, c.n_embd), (c.n_embd, 4 * c.n_embd)]

    def nf4_bytes(numel: int, block: int = 64, scale_block: int = 256) -> int:  # codes, absmax codes, scales, mean
        blocks = -(-numel // block)
        return blocks * block // 2 + blocks + 4 * -(-blocks // scale_block) + 4

    floats = 4 * sum(p.numel() for p in model.parameters())  # embeddings, LayerNorms, biases, A and B
    assert measured["weights"] == floats + c.n_layer * sum(nf4_bytes(o * i) for o, i in linear)
    formula = memory_formula(model)  # what trains is LoRA's alone: the buffers take no gradient or moments
    assert (measured["gradients"], measured["optimizer"]) == (formula["gradients"], formula["optimizer"])


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


# --- activations: the formula against what autograd really saves ---------------------------------------

# Strategies whose saved tensors differ: LoRA on one, three, or only the last layer of a block (then block
# 0's attention keeps nothing); adapters in both placements and both non-linearities; a soft prompt.
ACTIVATION_STRATEGIES = [
    FullConfig(), LoRAConfig(r=2, targets=("c_attn",)), LoRAConfig(r=3, targets=("c_attn", "c_fc", "c_proj")),
    LoRAConfig(r=2, targets=("mlp.c_proj",)), AdapterConfig(bottleneck=16),
    AdapterConfig(bottleneck=5, placement="pfeiffer", activation="relu"), PromptTuningConfig(n_tokens=5),
    QLoRAConfig(r=2, targets=("c_attn", "mlp.c_fc")),  # its 4-bit layers keep no dequantised weight
]


def random_shape(seed: int) -> tuple[GPTConfig, int, int]:
    """A small GPT shape, batch and length drawn at random (widths a multiple of the head count)."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    heads = pick(1, 4)
    config = GPTConfig(vocab_size=pick(50, 300), block_size=48, n_layer=pick(1, 3), n_head=heads,
                       n_embd=heads * pick(3, 12))
    return config, pick(1, 4), pick(1, 20)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("config", ACTIVATION_STRATEGIES, ids=lambda c: f"{c.name}-{getattr(c, 'targets', '')}")
def test_activation_formula_equals_the_saved_tensors(config, seed):
    # Catches any wrong term: a frozen linear layer counted as keeping its input, LoRA's x A or s B left
    # out, a LayerNorm counted in a block no gradient passes through, the soft prompt's positions missed.
    shape, B, T = random_shape(seed)
    torch.manual_seed(seed)
    model = apply_strategy(GPT(shape), config)
    x, y = (torch.randint(0, shape.vocab_size, (B, T)) for _ in range(2))
    assert activation_bytes(shape, config, B, T) == saved_activation_bytes(model, x, y)


def test_measuring_activations_leaves_no_gradients_and_keeps_the_mode():
    model = apply_strategy(nano(), FullConfig()).eval()
    x, y = batch(model)
    saved_activation_bytes(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_peft_keeps_fewer_activations_than_full_but_prompt_tuning_keeps_the_most_of_them():
    # Catches a formula that lets PEFT skip the frozen layers above its first trainable tensor: LoRA and
    # adapters save at least the attention and GELU inputs of every block, prompt tuning all but the inputs
    # of the linear layers, so each keeps well over a third of what full fine-tuning keeps.
    shape = GPTConfig.from_preset("tiny")
    full = activation_count(shape, FullConfig(), 4, 64)["act"]
    for config in ALL[1:]:
        peft = activation_count(shape, config, 4, 64)["act"]
        assert 0.35 * full < peft < full, config.name


def test_bf16_halves_only_the_activations_autocast_runs_in_bf16():
    shape = GPTConfig.from_preset("tiny")
    count = activation_count(shape, FullConfig(), 2, 32)
    fp32, bf16 = (activation_bytes(shape, FullConfig(), 2, 32, p) for p in ("fp32", "bf16"))
    assert fp32 - bf16 == 2 * count["act"]


def test_activations_grow_linearly_with_the_batch():
    shape = GPTConfig.from_preset("tiny")
    for config in ALL:
        one, two = (activation_count(shape, config, B, 32) for B in (1, 2))
        for kind in ("resid", "stat", "logp"):
            assert two[kind] == 2 * one[kind]


@pytest.mark.parametrize("config", ALL + [QLoRAConfig(r=4, targets=("c_attn", "mlp.c_proj"))], ids=lambda c: c.name)
def test_checkpointing_keeps_each_blocks_input_and_one_blocks_tensors(config):
    # Catches: a checkpointed count that still sums every block, forgets the block inputs it must keep,
    # or takes the first block (smaller under LoRA and adapters: no gradient flows into it).
    B, T, d = 2, 24, 16
    shape = lambda n: GPTConfig(vocab_size=300, block_size=48, n_layer=n, n_head=2, n_embd=d)  # noqa: E731
    ck = {n: activation_count(shape(n), config, B, T, checkpointed=True) for n in (1, 2, 3, 4)}
    plain = {n: activation_count(shape(n), config, B, T) for n in (1, 2, 3, 4)}
    inputs = B * (T + getattr(config, "n_tokens", 0)) * d  # one block's input: the residual stream
    assert ck[1] == {**plain[1], "resid": plain[1]["resid"] + inputs}
    for n in (3, 4):  # past the first block, depth adds only the next block's input
        assert ck[n] == {**ck[n - 1], "resid": ck[n - 1]["resid"] + inputs}
        assert ck[n]["act"] < plain[n]["act"]
    if config.name in ("lora", "qlora", "adapter"):  # block 0 keeps less (no LayerNorm input): the peak is a later block's
        own = lambda c, n: c["resid"] + c["act"] + c["stat"] - n * inputs  # noqa: E731
        assert own(ck[2], 2) > own(ck[1], 1)
