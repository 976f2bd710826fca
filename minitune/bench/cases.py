"""The timed cases: a training step per strategy, a forward pass, a generation, a matmul reference.

Each builder returns a `Case` whose `fn` does the work once; `timing.run_interleaved` times them. The
lessons build their own cases from the same builders (lesson 3's forward passes, lesson 4's steps).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn

from minitune.bench.timing import Case
from minitune.model import GPT, GPTConfig
from minitune.strategies import AdapterConfig, FullConfig, LoRAConfig, PromptTuningConfig, apply_strategy, merge
from minitune.strategies.lora import lora_layers
from minitune.train import TrainConfig, autocast_for, make_optimizer

STRATEGIES = {
    "full": FullConfig(),
    "lora": LoRAConfig(r=8, alpha=16, targets=("c_attn",)),
    "adapter": AdapterConfig(bottleneck=16, placement="houlsby"),
    "prompt": PromptTuningConfig(n_tokens=20, init="vocab"),
    "lora-bf16": LoRAConfig(r=8, alpha=16, targets=("c_attn",), base_dtype="bfloat16"),
}
STRATEGY_NOTES = {"full": "all parameters", "lora": "r=8, alpha=16, on c_attn",
                  "adapter": "houlsby (2 per block), bottleneck 16, GELU", "prompt": "20 soft tokens",
                  "lora-bf16": "lora's settings, the frozen base held in bf16"}
PROMPT_TOKENS = 6  # generation prompt; the rest of the context is generated


def random_batch(cfg: GPTConfig, batch: int, seq: int, device: torch.device,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets (batch, seq) of random ids, the same for a given seed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=g)
    return x[:, :-1].contiguous().to(device), x[:, 1:].contiguous().to(device)


def build_models(base: GPT, strategies: tuple[str, ...] = ("full", "lora", "adapter", "prompt")) -> dict[str, nn.Module]:
    """The base with each strategy applied (each on its own copy)."""
    return {name: apply_strategy(copy.deepcopy(base), STRATEGIES[name]) for name in strategies}


def training_step(model: nn.Module, batch_size: int, device: torch.device) -> Callable[[], None]:
    """One optimizer step as a function: forward, backward, AdamW step (make_optimizer), zero_grad."""
    model.to(device).train()
    optimizer = make_optimizer(model, TrainConfig(lr=1e-4, warmup_steps=0), device)
    x, y = random_batch(model.config, batch_size, model.max_input_tokens, device, seed=1)

    def step() -> None:
        with autocast_for(device):
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def training_case(size: str, name: str, model: nn.Module, batch_size: int, device: torch.device) -> Case:
    """A training step of `model` at full context, as a case of the training section."""
    return Case("training", size, name, training_step(model, batch_size, device))


def inference_models(base: GPT, device: torch.device) -> dict[str, nn.Module]:
    """The base, a LoRA model with its update beside W, and the same LoRA model merged into W."""
    lora = apply_strategy(copy.deepcopy(base), STRATEGIES["lora"])
    with torch.no_grad():  # a non-zero update, as after training (B starts at zero)
        for layer in lora_layers(lora).values():
            layer.lora_B.normal_(std=0.02)
    merged = merge(copy.deepcopy(lora))
    return {name: m.to(device).eval() for name, m in
            (("base", copy.deepcopy(base)), ("lora unmerged", lora), ("lora merged", merged))}


def inference_case(size: str, name: str, model: nn.Module, device: torch.device) -> Case:
    """One forward pass of batch 1 over the full context, logits at every position."""
    x, _ = random_batch(model.config, 1, model.config.block_size, device, seed=2)

    def forward() -> None:
        with torch.inference_mode(), autocast_for(device):
            model(x)

    return Case("inference", size, name, forward)


def generation_case(size: str, model: GPT, use_cache: bool, device: torch.device,
                    new_tokens: int | None = None) -> Case:
    """Greedy generation, batch 1, from a short prompt: `new_tokens` of them, or until the context is full."""
    model.to(device).eval()
    prompt, _ = random_batch(model.config, 1, PROMPT_TOKENS, device, seed=3)
    new = new_tokens or model.config.block_size - PROMPT_TOKENS

    def run(n: int) -> Callable[[], None]:
        def go() -> None:
            with autocast_for(device):
                model.generate(prompt, n, use_cache=use_cache)
        return go

    name = ("with KV cache" if use_cache else "without cache") + (f", {new} new" if new_tokens else "")
    return Case("generation", size, name, run(new), warmup=run(min(8, new)), every=2)


def matmul_case(n: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Case:
    """One n x n @ n x n matmul with both operands already in `dtype` (no cast inside the timed run)."""
    g = torch.Generator().manual_seed(4)
    a, b = (torch.randn(n, n, generator=g).to(device, dtype) for _ in range(2))

    def mm() -> None:
        a @ b

    return Case("matmul", "", f"{n}x{n}", mm)
