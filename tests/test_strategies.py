"""Every strategy's math, as properties over random shapes, ranks, scales, placements, dtypes and seeds.

Each property names, in its docstring, a broken implementation it catches.
"""

import copy
import json
import re
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minitune.errors import CheckpointError, ConfigError, TrainingError
from minitune.model import GPT, GPTConfig, count_parameters
from minitune.strategies import (
    AdapterConfig, DoRAConfig, FullConfig, IA3Config, LoRAConfig, PrefixTuningConfig, PromptTuningConfig,
    QLoRAConfig, apply_strategy, load_trainable, merge, save_trainable, trainable_parameters, trainable_report,
    unmerge,
)
from minitune.strategies import base_unchanged, trainable_state
from minitune.strategies.lora import LoRALinear, lora_layers, merged_state_dict
from minitune.strategies.prompt import PromptTunedGPT
from minitune.train import TrainConfig, make_optimizer, train

ALL = [FullConfig(), LoRAConfig(r=4, targets=("c_attn", "mlp.c_proj")), AdapterConfig(bottleneck=8),
       PromptTuningConfig(n_tokens=5)]


def base(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=16)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def ids(seed=1, B=2, T=10, V=64) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# --- random bases and strategies -----------------------------------------------------------------------

# (in, out) of each adaptable linear layer, in units of n_embd: GPT-2's shapes, written out independently
LINEAR_SHAPES = {"attn.c_attn": (1, 3), "attn.c_proj": (1, 1), "mlp.c_fc": (1, 4), "mlp.c_proj": (4, 1)}
# where each adapter placement puts its adapters, by module name
ADAPTER_SITES = {"houlsby": ("attn.c_proj", "mlp.c_proj"), "pfeiffer": ("mlp.c_proj",)}


