"""Bytes of training state, measured from the tensors and predicted by formula.

Training with AdamW keeps, per parameter:

    weights     every parameter, trainable or frozen          P_total     x b bytes
    gradients   one per trainable parameter                    P_trainable x b
    optimizer   AdamW's two moments (exp_avg, exp_avg_sq)      2 P_trainable x b
                + one `step` counter per trainable tensor      n_tensors x 4 bytes (a float32 scalar)

so full fine-tuning in fp32 (b = 4) costs 4 x 4 = 16 bytes per parameter, and a parameter-efficient
strategy costs 4 bytes per frozen parameter plus 16 per trainable one. The tiny `step` tensors are
counted too, so the formula matches what PyTorch holds exactly, byte for byte.

Activations are the other half: the tensors autograd saves in the forward pass for backward. They
grow with batch x tokens x depth, not with the parameter count. `activation_bytes` predicts them for
this package's GPT-2 block from autograd's rule "an op keeps an input only if some gradient it must
produce needs it"; `saved_activation_bytes` measures them with torch.autograd.graph.saved_tensors_hooks.
Per block, per token, with d the width, h the heads (elements; x 4 bytes in fp32):

    ln_1, ln_2     input (the residual stream) d each, + mean and 1/std: 2 each    if a gradient passes
    attention      q, k, v (one 3d buffer) + output d + one log-sum-exp per head h  if a gradient passes
                   (PyTorch's fused attention keeps no T x T matrix)
    c_fc -> GELU   GELU's input 4d                                                   if a gradient passes
    a linear layer its input (d, d, d or 4d) only if its weight trains (full) or it carries LoRA;
                   LoRA adds x A (r per token) and s B (out x r, once per layer)
    an adapter     its input d, + the bottleneck's GELU input and output 2m

and outside the blocks: ln_f (d + 2), lm_head's input d (full only: its tied weight trains), the
log-probabilities V (fp32), the targets and, under full fine-tuning, the token and position ids (int64).

"If a gradient passes" is the point for PEFT: a frozen layer keeps what it needs to pass the gradient
down to the earliest trainable tensor. LoRA and adapters start keeping at their first adapted layer
(block 0 here) and skip only the inputs of frozen linear layers; prompt tuning trains the input itself,
so every layer keeps what it needs to pass the gradient down. Under bf16 autocast ("bf16") the residual
stream, LayerNorm statistics, log-sum-exps and log-probabilities stay fp32; the rest is 2 bytes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn

from minitune.model import GPTConfig
from minitune.strategies import AdapterConfig, FullConfig, LoRAConfig, PromptTuningConfig, QLoRAConfig
from minitune.strategies.adapter import PLACEMENTS
from minitune.train import TrainConfig, autocast_for, make_optimizer

KEYS = ("weights", "gradients", "optimizer", "total")


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by the given tensors, each tensor counted once (a tied tensor appears once)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def _optimizer_tensors(optimizer: torch.optim.Optimizer, step_only: bool = False) -> list[torch.Tensor]:
    """Every tensor in optimizer.state (or only the `step` counters)."""
    return [v for state in optimizer.state.values() for k, v in state.items()
            if torch.is_tensor(v) and (k == "step" or not step_only)]


def training_memory(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes of weights, gradients (the .grad that exist) and optimizer state, measured from the tensors.

    Weights are every parameter and every buffer: a 4-bit base (QLoRA) holds its frozen weights as buffers.
    `optimizer_step` is the part of `optimizer` held by AdamW's per-tensor `step` counters.
    """
    params = list(model.parameters())  # each tensor once, tied weights included
    out = {
        "weights": tensor_bytes([*params, *model.buffers()]),
        "gradients": tensor_bytes(p.grad for p in params if p.grad is not None),
        "optimizer": tensor_bytes(_optimizer_tensors(optimizer)) if optimizer is not None else 0,
        "optimizer_step": tensor_bytes(_optimizer_tensors(optimizer, True)) if optimizer is not None else 0,
    }
    out["total"] = out["weights"] + out["gradients"] + out["optimizer"]
    return out


def measure_training_memory(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], lr: float = 1e-3
) -> dict[str, int]:
    """training_memory after one forward/backward/AdamW step on a copy of model (model is untouched).

    Measured before zero_grad, the moment gradients and optimizer state are both alive.
    """
    model = copy.deepcopy(model)
    model.train()
    for p in model.parameters():
        p.grad = None
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, TrainConfig(lr=lr, warmup_steps=0), device)
    x, y = (t.to(device) for t in batch)
    with autocast_for(device):
        _, loss = model(x, y)
    loss.backward()
    optimizer.step()
    return training_memory(model, optimizer)


