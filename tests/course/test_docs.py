"""The docs builder: docs/claims.md and README's headline table come only from what lesson runs wrote."""

import json

import pytest

from minitune.course.docs import HEADLINE, HEADLINE_BEGIN, HEADLINE_END, build_docs, claims_page, replace_between
from minitune.course.report import Claim
from minitune.course.stats import differs
from minitune.errors import ConfigError


def record(number, claims, tables=None, quick=False, seconds=60.0, origins=None):
    return {"lesson": number, "title": f"Title {number}", "quick": quick, "seconds": seconds, "machine": "m",
            "date": "2026-12-03", "claims": [c.to_dict() for c in claims], "tables": tables or {},
            "origins": origins or {}}


AGREES = Claim("more is better", "Module 1", differs([3.0, 3.1, 3.2], [1.0, 1.1, 1.2], ("a", "b")), "higher")
CONTRADICTS = Claim("less is better", "Paper", differs([3.0, 3.1, 3.2], [1.0, 1.1, 1.2], ("a", "b")), "lower")
QUESTION = Claim("which is higher", "", differs([1.0, 1.2, 1.1], [1.1, 1.0, 1.2], ("a", "b")), None)


def write(docs, *records):
    (docs / "lessons").mkdir(parents=True)
    for r in records:
        (docs / "lessons" / f"{r['lesson']:02d}.json").write_text(json.dumps(r))


def test_the_claims_page_counts_each_verdict_and_lists_every_claim_in_lesson_order():
    page = claims_page([record(1, [AGREES, QUESTION]), record(2, [CONTRADICTS])])
    assert "1 agrees, 1 contradicts, 0 not told apart" in page and "1 questions of their own" in page
    assert page.index("Lesson 1: Title 1") < page.index(AGREES.line()) < page.index("Lesson 2") < page.index(CONTRADICTS.line())
    assert "2 minutes of runs" in page and "(lessons/02.md)" in page


def test_the_claims_page_gives_each_corrected_verdict_and_counts_those_that_stay():
    corrected = record(1, [AGREES, CONTRADICTS])
    corrected["claims"][0] |= {"holm_p": 0.003, "verdict_holm": "agrees"}
    corrected["claims"][1] |= {"holm_p": 0.09, "verdict_holm": "not told apart"}
    page = claims_page([corrected])
    assert "(p = 0.003): agrees." in page and "(p = 0.09): not told apart." in page
    assert "(1 of 2 verdicts beyond noise stay so)" in page


def test_docs_rebuild_the_headline_table_and_nothing_else_in_the_readme(tmp_path):
    number, title = HEADLINE
    rows = [{"task": "qa", "lora FT": {"mean": 0.5, "sd": 0.1, "values": [0.4, 0.5, 0.6], "n": 3}}]
    write(tmp_path / "docs", record(number, [AGREES], {title: rows}, origins={"trained": 5, "read back": 0}),
          record(2, [QUESTION], origins={"trained": 2, "read back": 2}))
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{HEADLINE_BEGIN}\nold table\n{HEADLINE_END}\n\n## after\n")
    build_docs(tmp_path / "docs", readme)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# title") and text.endswith("## after\n")
    assert "| qa | 0.500 ± 0.100 |" in text  # a seed summary prints as mean ± sd again
    assert "took 2 minutes in all (lessons 1: 60 s, 2: 60 s) on m, 2026-12-03" in text
    assert "Their 9 fine-tuning runs were 7 trained and 2 read back" in text
    assert AGREES.line() in (tmp_path / "docs" / "claims.md").read_text()


def test_docs_refuse_quick_runs_missing_results_and_broken_markers(tmp_path):
    with pytest.raises(ConfigError, match="no lesson results"):
        build_docs(tmp_path / "docs", tmp_path / "README.md")
    write(tmp_path / "docs", record(1, [AGREES], quick=True))
    with pytest.raises(ConfigError, match="--quick"):
        build_docs(tmp_path / "docs", tmp_path / "README.md")
    for broken in ("no markers\n", f"{HEADLINE_END}\n{HEADLINE_BEGIN}\n", f"{HEADLINE_BEGIN}\n{HEADLINE_BEGIN}\n{HEADLINE_END}\n"):
        with pytest.raises(ConfigError, match="needs one"):
            replace_between(broken, HEADLINE_BEGIN, HEADLINE_END, "new", "README.md")


def test_a_headline_lesson_without_its_table_is_refused(tmp_path):
    write(tmp_path / "docs", record(HEADLINE[0], [AGREES]))
    readme = tmp_path / "README.md"
    readme.write_text(f"{HEADLINE_BEGIN}\n{HEADLINE_END}\n")
    with pytest.raises(ConfigError, match="hold no table"):
        build_docs(tmp_path / "docs", readme)
    assert not (tmp_path / "docs" / "claims.md").exists()  # nothing half-written
