"""The shared fine-tuning cells: one run per (base, task, strategy, seed, budget), read back, never stale."""

from pathlib import Path

import pytest

from minitune.course.runs import Budget, run_key, common_target, first_reaching, shared_run
from minitune.errors import ConfigError
from minitune.data.tasks import load_task
from minitune.course.lesson import held_out_text
from minitune.strategies import FullConfig, LoRAConfig

QUICK = Budget.for_mode(quick=True)


KEYS = {"task", "strategy", "seed", "metric", "score", "n", "test_loss", "best_val_loss", "lr", "trainable", "total",
        "train_seconds", "file", "base_intact", "history", "general_ppl", "seconds", "run", "trained"}
PARTS = {"load", "train", "evaluations along the run", "test score", "test loss and checks", "saving"}


def test_a_cell_is_trained_once_and_read_back_with_the_same_numbers(nano_run, tmp_path, monkeypatch, capsys):
    general = held_out_text(20_000)[:8]
    first = shared_run(nano_run, "sentiment", LoRAConfig(r=2), 0, QUICK, general=general, cache=tmp_path)
    assert capsys.readouterr().out == ""  # quiet by default: the lessons print one line per cell themselves
    assert set(first) == KEYS | {"label_loss"}
    assert (first["task"], first["strategy"], first["seed"], first["metric"]) == ("sentiment", "lora", 0, "accuracy")
    assert first["lr"] == LoRAConfig.default_lr["classification"] and first["base_intact"] is True
    assert first["train_seconds"] == first["history"][-1]["train_seconds"]
    best = min(first["history"], key=lambda r: r["val_loss"])  # the kept checkpoint is the best evaluation's
    assert first["best_val_loss"] == best["val_loss"] and first["general_ppl"] == best["general_ppl"]
    run = Path(first["run"])
    assert (run / "best" / "trainable.safetensors").stat().st_size == first["file"]
    assert not (run / "last").exists() and not (run / "resume.pt").exists()  # only what the lessons load is kept
    assert 0.0 <= first["score"] <= 1.0 and first["n"] > 0 and first["strategy"] == "lora"
    assert first["test_loss"] > 0 and first["label_loss"] > 0 and 0 < first["trainable"] < first["total"]
    steps = [r["step"] for r in first["history"]]
    assert steps == list(range(QUICK.eval_every, QUICK.steps + 1, QUICK.eval_every))
    assert all(r["general_ppl"] > 1 for r in first["history"])
    seconds = [r["train_seconds"] for r in first["history"]]
    assert seconds == sorted(seconds) and seconds[0] > 0
    assert set(first["seconds"]) == PARTS and first["seconds"]["train"] == first["train_seconds"]
    assert all(v >= 0 for v in first["seconds"].values())

    import minitune.finetune
    monkeypatch.setattr(minitune.finetune, "finetune", lambda *a, **k: pytest.fail("a cached cell was trained again"))
    again = shared_run(nano_run, "sentiment", LoRAConfig(r=2), 0, QUICK, general=general, cache=tmp_path)
    assert first.pop("trained") and not again.pop("trained") and again == first
    named = shared_run(nano_run, "sentiment", LoRAConfig(r=2), 0, QUICK, general=general, cache=tmp_path,
                      lr=LoRAConfig.default_lr["classification"])  # the default rate named is the same cell, in the same folder
    assert not named.pop("trained") and named == first