def step_bytes() -> int:
    """Size of AdamW's `step` counter: PyTorch keeps it as a float32 scalar (float64 if that is the default)."""
    return 8 if torch.get_default_dtype() == torch.float64 else 4


def memory_formula(model: nn.Module, bytes_per_param: int | None = 4) -> dict[str, int]:
    """Predicted bytes: weights P_total b, gradients P_trainable b, optimizer 2 P_trainable b + steps.

    `bytes_per_param=None` takes b from each tensor's own dtype (a bf16 frozen base beside fp32 LoRA factors).
    """
    def nbytes(p: torch.Tensor) -> int:
        return p.numel() * (p.element_size() if bytes_per_param is None else bytes_per_param)

    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    trainable_bytes = sum(nbytes(p) for p in trainable)  # a gradient and AdamW's moments take p's dtype
    steps = len(trainable) * step_bytes()  # one scalar `step` per trainable tensor
    out = {
        "weights": sum(nbytes(p) for p in params),
        "gradients": trainable_bytes,
        "optimizer": 2 * trainable_bytes + steps,
        "optimizer_step": steps,
    }
    out["total"] = out["weights"] + out["gradients"] + out["optimizer"]
    return out


# --- activations ---------------------------------------------------------------------------------------

# Bytes per element of each kind of saved tensor, by precision. Under bf16 autocast the residual stream
# stays fp32 (embeddings are fp32 and adding a bf16 branch to them promotes), LayerNorm runs in fp32, and
# the model casts logits to fp32 before the loss.
ELEMENT_BYTES = {
    "fp32": {"resid": 4, "act": 4, "stat": 4, "logp": 4, "ids": 8},
    "bf16": {"resid": 4, "act": 2, "stat": 4, "logp": 4, "ids": 8},
}


def _trains(strategy, layer: str) -> tuple[bool, int]:
    """(does this linear layer's own weight train, LoRA rank on it or 0) under the strategy."""
    if isinstance(strategy, FullConfig):
        return True, 0
    if isinstance(strategy, (LoRAConfig, QLoRAConfig)) and any(layer == t or layer.endswith("." + t)
                                                               for t in strategy.targets):
        return False, strategy.r
    return False, 0


def _linear(strategy, layer: str, n_in: int, n_out: int, grad_in: bool, input_kept: bool, count: dict) -> bool:
    """Add what one linear layer (and an adapter after it) saves; return whether its output needs a gradient."""
    weight_trains, r = _trains(strategy, layer)
    if (weight_trains or r) and not input_kept:
        count["act"] += n_in  # x, for the weight's (or lora_A's) gradient
    if r:
        count["act"] += r  # x A, for lora_B's gradient
        count["const"] += n_out * r  # s B, for the gradient of x A
    grad_out = grad_in or weight_trains or bool(r)
    if isinstance(strategy, AdapterConfig) and layer in PLACEMENTS[strategy.placement]:
        m = strategy.bottleneck
        # down's input; GELU keeps its input and up its input (ReLU keeps its output, the same tensor up keeps)
        count["act"] += n_out + (2 * m if strategy.activation == "gelu" else m)
        grad_out = True
    return grad_out


def _block(strategy, d: int, h: int, grad_in: bool, count: dict) -> bool:
    """Add what one GPT-2 block saves per token (and per layer, `const`); return whether its output needs a gradient."""
    g = grad_in
    if g:
        count["resid"] += d  # ln_1's input
        count["stat"] += 2   # its mean and 1/std per position
    g_attn = _linear(strategy, "attn.c_attn", d, 3 * d, g, False, count)
    if g_attn:
        count["act"] += 3 * d + d  # q, k, v (views of one buffer) and the attention's output
        count["stat"] += h         # one log-sum-exp per head and position
    g_attn = _linear(strategy, "attn.c_proj", d, d, g_attn, g_attn, count)  # its input is the output above
    g = g or g_attn  # the residual stream after attention
    if g:
        count["resid"] += d  # ln_2's input
        count["stat"] += 2
    g_mlp = _linear(strategy, "mlp.c_fc", d, 4 * d, g, False, count)
    if g_mlp:
        count["act"] += 4 * d  # GELU's input
    g_mlp = _linear(strategy, "mlp.c_proj", 4 * d, d, g_mlp, False, count)
    return g or g_mlp


