"""What the strategy files share: freezing the base, finding the linear layers a config's targets name (LoRA,
DoRA, QLoRA), swapping a layer for its wrapped version (those three, (IA)3, adapters), and config field checks.

A target names a layer by the end of its full name: "c_attn" matches every transformer.h.<i>.attn.c_attn,
"mlp.c_proj" only the MLP's output projection, "c_proj" both projections of every block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch.nn as nn

from minitune.errors import ConfigError, is_count

if TYPE_CHECKING:
    from minitune.strategies.lora import LowRankConfig


def freeze(model: nn.Module) -> nn.Module:
    """Turn requires_grad off on every parameter of model, in place; return model."""
    for p in model.parameters():
        p.requires_grad = False
    return model


def adaptable_layers(model: nn.Module, kinds: tuple[type, ...] = (nn.Linear,)) -> dict[str, nn.Module]:
    """The transformer blocks' linear layers (modules of `kinds`), by full name (transformer.h.0.attn.c_attn)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, kinds) and ".h." in f".{n}"}


def matches(name: str, target: str) -> bool:
    """Does target name the layer called name: equal to it, or ending it after a dot?"""
    return name == target or name.endswith("." + target)


def target_layers(model: nn.Module, config: LowRankConfig,
                  kinds: tuple[type, ...] = (nn.Linear,)) -> dict[str, nn.Module]:
    """The layers config.targets names; a target that matches no layer is refused, listing the layers."""
    layers = adaptable_layers(model, kinds)
    for target in config.targets:
        if not any(matches(n, target) for n in layers):
            known = sorted({".".join(n.split(".")[-2:]) for n in layers})
            raise ConfigError(f"{type(config).__name__}.targets entry {target!r} matches no layer; layers are {known}")
    return {n: m for n, m in layers.items() if any(matches(n, t) for t in config.targets)}


def checked_targets(model: nn.Module, config: LowRankConfig,
                    kinds: tuple[type, ...] = (nn.Linear,)) -> dict[str, nn.Module]:
    """target_layers, after checking that every one is wide enough for rank config.r (nothing is changed)."""
    chosen = target_layers(model, config, kinds)
    for name, layer in chosen.items():
        if config.r > min(layer.in_features, layer.out_features):
            raise ConfigError(
                f"{type(config).__name__}.r ({config.r}) must be at most min(in, out) = "
                f"{min(layer.in_features, layer.out_features)} for {name}"
            )
    return chosen


def replace(model: nn.Module, name: str, layer: nn.Module) -> nn.Module:
    """Put layer where the submodule called name (dotted: transformer.h.0.attn.c_attn) is; return layer."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, layer)
    return layer


def wrap(model: nn.Module, name: str, make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Replace the submodule called name by make(it), in its train or eval mode; return the new layer."""
    layer = model.get_submodule(name)
    return replace(model, name, make(layer).train(layer.training))


def check_count(config: object, field: str) -> None:
    """Refuse a field that is not a positive integer (a bool is not one), naming the config class and field."""
    value = getattr(config, field)
    if not is_count(value):
        raise ConfigError(f"{type(config).__name__}.{field} must be a positive integer, got {value!r}")


def check_flag(config: object, field: str) -> None:
    """Refuse a field that is not True or False (1 and "yes" are not), naming the config class and field."""
    value = getattr(config, field)
    if not isinstance(value, bool):
        raise ConfigError(f"{type(config).__name__}.{field} must be True or False, got {value!r}")
