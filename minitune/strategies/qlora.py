"""QLoRA (Dettmers et al., 2023): LoRA over a base whose frozen linear weights are held in 4 bits.

    y = dequant(W_nf4) x + b + s * B (A dropout(x))         A: [r, in]   B: [out, r]   s = alpha / r

          x ──┬── dequant(W_nf4) ──┐                       W_nf4: 4-bit codes + block absmaxes (nf4.py)
              └─ drop ─ A ─ B ─ *s ┴─(+)── y               A, B: full precision, trainable

The frozen base is quantised first (`nf4.quantize_base`: every transformer-block linear weight, to NF4 in
blocks of 64 with double-quantised absmaxes), then LoRA goes on the targets as usual. The weight is
dequantised on the fly, one layer at a time, for each forward pass, so only one layer's float weight
exists at any moment; gradients flow through it to x (and so to the layers below) but never into it.

    trainable:  as LoRA, r * (in + out) per adapted layer; the 4-bit weights count as the parameters they hold
    start:      exactly the quantised base (B = 0), which differs from the float base by NF4's round-trip error
    memory:     about 0.516 bytes per quantised weight instead of 4 (fp32) or 2 (bf16); see nf4.py

The layer is LoRA's own (`QLoRALinear` subclasses LoRALinear and changes only where the frozen weight comes
from). A 4-bit weight cannot take LoRA's update without quantising it again, which would lose most of it,
so a QLoRA model is served unmerged: `merge` refuses it. A run saves only the LoRA factors; they record the
fingerprint of the quantised base, which quantising the same float base reproduces exactly (or which
`nf4.save_nf4_base` / `load_nf4_base` keep on disk).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from minitune.errors import ConfigError, is_count
from minitune.strategies import lora
from minitune.strategies.lora import LoRALinear, LowRankConfig
from minitune.strategies.nf4 import NF4Linear, linear_4bit, quantize_base
from minitune.strategies.targets import check_count, check_flag, checked_targets


@dataclass
class QLoRAConfig(LowRankConfig):
    """LoRA's settings, plus the 4-bit base's: weights per absmax block, absmaxes per scale block, double quant."""

    quant_block: int = 64
    scale_block: int = 256
    double_quant: bool = True
    name: ClassVar[str] = "qlora"
    # by task kind, each chosen on validation by `minitune sweep` (minitune/assets/sweep/)
    default_lr: ClassVar[dict[str, float]] = {"classification": 0.01, "generation": 0.01}

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_count(self.quant_block) or self.quant_block % 2:
            raise ConfigError(f"QLoRAConfig.quant_block must be a positive even integer, got {self.quant_block!r}")
        check_count(self, "scale_block")
        check_flag(self, "double_quant")

    @property
    def nf4(self) -> dict:
        """The settings quantize_base takes."""
        return {"quant_block": self.quant_block, "scale_block": self.scale_block, "double_quant": self.double_quant}


class QLoRALinear(LoRALinear):
    """LoRA over an NF4Linear: the frozen path dequantises, the low-rank path is LoRA's own."""

    def keep_frozen(self, base: NF4Linear) -> tuple[torch.device, torch.dtype]:
        self.weight, self.bias = base.weight, base.bias  # the 4-bit weight module and the frozen bias
        return base.weight.codes.device, base.weight.compute_dtype

    def frozen(self, x: torch.Tensor) -> torch.Tensor:
        return linear_4bit(x, self.weight, self.bias)

    def merge(self) -> None:
        raise ConfigError("a QLoRA model cannot be merged: its 4-bit weights would have to be quantised again, "
                          "which loses the update; serve it unmerged")

    def unmerge(self) -> None:
        pass  # never merged

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, base in NF4"


def apply(model: nn.Module, config: QLoRAConfig) -> nn.Module:
    """Quantise the base's linear weights to NF4 (unless they already are), then put LoRA on the targets."""
    checked_targets(model, config, (nn.Linear, NF4Linear))  # refuse a bad config before quantising anything
    return lora.apply(quantize_base(model, **config.nf4), config, QLoRALinear, kinds=(NF4Linear,))
