"""NF4, the 4-bit base of QLoRA: the code book, the round-trip error bound, the bytes a 4-bit base holds,
and saving and loading one.

Each test names, in its docstring, a broken implementation it catches.
"""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minitune.errors import CheckpointError, ConfigError
from minitune.model import GPT, GPTConfig
from minitune.strategies import QLoRAConfig, apply_strategy, base_fingerprint, load_trainable, save_trainable
from minitune.strategies.nf4 import NF4, NF4Weight, linear_4bit, load_nf4_base, quantize_base, save_nf4_base
from strategy_cases import ids, large_base, perturb_trainable, random_weights


# NF4 as published with QLoRA (bitsandbytes' table), to the digits printed there
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]


def test_the_code_book_built_from_normal_quantiles_is_nf4():
    """Catches the wrong outer probability, 8 values below zero instead of 7, or a missing exact zero."""
    assert torch.allclose(NF4.double(), torch.tensor(PUBLISHED_NF4, dtype=torch.float64), atol=1e-6, rtol=0)


@settings(max_examples=80, deadline=None)
@given(w=random_weights(), block=st.sampled_from([2, 8, 64]), scale_block=st.integers(1, 300), double=st.booleans())
def test_nf4_round_trip_error_is_within_its_bound(w, block, scale_block, double):
    """Element by element, |w - w~| <= c * (distance from w / c to the nearest code) + |c - c~|, with the
    stored absmax c~ within s / 254 of the true c; so |w - w~| <= c * g / 2 + s / 254, nf4.py's bound.

    The first catches a code that is a neighbour of the nearest one (bucketize against the codes instead of
    their midpoints); the second a double quantisation that rounds to more than half a step or forgets the
    mean; the shapes, the padding of the last block; all-zero blocks, a division by a zero absmax."""
    q = NF4Weight.quantize(w, block, scale_block, double)
    back = q()
    assert back.shape == w.shape and back.dtype == w.dtype
    flat = F.pad(w.double().flatten(), (0, -w.numel() % block)).view(-1, block)  # (n_blocks, block)
    err = (flat - F.pad(back.double().flatten(), (0, -w.numel() % block)).view(-1, block)).abs()
    c, stored = flat.abs().amax(dim=1), q.block_absmax().double()  # true and stored absmax per block
    normed = flat / torch.where(c > 0, c, 1)[:, None]
    nearest = (normed[..., None] - NF4.double()).abs().amin(dim=-1)  # brute force over the 16 codes
    tol = 1e-6 * torch.maximum(c, stored)[:, None]  # float32 rounding of w / c and of q * c~
    assert bool((err <= c[:, None] * nearest + (stored - c).abs()[:, None] + tol).all())
    centred = F.pad(c - c.mean(), (0, -len(c) % scale_block)).view(-1, scale_block)
    s = centred.abs().amax(dim=1).repeat_interleave(scale_block)[:len(c)] if double else torch.zeros_like(c)
    assert bool(((stored - c).abs() <= s / 254 + 1e-6 * c.max()).all())
    g = (NF4[1:] - NF4[:-1]).max().double()
    assert g == pytest.approx(0.3038, abs=1e-4)  # the bound's g, as nf4.py states it
    assert bool((err <= c[:, None] * g / 2 + (s / 254)[:, None] + 2e-6 * c.max()).all())


def nf4_bytes(numel: int, block: int = 64, scale_block: int = 256) -> int:
    """Closed form: 4-bit codes, one 8-bit absmax per block, one float32 scale per scale block, one mean."""
    blocks = -(-numel // block)
    return blocks * block // 2 + blocks + 4 * -(-blocks // scale_block) + 4


def tensor_bytes(model: nn.Module) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}  # a tied tensor once
    return sum(t.numel() * t.element_size() for t in tensors.values())