def test_a_run_stopped_half_way_leaves_no_folder(nano_run, tmp_path, monkeypatch):
    import minitune.finetune

    def stopped(base, task, config, folder, **kw):  # Ctrl-C (or a pool's SIGTERM) after training began
        (Path(folder) / "best").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(minitune.finetune, "finetune", stopped)
    with pytest.raises(KeyboardInterrupt):
        shared_run(nano_run, "sentiment", LoRAConfig(r=2), 0, QUICK, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cells_that_differ_in_anything_get_their_own_folders(nano_run, tmp_path, monkeypatch):
    monkeypatch.setenv("MINITUNE_RUNS", str(tmp_path))  # no cache folder named: runs/shared
    one, other = held_out_text(20_000)[:8], held_out_text(20_000)[8:16]
    cells = [shared_run(nano_run, "qa", FullConfig(), 0, QUICK, general=one),
             shared_run(nano_run, "code", FullConfig(), 0, QUICK, general=one),
             shared_run(nano_run, "qa", FullConfig(), 1, QUICK, general=one),
             shared_run(nano_run, "qa", FullConfig(), 0, QUICK, general=other)]
    folders = {Path(c["run"]) for c in cells}
    assert len(folders) == 4 and all(f.parent == tmp_path / "shared" for f in folders)
    assert cells[0]["n"] == QUICK.limit("qa") and cells[0]["base_intact"] is False


def test_the_budget_gives_the_sizes_and_limits_it_names():
    budget = Budget()
    assert len(budget.task("topic").test) == budget.sizes["test"] and len(budget.task("topic").train) == 1000
    assert len(budget.task("qa").test) == len(load_task("qa").test)  # qa's sizes are its facts'
    assert budget.limit("code") == 100 and budget.limit("topic") is None


def test_the_key_covers_the_weights_and_the_code_only(nano_run, tmp_path, monkeypatch):
    import shutil

    import minitune.course.runs

    copy = tmp_path / "base"
    shutil.copytree(nano_run, copy)
    before = run_key(copy, "qa", FullConfig(), 0, QUICK, None)
    (copy / "notes.txt").write_text("a file beside the weights")
    assert run_key(copy, "qa", FullConfig(), 0, QUICK, None) == before
    package = tmp_path / "package"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(minitune.course.runs, "PACKAGE", package)
    first = minitune.course.runs.source_hash()
    (package / "sub" / "a.py").write_text("x = 2\n")
    assert minitune.course.runs.source_hash() != first
    second = minitune.course.runs.source_hash()
    (package / "course").mkdir()
    (package / "course" / "stats.py").write_text("how numbers are compared and worded: not how they are made\n")
    assert minitune.course.runs.source_hash() == second
    (package / "course" / "runs.py").write_text("how a shared run is trained and scored\n")
    assert minitune.course.runs.source_hash() != second


def test_the_key_changes_with_everything_the_numbers_depend_on(nano_run):
    key = lambda **kw: run_key(nano_run, kw.get("task", "qa"), kw.get("config", FullConfig()),  # noqa: E731
                                kw.get("seed", 0), kw.get("budget", QUICK), kw.get("general", ["a"]), kw.get("lr"))
    base = key()
    assert key() == base and key(lr=FullConfig.default_lr["generation"]) == base  # the default rate, named or not
    changed = [key(task="code"), key(config=LoRAConfig()), key(config=LoRAConfig(r=4)), key(seed=1),
               key(budget=Budget()), key(general=["b"]),
               key(lr=FullConfig.default_lr["generation"] * 1.5),
               key(lr=FullConfig.default_lr["classification"] * 1.5, task="sentiment")]
    assert base not in changed and len(set(changed)) == len(changed)


def test_a_changed_base_makes_a_new_key(nano_run, tmp_path):
    import shutil

    copy = tmp_path / "base"
    shutil.copytree(nano_run, copy)
    before = run_key(copy, "qa", FullConfig(), 0, QUICK, None)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert run_key(copy, "qa", FullConfig(), 0, QUICK, None) != before


def test_an_unknown_task_is_refused(nano_run, tmp_path):
    with pytest.raises(ConfigError, match="unknown task"):
        shared_run(nano_run, "poetry", FullConfig(), 0, QUICK, cache=tmp_path)


def test_runs_are_read_where_they_first_reach_a_common_target():
    runs = [{"history": [{"step": 20, "val_loss": 3.0}, {"step": 40, "val_loss": 1.5}, {"step": 60, "val_loss": 1.7}]},
            {"history": [{"step": 20, "val_loss": 2.0}, {"step": 40, "val_loss": 1.9}, {"step": 60, "val_loss": 1.8}]}]
    target = common_target(runs)
    assert target == 1.8  # the slower run's best: both reached it
    assert [first_reaching(r, target)["step"] for r in runs] == [40, 60]
    assert first_reaching(runs[1], 1.0) is None