def activation_count(config: GPTConfig, strategy, batch: int, tokens: int, checkpointed: bool = False) -> dict[str, int]:
    """Elements autograd saves for backward in one training forward pass, by kind (see the module docstring).

    `tokens` is the input length; prompt tuning adds its soft-prompt positions. Kinds: resid (residual
    stream), act (other activations, incl. `const` per-layer tensors), stat (LayerNorm and attention
    statistics), logp (log-probabilities), ids (int64 token ids and targets), plus `scalar_bytes`.
    QLoRA keeps what LoRA keeps (its 4-bit layers dequantise again in backward instead of keeping W).

    checkpointed: the peak under activation checkpointing per block (what Hugging Face's
    gradient_checkpointing does; this package does not implement it, so these counts are the formula
    only): the forward pass keeps only each block's input, and backward recomputes one block at a time,
    so at most one block's saved tensors are alive beside all the blocks' inputs.
    """
    if isinstance(strategy, AdapterConfig) and strategy.train_layernorm:
        raise ValueError("activation_count does not model adapters with trained LayerNorms")
    if not isinstance(strategy, (FullConfig, LoRAConfig, QLoRAConfig, AdapterConfig, PromptTuningConfig)):
        raise ValueError(f"activation_count models full, lora, qlora, adapter and prompt, not {strategy.name!r}")
    d, h, V = config.n_embd, config.n_head, config.vocab_size
    full = isinstance(strategy, FullConfig)
    positions = tokens + (strategy.n_tokens if isinstance(strategy, PromptTuningConfig) else 0)
    blocks = []
    # Into block 0 a gradient is needed if the embeddings (full) or the soft prompt (prompt tuning) train.
    g = full or isinstance(strategy, PromptTuningConfig)
    for _ in range(config.n_layer):
        blocks.append({"resid": 0, "act": 0, "stat": 0, "const": 0})
        g = _block(strategy, d, h, g, blocks[-1])
    if checkpointed:  # every block's input, and the largest block's own tensors while it is recomputed
        per_token = dict(max(blocks, key=lambda b: (b["act"] + b["const"], b["resid"], b["stat"])))
        per_token["resid"] += config.n_layer * d
    else:
        per_token = {k: sum(b[k] for b in blocks) for k in blocks[0]}
    if g:
        per_token["resid"] += d  # ln_f's input
        per_token["stat"] += 2
    if full:
        per_token["act"] += d  # lm_head's input: the tied embedding trains
    N = batch * positions
    return {
        "resid": N * per_token["resid"],
        "act": N * per_token["act"] + per_token.pop("const"),  # `const` was summed over layers, not tokens
        "stat": N * per_token["stat"],
        "logp": N * V,  # log_softmax keeps its output; the loss reads it again (the same tensor)
        "ids": N + (batch * tokens + tokens if full else 0),  # targets; the ids and positions embedding keeps
        "scalar_bytes": 4,  # the loss's total weight
    }


def activation_bytes(config: GPTConfig, strategy, batch: int, tokens: int, precision: str = "fp32",
                     checkpointed: bool = False) -> int:
    """Bytes autograd saves for backward in one training forward pass (fp32, or bf16 autocast); with
    `checkpointed`, the peak under per-block activation checkpointing (see activation_count)."""
    size = ELEMENT_BYTES[precision]
    count = activation_count(config, strategy, batch, tokens, checkpointed)
    return count.pop("scalar_bytes") + sum(size[k] * n for k, n in count.items())


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves during one training forward pass, parameters excluded (measured).

    Each storage counts once (q, k and v are views of one buffer), with all its bytes, so x and y are made
    contiguous first: a view of a bigger batch would count the whole batch.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    was_training = model.training
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(x.contiguous(), y.contiguous())
    loss.backward()  # frees what was saved
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return total


def file_size(path: str | Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def human_bytes(n: float) -> str:
    """Bytes in decimal units: 512 B, 1.2 kB, 45.6 MB, 1.0 GB."""
    if abs(n) < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if round(abs(n), 1) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


__all__ = [
    "ELEMENT_BYTES", "activation_bytes", "activation_count", "file_size", "human_bytes", "measure_training_memory",
    "memory_formula", "saved_activation_bytes", "step_bytes", "tensor_bytes", "training_memory",
]
