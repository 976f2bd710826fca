"""DoRA, (IA)3, prefix tuning and the 4-bit base of QLoRA: each one's math, against a reference of its own.

The properties every strategy shares (closed-form counts, frozen tensors bitwise unchanged by training,
save/load) are in test_strategies.py, over these strategies too. Each test here names, in its docstring, a
broken implementation it catches.
"""

import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minitune.errors import CheckpointError, ConfigError, TrainingError
from minitune.model import GPT, GPTConfig, KVCache
from minitune.strategies import (
    DoRAConfig, IA3Config, LoRAConfig, PrefixTuningConfig, QLoRAConfig, apply_strategy, base_fingerprint,
    load_trainable, merge, save_trainable, trainable_parameters, trainable_state, unmerge,
)
from minitune.strategies.dora import DoRALinear
from minitune.strategies.nf4 import NF4, NF4Weight, load_nf4_base, quantize_base, save_nf4_base
from minitune.strategies.prefix import fold
from test_strategies import perturb_trainable, random_bases, random_configs, random_ids


def base(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=16)
    cfg.update(kw)
    model = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def ids(seed=1, B=2, T=10, V=64) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the rounding of the less precise of the two (float32 or float64), relative to b's size."""
    tol = 1e-9 if a.dtype == b.dtype == torch.float64 else 1e-4
    return torch.allclose(a.double(), b.double(), rtol=tol, atol=tol * (1 + b.abs().max().item()))


# --- DoRA ------------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(fan_in=st.integers(1, 24), fan_out=st.integers(1, 24), data=st.data(), alpha=st.floats(0.1, 64),
       rslora=st.booleans(), seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_dora_layer_is_the_formula_and_merges_exactly_once(fan_in, fan_out, data, alpha, rslora, seed, dtype):
    """Against m * (W + s B A) / ||W + s B A|| written out in float64: catches the norm taken over the inputs
    (dim 0) instead of per output feature, the scale s left out of the norm or the update, the bias scaled
    with the weight, and a merge that is not undone by unmerge (or that merges twice)."""
    r = data.draw(st.integers(1, min(fan_in, fan_out)))
    torch.manual_seed(seed)
    linear = nn.Linear(fan_in, fan_out).to(dtype)
    w0 = linear.weight.detach().clone()
    layer = DoRALinear(linear, r, DoRAConfig(r=r, alpha=alpha, rslora=rslora).scaling).eval()
    assert torch.equal(layer.lora_magnitude, torch.linalg.vector_norm(w0, dim=1))
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.lora_magnitude.mul_(1 + 0.5 * torch.rand_like(layer.lora_magnitude))
    x = torch.randn(3, fan_in, dtype=dtype)
    W, A, B, m = (t.detach().double() for t in (w0, layer.lora_A, layer.lora_B, layer.lora_magnitude))
    direction = W + layer.scaling * B @ A
    reference = x.double() @ (m[:, None] * direction / direction.norm(dim=1, keepdim=True)).T + linear.bias.double()
    unmerged = layer(x)
    assert close(unmerged, reference.to(dtype))
    layer.merge()
    once = layer.weight.detach().clone()
    layer.merge()
    assert torch.equal(layer.weight, once) and layer.merged
    assert close(layer(x), unmerged)
    layer.unmerge()
    assert close(layer.weight, w0) and not layer.merged
    layer.unmerge()
    assert close(layer.weight, w0)


