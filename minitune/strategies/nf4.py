"""A base held in 4 bits: NF4 block-wise quantisation (Dettmers et al., 2023), written out by hand.

The frozen weights are most of the memory a PEFT model needs, and they never change, so they can be
stored coarsely and dequantised on the fly, layer by layer, in the forward pass. The format is NF4
("4-bit NormalFloat"), block-wise:

    blocks     the weight, flattened, in blocks of 64 numbers (the last block padded with zeros)
    absmax     c = max |w| per block, so w / c lies in [-1, 1]
    code book  16 values q_0 < .. < q_15 in [-1, 1]: quantiles of a standard normal, scaled to reach +-1,
               with an exact 0 (8 above it, 7 below). Trained weights are roughly normal, so each code is
               used about equally often: the most information 4 bits can hold about them
    code       the index of the q nearest to w / c (4 bits; two codes packed per byte)
    dequant    w~ = q[code] * c

The absmaxes are 32-bit numbers, one per 64 weights (0.5 extra bits per weight). Double quantisation
stores them in 8 bits too: their mean is subtracted, and they are quantised linearly to integers in
[-127, 127] with one float32 scale per block of 256 absmaxes (bitsandbytes uses an 8-bit float code
book there instead; the sizes are the same):

    bytes per weight   1/2 (codes) + 1/64 (absmax codes) + 4/(64 * 256) (their scales) = 0.5159, vs 4 (fp32), 2 (bf16)
    round-trip error   |w - w~| <= c * g / 2 + s / 254    g = 0.3038, the widest gap between neighbouring codes
                                                         s = the max |c - mean| of the absmax's block of 256
                                                         (s / 254 = 0 without double quantisation)

Only the transformer blocks' linear weights are quantised (the paper's choice); embeddings, LayerNorms and
biases stay as they are. The 4-bit weight is a module of its own, `weight`, whose buffers (`codes`,
`absmax_codes`, `absmax_scale`, `absmax_mean`) take the float weight's place in the state dict, so a
quantised base's fingerprint covers them and `save_nf4_base` / `load_nf4_base` keep and restore it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from minitune.checkpoint import META, WEIGHTS, load_tensors, read_json, save_model, verify_checksum
from minitune.errors import CheckpointError, ConfigError
from minitune.model import GPT, GPTConfig
from minitune.strategies.targets import adaptable_layers, replace


def nf4_code_book() -> torch.Tensor:
    """NF4's 16 values: quantiles of N(0, 1), 8 above zero, 7 below, and 0 itself, scaled into [-1, 1]."""
    # The outermost probability is 1 - (1/30 + 1/32) / 2, halfway between the two sides' outermost equal-mass
    # points, rather than 1 (whose quantile is infinite); dividing by its quantile puts that code at exactly 1.
    outer = 1 - (1 / 30 + 1 / 32) / 2
    above = torch.special.ndtri(torch.linspace(outer, 0.5, 9, dtype=torch.float64)[:-1])  # 8 values > 0
    below = -torch.special.ndtri(torch.linspace(outer, 0.5, 8, dtype=torch.float64)[:-1])  # 7 values < 0
    values = torch.cat([below, torch.zeros(1, dtype=torch.float64), above]).sort().values
    return (values / values.max()).float()


NF4 = nf4_code_book()
MIDPOINTS = (NF4[1:] + NF4[:-1]) / 2  # w / c between two midpoints is nearest the code between them