def test_the_4bit_base_holds_its_linear_weights_in_the_closed_form_bytes():
    """Measured on the tiny preset against fp32 and bf16: catches codes stored one per byte (not two), absmaxes
    kept in float32 under double quantisation, a float copy of a weight left behind, or a layer not quantised."""
    torch.manual_seed(0)
    fp32 = GPT(GPTConfig.from_preset("tiny"))
    c = fp32.config
    linear = [(3 * c.n_embd, c.n_embd), (c.n_embd, c.n_embd), (4 * c.n_embd, c.n_embd), (c.n_embd, 4 * c.n_embd)]
    n_linear = c.n_layer * sum(o * i for o, i in linear)
    quantised = quantize_base(copy.deepcopy(fp32))
    assert not any(isinstance(m, nn.Linear) for m in quantised.transformer.h.modules())
    expected = 4 * (fp32.num_parameters() - n_linear) + c.n_layer * sum(nf4_bytes(o * i) for o, i in linear)
    measured = tensor_bytes(quantised)
    assert measured == expected
    bf16 = tensor_bytes(copy.deepcopy(fp32).to(torch.bfloat16))
    assert tensor_bytes(fp32) == 2 * bf16 == 4 * fp32.num_parameters()
    linear_bytes = measured - 4 * (fp32.num_parameters() - n_linear)
    assert linear_bytes / n_linear == pytest.approx(0.5159, abs=2e-3)  # bytes per quantised weight
    print(f"tiny base: fp32 {tensor_bytes(fp32):,} B, bf16 {bf16:,} B, NF4 linears + fp32 rest {measured:,} B; "
          f"{linear_bytes / n_linear:.4f} B per quantised weight")


def test_a_4bit_base_saved_and_loaded_is_the_same_base_for_qlora_files(tmp_path):
    """Catches a 4-bit base that loses a buffer (the absmax scales or mean) on the way, unties the LM head, or
    whose fingerprint differs from the one QLoRA records on the float base (its files would be refused)."""
    plain = large_base()
    trained = apply_strategy(copy.deepcopy(plain), QLoRAConfig(r=2, targets=("c_attn", "mlp.c_fc")))
    perturb_trainable(trained)
    save_trainable(trained, tmp_path / "task")
    quantised = quantize_base(copy.deepcopy(plain))
    save_nf4_base(quantised, tmp_path / "base")
    loaded = load_nf4_base(tmp_path / "base")
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    mine = loaded.state_dict()
    assert set(mine) == set(quantised.state_dict())
    assert all(torch.equal(mine[k], v) for k, v in quantised.state_dict().items())
    x = ids()
    assert torch.equal(loaded(x)[0], quantised(x)[0])
    served = load_trainable(loaded, tmp_path / "task")  # the fingerprint check passes: the same 4-bit base
    assert torch.equal(served(x)[0], trained(x)[0])
    assert served.base_fingerprint == trained.base_fingerprint == base_fingerprint(trained)
    with pytest.raises(ConfigError, match="quantize_base"):
        save_nf4_base(large_base(), tmp_path / "plain")
    with pytest.raises(ConfigError, match="save_trainable"):
        save_nf4_base(trained, tmp_path / "strategy")


def test_a_float_base_file_is_not_a_4bit_base(tmp_path):
    from minitune.checkpoint import save_model

    save_model(large_base(), tmp_path)
    with pytest.raises(CheckpointError, match="4-bit base"):
        load_nf4_base(tmp_path)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_4bit_linear_has_plain_linears_gradients_and_keeps_no_dequantised_weight(bias, dtype):
    # Catches: F.linear(x, dequant(W)), which makes autograd keep a full-size W for backward (a 4-bit base
    # that costs a float copy per layer in training), and a backward that gets W, its transpose or the bias
    # gradient wrong.
    torch.manual_seed(0)
    w = NF4Weight.quantize(torch.randn(24, 40))
    b = torch.randn(24, dtype=dtype, requires_grad=True) if bias else None
    x = torch.randn(3, 5, 40, dtype=dtype, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = linear_4bit(x, w, b)
    assert not saved  # nothing kept: backward dequantises again
    g = torch.randn_like(y)
    y.backward(g)
    x2 = x.detach().clone().requires_grad_()
    b2 = b.detach().clone().requires_grad_() if bias else None
    y2 = F.linear(x2, w(dtype), b2)
    y2.backward(g)
    assert torch.equal(y, y2) and torch.equal(x.grad, x2.grad)
    if bias:
        assert torch.allclose(b.grad, b2.grad, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6)
