"""GPT-2, written out plainly.

    idx (B, T) -> wte + wpe -> [ Block ] x n_layer -> ln_f -> lm_head -> logits (B, T, vocab)
    Block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))          (pre-LayerNorm)

Module names are GPT-2's own (`transformer.h.0.attn.c_attn`, `mlp.c_fc`, ...) so real GPT-2 weights load
by name. This file knows nothing of fine-tuning strategies: they wrap modules from outside, or use the one
seam `forward_embeddings`, which runs the model from input embeddings (soft prompts need it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from minitune.errors import ConfigError

IGNORE_INDEX = -100  # targets equal to this (e.g. prompt tokens) do not count in the loss
STOP_CHECK_EVERY = 16  # generate() reads "has every row stopped?" on the host once per this many tokens


@dataclass
class GPTConfig:
    """Shape of a GPT-2: vocabulary, context length, depth, heads, width, dropout, biases, LN epsilon."""

    vocab_size: int = 2048
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        if not self.layer_norm_epsilon > 0:
            raise ConfigError(f"GPTConfig.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        """A named preset (`nano`, `tiny`, `small`), optionally with some fields overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """Build from a dict, refusing unknown keys (a config from something else is a mistake)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown GPTConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**d)


PRESETS = {
    # for tests: runs a training step in milliseconds
    "nano": dict(vocab_size=2048, block_size=64, n_layer=2, n_head=2, n_embd=32),
    # the lessons' base: ~1M parameters, pretrains on a 2-core CPU in minutes
    "tiny": dict(vocab_size=2048, block_size=128, n_layer=4, n_head=4, n_embd=128),
    # for scale experiments on a GPU (~11M parameters)
    "small": dict(vocab_size=2048, block_size=256, n_layer=6, n_head=6, n_embd=384),
}


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask; q, k, v come from one fused projection."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, past + T, hs)
        past = k.size(2) - T  # positions the cache held before this call (0 without one)
        mask = None
        if past and T > 1:
            # T new positions after `past` cached ones (keys/values given in advance, such as a learned
            # prefix, or a prompt fed in pieces): query i sees every cached key and the new ones up to
            # itself. SDPA's is_causal puts the triangle in the top-left corner, right only when past = 0.
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=T > 1 and mask is None, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: n_embd -> 4 n_embd -> GELU (tanh) -> n_embd."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """One transformer block, pre-LayerNorm as in GPT-2."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


