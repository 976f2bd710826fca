"""Fine-tuning strategies, applied to a built (or loaded) GPT from outside, and the helpers they share.

    model = apply_strategy(load_base(), LoRAConfig(r=8))   # freeze, add, return ready to train
    print(trainable_report(model))                          # trainable params: ... || all params: ...
    train(model, ...)                                       # the one training loop
    save_trainable(model, "runs/sentiment-lora")            # only the trainable tensors + the config
    model = load_trainable(load_base(), "runs/sentiment-lora")

What trains is whatever has requires_grad set: each strategy freezes the base and adds tensors of its own
(named `lora_`, `adapter`, `soft_prompt`, `ia3_`, `prefix`; adapters may train the LayerNorms too), and full
fine-tuning sets it on every tensor. So counting, saving and loading are written once, here, for every
strategy. (What the strategy files share below this API, freezing, target matching and config checks, is in
targets.py.)
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from minitune.checkpoint import atomic_write_json, load_tensors, read_json, save_tensors, sha256_file, verify_checksum
from minitune.errors import CheckpointError, ConfigError
from minitune.strategies import adapter, dora, full, ia3, lora, prefix, prompt, qlora
from minitune.strategies.adapter import AdapterConfig
from minitune.strategies.dora import DoRAConfig
from minitune.strategies.full import FullConfig
from minitune.strategies.ia3 import IA3Config
from minitune.strategies.lora import LoRAConfig
from minitune.strategies.prefix import PrefixTuningConfig
from minitune.strategies.prompt import PromptTuningConfig
from minitune.strategies.qlora import QLoRAConfig

STRATEGIES = {
    FullConfig.name: (FullConfig, full.apply),
    LoRAConfig.name: (LoRAConfig, lora.apply),
    AdapterConfig.name: (AdapterConfig, adapter.apply),
    PromptTuningConfig.name: (PromptTuningConfig, prompt.apply),
    DoRAConfig.name: (DoRAConfig, dora.apply),
    IA3Config.name: (IA3Config, ia3.apply),
    PrefixTuningConfig.name: (PrefixTuningConfig, prefix.apply),
    QLoRAConfig.name: (QLoRAConfig, qlora.apply),
}
WEIGHTS = "trainable.safetensors"
CONFIG = "strategy.json"


def apply_strategy(model: nn.Module, config) -> nn.Module:
    """Freeze what the strategy freezes, add what it adds; returns the model to train.

    A model takes one strategy: applying a second on top (LoRA over adapters, say) is refused, since
    saving, merging and counting would no longer say which part belongs to which. The base is marked
    too: prompt tuning returns a new model that shares the base's modules, so adding a strategy to that
    base afterwards would change the prompt-tuned model behind its back.
    """
    if getattr(model, "strategy", None) is not None:
        raise ConfigError(
            f"this model already has the {model.strategy.name!r} strategy applied; apply a strategy to a "
            "fresh base (load_base) instead"
        )
    for cls, fn in STRATEGIES.values():
        if isinstance(config, cls):
            adapted = fn(model, config)
            model.strategy = adapted.strategy = config
            adapted.base_fingerprint = base_fingerprint(adapted)
            return adapted
    raise ConfigError(f"unknown strategy config {type(config).__name__}; use one of "
                      f"{[cls.__name__ for cls, _ in STRATEGIES.values()]}")


def config_from_dict(name: str, fields: dict):
    """Rebuild a strategy config from its saved name and fields."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}")
    return STRATEGIES[name][0](**fields)  # JSON's lists become tuples in the configs' __post_init__


def mergeable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers that can fold their update into the frozen weight (they have merge, unmerge, merged), by name."""
    return {n: m for n, m in model.named_modules() if m is not model and callable(getattr(m, "merge", None))}


def merge(model: nn.Module) -> nn.Module:
    """Fold every layer's update into its weight: inference then costs exactly what the base costs.

    Merging is for inference; a merged model refuses to train until `unmerge`. Merging twice is a no-op.
    """
    for layer in mergeable_layers(model).values():
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Take every update back out of its weight (the base's values, up to float rounding)."""
    for layer in mergeable_layers(model).values():
        layer.unmerge()
    return model


