"""Hugging Face GPT-2 checkpoints and PEFT LoRA adapter files, read and written by hand.

A GPT-2 checkpoint folder (what `GPT2LMHeadModel.save_pretrained` writes):

    config.json          n_layer, n_head, n_embd, n_positions (the context), vocab_size, layer_norm_epsilon, ...
    model.safetensors    the tensors by name (older folders: pytorch_model.bin, a pickle of them)

The names are minitune's own, because minitune uses GPT-2's (`transformer.wte.weight`,
`transformer.h.0.attn.c_attn.weight`, ...). Files saved from `GPT2Model` rather than `GPT2LMHeadModel`
(OpenAI's `gpt2` among them) drop the `transformer.` prefix. Three differences remain:

    projection    HF Conv1D: y = x @ W + b, W [in, out]      minitune nn.Linear: y = x @ W^T + b, W [out, in]
                  so every c_attn / c_proj / c_fc weight is transposed on the way in and on the way out
    lm_head       tied to wte: save_pretrained leaves it out; an old pytorch_model.bin may hold a copy
    attn.bias     older files hold the causal mask (and attn.masked_bias) as buffers: not weights, skipped

A PEFT LoRA adapter folder (what `PeftModel.save_pretrained` writes):

    adapter_config.json        peft_type "LORA", r, lora_alpha, lora_dropout, target_modules (module-name
                               suffixes, matched as minitune's LoRA targets are), use_rslora, fan_in_fan_out
                               (true for GPT-2's Conv1D), base_model_name_or_path, ...
    adapter_model.safetensors  base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight  [r, in]
                               base_model.model.transformer.h.{i}.attn.c_attn.lora_B.weight  [out, r]

PEFT keeps lora_A and lora_B as nn.Linear weights even on a Conv1D layer (fan_in_fan_out only transposes
the base weight and the merged delta), so they are minitune's `lora_A` [r, in] and `lora_B` [out, r] as
they stand, and the scaling is the same: lora_alpha / r (rsLoRA: lora_alpha / sqrt(r)).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

from minitune.checkpoint import atomic_write_json, load_tensors, read_json, safe_torch_load, save_tensors
from minitune.errors import CheckpointError, ConfigError
from minitune.model import GPT, GPTConfig
from minitune.strategies import apply_strategy
from minitune.strategies.full import FullConfig
from minitune.strategies.lora import LoRAConfig, lora_layers, merged_state_dict
from minitune.strategies.targets import target_layers

HF_CONFIG, HF_SAFETENSORS, HF_BIN = "config.json", "model.safetensors", "pytorch_model.bin"
PEFT_CONFIG, PEFT_SAFETENSORS, PEFT_BIN = "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"
PEFT_PREFIX = "base_model.model."
CONV1D = re.compile(r"\.(c_attn|c_proj|c_fc)\.weight$")  # HF stores these [in, out]
MASK_BUFFER = re.compile(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$")  # the causal mask, not a weight
# config.json fields whose other values would change the arithmetic minitune's GPT does
SAME_MATH = {
    "model_type": ("gpt2",),
    "activation_function": ("gelu_new", "gelu_pytorch_tanh"),  # both are GELU's tanh approximation
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
}
# adapter_config.json fields minitune's LoRA has no counterpart for, and the values that mean "not used"
PEFT_UNUSED = {
    "bias": ("none",), "use_dora": (False, None), "lora_bias": (False, None), "modules_to_save": (None, []),
    "rank_pattern": ({}, None), "alpha_pattern": ({}, None), "layers_to_transform": (None,),
    "layer_replication": (None,), "target_parameters": (None, []), "trainable_token_indices": (None,),
    "exclude_modules": (None, []),
    "init_lora_weights": (True, False, "gaussian"),  # the others (pissa, olora, loftq, ...) change the base
}


# ---------------------------------------------------------------------------------------------- HF GPT-2

def load_hf_gpt2(path: str | Path, device: str | torch.device = "cpu") -> GPT:
    """Build a GPT from a local Hugging Face GPT-2 checkpoint folder (any size), in eval mode."""
    path = Path(path)
    config = _config_from_hf(read_json(_need(path / HF_CONFIG)), path / HF_CONFIG)
    tensors, file = _read_weights(path, HF_SAFETENSORS, HF_BIN)
    model = GPT(config)
    state = _from_hf(tensors, file)
    params = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # lm_head is wte
    # what the file should hold, in its own layout: Conv1D weights [in, out]
    _check_fits({k: _hf_layout(k, v).shape for k, v in params.items()}, state, file, "its config.json")
    with torch.no_grad():
        for name, t in state.items():
            t = _hf_layout(name, t)  # [in, out] -> [out, in] (a transpose is its own inverse)
            assert t.shape == params[name].shape, name
            params[name].copy_(t)
    return model.to(device).eval()


def save_hf_gpt2(model: GPT, path: str | Path, eos_token_id: int | None = None) -> Path:
    """Write `model` as a GPT-2 checkpoint folder that `GPT2LMHeadModel.from_pretrained` reads.

    A LoRA model is written with its update folded in (`merged_state_dict`; the model itself is left as
    it is, merged or not). Adapters and soft prompts add modules GPT-2's layout has no place for, so a
    model carrying them is refused: keep those with `save_trainable`. `eos_token_id` defaults to the last
    id, GPT-2's `<|endoftext|>` (50256 of 50257; 2047 in minitune's 2048-token vocabulary).
    """
    strategy = getattr(model, "strategy", None)
    if isinstance(strategy, LoRAConfig):
        state = merged_state_dict(model)
    elif strategy is None or isinstance(strategy, FullConfig):
        state = model.state_dict()
    else:
        raise ConfigError(
            f"a model with the {strategy.name!r} strategy cannot be written in GPT-2's layout, which has no "
            "place for its extra modules; save its trainable part with save_trainable instead "
            "(LoRA models are written merged, via merged_state_dict)"
        )
    if not model.config.bias:
        raise ConfigError("GPT-2 checkpoints always hold biases; this model was built with bias=False")
    path = Path(path)
    tensors = {k: _hf_layout(k, v) for k, v in state.items() if k != "lm_head.weight"}
    save_tensors(path / HF_SAFETENSORS, tensors, metadata={"format": "pt"})
    atomic_write_json(path / HF_CONFIG, _config_to_hf(model.config, eos_token_id))
    return path


def _config_from_hf(hf: dict, file: Path) -> GPTConfig:
    """GPTConfig from a GPT-2 config.json (refusing settings that would change the model's arithmetic)."""
    for key, allowed in SAME_MATH.items():
        if key in hf and hf[key] not in allowed:
            raise CheckpointError(f"{file}: {key}={hf[key]!r} is not GPT-2 as minitune builds it (needs {allowed})")
    n_inner = hf.get("n_inner")
    if n_inner is not None and n_inner != 4 * hf.get("n_embd", 0):
        raise CheckpointError(f"{file}: n_inner={n_inner} differs from 4 * n_embd, which minitune's MLP uses")
    try:
        return GPTConfig(
            vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
            n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=0.0, bias=True,
            layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        )
    except KeyError as e:
        raise CheckpointError(f"{file} has no {e.args[0]!r} field; is it a GPT-2 config?") from e
    except ConfigError as e:
        raise CheckpointError(f"{file} holds an invalid GPT-2 config: {e}") from e


def _config_to_hf(c: GPTConfig, eos_token_id: int | None) -> dict:
    """The config.json GPT2LMHeadModel.save_pretrained would write for this shape."""
    eos = c.vocab_size - 1 if eos_token_id is None else eos_token_id
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "activation_function": "gelu_new",
        "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd,
        "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": None, "layer_norm_epsilon": c.layer_norm_epsilon,
        "attn_pdrop": c.dropout, "embd_pdrop": c.dropout, "resid_pdrop": c.dropout,
        "bos_token_id": eos, "eos_token_id": eos, "initializer_range": 0.02, "scale_attn_weights": True,
        "tie_word_embeddings": True, "use_cache": True,
    }


