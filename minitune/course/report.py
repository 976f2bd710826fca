"""How a lesson's results are shown: tables, claims with their verdicts, and the chapter page in docs/.

A lesson states a claim in one call, and this module words it, so no lesson chooses between phrasings:

    claim = Claim("fine-tuning beats prompting (qa)", "Module 1", differs(lora, prompted, ("LoRA", "prompted")),
                  expect="higher")
    claim.line()   # '[agrees] Module 1: fine-tuning beats prompting (qa): LoRA (0.108) is higher than ...'

The verdict comes from the noise rule (minitune.course.stats) and the direction the source expects:

    agrees            the gap is beyond noise, in the direction the source says
    contradicts       the gap is beyond noise, the other way
    not told apart    no gap beyond noise: the design cannot tell; the line gives the smallest gap it
                      could have detected, since "not told apart" is not "the same"
    (no expectation)  the lesson asks a question instead: the line says which is higher, or that the
                      design cannot tell them apart

A chapter page (docs/lessons/NN.md) is the lesson's own source, cell by cell: each markdown cell's prose,
each code cell's code, and under it what that cell measured (tables, claim lines, plots).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from minitune.memory import human_bytes
from minitune.course.stats import ALPHA, SeedValues, Comparison, best_of, holm, number_spec

VERDICTS = ("agrees", "contradicts", "not told apart")


@dataclass(frozen=True)
class Claim:
    """What is claimed, who claims it, the measurement that tests it, and the direction expected."""

    statement: str           # what the course or a paper says, in a few words
    source: str              # who says it ("Module 1", "Hu et al. 2021"); "" for the lesson's own question
    comparison: Comparison   # a against b, by the noise rule
    expect: str | None = None  # "higher": a above b; "lower": a below b; None: a question, not a claim

    def __post_init__(self) -> None:
        if self.expect not in (None, "higher", "lower"):
            raise ValueError(f"expect must be 'higher', 'lower' or None, got {self.expect!r}")

    @property
    def verdict(self) -> str:
        """agrees, contradicts or not told apart; for a question: which side is higher, or not told apart."""
        c = self.comparison
        if not c.beyond_noise:
            return "not told apart"
        a_higher = c.mean_a > c.mean_b
        if self.expect is None:
            return f"{c.a if a_higher else c.b} higher"
        return "agrees" if a_higher == (self.expect == "higher") else "contradicts"

    def line(self) -> str:
        """The verdict line the lesson prints."""
        who = f"{self.source}: " if self.source else ""
        return f"[{self.verdict}] {who}{self.statement}: {self.comparison.text()}."

    def to_dict(self) -> dict:
        return {"statement": self.statement, "source": self.source, "expect": self.expect,
                "verdict": self.verdict, "line": self.line(), "comparison": self.comparison.to_dict()}


def correct_cited(claims: list[dict]) -> tuple[str, list[dict]] | None:
    """Holm's correction over the cited claims (those with a source and a direction: what the course or a
    paper says). Each gains `holm_p` and `verdict_holm` (its verdict if the corrected p < ALPHA, else not
    told apart); returns the title and rows of the table that shows them (None: nothing cited)."""
    cited = [c for c in claims if c["source"] and c["expect"]]
    if not cited:
        return None
    for c, p in zip(cited, holm([math.nan if c["comparison"]["p"] is None else c["comparison"]["p"] for c in cited])):
        c["holm_p"] = None if math.isnan(p) else p
        c["verdict_holm"] = c["verdict"] if c["holm_p"] is not None and p < ALPHA else "not told apart"
    called = [c for c in cited if c["verdict"] != "not told apart"]
    kept = sum(c["verdict_holm"] == c["verdict"] for c in called)
    return (f"Holm's correction over this lesson's {len(cited)} cited claims: {kept} of the {len(called)} verdicts "
            "beyond noise stay beyond it", [{"claim": f"{c['source']}: {c['statement']}", "p": c["comparison"]["p"],
                                              "Holm p": c["holm_p"], "verdict": c["verdict"],
                                              "after Holm": c["verdict_holm"]} for c in cited])


# --- tables -------------------------------------------------------------------------------------------------

def format_table(rows: list[dict]) -> str:
    """Rows of dicts as aligned text columns: numbers right-aligned, text left."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    texts = [[value_text(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in texts)) for i, c in enumerate(cols)]
    numeric = [all(r.get(c) is None or isinstance(r.get(c), (int, float, SeedValues)) for r in rows) for c in cols]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(row) for row in texts])


