"""Every lesson is a chapter: a percent-format script that opens as a notebook, and runs as one in --quick
mode, writing finite, sane results; run as a script it writes its chapter page."""

import json
import math
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minitune.course.report import percent_cells

sys.path.insert(0, str(Path(__file__).parent))
from lesson_shape import shape  # noqa: E402

LESSONS = sorted((Path(__file__).resolve().parents[2] / "lessons").glob("[0-9][0-9]_*.py"))
METRICS = ("accuracy", "f1", "pass@1", "exact", "recall")  # measures that are shares: between 0 and 1


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


def check_results(results: dict, number: int) -> None:
    assert results["quick"] is True and results["lesson"] == number
    assert results["tables"] and results["claims"]
    assert all(c["verdict"] and c["line"] for c in results["claims"])
    values = list(numbers(results["tables"])) + list(numbers(results["numbers"]))
    assert values and all(math.isfinite(v) for v in values)
    for rows in results["tables"].values():
        for row in rows:
            for key, value in row.items():
                if isinstance(value, float) and any(re.search(rf"(?<![a-z0-9]){re.escape(w)}(?![a-z0-9])", key.lower()) for w in METRICS):
                    assert 0.0 <= value <= 1.0, (key, value)


def test_there_is_a_lesson_per_module():
    assert [p.name[:2] for p in LESSONS] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_a_lesson_reads_as_a_chapter(path):
    """Prose and code alternate from a title cell; the code reports little and the file stays short.
    Catches a lesson that goes back to an essay followed by a report generator."""
    cells = percent_cells(path.read_text())
    assert cells[0]["kind"] == "markdown" and cells[0]["text"].startswith(f"# Lesson {int(path.name[:2])}:")
    assert "**Run:**" in cells[0]["text"] and "minitune/" in cells[0]["text"]  # how to run it, what to read beside it
    kinds = [c["kind"] for c in cells]
    assert kinds.count("markdown") >= 4 and kinds.count("code") >= 4
    assert "def main(" not in path.read_text() and "__main__" not in path.read_text()  # it runs top to bottom
    s = shape(path.read_text())
    assert s["lines"] <= 300 and s["share"] <= 0.35, s


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_lesson_runs_as_a_notebook_in_quick_mode(path, nano_run, tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MINITUNE_RUNS", str(tmp_path / "runs"))  # shared runs go here, not into ./runs
    monkeypatch.setenv("MINITUNE_LESSON_ARGS", f"--quick --base {nano_run} --out {tmp_path / 'out'}")
    notebook = jupytext.read(path)
    assert [c.cell_type for c in notebook.cells][:2] == ["markdown", "code"]
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    check_results(results, int(path.name[:2]))
    shown = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert all(c["line"] in shown for c in results["claims"])  # every verdict is printed where it was made
    assert list((tmp_path / "out").glob("*.png")), "every lesson saves a plot"


def test_a_lesson_run_as_a_script_writes_its_chapter_page(nano_run, tmp_path):
    """The page holds the chapter's prose and code in order, each result under the cell that made it."""
    path = LESSONS[0]
    env = {**os.environ, "MINITUNE_RUNS": str(tmp_path / "runs")}
    env.pop("MINITUNE_LESSON_ARGS", None)
    done = subprocess.run([sys.executable, str(path), "--quick", "--base", str(nano_run), "--out", str(tmp_path / "out"),
                           "--docs", str(tmp_path / "docs")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    page = (tmp_path / "docs" / "01.md").read_text()
    record = json.loads((tmp_path / "docs" / "01.json").read_text())
    assert page.startswith("<!-- written by") and "# Lesson 1: What is fine-tuning?" in page
    lines = [c["line"] for c in record["claims"]]
    assert lines and all(f"- {line}" in page for line in lines) and all(line in done.stdout for line in lines)
    code = [c["text"] for c in percent_cells(path.read_text()) if c["kind"] == "code"]
    assert page.index(code[1]) < page.index(next(iter(record["tables"]))) < page.index(code[2])
    pictures = [p.name for p in (tmp_path / "docs" / "01").glob("*.png")]
    assert pictures and all(f"(01/{name})" in page for name in pictures)
    assert (tmp_path / "out" / "results.json").is_file()