class NF4Weight(nn.Module):
    """An (out, in) weight held in NF4; calling it returns the dequantised weight."""

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype, quant_block: int = 64, scale_block: int = 256,
                 double_quant: bool = True, device=None):
        super().__init__()
        self.shape, self.compute_dtype = tuple(shape), dtype
        self.quant_block, self.scale_block, self.double_quant = quant_block, scale_block, double_quant
        self.packed_parameters = self.shape[0] * self.shape[1]  # what trainable_parameters counts for it
        n_blocks = math.ceil(self.packed_parameters / quant_block)
        empty = lambda n, kind: torch.zeros(n, dtype=kind, device=device)  # noqa: E731
        self.register_buffer("codes", empty(n_blocks * quant_block // 2, torch.uint8))  # two 4-bit codes a byte
        if double_quant:
            self.register_buffer("absmax_codes", empty(n_blocks, torch.int8))
            self.register_buffer("absmax_scale", empty(math.ceil(n_blocks / scale_block), torch.float32))
            self.register_buffer("absmax_mean", empty((), torch.float32))
        else:
            self.register_buffer("absmax", empty(n_blocks, torch.float32))

    @classmethod
    @torch.no_grad()
    def quantize(cls, w: torch.Tensor, quant_block: int = 64, scale_block: int = 256,
                 double_quant: bool = True) -> "NF4Weight":
        """NF4 codes and absmaxes of the weight w (out, in)."""
        q = cls(w.shape, w.dtype, quant_block, scale_block, double_quant, w.device)
        blocks = _blocks(w.detach().float().flatten(), quant_block)  # (n_blocks, 64)
        absmax = blocks.abs().amax(dim=1)
        codes = torch.bucketize(blocks / torch.where(absmax > 0, absmax, 1)[:, None], MIDPOINTS.to(w.device))
        codes = codes.to(torch.uint8).view(-1, 2)
        q.codes.copy_(codes[:, 0] << 4 | codes[:, 1])
        if not double_quant:
            q.absmax.copy_(absmax)
            return q
        mean = absmax.mean()
        centred = _blocks(absmax - mean, scale_block)  # (n_scale_blocks, 256)
        scale = centred.abs().amax(dim=1)
        scaled = centred / torch.where(scale > 0, scale, 1)[:, None] * 127
        q.absmax_codes.copy_(scaled.round().flatten()[:len(absmax)].to(torch.int8))
        q.absmax_scale.copy_(scale)
        q.absmax_mean.copy_(mean)
        return q

    def block_absmax(self) -> torch.Tensor:
        """Each block's absmax c, as stored (dequantised from 8 bits under double quantisation)."""
        if not self.double_quant:
            return self.absmax
        scale = self.absmax_scale.repeat_interleave(self.scale_block)[:len(self.absmax_codes)]
        return self.absmax_codes.float() / 127 * scale + self.absmax_mean

    def forward(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dequantised weight (out, in): q[code] * c, in `dtype` (default: the dtype it was quantised from)."""
        codes = torch.stack([self.codes >> 4, self.codes & 15], dim=1).view(-1, self.quant_block).long()
        values = NF4.to(self.codes.device)[codes] * self.block_absmax()[:, None]
        return values.flatten()[:self.packed_parameters].view(self.shape).to(dtype or self.compute_dtype)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, block={self.quant_block}, double_quant={self.double_quant}"


def _blocks(flat: torch.Tensor, size: int) -> torch.Tensor:
    """flat (n,) zero-padded to a multiple of size, as rows of size."""
    return F.pad(flat, (0, -len(flat) % size)).view(-1, size)


class _LinearOver4Bits(torch.autograd.Function):
    """x W~^T + b, with W~ dequantised from 4 bits in the forward pass and again in the backward pass.

    A plain F.linear(x, W~) would make autograd keep W~, a full-size copy of the weight, until backward (it
    needs W~ for x's gradient): a layer's 4-bit saving would last only until its output was computed. Here
    only the 4-bit weight, which the model holds anyway, is kept; bitsandbytes' 4-bit matmul does the same.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: NF4Weight, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.weight = weight  # a module, not a saved tensor: nothing new stays in memory
        return F.linear(x, weight(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_bias = grad.flatten(0, -2).sum(0) if ctx.needs_input_grad[2] else None
        return grad @ ctx.weight(grad.dtype), None, grad_bias


def linear_4bit(x: torch.Tensor, weight: NF4Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear over a 4-bit weight that keeps no dequantised copy for backward (see _LinearOver4Bits)."""
    return _LinearOver4Bits.apply(x, weight, bias)


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is held in NF4 and dequantised for each forward pass."""

    def __init__(self, weight: NF4Weight, bias: nn.Parameter | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_4bit(x, self.weight, self.bias)


def quantize_base(model: nn.Module, quant_block: int = 64, scale_block: int = 256,
                  double_quant: bool = True) -> nn.Module:
    """Hold every transformer-block linear weight of model in NF4 (in place); layers already in NF4 are kept."""
    settings = dict(quant_block=quant_block, scale_block=scale_block, double_quant=double_quant)
    for name, layer in adaptable_layers(model, (nn.Linear, NF4Linear)).items():
        if isinstance(layer, NF4Linear):
            held = {k: getattr(layer.weight, k) for k in settings}
            if held != settings:
                raise ConfigError(f"{name} is already held in NF4 with {held}, not {settings}")
            continue
        bias = layer.bias.requires_grad_(False) if layer.bias is not None else None
        replace(model, name, NF4Linear(NF4Weight.quantize(layer.weight, **settings), bias))
    return model


def save_nf4_base(model: GPT, path: str | Path) -> Path:
    """Write a base held in NF4 (by quantize_base): its tensors, the 4-bit ones included, and config.json."""
    if getattr(model, "strategy", None) is not None:
        raise ConfigError(f"save_nf4_base writes a base; this model has {model.strategy.name!r} applied (save "
                          "what it trained with save_trainable)")
    weights = [m for m in model.modules() if isinstance(m, NF4Weight)]
    if not weights:
        raise ConfigError("the model holds no NF4 weights; quantize_base(model) first")
    w = weights[0]
    save_model(model, path, nf4={"quant_block": w.quant_block, "scale_block": w.scale_block,
                                 "double_quant": w.double_quant, "dtype": str(w.compute_dtype).removeprefix("torch.")})
    return Path(path)


def load_nf4_base(path: str | Path, device: str | torch.device = "cpu") -> GPT:
    """Read a base written by save_nf4_base, in eval mode, without ever holding its float weights."""
    path = Path(path)
    meta = read_json(path / META)
    try:
        config, nf4 = GPTConfig.from_dict(meta["model"]), dict(meta["nf4"])
        dtype = getattr(torch, nf4.pop("dtype"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path / META} does not describe a 4-bit base: {e}") from e
    verify_checksum(path / WEIGHTS, meta.get("sha256"))
    with torch.device("meta"):  # shapes only: the float weights are never allocated
        model = GPT(config)
    for name, layer in adaptable_layers(model).items():
        weight = NF4Weight((layer.out_features, layer.in_features), dtype, device="cpu", **nf4)
        replace(model, name, NF4Linear(weight, layer.bias))
    state = load_tensors(path / WEIGHTS)
    state["lm_head.weight"] = state.get("transformer.wte.weight")
    expected = model.state_dict()
    wrong = sorted(k for k in set(expected) & set(state) if state[k] is None or state[k].shape != expected[k].shape
                   or state[k].dtype != expected[k].dtype)
    if set(expected) != set(state) or wrong:
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise CheckpointError(f"{path / WEIGHTS} does not fit its config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, wrong shape or dtype {wrong[:5]}")
    model.load_state_dict(state, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # tied again: assign gave each name its own Parameter
    return model.to(device).eval()
