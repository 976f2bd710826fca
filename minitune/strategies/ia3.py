"""(IA)3: infused adapter by inhibiting and amplifying inner activations (Liu et al., 2022).

Three learned vectors per block rescale, feature by feature, the keys, the values and the MLP's inner
activation; nothing else changes:

    k = l_k * (W_k x + b_k)          v = l_v * (W_v x + b_v)          l_k, l_v: [d]
    mlp(x) = W_2 (l_ff * gelu(W_1 x + b_1)) + b_2                     l_ff: [4 d]

    trainable:  L * (2 d + 4 d)      (for GPT-2; d = n_embd, L = n_layer: 6 d per block)
    initialisation:  every l = 1, so the model starts exactly as the base

By surgery on two linear layers per block, which keep their `weight` / `bias` names and gain `ia3_scale`:

    attn.c_attn   its output [q | k | v] is multiplied by [1 .. 1 | l_k | l_v] (queries are left alone)
    mlp.c_proj    its input, gelu(c_fc(x)), is multiplied by l_ff

A rescaled output is a rescaled row of W and b; a rescaled input is a rescaled column of W. So `merge`
folds the vectors into the weights (inference then costs what the base costs) and `unmerge` divides them
out again. PEFT's IA3 on GPT-2 targets the fused c_attn, so its vector also scales the queries (3 d per
block, not 2 d); with its query entries at 1 it computes exactly this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from minitune.errors import ConfigError, TrainingError
from minitune.strategies.targets import freeze, wrap


@dataclass
class IA3Config:
    """(IA)3 has no settings: keys, values and the MLP's inner activation are rescaled in every block."""

    name: ClassVar[str] = "ia3"
    # by task kind, each chosen on validation by `minitune sweep` (minitune/assets/sweep/)
    default_lr: ClassVar[dict[str, float]] = {"classification": 0.3, "generation": 0.3}


class IA3Linear(nn.Module):
    """A frozen nn.Linear with a trainable vector rescaling its output features [skip:], or its input."""

    def __init__(self, base: nn.Linear, side: str, skip: int = 0):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameters, names kept, frozen
        self.side, self.skip = side, skip  # side "out": scale output features from `skip` on; "in": the input
        n = self.out_features - skip if side == "out" else self.in_features
        self.ia3_scale = nn.Parameter(torch.ones(n, device=base.weight.device, dtype=base.weight.dtype))
        self.merged = False

    def full_scale(self) -> torch.Tensor:
        """The vector that multiplies the output features (side "out", with 1 for the skipped ones) or the input."""
        if self.side == "in" or self.skip == 0:
            return self.ia3_scale
        return torch.cat([self.ia3_scale.new_ones(self.skip), self.ia3_scale])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            if self.training and torch.is_grad_enabled():
                raise TrainingError("a merged (IA)3 layer cannot train (its vector is folded into the frozen "
                                    "weight); call minitune.strategies.unmerge(model) before training")
            return F.linear(x, self.weight, self.bias)
        if self.side == "in":
            return F.linear(x * self.ia3_scale, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias) * self.full_scale()

    @torch.no_grad()
    def _fold(self, into: bool) -> None:
        """Multiply the vector into W (and b) when folding it in; divide it out when taking it back."""
        scale = self.full_scale().detach()
        op = torch.Tensor.mul_ if into else torch.Tensor.div_
        if self.side == "in":
            op(self.weight, scale[None, :])  # column j of W meets input feature j
        else:
            op(self.weight, scale[:, None])  # row i of W (and b_i) makes output feature i
            if self.bias is not None:
                op(self.bias, scale)

    def merge(self) -> None:
        if not self.merged:
            if not bool(self.ia3_scale.ne(0).all()):
                raise ConfigError("an (IA)3 vector with a zero entry cannot be merged: unmerging would divide by it")
            self._fold(into=True)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self._fold(into=False)
            self.merged = False

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, scales {self.side}put" + (
            f" features {self.skip}:" if self.skip else "")


def apply(model: nn.Module, config: IA3Config) -> nn.Module:
    """Freeze the model; rescale keys and values (attn.c_attn's output) and the MLP's inner activation."""
    freeze(model)
    for block in model.transformer.h:
        wrap(block, "attn.c_attn", lambda layer: IA3Linear(layer, "out", skip=layer.in_features))  # skip the queries
        wrap(block, "mlp.c_proj", lambda layer: IA3Linear(layer, "in"))
    return model
