"""The learning-rate sweep: its grid, its choosing rule, its data (validation only, never a test item),
and a quick end-to-end run through `minitune sweep` that is reproducible and records how it was run."""

import json
import math

import pytest

from minitune.course import sweep as sweep_module
from minitune.course.arms import arm, arm_config, arm_label, split_arms
from minitune.cli import main
from minitune.data.tasks import load_task
from minitune.errors import ConfigError
from minitune.course import recorded
from minitune.course.recorded import (chosen_cells, choices, read_sweep, recorded_curves, recorded_evidence,
                                      table_rows)
from minitune.course.sweep import SweepSettings, choose, grid, run_sweep, sweep_task


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


def test_the_lowest_mean_loss_is_chosen():
    rates = [3e-4, 1e-3, 3e-3]
    r = choose(_runs({3e-4: [1.00, 1.01, 0.99], 1e-3: [0.80, 0.81, 0.79], 3e-3: [0.60, 0.61, 0.59]}),
               rates, 1e-3, "accuracy")
    assert r["best"] == 3e-3 and r["chosen"] == 3e-3 and r["changed"]
    assert r["edge"]  # the best is the largest rate tried: the sweep says it may lie further out
    assert r["versus_default"]["beyond_noise"]
    assert r["cells"][2]["val_loss"]["values"] == [0.60, 0.61, 0.59]


def test_the_best_mean_is_chosen_even_within_noise_of_the_default():
    # Catches: keeping the default whenever the best is within noise of it, which with three seeds keeps
    # whatever rate was guessed first. The rates within noise are reported instead.
    rates = [3e-4, 1e-3, 3e-3, 1e-2]
    r = choose(_runs({3e-4: [1.0, 1.1, 0.9], 1e-3: [0.80, 0.95, 0.70], 3e-3: [0.78, 0.90, 0.70],
                      1e-2: [1.2, 1.3, 1.25]}), rates, 1e-3, "accuracy")
    assert r["best"] == 3e-3 and r["chosen"] == 3e-3 and r["changed"] and not r["edge"]
    assert set(r["tied"]) >= {1e-3, 3e-3} and 1e-2 not in r["tied"]
    assert not r["versus_default"]["beyond_noise"]


def test_a_best_rate_at_either_edge_asks_for_the_next_rung_beyond_it():
    # Catches: an edge read from the grid's order rather than its values, or a step the wrong way.
    low = choose(_runs({1e-3: [0.5, 0.51], 3e-3: [0.7, 0.71], 1e-2: [0.9, 0.91]}), [3e-3, 1e-2, 1e-3], 3e-3,
                 "accuracy")
    assert low["chosen"] == 1e-3 and low["edge"] and low["extend"] == 3e-4
    high = choose(_runs({1e-3: [0.9, 0.91], 3e-3: [0.7, 0.71]}), [1e-3, 3e-3], 1e-3, "accuracy")
    assert high["extend"] == 1e-2
    # a rate above the best that diverged brackets it: nothing to add
    capped = choose(_runs({1e-3: [0.9, 0.91], 3e-3: [0.7, 0.71], 1e-2: [None, 0.1]}), [1e-3, 3e-3, 1e-2],
                    1e-3, "accuracy")
    assert capped["chosen"] == 3e-3 and not capped["edge"] and capped["extend"] is None


def test_the_sweep_extends_its_grid_until_the_best_rate_is_bracketed(monkeypatch, tmp_path):
    # Catches: a sweep that stops at its first grid, extends the wrong way, or never stops. Synthetic runs:
    # with both grids centred on 1e-3, the loss is lowest at 0.3 on sentiment (6 rungs up), so the sweep
    # must climb rung by rung and stop after MAX_EXTENSIONS with the choice flagged; qa's optimum, 1e-2,
    # is one rung above its grid, so it gets two extensions: the rung itself, then the one that brackets it.
    best = {"sentiment": 0.3, "qa": 1e-2}
    monkeypatch.setattr(sweep_module, "current_default", lambda spec, family: 1e-3)

    def fake(base, task, config, lr, seed, settings, device):
        loss = (math.log10(lr) - math.log10(best[task.name])) ** 2 + 0.001 * seed
        return {"diverged": False, "val_loss": loss, "accuracy": 0.5, "exact_match": 0.5, "n_validation": 1,
                "seconds": 0.0}

    monkeypatch.setattr(sweep_module, "run_point", fake)
    monkeypatch.setattr(sweep_module, "sweep_task", lambda name, settings: load_task(
        name, sizes={"train": 4, "validation": 2, "test": 2} if name != "qa" else None))
    record = run_sweep(tmp_path, SweepSettings(strategies=("full",)), tmp_path / "out", device="cpu", workers=1)
    by_family = {r["family"]: r for r in record["results"]}
    cls, gen = by_family["classification"], by_family["generation"]
    assert cls["grid"] == [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3] and cls["extensions"] == sweep_module.MAX_EXTENSIONS
    assert cls["chosen"] == 0.3 and cls["edge"]  # still the largest rate tried: flagged
    assert gen["grid"] == [3e-4, 1e-3, 3e-3, 1e-2, 3e-2] and gen["extensions"] == 2
    assert gen["chosen"] == 1e-2 and not gen["edge"]
    assert len(record["runs"]) == 3 * (7 + 5)


