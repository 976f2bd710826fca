"""The parent's side of the restricted evaluator: nothing the confined child does -- stalling, lingering,
answering too much or out of shape, forking, or failing to start -- can hang, crash or leak in the parent."""

import ast
import errno
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import minitune.sandbox as sandbox
from minitune.sandbox import CallFailed, CodeCrashed, CodeTimedOut, confined, run_function, runner
from test_sandbox_child import children, escaped, is_running, open_descriptors, parse_unchecked, run_escaped
from test_sandbox_syntax import fn


# ---------------------------------------------------------------- the parent cannot hang or crash


def test_timeout_kills_a_slow_program():
    before = children()
    module = parse_unchecked(fn("while True:", "    x = x + 1"))
    start = time.perf_counter()
    with pytest.raises(CodeTimedOut, match="timed out after 0.3 s"):
        sandbox._execute(module, "f", [(1,)], timeout_s=0.3)
    assert time.perf_counter() - start < 5.0
    assert children() == before  # killed and reaped


def test_a_child_that_stalls_in_the_middle_of_its_answer_is_killed_at_the_deadline():
    # catches: a deadline that only covers the first byte of the answer
    before = children()
    start = time.perf_counter()
    with pytest.raises(CodeTimedOut):
        run_escaped("import os, time\nos.write(0, b'{\"results\": [[')\ntime.sleep(30)", timeout_s=0.5)
    assert time.perf_counter() - start < 5.0
    assert children() == before


def test_a_child_that_closes_its_pipe_and_lingers_is_not_waited_for():
    # catches: waiting for the child to exit with no deadline once its answer has ended
    start = time.perf_counter()
    with pytest.raises(CodeCrashed):
        run_escaped("import os, time\nos.close(0)\ntime.sleep(30)", timeout_s=10.0)
    assert time.perf_counter() - start < 5.0


def test_an_answer_longer_than_any_honest_one_is_cut_off():
    # catches: reading whatever the child sends into the parent's memory
    start = time.perf_counter()
    with pytest.raises(CodeCrashed, match="answer ran past"):
        run_escaped("import os\nfor _ in range(64):\n    os.write(0, b' ' * 65536)\nresult = 1", timeout_s=10.0)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("extra", [0, 1])
def test_the_size_cap_counts_the_whole_answer_across_its_pieces(extra):
    # catches: pieces joined wrongly, a cap applied to each piece rather than the whole, or off by one
    good = json.dumps({"results": [["value", 7]], "walls": []}).encode()
    limit = sandbox._REPLY_BASE_BYTES + sandbox._REPLY_BYTES_PER_INPUT  # for one input
    spaces = limit - len(good) + extra  # JSON allows leading whitespace: exactly the cap, or one byte more
    payload = ("import os, time\n"
               f"for _ in range({spaces // 500}):\n"
               "    os.write(0, b' ' * 500)\n"
               "    time.sleep(0.002)\n"  # so that the parent reads it in small pieces
               f"os.write(0, b' ' * {spaces % 500} + {good!r})\n"
               "os._exit(0)\n")
    if extra:
        with pytest.raises(CodeCrashed):
            sandbox._execute(escaped(payload), "f", [(0,)], 5.0)
    else:
        assert sandbox._execute(escaped(payload), "f", [(0,)], 5.0) == [7]


N_REPLY = 10  # results a reply below must hold
GOOD = [["value", 7]] * N_REPLY
MALFORMED = {
    "nothing": b"",
    "empty object": b"{}",
    "a string": b'"results"',
    "not UTF-8": b"\xff\xfe",
    "nested too deep": b"[" * 10_000 + b"]" * 10_000,
    "an int of 5,000 digits": b'{"results": [["value", 1' + b"0" * 5_000 + b']], "walls": []}',
    "results not a list": {"results": 7, "walls": []},
    "one result short": {"results": GOOD[1:], "walls": []},
    "one result too many": {"results": GOOD + GOOD[:1], "walls": []},
    "unknown kind": {"results": GOOD[1:] + [["ok", 7]], "walls": []},
    "float value": {"results": GOOD[1:] + [["value", 1.5]], "walls": []},
    "NaN value": b'{"results": [' + b'["value", 7], ' * (N_REPLY - 1) + b'["value", NaN]], "walls": []}',
    "value out of range": {"results": GOOD[1:] + [["value", 10**12 + 1]], "walls": []},
    "string value": {"results": GOOD[1:] + [["value", "7"]], "walls": []},
    "null value": {"results": GOOD[1:] + [["value", None]], "walls": []},
    "reason not a string": {"results": GOOD[1:] + [["failed", 7]], "walls": []},
    "reason too long": {"results": GOOD[1:] + [["failed", "x" * 201]], "walls": []},
    "pair too short": {"results": GOOD[1:] + [["value"]], "walls": []},
    "result not a pair": {"results": GOOD[1:] + [7], "walls": []},
    "error not a string": {"error": [7], "walls": []},
    "no walls": {"results": GOOD},
    "unknown wall": {"results": GOOD, "walls": ["everything"]},
    "an extra key": {"results": GOOD, "walls": [], "more": 1},
}


