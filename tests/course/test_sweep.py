"""The learning-rate sweep: its grid, its choosing rule, its data (validation only, never a test item),
and a quick end-to-end run through `minitune sweep` that is reproducible and records how it was run."""

import json
import math

import pytest

from minitune.course import sweep as sweep_module
from minitune.cli import main
from minitune.data.tasks import load_task
from minitune.errors import ConfigError
from minitune.course.sweep import SweepSettings, choices, choose, grid, read_sweep, run_sweep, sweep_task, table_rows


# --- the grid ---------------------------------------------------------------------------------------------

def test_grid_is_the_default_with_its_neighbours_on_the_1_3_10_ladder():
    assert grid(1e-3) == [3e-4, 1e-3, 3e-3]
    assert grid(3e-3) == [1e-3, 3e-3, 1e-2]
    assert grid(0.1, span=2) == [0.01, 0.03, 0.1, 0.3, 1.0]
    assert grid(1e-3, span=0) == [1e-3]


@pytest.mark.parametrize("default", [5e-3, 2e-4, 0.07, 1.5e-2])
def test_a_default_off_the_ladder_is_still_the_centre(default):
    # Catches: a grid built only from ladder rungs, which would never measure the default it may replace.
    g = grid(default, span=1)
    assert g[1] == default and g == sorted(g)
    assert all(2 <= b / a <= 5 for a, b in zip(g, g[1:]))  # neighbours about 3x apart


# --- choosing --------------------------------------------------------------------------------------------------

def _runs(losses: dict[float, list[float | None]]) -> list[dict]:
    """Synthetic runs: a None loss is a seed that diverged."""
    return [{"lr": lr, "seed": s, "diverged": v is None, "val_loss": v, "accuracy": None if v is None else 0.5}
            for lr, vs in losses.items() for s, v in enumerate(vs)]


def test_a_rate_that_beats_the_default_beyond_noise_replaces_it():
    rates = [3e-4, 1e-3, 3e-3]
    r = choose(_runs({3e-4: [1.00, 1.01, 0.99], 1e-3: [0.80, 0.81, 0.79], 3e-3: [0.60, 0.61, 0.59]}),
               rates, 1e-3, "accuracy")
    assert r["best"] == 3e-3 and r["chosen"] == 3e-3 and r["changed"]
    assert r["edge"]  # the best is the largest rate tried: the sweep says it may lie further out
    assert r["versus_default"]["beyond_noise"]
    assert r["cells"][2]["val_loss"]["values"] == [0.60, 0.61, 0.59]


def test_the_default_stays_when_the_best_mean_is_within_noise_of_it():
    # Catches: picking the lowest mean alone, which moves defaults on noise.
    rates = [3e-4, 1e-3, 3e-3]
    r = choose(_runs({3e-4: [1.0, 1.1, 0.9], 1e-3: [0.80, 0.95, 0.70], 3e-3: [0.78, 0.90, 0.70]}),
               rates, 1e-3, "accuracy")
    assert r["best"] == 3e-3 and r["chosen"] == 1e-3 and not r["changed"] and not r["edge"]
    assert set(r["tied"]) >= {1e-3, 3e-3}


def test_a_rate_with_a_diverged_seed_cannot_be_chosen():
    # Catches: averaging over the seeds that survived, which would crown a rate that sometimes blows up.
    rates = [1e-3, 3e-3, 1e-2]
    r = choose(_runs({1e-3: [0.9, 0.91, 0.89], 3e-3: [0.8, 0.81, 0.79], 1e-2: [0.1, None, 0.1]}), rates, 3e-3,
               "accuracy")
    assert r["chosen"] == 3e-3 and r["cells"][2]["diverged"] == 1
    everything = choose(_runs({1e-3: [None, None], 3e-3: [None, None]}), [1e-3, 3e-3], 3e-3, "accuracy")
    assert everything["chosen"] is None and not everything["changed"]


