"""Every strategy's math, as properties over random shapes, ranks, scales and seeds."""

import copy
import json

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from minitune.errors import CheckpointError, ConfigError
from minitune.model import GPT, GPTConfig
from minitune.strategies import (
    AdapterConfig, FullConfig, LoRAConfig, PromptTuningConfig, apply_strategy, load_trainable, merge,
    save_trainable, trainable_parameters, trainable_report, unmerge,
)
from minitune.strategies.lora import LoRALinear, lora_layers, merged_state_dict
from minitune.strategies.prompt import PromptTunedGPT
from minitune.train import TrainConfig, make_optimizer

ALL = [FullConfig(), LoRAConfig(r=4, targets=("c_attn", "mlp.c_proj")), AdapterConfig(bottleneck=8),
       PromptTuningConfig(n_tokens=5)]


def base(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=16)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def ids(seed=1, B=2, T=10, V=64) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# --- every strategy -------------------------------------------------------------------------------

@pytest.mark.parametrize("config", ALL, ids=lambda c: c.name)
def test_starts_equal_to_the_base(config):
    model = base()
    x = ids()
    expected = model(x)[0]
    adapted = apply_strategy(copy.deepcopy(model), config)
    if isinstance(config, PromptTuningConfig):
        return  # a soft prompt changes the input by design; its own test below
    assert torch.equal(adapted(x)[0], expected)


@pytest.mark.parametrize("config", ALL, ids=lambda c: c.name)
def test_training_moves_every_trainable_tensor_and_no_frozen_one(config):
    """LoRA's A and an adapter's down-projection get zero gradient while B / up are zero (by design),
    so the check runs two steps: the first moves B / up, the second everything trainable."""
    model = apply_strategy(base().train(), config)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.0), torch.device("cpu"))
    for step in range(2):
        x = ids(seed=step)
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


@pytest.mark.parametrize("config", ALL, ids=lambda c: c.name)
def test_save_and_load_onto_a_fresh_base_reproduces_logits(config, tmp_path):
    model = apply_strategy(base(), config)
    with torch.no_grad():  # stand-in for training: give every trainable tensor non-trivial values
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    save_trainable(model, tmp_path)
    restored = load_trainable(base(), tmp_path)
    x = ids()
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


def test_report_format():
    report = trainable_report(apply_strategy(base(), LoRAConfig(r=2)))
    trainable, total = trainable_parameters(apply_strategy(base(), LoRAConfig(r=2)))
    assert report == f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.2f}"


# --- LoRA ------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(fan_in=st.integers(1, 24), fan_out=st.integers(1, 24), data=st.data(), alpha=st.floats(0.1, 64),
       rslora=st.booleans(), seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_lora_linear_properties(fan_in, fan_out, data, alpha, rslora, seed, dtype):
    r = data.draw(st.integers(1, min(fan_in, fan_out)))
    torch.manual_seed(seed)
    linear = nn.Linear(fan_in, fan_out).to(dtype)
    w0 = linear.weight.detach().clone()
    cfg = LoRAConfig(r=r, alpha=alpha, rslora=rslora)
    layer = LoRALinear(linear, r, cfg.scaling)
    x = torch.randn(3, fan_in, dtype=dtype)
    # B = 0: exactly the base
    assert torch.equal(layer(x), nn.functional.linear(x, w0, linear.bias))
    assert layer.scaling == pytest.approx(alpha / (r ** 0.5 if rslora else r))
    assert layer.lora_A.shape == (r, fan_in) and layer.lora_B.shape == (fan_out, r)
    with torch.no_grad():
        layer.lora_B.normal_()
    # the update has rank at most r, and is s * B A
    delta = layer.delta_weight()
    assert torch.linalg.matrix_rank(delta) <= r  # tolerance from delta's own dtype
    reference = cfg.scaling * (layer.lora_B.double() @ layer.lora_A.double())
    assert torch.allclose(delta.double(), reference, rtol=1e-5, atol=1e-5 * (1 + reference.abs().max().item()))
    unmerged = layer(x)
    assert torch.allclose(unmerged, x @ (w0 + delta).T + linear.bias, rtol=1e-4, atol=1e-4)
    layer.merge()
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    scale = 1 + unmerged.abs().max().item()
    assert torch.allclose(layer(x), unmerged, rtol=tol, atol=tol * scale)
    layer.unmerge()
    assert torch.allclose(layer.weight, w0, rtol=tol, atol=tol * (1 + delta.abs().max().item()))
    assert not layer.merged


@settings(max_examples=20, deadline=None)
@given(r=st.integers(1, 8), targets=st.sets(st.sampled_from(["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"]), min_size=1))
def test_lora_count_is_r_times_in_plus_out_per_target(r, targets):
    model = apply_strategy(base(), LoRAConfig(r=r, targets=tuple(sorted(targets))))
    expected = sum(r * (m.in_features + m.out_features) for m in lora_layers(model).values())
    assert len(lora_layers(model)) == 2 * len(targets)
    assert trainable_parameters(model)[0] == expected
    grads = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_A" in n or ".lora_B" in n for n in grads)


