"""LoRA over a base held in bf16 (`LoRAConfig(base_dtype="bfloat16")`), checked on the CPU.

The GPU runs it under bf16 autocast; the CPU runs it without autocast, activations in bf16. CPU autocast
stands in for the GPU's here (it casts at the same ops); the CUDA test runs only where there is a GPU.
"""

import copy

import numpy as np
import pytest
import torch

from minitune.data.batches import TokenStream
from minitune.errors import ConfigError
from minitune.memory import measure_training_memory, memory_formula
from minitune.model import GPT, GPTConfig
from minitune.strategies import LoRAConfig, apply_strategy, base_fingerprint, load_trainable, save_trainable
from minitune.strategies.lora import lora_layers
from minitune.train import TrainConfig, evaluate_loss, train

CFG = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)
LORA = dict(r=4, alpha=8, targets=("c_attn", "c_fc"))


def base(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CFG).eval()


def with_update(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """B drawn away from zero, so the low-rank path changes the output (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.3)
    return model


def pair(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(LoRA on a float32 base, the same LoRA on the same base held in bf16), same A and B."""
    torch.manual_seed(seed)
    fp32 = with_update(apply_strategy(base(), LoRAConfig(**LORA)))
    torch.manual_seed(seed)
    bf16 = with_update(apply_strategy(base(), LoRAConfig(**LORA, base_dtype="bfloat16")))
    return fp32, bf16


def test_the_frozen_base_is_held_in_bf16_the_factors_in_float32_and_the_tie_kept():
    """Catches the option ignored, the factors cast with the base, or wte and lm_head untied by the cast."""
    _, model = pair()
    frozen = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and set(frozen.values()) == {torch.bfloat16}
    assert trainable and set(trainable.values()) == {torch.float32}
    assert all(".lora_" in n for n in trainable)
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "cpu-autocast"])
def test_forward_matches_the_float32_model_within_bf16_precision(autocast):
    """Catches the low-rank path lost in the casts to and from the factors' dtype (it is far above bf16's error),
    off autocast (the CPU's path) and under CPU autocast, standing in for the GPU's."""
    fp32, bf16 = pair()
    x = torch.randint(0, CFG.vocab_size, (3, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, plain = fp32(x)[0], base()(x)[0]  # float32, with and without the update
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            got = bf16(x)[0]
    assert got.dtype == torch.bfloat16  # it ran in bf16
    err = (got.float() - want).abs().max()
    assert err < 0.02 * want.abs().max()
    assert (want - plain).abs().max() > 10 * err  # so a lost update would be caught


def tiny_stream() -> TokenStream:
    pattern = np.array([5, 9, 2, 7, 7, 1, 3, 8] * 200, dtype=np.uint16)
    return TokenStream(pattern, block_size=16, batch_size=8, seed=0, max_eval_batches=2)


def test_train_moves_the_float32_factors_and_leaves_the_bf16_base_bitwise_as_it_was():
    """Catches a frozen bf16 tensor that moves, factors that get no gradient through the casts, or a
    training that goes elsewhere than the float32 model's (a side path mis-cast or cut off from the loss)."""
    fp32, model = pair()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    factors = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    data = tiny_stream()
    before = evaluate_loss(fp32, data.eval_batches())
    cfg = TrainConfig(max_steps=30, lr=1e-2, warmup_steps=0, eval_every=30, device="cpu", quiet=True)
    result, twin = train(model, data, data, cfg), train(fp32, data, data, cfg)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], t) for n, t in frozen.items())
    assert all(not torch.equal(params[n], t) and params[n].dtype == torch.float32 for n, t in factors.items())
    assert result.val_loss < before - 0.2  # it learned
    assert abs(result.val_loss - twin.val_loss) < 0.05  # as far as the float32 model did


def test_saved_and_loaded_onto_a_float32_base_it_is_the_same_model(tmp_path):
    """Catches base_dtype lost from the saved config (the load would build a float32 base), or a
    fingerprint of the base before its cast (a float32 base's, which no bf16 base has)."""
    _, model = pair()
    x = torch.randint(0, CFG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(4))
    save_trainable(model, tmp_path)
    loaded = load_trainable(base(), tmp_path).eval()  # a fresh float32 base: the strategy casts it
    assert loaded.strategy.base_dtype == "bfloat16"
    assert loaded.base_fingerprint == model.base_fingerprint == base_fingerprint(model)
    assert loaded.base_fingerprint != apply_strategy(base(), LoRAConfig(**LORA)).base_fingerprint
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], model(x)[0])


def test_bytes_of_training_state_count_the_base_at_two_bytes_and_the_factors_at_four():
    """Catches the formula assuming 4 bytes for every weight (it would predict twice the frozen bytes)."""
    _, model = pair()
    batch = (torch.randint(0, CFG.vocab_size, (1, 8)),) * 2
    measured, formula = measure_training_memory(model, batch), memory_formula(model, bytes_per_param=None)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert formula["weights"] == 2 * frozen + 4 * trainable
    assert {k: measured[k] for k in ("weights", "gradients", "optimizer")} == \
        {k: formula[k] for k in ("weights", "gradients", "optimizer")}


def test_only_bf16_or_nothing_is_accepted():
    for bad in ("float16", "bf16", torch.bfloat16):
        with pytest.raises(ConfigError, match="base_dtype"):
            LoRAConfig(base_dtype=bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_trains_under_cuda_autocast():
    """The GPU path itself: train()'s bf16 autocast over a bf16 base, factors in float32."""
    _, model = pair()
    frozen = {n: p.detach().clone().cuda() for n, p in model.named_parameters() if not p.requires_grad}
    data = tiny_stream()
    result = train(model, data, data, TrainConfig(max_steps=30, lr=1e-2, warmup_steps=0, eval_every=30,
                                                  device="cuda", quiet=True))
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], t) for n, t in frozen.items())
    assert result.val_loss < np.log(CFG.vocab_size) - 0.5
    cpu = copy.deepcopy(model).cpu()
    assert {p.dtype for p in cpu.parameters() if p.requires_grad} == {torch.float32}
