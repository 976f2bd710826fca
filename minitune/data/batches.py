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


class SupervisedBatches:
    """Prompt/target pairs for fine-tuning: the loss sees only the target (and the closing <|endoftext|>).

    Each example becomes ids = prompt + target + [eot]; x = ids[:-1], y = ids[1:] with every y that
    lies inside the prompt set to -100. Rows are right-padded to the longest in the batch (x with eot,
    y with -100): under the causal mask, padding after a row's end cannot change its earlier positions.
    An example longer than block_size + 1 loses the start of its prompt, never its target.
    Training batch i walks a seeded shuffle of the examples, a fresh one each epoch.
    """

    def __init__(self, examples, enc, block_size: int, batch_size: int, seed: int = 0,
                 max_eval_examples: int | None = None):
        if not examples:
            raise DataError("no examples to fine-tune on")
        self.eot, self.block_size, self.batch_size, self.seed = enc.eot_token, block_size, batch_size, seed
        self.rows = [self._encode(enc, ex.prompt, ex.target) for ex in examples]
        self.max_eval_examples = max_eval_examples
        self._perms: dict[int, torch.Tensor] = {}

    def _encode(self, enc, prompt: str, target: str) -> tuple[list[int], int]:
        """(ids, number of prompt tokens) with the prompt cut from the left to fit block_size + 1."""
        p, t = enc.encode_ordinary(prompt), enc.encode_ordinary(target) + [self.eot]
        if len(t) > self.block_size:
            raise DataError(f"a target of {len(t)} tokens does not fit block_size ({self.block_size}): {target[:60]!r}")
        p = p[max(0, len(p) + len(t) - self.block_size - 1):]
        return p + t, len(p)

    def _collate(self, rows: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
        T = max(len(ids) for ids, _ in rows) - 1
        x = torch.full((len(rows), T), self.eot, dtype=torch.long)
        y = torch.full((len(rows), T), -100, dtype=torch.long)
        for b, (ids, n_prompt) in enumerate(rows):
            ids_t = torch.tensor(ids)
            x[b, : len(ids) - 1] = ids_t[:-1]
            y[b, : len(ids) - 1] = ids_t[1:]
            y[b, : max(n_prompt - 1, 0)] = -100  # predicting prompt tokens is not the task
        return x, y

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(len(self.rows), generator=g)}  # keep only the current one
        return self._perms[epoch]

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.rows)
        positions = range(i * self.batch_size, (i + 1) * self.batch_size)
        return self._collate([self.rows[int(self._perm(p // n)[p % n])] for p in positions])

    def eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The (first max_eval_examples) examples once each, shortest first: rows of like length share a
        batch, so little of it is padding (a loss summed over every target does not depend on the order)."""
        rows = sorted(self.rows[: self.max_eval_examples], key=lambda row: len(row[0]))
        for start in range(0, len(rows), self.batch_size):
            yield self._collate(rows[start : start + self.batch_size])
