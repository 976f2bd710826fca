"""Hugging Face GPT-2 checkpoints: layouts, round trips, bad files, and parity with transformers.

The checkpoints are built here in exactly HF's layout (Conv1D weights [in, out], the attn.bias mask buffers)
and checked against a GPT-2 forward pass written from those tensors with Conv1D's own arithmetic, x @ W + b,
so a missing or doubled transpose shows up as wrong logits. PEFT's LoRA adapter files, and parity with PEFT,
are tested with LoRA, in test_lora.py.
"""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from minitune.checkpoint import load_tensors, save_tensors
from minitune.errors import CheckpointError, ConfigError
from minitune.interop import load_hf_gpt2, save_hf_gpt2
from minitune.model import GPT, GPTConfig
from minitune.strategies import AdapterConfig, PromptTuningConfig, apply_strategy, merge
from minitune.strategies.lora import lora_layers
from gpt2_files import write_gpt2_files
from strategy_cases import D, H, L, T, V, hf_logits, hf_model, logits, lora_model, random_gpt, report_diff

HF_CONFIG = dict(model_type="gpt2", vocab_size=V, n_positions=T, n_ctx=T, n_layer=L, n_head=H, n_embd=D,
                 layer_norm_epsilon=1e-5, activation_function="gelu_new", n_inner=None)


def hf_tensors(seed=0) -> dict[str, torch.Tensor]:
    """Random GPT-2 tensors named and shaped as OpenAI's `gpt2` folder holds them (no `transformer.` prefix)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    t = {"wte.weight": r(V, D), "wpe.weight": r(T, D), "ln_f.weight": 1 + r(D), "ln_f.bias": r(D)}
    for i in range(L):
        p = f"h.{i}."
        t.update({
            p + "ln_1.weight": 1 + r(D), p + "ln_1.bias": r(D), p + "ln_2.weight": 1 + r(D), p + "ln_2.bias": r(D),
            p + "attn.c_attn.weight": r(D, 3 * D), p + "attn.c_attn.bias": r(3 * D),  # Conv1D: [in, out]
            p + "attn.c_proj.weight": r(D, D), p + "attn.c_proj.bias": r(D),
            p + "mlp.c_fc.weight": r(D, 4 * D), p + "mlp.c_fc.bias": r(4 * D),
            p + "mlp.c_proj.weight": r(4 * D, D), p + "mlp.c_proj.bias": r(D),
            p + "attn.bias": torch.tril(torch.ones(T, T)).view(1, 1, T, T),  # the mask buffers older files hold
            p + "attn.masked_bias": torch.tensor(-1e4),
        })
    return t


def write_hf(folder, tensors, config=HF_CONFIG, fmt="safetensors"):
    """A checkpoint folder: config.json and the tensors as model.safetensors or pytorch_model.bin."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if fmt == "safetensors":
        save_tensors(folder / "model.safetensors", tensors, metadata={"format": "pt"})
    else:
        torch.save(tensors, folder / "pytorch_model.bin")
    return folder


