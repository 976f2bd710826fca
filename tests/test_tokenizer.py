"""Byte-level BPE: the trainer's merges, tiktoken's file format, the built-in vocabulary, GPT-2's files."""

import json
from collections import Counter

import pytest
import tiktoken
import tiktoken.load
from hypothesis import given, settings
from hypothesis import strategies as st

from minitune.errors import TokenizerError
from minitune.tokenizer import (
    BUILTIN_VOCAB_SIZE, EOT, encoding_from_ranks, get_tokenizer, read_ranks, train_bpe, word_counts, write_ranks,
)


def test_trainer_learns_the_expected_merges():
    # words: "abab" once, " abab" once. Pair counts: (a,b) 4, (b,a) 2, (' ',a) 1 -> merge "ab" first;
    # then (ab,ab) 2 -> "abab"; then nothing repeats, so training stops early.
    ranks = train_bpe("abab abab", vocab_size=300)
    learned = sorted(((r, t) for t, r in ranks.items() if r >= 256))
    assert learned == [(256, b"ab"), (257, b"abab")]
    enc = encoding_from_ranks("t", ranks)
    assert enc.encode("abab abab") == [257, 32, 257]
    assert enc.eot_token == 258


def test_ties_break_to_the_lowest_token_ids():
    # every pair occurs twice; (a,b) = (97, 98) has the lowest ids
    ranks = train_bpe(Counter({"ab": 2, "cd": 2}), vocab_size=258)
    assert ranks[b"ab"] == 256 and b"cd" not in ranks


def test_trainer_stops_at_vocab_size():
    ranks = train_bpe("the cat sat on the mat with the hat " * 20, vocab_size=260)
    assert len(ranks) == 259  # one id left for <|endoftext|>


def test_pretokenisation_keeps_leading_spaces():
    assert word_counts("Hi there, hi there!") == Counter({"Hi": 1, " there": 2, ",": 1, " hi": 1, "!": 1})


def test_ranks_file_round_trip(tmp_path):
    ranks = train_bpe("hello world, hello there, hello again", vocab_size=270)
    write_ranks(ranks, tmp_path / "r.tiktoken")
    assert read_ranks(tmp_path / "r.tiktoken") == ranks
    # tiktoken's own reader agrees with ours
    assert tiktoken.load.load_tiktoken_bpe(str(tmp_path / "r.tiktoken")) == ranks


def test_builtin_tokenizer():
    enc = get_tokenizer("minitune")
    assert enc.n_vocab == BUILTIN_VOCAB_SIZE
    assert enc.eot_token == BUILTIN_VOCAB_SIZE - 1 == enc.encode(EOT, allowed_special="all")[0]
    words = "The market in the town opened early"
    assert len(enc.encode(words)) <= len(words.split()) + 2  # common words are single tokens


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_on_any_unicode(s):
    enc = get_tokenizer("minitune")
    assert enc.decode(enc.encode_ordinary(s)) == s


def test_gpt2_unavailable_says_how_to_provide_it(monkeypatch):
    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(TokenizerError, match="TIKTOKEN_CACHE_DIR"):
        get_tokenizer("gpt2")


def gpt2_byte_chars() -> dict[int, str]:
    """GPT-2's files write each byte as a printable stand-in: printable non-space bytes as themselves,
    the other 68 as chr(256), chr(257), ... in byte order (a space becomes 'Ġ')."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def test_gpt2_from_a_checkpoint_folder(tmp_path):
    # A small vocabulary in GPT-2's layout: the 256 bytes in GPT-2's order, then two merges.
    chars = gpt2_byte_chars()
    order = sorted(range(256), key=lambda b: ord(chars[b]))
    vocab = {chars[b]: i for i, b in enumerate(order)}
    vocab.update({"he": 256, "\u0120he": 257, EOT: 258})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nh e\n\u0120 he\n", encoding="utf-8")
    enc = get_tokenizer(str(tmp_path))
    assert enc.encode("he he") == [256, 257]
    assert enc.eot_token == 258
    assert enc.decode(enc.encode("hello, world")) == "hello, world"


def test_gpt2_folder_missing_files(tmp_path):
    with pytest.raises(TokenizerError, match="vocab.json"):
        get_tokenizer(str(tmp_path))


def test_unknown_tokenizer_name():
    with pytest.raises(TokenizerError, match="unknown tokenizer"):
        get_tokenizer("bert")


def test_builtin_vocabulary_rebuilds_byte_for_byte(tmp_path):
    from minitune.tokenizer import BUILTIN_RANKS, build_builtin_tokenizer

    build_builtin_tokenizer(tmp_path / "rebuilt.tiktoken")
    assert (tmp_path / "rebuilt.tiktoken").read_bytes() == BUILTIN_RANKS.read_bytes()