def test_dora_norm_is_a_constant_in_the_backward_pass():
    """Catches the norm left in the autograd graph: the gradients of A and B then differ from the reference's,
    which detaches ||W + s B A|| (the paper's section 4.3), and are checked not to match the undetached one."""
    torch.manual_seed(0)
    linear = nn.Linear(6, 5).double()
    layer = DoRALinear(linear, r=2, scaling=1.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 6, dtype=torch.float64)
    layer(x).square().sum().backward()

    def reference(detach: bool):
        A, B, m = (t.detach().clone().requires_grad_() for t in (layer.lora_A, layer.lora_B, layer.lora_magnitude))
        direction = linear.weight + 1.5 * B @ A
        norm = direction.norm(dim=1, keepdim=True)
        w = m[:, None] * direction / (norm.detach() if detach else norm)
        F.linear(x, w, linear.bias).square().sum().backward()
        return A.grad, B.grad, m.grad

    detached, attached = reference(True), reference(False)
    got = (layer.lora_A.grad, layer.lora_B.grad, layer.lora_magnitude.grad)
    assert all(torch.allclose(g, r, atol=1e-10) for g, r in zip(got, detached))
    assert not torch.allclose(got[0], attached[0], atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_merged_dora_and_ia3_equal_unmerged_and_load_strictly_into_a_plain_gpt(data):
    """Catches a merge that folds the wrong rows or columns (the (IA)3 feed-forward vector on W's rows, the
    key/value vector on the query rows), forgets the bias, or leaves trainable tensors in the merged weights."""
    plain = data.draw(random_bases())
    model = apply_strategy(copy.deepcopy(plain), data.draw(random_configs(plain.config, ("dora", "ia3"))))
    perturb_trainable(model)
    x = random_ids(model, 1)
    unmerged = model(x)[0]
    merge(model)
    assert close(model(x)[0], unmerged)
    trained = set(trainable_state(model))
    as_plain = copy.deepcopy(plain)
    as_plain.load_state_dict({k: v for k, v in model.state_dict().items() if k not in trained}, strict=True)
    assert close(as_plain(x)[0], unmerged)
    unmerge(model)
    mine = dict(model.named_parameters())
    assert all(close(mine[n], p) for n, p in plain.named_parameters())


@pytest.mark.parametrize("config", [DoRAConfig(r=2), IA3Config()], ids=["dora", "ia3"])
def test_a_merged_model_refuses_to_train_and_swaps_task_files_under_the_merge(config, tmp_path):
    """Catches training a merged layer (no gradient could reach its vectors) and task tensors swapped under a
    merged weight, which would keep serving the old update and corrupt the base on unmerge."""
    plain = base()
    a, b = (apply_strategy(copy.deepcopy(plain), config) for _ in range(2))
    perturb_trainable(a)
    perturb_trainable(b)
    save_trainable(b, tmp_path / "b")
    served = load_trainable(merge(copy.deepcopy(a)), tmp_path / "b")
    x = ids()
    assert close(served(x)[0], b(x)[0])
    with pytest.raises(TrainingError, match="unmerge"):
        served.train()(x)
    unmerge(served)
    mine = dict(served.named_parameters())
    assert all(close(mine[n], p) for n, p in plain.named_parameters())


# --- (IA)3 ------------------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_ia3_rescales_keys_values_and_the_inner_activation(data):
    """Against hooks on the plain model that scale k, v (c_attn's output after the queries) and gelu(c_fc(x))
    (c_proj's input): catches the queries scaled instead of the keys, keys and values swapped, the MLP vector
    applied before the GELU, and a vector that multiplies the bias of the wrong layer."""
    plain = data.draw(random_bases(dtypes=(torch.float64,)))
    model = apply_strategy(copy.deepcopy(plain), IA3Config())
    perturb_trainable(model)
    d = plain.config.n_embd
    reference = copy.deepcopy(plain)
    for i, block in enumerate(reference.transformer.h):
        kv = model.transformer.h[i].attn.c_attn.ia3_scale.detach()  # [l_k | l_v]
        ff = model.transformer.h[i].mlp.c_proj.ia3_scale.detach()
        block.attn.c_attn.register_forward_hook(
            lambda m, inp, out, kv=kv: torch.cat([out[..., :d], out[..., d:] * kv], -1))
        block.mlp.c_proj.register_forward_pre_hook(lambda m, inp, ff=ff: (inp[0] * ff,))
    x = random_ids(model, 2)
    assert torch.allclose(model(x)[0], reference(x)[0], rtol=1e-10, atol=1e-10)
    assert all(layer.ia3_scale.numel() == 2 * d for layer in (b.attn.c_attn for b in model.transformer.h))


# --- prefix tuning ------------------------------------------------------------------------------------------

def base_cache(plain: GPT, tokens: torch.Tensor) -> KVCache:
    """The base's own keys and values after reading tokens (1, n)."""
    cache = KVCache(plain.config.n_layer, plain.config.block_size)
    plain.forward_embeddings(plain.embed(tokens), cache=cache)
    return cache


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_a_prefix_made_of_the_bases_own_cache_equals_the_base_reading_those_tokens(data):
    """Catches the table read in the wrong layout (keys and values swapped, heads or layers mixed up), the input
    placed at positions 0.. instead of after the prefix, and a causal mask that hides the prefix from the
    first input tokens."""
    plain = data.draw(random_bases())
    n = data.draw(st.integers(1, plain.config.block_size - 2))
    model = apply_strategy(copy.deepcopy(plain), PrefixTuningConfig(n_tokens=n, hidden=0))
    tokens, x = random_ids(plain, 4, B=1, T=n), random_ids(plain, 5, T=model.max_input_tokens)
    cache = base_cache(plain, tokens)
    c = plain.config
    # (L, 2, nh, n, hs) -> the table's (n, 2 L d) layout: per layer, keys then values, heads side by side
    kv = torch.stack([torch.stack([cache.k[i][0, :, :n], cache.v[i][0, :, :n]]) for i in range(c.n_layer)])
    with torch.no_grad():
        model.prefix.embedding.weight.copy_(kv.permute(3, 0, 1, 2, 4).reshape(n, -1))
    expected = plain(torch.cat([tokens.expand(2, -1), x], dim=1))[0][:, n:]
    assert close(model(x)[0], expected)


def test_prefix_generation_gives_the_same_tokens_with_and_without_the_cache():
    """Catches a generation cache that starts empty (the prefix forgotten after the first token, or never
    there), a context not shortened by the prefix, and rows of a batch that share one row's prefix copy."""
    plain = base()
    model = apply_strategy(copy.deepcopy(plain), PrefixTuningConfig(n_tokens=6, hidden=8)).eval()
    x = ids(B=3, T=5)
    with_cache = model.generate(x, 100)
    assert with_cache.shape == (3, 32 - 6)  # the context is full with the prefix in place
    assert torch.equal(with_cache, model.generate(x, 100, use_cache=False))
    for b in range(3):
        assert torch.equal(model.generate(x[b:b + 1], 100), with_cache[b:b + 1])
    assert not torch.equal(with_cache, plain.generate(x, 100)[:, :26])
    one = ids(B=1, T=1)  # a one-token prompt: the prefix must be there from the very first position
    assert not torch.equal(model(one)[0], plain(one)[0])
    assert torch.equal(model.generate(one, 8), model.generate(one, 8, use_cache=False))
    with pytest.raises(ConfigError, match="block_size"):
        model.generate(ids(T=27), 1)


def test_folding_the_mlp_keeps_the_outputs_and_saves_only_the_prefix(tmp_path):
    """Catches a fold that recomputes or re-initialises the table, keeps the MLP's tensors trainable or saved,
    or leaves the strategy saying hidden > 0 (the file would then not load onto a fresh base)."""
    plain = base()
    config = PrefixTuningConfig(n_tokens=4, hidden=8)
    model = apply_strategy(copy.deepcopy(plain), config)
    perturb_trainable(model)
    x = ids()
    before = model(x)[0]
    fold(model)
    assert torch.equal(model(x)[0], before)
    assert model.strategy == PrefixTuningConfig(n_tokens=4, hidden=0)
    assert set(trainable_state(model)) == {"prefix.embedding.weight"}
    assert trainable_parameters(model)[0] == 4 * 2 * 2 * 16  # n * 2 L d
    save_trainable(model, tmp_path)
    assert json.loads((tmp_path / "strategy.json").read_text())["tensors"] == {"prefix.embedding.weight": [4, 64]}
    assert torch.equal(load_trainable(copy.deepcopy(plain), tmp_path)(x)[0], before)
    assert fold(model) is model  # a plain prefix folds to itself


def test_a_cached_pass_of_several_tokens_after_cached_ones_equals_one_pass():
    """The KV cache's offset mask: catches SDPA's top-left causal triangle used after cached positions (the
    new tokens would not see the cached ones' tail) and the old refusal of chunked prompts."""
    plain = base()
    x = ids(T=12)
    cache = KVCache(plain.config.n_layer, plain.config.block_size)
    first, _ = plain.forward_embeddings(plain.embed(x[:, :5]), cache=cache)
    second, _ = plain.forward_embeddings(plain.embed(x[:, 5:]), cache=cache)
    assert close(torch.cat([first, second], dim=1), plain(x)[0])


# --- NF4 and QLoRA -----------------------------------------------------------------------------------------

# NF4 as published with QLoRA (bitsandbytes' table), to the digits printed there
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]


