"""LoRA: low-rank adaptation (Hu et al., 2021).

A frozen weight W (out x in) gets a trainable update of rank at most r, kept as two thin factors:

    y = W x + b + s * B (A dropout(x))         A: [r, in]   B: [out, r]   s = alpha / r
                                                                        (rsLoRA: s = alpha / sqrt(r))
          x ──┬──────── W ─────────┐
              └─ drop ─ A ─ B ─ *s ┴─(+)── y

    trainable per adapted layer:  r * (in + out)        (W has in * out)
                                  + vocab x d for the token embedding with train_embedding (PEFT's
                                  modules_to_save), which also trains the output head tied to it
    initialisation:  A ~ Kaiming-uniform (as nn.Linear), or with init="gaussian" A ~ N(0, (1/r)^2) (standard
                     deviation 1/r); B = 0, so B A = 0 and the model starts as the base; the first step
                     moves B only (A's gradient is B^T(...) = 0), then both.

The layer keeps the plain layer's `weight` and `bias` names, so a base checkpoint loads into a LoRA
model unchanged and the trainable part is exactly the `lora_` tensors. W + s B A is never formed while
training (that would cost a full out x in matrix per step); `merge` folds it into W once for inference,
and `unmerge` takes it out again. Both use the one formula `delta_weight`.

`LoRAConfig(base_dtype="bfloat16")` holds the whole frozen base in bf16, A and B in float32 (as PEFT over
a bf16 base). GPU autocast re-casts a frozen float32 weight in every forward pass (it caches casts only
of weights that train); a bf16 base is cast once and takes half the memory. Off autocast (the CPU) the
activations run in bf16 too; the side path casts its input to A's dtype and its output back. Merging
into a bf16 weight rounds it, so `unmerge` restores W only to bf16 precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from minitune.errors import ConfigError, TrainingError, is_number
from minitune.strategies.targets import check_count, check_flag, checked_targets, freeze, wrap


ALL_LINEAR = ("c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # every linear layer of a GPT-2 block


@dataclass
class LowRankConfig:
    """Rank r, scale alpha, dropout on the low-rank path, which linear layers to adapt, rsLoRA scaling, A's init.

    The settings LoRA shares with the strategies built on it (DoRA, QLoRA); each names itself in errors.
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = ("c_attn",)
    rslora: bool = False
    init: str = "kaiming"  # or "gaussian" (A ~ N(0, (1/r)^2): standard deviation 1/r)
    train_embedding: bool = False  # also train the token embedding (tied to the output head), as PEFT's
                                   # modules_to_save: rows for words the base never learned

    def __post_init__(self) -> None:
        me = type(self).__name__
        self.targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        check_count(self, "r")
        if not is_number(self.alpha) or not self.alpha > 0:
            raise ConfigError(f"{me}.alpha must be > 0, got {self.alpha!r}")
        if not is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ConfigError(f"{me}.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets:
            raise ConfigError(f"{me}.targets must name at least one layer, e.g. ('c_attn',)")
        check_flag(self, "rslora")
        check_flag(self, "train_embedding")
        if self.init not in ("kaiming", "gaussian"):
            raise ConfigError(f"{me}.init must be 'kaiming' or 'gaussian', got {self.init!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    @property
    def recipe(self) -> str:
        """Where and how large the update is, in a few words: "r 8 on all four linear layers", "r 8 on c_attn"."""
        where = "all four linear layers" if set(self.targets) == set(ALL_LINEAR) else " + ".join(self.targets)
        return (f"r {self.r}{' (rsLoRA)' if self.rslora else ''} on {where}"
                + (", embedding trained" if self.train_embedding else ""))


@dataclass
class LoRAConfig(LowRankConfig):
    """LoRA's settings (see LowRankConfig)."""

    name: ClassVar[str] = "lora"
    # by task kind, each chosen on validation by `minitune sweep` (minitune/assets/sweep/)
    default_lr: ClassVar[dict[str, float]] = {"classification": 0.01, "generation": 0.01}
    base_dtype: str | None = None  # "bfloat16": hold the frozen base in bf16 (None: as it was loaded)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base_dtype not in (None, "bfloat16"):
            raise ConfigError(f"LoRAConfig.base_dtype must be None or 'bfloat16', got {self.base_dtype!r}")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update s * B A."""

    def __init__(self, base: nn.Module, r: int, scaling: float, dropout: float = 0.0, init: str = "kaiming"):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        device, dtype = self.keep_frozen(base)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=device, dtype=dtype))
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # what nn.Linear uses for its weight
        else:
            nn.init.normal_(self.lora_A, std=1 / r)
        self.lora_dropout = nn.Dropout(dropout)
        self.scaling = scaling
        self.merged = False

    def keep_frozen(self, base: nn.Linear) -> tuple[torch.device, torch.dtype]:
        """Hold the base's weight and bias, frozen, under their own names; return where the update lives.

        The same Parameter objects: nothing is copied. (QLoRA's layer holds a 4-bit weight instead.)
        """
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad = False
        if self.bias is not None:
            self.bias.requires_grad = False
        return base.weight.device, base.weight.dtype

    def frozen(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen layer's output, x W^T + b."""
        return F.linear(x, self.weight, self.bias)

    def delta_weight(self) -> torch.Tensor:
        """s * B A, shaped like W (out, in): the one formula behind merge, unmerge and export."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.frozen(x)
        if self.merged:
            if self.training and torch.is_grad_enabled():
                # W already holds s B A: no gradient could reach lora_A / lora_B through it.
                raise TrainingError("a merged LoRA layer cannot train (its update is folded into the frozen "
                                    "weight); call minitune.strategies.unmerge(model) before training")
            return y
        # (..., in) -> (..., r) -> (..., out): two thin matmuls beside the frozen one. The scale goes on
        # the small B (out x r), not on the (..., out) activations: one less pass over a big tensor.
        # The casts are no-ops unless the base is held in another dtype than A and B (base_dtype).
        x = self.lora_dropout(x.to(self.lora_A.dtype))
        return y + F.linear(F.linear(x, self.lora_A), self.lora_B * self.scaling).to(y.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.lora_A.size(0)}, scaling={self.scaling:g}"


def apply(model: nn.Module, config: LowRankConfig, layer_class: type[LoRALinear] | None = None,
          kinds: tuple[type, ...] = (nn.Linear,)) -> nn.Module:
    """Freeze the model and wrap every linear layer named by config.targets in a LoRALinear (and with
    config.train_embedding let the token embedding train).

    DoRA and QLoRA pass their own subclass of LoRALinear (and QLoRA the kind of layer it wraps).
    """
    layer_class = layer_class or LoRALinear
    chosen = checked_targets(model, config, kinds)
    freeze(model)
    for name in chosen:
        wrap(model, name, lambda layer: layer_class(layer, config.r, config.scaling, config.dropout, config.init))
    if config.train_embedding:  # one tensor: GPT-2's output head is the embedding, so both train
        model.transformer.wte.weight.requires_grad = True
    if getattr(config, "base_dtype", None) is not None:  # LoRAConfig's option; DoRA and QLoRA have none
        hold_frozen_in(model, getattr(torch, config.base_dtype))
    return model


@torch.no_grad()
def hold_frozen_in(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store every frozen floating-point parameter in `dtype`, in place (tied weights stay one Parameter)."""
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point():
            p.data = p.data.to(dtype)
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear in the model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base's state dict with every update folded in and no lora_ tensors: loads into a plain GPT."""
    layers = lora_layers(model)
    state = {k: v for k, v in model.state_dict().items() if ".lora_" not in k}
    for name, layer in layers.items():
        if not layer.merged:
            state[f"{name}.weight"] = layer.weight + layer.delta_weight().detach()
    return state
