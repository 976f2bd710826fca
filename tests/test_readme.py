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
