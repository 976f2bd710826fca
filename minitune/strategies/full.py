"""Full fine-tuning: every parameter of the base trains.

    trainable:  all of them, P = count_parameters(config)
    memory:     weights (P) + gradients (P) + AdamW's two moments (2P)  ->  4P floats
    per task:   a full copy of the model

The baseline the parameter-efficient strategies are measured against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn as nn


@dataclass
class FullConfig:
    """Full fine-tuning has no settings."""

    name: ClassVar[str] = "full"
    # by task kind, each chosen on validation by `minitune sweep` (minitune/assets/sweep/)
    default_lr: ClassVar[dict[str, float]] = {"classification": 0.001, "generation": 0.003}


def apply(model: nn.Module, config: FullConfig) -> nn.Module:
    """Make every parameter trainable."""
    for p in model.parameters():
        p.requires_grad = True
    return model