def reference_logits(t: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """GPT-2's forward pass written from HF-layout tensors, with Conv1D's y = x @ W + b."""
    def conv1d(x, name):
        return x @ t[name + ".weight"] + t[name + ".bias"]

    def ln(x, name):
        return F.layer_norm(x, (D,), t[name + ".weight"], t[name + ".bias"], eps=1e-5)

    def gelu_new(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    B, n = idx.shape
    x = t["wte.weight"][idx] + t["wpe.weight"][:n]
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    for i in range(L):
        p = f"h.{i}."
        q, k, v = conv1d(ln(x, p + "ln_1"), p + "attn.c_attn").split(D, dim=2)
        q, k, v = (z.view(B, n, H, D // H).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // H)
        y = att.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        x = x + conv1d(y.transpose(1, 2).reshape(B, n, D), p + "attn.c_proj")
        x = x + conv1d(gelu_new(conv1d(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    return ln(x, "ln_f") @ t["wte.weight"].T


def ids(seed=1, B=2, n=T) -> torch.Tensor:
    return torch.randint(0, V, (B, n), generator=torch.Generator().manual_seed(seed))


def hf_key_set(n_layer=L) -> set[str]:
    per_layer = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                 "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias"]
    keys = {f"transformer.{k}" for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    return keys | {f"transformer.h.{i}.{k}" for i in range(n_layer) for k in per_layer}


# --- loading HF GPT-2 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["bare", "prefixed", "bin-with-head"])
def test_load_matches_a_forward_pass_written_from_hf_tensors(tmp_path, layout):
    t = hf_tensors()
    stored = dict(t)
    if layout == "prefixed":  # as GPT2LMHeadModel saves: transformer.-prefixed, no masks, no lm_head
        stored = {"transformer." + k: v for k, v in t.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    if layout == "bin-with-head":  # an old pytorch_model.bin with the tied head written out
        stored = {**{"transformer." + k: v for k, v in t.items()}, "lm_head.weight": t["wte.weight"].clone()}
    folder = write_hf(tmp_path / "gpt2", stored, fmt="bin" if layout.startswith("bin") else "safetensors")
    model = load_hf_gpt2(folder)
    assert model.config == GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=D)
    assert not model.training
    assert model.lm_head.weight is model.transformer.wte.weight
    torch.testing.assert_close(logits(model), reference_logits(t, ids()), rtol=1e-4, atol=1e-4)


def test_projections_are_transposed_into_linear_layout(tmp_path):
    t = hf_tensors()
    model = load_hf_gpt2(write_hf(tmp_path / "gpt2", t))
    assert torch.equal(model.transformer.h[1].mlp.c_fc.weight, t["h.1.mlp.c_fc.weight"].T)  # [4D, D] <- [D, 4D]
    assert torch.equal(model.transformer.h[0].attn.c_attn.bias, t["h.0.attn.c_attn.bias"])


def test_save_then_load_gives_identical_tensors_and_logits(tmp_path):
    model = random_gpt()
    save_hf_gpt2(model, tmp_path / "out")
    again = load_hf_gpt2(tmp_path / "out")
    for (n, a), (m, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n == m and torch.equal(a, b), n
    assert torch.equal(logits(model), logits(again))
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]  # no temporary files left


def test_saved_files_hold_exactly_gpt2s_keys_shapes_and_fields(tmp_path):
    model = random_gpt()
    save_hf_gpt2(model, tmp_path / "out")
    t = load_tensors(tmp_path / "out" / "model.safetensors")
    assert set(t) == hf_key_set()  # no lm_head.weight: tied, as save_pretrained leaves it out
    assert t["transformer.h.0.attn.c_attn.weight"].shape == (D, 3 * D)
    assert t["transformer.h.0.mlp.c_fc.weight"].shape == (D, 4 * D)
    assert t["transformer.h.0.mlp.c_proj.weight"].shape == (4 * D, D)
    assert t["transformer.wpe.weight"].shape == (T, D)
    assert all(v.dtype == torch.float32 for v in t.values())
    assert torch.equal(t["transformer.h.1.attn.c_proj.weight"], model.transformer.h[1].attn.c_proj.weight.T)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"]
    assert cfg["activation_function"] == "gelu_new" and cfg["tie_word_embeddings"] is True
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["vocab_size"]) == (L, H, D, V)
    assert cfg["n_positions"] == cfg["n_ctx"] == T and cfg["layer_norm_epsilon"] == 1e-5
    assert cfg["eos_token_id"] == cfg["bos_token_id"] == V - 1


def test_a_lora_model_is_saved_merged_and_left_as_it_was(tmp_path):
    model = lora_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save_hf_gpt2(model, tmp_path / "out")
    assert all(not layer.merged for layer in lora_layers(model).values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    torch.testing.assert_close(logits(load_hf_gpt2(tmp_path / "out")), logits(model), rtol=1e-5, atol=1e-5)
    merge(model)  # an already merged model gives the same file contents
    save_hf_gpt2(model, tmp_path / "merged")
    a, b = load_tensors(tmp_path / "out" / "model.safetensors"), load_tensors(tmp_path / "merged" / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("config", [AdapterConfig(bottleneck=4), PromptTuningConfig(n_tokens=3, init="random")],
                         ids=lambda c: c.name)
def test_strategies_gpt2_cannot_hold_are_refused(tmp_path, config):
    model = apply_strategy(random_gpt(), config)
    with pytest.raises(ConfigError, match="save_trainable"):
        save_hf_gpt2(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- bad HF checkpoints -----------------------------------------------------------------------------------

def test_missing_config_or_weights_are_named(tmp_path):
    folder = write_hf(tmp_path / "gpt2", hf_tensors())
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors or pytorch_model.bin"):
        load_hf_gpt2(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        load_hf_gpt2(folder)


@pytest.mark.parametrize("change, named", [
    (lambda t: t.pop("h.1.mlp.c_fc.bias"), "missing \\['transformer.h.1.mlp.c_fc.bias'\\]"),
    (lambda t: t.update({"h.0.attn.extra": torch.zeros(2)}), "unexpected \\['transformer.h.0.attn.extra'\\]"),
    (lambda t: t.update({"h.0.attn.c_attn.weight": torch.zeros(3 * D, D)}), "transformer.h.0.attn.c_attn.weight: file"),
    (lambda t: t.update({"h.2.ln_1.weight": torch.zeros(D)}), "transformer.h.2.ln_1.weight"),  # a layer too many
])
def test_tensors_that_do_not_fit_the_config_are_named(tmp_path, change, named):
    t = hf_tensors()
    change(t)
    with pytest.raises(CheckpointError, match=named):
        load_hf_gpt2(write_hf(tmp_path / "gpt2", t))


def test_an_untied_head_and_other_architectures_are_refused(tmp_path):
    t = hf_tensors()
    with pytest.raises(CheckpointError, match="lm_head.weight differs"):
        load_hf_gpt2(write_hf(tmp_path / "a", {**t, "lm_head.weight": torch.randn(V, D)}))
    for field, value in [("activation_function", "relu"), ("n_inner", 3 * D), ("model_type", "gpt_neo")]:
        with pytest.raises(CheckpointError, match=field):
            load_hf_gpt2(write_hf(tmp_path / field, t, config={**HF_CONFIG, field: value}))
    with pytest.raises(CheckpointError, match="n_head"):
        load_hf_gpt2(write_hf(tmp_path / "b", t, config={k: v for k, v in HF_CONFIG.items() if k != "n_head"}))


class _Marker:
    """Unpickling this would create a file: what a malicious checkpoint does instead of something worse."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_holding_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    torch.save({**hf_tensors(), "payload": _Marker(str(marker))}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="none of its code was run") as e:
        load_hf_gpt2(folder)
    assert "pytorch_model.bin" in str(e.value)
    assert not marker.exists()


def test_a_pickle_of_something_else_is_refused(tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    torch.save([torch.zeros(2)], folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="dict of named tensors"):
        load_hf_gpt2(folder)


# --- parity with transformers (a test dependency: these never skip) --------------------------------------

def test_parity_transformers_save_pretrained_to_minitune(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf_gpt2(tmp_path / "hf")
    assert report_diff("HF -> minitune", logits(ours), hf_logits(hf)) < 1e-4


def test_parity_minitune_to_transformers_from_pretrained(tmp_path):
    import transformers
    model = random_gpt()
    save_hf_gpt2(model, tmp_path / "out")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert report_diff("minitune -> HF", hf_logits(hf), logits(model)) < 1e-4


def test_a_vocabulary_larger_than_the_models_embedding_is_refused(tmp_path):
    from minitune.pretrain import load_run

    save_hf_gpt2(GPT(GPTConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16)), tmp_path)
    write_gpt2_files(tmp_path, [("h", "e")])  # 258 tokens
    with pytest.raises(CheckpointError, match="vocab.json has 258 tokens, but the model in .* has an embedding of "
                                              "257 rows"):
        load_run(tmp_path)


def test_a_gpt2_checkpoint_folder_is_a_base_for_finetune_and_lessons(tmp_path):
    """`--base PATH` takes a GPT-2 checkpoint folder: the model through load_hf_gpt2, GPT-2's tokenizer from
    the folder's vocab.json + merges.txt (here a small one in GPT-2's layout)."""
    from minitune.cli import main
    from minitune.pretrain import load_run

    torch.manual_seed(0)
    save_hf_gpt2(GPT(GPTConfig(vocab_size=257, block_size=128, n_layer=1, n_head=2, n_embd=16)), tmp_path / "gpt2")
    write_gpt2_files(tmp_path / "gpt2", [])
    model, enc, meta = load_run(tmp_path / "gpt2")
    assert meta["hf_checkpoint"] and enc.n_vocab == 257 and model.config.vocab_size == 257
    assert main(["finetune", "--base", str(tmp_path / "gpt2"), "--task", "qa", "--strategy", "lora", "--r", "2",
                 "--out", str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "2", "--device", "cpu"]) == 0
