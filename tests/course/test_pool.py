"""The pool of workers: results in order and bitwise those of one-by-one runs, output in a stable order,
failures named without losing the others, Ctrl-C stopping every worker, and never more workers than cores."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import pytest
import torch

import minitune.course.pool as pool
from minitune.course.lesson import Lesson
from minitune.course.pool import RunsFailed, run_all, workers_to_use, workers_wanted
from minitune.course.runs import Budget, shared_run
from minitune.errors import MinituneError
from minitune.strategies import FullConfig, LoRAConfig

needs_two = pytest.mark.skipif(pool.cores() < 2 or not hasattr(os, "fork"), reason="needs two cores and os.fork")


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    """Tests decide the worker count themselves: the machine's other work must not shrink it."""
    monkeypatch.setattr(pool, "busy_cores", lambda seconds=0.2: 0.0)
    monkeypatch.setattr(pool, "_checked", None)


def _where(i: int, pause: float = 0.0) -> dict:
    time.sleep(pause)
    print(f"job {i} says hello")
    return {"i": i, "pid": os.getpid(), "threads": torch.get_num_threads()}


@needs_two
def test_results_come_back_in_order_from_workers_with_one_thread_each(capsys):
    pauses = [0.6, 0.0, 0.3, 0.0]  # the first job finishes last
    results = run_all([partial(_where, i, p) for i, p in enumerate(pauses)], workers=2)
    assert [r["i"] for r in results] == [0, 1, 2, 3]
    assert all(r["pid"] != os.getpid() for r in results) and len({r["pid"] for r in results}) == 4
    assert {r["threads"] for r in results} == {1}
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("job")] == [f"job {i} says hello" for i in range(4)]


def test_one_worker_runs_here_with_one_thread_and_restores_the_count():
    before = torch.get_num_threads()
    results = run_all([partial(_where, i) for i in range(2)], workers=1)
    assert {r["pid"] for r in results} == {os.getpid()} and {r["threads"] for r in results} == {1}
    assert torch.get_num_threads() == before


def _fails(i: int) -> dict:
    if i == 1:
        raise ValueError("this rate diverged")
    return {"i": i}


@needs_two
def test_a_failed_run_is_named_and_the_others_finish(tmp_path, capsys):
    marks = tmp_path / "done"
    marks.mkdir()

    def job(i):
        result = _fails(i)
        (marks / str(i)).touch()
        return result

    with pytest.raises(RunsFailed) as e:
        run_all([partial(job, i) for i in range(4)], names=[f"qa / lora / seed {i}" for i in range(4)], workers=2)
    assert "1 of 4 runs failed" in str(e.value) and "qa / lora / seed 1" in str(e.value)
    assert "ValueError: this rate diverged" in str(e.value)
    assert sorted(p.name for p in marks.iterdir()) == ["0", "2", "3"]  # the others ran to their end
    assert "qa / lora / seed 1 failed" in capsys.readouterr().err


@needs_two
def test_a_worker_that_dies_is_reported_not_waited_for():
    with pytest.raises(RunsFailed, match="signal 9"):
        run_all([lambda: os.kill(os.getpid(), signal.SIGKILL), lambda: 1], workers=2)


@needs_two
def test_a_run_inside_a_worker_runs_its_own_runs_in_turn():
    def outer():
        return run_all([lambda: os.getpid(), lambda: os.getpid()], workers=2)

    inner = run_all([outer, outer], workers=2)
    assert all(len(set(pids)) == 1 and pids[0] != os.getpid() for pids in inner)


@needs_two
def test_pooled_shared_runs_are_bitwise_the_serial_ones(nano_run, tmp_path):
    """The same runs, one by one and side by side, from empty caches: the same numbers to the last bit."""
    budget = Budget.for_mode(quick=True)
    jobs = [(task, config, seed) for task in ("sentiment", "qa") for config in (FullConfig(), LoRAConfig(r=2))
            for seed in (0, 1)]

    def runs(workers: int, cache: Path) -> list[dict]:
        done = run_all([partial(shared_run, nano_run, t, c, s, budget, cache=cache) for t, c, s in jobs],
                       workers=workers)
        return [{k: v for k, v in r.items() if "seconds" not in k and k not in ("history", "run")}
                | {"history": [{k: v for k, v in h.items() if k != "train_seconds"} for h in r["history"]]}
                for r in done]

    serial, pooled = runs(1, tmp_path / "serial"), runs(2, tmp_path / "pooled")
    assert all(r["trained"] for r in serial + pooled)
    assert serial == pooled  # every score, loss and perplexity: floats compared exactly


def test_the_worker_count_is_checked_and_capped(monkeypatch):
    monkeypatch.setenv(pool.WORKERS_VARIABLE, "3")
    assert workers_wanted() == min(3, pool.cores())
    assert workers_wanted(1) == 1 and workers_wanted(10_000) == pool.cores()
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(pool.WORKERS_VARIABLE, bad)
        with pytest.raises(MinituneError, match=pool.WORKERS_VARIABLE):
            workers_wanted()
    with pytest.raises(MinituneError, match="at least 1"):
        workers_wanted(0)


def test_a_busy_machine_gets_fewer_workers_and_is_told(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(pool, "cores", lambda: 4)
    monkeypatch.setattr(pool, "cut_to", None)
    monkeypatch.setattr(pool, "busy_cores", lambda seconds=0.2: 2.6)
    assert workers_to_use(4, jobs=10) == 1
    assert "already busy" in capsys.readouterr().out
    monkeypatch.setattr(pool, "_checked", None)
    monkeypatch.setattr(pool, "busy_cores", lambda seconds=0.2: 0.3)
    assert workers_to_use(4, jobs=3) == 3 and capsys.readouterr().out == ""  # no more workers than runs
    # the lesson's record says the pool was cut, not only what was asked for
    assert pool.cut_to == 1
    results = Lesson(9, "test", quick=True, device="cpu", base=tmp_path, out=tmp_path, workers=4).finish()
    assert "4 workers of one torch thread (1 for a while: the machine was busy)" in results["machine"]


def test_the_lesson_counts_runs_done_in_workers(tmp_path):
    lesson = Lesson(9, "test", quick=True, device="cpu", base=tmp_path, out=tmp_path, workers=2)

    def fn(name, seed):
        lesson.origins["trained" if seed else "read back"] += 1
        return {"value": seed, "name": name}

    runs = lesson.each_over_seeds({name: partial(fn, name) for name in ("a", "b")}, seeds=(0, 1, 2))
    assert {name: r["value"].values for name, r in runs.items()} == {"a": (0, 1, 2), "b": (0, 1, 2)}
    assert [r["name"] for r in runs["b"].runs] == ["b"] * 3
    assert lesson.origins == {"trained": 4, "read back": 2}


CTRL_C = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from minitune.course.pool import run_all

    here = Path(sys.argv[1])

    def job(i):
        (here / f"{os.getpid()}.pid").touch()
        try:
            time.sleep(60)
        finally:  # what a stopped shared run does: clean up its unfinished folder
            (here / f"{os.getpid()}.pid").unlink()

    run_all([lambda i=i: job(i) for i in range(4)], workers=2)
""")


@needs_two
def test_ctrl_c_stops_every_worker_and_each_cleans_up(tmp_path):
    script = tmp_path / "pool.py"
    script.write_text(CTRL_C)
    env = {**os.environ, pool.WORKERS_VARIABLE: "2"}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
    assert len(workers) == 2
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert list(tmp_path.glob("*.pid")) == []  # each worker ran its clean-up
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