def markdown_table(rows: list[dict]) -> str:
    """Rows of dicts as a markdown table (numbers right-aligned)."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    numeric = [all(r.get(c) is None or isinstance(r.get(c), (int, float, SeedValues)) for r in rows) for c in cols]
    escape = lambda v: value_text(v).replace("|", "\\|")  # noqa: E731
    head = "| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |"
    rule = "| " + " | ".join("---:" if num else "---" for num in numeric) + " |"
    return "\n".join([head, rule] + ["| " + " | ".join(escape(r.get(c)) for c in cols) + " |" for r in rows])


class Bytes(int):
    """A count of bytes: an int everywhere (results.json keeps the number), shown as 372.2 kB in a table."""


def value_text(v) -> str:
    """One table entry as text: bytes in decimal units, thousands separators for counts, number_spec for
    floats, SeedValues as mean ± sd."""
    if isinstance(v, Bytes):
        return human_bytes(v)
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else format(v, number_spec(v))
    return str(v)


def seeds_note(rows: list[dict]) -> str | None:
    """'(entries with ±: mean ± sample sd over 3 seeds)' when a table holds SeedValues, else None."""
    counts = sorted({v.n for r in rows for v in r.values() if isinstance(v, SeedValues)})
    if not counts:
        return None
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"(entries with ±: mean ± sample sd over {seeds} seeds)"


# --- the chapter page ---------------------------------------------------------------------------------------

CELL_MARK = re.compile(r"^# %%(?P<markdown>\s*\[markdown\])?")


def percent_cells(source: str) -> list[dict]:
    """A percent-format script's cells, in order: {"kind": "markdown" | "code", "first": line, "last": line,
    "text": ...} (lines 1-based; markdown text without its '# ' prefixes; code stripped of blank edges)."""
    lines = source.splitlines()
    starts = [i for i, line in enumerate(lines) if CELL_MARK.match(line)]
    if not starts or starts[0] != 0:
        starts = [0] + starts  # whatever stands before the first marker is a code cell of its own
    cells = []
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        mark = CELL_MARK.match(lines[start])
        body = lines[start + 1:end] if mark else lines[start:end]
        if mark and mark.group("markdown"):
            text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body).strip()
            kind = "markdown"
        else:
            text, kind = "\n".join(body).strip("\n"), "code"
        if text.strip():
            cells.append({"kind": kind, "first": start + 1, "last": end, "text": text})
    return cells


def chapter_page(source: str, blocks: list[tuple[int, str]], header: str) -> str:
    """The chapter as markdown: each cell of `source` with the output blocks (line, markdown) whose line
    falls inside it right under it; blocks from no cell's lines go at the end."""
    parts, placed = [header], set()

    def add(text: str) -> None:
        if text.startswith("- ") and parts[-1].startswith("- "):
            parts[-1] += "\n" + text  # claim lines one after another make one list
        else:
            parts.append(text)

    for cell in percent_cells(source):
        parts.append(cell["text"] if cell["kind"] == "markdown" else f"```python\n{cell['text']}\n```")
        for i, (line, text) in enumerate(blocks):
            if cell["first"] <= line <= cell["last"]:
                add(text)
                placed.add(i)
    for text in (text for i, (_, text) in enumerate(blocks) if i not in placed):
        add(text)
    return "\n\n".join(parts) + "\n"


def and_list(items: Sequence[str], empty: str = "none") -> str:
    """'a', 'a and b', 'a, b and c' (or `empty`): names in a sentence. Items that hold commas themselves
    (a name with its numbers) are joined by semicolons: 'a (1, 2); b (3, 4)'."""
    items = list(items)
    if not items:
        return empty
    if any("," in item for item in items):
        return "; ".join(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def best_per_task(runs: dict, tasks: Sequence[str], names: Sequence[str], key: str = "score") -> tuple[dict, str]:
    """For each task, the strategy with the best mean `key` and those the noise rule cannot tell from it
    (runs: {(task, strategy): SeedRuns}): the stats.Best per task, and the sentence that says it."""
    best = {t: best_of({s: runs[(t, s)][key] for s in names}) for t in tasks}
    sentence = "Best test score per task, with every strategy the noise rule cannot tell from it: " + "; ".join(
        f"{t}: {b.best} ({runs[(t, b.best)][key].mean:.3f})"
        + (f", tied with {and_list([s for s in b.tied if s != b.best])}" if len(b.tied) > 1 else ", ahead of all")
        for t, b in best.items()) + "."
    return best, sentence