def test_settings_refuse_what_cannot_measure_noise():
    with pytest.raises(ConfigError):
        SweepSettings(seeds=(0,))
    with pytest.raises(ConfigError):
        SweepSettings(strategies=("lora", "dora-ish"))
    assert len(SweepSettings().seeds) >= 3  # the full sweep: at least three seeds per cell


# --- its data --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("quick", [True, False])
def test_the_sweep_never_scores_a_test_item_of_any_lesson(quick):
    # The sweep draws test at the default size before validation. Catches: drawing it with a smaller test
    # split, which moves validation onto items that lessons with a larger test split score.
    s = SweepSettings.for_mode(quick)
    for family in s.families:
        val = {e.prompt for e in sweep_task(family, s).validation}
        name = sweep_module.FAMILIES[family]
        for test_size in (16, 50, 100, 200):
            sizes = None if name == "qa" else {"train": 64, "validation": 8, "test": test_size}
            assert not val & {e.prompt for e in load_task(name, sizes=sizes).test}


# --- end to end ------------------------------------------------------------------------------------------------

def test_quick_sweep_through_the_cli_records_everything(nano_run, tmp_path, monkeypatch):
    splits = []
    real = sweep_module.evaluate_task
    monkeypatch.setattr(sweep_module, "evaluate_task",
                        lambda *a, **k: splits.append(a[3] if len(a) > 3 else k["split"]) or real(*a, **k))
    out = tmp_path / "sweep"
    assert main(["sweep", "--quick", "--base", str(nano_run), "--out", str(out), "--workers", "1"]) == 0  # here: counted
    record = json.loads((out / "sweep.json").read_text())
    assert (out / "sweep.md").is_file() and read_sweep(out) == record
    s = SweepSettings.for_mode(True)
    per_cell = (2 * s.span + 1) * len(s.seeds)
    assert len(record["runs"]) == len(s.strategies) * len(s.families) * per_cell
    assert set(splits) == {"validation"}  # scored on validation only, never test
    for r in record["runs"]:
        assert r["diverged"] or math.isfinite(r["val_loss"])
    for res in record["results"]:
        assert res["grid"] == grid(res["default"], s.span) and res["chosen"] in res["grid"]
    assert {"command", "settings", "machine", "started", "seconds", "base"} <= set(record)
    assert record["settings"]["seeds"] == list(s.seeds) and record["settings"]["steps"] == s.steps
    rows = table_rows(record)
    assert len(rows) == len(record["results"]) * (2 * s.span + 1)
    assert all(rows[0].keys() == r.keys() for r in rows)  # one shape: a lesson can print them as a table
    assert set(choices(record)) == {(f, n) for f in s.families for n in s.strategies}


def test_the_same_command_gives_the_same_numbers(nano_run, tmp_path):
    # Catches: a run seeded from anything but its seed (the clock, a shared generator left in some state).
    s = SweepSettings.for_mode(True, strategies=("lora", "prompt"), families=("classification",))
    first = run_sweep(nano_run, s, tmp_path / "a", device="cpu")
    second = run_sweep(nano_run, s, tmp_path / "b", device="cpu")
    key = lambda r: (r["strategy"], r["lr"], r["seed"], r["val_loss"], r["accuracy"])  # noqa: E731
    assert [key(r) for r in first["runs"]] == [key(r) for r in second["runs"]]
    assert len({r["val_loss"] for r in first["runs"] if r["strategy"] == "lora"}) > 1  # seeds and rates matter


def test_the_package_defaults_are_the_recorded_sweeps_choices():
    """Catches a default learning rate set by hand, with no recorded validation sweep behind it; and a
    strategy whose two task families want different rates while the package keeps one."""
    from minitune.strategies import STRATEGIES
    from minitune.course.sweep import recorded_choices

    chosen = recorded_choices()
    assert set(STRATEGIES) <= set(chosen)  # every strategy, the newer four included (record 3 on)
    for name, by_family in chosen.items():
        assert set(by_family.values()) == {STRATEGIES[name][0].default_lr}, (name, by_family)