@st.composite
def random_bases(draw, dtypes=(torch.float32, torch.float64)) -> GPT:
    """A small GPT of random shape and dtype, with weights large enough that every path changes the logits."""
    n_head = draw(st.integers(1, 3))
    cfg = GPTConfig(vocab_size=draw(st.integers(8, 40)), block_size=draw(st.integers(8, 20)),
                    n_layer=draw(st.integers(1, 3)), n_head=n_head, n_embd=n_head * draw(st.integers(2, 5)),
                    bias=draw(st.booleans()))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    model = GPT(cfg).to(draw(st.sampled_from(dtypes))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


EVERY_KIND = ("full", "lora", "adapter", "prompt", "dora", "ia3", "prefix", "qlora")


def random_configs(cfg: GPTConfig, kinds=EVERY_KIND):
    """Any strategy config that fits a base of shape cfg."""
    d = cfg.n_embd
    low_rank = dict(r=st.integers(1, d), alpha=st.floats(0.5, 32), rslora=st.booleans(),
                    targets=st.lists(st.sampled_from(sorted(LINEAR_SHAPES)), min_size=1, unique=True).map(tuple),
                    init=st.sampled_from(["kaiming", "gaussian"]))
    options = {
        "full": st.just(FullConfig()),
        "lora": st.builds(LoRAConfig, **low_rank),
        "adapter": st.builds(AdapterConfig, bottleneck=st.integers(1, 2 * d),
                             placement=st.sampled_from(sorted(ADAPTER_SITES)),
                             activation=st.sampled_from(["gelu", "relu"]), train_layernorm=st.booleans()),
        "prompt": st.builds(PromptTuningConfig, n_tokens=st.integers(1, cfg.block_size - 2),
                            init=st.sampled_from(["random", "vocab"])),
        "dora": st.builds(DoRAConfig, **low_rank),
        "ia3": st.just(IA3Config()),
        "prefix": st.builds(PrefixTuningConfig, n_tokens=st.integers(1, cfg.block_size - 2), hidden=st.integers(0, 8)),
        # small blocks too, so that padding and several absmax blocks per scale block are exercised
        "qlora": st.builds(QLoRAConfig, **low_rank, quant_block=st.sampled_from([2, 8, 64]),
                           scale_block=st.integers(1, 8), double_quant=st.booleans()),
    }
    return st.one_of(*(options[k] for k in kinds))


def closed_form(cfg: GPTConfig, config) -> tuple[int, int]:
    """(added, trained base) parameter counts each strategy's docstring states, from the shapes alone."""
    d, L = cfg.n_embd, cfg.n_layer
    if isinstance(config, FullConfig):
        return 0, count_parameters(cfg)
    if isinstance(config, (LoRAConfig, QLoRAConfig)):  # QLoRA's 4-bit weights count as the parameters they hold
        return L * sum(config.r * (LINEAR_SHAPES[t][0] + LINEAR_SHAPES[t][1]) * d for t in config.targets), 0
    if isinstance(config, DoRAConfig):  # LoRA's factors plus one magnitude per output feature
        return L * sum((config.r * (LINEAR_SHAPES[t][0] + LINEAR_SHAPES[t][1]) + LINEAR_SHAPES[t][1]) * d
                       for t in config.targets), 0
    if isinstance(config, IA3Config):  # keys and values (d each), the MLP's inner activation (4 d)
        return L * (2 * d + 4 * d), 0
    if isinstance(config, PrefixTuningConfig):
        n, h, table = config.n_tokens, config.hidden, 2 * L * d
        return (n * table if h == 0 else n * d + (d * h + h) + (h * table + table)), 0
    if isinstance(config, AdapterConfig):
        m, per_block = config.bottleneck, len(ADAPTER_SITES[config.placement])
        layernorms = (2 * L + 1) * (d + d * cfg.bias) if config.train_layernorm else 0
        return L * per_block * (2 * d * m + d + m), layernorms
    return config.n_tokens * d, 0


def random_ids(model: GPT, seed: int, B: int = 2, T: int | None = None) -> torch.Tensor:
    T = T or max(1, model.max_input_tokens // 2)
    return torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def perturb_trainable(model: nn.Module, std: float = 0.3) -> None:
    """Stand-in for training: give every trainable tensor non-trivial values (B and up no longer zero)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * std)


# --- every strategy -------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_strategy_but_prompt_starts_bitwise_as_the_base(data):
    """Catches a LoRA B or an adapter up-projection initialised non-zero, or a wrongly placed identity; a DoRA
    magnitude not initialised to the weight's norms; an (IA)3 vector not initialised to ones. (Prompt and
    prefix tuning change the attention from the start; QLoRA starts as its 4-bit base, tested with it.)"""
    plain = data.draw(random_bases())
    config = data.draw(random_configs(plain.config, ("full", "lora", "adapter", "dora", "ia3")))
    x = random_ids(plain, 0)
    assert torch.equal(apply_strategy(copy.deepcopy(plain), config)(x)[0], plain(x)[0])


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_trainable_count_is_the_closed_form(data):
    """Catches a strategy that trains too much (a frozen tensor left trainable) or adds the wrong shapes."""
    plain = data.draw(random_bases())
    config = data.draw(random_configs(plain.config))
    added, trained_base = closed_form(plain.config, config)
    model = apply_strategy(copy.deepcopy(plain), config)
    assert trainable_parameters(model) == (added + trained_base, count_parameters(plain.config) + added)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_training_steps_move_only_trainable_tensors_and_all_of_them(data):
    """Catches a frozen tensor that still gets a gradient or moves, and a trainable one cut off from the loss.

    LoRA's A and an adapter's down-projection get no gradient while B / up are zero, so two steps run.
    Buffers count as frozen: QLoRA's 4-bit codes must come out bitwise as they went in. A ReLU adapter
    is left out: a narrow one can have every unit dead on a batch, and a dead unit rightly gets no gradient.
    """
    plain = data.draw(random_bases())
    config = data.draw(random_configs(plain.config))
    assume(getattr(config, "activation", None) != "relu")
    model = apply_strategy(plain.train(), config)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.0), torch.device("cpu"))
    for step in range(2):
        x = random_ids(model, step, B=3)
        _, loss = model(x, torch.roll(x, -1, dims=1))
        loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == p.requires_grad, n
        optimizer.step()
        optimizer.zero_grad()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} changed"
        else:
            assert not torch.equal(p, start[n]), f"trainable {n} did not move"
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_save_then_load_onto_a_fresh_base_gives_the_same_logits(data):
    """Catches a tensor left out of the file, a config field not restored, or values copied to the wrong name."""
    plain = data.draw(random_bases())
    config = data.draw(random_configs(plain.config))
    model = apply_strategy(copy.deepcopy(plain), config)
    perturb_trainable(model)
    with tempfile.TemporaryDirectory() as folder:
        save_trainable(model, folder)
        restored = load_trainable(copy.deepcopy(plain), folder)
    x = random_ids(model, 3)
    assert torch.equal(restored(x)[0], model(x)[0])
    assert restored.strategy == config


def test_file_sizes_peft_small_full_whole(tmp_path):
    sizes = {}
    for config in ALL:
        save_trainable(apply_strategy(base(n_embd=64, n_head=4), config), tmp_path / config.name)
        sizes[config.name] = (tmp_path / config.name / "trainable.safetensors").stat().st_size
    full_params = trainable_parameters(base(n_embd=64, n_head=4))[1]
    assert sizes["full"] >= 4 * full_params
    for name in ("lora", "adapter", "prompt"):
        assert sizes[name] < 0.2 * sizes["full"], name


def test_optimizer_state_is_exactly_the_trainable_tensors():
    for config in ALL:
        model = apply_strategy(base(), config)
        optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
        x = ids()
        model(x, x)[1].backward()
        optimizer.step()
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert set(map(id, optimizer.state)) == set(map(id, trainable))
        for p in trainable:  # AdamW keeps two moments shaped like the parameter (plus a step count)
            state = optimizer.state[p]
            assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape


def test_full_makes_everything_trainable_even_after_freezing():
    model = base()
    for p in model.parameters():
        p.requires_grad = False
    model = apply_strategy(model, FullConfig())
    trainable, total = trainable_parameters(model)
    assert trainable == total == model.num_parameters()


def test_report_counts_are_the_models_counts():
    """Catches a report that counts tied or frozen tensors wrongly, or computes the percentage the wrong way up."""
    config = LoRAConfig(r=2, targets=("attn.c_attn",))
    model = apply_strategy(base(), config)
    numbers = re.findall(r"[\d,.]+", trainable_report(model).replace(" || ", " "))
    trainable, total, percent = (float(n.replace(",", "")) for n in numbers)
    added, _ = closed_form(model.config, config)
    assert (trainable, total) == (added, count_parameters(model.config) + added)
    assert percent == pytest.approx(100 * added / (count_parameters(model.config) + added), abs=0.005)


# --- LoRA ------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(fan_in=st.integers(1, 24), fan_out=st.integers(1, 24), data=st.data(), alpha=st.floats(0.1, 64),
       rslora=st.booleans(), seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_lora_linear_is_w_plus_s_b_a_and_merges_exactly_once(fan_in, fan_out, data, alpha, rslora, seed, dtype):
    """Catches a wrong scale (alpha/r vs alpha/sqrt r), B A in the wrong order, and merge / unmerge
    guards removed (merging twice adds the update twice; unmerging an unmerged layer takes it out)."""
    r = data.draw(st.integers(1, min(fan_in, fan_out)))
    torch.manual_seed(seed)
    linear = nn.Linear(fan_in, fan_out).to(dtype)
    w0 = linear.weight.detach().clone()
    cfg = LoRAConfig(r=r, alpha=alpha, rslora=rslora)
    layer = LoRALinear(linear, r, cfg.scaling).eval()
    x = torch.randn(3, fan_in, dtype=dtype)
    assert torch.equal(layer(x), nn.functional.linear(x, w0, linear.bias))  # B = 0: exactly the base
    assert layer.scaling == pytest.approx(alpha / (r ** 0.5 if rslora else r))
    assert layer.lora_A.shape == (r, fan_in) and layer.lora_B.shape == (fan_out, r)
    with torch.no_grad():
        layer.lora_B.normal_()
    reference = layer.scaling * (layer.lora_B.double() @ layer.lora_A.double())
    assert torch.allclose(layer.delta_weight().double(), reference, rtol=1e-5, atol=1e-5 * (1 + reference.abs().max().item()))
    unmerged = layer(x)
    assert torch.allclose(unmerged.double(), x.double() @ (w0.double() + reference).T + linear.bias.double(),
                          rtol=1e-4, atol=1e-4)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    scale = 1 + unmerged.abs().max().item()
    layer.unmerge()  # not merged: nothing to take out
    assert torch.equal(layer.weight, w0)
    layer.merge()
    once = layer.weight.detach().clone()
    layer.merge()  # already merged: a no-op
    assert torch.equal(layer.weight, once) and layer.merged
    assert torch.allclose(layer(x), unmerged, rtol=tol, atol=tol * scale)
    layer.unmerge()
    assert torch.allclose(layer.weight, w0, rtol=tol, atol=tol * (1 + reference.abs().max().item()))
    assert not layer.merged


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_merged_model_equals_unmerged_and_loads_strictly_into_a_plain_gpt(data):
    """Catches merge folding the wrong layer, the wrong sign or scale, and merged_state_dict keeping lora_ keys."""
    plain = data.draw(random_bases())
    model = apply_strategy(copy.deepcopy(plain), data.draw(random_configs(plain.config, ("lora",))))
    perturb_trainable(model)
    x = random_ids(model, 1)
    unmerged = model(x)[0]
    tol = 1e-4 if unmerged.dtype == torch.float32 else 1e-9
    scale = tol * (1 + unmerged.abs().max().item())
    as_plain = copy.deepcopy(plain)
    as_plain.load_state_dict(merged_state_dict(model), strict=True)
    assert torch.allclose(as_plain(x)[0], unmerged, rtol=tol, atol=scale)
    merge(model)
    assert torch.allclose(model(x)[0], unmerged, rtol=tol, atol=scale)
    unmerge(model)
    assert base_weights_close(model, plain, tol)


def base_weights_close(model: nn.Module, plain: nn.Module, tol: float) -> bool:
    mine = dict(model.named_parameters())
    return all(torch.allclose(mine[n], p, rtol=tol, atol=tol) for n, p in plain.named_parameters())


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_lora_wraps_exactly_the_named_targets(data):
    """Catches a target matched too widely (every c_proj for "attn.c_proj") or a layer silently skipped."""
    plain = data.draw(random_bases())
    config = data.draw(random_configs(plain.config, ("lora",)))
    model = apply_strategy(plain, config)
    expected = {f"transformer.h.{i}.{t}" for i in range(plain.config.n_layer) for t in config.targets}
    assert set(lora_layers(model)) == expected
    assert all(f"r={config.r}," in repr(layer) for layer in lora_layers(model).values())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"{layer}.lora_{ab}" for layer in expected for ab in "AB"}


def test_lora_dropout_drops_the_lora_input_in_training_and_nothing_in_eval():
    """Catches dropout left out of the LoRA path, applied to the frozen path, or left on in eval mode."""
    torch.manual_seed(0)
    linear = nn.Linear(32, 24)
    layer = LoRALinear(linear, r=4, scaling=2.0, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 32)
    torch.manual_seed(7)
    got = layer.train()(x)
    torch.manual_seed(7)
    dropped = nn.functional.dropout(x, 0.5, training=True)  # the same draw of the generator
    expected = linear(x) + 2.0 * dropped @ layer.lora_A.T @ layer.lora_B.T
    assert not torch.equal(dropped, x)
    assert torch.allclose(got, expected, atol=1e-5)
    clean = linear(x) + 2.0 * x @ layer.lora_A.T @ layer.lora_B.T
    assert torch.allclose(layer.eval()(x), clean, atol=1e-5)


def test_lora_a_is_drawn_from_the_stated_distributions():
    """Catches A initialised with the wrong law or scale (e.g. Gaussian instead of Kaiming-uniform, or std 1/r
    replaced by 1/sqrt r). Kaiming-uniform with a = sqrt 5 (nn.Linear's) is U(-1/sqrt(in), 1/sqrt(in))."""
    torch.manual_seed(0)
    fan_in, r = 400, 16
    kaiming = LoRALinear(nn.Linear(fan_in, 300), r, 1.0, init="kaiming").lora_A.detach()
    bound = fan_in ** -0.5
    assert kaiming.abs().max() <= bound and kaiming.abs().max() > 0.99 * bound
    assert kaiming.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.03)  # a uniform law's sd
    gaussian = LoRALinear(nn.Linear(fan_in, 300), r, 1.0, init="gaussian").lora_A.detach()
    assert gaussian.std().item() == pytest.approx(1 / r, rel=0.03)
    tail = (gaussian.abs() > 2 / r).float().mean().item()  # about 4.6% beyond two sd; a uniform has none
    assert 0.03 < tail < 0.06


# --- adapters ----------------------------------------------------------------------------------------

def reference_adapter(h: torch.Tensor, prefix: str, tensors: dict, activation: str) -> torch.Tensor:
    """h + W_up f(W_down h + b_down) + b_up, from the raw tensors (the formula in adapter.py's docstring)."""
    f = nn.functional.gelu if activation == "gelu" else nn.functional.relu
    down = h @ tensors[f"{prefix}.adapter.down.weight"].T + tensors[f"{prefix}.adapter.down.bias"]
    return h + f(down) @ tensors[f"{prefix}.adapter.up.weight"].T + tensors[f"{prefix}.adapter.up.bias"]


class ReferenceAdapted(nn.Module):
    """A frozen projection followed by reference_adapter: the test's own version of an adapted sublayer."""

    def __init__(self, linear: nn.Linear, prefix: str, tensors: dict, activation: str):
        super().__init__()
        self.linear, self.prefix, self.tensors, self.activation = linear, prefix, tensors, activation

    def forward(self, x):
        return reference_adapter(self.linear(x), self.prefix, self.tensors, self.activation)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_adapted_model_equals_a_reference_built_from_the_formula(data):
    """With a non-zero up-projection: catches an adapter in the wrong sublayer (or before the projection), an
    activation that is ignored or swapped, and an output scaled or added wrongly."""
    plain = data.draw(random_bases(dtypes=(torch.float64,)))
    config = data.draw(random_configs(plain.config, ("adapter",)))
    model = apply_strategy(copy.deepcopy(plain), config)
    perturb_trainable(model)
    tensors = {n: p.detach() for n, p in model.named_parameters()}
    sites = [f"transformer.h.{i}.{site}" for i in range(plain.config.n_layer) for site in ADAPTER_SITES[config.placement]]
    assert {n for n, m in model.named_modules() if n.endswith(".adapter")} == {f"{s}.adapter" for s in sites}
    reference = copy.deepcopy(plain)
    with torch.no_grad():  # the adapted model's base tensors, trained LayerNorms included
        for n, p in reference.named_parameters():
            p.copy_(tensors[n])
    for site in sites:
        parent, _, child = site.rpartition(".")
        linear = reference.get_submodule(site)
        setattr(reference.get_submodule(parent), child, ReferenceAdapted(linear, site, tensors, config.activation))
    x = random_ids(model, 2)
    assert torch.allclose(model(x)[0], reference(x)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_adapters_follow_the_base_dtype(dtype):
    """Catches adapters built in float32 beside a float64 or bf16 base (the forward pass fails on the mix)."""
    model = apply_strategy(base().to(dtype), AdapterConfig(bottleneck=4))
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert model(ids())[0].dtype == dtype


# --- prompt tuning -------------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_soft_prompt_of_real_token_embeddings_equals_the_base_on_those_tokens(data):
    """Catches a soft prompt placed after the input, positions that do not count the prompt, or logits of
    the prompt positions returned as the input's."""
    plain = data.draw(random_bases())
    n = data.draw(st.integers(1, plain.config.block_size - 2))
    model = apply_strategy(copy.deepcopy(plain), PromptTuningConfig(n_tokens=n, init="random"))
    prompt_ids, x = random_ids(model, 4, B=1, T=n), random_ids(model, 5, T=model.max_input_tokens)
    with torch.no_grad():
        model.soft_prompt.weight.copy_(plain.transformer.wte.weight[prompt_ids[0]])
    with_prompt = plain(torch.cat([prompt_ids.expand(2, -1), x], dim=1))[0][:, n:]
    tol = 1e-4 if with_prompt.dtype == torch.float32 else 1e-10
    assert torch.allclose(model(x)[0], with_prompt, rtol=tol, atol=tol)


def test_prompt_positions_never_count_in_the_loss_and_base_gets_no_gradient():
    plain = base()
    model = apply_strategy(plain, PromptTuningConfig(n_tokens=4))
    x = ids()
    logits, loss = model(x, x)
    expected = nn.functional.cross_entropy(logits.reshape(-1, 64), x.reshape(-1))
    assert torch.allclose(loss, expected)
    loss.backward()
    assert model.soft_prompt.weight.grad is not None
    assert all(p.grad is None for n, p in model.named_parameters() if n != "soft_prompt.weight")


def test_prompt_tuning_generation_and_shorter_context():
    model = apply_strategy(base(), PromptTuningConfig(n_tokens=6))
    x = ids(B=1, T=5)
    out = model.generate(x, 100)
    assert out.shape == (1, 32 - 6)  # the context is full with the prompt in place
    assert torch.equal(out, model.generate(x, 100, use_cache=False))
    assert torch.equal(model.generate(x, 100, stop_tokens={int(out[0, 5])}), out[:, :6])  # settings reach generate
    with pytest.raises(ConfigError, match="usable context is 26"):
        model(ids(T=27))


def test_prompt_tuned_generate_takes_a_prefix_of_its_own_after_the_soft_prompt():
    """Catches the duplicate prefix_embeddings keyword (a TypeError) and a caller's prefix put before the prompt."""
    plain = base()
    model = apply_strategy(copy.deepcopy(plain), PromptTuningConfig(n_tokens=3))
    extra = torch.randn(2, 16) * 0.5
    x = ids(B=1, T=4)
    got = model.generate(x, 6, prefix_embeddings=extra)
    expected = plain.generate(x, 6, prefix_embeddings=torch.cat([model.soft_prompt.weight.detach(), extra]))
    assert torch.equal(got, expected)
    assert not torch.equal(got, model.generate(x, 6))
    rows = torch.stack([extra, -extra])  # (B, P, C): a prefix of each row's own
    got = model.generate(ids(B=2, T=4), 6, prefix_embeddings=rows)
    for b in range(2):
        expected = plain.generate(ids(B=2, T=4)[b:b + 1], 6, prefix_embeddings=torch.cat([model.soft_prompt.weight.detach(), rows[b]]))
        assert torch.equal(got[b:b + 1], expected)


def test_prompt_inits():
    from minitune.tokenizer import get_tokenizer

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("nano"))
    wte = model.transformer.wte.weight
    tokens = get_tokenizer("minitune").encode_ordinary("The market")
    text = apply_strategy(copy.deepcopy(model), PromptTuningConfig(n_tokens=5, init="text", init_text="The market"))
    assert isinstance(text, PromptTunedGPT)
    assert torch.equal(text.soft_prompt.weight, wte[[tokens[i % len(tokens)] for i in range(5)]])  # repeated to fill
    vocab = apply_strategy(copy.deepcopy(model), PromptTuningConfig(n_tokens=3, init="vocab"))
    assert all((wte == row).all(dim=1).any() for row in vocab.soft_prompt.weight)
    random = apply_strategy(copy.deepcopy(model), PromptTuningConfig(n_tokens=60, init="random"))
    assert random.soft_prompt.weight.std().item() == pytest.approx(wte.std().item(), rel=0.2)


# --- the state around the math ------------------------------------------------------------------------

def test_loading_a_task_file_onto_a_merged_model_serves_the_new_update_and_keeps_the_base(tmp_path):
    """Catches tensors swapped under a merged weight: the model kept answering with the old update, and a
    later unmerge subtracted the new one from a weight holding the old, corrupting the frozen base."""
    plain = base()
    a, b = (apply_strategy(copy.deepcopy(plain), LoRAConfig(r=2)) for _ in range(2))
    perturb_trainable(a)
    perturb_trainable(b)
    save_trainable(b, tmp_path / "b")
    served = merge(copy.deepcopy(a))
    served = load_trainable(served, tmp_path / "b")
    x = ids()
    assert all(layer.merged for layer in lora_layers(served).values())
    assert torch.allclose(served(x)[0], b(x)[0], atol=1e-5)
    unmerge(served)
    assert base_weights_close(served, plain, 1e-5)


def test_training_a_merged_model_is_refused_with_a_clear_error():
    """Catches the autograd failure deep inside backward ("element 0 of tensors does not require grad")."""
    from minitune.data.batches import TokenStream

    model = merge(apply_strategy(base(), LoRAConfig(r=2)))
    data = TokenStream(ids(T=300)[0].numpy(), block_size=16, batch_size=2)
    with pytest.raises(TrainingError, match="unmerge"):
        train(model, data, None, TrainConfig(max_steps=1, warmup_steps=0, device="cpu", quiet=True))
    with torch.no_grad():  # inference on the merged model is what merging is for
        model.train()(ids())
    model.eval()(ids())


def test_a_base_that_was_prompt_tuned_refuses_a_second_strategy():
    """Catches the guard bypassed through prompt tuning: the wrapper shares the base's modules, so LoRA on
    the base would also change the prompt-tuned model, which would then train and save LoRA tensors."""
    plain = base()
    prompted = apply_strategy(plain, PromptTuningConfig(n_tokens=3))
    with pytest.raises(ConfigError, match="already has the 'prompt' strategy"):
        apply_strategy(plain, LoRAConfig())
    assert set(trainable_state(prompted)) == {"soft_prompt.weight"}
    with pytest.raises(ConfigError, match="already has the 'lora' strategy"):
        apply_strategy(apply_strategy(base(), LoRAConfig()), PromptTuningConfig())


def test_a_file_is_refused_on_a_base_with_other_weights_unless_asked(tmp_path):
    """Catches load_trainable checking only the base's config: same shapes, other weights, silently wrong."""
    model = apply_strategy(base(seed=0), LoRAConfig(r=2))
    perturb_trainable(model)
    save_trainable(model, tmp_path)
    with pytest.raises(CheckpointError, match="other weights"):
        load_trainable(base(seed=1), tmp_path)
    with pytest.raises(CheckpointError, match="other weights"):  # swapping onto a model of another base too
        load_trainable(apply_strategy(base(seed=1), LoRAConfig(r=2)), tmp_path)
    forced = load_trainable(base(seed=1), tmp_path, check_base=False)
    assert torch.equal(forced.transformer.h[0].attn.c_attn.lora_B, model.transformer.h[0].attn.c_attn.lora_B)
    assert load_trainable(base(seed=0), tmp_path).strategy == model.strategy


# --- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,match", [
    (lambda: LoRAConfig(r=0), "r must be"),
    (lambda: LoRAConfig(r=True), "r must be"),
    (lambda: LoRAConfig(alpha=True), "alpha"),
    (lambda: LoRAConfig(alpha=float("nan")), "alpha"),
    (lambda: LoRAConfig(dropout=False), "dropout"),
    (lambda: LoRAConfig(rslora=1), "rslora"),
    (lambda: LoRAConfig(init="xavier"), "init"),
    (lambda: LoRAConfig(targets=()), "targets"),
    (lambda: AdapterConfig(bottleneck=True), "bottleneck"),
    (lambda: AdapterConfig(activation="tanh"), "activation"),
    (lambda: AdapterConfig(train_layernorm="yes"), "train_layernorm"),
    (lambda: PromptTuningConfig(n_tokens=True), "n_tokens"),
    (lambda: PromptTuningConfig(init="zeros"), "init"),
    (lambda: LoRAConfig(alpha=0), "alpha"),
    (lambda: AdapterConfig(bottleneck=0), "bottleneck"),
    (lambda: AdapterConfig(placement="middle"), "placement"),
    (lambda: PromptTuningConfig(n_tokens=0), "n_tokens"),
    (lambda: PromptTuningConfig(init="text"), "init_text"),
])
def test_bad_configs(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_damaged_or_strategyless_save_is_refused(tmp_path):
    """Catches the checksum written or read under another key (a damaged file would load), and a model
    without a strategy failing with an AttributeError instead of saying what to do."""
    with pytest.raises(ConfigError, match="no strategy applied"):
        save_trainable(base(), tmp_path / "none")
    save_trainable(apply_strategy(base(), LoRAConfig(r=2)), tmp_path)
    weights = tmp_path / "trainable.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the last tensor's bytes
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_trainable(base(), tmp_path)


def test_a_config_file_holding_no_strategy_and_an_unknown_config_are_named(tmp_path):
    """Catches the error that says which file holds no valid strategy, or which config type is unknown, lost."""
    save_trainable(apply_strategy(base(), LoRAConfig(r=2)), tmp_path)
    meta = json.loads((tmp_path / "strategy.json").read_text())
    (tmp_path / "strategy.json").write_text(json.dumps({**meta, "config": {"rank": 2}}))
    with pytest.raises(CheckpointError, match=r"strategy.json holds no valid strategy"):
        load_trainable(base(), tmp_path)
    with pytest.raises(ConfigError, match="unknown strategy config object; use one of"):
        apply_strategy(base(), object())


def test_an_unknown_strategy_name_lists_the_known_ones():
    from minitune.strategies import config_from_dict

    with pytest.raises(ConfigError, match=r"unknown strategy 'lorra'; known: \['adapter', 'dora'"):
        config_from_dict("lorra", {})


def test_bad_applications():
    with pytest.raises(ConfigError, match=r"r \(17\) must be at most min\(in, out\) = 16"):
        apply_strategy(base(), LoRAConfig(r=17))
    with pytest.raises(ConfigError, match="'q_proj' matches no layer; layers are .*attn.c_attn"):
        apply_strategy(base(), LoRAConfig(targets=("q_proj",)))
    with pytest.raises(ConfigError, match="leaves no room in block_size"):
        apply_strategy(base(), PromptTuningConfig(n_tokens=32))
    with pytest.raises(ConfigError, match="already has the 'lora' strategy"):
        apply_strategy(apply_strategy(base(), LoRAConfig()), AdapterConfig())


def test_base_unchanged_sees_one_changed_value_and_a_missing_tensor():
    """Catches a check that passes when a tensor differs, or when the model lacks one of the base's tensors."""
    plain = base()
    assert base_unchanged(apply_strategy(copy.deepcopy(plain), LoRAConfig(r=2)), plain)
    changed = copy.deepcopy(plain)
    with torch.no_grad():
        changed.transformer.h[1].mlp.c_fc.weight[0, 0] += 1e-3
    assert not base_unchanged(changed, plain)
    assert not base_unchanged(apply_strategy(copy.deepcopy(plain), PromptTuningConfig(n_tokens=2)), base(n_layer=3))


@pytest.mark.parametrize("change", ["drop", "add"])
def test_a_file_missing_or_adding_a_tensor_is_refused_by_name(tmp_path, change):
    """Catches a fit check that needs every kind of mismatch at once, or that looks up a missing tensor."""
    from minitune.checkpoint import load_tensors, save_tensors, sha256_file

    save_trainable(apply_strategy(base(), LoRAConfig(r=2)), tmp_path)
    t = load_tensors(tmp_path / "trainable.safetensors")
    name = sorted(t)[0]
    if change == "drop":
        del t[name]
    else:
        name = "transformer.h.0.attn.c_attn.lora_C"
        t[name] = torch.zeros(2, 2)
    save_tensors(tmp_path / "trainable.safetensors", t)
    meta = json.loads((tmp_path / "strategy.json").read_text())
    meta["sha256"] = sha256_file(tmp_path / "trainable.safetensors")
    (tmp_path / "strategy.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=("missing" if change == "drop" else "unexpected") + fr" \['{name}'\]"):
        load_trainable(base(), tmp_path)


def test_load_onto_a_different_base_is_refused_and_leaves_the_model_unchanged(tmp_path):
    save_trainable(apply_strategy(base(), LoRAConfig(r=2)), tmp_path / "lora")
    other = base(n_embd=32)
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(CheckpointError, match=r"another base.*'n_embd': \(16, 32\)") as refused:
        load_trainable(other, tmp_path / "lora")
    assert "vocab_size" not in str(refused.value)  # only the fields that differ are listed
    # same config, tampered tensors: a shape mismatch names the tensor
    from minitune.checkpoint import load_tensors, save_tensors, sha256_file
    t = load_tensors(tmp_path / "lora" / "trainable.safetensors")
    name = sorted(t)[0]
    t[name] = torch.zeros(3, 3)
    save_tensors(tmp_path / "lora" / "trainable.safetensors", t)
    meta = json.loads((tmp_path / "lora" / "strategy.json").read_text())  # a consistent file, wrong shapes
    meta["sha256"] = sha256_file(tmp_path / "lora" / "trainable.safetensors")
    (tmp_path / "lora" / "strategy.json").write_text(json.dumps(meta))
    fresh = base()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match=f"trainable.safetensors does not fit.*wrong shapes.*{name}"):
        load_trainable(fresh, tmp_path / "lora")
    assert getattr(fresh, "strategy", None) is None
    assert not lora_layers(fresh)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())


