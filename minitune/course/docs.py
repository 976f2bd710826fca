"""README's "What the lessons show", built from the lessons' own summaries (runs/lessons/NN/summary.md).

    minitune summary                      # print every lesson's summary, in lesson order
    minitune summary --readme README.md   # put them between README's lesson markers
"""

from __future__ import annotations

import json
from pathlib import Path

from minitune.checkpoint import atomic_write
from minitune.errors import ConfigError

README_BEGIN = "<!-- lessons:begin (written by `minitune summary --readme README.md`; do not edit by hand) -->"
README_END = "<!-- lessons:end -->"


def course_summary(lessons_dir: str | Path) -> str:
    """Every lesson's summary.md under lessons_dir (runs/lessons/NN/), in lesson order, and the total time."""
    paths = sorted(Path(lessons_dir).glob("[0-9][0-9]/summary.md"))
    if not paths:
        raise ConfigError(f"no lesson summaries under {lessons_dir}: run the lessons first (python lessons/NN_*.py)")
    seconds = []
    for p in paths:
        results = p.parent / "results.json"
        if results.is_file():
            seconds.append(json.loads(results.read_text()).get("seconds", 0.0))
    total = f"The {len(paths)} lessons took {sum(seconds) / 60:.0f} minutes in all.\n\n" if seconds else ""
    return total + "\n".join(p.read_text() for p in paths)


def update_readme(readme: str | Path, lessons_dir: str | Path) -> None:
    """Replace the text between README's lesson markers with course_summary(lessons_dir)."""
    readme = Path(readme)
    text = readme.read_text()
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1 or text.index(README_BEGIN) > text.index(README_END):
        raise ConfigError(f"{readme} needs one {README_BEGIN!r} line followed by one {README_END!r} line")
    head, rest = text.split(README_BEGIN)
    _, tail = rest.split(README_END)
    new = f"{head}{README_BEGIN}\n{course_summary(lessons_dir)}{README_END}{tail}"
    atomic_write(readme, lambda tmp: Path(tmp).write_text(new))
