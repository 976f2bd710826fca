"""minitune.course.studies: the learning-rate pick and the per-step curve cells, on numbers with known answers."""

import pytest

from minitune.course.stats import SeedValues
from minitune.course.studies import curve_over_seeds, pick_rate


def test_pick_rate_takes_the_lowest_mean_validation_loss_and_its_ties():
    # 0.1 clearly lowest; 0.3 within noise of it (wide spread); 0.03 far above with a tight spread
    losses = {0.03: [2.0, 2.01, 2.02], 0.1: [1.0, 1.01, 1.02], 0.3: [0.9, 1.3, 1.1]}
    rate, tied, _ = pick_rate(losses)
    assert rate == 0.1  # mean 1.01 beats 0.3's 1.1: a pick by the HIGHEST loss would choose 0.03
    assert set(tied) == {0.1, 0.3}


def test_pick_rate_returns_the_rate_itself_not_its_label():
    rate, tied, _ = pick_rate({3e-4: SeedValues((0.5, 0.6)), 1e-3: SeedValues((0.9, 1.0))})
    assert rate == 3e-4 and isinstance(rate, float) and tied == (3e-4,)


def test_curve_over_seeds_gathers_each_step_over_the_seeds():
    steps, cells = curve_over_seeds([[(0, 2.0), (40, 1.0)], [(0, 4.0), (40, 3.0)]])
    assert steps == [0, 40]
    assert [c.mean for c in cells] == [3.0, 2.0] and all(c.n == 2 for c in cells)


def test_curve_over_seeds_refuses_curves_evaluated_at_different_steps():
    with pytest.raises(ValueError):
        curve_over_seeds([[(0, 2.0), (40, 1.0)], [(0, 4.0), (20, 3.0)]])
