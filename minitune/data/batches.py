"""Feeding the training loop: fixed-length (x, y) batches of token ids, y being x shifted by one.

A batch source is anything with `batch(i) -> (x, y)` (the i-th training batch, the same for the same
i, so a run is reproducible and can resume at any step) and `eval_batches() -> iterable of (x, y)` (a
fixed set, so validation losses of different steps compare). Targets equal to -100 are ignored by the
loss, which is how fine-tuning sets mask their prompts.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np
import torch

from minitune.errors import DataError


class BatchSource(Protocol):
    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def encode_documents(enc, docs: list[str]) -> np.ndarray:
    """One token stream: every document followed by <|endoftext|>, as uint16 or int32 ids."""
    eot = enc.eot_token
    ids: list[int] = []
    for tokens in enc.encode_ordinary_batch(docs):
        ids.extend(tokens)
        ids.append(eot)
    dtype = np.uint16 if enc.n_vocab <= 2**16 else np.int32
    return np.asarray(ids, dtype=dtype)


class TokenStream:
    """Windows of `block_size + 1` tokens from one long stream (the language-modelling objective).

    Training batch i takes `batch_size` windows at random offsets drawn from a generator seeded with
    (seed, i); evaluation walks the stream in consecutive windows, up to `max_eval_batches` batches.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int = 0,
                 max_eval_batches: int = 50):
        if len(tokens) < block_size + 2:
            raise DataError(
                f"the token stream has {len(tokens)} tokens, too few for one window of block_size + 1 = "
                f"{block_size + 1}; provide more text"
            )
        self.tokens = torch.from_numpy(tokens.astype(np.int64))
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.max_eval_batches = max_eval_batches

    def _windows(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = starts[:, None] + torch.arange(self.block_size + 1)  # (B, T + 1)
        chunk = self.tokens[offsets]
        return chunk[:, :-1], chunk[:, 1:]

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        starts = torch.randint(len(self.tokens) - self.block_size - 1, (self.batch_size,), generator=g)
        return self._windows(starts)

    def eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n_windows = (len(self.tokens) - 1) // self.block_size
        starts = torch.arange(n_windows) * self.block_size
        for b in range(min(self.max_eval_batches, -(-n_windows // self.batch_size))):
            yield self._windows(starts[b * self.batch_size : (b + 1) * self.batch_size])