def test_the_code_book_built_from_normal_quantiles_is_nf4():
    """Catches the wrong outer probability, 8 values below zero instead of 7, or a missing exact zero."""
    assert torch.allclose(NF4.double(), torch.tensor(PUBLISHED_NF4, dtype=torch.float64), atol=1e-6, rtol=0)


@st.composite
def weights(draw) -> torch.Tensor:
    """Weights of any (out, in) shape: normal, heavy-tailed, with all-zero stretches, at any scale."""
    out, fan_in = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    w = torch.randn(out, fan_in, generator=g) * draw(st.sampled_from([1e-3, 0.02, 1.0, 50.0]))
    if draw(st.booleans()):
        w = w ** 3  # heavy tails: a few outliers set each block's absmax
    if draw(st.booleans()):
        w.view(-1)[: draw(st.integers(0, w.numel()))] = 0  # whole blocks of zeros
    return w


@settings(max_examples=80, deadline=None)
@given(w=weights(), block=st.sampled_from([2, 8, 64]), scale_block=st.integers(1, 300), double=st.booleans())
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


def test_qlora_starts_as_its_4bit_base_and_every_block_linear_is_4bit():
    """Catches LoRA's B initialised non-zero, and quantising only the adapted layers (the base's other linear
    weights left in float, so the model is not the 4-bit base it claims)."""
    plain = base()
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