def reply_with(reply) -> ast.Module:
    raw = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
    return escaped(f"import os\nos.write(0, {raw!r})\nos._exit(0)")


def test_the_largest_honest_reply_is_read():
    # the control for the next test (hand-written replies really reach the parent's reader); it also
    # catches a size cap or a range check tighter than what an honest child may send
    longest = "\U0001F600" * sandbox.MAX_REASON_CHARS  # 12 bytes each in JSON, as a surrogate pair
    results = [["value", 10**12], ["value", -10**12], ["value", True]] + [["failed", longest]] * (N_REPLY - 3)
    module = reply_with({"results": results, "walls": list(sandbox.WALLS)})
    assert sandbox._execute(module, "f", [(0,)] * N_REPLY, 5.0) == \
        [10**12, -10**12, True] + [CallFailed(longest)] * (N_REPLY - 3)


@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_reply_is_an_error_for_that_program_not_a_crash(name):
    # catches: KeyError, TypeError or RecursionError in the parent, or a wrong reply accepted
    with pytest.raises(CodeCrashed):
        sandbox._execute(reply_with(MALFORMED[name]), "f", [(0,)] * N_REPLY, 5.0)


def test_a_long_error_message_is_cut_not_a_reason_to_lose_the_answer():
    # catches: a child that sends whatever an exception says, which the parent must then refuse whole
    out = run_escaped("raise ValueError('x' * 1000)", [(0,), (1,)])
    assert out == [CallFailed("ValueError: " + "x" * (sandbox.MAX_REASON_CHARS - len("ValueError: ")))] * 2


def test_a_grandchild_does_not_outlive_its_evaluation(monkeypatch):
    # catches: killing only the child: where no limit stops a fork (here the process limit is taken away,
    # as where root cannot become nobody), a grandchild would run on after the answer
    real_limits = confined._limits
    monkeypatch.setattr(confined, "_limits", lambda *a: {name: limit for name, limit in real_limits(*a).items()
                                                        if name != "no new processes"})
    payload = ("import os, time\n"
               "pid = os.fork()\n"
               "if pid == 0:\n"
               "    os.close(0)\n"  # so that the child's answer ends when the child does
               "    time.sleep(60)\n"
               "    os._exit(0)\n"
               "result = pid\n")
    grandchild = run_escaped(payload)[0]
    deadline = time.monotonic() + 5
    while is_running(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_running(grandchild)


def test_a_failed_fork_leaves_no_descriptor_open(monkeypatch):
    # catches: the pipe's two ends left open when no child could be started
    def no_fork():
        raise BlockingIOError(errno.EAGAIN, "no more processes")

    descriptors = open_descriptors()
    monkeypatch.setattr(runner.os, "fork", no_fork)
    with pytest.raises(BlockingIOError):
        run_function(fn("return x"), "f", [(1,)])
    assert open_descriptors() == descriptors


def test_a_function_that_cannot_be_set_up_is_a_crash():
    with pytest.raises(CodeCrashed, match="could not be set up"):
        sandbox._execute(parse_unchecked("def g(x):\n    return x\n"), "f", [(1,)], 5.0)


def evaluate_from_threads(n: int, threads: int = 4) -> None:
    """n evaluations of every kind (right, failing, crashing, timing out) from several threads at once."""
    crash = escaped("import os\nos._exit(3)")
    endless = parse_unchecked(fn("while True:", "    x = x + 1"))

    def one(i: int) -> bool:
        if i % 50 == 49:
            with pytest.raises(CodeTimedOut):
                sandbox._execute(endless, "f", [(i,)], 0.05)
            return True
        if i % 3 == 0:
            return run_function(fn("return x * 3"), "f", [(i,), (-i,)]) == [3 * i, -3 * i]
        if i % 3 == 1:
            return isinstance(run_function(fn("return 1 // x"), "f", [(0,)])[0], CallFailed)
        with pytest.raises(CodeCrashed):
            sandbox._execute(crash, "f", [(i,)], 5.0)
        return True

    processes, descriptors = children(), open_descriptors()
    with ThreadPoolExecutor(threads) as pool:
        assert all(pool.map(one, range(n)))
    assert children() == processes and open_descriptors() == descriptors


def test_calls_from_several_threads_neither_crash_nor_leak():
    # catches: a process start in one thread reaping another thread's child, or a pipe end left open
    evaluate_from_threads(200)
