"""Tests of the fine-tuning tasks: determinism, disjoint splits, QA phrasings, lengths, code, few-shot, JSONL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from minitune.data import build_world, reserved_facts
from minitune.data.jsonl import load_jsonl_task
from minitune.data import pretraining_corpus
from minitune.data.tasks import (DEFAULT_SIZES, EOT, QA_TEMPLATES, SPLITS, TASKS, TEST_TEMPLATE,
                                 TRAIN_TEMPLATES, VALIDATION_TEMPLATE, Example, Task, code_source,
                                 few_shot_prompt, fit_shots, load_task, pick_shots, qa_fact_documents)
from minitune.pretrain import RECIPES
from minitune.errors import ConfigError, DataError
from minitune.tokenizer import get_tokenizer

CONTEXT = 128
SMALL = {"train": 60, "validation": 15, "test": 15}


@pytest.fixture(scope="module")
def enc():
    return get_tokenizer("minitune")


@pytest.fixture(scope="module")
def tasks() -> dict[str, Task]:
    """Every built-in task at its default size, seed 0."""
    return {name: load_task(name) for name in TASKS}


def _all(task: Task) -> tuple[Example, ...]:
    return task.train + task.validation + task.test


def _n_tokens(enc, texts: list[str]) -> list[int]:
    return [len(ids) for ids in enc.encode_ordinary_batch(texts)]


# --- determinism and splits ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TASKS)
def test_same_seed_same_task_other_seed_other_task(name):
    sizes = None if name == "qa" else SMALL
    a = load_task(name, seed=3, sizes=sizes)
    assert a == load_task(name, seed=3, sizes=sizes)
    assert a != load_task(name, seed=4, sizes=sizes)


def test_tasks_identical_across_processes_with_different_hash_seeds():
    small = {"train": 20, "validation": 5, "test": 5}
    here = [load_task(n, seed=1, sizes=small) for n in ("topic", "code", "summarization")] + [load_task("qa", 1)]
    code = ("from minitune.data.tasks import load_task\n"
            f"print(repr([load_task(n, seed=1, sizes={small!r}) for n in ('topic', 'code', 'summarization')]"
            " + [load_task('qa', 1)]))\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": "12345"},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == repr(here)


def test_sizes_and_disjoint_splits(tasks):
    for name, task in tasks.items():
        if name != "qa":
            assert {s: len(task.split(s)) for s in SPLITS} == DEFAULT_SIZES
        prompts = {s: [e.prompt for e in task.split(s)] for s in SPLITS}
        for s, ps in prompts.items():
            assert len(set(ps)) == len(ps), f"{name}/{s} repeats a prompt"
        assert not set(prompts["train"]) & set(prompts["validation"]), name
        assert not set(prompts["train"]) & set(prompts["test"]), name
        assert not set(prompts["validation"]) & set(prompts["test"]), name


def test_test_split_does_not_depend_on_train_size():
    a = load_task("topic", sizes={"train": 30, "validation": 10, "test": 20})
    b = load_task("topic", sizes={"train": 90, "validation": 10, "test": 20})
    assert a.test == b.test and a.validation == b.validation


def test_bad_arguments():
    with pytest.raises(ConfigError):
        load_task("poetry")
    for bad in ({"train": 0}, {"train": 2.5}, {"dev": 10}):
        with pytest.raises(ConfigError):
            load_task("topic", sizes=bad)
    with pytest.raises(ConfigError):
        load_task("qa", sizes={"train": 10})          # fewer than one question per fact
    with pytest.raises(ConfigError):
        load_task("qa", sizes={"test": 10_000})       # more than there are


# --- classification --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sentiment", "topic"])
def test_classes_balanced_and_targets_are_label_words(tasks, name):
    task = tasks[name]
    assert task.kind == "classification" and len(task.labels) >= 2
    for s in SPLITS:
        counts = Counter(e.meta["label"] for e in task.split(s))
        assert set(counts) == set(task.labels)
        assert max(counts.values()) - min(counts.values()) <= 1, (s, counts)
        assert all(e.target == " " + e.meta["label"] for e in task.split(s))


@pytest.mark.parametrize("name", ["sentiment", "topic"])
def test_label_words_encode_distinctly(tasks, enc, name):
    """Label words are several tokens in the built-in vocabulary: scoring must use the whole label."""
    seqs = {w: enc.encode_ordinary(" " + w) for w in tasks[name].labels}
    for w, ids in seqs.items():
        assert enc.decode(ids) == " " + w
        for other, o in seqs.items():   # no label is a prefix of another, so whole-label scores compare
            assert other == w or o[:len(ids)] != ids


# --- lengths ---------------------------------------------------------------------------------------------

def test_zero_shot_examples_fit_the_context(tasks, enc):
    for name, task in tasks.items():
        lengths = _n_tokens(enc, [e.prompt + task.completion(e) for e in _all(task)])
        assert max(lengths) <= 120, (name, max(lengths))


# --- summarization -------------------------------------------------------------------------------------------

def test_summaries_hold_the_key_facts(tasks):
    task = tasks["summarization"]
    assert task.kind == "generation" and task.stop == "\n"
    for e in _all(task):
        assert e.target == " " + e.meta["summary"] and "\n" not in e.target
        assert all(v in e.target for v in e.meta["facts"].values())
        assert set(e.meta["facts"]) == {"who", "what", "where", "when"}


# --- question answering ------------------------------------------------------------------------------------

def test_qa_every_fact_taught_in_train_and_asked_in_new_words(tasks):
    task, facts = tasks["qa"], reserved_facts(build_world(0))
    key = lambda e: (e.meta["subject"], e.meta["relation"])
    assert {key(e) for e in task.train} == {(f.subject, f.relation) for f in facts}
    assert {key(e) for e in task.test} <= {key(e) for e in task.train}
    train_phrasings = {e.meta["phrasing"] for e in task.train}
    train_prompts = {e.prompt for e in task.train}
    for e in task.validation + task.test:
        assert e.meta["phrasing"] not in train_phrasings
        assert e.prompt not in train_prompts
    assert {e.meta["template"] for e in task.train} == set(TRAIN_TEMPLATES)
    assert {e.meta["template"] for e in task.validation} == {VALIDATION_TEMPLATE}
    assert {e.meta["template"] for e in task.test} == {TEST_TEMPLATE}


def test_qa_answers_are_reserved_facts():
    task, facts = load_task("qa", seed=2), reserved_facts(build_world(2))
    by_key = {(f.subject, f.relation): f for f in facts}
    for e in _all(task):
        fact = by_key[(e.meta["subject"], e.meta["relation"])]
        assert e.target == " " + fact.value == " " + e.meta["answer"]
        assert e.meta["fact"] == fact.sentence
    docs = qa_fact_documents(2)
    assert docs == [f.sentence for f in facts]
    assert all(f.value in f.sentence for f in facts)   # the documents hold every answer


def test_qa_templates_cover_every_relation_and_differ():
    relations = {f.relation for f in reserved_facts(build_world(0))}
    assert set(QA_TEMPLATES) == relations
    for rel, templates in QA_TEMPLATES.items():
        assert len(templates) == 5 and len(set(templates)) == 5, rel


# --- code --------------------------------------------------------------------------------------------------

def test_code_prompts_give_the_signature_and_targets_the_body(tasks):
    task = tasks["code"]
    assert task.stop == "\n\n"
    seen = set()
    for e in _all(task):
        comment, signature = e.prompt.split("\n")
        assert comment.startswith("# ") and signature == e.meta["signature"]
        assert signature == f"def {e.meta['fn_name']}({', '.join(e.meta['params'])}):"
        assert e.target.startswith("\n    ") and not e.target.endswith("\n") and "\n\n" not in e.target
        assert task.completion(e).endswith("\n\n")
        inputs, outputs = e.meta["inputs"], e.meta["outputs"]
        assert len(inputs) == 5 and any(0 in args for args in inputs) and any(min(a) < 0 for a in inputs)
        namespace: dict = {}
        exec(code_source(e, e.target), namespace)   # the sources come from our own generator
        fn = namespace[e.meta["fn_name"]]
        assert [fn(*args) for args in inputs] == list(outputs)
        seen.add(e.prompt + e.target)
    assert len(seen) == len(_all(task))


def test_code_prompt_and_body_tokenize_as_the_corpus_does(tasks, enc):
    # the prompt/answer cut falls on a token boundary of the whole function, as the base read it
    for e in _all(tasks["code"])[:300]:
        whole = enc.encode_ordinary(e.prompt + e.target)
        assert enc.encode_ordinary(e.prompt) + enc.encode_ordinary(e.target) == whole


def test_code_source_of_an_answer_without_a_signature_is_the_answer():
    ex = Example("# double x\n", "def d(x):\n    return 2 * x", {"executable": False})
    assert code_source(ex, ex.target) == ex.target


def test_code_evaluation_functions_are_new_to_training(tasks):
    """No validation or test function is a training answer, under any name or description."""
    for seed in (0, 1):
        task = tasks["code"] if seed == 0 else load_task("code", seed=seed)
        trained = {(e.meta["params"], e.target) for e in task.train}
        for e in task.validation + task.test:
            assert (e.meta["params"], e.target) not in trained


def test_no_code_evaluation_item_is_in_the_pretraining_corpus():
    """Nothing a code test or validation item asks or answers is text the tiny base pretrains on.

    The corpus is the one `minitune pretrain --preset tiny` reads (its full size, about 1.5 s to make).
    A solution counts as the complete function, ending with its newline: "return x * 8" is also the
    start of "return x * 8 * 2 + 3", which is another function.
    """
    text = "\x00".join(pretraining_corpus(target_bytes=RECIPES["tiny"]["corpus_bytes"], seed=0))
    for seed in (0, 1, 2):
        task = load_task("code", seed=seed)
        for e in task.validation + task.test:
            description = e.prompt.split("\n")[0] + "\n"
            assert description not in text, (seed, e.prompt)
            assert code_source(e, e.target) + "\n" not in text, (seed, e.prompt)


def test_cut_stops_at_the_stop_string_and_end_of_text(tasks):
    code, qa = tasks["code"], tasks["qa"]
    e = code.test[0]
    assert code.cut(e.target + "\n\n# next\ndef g(x):") == e.target
    assert code.cut(e.target + "\n" + EOT) == e.target
    assert qa.cut(" 6\nQuestion: more") == " 6"
    assert qa.cut(" 6" + EOT + "junk") == " 6"


# --- few-shot prompts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TASKS)
def test_few_shot_prompt_respects_its_budget(tasks, enc, name):
    task = tasks[name]
    longest = max((" " + w for w in task.labels), key=lambda s: len(enc.encode_ordinary(s)), default=None)
    for i, e in enumerate(task.test[:20]):
        shots = pick_shots(task, 4, seed=i, exclude=e)
        answer = longest if task.labels else e.target
        for budget in (60, 90, CONTEXT):
            kept = task.fit_shots(e, shots, enc, budget)
            prompt = task.few_shot_prompt(e, shots, enc, budget)
            assert prompt.endswith(e.prompt) and all(s in shots for s in kept)
            assert [s for s in shots if s in kept] == list(kept)   # order kept
            if kept:
                assert len(enc.encode_ordinary(prompt + answer)) <= budget
        assert len(task.fit_shots(e, shots)) == len(shots)          # no budget: every shot


def test_few_shot_prompt_layout_and_self_exclusion():
    a, b, q = Example("Q: a\nA:", " 1"), Example("Q: b\nA:", " 2"), Example("Q: c\nA:", " 3")
    assert few_shot_prompt(q, [a, b]) == "Q: a\nA: 1\n\nQ: b\nA: 2\n\nQ: c\nA:"
    assert fit_shots(q, [a, q, b]) == (a, b)   # the question itself is never a shot


def test_pick_shots_balanced_for_classification(tasks):
    task = tasks["sentiment"]
    shots = pick_shots(task, 3, seed=5)
    assert sorted(s.meta["label"] for s in shots) == sorted(task.labels)
    assert shots == pick_shots(task, 3, seed=5) and shots != pick_shots(task, 3, seed=6)
    assert all(s in task.train for s in shots)


# --- JSONL -------------------------------------------------------------------------------------------------

def _write(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), "utf-8")
    return path


GOOD = {
    "classification": [{"text": f"text number {i}", "label": ["yes", "no"][i % 2]} for i in range(30)],
    "summarization": [{"document": f"A long document {i}.", "summary": f"Doc {i}."} for i in range(30)],
    "qa": [{"question": f"What is {i} plus one?", "answer": str(i + 1)} for i in range(30)],
    "code": [{"instruction": f"return x plus {i}", "output": f"def f(x):\n    return x + {i}\n"}
             for i in range(29)]
    + [{"instruction": "double x", "input": "x = 3", "output": "def d(x):\n    return 2 * x"}],
}


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_jsonl_good_file(tmp_path, kind):
    task = load_jsonl_task(_write(tmp_path / f"{kind}.jsonl", GOOD[kind]), kind, seed=1)
    assert (len(task.train), len(task.validation), len(task.test)) == (24, 3, 3)
    assert task == load_jsonl_task(tmp_path / f"{kind}.jsonl", kind, seed=1)
    prompts = [e.prompt for e in _all(task)]
    assert len(set(prompts)) == 30
    assert task.kind == ("classification" if kind == "classification" else "generation")
    if kind == "classification":
        assert task.labels == ("no", "yes")
    if kind == "code":
        assert task.stop == "\n\n" and all(e.meta["executable"] is False for e in _all(task))
        e = next(e for e in _all(task) if e.meta["input"])
        assert e.prompt == "# double x\n# Input: x = 3\n" and e.target == "def d(x):\n    return 2 * x"


def test_jsonl_target_with_the_stop_string_stops_at_end_of_text(tmp_path):
    recs = [{"document": f"d{i}", "summary": f"line one\nline {i}"} for i in range(10)]
    task = load_jsonl_task(_write(tmp_path / "s.jsonl", recs), "summarization")
    assert task.stop == EOT and task.completion(task.train[0]) == task.train[0].target


BAD = [  # (records, kind, words the message must hold)
    (GOOD["qa"][:2] + ['{"question": "x", answer: 1}'] + GOOD["qa"][2:], "qa", ["line 3", "JSON"]),
    (GOOD["qa"][:1] + [{"question": "where?"}], "qa", ["line 2", '"answer"', "missing"]),
    (GOOD["classification"][:4] + [{"text": "t", "label": 3}], "classification", ["line 5", '"label"', "string"]),
    (GOOD["summarization"][:2] + [{"document": "  ", "summary": "s"}], "summarization",
     ["line 3", '"document"', "empty"]),
    ([["text", "label"]], "classification", ["line 1", "object"]),
    (GOOD["code"][:3] + [{"instruction": "i", "output": "o", "input": 7}], "code", ["line 4", '"input"']),
    (GOOD["classification"][:5] + [{"text": "t", "label": "very good"}], "classification", ["line 6", '"label"']),
    ([{"text": f"t{i}", "label": "one"} for i in range(5)], "classification", ['"label"', "at least 2"]),
    ([], "qa", ["empty"]),
    (["", "   "], "qa", ["empty"]),
    (GOOD["qa"][:2], "qa", ["too few"]),
]


@pytest.mark.parametrize("records,kind,words", BAD)
def test_jsonl_malformed_file_names_line_and_field(tmp_path, records, kind, words):
    path = _write(tmp_path / "bad.jsonl", records)
    with pytest.raises(DataError) as info:
        load_jsonl_task(path, kind)
    for word in [str(path)] + words:
        assert word in str(info.value)


def test_jsonl_bad_utf8_and_missing_file(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b'{"question": "a", "answer": "b"}\n{"question": "\xff", "answer": "c"}\n')
    with pytest.raises(DataError, match="line 2.*UTF-8"):
        load_jsonl_task(path, "qa")
    with pytest.raises(DataError, match="not found"):
        load_jsonl_task(tmp_path / "nope.jsonl", "qa")
    with pytest.raises(ConfigError):
        load_jsonl_task(path, "poetry")
    with pytest.raises(ConfigError):
        load_jsonl_task(_write(tmp_path / "g.jsonl", GOOD["qa"]), "qa", val_fraction=0.6, test_fraction=0.5)


def test_jsonl_error_on_the_last_line_returns_nothing(tmp_path):
    """The whole file is checked before a task exists: a bad last line still fails the load."""
    path = _write(tmp_path / "late.jsonl", GOOD["qa"] + [{"question": "q"}])
    result = None
    with pytest.raises(DataError, match="line 31"):
        result = load_jsonl_task(path, "qa")
    assert result is None
    assert len(_all(load_jsonl_task(_write(tmp_path / "ok.jsonl", GOOD["qa"]), "qa"))) == 30
