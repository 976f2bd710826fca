"""The noise rule (minitune.course.stats): the t distribution against closed forms, tables and scipy; Welch's test
against a simulation of its own false-positive rate; the edge cases the rule decides; best_of."""

import json
import math
import random
import statistics

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minitune.errors import ConfigError
from minitune.course.stats import (ALPHA, SeedValues, best_of, betainc, differs, holm, normal_two_sided_p, proportions,
                            t_cdf, t_two_sided_p)

finite = st.floats(-1e3, 1e3, allow_nan=False)


# --- the t distribution ----------------------------------------------------------------------------------

@given(st.floats(-1e4, 1e4, allow_nan=False))
def test_t_cdf_with_one_and_two_degrees_of_freedom_matches_the_closed_forms(t):
    # df = 1 is the Cauchy distribution; df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
    # Catches: a wrong continued-fraction coefficient or the symmetry flip I_x(a,b) = 1 - I_{1-x}(b,a) left out.
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


@pytest.mark.parametrize("df, t, p", [
    # two-sided critical values from any printed t table: P(|T_df| >= t) = p
    (1, 12.706, 0.05), (2, 4.303, 0.05), (5, 2.571, 0.05), (10, 2.228, 0.05), (30, 2.042, 0.05),
    (3, 5.841, 0.01), (10, 3.169, 0.01), (20, 1.725, 0.10),
])
def test_two_sided_p_matches_the_t_table(df, t, p):
    # Catches: a one-sided p (half these values) and a normal tail used in place of the t's (0.05 -> 1e-36 at df 1).
    assert t_two_sided_p(t, df) == pytest.approx(p, rel=2e-3)
    assert t_two_sided_p(-t, df) == t_two_sided_p(t, df)


@given(st.floats(-8, 8, allow_nan=False))
def test_t_tends_to_the_normal_as_df_grows(t):
    assert t_two_sided_p(t, 1e7) == pytest.approx(normal_two_sided_p(t), abs=1e-6)


@given(st.floats(0.05, 50), st.floats(0.05, 50), st.floats(1e-6, 1 - 1e-6))
def test_incomplete_beta_is_a_distribution_function_with_its_symmetry(a, b, x):
    # x kept away from 0 and 1, where 1 - x itself rounds (1 - 1e-45 is 1.0)
    v = betainc(a, b, x)
    assert 0.0 <= v <= 1.0
    assert v + betainc(b, a, 1 - x) == pytest.approx(1.0, abs=1e-9)


def test_incomplete_beta_with_b_one_is_a_power():
    # I_x(a, 1) = x^a, a closed form far from the t's b = 1/2
    for a in (0.3, 1.0, 2.5, 40.0):
        for x in (0.01, 0.3, 0.9):
            assert betainc(a, 1.0, x) == pytest.approx(x ** a, rel=1e-10)


def test_against_scipy_where_it_is_installed():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for _ in range(300):
        df, t = rng.choice([1, 2.5, 4, 9, 40, 500]), rng.gauss(0, 4)
        assert t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), abs=1e-10)
        a = [rng.gauss(0, rng.uniform(0.1, 3)) for _ in range(rng.randint(2, 7))]
        b = [rng.gauss(1, rng.uniform(0.1, 3)) for _ in range(rng.randint(2, 7))]
        ref = scipy_stats.ttest_ind(a, b, equal_var=False)
        assert differs(a, b).p == pytest.approx(ref.pvalue, rel=1e-8)


# --- SeedValues -------------------------------------------------------------------------------------------------

@given(st.lists(finite, min_size=2, max_size=12))
def test_cell_matches_the_statistics_module(values):
    # Catches: the sd divided by n instead of n - 1 (statistics.pstdev), which understates seed noise.
    c = SeedValues(tuple(values))
    assert c.n == len(values)
    assert c.mean == pytest.approx(statistics.fmean(values), abs=1e-9)
    assert c.sd == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-9)
    assert (c.min, c.max) == (min(values), max(values))