def _from_hf(tensors: dict[str, torch.Tensor], file: Path) -> dict[str, torch.Tensor]:
    """HF names -> minitune's: add `transformer.`, drop the mask buffers and the tied head (layout kept)."""
    state = {}
    for key, t in tensors.items():
        if MASK_BUFFER.search(key) or key == "lm_head.weight":
            continue
        state[key if key.startswith("transformer.") else "transformer." + key] = t
    head, wte = tensors.get("lm_head.weight"), state.get("transformer.wte.weight")
    if head is not None and (wte is None or head.shape != wte.shape or not torch.equal(head, wte)):
        raise CheckpointError(f"{file}: lm_head.weight differs from wte; minitune's GPT ties the two")
    return state


def _hf_layout(name: str, t: torch.Tensor) -> torch.Tensor:
    """Swap between nn.Linear's [out, in] and Conv1D's [in, out] for the projections; others as they are."""
    return t.t() if CONV1D.search(name) else t


# ---------------------------------------------------------------------------------------------- PEFT LoRA

def save_peft_lora(model: nn.Module, path: str | Path, base_model_name_or_path: str = "gpt2") -> Path:
    """Write the model's LoRA factors as a PEFT adapter folder (`PeftModel.from_pretrained` reads it)."""
    config = getattr(model, "strategy", None)
    if not isinstance(config, LoRAConfig):
        raise ConfigError("save_peft_lora needs a model with LoRA applied (apply_strategy(model, LoRAConfig(...)))")
    if config.train_embedding:
        raise ConfigError("this LoRA also trained the token embedding, which GPT-2 ties to its output head; a PEFT "
                          "LoRA folder here carries only the low-rank factors, so the embedding would be lost. "
                          "Save it with minitune.strategies.save_trainable, or merge it into a full model "
                          "(merged_state_dict, save_hf_gpt2)")
    tensors = {}
    for name, layer in lora_layers(model).items():
        tensors[_peft_key(name, "A")] = layer.lora_A.detach().float()  # [r, in]
        tensors[_peft_key(name, "B")] = layer.lora_B.detach().float()  # [out, r]
    path = Path(path)
    save_tensors(path / PEFT_SAFETENSORS, tensors, metadata={"format": "pt"})
    atomic_write_json(path / PEFT_CONFIG, {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": config.r, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
        "target_modules": list(config.targets), "use_rslora": config.rslora, "fan_in_fan_out": True,
        "bias": "none", "inference_mode": True, "modules_to_save": None,
        "init_lora_weights": True if config.init == "kaiming" else "gaussian",
    })
    return path


