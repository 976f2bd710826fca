"""How much of a lesson's code reports rather than teaches, counted with Python's ast.

A lesson's code lines are the lines of its statements (comments, blank lines and markdown cells are
prose, not code). A simple statement *reports* when it only shapes output: it calls one of the
harness's printing helpers (table, claim, note, plot, record, finish), a plotting or formatting helper,
computes a p-value or a spread for a sentence, or builds text (an f-string,
strings joined) or the rows of a table (dicts). Everything else (loading a base,
applying a strategy, training, evaluating, the loops and functions around them) teaches. A compound
statement (for, if, def, with) is split: each statement inside is counted, and its header goes with
the larger side of its body.

Run as a script to print every lesson's figures:  python tests/course/lesson_shape.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPORTING_CALLS = {
    "table", "claim", "note", "plot", "record", "finish", "conclude", "section", "summary",  # the harness's output
    "bar_groups", "bar_seeds", "plot_seeds", "plot_curves", "savefig", "subplots",          # plots
    "human_bytes", "print", "format", "join", "markdown_table", "format_table", "and_list", "plain", "p_text",
    "differs", "log_differs", "proportions", "best_of",                                      # p-values
}
LESSONS = Path(__file__).resolve().parents[2] / "lessons"


def _called(node: ast.AST) -> set[str]:
    names = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            names.add(f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else "")
    return names


PLUMBING = {"append", "extend", "items", "keys", "values", "get", "len", "max", "min", "round", "dict", "list", "tuple",
            "zip", "enumerate", "range", "sorted", "next", "index", "str", "float", "int", "sum", "set", "isinstance",
            "upper", "lower", "strip", "replace", "split", "abs", ""}  # calls that compute nothing a lesson teaches


def _reports(stmt: ast.stmt) -> bool:
    """True when a simple statement only shapes output."""
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return False
    called = _called(stmt)
    if called & REPORTING_CALLS:
        return True
    if called - PLUMBING:
        return False  # it runs or measures something (a row that holds a measurement is the measurement)
    for n in ast.walk(stmt):
        if isinstance(n, ast.JoinedStr):
            return True
        if isinstance(n, (ast.Dict, ast.DictComp)) or isinstance(n, ast.BinOp) and any(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in (n.left, n.right)):
            return True  # the rows of a table; text put together
    return False


def _lines(stmt: ast.stmt) -> set[int]:
    return set(range(stmt.lineno, stmt.end_lineno + 1))


def _classify(body: list[ast.stmt], teach: set[int], report: set[int]) -> None:
    for stmt in body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            teach |= _lines(stmt)  # a docstring
            continue
        inner = [b for field in ("body", "orelse", "finalbody") for b in getattr(stmt, field, []) or []]
        inner += [b for h in getattr(stmt, "handlers", []) for b in h.body]
        if inner and not isinstance(stmt, ast.expr):
            sub_teach, sub_report = set(), set()
            _classify(inner, sub_teach, sub_report)
            header = set(range(stmt.lineno, inner[0].lineno)) - sub_teach - sub_report
            (report if len(sub_report) > len(sub_teach) else teach).update(header)
            teach |= sub_teach
            report |= sub_report
        else:
            (report if _reports(stmt) else teach).update(_lines(stmt))


def shape(source: str) -> dict:
    """{'lines': all lines, 'code': code lines, 'reporting': reporting code lines, 'share': reporting / code}."""
    teach, report = set(), set()
    _classify(ast.parse(source).body, teach, report)
    blank_or_comment = {i + 1 for i, line in enumerate(source.splitlines()) if line.strip() in ("",) or
                        line.lstrip().startswith("#")}
    teach, report = teach - blank_or_comment, report - blank_or_comment - teach
    code = len(teach | report)
    return {"lines": len(source.splitlines()), "code": code, "reporting": len(report),
            "share": len(report) / code if code else 0.0}


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or sorted(LESSONS.glob("[0-9][0-9]_*.py"))
    print(f"{'lesson':32} {'lines':>5} {'code':>5} {'reports':>7} {'share':>6}")
    for path in paths:
        s = shape(path.read_text())
        print(f"{path.name:32} {s['lines']:5} {s['code']:5} {s['reporting']:7} {s['share']:6.0%}")