def test_a_rate_with_a_diverged_seed_cannot_be_chosen():
    # Catches: averaging over the seeds that survived, which would crown a rate that sometimes blows up.
    rates = [1e-3, 3e-3, 1e-2]
    r = choose(_runs({1e-3: [0.9, 0.91, 0.89], 3e-3: [0.8, 0.81, 0.79], 1e-2: [0.1, None, 0.1]}), rates, 3e-3,
               "accuracy")
    assert r["chosen"] == 3e-3 and r["cells"][2]["diverged"] == 1
    everything = choose(_runs({1e-3: [None, None], 3e-3: [None, None]}), [1e-3, 3e-3], 3e-3, "accuracy")
    assert everything["chosen"] is None and not everything["changed"]
    assert everything["extend"] == 3e-4  # nothing usable: the sweep looks below the lowest rate


@pytest.mark.parametrize("spec, expected", [
    ("lora", ("lora", {})),
    ("lora(r=4, targets=c_attn+mlp.c_fc)", ("lora", {"r": 4, "targets": ("c_attn", "mlp.c_fc")})),
    (" lora ( targets = c_attn , alpha = 32 ) ", ("lora", {"targets": ("c_attn",), "alpha": 32})),
    ("dora(dropout=0.1, rslora=true, init=gaussian)", ("dora", {"dropout": 0.1, "rslora": True, "init": "gaussian"})),
    ("lora(rslora=False)", ("lora", {"rslora": False})),
    ("prompt(init=text, init_text=a+b=c)", ("prompt", {"init": "text", "init_text": "a+b=c"})),  # only the first '='
])
def test_an_arm_is_a_strategy_with_the_settings_it_names(spec, expected):
    # Catches: a one-name targets left a string (which would match every layer ending in a letter of it).
    assert arm(spec) == expected


@pytest.mark.parametrize("spec, match", [
    ("lorax", "is not a strategy"), ("lora(r)", "'r' is not key=value"), ("lora(=4)", "is not key=value"),
    ("lora(rank=4)", "unexpected keyword"), ("lora(r=0)", "r must be"), ("lora(r=4", "is not a strategy"),
])
def test_a_malformed_arm_is_refused_by_name(spec, match):
    with pytest.raises(ConfigError, match=match):
        SweepSettings(strategies=("full", spec))


def test_arms_split_on_commas_outside_their_parentheses():
    assert split_arms("full, lora(r=4, targets=c_attn+mlp.c_fc),prompt,") == (
        "full", "lora(r=4, targets=c_attn+mlp.c_fc)", "prompt")


@pytest.mark.parametrize("spec, label", [
    ("full", "full FT"), ("lora", "LoRA r 8 on c_attn"),
    ("lora(r=2, targets=mlp.c_proj+c_attn+attn.c_proj+mlp.c_fc)", "LoRA r 2 on all four linear layers"),
    ("lora(targets=mlp.c_fc+mlp.c_proj)", "LoRA r 8 on mlp.c_fc + mlp.c_proj"),
    ("dora(r=4, rslora=true)", "DoRA r 4 (rsLoRA) on c_attn"), ("qlora(r=16)", "QLoRA r 16 on c_attn"),
    ("adapter(bottleneck=8)", "adapter(bottleneck=8)"),
])
def test_an_arm_is_named_by_its_recipe(spec, label):
    # Catches: a label that drops the rank or the targets (two recipes would read as one "LoRA"), or names
    # all four layers only in one order.
    assert arm_label(spec) == label
    assert arm_config(spec).name == arm(spec)[0]