def test_lora_keeps_base_names_so_a_base_checkpoint_loads_unchanged():
    plain = base(seed=3)
    model = apply_strategy(base(seed=4), LoRAConfig(targets=("c_attn", "c_fc")))
    result = model.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == [] and all(".lora_" in k for k in result.missing_keys)


def test_merged_weights_load_strictly_into_a_plain_gpt_and_agree():
    model = apply_strategy(base(), LoRAConfig(r=4, alpha=8, targets=("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(std=0.1)
    x = ids()
    unmerged = model(x)[0]
    plain = base(seed=9)
    plain.load_state_dict(merged_state_dict(model), strict=True)
    assert torch.allclose(plain(x)[0], unmerged, atol=1e-5)
    merge(model)
    assert torch.allclose(model(x)[0], unmerged, atol=1e-5)
    plain.load_state_dict(merged_state_dict(model), strict=True)  # merged already: same weights
    assert torch.allclose(plain(x)[0], unmerged, atol=1e-5)
    unmerge(model)
    assert torch.allclose(model(x)[0], unmerged, atol=1e-5)


def test_lora_dropout_only_touches_the_lora_path():
    model = apply_strategy(base().train(), LoRAConfig(r=2, dropout=0.5))
    x = ids()
    a, b = model(x)[0], model(x)[0]
    assert torch.equal(a, b)  # B = 0: dropout on the LoRA input changes nothing yet


# --- adapters ----------------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 32), placement=st.sampled_from(["houlsby", "pfeiffer"]), ln=st.booleans(),
       activation=st.sampled_from(["gelu", "relu"]), seed=st.integers(0, 1000))
def test_adapter_count_identity_and_shapes(m, placement, ln, activation, seed):
    plain = base(seed=seed)
    x = ids(seed)
    expected = plain(x)[0]
    model = apply_strategy(copy.deepcopy(plain), AdapterConfig(bottleneck=m, placement=placement,
                                                               activation=activation, train_layernorm=ln))
    assert torch.equal(model(x)[0], expected)  # zero up-projection: the identity
    d, L = 16, 2
    per_block = 2 if placement == "houlsby" else 1
    count = L * per_block * (2 * d * m + d + m) + (ln * (2 * L + 1) * 2 * d)
    assert trainable_parameters(model)[0] == count
    assert model(x)[0].shape == expected.shape


# --- prompt tuning -------------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 12), T=st.integers(1, 12), seed=st.integers(0, 1000))
def test_soft_prompt_of_real_token_embeddings_equals_the_base_on_those_tokens(n, T, seed):
    plain = base(seed=seed)
    prompt_ids, x = ids(seed, B=1, T=n), ids(seed + 1, B=2, T=T)
    model = apply_strategy(copy.deepcopy(plain), PromptTuningConfig(n_tokens=n, init="random"))
    assert trainable_parameters(model)[0] == n * 16
    with torch.no_grad():
        model.soft_prompt.weight.copy_(plain.transformer.wte.weight[prompt_ids[0]])
    with_prompt = plain(torch.cat([prompt_ids.expand(2, -1), x], dim=1))[0][:, n:]
    assert torch.allclose(model(x)[0], with_prompt, atol=1e-5)


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
    with pytest.raises(ConfigError, match="usable context is 26"):
        model(ids(T=27))


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


# --- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,match", [
    (lambda: LoRAConfig(r=0), "r must be"),
    (lambda: LoRAConfig(alpha=0), "alpha"),
    (lambda: AdapterConfig(bottleneck=0), "bottleneck"),
    (lambda: AdapterConfig(placement="middle"), "placement"),
    (lambda: PromptTuningConfig(n_tokens=0), "n_tokens"),
    (lambda: PromptTuningConfig(init="text"), "init_text"),
])
def test_bad_configs(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_applications():
    with pytest.raises(ConfigError, match=r"r \(17\) must be at most min\(in, out\) = 16"):
        apply_strategy(base(), LoRAConfig(r=17))
    with pytest.raises(ConfigError, match="'q_proj' matches no layer; layers are .*attn.c_attn"):
        apply_strategy(base(), LoRAConfig(targets=("q_proj",)))
    with pytest.raises(ConfigError, match="leaves no room in block_size"):
        apply_strategy(base(), PromptTuningConfig(n_tokens=32))
    with pytest.raises(ConfigError, match="already has the 'lora' strategy"):
        apply_strategy(apply_strategy(base(), LoRAConfig()), AdapterConfig())


def test_load_onto_a_different_base_is_refused_and_leaves_the_model_unchanged(tmp_path):
    save_trainable(apply_strategy(base(), LoRAConfig(r=2)), tmp_path / "lora")
    other = base(n_embd=32)
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(CheckpointError, match="another base.*n_embd"):
        load_trainable(other, tmp_path / "lora")
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
    with pytest.raises(CheckpointError, match=f"wrong shapes.*{name}"):
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
