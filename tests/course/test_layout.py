"""The house shows its two halves: the library never imports the course harness, and no file grows past
what a reader takes in."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "minitune"


def imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_the_library_never_imports_the_course():
    """Catches a library module that reaches into minitune.course (the cache key would no longer cover
    everything a shared run depends on). The command line may load it inside the commands that need it."""
    for path in PACKAGE.rglob("*.py"):
        if PACKAGE / "course" in path.parents:
            continue
        tree = where = ast.parse(path.read_text())
        if path.name == "cli.py":  # only the module level: its handlers import course/ lazily
            where = ast.Module(body=[n for n in tree.body if not isinstance(n, ast.FunctionDef)], type_ignores=[])
        assert not {n for n in imported(where) if n.startswith("minitune.course")}, path


def test_no_source_file_is_over_400_lines():
    for path in list(PACKAGE.rglob("*.py")) + list((ROOT / "lessons").glob("*.py")):
        assert len(path.read_text().splitlines()) <= 400, path
