"""Prompt tuning (Lester et al., 2021): learn a few input vectors, freeze the whole model.

n trainable vectors P (a "soft prompt") are placed before the embeddings of every input:

    input ids t_1..t_T  ->  [ P_1 .. P_n , wte(t_1) .. wte(t_T) ]  ->  frozen GPT  ->  logits for t_1..t_T

    trainable:  n_tokens * n_embd          (nothing else changes)
    context:    the usable length shrinks from block_size to block_size - n_tokens
    loss:       prompt positions have no targets; target j still belongs to input position j
    init:       "random"  ~ N(0, std of the token embeddings)
                "vocab"   embeddings of n tokens drawn at random from the vocabulary (the paper's best)
                "text"    embeddings of the tokens of init_text, repeated to length n

The soft prompt enters through the model's one seam, `GPT.forward_embeddings`. The prompt-tuned model
shares every module of the base (same names, same tensors) and adds one, `soft_prompt`: an
nn.Embedding of n_tokens rows, so the optimizer treats it as the embedding it is (no weight decay).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from minitune.errors import ConfigError
from minitune.model import GPT, IGNORE_INDEX
from minitune.strategies.targets import check_count, freeze


@dataclass
class PromptTuningConfig:
    """Soft prompt length and how to initialise it (init_text is read with the named tokenizer)."""

    n_tokens: int = 20
    init: str = "vocab"
    init_text: str | None = None
    tokenizer: str = "minitune"
    name: ClassVar[str] = "prompt"
    # by task kind, each chosen on validation by `minitune sweep` (minitune/assets/sweep/)
    default_lr: ClassVar[dict[str, float]] = {"classification": 0.3, "generation": 0.3}

    def __post_init__(self) -> None:
        check_count(self, "n_tokens")
        if self.init not in ("random", "vocab", "text"):
            raise ConfigError(f"PromptTuningConfig.init must be 'random', 'vocab' or 'text', got {self.init!r}")
        if (self.init == "text") != bool(self.init_text):
            raise ConfigError("PromptTuningConfig.init_text is needed with init='text', and only then")


class PromptTunedGPT(GPT):
    """A GPT (sharing the base's modules) that reads a trainable soft prompt before every input."""

    def __init__(self, base: GPT, soft_prompt: torch.Tensor):
        nn.Module.__init__(self)  # not GPT.__init__: the modules are the base's, not new ones
        self.config = base.config
        self.transformer = base.transformer
        self.lm_head = base.lm_head
        self.soft_prompt = nn.Embedding.from_pretrained(soft_prompt, freeze=False)  # (n_tokens, n_embd)

    @property
    def max_input_tokens(self) -> int:
        return self.config.block_size - self.soft_prompt.num_embeddings

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape
        prompt = self.soft_prompt.weight
        n = prompt.size(0)
        if n + T > self.config.block_size:
            raise ConfigError(
                f"{T} input tokens + {n} soft-prompt tokens exceed block_size ({self.config.block_size}); "
                f"with this prompt the usable context is {self.config.block_size - n} tokens"
            )
        x = torch.cat([prompt.expand(B, -1, -1), self.embed(idx)], dim=1)  # (B, n + T, C)
        if targets is not None:
            targets = torch.cat([targets.new_full((B, n), IGNORE_INDEX), targets], dim=1)
        logits, loss = self.forward_embeddings(x, targets)
        return logits[:, n:], loss  # logits of the input positions only

    def generate(self, idx: torch.Tensor, max_new_tokens: int, prefix_embeddings: torch.Tensor | None = None,
                 **kwargs) -> torch.Tensor:
        """GPT.generate with the soft prompt first, then any prefix_embeddings of the caller's."""
        prompt = self.soft_prompt.weight  # (n, C)
        if prefix_embeddings is not None:  # (P, C) or (B, P, C)
            prompt = torch.cat([prompt.expand(*prefix_embeddings.shape[:-2], -1, -1), prefix_embeddings], dim=-2)
        return super().generate(idx, max_new_tokens, prefix_embeddings=prompt, **kwargs)


def initial_prompt(model: GPT, config: PromptTuningConfig) -> torch.Tensor:
    """The starting soft prompt (n_tokens, n_embd), as config.init says."""
    wte = model.transformer.wte.weight.detach()
    n = config.n_tokens
    if config.init == "random":
        return torch.randn(n, wte.size(1), device=wte.device, dtype=wte.dtype) * wte.std()
    if config.init == "vocab":
        ids = torch.randint(0, wte.size(0), (n,), device=wte.device)
    else:
        from minitune.tokenizer import get_tokenizer

        tokens = get_tokenizer(config.tokenizer).encode_ordinary(config.init_text)
        if not tokens or max(tokens) >= wte.size(0):
            raise ConfigError(f"PromptTuningConfig.init_text {config.init_text!r} gives no usable tokens")
        ids = torch.tensor([tokens[i % len(tokens)] for i in range(n)], device=wte.device)
    return wte[ids].clone()


def apply(model: GPT, config: PromptTuningConfig) -> PromptTunedGPT:
    """Freeze the model and return it reading a fresh soft prompt."""
    if config.n_tokens >= model.config.block_size:
        raise ConfigError(
            f"PromptTuningConfig.n_tokens ({config.n_tokens}) leaves no room in block_size "
            f"({model.config.block_size}); it must be below block_size"
        )
    freeze(model)
    return PromptTunedGPT(model, initial_prompt(model, config))
