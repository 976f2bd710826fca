"""The course's pages outside the chapters, built from what the lessons' full runs wrote to docs/lessons/.

Each full lesson run writes docs/lessons/NN.md (the chapter with its results) and NN.json (its claims, the
tables it printed, where and how long it ran). From those:

    minitune docs                     # docs/claims.md: every claim of the course and its verdict, by lesson;
                                      # README's headline table, between its markers

Nothing here measures; a page is only ever rebuilt from the numbers a lesson run wrote.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from minitune.checkpoint import atomic_write
from minitune.course.report import VERDICTS, markdown_table
from minitune.course.stats import SeedValues
from minitune.errors import ConfigError

HEADLINE_BEGIN = "<!-- headline:begin (written by `minitune docs` from docs/lessons/01.json; do not edit by hand) -->"
HEADLINE_END = "<!-- headline:end -->"
HEADLINE = (1, "Test scores (0-shot is greedy: the same every seed)")  # the lesson and the table README shows


def lesson_records(docs: str | Path) -> list[dict]:
    """Every lesson's NN.json under docs (docs/lessons/), in lesson order; none from a --quick run."""
    paths = sorted(Path(docs).glob("[0-9][0-9].json"))
    if not paths:
        raise ConfigError(f"no lesson results under {docs}: run the lessons first (python lessons/NN_*.py)")
    records = [json.loads(p.read_text()) for p in paths]
    quick = [f"{r['lesson']:02d}" for r in records if r.get("quick")]
    if quick:
        raise ConfigError(f"lesson results {', '.join(quick)} under {docs} are from --quick runs: run them in full")
    return records


def rows_back(rows: list[dict]) -> list[dict]:
    """A table as results.json keeps it, with its seed summaries made SeedValues again (so they print as
    mean ± sd)."""
    def value(v):
        return SeedValues(tuple(v["values"])) if isinstance(v, dict) and "values" in v else v
    return [{k: value(v) for k, v in row.items()} for row in rows]


def claims_page(records: list[dict]) -> str:
    """docs/claims.md: how many claims each verdict got, then every claim by lesson with its verdict line."""
    verdicts = Counter(c["verdict"] for r in records for c in r["claims"] if c["expect"])
    questions = sum(1 for r in records for c in r["claims"] if not c["expect"])
    total = sum(r["seconds"] for r in records)
    corrected = [c for r in records for c in r["claims"] if c.get("verdict_holm") and c["verdict"] != "not told apart"]
    holm_called, holm_kept = len(corrected), sum(c["verdict_holm"] == c["verdict"] for c in corrected)
    lines = ["<!-- written by `minitune docs` from docs/lessons/NN.json; do not edit by hand -->", "",
             "# What the course claims, and what the lessons measured", "",
             f"{len(records)} lessons, {total / 60:.0f} minutes of runs in all. Of the claims the course and its "
             f"papers make, {', '.join(f'{verdicts[v]} {v}' for v in VERDICTS)}; the lessons also ask "
             f"{questions} questions of their own. A verdict comes from the noise rule (Welch's t over seeds, "
             "p < 0.05; minitune/course/stats.py); *not told apart* means this design could not tell, and each "
             "line gives the smallest gap it could have seen. A lesson tests many claims, so some pass p < 0.05 "
             "by chance; each cited claim's line also gives its verdict after Holm's correction over its "
             f"lesson's cited claims ({holm_kept} of {holm_called} verdicts beyond noise stay so).", ""]
    for r in records:
        stem = f"{r['lesson']:02d}"
        lines += [f"## [Lesson {r['lesson']}: {r['title']}](lessons/{stem}.md)", "",
                  f"_{r['seconds']:.0f} s on {r['machine']}, {r['date']}._", ""]
        lines += [f"- {c['line']}" + (f" After Holm's correction over the lesson's cited claims (p = "
                                      f"{c['holm_p']:.2g}): {c['verdict_holm']}." if c.get("holm_p") is not None else "")
                  for c in r["claims"]] or ["(no claims)"]
        lines.append("")
    return "\n".join(lines)


def headline(records: list[dict]) -> str:
    """README's one table: lesson 1's test scores of prompting and fine-tuning, with where it ran."""
    number, title = HEADLINE
    record = next((r for r in records if r["lesson"] == number), None)
    if record is None or title not in record.get("tables", {}):
        raise ConfigError(f"lesson {number}'s results hold no table {title!r}: run lesson {number} in full")
    return (f"{title}; lesson {number}, {record['seconds'] / 60:.0f} minutes on {record['machine']}, "
            f"{record['date']} ([the chapter](docs/lessons/{number:02d}.md)):\n\n"
            f"{markdown_table(rows_back(record['tables'][title]))}\n\n{course_time(records)}\n")


def course_time(records: list[dict]) -> str:
    """What the runs behind the pages took: every lesson's seconds, the total, and where they ran."""
    total = sum(r["seconds"] for r in records)
    machines = sorted({f"{r['machine']}, {r['date']}" for r in records})
    trained = sum(r["origins"].get("trained", 0) for r in records)
    read = sum(r["origins"].get("read back", 0) for r in records)
    each = ", ".join(f"{r['lesson']}: {r['seconds']:.0f} s" for r in records)
    return (f"The full runs behind the chapters took {total / 60:.0f} minutes in all (lessons {each}) on "
            f"{'; '.join(machines)}. Their {trained + read} fine-tuning runs were {trained} trained and {read} read "
            f"back from the run cache (a run several chapters share trains once; docs/performance.md has the course's "
            f"time with its runs one after another).")


def replace_between(text: str, begin: str, end: str, new: str, name: str) -> str:
    """text with what stands between its one `begin` line and its one `end` line replaced by new."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ConfigError(f"{name} needs one {begin!r} line followed by one {end!r} line")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{new}{end}{tail}"


def build_docs(docs: str | Path = "docs", readme: str | Path = "README.md") -> list[Path]:
    """Write docs/claims.md and README's headline table from docs/lessons/; return the files written."""
    docs, readme = Path(docs), Path(readme)
    records = lesson_records(docs / "lessons")
    claims = docs / "claims.md"
    page = claims_page(records)
    text = replace_between(readme.read_text(), HEADLINE_BEGIN, HEADLINE_END, headline(records), str(readme))
    atomic_write(claims, lambda tmp: Path(tmp).write_text(page))
    atomic_write(readme, lambda tmp: Path(tmp).write_text(text))
    return [claims, readme]