def test_a_recipe_sweep_on_other_tasks_trains_each_recipe_and_never_sets_a_default(monkeypatch, tmp_path):
    # Catches: a recipe's settings dropped (every arm would train the default), tasks beyond the families'
    # own ignored, or a recipe's rate read back as the strategy's package default.
    seen = []

    def fake(base, task, config, lr, seed, settings, device):
        seen.append((task.name, config.r, config.targets))
        return {"diverged": False, "val_loss": abs(math.log10(lr) + 2) + 0.01 * seed + 0.1 * config.r,
                "rougeL_f1": 0.5, "pass@1": 0.5, "n_validation": 1, "seconds": 0.0}

    monkeypatch.setattr(sweep_module, "run_point", fake)
    monkeypatch.setattr(sweep_module, "sweep_task", lambda name, settings: load_task(name))
    settings = SweepSettings(strategies=("lora(r=1, targets=c_attn+mlp.c_fc)", "lora(r=4)"),
                             tasks=("code", "summarization"))
    record = run_sweep(tmp_path, settings, tmp_path / "out", device="cpu", workers=1)
    assert {(t, r, targets) for t, r, targets in seen} == {
        (t, r, targets) for t in ("code", "summarization") for r, targets in ((1, ("c_attn", "mlp.c_fc")),
                                                                               (4, ("c_attn",)))}
    assert {(r["task"], r["family"], r["strategy"]) for r in record["results"]} == {
        (t, "generation", s) for t in ("code", "summarization") for s in settings.strategies}
    assert all(r["chosen"] == 1e-2 and not r["edge"] for r in record["results"])
    assert "--tasks code,summarization" in record["command"] and "'lora(r=1, " in record["command"]
    monkeypatch.setattr(recorded, "RECORDED", tmp_path / "out")
    assert recorded.recorded_choices() == {}  # recipes and other tasks are evidence, never a package default


def test_recorded_cells_and_curves_read_back_what_the_sweep_ran(monkeypatch, tmp_path):
    # Catches: cells read at the wrong rate or arm, a curve taken from another seed's or rate's run, a
    # training-loss column read as validation, or a folder of no records read as no evidence.
    def fake(base, task, config, lr, seed, settings, device):
        loss = abs(math.log10(lr) + 2) + 0.01 * seed + 0.1 * config.r
        return {"diverged": False, "val_loss": loss, "pass@1": 0.1 * seed, "n_validation": 1, "seconds": 0.0,
                "curve": [[1, None, loss + 1], [2, 10 * loss, loss]]}

    monkeypatch.setattr(sweep_module, "run_point", fake)
    monkeypatch.setattr(sweep_module, "sweep_task", lambda name, settings: load_task(name))
    settings = SweepSettings(strategies=("lora(r=1)", "lora(r=2)"), tasks=("code",))
    record = run_sweep(tmp_path, settings, tmp_path / "out", device="cpu", workers=1)
    cells = chosen_cells(record)
    assert set(cells) == {("code", "lora(r=1)"), ("code", "lora(r=2)")}
    c = cells["code", "lora(r=2)"]
    assert c["chosen"] == 1e-2 and not c["edge"] and c["metric"] == "pass@1" and c["grid"] == (3e-3, 1e-2, 3e-2)
    assert c["val loss"][1e-2].values == pytest.approx((0.2, 0.21, 0.22))
    assert c["score"][3e-3].values == pytest.approx((0.0, 0.1, 0.2))
    val = recorded_curves(record, "code", "lora(r=2)", 3e-3)
    assert [[step for step, _ in seed] for seed in val] == [[1, 2]] * 3
    assert val[1][1][1] == pytest.approx(abs(math.log10(3e-3) + 2) + 0.01 + 0.2)
    train = recorded_curves(record, "code", "lora(r=2)", 3e-3, "train_loss")
    assert train == [[(2, pytest.approx(10 * seed[1][1]))] for seed in val]  # the None point is left out
    with pytest.raises(KeyError):
        recorded_curves(record, "code", "lora(r=2)", 0.5)
    (tmp_path / "evidence" / "x").mkdir(parents=True)
    (tmp_path / "evidence" / "x" / "2-b.json").write_text(json.dumps(record))
    (tmp_path / "evidence" / "x" / "1-a.json").write_text(json.dumps({**record, "command": "first"}))
    monkeypatch.setattr(recorded, "RECORDED", tmp_path / "evidence")
    assert [r["command"] for r in recorded_evidence("x")] == ["first", record["command"]]  # oldest first
    with pytest.raises(FileNotFoundError):
        recorded_evidence("y")


