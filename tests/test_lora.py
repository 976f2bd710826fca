"""LoRA's math, as properties over random shapes, ranks, scales, targets, dtypes and seeds; PEFT's adapter
files (save_peft_lora, load_peft_lora: names, shapes, fields, bad files); and parity with PEFT on a Hugging
Face GPT-2 (test dependencies: transformers and peft; these never skip).

Each property names, in its docstring, a broken implementation it catches. The properties every strategy
shares (counts, training steps, saving and loading) are in test_strategy_api.py.
"""

import copy
import json
import os

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from minitune.checkpoint import load_tensors, save_tensors
from minitune.errors import CheckpointError, ConfigError, TrainingError
from minitune.interop import load_hf_gpt2, load_peft_lora, save_hf_gpt2, save_peft_lora
from minitune.strategies import LoRAConfig, apply_strategy, merge, unmerge
from minitune.strategies.lora import LoRALinear, lora_layers, merged_state_dict
from minitune.train import TrainConfig, train
from strategy_cases import (
    D, L, V, base, base_weights_close, hf_logits, hf_model, ids, logits, lora_model, perturb_trainable, random_bases,
    random_configs, random_gpt, random_ids, report_diff,
)


# --- LoRA ----------------------------------------------------------------------------------------------

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


def test_a_trained_embedding_is_the_tied_embedding_and_nothing_else_of_the_base(tmp_path):
    """Catches an embedding left frozen (the flag ignored), an output head untied from it (two tensors, one
    trained), any other base tensor let loose, a saved file without the embedding, or a PEFT export that
    silently drops it."""
    from minitune.data.batches import TokenStream
    from minitune.strategies import load_trainable, save_trainable, trainable_parameters

    plain = random_gpt()
    model = apply_strategy(copy.deepcopy(plain), LoRAConfig(r=2, targets=("c_attn",), train_embedding=True))
    assert model.lm_head.weight is model.transformer.wte.weight and model.transformer.wte.weight.requires_grad
    lora = {f"{n}.lora_{ab}" for n in lora_layers(model) for ab in "AB"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == lora | {"transformer.wte.weight"}
    assert trainable_parameters(model)[0] == L * 2 * (D + 3 * D) + V * D
    assert "embedding trained" in model.strategy.recipe
    data = TokenStream(ids(T=300)[0].numpy(), block_size=16, batch_size=2)
    train(model, data, None, TrainConfig(max_steps=2, lr=1e-2, warmup_steps=0, device="cpu", quiet=True))
    after = dict(model.named_parameters())
    for name, p in plain.named_parameters():
        moved = not torch.equal(after[name].detach(), p.detach())
        assert moved == (name in ("transformer.wte.weight", "lm_head.weight")), name
    save_trainable(model, tmp_path / "run")
    loaded = load_trainable(copy.deepcopy(plain), tmp_path / "run")
    assert torch.equal(logits(loaded.eval()), logits(model.eval()))
    with pytest.raises(ConfigError, match="embedding"):
        save_peft_lora(model, tmp_path / "peft")


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


# --- PEFT LoRA adapters --------------------------------------------------------------------------------

def test_peft_adapter_round_trip_gives_identical_logits(tmp_path):
    model = lora_model(rslora=True, dropout=0.05)
    save_peft_lora(model, tmp_path / "adapter")
    fresh = load_peft_lora(random_gpt(), tmp_path / "adapter").eval()
    assert fresh.strategy == model.strategy
    assert torch.equal(logits(fresh), logits(model))
    assert all(not p.requires_grad for n, p in fresh.named_parameters() if "lora_" not in n)


def test_peft_files_hold_peft_names_shapes_dtypes_and_fields(tmp_path):
    model = lora_model()
    save_peft_lora(model, tmp_path / "adapter", base_model_name_or_path="my/base")
    assert sorted(os.listdir(tmp_path / "adapter")) == ["adapter_config.json", "adapter_model.safetensors"]
    t = load_tensors(tmp_path / "adapter" / "adapter_model.safetensors")
    expected = {f"base_model.model.transformer.h.{i}.{m}.lora_{ab}.weight"
                for i in range(L) for m in ("attn.c_attn", "mlp.c_fc") for ab in "AB"}
    assert set(t) == expected
    assert t["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].shape == (4, D)  # [r, in]
    assert t["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].shape == (3 * D, 4)  # [out, r]
    assert t["base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight"].shape == (4 * D, 4)
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in t.values())
    assert torch.equal(t["base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight"],
                       model.transformer.h[1].mlp.c_fc.lora_B)
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg == {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "my/base", "r": 4,
        "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["c_attn", "mlp.c_fc"], "use_rslora": False,
        "fan_in_fan_out": True, "bias": "none", "inference_mode": True, "modules_to_save": None,
        "init_lora_weights": True,
    }


def test_an_adapter_made_on_gpt2model_loads_too(tmp_path):
    """PEFT on GPT2Model (no LM head) names tensors base_model.model.h.0...: the same layers."""
    model = lora_model()
    folder = save_peft_lora(model, tmp_path / "adapter")
    t = load_tensors(folder / "adapter_model.safetensors")
    save_tensors(folder / "adapter_model.safetensors", {k.replace(".transformer.", "."): v for k, v in t.items()})
    assert torch.equal(logits(load_peft_lora(random_gpt(), folder).eval()), logits(model))


def test_save_peft_lora_needs_lora(tmp_path):
    with pytest.raises(ConfigError, match="LoRA"):
        save_peft_lora(random_gpt(), tmp_path / "adapter")


def _unchanged(model, before) -> bool:
    return (getattr(model, "strategy", None) is None and not lora_layers(model)
            and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
            and set(before) == set(model.state_dict()))


PA = "base_model.model.transformer.h."  # every PEFT key starts so


def _wider_r(cfg, t):
    """r = 32 throughout, config and tensors alike: more than the 16-wide layers allow."""
    cfg.update(r=32)
    t.update({k: torch.zeros(32, v.shape[1]) if ".lora_A." in k else torch.zeros(v.shape[0], 32) for k, v in t.items()})


BAD_ADAPTERS = {
    "not-lora": (lambda c, t: c.update(peft_type="PREFIX_TUNING"), "peft_type is 'PREFIX_TUNING'"),
    "no-such-module": (lambda c, t: c.update(target_modules=["c_attn", "q_proj"]), "'q_proj' matches no layer"),
    "regex-targets": (lambda c, t: c.update(target_modules=".*c_attn"), "list of module names"),
    "dora": (lambda c, t: c.update(use_dora=True), "use_dora"),
    "r-differs": (lambda c, t: c.update(r=8), f"wrong shapes \\['{PA}0.attn.c_attn.lora_A.weight: file \\[4, 16\\], "
                                              "expected \\[8, 16\\]"),
    "r-too-wide": (_wider_r, "at most min"),
    "missing": (lambda c, t: t.pop(f"{PA}1.mlp.c_fc.lora_B.weight"), f"missing \\['{PA}1.mlp.c_fc.lora_B.weight'\\]"),
    "unexpected": (lambda c, t: t.update({f"{PA}0.mlp.c_proj.lora_A.weight": torch.zeros(4, 4 * D)}),
                   f"unexpected \\['{PA}0.mlp.c_proj.lora_A.weight'\\]"),
    "wrong-shape": (lambda c, t: t.update({f"{PA}0.attn.c_attn.lora_B.weight": torch.zeros(D, 4)}),
                    f"{PA}0.attn.c_attn.lora_B.weight: file \\[16, 4\\], expected \\[48, 4\\]"),
}


@pytest.mark.parametrize("change, message", BAD_ADAPTERS.values(), ids=BAD_ADAPTERS.keys())
def test_bad_adapters_are_refused_and_leave_the_model_unchanged(tmp_path, change, message):
    folder = save_peft_lora(lora_model(), tmp_path / "adapter")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    t = load_tensors(folder / "adapter_model.safetensors")
    change(cfg, t)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    save_tensors(folder / "adapter_model.safetensors", t)
    base = random_gpt(1)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(CheckpointError, match=message) as e:
        load_peft_lora(base, folder)
    assert "adapter_" in str(e.value)  # the file is named
    assert _unchanged(base, before)


def test_adapter_folder_without_files_is_named(tmp_path):
    folder = save_peft_lora(lora_model(), tmp_path / "adapter")
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="adapter_model.safetensors or adapter_model.bin"):
        load_peft_lora(random_gpt(), folder)
    (folder / "adapter_config.json").unlink()
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        load_peft_lora(random_gpt(), folder)


def test_load_peft_lora_needs_a_plain_base(tmp_path):
    folder = save_peft_lora(lora_model(), tmp_path / "adapter")
    with pytest.raises(ConfigError, match="plain base"):
        load_peft_lora(lora_model(), folder)


def test_a_peft_adapter_loads_onto_a_base_read_from_hf(tmp_path):
    """The two halves together: a real-layout base from disk plus an adapter gives the LoRA model's logits."""
    model = lora_model()
    plain = copy.deepcopy(model)
    for name, layer in lora_layers(plain).items():  # strip the LoRA layers back to the frozen linears
        parent, _, child = name.rpartition(".")
        linear = torch.nn.Linear(layer.in_features, layer.out_features)
        linear.weight, linear.bias = layer.weight, layer.bias
        setattr(plain.get_submodule(parent), child, linear)
    plain.strategy = None
    save_hf_gpt2(plain, tmp_path / "base")
    save_peft_lora(model, tmp_path / "adapter")
    again = load_peft_lora(load_hf_gpt2(tmp_path / "base"), tmp_path / "adapter")
    assert isinstance(again.transformer.h[0].mlp.c_fc, LoRALinear)
    torch.testing.assert_close(logits(again), logits(model), rtol=1e-6, atol=1e-6)


# --- parity with PEFT ----------------------------------------------------------------------------------

def test_parity_minitune_lora_loads_into_peft(tmp_path):
    import peft
    hf = hf_model()
    hf.save_pretrained(tmp_path / "hf")
    model = apply_strategy(load_hf_gpt2(tmp_path / "hf"), LoRAConfig(r=4, alpha=8, targets=("c_attn", "mlp.c_fc")))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.2)
    save_peft_lora(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "hf"))
    base_logits = hf_logits(hf)
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    assert report_diff("minitune LoRA -> PEFT", hf_logits(peft_model), logits(model.eval())) < 1e-4
    assert (hf_logits(peft_model) - base_logits).abs().max() > 1e-2  # the update is there to be compared


def test_parity_peft_adapter_loads_into_minitune(tmp_path):
    import peft
    hf = hf_model()
    hf.save_pretrained(tmp_path / "hf")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "mlp.c_fc"], fan_in_fan_out=True,
                             task_type="CAUSAL_LM", use_rslora=True)
    peft_model = peft.get_peft_model(hf, config)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    peft_model.save_pretrained(tmp_path / "adapter")
    model = load_peft_lora(load_hf_gpt2(tmp_path / "hf"), tmp_path / "adapter").eval()
    assert (model.strategy.r, model.strategy.alpha, model.strategy.rslora) == (4, 8, True)
    assert set(model.strategy.targets) == {"c_attn", "mlp.c_fc"}  # PEFT keeps them as a set
    assert report_diff("PEFT -> minitune LoRA", logits(model), hf_logits(peft_model.eval())) < 1e-4