def test_a_4bit_base_saved_and_loaded_is_the_same_base_for_qlora_files(tmp_path):
    """Catches a 4-bit base that loses a buffer (the absmax scales or mean) on the way, unties the LM head, or
    whose fingerprint differs from the one QLoRA records on the float base (its files would be refused)."""
    plain = base()
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
        save_nf4_base(base(), tmp_path / "plain")
    with pytest.raises(ConfigError, match="save_trainable"):
        save_nf4_base(trained, tmp_path / "strategy")


def test_a_qlora_file_is_refused_on_a_base_whose_4bit_weights_differ(tmp_path):
    """Catches a base fingerprint over parameters only: the 4-bit weights are buffers, so a base differing only
    in them would pass as the base the file was trained on."""
    plain = base()
    other = copy.deepcopy(plain)
    with torch.no_grad():
        other.transformer.h[1].mlp.c_fc.weight[0, :8] *= -1  # same shapes, and the same everywhere else
    model = apply_strategy(copy.deepcopy(plain), QLoRAConfig(r=2))
    save_trainable(model, tmp_path)
    with pytest.raises(CheckpointError, match="other weights"):
        load_trainable(other, tmp_path)


def test_a_float_base_file_is_not_a_4bit_base(tmp_path):
    from minitune.checkpoint import save_model

    save_model(base(), tmp_path)
    with pytest.raises(CheckpointError, match="4-bit base"):
        load_nf4_base(tmp_path)


# --- the command line ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["dora", "ia3", "prefix", "qlora"])
def test_finetune_cli_trains_saves_and_generates_with_each_newer_strategy(strategy, nano_run, tmp_path, capsys):
    """Catches a flag not wired to its config, and a strategy that cannot go through the one training loop,
    the run folder, open_run and generation."""
    from minitune.cli import main, parser, strategy_from_args
    from minitune.finetune import open_run

    flags = {"dora": ["--r", "2"], "ia3": [], "prefix": ["--n-tokens", "3", "--prefix-hidden", "4"],
             "qlora": ["--r", "2", "--quant-block", "32", "--no-double-quant"]}[strategy]
    expected = {"dora": DoRAConfig(r=2), "ia3": IA3Config(), "prefix": PrefixTuningConfig(n_tokens=3, hidden=4),
                "qlora": QLoRAConfig(r=2, quant_block=32, double_quant=False)}[strategy]
    assert strategy_from_args(parser().parse_args(["finetune", "--strategy", strategy, *flags])) == expected
    out = tmp_path / strategy
    assert main(["finetune", "--base", str(nano_run), "--task", "sentiment", "--strategy", strategy, *flags,
                 "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--device", "cpu"]) == 0
    model, _, meta = open_run(out)
    assert meta["strategy"] == strategy and model.strategy == expected
    assert main(["generate", "--run", str(out), "--prompt", "Review: It broke.\nSentiment:",
                 "--max-new-tokens", "3"]) == 0
    capsys.readouterr()


def test_lora_config_errors_still_name_lora_and_the_new_configs_name_themselves():
    """Catches the shared validation naming the wrong class (a DoRA user told about LoRAConfig)."""
    with pytest.raises(ConfigError, match=r"^LoRAConfig\.r"):
        LoRAConfig(r=0)
    with pytest.raises(ConfigError, match=r"^DoRAConfig\.alpha"):
        DoRAConfig(alpha=0)
    with pytest.raises(ConfigError, match=r"^QLoRAConfig\.quant_block"):
        QLoRAConfig(quant_block=63)
    with pytest.raises(ConfigError, match=r"^QLoRAConfig\.double_quant"):
        QLoRAConfig(double_quant=1)
    for hidden in (True, False, -1, 2.0):
        with pytest.raises(ConfigError, match=r"^PrefixTuningConfig\.hidden"):
            PrefixTuningConfig(hidden=hidden)
    with pytest.raises(ConfigError, match=r"^PrefixTuningConfig\.n_tokens"):
        PrefixTuningConfig(n_tokens=0)
    with pytest.raises(ConfigError, match="leaves no room"):
        apply_strategy(base(), PrefixTuningConfig(n_tokens=32))
    with pytest.raises(ConfigError, match=r"DoRAConfig\.r \(17\) must be at most"):
        apply_strategy(base(), DoRAConfig(r=17))
    with pytest.raises(ConfigError, match=r"QLoRAConfig\.targets entry 'q_proj'"):
        apply_strategy(base(), QLoRAConfig(targets=("q_proj",)))
