"""Byte-level BPE: the trainer's merges, tiktoken's file format, the built-in vocabulary, GPT-2's files."""

import json
from collections import Counter

import pytest
import tiktoken
import tiktoken.load
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2_files import write_gpt2_files

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


def test_gpt2_from_a_checkpoint_folder(tmp_path):
    write_gpt2_files(tmp_path, [("h", "e"), ("\u0120", "he")])
    enc = get_tokenizer(str(tmp_path))
    assert enc.name == "gpt2"  # the name a base's fingerprint records
    assert enc.encode("he he") == [256, 257]
    assert enc.eot_token == 258
    assert enc.decode(enc.encode("hello, world")) == "hello, world"


def test_files_replaced_in_the_same_folder_are_read_as_they_are_now(tmp_path):
    # A newer checkpoint copied over an older one: the second load must see the new vocabulary.
    write_gpt2_files(tmp_path, [("h", "e")])
    assert get_tokenizer(str(tmp_path)).encode("hell") == [256, ord("l") - 33, ord("l") - 33]
    write_gpt2_files(tmp_path, [("l", "l"), ("e", "ll")])
    enc = get_tokenizer(str(tmp_path))
    assert enc.n_vocab == 259
    assert enc.encode("hell") == [ord("h") - 33, 257]


def test_gpt2_ranks_match_tiktokens_own_loader(tmp_path):
    # tiktoken's loader (read here from a fresh path, so its cache cannot answer) is the reference reading.
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("\u0120", "w"), ("o", "r"), ("\u0120w", "or"), ("\u010a", "\u010a")]
    write_gpt2_files(tmp_path, merges)
    ours = get_tokenizer(str(tmp_path))
    theirs = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(tmp_path / "merges.txt"), str(tmp_path / "vocab.json"))
    assert ours._mergeable_ranks == theirs
    text = "hello world\n\nhell or worn"
    assert ours.decode(ours.encode(text)) == text and ours.encode(" world")[0] == 261


def _bad(tmp_path, match):
    with pytest.raises(TokenizerError, match=match) as e:
        get_tokenizer(str(tmp_path))
    return str(e.value)


def test_special_tokens_first_is_named_with_the_first_disagreeing_entry(tmp_path):
    # What Hugging Face's tokenizers writes by default: the special token takes id 0, the bytes follow.
    vocab = write_gpt2_files(tmp_path, [("h", "e")])
    vocab = {EOT: 0, **{t: i + 1 for t, i in vocab.items() if t != EOT}}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    message = _bad(tmp_path, "vocab.json is not in GPT-2's byte order")
    assert "id 0, which should be '!' (byte 0x21)" in message
    assert f"gives id 0 to '{EOT}'" in message and "'!' has id 1" in message and f"{EOT} has id 0" in message


def test_a_missing_byte_token_is_named(tmp_path):
    vocab = write_gpt2_files(tmp_path, [("h", "e")])
    del vocab["!"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    _bad(tmp_path, r"id 0, which should be '!' \(byte 0x21\); the file has no id 0, and '!' is missing")


def test_merges_without_a_header_or_with_windows_line_ends_keep_every_merge(tmp_path):
    # Catches: dropping the first line whatever it holds (tiktoken's own loader does), or keeping the "\r".
    write_gpt2_files(tmp_path, [("h", "e"), ("l", "l")])
    (tmp_path / "merges.txt").write_text("h e\nl l\n", encoding="utf-8")
    assert get_tokenizer(str(tmp_path)).encode("hell") == [256, 257]
    (tmp_path / "merges.txt").write_bytes(b"#version: 0.2\r\nh e\r\nl l\r\n")
    assert get_tokenizer(str(tmp_path)).encode("hell") == [256, 257]


def test_an_unreadable_file_is_named(tmp_path):
    write_gpt2_files(tmp_path, [("h", "e")])
    (tmp_path / "vocab.json").write_bytes(b'{"\xff": 0}')
    _bad(tmp_path, "cannot read .*vocab.json: 'utf-8' codec")


def test_a_merge_whose_token_has_another_id(tmp_path):
    vocab = write_gpt2_files(tmp_path, [("h", "e"), ("l", "l")])
    vocab["he"], vocab["ll"] = vocab["ll"], vocab["he"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    message = _bad(tmp_path, r"merges.txt, line 2 merges 'h' \+ 'e' into 'he'")
    assert "as merge number 1 it must make id 256" in message and "gives it id 257" in message


@pytest.mark.parametrize("line, match", [
    ("h e x", r"line 3: 'h e x' is not a merge"),
    ("he", r"line 3: 'he' is not a merge"),
    ("h  e", r"line 3: 'h  e' is not a merge"),
    ("h \u00e9\u00e9\u00e9", r"line 3 joins 'ééé', which no byte or earlier line makes"),
    ("h \u4e00", r"line 3: '一' holds '一' \(U\+4E00\), which is not one of the 256 characters"),
    ("l l", r"line 3 merges 'l' \+ 'l' into 'll'; as merge number 2 it must make id 257, but .* has no such token"),
    ("h e", r"line 3 merges 'h' \+ 'e' into 'he'; as merge number 2 it must make id 257.*gives it id 256"),
])
def test_a_bad_merges_line_is_named(tmp_path, line, match):
    write_gpt2_files(tmp_path, [("h", "e")])
    with open(tmp_path / "merges.txt", "a", encoding="utf-8") as f:
        f.write(line + "\n")
    _bad(tmp_path, match)


def test_a_missing_end_of_text_token(tmp_path):
    vocab = write_gpt2_files(tmp_path, [("h", "e")])
    del vocab[EOT]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    _bad(tmp_path, f"vocab.json has no {EOT} entry")


@pytest.mark.parametrize("edit, match", [
    (lambda v: {**v, "<pad>": 300}, r"1 entry that no byte or merge makes, the first '<pad>' \(id 300\)"),
    (lambda v: {**v, "<pad>": 257, EOT: 258}, r"1 entry that no byte or merge makes, the first '<pad>' \(id 257\)"),
    (lambda v: {**v, "<pad>": 300, "<s>": 301}, r"2 entries that no byte or merge makes, the first '<pad>'"),
    (lambda v: {**v, EOT: 300}, f"{EOT} has id 300; after 256 bytes and 1 merges it must be the next id, 257"),
    (lambda v: {**v, "he": 3}, r"id 3 is given to both '\$' and 'he'"),
    (lambda v: {**v, "he": "256"}, r"the id of 'he' must be a whole number >= 0, not '256'"),
    (lambda v: [1, 2], "must hold one JSON object from token to id, not a list"),
])
def test_a_bad_vocabulary_is_named(tmp_path, edit, match):
    vocab = write_gpt2_files(tmp_path, [("h", "e")])
    (tmp_path / "vocab.json").write_text(json.dumps(edit(vocab)), encoding="utf-8")
    _bad(tmp_path, match)


def test_a_vocabulary_with_a_repeated_token_or_broken_json(tmp_path):
    write_gpt2_files(tmp_path, [("h", "e")])
    text = (tmp_path / "vocab.json").read_text(encoding="utf-8")
    (tmp_path / "vocab.json").write_text(text[:-1] + ', "he": 9}', encoding="utf-8")
    _bad(tmp_path, r"the token 'he' is listed twice \(ids 256 and 9\)")
    (tmp_path / "vocab.json").write_text(text[:-1], encoding="utf-8")
    _bad(tmp_path, "vocab.json is not valid JSON")


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
