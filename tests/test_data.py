"""Tests of the tiny world: determinism, the closed vocabulary, the reserved facts, the corpora, loaders."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from minitune.data import (DOMAIN_JARGON, RESERVED_COMPANY, RESERVED_WORDS, SENTIMENTS, TOPICS,
                           build_world, domain_corpus, load_text_corpus, make_code_item, make_report,
                           make_review, make_topic_text, pretraining_corpus, reserved_facts, split,
                           word_counts)
from minitune.data.corpus import make_document
from minitune.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def big_corpus() -> list[str]:
    """A 2 MB pretraining corpus, generated once for the tests that need size."""
    return pretraining_corpus(target_bytes=2_000_000, seed=0)


@pytest.fixture(scope="module")
def big_words(big_corpus: list[str]) -> set[str]:
    return set(word_counts(big_corpus))


def _digest(docs: list[str]) -> str:
    return hashlib.sha256("\x00".join(docs).encode()).hexdigest()


# --- determinism ---------------------------------------------------------------------------------------

def test_world_is_deterministic_and_seed_dependent():
    assert build_world(0) == build_world(0)
    assert build_world(0) != build_world(1)


def test_corpus_same_seed_same_bytes_and_prefix_stable():
    a, b = pretraining_corpus(n_docs=400, seed=3), pretraining_corpus(n_docs=400, seed=3)
    assert a == b
    assert pretraining_corpus(n_docs=100, seed=3) == a[:100]   # a shorter corpus is a prefix
    assert pretraining_corpus(n_docs=400, seed=4) != a
    assert domain_corpus(n_docs=50, seed=3) == domain_corpus(n_docs=50, seed=3)
    assert domain_corpus(n_docs=50, seed=3) != domain_corpus(n_docs=50, seed=4)


def test_corpus_identical_across_processes_with_different_hash_seeds():
    code = ("from minitune.data import pretraining_corpus, domain_corpus, build_world, reserved_facts\n"
            "import hashlib\n"
            "docs = pretraining_corpus(n_docs=300, seed=7) + domain_corpus(n_docs=50, seed=7)\n"
            "docs += [f.sentence for f in reserved_facts(build_world(7))]\n"
            "print(hashlib.sha256('\\x00'.join(docs).encode()).hexdigest())\n")
    docs = pretraining_corpus(n_docs=300, seed=7) + domain_corpus(n_docs=50, seed=7)
    docs += [f.sentence for f in reserved_facts(build_world(7))]
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                             check=True)
        assert out.stdout.strip() == _digest(docs)


def test_size_arguments():
    assert len(pretraining_corpus(n_docs=17)) == 17
    docs = pretraining_corpus(target_bytes=20_000)
    assert sum(len(d.encode()) for d in docs) >= 20_000
    assert sum(len(d.encode()) for d in docs[:-1]) < 20_000   # stops as soon as the target is reached
    for bad in (0, -5, 2.5):
        with pytest.raises(ConfigError):
            pretraining_corpus(n_docs=bad)
    with pytest.raises(ConfigError):
        make_document(random.Random(0), build_world(0), kind="poem")


# --- reserved facts ------------------------------------------------------------------------------------

def test_reserved_facts_are_well_formed():
    facts = reserved_facts(build_world(0))
    assert 60 <= len(facts) <= 120
    assert len({(f.subject, f.relation) for f in facts}) == len(facts)   # one answer per question
    assert len({f.question for f in facts}) == len(facts)
    for f in facts:
        assert f.value and f.value in f.sentence, f
        assert f.question.endswith("?") and RESERVED_COMPANY in f.question + f.sentence
    assert reserved_facts(build_world(1)) != facts


def test_reserved_facts_absent_from_pretraining(big_corpus, big_words):
    text = "\n".join(big_corpus)
    assert RESERVED_COMPANY not in text
    assert not {w.lower() for w in RESERVED_WORDS} & big_words
    facts = reserved_facts(build_world(0))
    for f in facts:
        assert f.sentence not in text
    staff = {f.subject for f in facts if f.relation == "role"}
    assert staff and not any(name in text for name in staff)


# --- domain corpus -------------------------------------------------------------------------------------

def test_domain_corpus_is_a_distinct_register(big_corpus, big_words):
    jargon = {w.lower() for w in DOMAIN_JARGON}
    assert not jargon & big_words, sorted(jargon & big_words)
    docs = domain_corpus(n_docs=500)
    assert all(jargon & set(word_counts([d])) for d in docs)   # every note carries the register
    assert not set(docs) & set(big_corpus)
    # the register's words are mostly unseen in pretraining, not merely a few
    domain_words = word_counts(docs)
    unseen = sum(c for w, c in domain_words.items() if w not in big_words)
    assert unseen / sum(domain_words.values()) > 0.3


# --- split ---------------------------------------------------------------------------------------------

def test_split_is_disjoint_deduplicated_and_deterministic():
    docs = pretraining_corpus(n_docs=300)
    docs = docs + docs[:50] + ["same", "same"]
    train, val = split(docs, val_fraction=0.2, seed=1)
    assert not set(train) & set(val)
    assert len(train) + len(val) == len(set(docs)) == len(set(train) | set(val))
    assert abs(len(val) - 0.2 * len(set(docs))) <= 1
    assert split(docs, 0.2, seed=1) == (train, val)
    assert split(docs, 0.2, seed=2) != (train, val)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError):
            split(docs, bad)
    with pytest.raises(DataError):
        split(["only", "only"], 0.5)


# --- vocabulary, length, variety -----------------------------------------------------------------------

def test_vocabulary_is_closed_and_modest(big_corpus):
    counts = word_counts(big_corpus)
    print(f"\n2 MB pretraining corpus: {len(big_corpus)} docs, {len(counts)} distinct words")
    assert 500 < len(counts) < 3000
    assert all(d.isascii() for d in big_corpus)


def test_documents_are_short(big_corpus):
    lengths = sorted(len(d) for d in big_corpus)
    assert lengths[int(0.99 * len(lengths))] < 700
    assert lengths[len(lengths) // 2] > 100   # but not trivially short
    assert all(len(d) < 700 for d in domain_corpus(n_docs=1000))


def test_text_is_varied():
    docs = pretraining_corpus(n_docs=5000, seed=1)
    first = [re.split(r"(?<=[.?!:])\s|\n", d, maxsplit=1)[0] for d in docs]
    assert len(set(first)) > 0.5 * len(first)
    # with names and numbers masked, what is left is the template: there must be many of them too
    shapes = {re.sub(r"\b[A-Z][a-z]+\b", "N", re.sub(r"\d+", "0", f)) for f in first}
    assert len(shapes) > 500
    assert len(set(docs)) > 0.98 * len(docs)   # a few one-line code snippets repeat, nothing else


# --- load_text_corpus ----------------------------------------------------------------------------------

def test_load_text_corpus_reads_txt_and_jsonl(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_bytes(b"first doc\nline two\r\n\r\n  \n\nsecond doc\n\n\n")
    assert load_text_corpus(txt) == ["first doc\nline two", "second doc"]
    jl = tmp_path / "c.jsonl"
    jl.write_text(json.dumps({"text": "a b"}) + "\n\n" + json.dumps({"text": "c", "id": 3}) + "\n")
    assert load_text_corpus(str(jl)) == ["a b", "c"]


@pytest.mark.parametrize("name, content, needle", [
    ("empty.txt", b"", "empty"),
    ("blank.txt", b"\n  \n\n", "empty"),
    ("bad.txt", b"fine\nalso fine\n\xff\xfe oops\n", "line 3"),
    ("empty.jsonl", b"\n\n", "empty"),
    ("broken.jsonl", b'{"text": "ok"}\n{"text": "unterminated\n', "line 2"),
    ("notext.jsonl", b'{"text": "ok"}\n{"text": "ok"}\n{"body": "x"}\n', "line 3"),
    ("nonstring.jsonl", b'{"text": 5}\n', "line 1"),
    ("list.jsonl", b'["text"]\n', "line 1"),
])
def test_load_text_corpus_rejects_bad_files(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        load_text_corpus(path)
    assert name in str(e.value) and needle in str(e.value)


def test_load_text_corpus_missing_and_directory(tmp_path):
    with pytest.raises(DataError, match="nope.txt"):
        load_text_corpus(tmp_path / "nope.txt")
    with pytest.raises(DataError):
        load_text_corpus(tmp_path)


# --- code snippets -------------------------------------------------------------------------------------

ALLOWED_NODES = (ast.Module, ast.FunctionDef, ast.arguments, ast.arg, ast.Return, ast.If, ast.BinOp,
                 ast.UnaryOp, ast.Compare, ast.Name, ast.Constant, ast.Load, ast.Add, ast.Sub, ast.Mult,
                 ast.FloorDiv, ast.Mod, ast.USub, ast.Gt, ast.Lt, ast.GtE, ast.LtE, ast.Eq)
WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def _num(word: str) -> int:
    return WORDS[word] if word in WORDS else int(word)


def _read_chain(description: str, x: int) -> int:
    """Compute what a chain description says, reading only its words (independent of the generator)."""
    value = x
    for clause in re.split(r", then | and then | and ", description):
        if m := re.fullmatch(r"add (\w+)(?: to \w+)?", clause):
            value += _num(m[1])
        elif m := re.fullmatch(r"subtract (\w+)(?: from \w+)?", clause):
            value -= _num(m[1])
        elif m := re.fullmatch(r"multiply (?:\w+|it|the result) by (\w+)", clause):
            value *= _num(m[1])
        elif m := re.fullmatch(r"(double|triple) .+", clause):
            value *= 2 if m[1] == "double" else 3
        elif re.fullmatch(r"halve .+, rounding down", clause):
            value //= 2
        elif m := re.fullmatch(r"divide .+ by (\w+), rounding down", clause):
            value //= _num(m[1])
        elif m := re.fullmatch(r"take the remainder of .+ divided by (\w+)", clause):
            value %= _num(m[1])
        elif re.fullmatch(r"square .+", clause):
            value *= value
        else:
            raise AssertionError(f"unreadable clause {clause!r} in {description!r}")
    return value


def test_code_snippets_are_valid_python_that_does_what_they_say():
    rng = random.Random(0)
    inputs = range(-13, 14)
    recipes = set()
    for _ in range(400):
        item = make_code_item(rng)
        recipes.add(item.recipe)
        tree = ast.parse(item.source)
        bad = [type(n).__name__ for n in ast.walk(tree) if not isinstance(n, ALLOWED_NODES)]
        assert not bad, (bad, item.source)
        assert item.document == f"# {item.description}\n{item.source}"
        namespace: dict = {}
        exec(compile(tree, "<snippet>", "exec"), namespace)
        fn = namespace[item.fn_name]
        assert fn.__code__.co_argcount == item.arity == len(item.params)
        pairs = [(a, b) for a in inputs for b in inputs[::3]]
        args_list = [(x,) for x in inputs] if item.arity == 1 else pairs
        for args in args_list:
            assert fn(*args) == item.reference(*args), (item.source, args)
            if item.recipe == "chain":
                assert fn(*args) == _read_chain(item.description, *args), (item.description, args)
    assert recipes >= {"chain", "binary", "pick", "abs", "clamp", "branch", "parity", "test"}


def test_held_out_functions_are_chosen_by_what_they_compute():
    rng = random.Random(1)
    items = [make_code_item(rng) for _ in range(2000)]
    share = sum(item.held_out for item in items) / len(items)
    assert 0.2 < share < 0.3   # one in HELD_OUT_ONE_IN = 4
    for item in items[:200]:
        # another name or another wording of the same function is the same function
        assert dataclasses.replace(item, fn_name="other", description="anything").held_out == item.held_out
    assert all(make_code_item(rng, held_out=True).held_out for _ in range(50))
    assert not any(make_code_item(rng, held_out=False).held_out for _ in range(50))


# --- labelled generators -------------------------------------------------------------------------------

def test_review_labels_are_not_keyword_predictable():
    rng, world = random.Random(0), build_world(0)
    items = [make_review(rng, world) for _ in range(1500)]
    words = [(set(word_counts([t])), label) for t, label in items]
    assert {label for _, label in items} == set(SENTIMENTS)
    assert any("good" in w for w, label in words if label == "negative")
    assert any({"not", "bad"} <= w for w, label in words if label == "positive")
    assert any({"good", "not"} <= w for w, label in words if label == "neutral")
    # "contains good and no not/bad -> positive" is a poor classifier here
    guess = ["positive" if "good" in w and not w & {"not", "bad"} else "other" for w, _ in words]
    hits = sum((g == "positive") == (label == "positive") for g, (_, label) in zip(guess, words))
    assert hits / len(words) < 0.8
    assert make_review(rng, world, sentiment="neutral")[1] == "neutral"
    with pytest.raises(ConfigError):
        make_review(rng, world, sentiment="angry")


def test_reports_state_their_facts_and_summary():
    rng, world = random.Random(0), build_world(0)
    for _ in range(200):
        text, facts, summary = make_report(rng, world)
        day, month = facts["when"].split()
        for key in ("who", "what", "where"):
            assert facts[key] in text, (key, text)
        assert day in text and month in text
        assert summary == f"{facts['who']} {facts['what']} in {facts['where']} on {facts['when']}."


def test_topic_texts_cover_every_topic():
    rng, world = random.Random(0), build_world(0)
    seen = {make_topic_text(rng, world)[1] for _ in range(200)}
    assert seen == set(TOPICS)
    assert make_topic_text(rng, world, topic="food")[1] == "food"
    with pytest.raises(ConfigError):
        make_topic_text(rng, world, topic="music")
