"""Bottleneck adapters (Houlsby et al., 2019).

A small residual MLP is inserted after a sublayer's output projection, before the block's skip
connection; the base stays frozen:

    h -> h + W_up f(W_down h + b_down) + b_up        W_down: [m, d]   W_up: [d, m]   m = bottleneck << d

          h ──┬───────────────────────────────┐
              └─ down (d->m) ─ f ─ up (m->d) ─┴─(+)──>      f = GELU (or ReLU)

    trainable per adapter:  2 d m + d + m       (+ 2 d per trained LayerNorm)
    placement:  "houlsby"   two per block: after attn.c_proj and after mlp.c_proj
                "pfeiffer"  one per block: after mlp.c_proj (Pfeiffer et al., 2021)
    initialisation:  W_up = 0, b_up = 0, so every adapter starts as the identity and the adapted model
                     starts exactly as the base; W_down small and random so gradients reach it once W_up
                     has moved.

The wrapped projection keeps its `weight` and `bias` names; the new tensors all carry `adapter` in
theirs (`...attn.c_proj.adapter.down.weight`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from minitune.errors import ConfigError
from minitune.strategies.targets import check_count, check_flag, freeze, wrap

PLACEMENTS = {"houlsby": ("attn.c_proj", "mlp.c_proj"), "pfeiffer": ("mlp.c_proj",)}
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


@dataclass
class AdapterConfig:
    """Bottleneck width m, where adapters go, their non-linearity, and whether LayerNorms train too."""

    bottleneck: int = 16
    placement: str = "houlsby"
    activation: str = "gelu"
    train_layernorm: bool = False
    name: ClassVar[str] = "adapter"
    # by task kind, each chosen on validation by `minitune sweep` (minitune/assets/sweep/)
    default_lr: ClassVar[dict[str, float]] = {"classification": 0.01, "generation": 0.03}

    def __post_init__(self) -> None:
        check_count(self, "bottleneck")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"AdapterConfig.placement must be one of {sorted(PLACEMENTS)}, got {self.placement!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"AdapterConfig.activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        check_flag(self, "train_layernorm")


class Bottleneck(nn.Module):
    """h + up(f(down(h))), starting as the identity."""

    def __init__(self, d: int, m: int, activation: str = "gelu"):
        super().__init__()
        self.down = nn.Linear(d, m)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(m, d)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class AdaptedLinear(nn.Module):
    """A frozen output projection followed by a bottleneck adapter."""

    def __init__(self, base: nn.Linear, bottleneck: int, activation: str):
        super().__init__()
        self.weight, self.bias = base.weight, base.bias  # kept under their own names
        # built on the base's device and in its dtype, so a float64 or bf16 base runs without casts
        self.adapter = Bottleneck(base.out_features, bottleneck, activation).to(base.weight.device, base.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(F.linear(x, self.weight, self.bias))


def apply(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Freeze the model and insert adapters after the projections the placement names."""
    freeze(model)
    for block in model.transformer.h:
        for path in PLACEMENTS[config.placement]:
            wrap(block, path, lambda layer: AdaptedLinear(layer, config.bottleneck, config.activation))
    if config.train_layernorm:
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.requires_grad_(True)
    return model
