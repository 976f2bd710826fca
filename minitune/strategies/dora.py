"""DoRA: weight-decomposed low-rank adaptation (Liu et al., 2024).

A weight is a magnitude times a direction. DoRA trains the two apart: a magnitude vector m, one number per
output feature, and the direction through LoRA's low-rank update:

    W' = m * (W + s B A) / ||W + s B A||_c            A: [r, in]   B: [out, r]   m: [out]   s = alpha / r

    y = W' x + b = (m / n) * (W x + s B A x) + b       n = ||W + s B A||_c, one norm per output feature

||.||_c is the paper's column norm: the paper writes x W with W [in, out], so a column holds the weights
of one output feature; in nn.Linear's [out, in] layout that is a row, `vector_norm(W + s B A, dim=1)`.

    trainable per adapted layer:  r * (in + out) + out      (LoRA's factors plus the magnitude)
    initialisation:  B = 0 and m = ||W||_c, so m / n = 1 and the model starts exactly as the base

The norm n is treated as a constant in the backward pass, as the paper recommends (section 4.3): it still
follows B A in the forward pass, but no gradient flows through it, which saves the memory of its graph
with, the paper reports, no noticeable loss of accuracy. So n is computed under no_grad, and W + s B A
(an out x in matrix) lives only for that moment. The forward pass adds a correction to the frozen layer's
output,

    y = (W x + b) + (m/n - 1) * (W x) + (m/n) * s B A x

which is the formula above, and is bitwise the frozen layer's output while m/n = 1 and B = 0.

`merge` folds W' into W (inference then costs what the base costs) and remembers n, which unmerge needs:
W = W' * n / m - s B A. The layer keeps LoRA's names (`weight`, `bias`, `lora_A`, `lora_B`) and adds
`lora_magnitude`; DoRA is LoRA's layer with these few changes, so it is a subclass of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from minitune.errors import ConfigError, TrainingError
from minitune.strategies import lora
from minitune.strategies.lora import LoRALinear, LowRankConfig


@dataclass
class DoRAConfig(LowRankConfig):
    """LoRA's settings (rank, alpha, targets, ...); the magnitude vector comes with every adapted layer."""

    name: ClassVar[str] = "dora"
    # by task kind, each chosen on validation by `minitune sweep` (minitune/assets/sweep/)
    default_lr: ClassVar[dict[str, float]] = {"classification": 0.01, "generation": 0.01}


class DoRALinear(LoRALinear):
    """A frozen nn.Linear re-scaled per output feature by a trainable magnitude, with LoRA's low-rank update."""

    def __init__(self, base: nn.Linear, r: int, scaling: float, dropout: float = 0.0, init: str = "kaiming"):
        super().__init__(base, r, scaling, dropout, init)
        self.lora_magnitude = nn.Parameter(self.weight_norm())  # (out,): m = ||W||_c, as B = 0
        self.register_buffer("merged_norm", None, persistent=False)  # n while merged; moves with .to(device)

    @torch.no_grad()
    def weight_norm(self) -> torch.Tensor:
        """n = ||W + s B A||_c, shape (out,), a constant for autograd (the paper's advice)."""
        return torch.linalg.vector_norm(self.weight + super().delta_weight(), dim=1)

    def delta_weight(self) -> torch.Tensor:
        """W' - W, shaped like W: what merging adds (and what an exported, merged weight holds beyond W)."""
        direction = self.weight + super().delta_weight()
        return (self.lora_magnitude / self.weight_norm())[:, None] * direction - self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.frozen(x)  # W x + b
        if self.merged:
            if self.training and torch.is_grad_enabled():
                raise TrainingError("a merged DoRA layer cannot train (its update is folded into the frozen "
                                    "weight); call minitune.strategies.unmerge(model) before training")
            return y
        scale = self.lora_magnitude / self.weight_norm()  # (out,): gradient reaches m, never n
        wx = y if self.bias is None else y - self.bias
        low_rank = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B * self.scaling)
        return y + (scale - 1) * wx + scale * low_rank

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        if not bool(self.lora_magnitude.ne(0).all()):
            raise ConfigError("a DoRA layer with a zero magnitude cannot be merged: unmerging would divide by it")
        self.merged_norm = self.weight_norm()  # W' alone no longer tells what n was
        self.weight.copy_((self.lora_magnitude / self.merged_norm)[:, None] * (self.weight + super().delta_weight()))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            # B A is the same before and after merging (only W changed), so s B A can be recomputed
            self.weight.copy_(self.weight * (self.merged_norm / self.lora_magnitude)[:, None] - super().delta_weight())
            self.merged, self.merged_norm = False, None


def apply(model: nn.Module, config: DoRAConfig) -> nn.Module:
    """Freeze the model and wrap every linear layer named by config.targets in a DoRALinear."""
    return lora.apply(model, config, DoRALinear)
