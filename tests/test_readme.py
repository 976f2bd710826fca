"""The code the README shows runs."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_runs(tmp_path, monkeypatch, capsys):
    # load_base() with no path opens the tiny base shipped with the package; nothing is written to runs/
    monkeypatch.setenv("MINITUNE_RUNS", str(tmp_path))
    blocks = python_blocks()
    assert blocks
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    assert "trainable params:" in capsys.readouterr().out


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    command = re.search(r'pip install -e "\.\[dev\]" && python -m pytest -q', README.read_text())
    assert command and command.group(0) in ci


def test_the_readme_reads_in_one_screen_and_its_file_map_is_whole():
    """At most 250 lines; every module of minitune/ is named in the file map (under its folder)."""
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    files = text.split("## Files")[1]
    package = README.parent / "minitune"
    for path in package.rglob("*.py"):
        if not path.name.startswith("__") and path.parent.name != "bench":
            assert path.name in files, path


def test_the_headline_table_is_minitune_docs_output_of_the_kept_chapters():
    """The table between the markers is what `minitune docs` builds from docs/lessons/, which holds a full
    run (not --quick) of every lesson: a chapter page and its results."""
    from minitune.course.docs import HEADLINE_BEGIN, HEADLINE_END, headline, lesson_records

    docs = README.parent / "docs" / "lessons"
    records = lesson_records(docs)  # refuses --quick runs
    lessons = sorted(p.name[:2] for p in (README.parent / "lessons").glob("[0-9][0-9]_*.py"))
    assert [f"{r['lesson']:02d}" for r in records] == lessons
    assert all((docs / f"{n}.md").is_file() for n in lessons)
    section = README.read_text().split(HEADLINE_BEGIN)[1].split(HEADLINE_END)[0]
    assert section == "\n" + headline(records)