def test_the_recorded_recipe_sweeps_bracket_every_choice():
    # The evidence lesson 3 reads: each recipe's chosen rate has a worse rate on both sides (or the sweep
    # ran out of extensions, which the record then shows). Catches a record made before the grid extended.
    for record in recorded_evidence("lora-recipes"):
        for r in record["results"]:
            assert not r["edge"] or r["extensions"] == sweep_module.MAX_EXTENSIONS, (r["task"], r["strategy"])


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
    for name in s.task_names() + ("code", "summarization"):
        val = {e.prompt for e in sweep_task(name, s).validation}
        for test_size in (16, 50, 100, 200):
            sizes = {"train": 64, "validation": 8, "test": test_size} if name == "sentiment" else None
            assert not val & {e.prompt for e in load_task(name, sizes=sizes).test}


# --- end to end ------------------------------------------------------------------------------------------------

def test_quick_sweep_through_the_cli_records_everything(nano_run, tmp_path, monkeypatch):
    splits = []
    real = sweep_module.evaluate_task
    monkeypatch.setattr(sweep_module, "evaluate_task",
                        lambda *a, **k: splits.append(a[3] if len(a) > 3 else k["split"]) or real(*a, **k))
    out = tmp_path / "sweep"
    assert main(["sweep", "--quick", "--base", str(nano_run), "--out", str(out), "--workers", "1",
                 "--batch-size", "8", "--evals", "2"]) == 0  # here: counted
    record = json.loads((out / "sweep.json").read_text())
    assert (out / "sweep.md").is_file() and read_sweep(out) == record
    s = SweepSettings.for_mode(True)
    assert len(record["runs"]) == sum(len(res["grid"]) for res in record["results"]) * len(s.seeds)
    assert set(splits) == {"validation"}  # scored on validation only, never test
    for r in record["runs"]:
        assert r["diverged"] or math.isfinite(r["val_loss"])
    for res in record["results"]:
        first = grid(res["default"], s.span)
        assert res["grid"][:len(first)] == first or res["grid"][-len(first):] == first  # extended one way
        assert len(res["grid"]) == len(first) + res["extensions"] and res["chosen"] in res["grid"]
    assert {"command", "settings", "machine", "started", "seconds", "base"} <= set(record)
    assert record["settings"]["seeds"] == list(s.seeds) and record["settings"]["steps"] == s.steps
    assert record["settings"]["batch_size"] == 8 and "--batch-size 8 --evals 2" in record["command"]
    for r in record["runs"]:  # two evaluations, the last at the final step: the run's curve
        assert r["diverged"] or [point[0] for point in r["curve"]] == [s.steps // 2, s.steps]
    rows = table_rows(record)
    assert len(rows) == sum(len(res["grid"]) for res in record["results"])
    assert all(rows[0].keys() == r.keys() for r in rows)  # one shape: a lesson can print them as a table
    assert set(choices(record)) == {(t, n) for t in s.task_names() for n in s.strategies}


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
    from minitune.course.recorded import recorded_choices

    chosen = recorded_choices()
    assert set(STRATEGIES) <= set(chosen)  # every strategy, the newer four included (record 3 on)
    for name, by_family in chosen.items():
        assert by_family == STRATEGIES[name][0].default_lr, (name, by_family)


def test_no_package_default_sits_at_its_sweeps_grid_edge():
    """Catches a default whose best rate may lie beyond what was tried: the latest recorded sweep of every
    strategy and family must have bracketed its choice."""
    from minitune.course.recorded import recorded_results
    from minitune.course.sweep import edge_of

    latest = recorded_results()
    at_edge = [f"{s} on {f}: best {r['best']:g} of {r['grid']}" for (f, s), r in latest.items()
               if edge_of(r["best"], r["grid"]) is not None]
    assert not at_edge, at_edge
