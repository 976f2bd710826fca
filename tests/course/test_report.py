"""How results are shown: a claim's verdict, table entries, and the chapter page built from the cells."""

import pytest

from minitune.course.report import Bytes, Claim, chapter_page, format_table, markdown_table, percent_cells, value_text
from minitune.course.stats import SeedValues, differs

HIGH, LOW, NOISY = [3.0, 3.1, 3.2], [1.0, 1.1, 1.2], [1.0, 3.0, 2.0]


@pytest.mark.parametrize("a, b, expect, verdict", [
    (HIGH, LOW, "higher", "agrees"), (LOW, HIGH, "lower", "agrees"),
    (LOW, HIGH, "higher", "contradicts"), (HIGH, LOW, "lower", "contradicts"),
    (NOISY, LOW, "higher", "not told apart"), (HIGH, LOW, None, "x higher"), (LOW, HIGH, None, "y higher"),
    (NOISY, LOW, None, "not told apart")])
def test_a_verdict_follows_the_noise_rule_and_the_direction_expected(a, b, expect, verdict):
    """Catches a verdict that ignores the direction the source states, or calls a gap within noise either way."""
    claim = Claim("s", "Paper", differs(a, b, ("x", "y")), expect)
    assert claim.verdict == verdict and claim.line().startswith(f"[{verdict}] Paper: s: ")
    assert claim.to_dict()["verdict"] == verdict and claim.to_dict()["line"] == claim.line()


def test_a_line_within_noise_says_what_gap_the_design_could_have_seen():
    line = Claim("s", "", differs(NOISY, LOW, ("x", "y")), "higher").line()
    assert "not told apart by this design" in line and "the smallest gap it detects is" in line


def test_an_unknown_direction_is_refused():
    with pytest.raises(ValueError, match="expect"):
        Claim("s", "", differs(HIGH, LOW), "bigger")


def test_table_entries():
    assert value_text(Bytes(372_224)) == "372.2 kB" and value_text(1_071_872) == "1,071,872"
    assert value_text(0.0004) == "4.00e-04" and value_text(SeedValues((0.5, 0.7))) == "0.600 ± 0.141"
    assert value_text(None) == "" and value_text(True) == "True"
    rows = [{"name": "a", "score": 0.5, "gap": None}, {"name": "bbb", "score": 12.25, "gap": 1.0}]
    text = format_table(rows).splitlines()
    assert text[0].split() == ["name", "score", "gap"] and text[2].startswith("a  ") and text[3].endswith("1.000")
    assert text[2].rstrip().endswith("0.500")  # numbers right-aligned, a missing entry keeps the column numeric
    assert markdown_table(rows).splitlines()[1] == "| --- | ---: | ---: |"


SOURCE = """# %% [markdown]
# # Title
#
# prose
# %%
x = 1
# %% [markdown]
# more prose
# %%
y = 2
"""


def test_a_chapter_page_puts_each_result_under_the_cell_that_made_it():
    cells = percent_cells(SOURCE)
    assert [c["kind"] for c in cells] == ["markdown", "code", "markdown", "code"]
    assert cells[0]["text"] == "# Title\n\nprose" and cells[1]["text"] == "x = 1"
    page = chapter_page(SOURCE, [(10, "- second"), (6, "- first"), (6, "- again"), (99, "lost")], "HEADER")
    assert page.startswith("HEADER\n\n# Title")
    assert page.index("x = 1") < page.index("- first\n- again") < page.index("more prose") < page.index("- second")
    assert page.rstrip().endswith("lost")  # a block from no cell's lines still shows, at the end