def load_peft_lora(model: nn.Module, path: str | Path) -> nn.Module:
    """Apply a PEFT LoRA adapter folder to a plain base model and return it; on failure it is untouched."""
    if getattr(model, "strategy", None) is not None:
        raise ConfigError(f"load_peft_lora needs a plain base; this model has {model.strategy.name!r} applied")
    path = Path(path)
    config = _lora_config_from_peft(read_json(_need(path / PEFT_CONFIG)), path / PEFT_CONFIG)
    tensors, file = _read_weights(path, PEFT_SAFETENSORS, PEFT_BIN)
    state = {_with_transformer_prefix(k): t for k, t in tensors.items()}
    _check_fits(_lora_shapes(model, config, path / PEFT_CONFIG), state, file, "this model")
    try:
        model = apply_strategy(model, config)  # lora.apply validates everything before it changes anything
    except ConfigError as e:
        raise CheckpointError(f"{path / PEFT_CONFIG} does not fit this model: {e}") from e
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, t in state.items():  # base_model.model.X.lora_A.weight -> X.lora_A
            params[key.removeprefix(PEFT_PREFIX).removesuffix(".weight")].copy_(t)
    return model


def _lora_config_from_peft(peft: dict, file: Path) -> LoRAConfig:
    """LoRAConfig from a PEFT adapter_config.json, refusing what minitune's LoRA cannot express."""
    if peft.get("peft_type") != "LORA":
        raise CheckpointError(f"{file}: peft_type is {peft.get('peft_type')!r}; only 'LORA' adapters can be loaded")
    targets = peft.get("target_modules")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise CheckpointError(f"{file}: target_modules must be a list of module names, got {targets!r}")
    for key, unused in PEFT_UNUSED.items():
        if key in peft and peft[key] not in unused:
            raise CheckpointError(f"{file}: {key}={peft[key]!r} is not supported (minitune's LoRA needs {unused})")
    try:
        return LoRAConfig(
            r=peft["r"], alpha=peft["lora_alpha"], dropout=peft.get("lora_dropout", 0.0), targets=tuple(targets),
            rslora=bool(peft.get("use_rslora", False)),
            init="gaussian" if peft.get("init_lora_weights") == "gaussian" else "kaiming",
        )
    except KeyError as e:
        raise CheckpointError(f"{file} has no {e.args[0]!r} field") from e
    except ConfigError as e:
        raise CheckpointError(f"{file} holds an invalid LoRA config: {e}") from e