def base_fingerprint(model: nn.Module) -> str:
    """sha256 over the frozen tensors (names, dtypes, shapes, bytes): which base a trained part belongs to.

    Frozen parameters, and buffers: a base held in 4 bits (QLoRA) keeps its weights as buffers of codes.
    A model on the meta device (shapes only, e.g. to count memory) has no bytes: its fingerprint covers
    names, dtypes and shapes.
    """
    h = hashlib.sha256()
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    for name, p in sorted(frozen) + sorted(model.named_buffers()):
        h.update(f"{name}|{p.dtype}|{tuple(p.shape)}|".encode())
        if p.is_meta or not p.numel():
            continue
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied tensor counts once.

    A weight held in packed form (a 4-bit NF4 weight, whose codes are buffers) counts as the parameters it
    stands for (its `packed_parameters`), so percentages compare with the other strategies'.
    """
    params = list(model.parameters())  # parameters() yields each tensor once
    packed = sum(getattr(m, "packed_parameters", 0) for m in model.modules())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params) + packed


def trainable_report(model: nn.Module) -> str:
    """The familiar one-line summary of what trains."""
    trainable, total = trainable_parameters(model)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.2f}"


def base_unchanged(model: nn.Module, base: nn.Module) -> bool:
    """Is every tensor of `base` still bitwise what it is inside `model` (true of PEFT, never of full FT)?"""
    mine = dict(model.named_parameters())
    return all(n in mine and torch.equal(mine[n].detach().cpu(), p.detach().cpu()) for n, p in base.named_parameters())


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: nn.Module, path: str | Path) -> Path:
    """Write the trainable tensors (safetensors) and the strategy config (JSON) to the folder path."""
    config = getattr(model, "strategy", None)
    if config is None:
        raise ConfigError("the model has no strategy applied (use apply_strategy first)")
    path = Path(path)
    state = trainable_state(model)
    save_tensors(path / WEIGHTS, state)
    atomic_write_json(path / CONFIG, {
        "strategy": config.name, "config": asdict(config), "base": model.config.to_dict(),
        "tensors": {n: list(t.shape) for n, t in state.items()}, "sha256": sha256_file(path / WEIGHTS),
        "base_sha256": model.base_fingerprint,
    })
    return path


def load_trainable(model: nn.Module, path: str | Path, check_base: bool = True) -> nn.Module:
    """Restore a saved strategy onto `model` and return it.

    `model` is either a fresh base (the strategy is applied first) or a model that already carries the
    same strategy config (its trainable tensors are swapped: one frozen base, several task adapters; a
    merged model is unmerged for the swap and merged again with the new tensors). The file records a
    fingerprint of the base it was trained on; a base with other weights is refused unless
    `check_base=False`. Everything is checked before the model is touched, so a failed load leaves it
    as it was.
    """
    path = Path(path)
    meta = read_json(path / CONFIG)
    try:
        config = config_from_dict(meta["strategy"], meta["config"])
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{path / CONFIG} holds no valid strategy: {e}") from e
    if meta.get("base") != model.config.to_dict():
        diff = {k: (v, model.config.to_dict().get(k)) for k, v in (meta.get("base") or {}).items()
                if model.config.to_dict().get(k) != v}
        raise CheckpointError(f"{path} was trained on another base; differing config (saved, this model): {diff}")
    current = getattr(model, "strategy", None)
    if current is not None and current != config:
        raise CheckpointError(f"{path} holds {config!r}, but the model carries {current!r}")
    verify_checksum(path / WEIGHTS, meta.get("sha256"))
    tensors = load_tensors(path / WEIGHTS)
    # Check names and shapes against a copy with the strategy applied, so `model` is untouched on failure.
    probe = model if current is not None else apply_strategy(copy.deepcopy(model), config)
    _check_fits(trainable_state(probe), tensors, path / WEIGHTS)
    saved_base = meta.get("base_sha256")
    if check_base and saved_base is not None and saved_base != probe.base_fingerprint:
        raise CheckpointError(
            f"{path} was trained on a base with other weights (same shape, different values: base fingerprint "
            f"{saved_base[:12]}..., this model's {probe.base_fingerprint[:12]}...); load onto the base it was "
            "trained on, or pass check_base=False to load it anyway")
    if current is None:
        model = apply_strategy(model, config)
    merged = [layer for layer in mergeable_layers(model).values() if layer.merged]
    for layer in merged:  # a merged weight holds the old update: take it out before the tensors change
        layer.unmerge()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)
    for layer in merged:
        layer.merge()
    return model


def _check_fits(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], file: Path) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [f"{n}: saved {list(tensors[n].shape)}, model {list(expected[n].shape)}"
             for n in sorted(set(expected) & set(tensors)) if tensors[n].shape != expected[n].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{file} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong[:5]}"
        )


__all__ = [
    "AdapterConfig", "DoRAConfig", "FullConfig", "IA3Config", "LoRAConfig", "PrefixTuningConfig", "PromptTuningConfig",
    "QLoRAConfig", "STRATEGIES", "apply_strategy",
    "base_fingerprint", "base_unchanged", "config_from_dict", "load_trainable", "merge", "mergeable_layers",
    "save_trainable", "trainable_parameters", "trainable_report", "trainable_state", "unmerge",
]