def test_cell_of_one_seed_has_no_sd_and_none_of_zero():
    c = SeedValues((0.5,))
    assert math.isnan(c.sd) and c.to_dict()["sd"] is None and str(c) == "0.500"
    with pytest.raises(ConfigError):
        SeedValues(())


# --- Welch's t ---------------------------------------------------------------------------------------------

def test_welch_against_a_worked_example():
    # a: mean 2, variance 1, n 3;  b: mean 5.5, variance 5/3, n 4.
    # se^2 = 1/3 + 5/12 = 3/4, so t = -3.5 / sqrt(3/4);  df = (3/4)^2 / ((1/3)^2 / 2 + (5/12)^2 / 3).
    # Catches: pooled (Student) variance, whose t is -3.5 / sqrt(1.4 * 7/12) = -3.913, and df = n_a + n_b - 2 = 5.
    r = differs([1, 2, 3], [4, 5, 6, 7], ("a", "b"))
    assert r.statistic == pytest.approx(-3.5 / math.sqrt(0.75), rel=1e-12)
    assert r.df == pytest.approx(0.5625 / ((1 / 9) / 2 + (25 / 144) / 3), rel=1e-12)
    assert r.p == pytest.approx(t_two_sided_p(r.statistic, r.df))
    assert r.beyond_noise and r.higher == "b" and r.winner == "b"


def test_welch_degrees_of_freedom_follow_the_noisier_side():
    # With one side constant, all the uncertainty is the other side's: df = its n - 1 (here 4), not n_a + n_b - 2.
    r = differs([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 2.0, 1.5, 0.5])
    assert r.df == pytest.approx(4.0)
    # equal sizes and spreads: df = 2n - 2, and t equals Student's
    r = differs([1, 2, 3], [2, 3, 4])
    assert r.df == pytest.approx(4.0) and r.statistic == pytest.approx(-1 / math.sqrt(2 / 3))


def test_welch_calls_a_true_null_different_about_alpha_of_the_time():
    # Two settings with the same mean, the one with fewer seeds much noisier. A pooled-variance t-test
    # lets the quiet side's variance stand for both, so it calls these different far more often than 5%.
    rng = random.Random(1)
    trials = 4000
    hits = sum(differs([rng.gauss(0, 4) for _ in range(3)], [rng.gauss(0, 1) for _ in range(12)]).beyond_noise
               for _ in range(trials))
    assert 0.02 < hits / trials < 0.10  # Welch is a little liberal at 3 seeds (about 0.067 here); pooled: 0.34


@given(st.lists(finite, min_size=2, max_size=8), st.lists(finite, min_size=2, max_size=8),
       st.floats(-100, 100), st.floats(0.01, 100))
@settings(max_examples=60)
def test_welch_is_antisymmetric_and_ignores_units(a, b, shift, scale):
    r, back = differs(a, b), differs(b, a)
    assert back.p == pytest.approx(r.p, abs=1e-12) and back.statistic == pytest.approx(-r.statistic)
    moved = differs([shift + scale * v for v in a], [shift + scale * v for v in b])
    if math.isfinite(r.statistic) and SeedValues(tuple(a)).sd + SeedValues(tuple(b)).sd > 1e-6:
        assert moved.p == pytest.approx(r.p, abs=1e-6)


