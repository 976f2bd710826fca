"""Byte-level BPE: a small trainer, and tiktoken to run what it learned.

Training (what GPT-2's tokenizer went through, at toy scale):
  1. split text into "words" with GPT-2's pre-tokenisation regex (a word keeps its leading space);
  2. start every word as its UTF-8 bytes: 256 base tokens, so any string can be encoded;
  3. repeatedly find the most frequent adjacent pair of tokens over all words (weighted by how often
     each word occurs) and merge it into a new token, until the vocabulary is full.

The learned merges are written in tiktoken's file format (one `base64(token bytes) rank` per line; a
lower rank merges first) and loaded into a `tiktoken.Encoding`, which does the fast encoding.
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path

import regex
import tiktoken
import tiktoken.load

from minitune.errors import TokenizerError

# GPT-2's pre-tokenisation pattern: contractions, letters, numbers, other symbols, whitespace.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
ASSET_DIR = Path(__file__).parent / "assets"
BUILTIN_RANKS = ASSET_DIR / "minitune.tiktoken"
BUILTIN_VOCAB_SIZE = 2048  # 256 bytes + 1791 merges + <|endoftext|>


def train_bpe(text_or_words: str | Counter, vocab_size: int) -> dict[bytes, int]:
    """Learn byte-level BPE ranks (token bytes -> rank) with `vocab_size - 1` ordinary tokens.

    One id is left for `<|endoftext|>`. Ties between equally frequent pairs go to the pair of lowest
    token ids, so training is deterministic.
    """
    if vocab_size < 257:
        raise TokenizerError(f"vocab_size must be at least 257 (256 bytes + <|endoftext|>), got {vocab_size}")
    words = text_or_words if isinstance(text_or_words, Counter) else word_counts(text_or_words)
    ranks = {bytes([b]): b for b in range(256)}
    vocab = [bytes([b]) for b in range(256)]  # id -> bytes
    # Each distinct word as a list of token ids, with its frequency.
    seqs = [list(w.encode("utf-8")) for w in words]
    freqs = list(words.values())
    pair_counts: Counter = Counter()
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> indices of words holding it
    for i, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:]):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)

    while len(vocab) < vocab_size - 1 and pair_counts:
        best = min(pair_counts, key=lambda p: (-pair_counts[p], p))
        if pair_counts[best] < 2:
            break  # nothing left that repeats
        new_id = len(vocab)
        vocab.append(vocab[best[0]] + vocab[best[1]])
        ranks[vocab[new_id]] = new_id
        for i in sorted(where.pop(best)):
            seq, f = seqs[i], freqs[i]
            for pair in zip(seq, seq[1:]):  # take this word's old pairs out...
                pair_counts[pair] -= f
                if pair_counts[pair] <= 0:
                    del pair_counts[pair]
            seqs[i] = seq = _merge(seq, best, new_id)
            for pair in zip(seq, seq[1:]):  # ...and put its new ones in
                pair_counts[pair] += f
                where[pair].add(i)
    return ranks


def _merge(seq: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair` in seq, left to right."""
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and seq[i] == pair[0] and seq[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def word_counts(text: str) -> Counter:
    """How often each pre-tokenised word occurs in text."""
    return Counter(regex.findall(GPT2_PATTERN, text))


def write_ranks(ranks: dict[bytes, int], path: str | Path) -> None:
    """Write ranks in tiktoken's format (one `base64 rank` line per token, by rank), atomically."""
    from minitune.checkpoint import atomic_write_bytes

    lines = [f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    atomic_write_bytes(path, "".join(lines).encode("ascii"))


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a tiktoken ranks file."""
    ranks = {}
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    tok, rank = line.split()
                    ranks[base64.b64decode(tok)] = int(rank)
    except (OSError, ValueError) as e:
        raise TokenizerError(f"cannot read tokenizer ranks from {path}: {e}") from e
    return ranks


def encoding_from_ranks(name: str, ranks: dict[bytes, int]) -> tiktoken.Encoding:
    """A tiktoken Encoding with these ranks, GPT-2's pattern, and <|endoftext|> as the last id."""
    return tiktoken.Encoding(
        name=name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: len(ranks)}
    )


def build_builtin_tokenizer(path: str | Path = BUILTIN_RANKS, corpus_bytes: int = 2_000_000) -> Path:
    """Train the built-in vocabulary on the tiny-world pretraining corpus (seed 0) and write it."""
    from minitune.data import pretraining_corpus

    text = "\n".join(pretraining_corpus(target_bytes=corpus_bytes, seed=0))
    write_ranks(train_bpe(text, BUILTIN_VOCAB_SIZE), path)
    return Path(path)


def gpt2_from_files(directory: str | Path) -> tiktoken.Encoding:
    """GPT-2's tokenizer from a local Hugging Face checkpoint folder (`vocab.json` + `merges.txt`)."""
    directory = Path(directory)
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    for f in (vocab, merges):
        if not f.is_file():
            raise TokenizerError(f"{directory} has no {f.name}: a GPT-2 tokenizer needs vocab.json and merges.txt")
    try:
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(merges), str(vocab))
        return tiktoken.Encoding(
            name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
            special_tokens={EOT: json.loads(vocab.read_text("utf-8"))[EOT]},
        )
    except (ValueError, KeyError, AssertionError, json.JSONDecodeError) as e:
        raise TokenizerError(f"cannot build a GPT-2 tokenizer from {directory}: {e!r}") from e


@lru_cache(maxsize=None)
def _builtin() -> tiktoken.Encoding:
    if not BUILTIN_RANKS.is_file():
        raise TokenizerError(
            f"the built-in vocabulary {BUILTIN_RANKS} is missing; rebuild it with `minitune build-tokenizer`"
        )
    return encoding_from_ranks("minitune", read_ranks(BUILTIN_RANKS))


def get_tokenizer(name: str = "minitune") -> tiktoken.Encoding:
    """`minitune` (the built-in vocabulary), `gpt2` (tiktoken's), or a folder holding GPT-2's files."""
    if name == "minitune":
        return _builtin()
    if name == "gpt2":
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # tiktoken raises whatever its downloader raises
            raise TokenizerError(
                "tiktoken could not load the 'gpt2' encoding (its files are downloaded on first use and "
                "cached). Offline, copy the cached files into a folder and set TIKTOKEN_CACHE_DIR to it, "
                "or pass the path of a Hugging Face GPT-2 checkpoint folder holding vocab.json and "
                f"merges.txt instead of 'gpt2'. Cause: {type(e).__name__}: {e}"
            ) from e
    if os.path.isdir(name):
        return gpt2_from_files(name)
    raise TokenizerError(f"unknown tokenizer {name!r}: use 'minitune', 'gpt2', or a folder with vocab.json and merges.txt")


def eot_id(enc: tiktoken.Encoding) -> int:
    """The id of <|endoftext|>, which separates documents."""
    return enc.encode_single_token(EOT)