def test_switching_task_adapters_on_one_frozen_base(tmp_path):
    a = apply_strategy(base(), LoRAConfig(r=2))
    b = apply_strategy(base(), LoRAConfig(r=2))
    with torch.no_grad():
        for layer in lora_layers(a).values():
            layer.lora_B.fill_(0.1)
        for layer in lora_layers(b).values():
            layer.lora_B.fill_(-0.2)
    save_trainable(a, tmp_path / "a")
    save_trainable(b, tmp_path / "b")
    served = load_trainable(base(), tmp_path / "a")
    x = ids()
    assert torch.equal(served(x)[0], a(x)[0])
    served = load_trainable(served, tmp_path / "b")
    assert torch.equal(served(x)[0], b(x)[0])
    with pytest.raises(CheckpointError, match="carries"):
        save_trainable(apply_strategy(base(), LoRAConfig(r=4)), tmp_path / "c")
        load_trainable(served, tmp_path / "c")


def test_strategies_apply_to_a_model_on_the_meta_device():
    """Counting memory for big shapes builds the model on the meta device: no weights, only shapes."""
    from minitune.strategies import LoRAConfig, apply_strategy, trainable_parameters

    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32))
    lora = apply_strategy(model, LoRAConfig(r=2))
    assert trainable_parameters(lora)[0] == 2 * 2 * (32 + 96)
