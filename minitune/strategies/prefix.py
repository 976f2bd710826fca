"""Prefix tuning (Li & Liang, 2021): learned keys and values in front of every layer's attention.

Prompt tuning adds input vectors; prefix tuning goes further and gives every layer n extra positions to
attend to, each with a key and a value of its own. That is exactly what a KV cache holds after the model
has read n tokens, so a prefix is a cache the model did not compute: the prefix-tuned model starts every
forward pass from a cache pre-filled with the learned keys and values, through the seam generation uses.

    layer l, head h:  attention over [ P_k(l, h) ; K(l, h) ]  with values [ P_v(l, h) ; V(l, h) ]
    positions:        the prefix takes positions 0 .. n-1 and the input starts at n, as it does for a cached
                      prompt (and as Hugging Face GPT-2 counts positions after past keys and values, PEFT's
                      way of passing a prefix); the usable context shrinks to block_size - n

    prefix table P:   (n, 2 L d), each row laid out [layer 0 keys | layer 0 values | layer 1 keys | ...],
                      each part d = heads x head size wide (PEFT's layout)
    trainable, plain:            n * 2 L d
    reparameterised (hidden h):  n d + (d h + h) + (h * 2 L d + 2 L d)     P = MLP(E), E: (n, d)
                                 MLP = Linear(d, h) -> tanh -> Linear(h, 2 L d)

Li & Liang found that updating P directly makes optimisation unstable (and ends slightly worse), so they
train it through a small MLP; once trained, only its output P is needed. `fold` replaces the MLP by the
table it computes (the model's strategy becomes the plain one, hidden=0), so the file saved for inference
holds only n * 2 L d numbers and a forward pass runs no MLP. A run keeps the MLP until then, so training
can resume.

The prefix-tuned model shares every module of the base and adds one, `prefix` (an nn.Embedding and, while
reparameterised, the MLP). Unlike LoRA or (IA)3 it does not start as the base: attention spreads over the
prefix positions from the first step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn as nn

from minitune.errors import ConfigError, is_count
from minitune.model import GPT, KVCache
from minitune.strategies.targets import check_count, freeze


@dataclass
class PrefixTuningConfig:
    """Prefix length n_tokens, and the width of the training-time MLP (hidden=0: train the prefix directly)."""

    n_tokens: int = 10
    hidden: int = 64  # a width to suit the small bases here
    name: ClassVar[str] = "prefix"
    # by task kind, each chosen on validation by `minitune sweep` (minitune/assets/sweep/)
    default_lr: ClassVar[dict[str, float]] = {"classification": 0.01, "generation": 0.01}

    def __post_init__(self) -> None:
        check_count(self, "n_tokens")
        if not (is_count(self.hidden) or (type(self.hidden) is int and self.hidden == 0)):
            raise ConfigError(f"PrefixTuningConfig.hidden must be 0 (no MLP) or a positive integer, "
                              f"got {self.hidden!r}")


class Prefix(nn.Module):
    """The learned prefix table P (n, 2 L d): an embedding read as it is, or through an MLP while training."""

    def __init__(self, n_tokens: int, d: int, n_layer: int, hidden: int = 0, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        width = 2 * n_layer * d
        # N(0, 1) rows, nn.Embedding's own init (PEFT's too); an embedding, so AdamW gives it no weight decay
        self.embedding = nn.Embedding(n_tokens, d if hidden else width, **factory)
        self.mlp = (nn.Sequential(nn.Linear(d, hidden, **factory), nn.Tanh(), nn.Linear(hidden, width, **factory))
                    if hidden else None)

    def forward(self) -> torch.Tensor:
        """P, shape (n, 2 L d)."""
        e = self.embedding.weight
        return e if self.mlp is None else self.mlp(e)


class PrefixTunedGPT(GPT):
    """A GPT (sharing the base's modules) whose every forward pass starts from a cache holding the prefix."""

    def __init__(self, base: GPT, prefix: Prefix):
        nn.Module.__init__(self)  # not GPT.__init__: the modules are the base's, not new ones
        self.config = base.config
        self.transformer = base.transformer
        self.lm_head = base.lm_head
        self.prefix = prefix

    @property
    def n_tokens(self) -> int:
        return self.prefix.embedding.num_embeddings

    @property
    def max_input_tokens(self) -> int:
        return self.config.block_size - self.n_tokens

    def fill(self, cache: KVCache, batch: int, dtype: torch.dtype) -> KVCache:
        """Write the prefix's keys and values into an empty cache, as if the model had read n tokens."""
        c, n = self.config, self.n_tokens
        # (n, 2 L d) -> (L, 2, heads, n, head size): per layer, keys then values, heads first as attention has them
        kv = self.prefix().view(n, c.n_layer, 2, c.n_head, c.n_embd // c.n_head).permute(1, 2, 3, 0, 4)
        for layer in range(c.n_layer):
            k, v = (t.to(dtype).expand(batch, -1, -1, -1) for t in kv[layer])  # (B, nh, n, hs)
            cache.update(layer, k, v)
        return cache

    def forward_embeddings(self, x: torch.Tensor, targets: torch.Tensor | None = None,
                           cache: KVCache | None = None, last_only: bool = False):
        """GPT.forward_embeddings after the prefix: a fresh cache (or generation's, while empty) is filled first."""
        if cache is None:
            cache = KVCache(self.config.n_layer, self.n_tokens + x.size(1))
        if cache.length == 0:
            self.fill(cache, x.size(0), x.dtype)
        return super().forward_embeddings(x, targets, cache, last_only)

    def generate(self, idx: torch.Tensor, max_new_tokens: int, prefix_embeddings: torch.Tensor | None = None,
                 **kwargs) -> torch.Tensor:
        """GPT.generate, with the context shortened by the prefix (with or without the cache, the same tokens)."""
        used = self.n_tokens + idx.size(1) + (0 if prefix_embeddings is None else prefix_embeddings.size(-2))
        if used > self.config.block_size:
            raise ConfigError(f"prompt of {used - self.n_tokens} tokens and a prefix of {self.n_tokens} exceed "
                              f"block_size ({self.config.block_size})")
        return super().generate(idx, min(max_new_tokens, self.config.block_size - used),
                                prefix_embeddings=prefix_embeddings, **kwargs)


def apply(model: GPT, config: PrefixTuningConfig) -> PrefixTunedGPT:
    """Freeze the model and return it reading a fresh prefix in every layer."""
    c = model.config
    if config.n_tokens >= c.block_size:
        raise ConfigError(f"PrefixTuningConfig.n_tokens ({config.n_tokens}) leaves no room in block_size "
                          f"({c.block_size}); it must be below block_size")
    freeze(model)
    w = model.transformer.wte.weight
    prefix = Prefix(config.n_tokens, c.n_embd, c.n_layer, config.hidden, device=w.device, dtype=w.dtype)
    return PrefixTunedGPT(model, prefix).train(model.training)


@torch.no_grad()
def fold(model: PrefixTunedGPT) -> PrefixTunedGPT:
    """Replace the training-time MLP by the table P it computes, for saving and inference (model returned).

    The outputs do not change; the trainable part becomes P itself (n * 2 L d numbers) and the model's
    strategy the plain one (hidden=0), so `save_trainable` writes a file `load_trainable` reads onto any
    fresh base. Folding a plain prefix does nothing.
    """
    config = getattr(model, "strategy", None)
    if not isinstance(config, PrefixTuningConfig):
        raise ConfigError("fold needs a prefix-tuned model (apply_strategy(model, PrefixTuningConfig(...)))")
    if config.hidden == 0:
        return model
    table = model.prefix()
    c = model.config
    plain = Prefix(config.n_tokens, c.n_embd, c.n_layer, 0, device=table.device, dtype=table.dtype)
    plain.embedding.weight.copy_(table)
    model.prefix = plain.train(model.prefix.training)
    model.strategy = replace(config, hidden=0)
    return model
