"""Every lesson runs in --quick mode and writes a results file whose numbers are present, finite and sane."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

LESSONS = sorted((Path(__file__).resolve().parent.parent / "lessons").glob("[0-9][0-9]_*.py"))


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def numbers(obj):
    """Every number anywhere in a nested structure of dicts and lists."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from numbers(v)


def test_there_is_a_lesson_per_module():
    assert [p.name[:2] for p in LESSONS] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_runs_quick_and_reports_finite_numbers(path, nano_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINITUNE_RUNS", str(tmp_path / "runs"))  # the shared cells go here, not into ./runs
    module = load(path)
    assert module.__doc__ and "Run" in module.__doc__ and "minitune/" in module.__doc__  # how to read it
    returned = module.main(["--quick", "--base", str(nano_run), "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True and results["lesson"] == int(path.name[:2])
    assert results["tables"] and results["conclusions"]
    summary = (tmp_path / "summary.md").read_text()  # what README's section is built from
    assert summary.startswith(f"### Lesson {results['lesson']}") and all(c in summary for c in results["conclusions"])
    values = list(numbers(results["tables"])) + list(numbers(results["numbers"]))
    assert values and all(math.isfinite(v) for v in values)
    for rows in results["tables"].values():
        for row in rows:
            for key, value in row.items():
                if isinstance(value, float) and any(w in key.lower() for w in ("accuracy", "f1", "pass@1", "exact", "recall")):
                    assert 0.0 <= value <= 1.0, (key, value)
    assert list(tmp_path.glob("*.png")), "every lesson saves a plot"
    assert returned["lesson"] == results["lesson"]
    printed = capsys.readouterr().out
    assert all(sentence in printed for sentence in results["conclusions"])