def _lora_shapes(model: nn.Module, config: LoRAConfig, file: Path) -> dict[str, torch.Size]:
    """The lora_A [r, in] and lora_B [out, r] shapes applying `config` to `model` would create, by name."""
    try:
        chosen = target_layers(model, config)
    except ConfigError as e:
        raise CheckpointError(f"{file}: {e}") from e
    shapes = {}
    for name, m in chosen.items():
        shapes[_peft_key(name, "A")] = torch.Size([config.r, m.in_features])
        shapes[_peft_key(name, "B")] = torch.Size([m.out_features, config.r])
    return shapes


def _peft_key(name: str, factor: str) -> str:
    """PEFT's name for a factor: transformer.h.0.attn.c_attn, A -> base_model.model.transformer.h.0...lora_A.weight."""
    return f"{PEFT_PREFIX}{name}.lora_{factor}.weight"


def _with_transformer_prefix(key: str) -> str:
    """base_model.model.h.0... (an adapter made on GPT2Model) -> base_model.model.transformer.h.0..."""
    if key.startswith(PEFT_PREFIX + "h."):
        return key.replace(PEFT_PREFIX, PEFT_PREFIX + "transformer.", 1)
    return key


# ---------------------------------------------------------------------------------------------- shared

def _need(file: Path) -> Path:
    """file, or a CheckpointError saying which folder lacks it."""
    if not file.is_file():
        raise CheckpointError(f"{file.parent} has no {file.name}")
    return file


def _read_weights(folder: Path, safetensors_name: str, bin_name: str) -> tuple[dict[str, torch.Tensor], Path]:
    """The folder's tensors (safetensors preferred, else the pickle read with weights_only) and their file."""
    if (folder / safetensors_name).is_file():
        return load_tensors(folder / safetensors_name), folder / safetensors_name
    if (folder / bin_name).is_file():
        return _load_bin(folder / bin_name), folder / bin_name
    sharded = " (sharded checkpoints are not supported)" if list(folder.glob("*.index.json")) else ""
    raise CheckpointError(f"{folder} has no weights: it needs {safetensors_name} or {bin_name}{sharded}")


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    """A pickled dict of tensors, read with weights_only=True so no code in the file can run."""
    obj = safe_torch_load(file)
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise CheckpointError(f"{file} should hold a dict of named tensors, found {type(obj).__name__}")
    return obj


def _check_fits(expected: dict[str, torch.Size], state: dict[str, torch.Tensor], file: Path, what: str) -> None:
    """CheckpointError naming the first few missing, unexpected and wrongly shaped tensors, if any."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{n}: file {list(state[n].shape)}, expected {list(expected[n])}"
             for n in sorted(set(expected) & set(state)) if state[n].shape != expected[n]]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{file} does not fit {what}: missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
