"""What the bench runs on each device, and how a step's work is counted (FLOPs, MFU).

On the CPU: the lessons' tiny base and an ~11M model (6 layers x 384), fp32, with a matmul reference
of 1024^2 and 2048^2. On a GPU those leave the card idle (launch-bound), so there it runs GPT-2's
smallest shape (124M: 12 layers x 768, 12 heads, vocabulary 50,257, context 1024) at a batch of 8 x
1024 tokens (halved while it would not fit in the free memory) under bf16 autocast, against a bf16
matmul reference of 4096^2 and 8192^2, which reaches the card's practical peak.

FLOPs per token of a training step on a sequence of T positions, L layers of width d:

    full fine-tuning:   6 N + 12 L d T                     (Chowdhery et al., 2022, PaLM, appendix B;
    PEFT:               4 N + 2 N_trainable + 12 L d T      nanoGPT's estimate_mfu counts the same)

    N            all parameters except the position embedding wpe (and a soft prompt): the token
                 embedding counts once, since, tied, it is the lm_head matmul (2 V d per token forward);
                 LoRA and adapter tensors count too, since they run in the forward pass
    N_trainable  the trainable part of N (LoRA's A and B, the adapters; none for prompt tuning: the soft
                 prompt is concatenated to the input, not multiplied)

    Why: forward = 2N (one multiply-add per weight per token). Backward = 2N for the gradient with
    respect to each layer's input (needed through every frozen layer, so the gradient can reach the
    trainable tensors below it) + 2 N_trainable for the weight gradients (a frozen weight gets none).
    Attention scores add 4 L d T forward and 8 L d T backward, all of it activation gradients (the full
    T x T square, as PaLM counts it, though the causal mask leaves half of it unused). It slightly
    overstates PEFT's work: autograd skips the input gradients below the lowest trainable tensor.

MFU = FLOPs per token x tokens per second / the best matmul throughput measured in the same run (not a
datasheet peak).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from minitune.model import GPTConfig

SIZES = {
    "nano": GPTConfig.from_preset("nano"),
    "tiny": GPTConfig.from_preset("tiny"),
    # ~11M parameters: written out here rather than borrowed from a preset, so the bench stays fixed
    "large": GPTConfig(vocab_size=2048, block_size=256, n_layer=6, n_head=6, n_embd=384),
    # GPT-2's smallest shape, 124M parameters: the size that fills a GPU
    "gpt2": GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
}
GPU_BATCH = 8  # sequences of 1024 tokens: the batch nanoGPT's and the Hugging Face numbers are quoted at


@dataclass(frozen=True)
class BenchPlan:
    """What one bench run measures on a device: sizes, training batch, strategies, matmul reference."""

    sizes: tuple[str, ...]
    batch_size: int
    strategies: tuple[str, ...]
    matmul_sizes: tuple[int, ...]
    matmul_dtype: torch.dtype
    note: str  # the batch in words, for the report
    generation_tokens: int | None = None  # besides filling the context, a cached run of this many new tokens


def bench_sizes(device: torch.device | str, quick: bool = False, free_bytes: int | None = None) -> BenchPlan:
    """The plan for `device`: the CPU's sizes, or GPT-2 124M sized to the GPU's free memory.

    `free_bytes` is the GPU's free memory (read from the device when None); tests pass it to plan for a
    GPU they do not have.
    """
    device = torch.device(device)
    cpu_like = device.type != "cuda"
    strategies = ("full", "lora", "adapter", "prompt") + (() if cpu_like or quick else ("lora-bf16",))
    if quick:  # the test's setting: the nano model, small matmuls
        return BenchPlan(("nano",), 4, strategies, (1024,), torch.float32 if cpu_like else torch.bfloat16,
                         "4 (quick: the nano model)")
    if cpu_like:
        return BenchPlan(("tiny", "large"), 8, strategies, (1024, 2048), torch.float32, "8")
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    batch = fit_batch(SIZES["gpt2"], free_bytes, GPU_BATCH)
    note = f"{batch} x {SIZES['gpt2'].block_size}" + ("" if batch == GPU_BATCH else
                                                       f" (halved from {GPU_BATCH} to fit {free_bytes / 1e9:.0f} GB)")
    # 256 new tokens: the length the Hugging Face generation speed is quoted at
    return BenchPlan(("gpt2",), batch, strategies, (4096, 8192), torch.bfloat16, note, generation_tokens=256)


def training_bytes(cfg: GPTConfig, batch: int, models: int = 9) -> int:
    """A rough upper estimate of the GPU memory the bench needs at `batch` (bf16 autocast).

    Activations per token: about 34 d bytes per layer (Korthikanti et al., 2022, without the attention
    scores, which a fused SDPA kernel does not keep) and 12 V for the logits (bf16, their float32 copy
    for the loss, its float32 gradient, slack). States: 16 bytes per parameter for the fully fine-tuned
    model (weights, gradients, AdamW's two moments) and 4 for each of the other models the bench holds.
    """
    params = cfg.vocab_size * cfg.n_embd + cfg.block_size * cfg.n_embd + 12 * cfg.n_layer * cfg.n_embd ** 2
    per_token = 34 * cfg.n_layer * cfg.n_embd + 12 * cfg.vocab_size
    return batch * cfg.block_size * per_token + 16 * params + 4 * params * (models - 1)


def fit_batch(cfg: GPTConfig, free_bytes: int, preferred: int) -> int:
    """`preferred`, halved until training_bytes fits in 80% of free_bytes (1 at the least)."""
    batch = preferred
    while batch > 1 and training_bytes(cfg, batch) > 0.8 * free_bytes:
        batch //= 2
    return batch


# ----------------------------------------------------------------------------------------------- FLOPs
def flop_counts(model: nn.Module) -> tuple[int, int]:
    """(N, N_trainable): parameters that do matmul work per token (all but wpe and a soft prompt)."""
    n = n_tr = 0
    for name, p in model.named_parameters():  # a tied tensor is named once (transformer.wte.weight)
        if name == "transformer.wpe.weight" or "soft_prompt" in name:
            continue
        n += p.numel()
        n_tr += p.numel() if p.requires_grad else 0
    return n, n_tr


def flops_per_token(model: nn.Module, seq_len: int) -> tuple[int, str]:
    """Training FLOPs per position of a sequence of seq_len positions, and the formula used."""
    n, n_tr = flop_counts(model)
    cfg = model.config
    attention = 12 * cfg.n_layer * cfg.n_embd * seq_len
    if n_tr == n:
        return 6 * n + attention, "6N+12LdT"
    return 4 * n + 2 * n_tr + attention, "4N+2Ntr+12LdT"


def mfu(flops_per_token: float, tokens: int, seconds: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: the step's useful FLOP/s as a fraction of the measured peak."""
    return flops_per_token * tokens / seconds / peak_flops_per_s