def test_edge_cases_decided_by_the_rule():
    one = differs([0.9], [0.1, 0.2, 0.3])
    assert math.isnan(one.p) and not one.beyond_noise and one.winner is None  # one seed: nothing to test against
    same = differs([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert same.p == 1.0 and not same.beyond_noise and same.higher is None
    apart = differs([0.5, 0.5, 0.5], [0.6, 0.6, 0.6])
    assert apart.p == 0.0 and apart.beyond_noise and apart.winner == "B"  # no seed noise at all on either side


def test_the_sentence_follows_the_verdict():
    # The fragment names the higher side first when the gap is beyond noise, and both sides otherwise.
    clear = differs([0.9, 0.91, 0.92], [0.5, 0.52, 0.51], ("lora", "full"))
    assert clear.text().startswith("lora (0.910) is higher than full") and clear.winner == "lora"
    unclear = differs([0.5, 0.7, 0.6], [0.55, 0.65, 0.6], ("lora", "full"))
    assert "not told apart" in unclear.text() and unclear.winner is None
    assert unclear.to_dict()["beyond_noise"] is False and clear.to_dict()["p"] == pytest.approx(clear.p)


# --- two proportions ----------------------------------------------------------------------------------------

def test_two_proportions_against_a_worked_example():
    # 160/200 against 140/200: pooled 0.75, se = sqrt(0.75 * 0.25 * 2/200), z = 0.1 / se = 2.3094.
    # Catches: the unpooled se (z = 2.325) and a one-sided p (half of this).
    r = proportions(0.8, 200, 0.7, 200, ("a", "b"))
    assert r.statistic == pytest.approx(0.1 / math.sqrt(0.75 * 0.25 * 0.01), rel=1e-12)
    assert r.p == pytest.approx(2 * (1 - statistics.NormalDist().cdf(r.statistic)), rel=1e-9)
    assert r.beyond_noise and r.winner == "a"
    assert not proportions(0.55, 40, 0.50, 40).beyond_noise  # the same gap of 5 points on 40 items is noise


def test_two_proportions_edge_cases():
    assert proportions(1.0, 50, 1.0, 80).p == 1.0  # all right on both sides
    assert proportions(0.0, 50, 0.0, 80).p == 1.0
    with pytest.raises(ConfigError):
        proportions(1.2, 10, 0.5, 10)


# --- best of several settings ---------------------------------------------------------------------------------

def test_best_of_names_the_best_mean_and_what_noise_cannot_separate_from_it():
    cells = {"1e-3": [0.70, 0.72, 0.71], "3e-3": [0.80, 0.79, 0.81], "1e-2": [0.60, 0.85, 0.78]}
    b = best_of(cells)
    assert b.best == "3e-3"
    assert set(b.tied) == {"3e-3", "1e-2"}  # 1e-2 is noisy enough to be within noise; 1e-3 is clearly below
    assert b.comparisons["1e-3"].beyond_noise
    assert best_of({"a": [2.0, 2.1, 2.2], "b": [1.0, 1.1, 1.2]}, higher_is_better=False).best == "b"
    assert best_of({"x": [1.0, 1.0], "y": [1.0, 1.0]}).best == "x"  # an exact tie: the first listed


def test_alpha_is_the_stated_threshold():
    # the verdict flips exactly at ALPHA: a t just past the 5% critical value (df 10) differs, one just short does not
    assert t_two_sided_p(2.229, 10) < ALPHA < t_two_sided_p(2.227, 10)


# --- many claims at once: Holm's correction ----------------------------------------------------------------------

def test_holm_multiplies_the_k_th_smallest_p_by_the_number_left_and_keeps_the_order():
    # By hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> 0.06 (monotone).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.3, 0.6]) == [0.6, 0.6] and holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1
    assert holm([0.02]) == [0.02] and holm([]) == []
    adjusted = holm([0.01, math.nan, 0.02])
    assert math.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.02)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_holm_never_lowers_a_p_and_keeps_the_ranking(ps):
    # Catches: Bonferroni's m x p for all (too strict past the smallest), or a step-down without the running
    # maximum (a larger raw p could then get a smaller adjusted one).
    adjusted = holm(ps)
    assert all(p <= q <= 1 for p, q in zip(ps, adjusted))
    for (p1, q1), (p2, q2) in zip(sorted(zip(ps, adjusted)), sorted(zip(ps, adjusted))[1:]):
        assert q1 <= q2
    m = len(ps)
    assert min(adjusted) == pytest.approx(min(1.0, m * min(ps)))


def test_a_lesson_corrects_its_cited_claims_and_keeps_its_own_questions_out(tmp_path):
    lesson = _lesson(tmp_path)
    strong, weak = SeedValues((1.0, 1.1, 1.05)), SeedValues((0.0, 0.1, 0.05))
    close = SeedValues((0.50, 0.62, 0.55))
    lesson.claim("strong", "Paper A", strong, weak, ("a", "b"))           # p tiny: survives
    lesson.claim("marginal", "Paper B", close, SeedValues((0.38, 0.45, 0.42)), ("a", "b"))  # p 0.036
    lesson.claim("null", "Paper C", close, SeedValues((0.52, 0.60, 0.54)), ("a", "b"))  # not beyond noise
    lesson.claim("a question", "", close, weak, ("a", "b"), expect=None)  # not cited: not corrected
    lesson.finish()  # corrects, then writes results.json
    strong_c, marginal_c, null, question = json.loads((tmp_path / "results.json").read_text())["claims"]
    raw = marginal_c["comparison"]["p"]
    assert raw < ALPHA < 2 * raw  # beyond noise alone, not after doubling
    assert strong_c["verdict_holm"] == "agrees" and marginal_c["verdict_holm"] == "not told apart"
    assert marginal_c["holm_p"] == pytest.approx(2 * raw) and "holm_p" not in question  # second smallest of 3: x 2
    assert null["verdict_holm"] == null["verdict"] == "not told apart"
    assert any(title.startswith("Holm's correction over this lesson's 3 cited claims: 1 of the 2")
               for title in lesson.results["tables"])


# --- what lessons use: seeds, cells in tables, spread in plots -------------------------------------------------

def _lesson(tmp_path):
    from minitune.course.lesson import Lesson

    return Lesson(9, "test", quick=True, device="cpu", base=tmp_path, out=tmp_path)


def test_over_seeds_runs_each_seed_once_and_summarises_each_measure(tmp_path):
    from minitune.course.lesson import QUICK_SEEDS, SEEDS

    lesson = _lesson(tmp_path)
    lesson.workers = 1  # in this process, so the calls can be counted here (tests/course/test_pool.py: side by side)
    calls = []
    runs = lesson.over_seeds(lambda seed: calls.append(seed) or {"accuracy": 0.5 + seed / 10, "name": "x"},
                             seeds=(0, 1, 2))
    assert calls == [0, 1, 2] and len(runs) == 3
    assert runs["accuracy"].values == (0.5, 0.6, 0.7) and set(runs.measures()) == {"accuracy"}
    assert lesson.seeds == QUICK_SEEDS and len(SEEDS) >= 3  # quick mode: a spread still; full: three seeds


def test_a_table_of_cells_keeps_every_seed_and_the_comparisons_for_results_json(tmp_path):
    lesson = _lesson(tmp_path)
    a, b = SeedValues((0.9, 0.91, 0.92)), SeedValues((0.5, 0.52, 0.51))
    lesson.table("t", [{"strategy": "lora", "accuracy": a}, {"strategy": "full", "accuracy": b}])
    c = lesson.compare(a, b, ("lora", "full"))
    lesson.record("cells", {"lora": a})
    kept = json.loads(json.dumps(lesson.results))  # everything is plain JSON
    assert kept["tables"]["t"][0]["accuracy"]["values"] == [0.9, 0.91, 0.92]
    assert kept["tables"]["t"][1]["accuracy"]["sd"] == pytest.approx(b.sd)
    assert kept["comparisons"][0]["winner"] == "lora" == c.winner
    assert kept["numbers"]["cells"]["lora"]["mean"] == pytest.approx(0.91)


def test_plots_show_every_seed_not_only_the_mean():
    # Catches: a plot of one bar or point per cell, which hides the spread the sentences rely on.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PathCollection

    from minitune.course.lesson import bar_seeds, plot_seeds

    cells = [SeedValues((0.1, 0.2, 0.3)), SeedValues((0.5, 0.7))]
    for draw in (lambda ax: plot_seeds(ax, [1, 4], cells), lambda ax: plot_seeds(ax, ["a", "b"], cells),
                 lambda ax: bar_seeds(ax, ["a", "b"], cells)):
        fig, ax = plt.subplots()
        draw(ax)
        dots = sorted(float(y) for coll in ax.collections if isinstance(coll, PathCollection)  # scatter marks
                      for _, y in coll.get_offsets())
        plt.close(fig)
        assert dots == pytest.approx(sorted(v for c in cells for v in c.values))


def test_log_differs_is_welch_on_the_logs_with_geometric_means():
    from minitune.course.stats import log_differs

    a, b = [40.0, 119.0, 200.0], [1.30, 1.33, 1.35]
    on_logs = differs([math.log(v) for v in a], [math.log(v) for v in b], ("a", "b"))
    c = log_differs(a, b, ("a", "b"))
    assert (c.statistic, c.df, c.p) == (on_logs.statistic, on_logs.df, on_logs.p)
    assert c.mean_a == pytest.approx((40 * 119 * 200) ** (1 / 3)) and c.mean_b == pytest.approx((1.30 * 1.33 * 1.35) ** (1 / 3))
    assert "logs" in c.text() and "geometric" in c.text()
    # one wild seed hides a hundredfold gap from Welch's t on the raw values; on the logs it is plain
    assert not differs(a, b).beyond_noise and c.beyond_noise and c.winner == "a"
    with pytest.raises(ConfigError, match="positive"):
        log_differs([1.0, 0.0], [1.0, 2.0])


def test_a_comparison_of_tiny_means_shows_their_digits():
    c = differs([0.00041, 0.00043, 0.00042], [0.00011, 0.00012, 0.00010], ("a", "b"))
    assert "a (0.00042) is higher than b (0.00011)" in c.text()
    assert "(0.812)" in differs([0.81, 0.812, 0.814], [0.7, 0.71, 0.72], ("a", "b")).text()


@settings(max_examples=50, deadline=None)
@given(st.floats(1.0, 500.0))
def test_the_critical_t_is_where_the_two_sided_p_reaches_alpha(df):
    """Catches a t_critical off by its tail (one-sided), or searching the wrong side of the root."""
    from minitune.course.stats import ALPHA, t_critical, t_two_sided_p

    assert math.isclose(t_two_sided_p(t_critical(df), df), ALPHA, rel_tol=1e-6)


def test_known_critical_values():
    from minitune.course.stats import t_critical

    assert math.isclose(t_critical(2), 4.303, abs_tol=1e-3) and math.isclose(t_critical(1e7), 1.960, abs_tol=1e-3)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=3, max_size=3), st.lists(st.floats(0, 1), min_size=3, max_size=3))
def test_the_smallest_gap_is_the_gap_that_would_just_reach_the_noise_rule(a, b):
    """A 'not told apart' line states the gap this design could have seen: shift one side until its mean
    gap equals that, and Welch's t gives p = ALPHA. Catches a smallest gap from the wrong spread or df."""
    from minitune.course.stats import ALPHA, differs

    c = differs(a, b)
    assume(math.isfinite(c.smallest_gap) and c.smallest_gap > 1e-6)
    shift = c.smallest_gap - (c.mean_a - c.mean_b)
    moved = differs([v + shift for v in a], b)
    assert math.isclose(moved.p, ALPHA, rel_tol=1e-4)


def test_a_diverged_run_leaves_its_comparison_untested():
    """Catches a nan seed read as a number (a verdict from a run that blew up) or raised as an error."""
    c = differs([0.5, math.nan, 0.6], [0.1, 0.2, 0.3], ("a", "b"))
    assert math.isnan(c.p) and not c.beyond_noise and "diverged" in c.text()