class KVCache:
    """Keys and values of every layer for the positions seen so far, so a new token costs one position.

    Each layer's buffer is allocated once for the whole context, (B, nh, max_len, hs), and filled in
    place: appending a token copies one position, not everything cached so far.
    """

    def __init__(self, n_layer: int, max_len: int):
        self.max_len = max_len
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.lengths = [0] * n_layer

    @property
    def length(self) -> int:
        return self.lengths[0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's (B, nh, T, hs) keys and values; return all of them so far."""
        B, nh, T, hs = k.shape
        if self.k[layer] is None:
            self.k[layer] = k.new_empty(B, nh, self.max_len, hs)
            self.v[layer] = v.new_empty(B, nh, self.max_len, hs)
        start, end = self.lengths[layer], self.lengths[layer] + T
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        self.lengths[layer] = end
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class GPT(nn.Module):
    """The GPT-2 language model: token ids in, next-token logits (and optionally a loss) out."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2 n_layer):
        # each block adds two of them, and the sum of 2 n_layer such terms should keep unit scale.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        """Number of distinct parameters (the tied lm_head counted once)."""
        return sum(p.numel() for p in self.parameters())

    @property
    def max_input_tokens(self) -> int:
        """How many input tokens fit in one pass (fewer than block_size if the model adds inputs of its own)."""
        return self.config.block_size

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T) -> (B, T, n_embd), after checking the ids are in the vocabulary."""
        outside = (idx < 0) | (idx >= self.config.vocab_size)
        if idx.numel() and bool(outside.any()):  # one read by the host (on a GPU it waits for the device)
            bad = idx[outside][0].item()
            raise ConfigError(
                f"token id {bad} is outside the vocabulary: ids must be in [0, {self.config.vocab_size - 1}]"
            )
        return self.transformer.wte(idx)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) for token ids (B, T); mean cross-entropy over targets that are not -100."""
        return self.forward_embeddings(self.embed(idx), targets)

    def forward_embeddings(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The seam: run the model from input embeddings (B, T, n_embd), adding position embeddings.

        Positions start after whatever the cache already holds. With `last_only`, only the last
        position's logits are computed (all generation needs, and far cheaper than the full vocabulary
        at every position).
        """
        B, T, _ = x.shape
        start = 0 if cache is None else cache.length
        if start + T > self.config.block_size:
            raise ConfigError(
                f"sequence of {start + T} tokens is longer than block_size ({self.config.block_size})"
            )
        pos = torch.arange(start, start + T, dtype=torch.long, device=x.device)
        x = self.transformer.drop(x + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i)
        x = self.transformer.ln_f(x)
        if last_only:
            x = x[:, -1:, :]
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        stop_tokens: set[int] | list[int] | tuple[int, ...] = (),
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        prefix_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Continue idx (B, T) by up to max_new_tokens; greedy at temperature 0.

        Stops early once every row has produced a stop token (rows that stopped are padded with their
        stop token; the result ends with the token that finished the last row) or once the context
        (`block_size`) is full. With the key/value cache each new token runs one position through the
        model; `use_cache=False` re-runs the whole sequence each step and gives the same tokens.
        `prefix_embeddings` (P, n_embd) are placed before the prompt (a soft prompt, for instance);
        they are not part of the returned ids.

        No host read per token (on a GPU `int(t)` or `bool(t)` waits for all queued work, dearer than a
        token's arithmetic at batch 1): the prompt's ids are checked once (generated ids index the logits),
        "has every row stopped?" is read every STOP_CHECK_EVERY tokens and the surplus cut at the end: the
        ids of a per-token check (a sampling generator may have drawn up to STOP_CHECK_EVERY - 1 more).
        """
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        B = idx.size(0)
        stops = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=idx.device)
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        cache = KVCache(self.config.n_layer, self.config.block_size) if use_cache else None
        x_in = self._with_prefix(self.embed(idx), prefix_embeddings)  # the prompt's ids checked, once
        wte = self.transformer.wte  # generated ids go straight in, unchecked
        live = torch.zeros((), dtype=torch.long, device=idx.device)  # steps after which some row went on
        out = idx
        n_prefix = 0 if prefix_embeddings is None else prefix_embeddings.size(-2)
        room = self.config.block_size - n_prefix - idx.size(1)
        if room < 0:
            raise ConfigError(
                f"prompt of {n_prefix + idx.size(1)} tokens is longer than block_size ({self.config.block_size})"
            )
        max_new_tokens = min(max_new_tokens, room)
        for step in range(max_new_tokens):
            if cache is None:
                x_in = self._with_prefix(wte(out), prefix_embeddings)
            logits, _ = self.forward_embeddings(x_in, cache=cache, last_only=True)
            next_id = self._pick(logits[:, -1, :].float(), temperature, top_k, generator)
            if len(stops):
                next_id = torch.where(done, out[:, -1], next_id)  # finished rows repeat their stop token
                done |= torch.isin(next_id, stops)
                live += ~done.all()  # counted on the device: no wait
            out = torch.cat([out, next_id[:, None]], dim=1)
            if cache is not None:
                x_in = wte(next_id[:, None])
            if len(stops) and (step + 1) % STOP_CHECK_EVERY == 0 and bool(done.all()):
                break
        if len(stops) and bool(done.all()):  # drop what came after the step at which the last row stopped
            out = out[:, : idx.size(1) + int(live) + 1]
        return out

    @staticmethod
    def _with_prefix(x: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
        if prefix is None:
            return x
        return torch.cat([prefix.to(x.dtype).expand(x.size(0), -1, -1), x], dim=1)

    @staticmethod
    def _pick(
        logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Next token ids (B,) from last-position logits (B, vocab)."""
        if temperature == 0:
            return logits.argmax(dim=-1)
        logits = logits / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def count_parameters(config: GPTConfig) -> int:
    """Closed-form parameter count of GPT(config), with the LM head tied to the token embedding."""
    d, L, V, T = config.n_embd, config.n_layer, config.vocab_size, config.block_size
    b = 1 if config.bias else 0
    ln = d + b * d  # LayerNorm: weight (+ bias)
    attn = d * 3 * d + b * 3 * d + d * d + b * d
    mlp = d * 4 * d + b * 4 * d + 4 * d * d + b * d
    return V * d + T * d + L * (2 * ln + attn + mlp) + ln
