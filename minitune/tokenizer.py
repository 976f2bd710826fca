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


def gpt2_byte_chars() -> list[tuple[str, int]]:
    """How GPT-2's files spell the 256 bytes, in the order of their ids 0-255: every printable byte other
    than space stands for itself; the other 68 are written chr(256), chr(257), ... in byte order (so a
    space is 'Ġ' and a newline 'Ċ')."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    return [(chr(b), b) for b in printable] + [(chr(256 + n), b) for n, b in enumerate(others)]


def gpt2_from_files(directory: str | Path) -> tiktoken.Encoding:
    """GPT-2's tokenizer from a local Hugging Face checkpoint folder (`vocab.json` + `merges.txt`).

    The files are parsed here, every time, as they are on disk now (no cache). GPT-2's layout is checked:
    ids 0-255 are the bytes in GPT-2's order, the merge on the k-th line makes the token with id 255 + k,
    and <|endoftext|> comes last. tiktoken ranks merges by token id, so a vocabulary in another order
    would encode differently from the model's training; each way a file can be off is named.
    """
    directory = Path(directory)
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    for f in (vocab_file, merges_file):
        if not f.is_file():
            raise TokenizerError(f"{directory} has no {f.name}: a GPT-2 tokenizer needs vocab.json and merges.txt")
    vocab = _read_vocab(vocab_file)
    merges = _read_merges(merges_file)
    ranks = _gpt2_ranks(vocab, merges, vocab_file, merges_file)
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: vocab[EOT]})


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"cannot read {path}: {e}") from e


def _read_vocab(path: Path) -> dict[str, int]:
    """vocab.json: one object from token (in GPT-2's byte spelling) to id, every id used once."""
    def no_repeats(pairs):
        seen = {}
        for token, i in pairs:
            if token in seen:
                raise TokenizerError(f"{path}: the token {token!r} is listed twice (ids {seen[token]} and {i})")
            seen[token] = i
        return seen

    try:
        vocab = json.loads(_read_text(path), object_pairs_hook=no_repeats)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(vocab, dict):
        raise TokenizerError(f"{path} must hold one JSON object from token to id, not a {type(vocab).__name__}")
    owner: dict[int, str] = {}
    for token, i in vocab.items():
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise TokenizerError(f"{path}: the id of {token!r} must be a whole number >= 0, not {i!r}")
        if i in owner:
            raise TokenizerError(f"{path}: id {i} is given to both {owner[i]!r} and {token!r}")
        owner[i] = token
    if EOT not in vocab:
        raise TokenizerError(
            f"{path} has no {EOT} entry. GPT-2's tokenizer ends every document with it; add it after the last "
            f"merge's token (GPT-2's own vocab.json gives it id 50256, the last one)"
        )
    return vocab


def _read_merges(path: Path) -> list[tuple[int, str, str]]:
    """merges.txt: an optional '#version' first line, then one merge per line, `left right`, best first.
    Returns (line number, left, right) for each."""
    merges = []
    for n, line in enumerate(_read_text(path).split("\n"), 1):
        line = line.removesuffix("\r")
        if (n == 1 and line.startswith("#version")) or not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise TokenizerError(
                f"{path}, line {n}: {line!r} is not a merge. Each line names the two tokens it joins, separated "
                f"by one space, as in 'Ġ t' (GPT-2 spells a space inside a token 'Ġ')"
            )
        merges.append((n, parts[0], parts[1]))
    return merges


def _gpt2_ranks(vocab: dict[str, int], merges: list[tuple[int, str, str]], vocab_file: Path,
                merges_file: Path) -> dict[bytes, int]:
    """tiktoken's ranks (token bytes -> id) from GPT-2's two files, checking that they agree."""
    byte_chars = gpt2_byte_chars()
    byte_of = dict(byte_chars)
    token_at = {i: token for token, i in vocab.items()}

    def as_bytes(token: str, where: str) -> bytes:
        for c in token:
            if c not in byte_of:
                raise TokenizerError(f"{where}: {token!r} holds {c!r} (U+{ord(c):04X}), which is not one of "
                                     f"the 256 characters GPT-2's files spell bytes with")
        return bytes(byte_of[c] for c in token)

    ranks: dict[bytes, int] = {}
    for i, (c, b) in enumerate(byte_chars):
        if vocab.get(c) != i:
            found = f"the file gives id {i} to {token_at[i]!r}" if i in token_at else f"the file has no id {i}"
            raise TokenizerError(
                f"{vocab_file} is not in GPT-2's byte order: ids 0-255 must be the 256 byte tokens in GPT-2's "
                f"order, and the first that disagrees is id {i}, which should be {c!r} (byte 0x{b:02x}); "
                f"{found}, and {c!r} " + (f"has id {vocab[c]}" if c in vocab else "is missing") + f". {EOT} has id {vocab[EOT]}. Vocabularies that put "
                f"special tokens first (Hugging Face's `tokenizers` does) must be renumbered: the 256 bytes, then "
                f"one token per line of merges.txt in order, then {EOT}"
            )
        ranks[bytes([b])] = i
    for rank, (line, left, right) in enumerate(merges, start=len(ranks)):
        where = f"{merges_file}, line {line}"
        for part in (left, right):
            if as_bytes(part, where) not in ranks:
                raise TokenizerError(f"{where} joins {part!r}, which no byte or earlier line makes")
        token = left + right
        if vocab.get(token) != rank:
            given = f"gives it id {vocab[token]}" if token in vocab else "has no such token"
            raise TokenizerError(
                f"{where} merges {left!r} + {right!r} into {token!r}; as merge number {rank - 255} it must make id "
                f"{rank}, but {vocab_file} {given}. The n-th merge's result must have id 255 + n"
            )
        ranks[as_bytes(token, where)] = rank  # never seen before: vocab.json keys are unique and this id is `rank`
    others = sorted((i, t) for t, i in vocab.items() if i >= len(ranks) and t != EOT)
    if others:
        i, token = others[0]
        raise TokenizerError(
            f"{vocab_file} has {len(others)} {'entry' if len(others) == 1 else 'entries'} that no byte or merge "
            f"makes, the first {token!r} (id {i}). "
            f"A GPT-2 vocabulary is the 256 bytes, one token per merge and {EOT}; drop the others"
        )
    if vocab[EOT] != len(ranks):
        raise TokenizerError(f"{vocab_file}: {EOT} has id {vocab[EOT]}; after 256 bytes and {len(merges)} merges "
                             f"it must be the next id, {len(ranks)}")
    return ranks


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
