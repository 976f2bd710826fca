"""Your own task from a JSONL file: one JSON object per line, turned into the same `Task` as the built-ins.

    kind            fields                                   prompt -> target
    classification  {"text", "label"}                        "Text: {text}\\nLabel:" -> " {label}"
    summarization   {"document", "summary"}                  "Document: {document}\\nSummary:" -> " {summary}"
    qa              {"question", "answer"}                   "Question: {question}\\nAnswer:" -> " {answer}"
    code            {"instruction", "input"?, "output"}      "# {instruction}\\n# Input: {input}\\n" -> "{output}"

Every required field must be a non-empty string ("input" may be missing or empty). The whole file is
checked before anything is returned, and a bad record stops the load with a `DataError` naming the file,
the line and the field. Code records carry no test inputs, so such a task is scored by exact match or
overlap, not by running the code (`meta["executable"]` is False). A target that contains the usual stop
string (a summary over several lines, code with blank lines) makes the task stop at <|endoftext|> only.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from minitune.data.corpus import _read_utf8
from minitune.data.tasks import EOT, Example, Task
from minitune.errors import ConfigError, DataError

JSONL_KINDS = {
    "classification": ("text", "label"), "summarization": ("document", "summary"),
    "qa": ("question", "answer"), "code": ("instruction", "output"),
}


def _comment(text: str) -> str:
    """Every line of text as a Python comment line."""
    return "".join(f"# {line}".rstrip() + "\n" for line in text.split("\n"))


def _example(kind: str, rec: dict, lineno: int) -> Example:
    """The example a checked record makes."""
    if kind == "classification":
        return Example(f"Text: {rec['text']}\nLabel:", f" {rec['label']}", {"label": rec["label"], "line": lineno})
    if kind == "summarization":
        return Example(f"Document: {rec['document']}\nSummary:", f" {rec['summary']}",
                       {"summary": rec["summary"], "line": lineno})
    if kind == "qa":
        return Example(f"Question: {rec['question']}\nAnswer:", f" {rec['answer']}",
                       {"answer": rec["answer"], "line": lineno})
    inp = rec.get("input", "")
    prompt = _comment(rec["instruction"]) + (_comment(f"Input: {inp}") if inp.strip() else "")
    return Example(prompt, rec["output"].rstrip(), {"instruction": rec["instruction"], "input": inp,
                                                     "executable": False, "line": lineno})


def _check(path: Path, lineno: int, line: str, kind: str) -> dict:
    """The record on this line, or a DataError naming the line and the field that is wrong."""
    where = f"{path}: line {lineno}"
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    optional = ("input",) if kind == "code" else ()
    for name in JSONL_KINDS[kind] + optional:
        if name not in rec:
            if name in optional:
                continue
            need = " and ".join(f'"{f}"' for f in JSONL_KINDS[kind])
            raise DataError(f'{where}: field "{name}" is missing (a {kind} record needs {need})')
        if not isinstance(rec[name], str):
            raise DataError(f'{where}: field "{name}" must be a string, got {type(rec[name]).__name__}')
        if name not in optional and not rec[name].strip():
            raise DataError(f'{where}: field "{name}" is empty')
    if kind == "classification" and re.search(r"\s", rec["label"]):
        raise DataError(f'{where}: field "label" is {rec["label"]!r}: a label must be one word, without spaces')
    return rec


def _split_counts(n: int, val_fraction: float, test_fraction: float, path: Path) -> tuple[int, int]:
    """How many examples go to validation and to test (at least one each for a non-zero fraction)."""
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(f, (int, float)) or not 0.0 <= f < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {f!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}")
    n_val, n_test = (max(1, round(n * f)) if f > 0 else 0 for f in (val_fraction, test_fraction))
    if n - n_val - n_test < 1:
        raise DataError(f"{path}: {n} distinct records are too few to split into train, validation and test")
    return n_val, n_test


def load_jsonl_task(path: str | Path, kind: str, seed: int = 0, val_fraction: float = 0.1,
                    test_fraction: float = 0.1) -> Task:
    """A `Task` from a JSONL file of `kind` records (see the table above), split at random by `seed`."""
    if kind not in JSONL_KINDS:
        raise ConfigError(f"kind must be one of {sorted(JSONL_KINDS)}, got {kind!r}")
    path = Path(path)
    examples: dict[str, Example] = {}   # prompt -> first example with it: a repeated prompt is dropped
    for lineno, line in enumerate(_read_utf8(path).split("\n"), start=1):
        if line.strip():
            ex = _example(kind, _check(path, lineno, line, kind), lineno)
            examples.setdefault(ex.prompt, ex)
    if not examples:
        raise DataError(f"{path}: no records found (the file is empty or blank)")
    labels: tuple[str, ...] = ()
    if kind == "classification":
        labels = tuple(sorted({e.meta["label"] for e in examples.values()}))
        if len(labels) < 2:
            raise DataError(f'{path}: field "label" has {len(labels)} distinct value(s) {labels}; '
                            "classification needs at least 2")
    stop = "\n\n" if kind == "code" else "\n"
    if any(stop in e.target for e in examples.values()):
        stop = EOT   # the usual stop would cut some answers short
    n_val, n_test = _split_counts(len(examples), val_fraction, test_fraction, path)
    order = list(examples.values())
    random.Random(f"jsonl:{seed}").shuffle(order)
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return Task(path.stem, "classification" if labels else "generation", tuple(train), tuple(val),
                tuple(test), labels=labels, stop=stop)
