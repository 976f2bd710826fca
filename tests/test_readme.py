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


def test_what_the_lessons_show_is_built_from_every_lesson():
    """The section between the markers is `minitune summary` output: one summary per lesson script, each with
    where and how long it ran, none from a --quick run."""
    from minitune.course import README_BEGIN, README_END

    text = README.read_text()
    assert text.count(README_BEGIN) == 1 and text.count(README_END) == 1
    section = text.split(README_BEGIN)[1].split(README_END)[0]
    lessons = sorted(p.name[:2] for p in (README.parent / "lessons").glob("[0-9][0-9]_*.py"))
    headings = re.findall(r"^### Lesson (\d+): .*$", section, flags=re.M)
    assert [f"{int(h):02d}" for h in headings] == lessons
    assert "(--quick)" not in section and section.count("Ran in ") == len(lessons)
