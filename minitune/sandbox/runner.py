"""The parent's side: run_function checks the code (syntax.py) and its inputs, forks a child that confines
itself (confined.py), and trusts nothing that child does: one deadline, a cap on the answer's size, and an
answer checked for shape before any of it is used."""

from __future__ import annotations

import ast
import atexit
import json
import math
import os
import select
import signal
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn

from minitune.errors import MinituneError, UnsafeCodeError
from minitune.sandbox.confined import MAX_REASON_CHARS, WALLS, _child
from minitune.sandbox.syntax import MAX_VALUE, check_source

MAX_TIMEOUT_S = 60.0  # checked code finishes in microseconds; anything near this is a mistake
# the most an honest answer can take: a reason of MAX_REASON_CHARS characters is at most 12 bytes each
# in JSON (an escaped surrogate pair), plus the brackets, the kind and the names of the walls
_REPLY_BASE_BYTES = 1_024
_REPLY_BYTES_PER_INPUT = 12 * MAX_REASON_CHARS + 160


@dataclass(frozen=True)
class CallFailed:
    """One input for which the function raised, returned nothing, or returned an out-of-range number."""

    reason: str


# Two more kinds of failure an evaluation counts apart from a refusal (WrongFunctionName, in syntax.py, is
# the third). They subclass UnsafeCodeError so that a caller catching it still catches every way
# run_function can fail to give results.
class CodeTimedOut(UnsafeCodeError):
    """The code ran past its time limit and its process group was killed (it may be safe, only slow)."""


class CodeCrashed(UnsafeCodeError):
    """The child running the code died, or answered out of shape; nothing it sent is used."""


def _copy_inputs(inputs: Iterable[tuple]) -> list[tuple]:
    """The inputs read once into plain tuples of ints and bools: what is checked here is exactly what runs."""
    copied = []
    for i, args in enumerate(list(inputs)):
        if not isinstance(args, tuple):
            raise TypeError(f"inputs[{i}] must be a tuple of arguments, got {type(args).__name__}")
        args = tuple(args)  # one read: a tuple subclass cannot show the check one thing and the child another
        for value in args:
            if type(value) not in (int, bool):
                raise UnsafeCodeError(f"refused: inputs[{i}] holds a {type(value).__name__}; only ints and bools")
            if abs(value) > MAX_VALUE:
                raise UnsafeCodeError(f"refused: inputs[{i}] holds a number too large "
                                      f"({value.bit_length()} bits; |x| <= 10**12 allowed)")
        copied.append(args)
    return copied


def _check_timeout(timeout_s: float) -> float:
    # bool is an int to Python, and timeout_s=True is a bug, not "one second"
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
        raise ValueError(f"timeout_s must be a number of seconds, got {timeout_s!r}")
    seconds = float(timeout_s)
    if not 0 < seconds <= MAX_TIMEOUT_S:  # also refuses nan and inf
        raise ValueError(f"timeout_s must be above 0 and at most {MAX_TIMEOUT_S:g} seconds, got {timeout_s!r}")
    return seconds


def run_function(source: str, fn_name: str, inputs: Iterable[tuple], timeout_s: float = 1.0) -> list:
    """Check source, then run fn_name on each input tuple in a confined child; return value or CallFailed each."""
    fn = check_source(source, fn_name)
    inputs = _copy_inputs(inputs)
    timeout_s = _check_timeout(timeout_s)
    if not inputs:
        return []
    return _execute(ast.Module(body=[fn], type_ignores=[]), fn_name, inputs, timeout_s)


def confinement() -> dict[str, bool]:
    """Which walls of WALLS this machine lets the child raise, measured by running a trivial function."""
    global _granted
    if _granted is None:
        _, walls = _run(ast.parse("def f(x):\n    return x\n"), "f", [(0,)], 10.0)
        _granted = {name: name in walls for name in WALLS}
    return dict(_granted)


# ---------------------------------------------------------------- running one child


def _execute(module: ast.Module, fn_name: str, inputs: list[tuple], timeout_s: float) -> list:
    """Run an already-checked module in a confined child (the seam tests use to run unchecked code)."""
    return _run(module, fn_name, inputs, timeout_s)[0]


def _run(module: ast.Module, fn_name: str, inputs: list[tuple], timeout_s: float) -> tuple[list, list[str]]:
    timeout_s = _check_timeout(timeout_s)
    if not hasattr(os, "fork"):
        raise MinituneError("the code evaluator needs os.fork (Linux or macOS); it cannot run code here")
    code = compile(module, "<sandbox>", "exec")
    empty_root, parent = _empty_dir(), os.getpid()
    limit = _REPLY_BASE_BYTES + _REPLY_BYTES_PER_INPUT * len(inputs)
    deadline = time.monotonic() + timeout_s  # one deadline for starting, running and answering
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except BaseException:
        os.close(read_end)
        os.close(write_end)
        raise
    if pid == 0:
        _child(write_end, code, fn_name, inputs, timeout_s, parent, empty_root)  # never returns
    os.close(write_end)  # the child holds the only write end now, so its exit reads as the end of the answer
    try:
        reply, problem = _read_reply(read_end, deadline, limit)
    finally:
        os.close(read_end)
        _kill_group(pid)
        _reap(pid)
    if problem == "timed out":
        raise CodeTimedOut(f"timed out after {timeout_s:g} s (its process group was killed)")
    if problem == "too long":
        raise CodeCrashed(f"the sandbox's answer ran past {limit} bytes (its process group was killed)")
    if not reply:
        raise CodeCrashed("the sandbox process ended without answering (killed by a limit, or it crashed)")
    return _parse_reply(reply, len(inputs))


def _read_reply(fd: int, deadline: float, limit: int) -> tuple[bytes, str | None]:
    """Everything the child writes until it closes the pipe; stops at the deadline or past `limit` bytes."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks, size = [], 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"", "timed out"
        if not poller.poll(math.ceil(left * 1000)):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks), None
        size += len(chunk)
        if size > limit:
            return b"", "too long"
        chunks.append(chunk)


def _kill_group(pid: int) -> None:
    # Always, even after a complete answer: it kills whatever the child may have left behind in its group.
    # The child is not reaped yet, so neither its pid nor its group id can have been given to anyone else.
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # it died before (or never reached) setsid
        pass
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    # waitpid on this pid only: concurrent calls from other threads each wait for their own child
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # SIGCHLD set to SIG_IGN by the application: the kernel reaped it already
        pass


def _malformed(what: str) -> NoReturn:
    raise CodeCrashed(f"the sandbox sent a malformed answer ({what}); none of it is used")


def _parse_reply(data: bytes, n: int) -> tuple[list, list[str]]:
    """The child's answer, checked for shape, count, kinds, types and sizes before any of it is used."""
    try:
        message = json.loads(data)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deep, an int of too many digits
        _malformed("not readable JSON")
    if type(message) is not dict or set(message) not in ({"results", "walls"}, {"error", "walls"}):
        _malformed("not an object with results or error, and walls")
    walls = message["walls"]
    if type(walls) is not list or not all(type(w) is str and w in WALLS for w in walls):
        _malformed("walls is not a list of known names")
    if "error" in message:
        error = message["error"]
        if type(error) is not str or len(error) > MAX_REASON_CHARS:
            _malformed("error is not a short string")
        raise CodeCrashed(f"the function could not be set up: {error}")
    results = message["results"]
    if type(results) is not list or len(results) != n:
        _malformed(f"expected a list of {n} results")
    return [_parse_result(item) for item in results], walls


def _parse_result(item) -> int | bool | CallFailed:
    if type(item) is list and len(item) == 2:
        kind, value = item
        if kind == "value" and type(value) in (int, bool) and abs(value) <= MAX_VALUE:
            return value
        if kind == "failed" and type(value) is str and len(value) <= MAX_REASON_CHARS:
            return CallFailed(value)
    _malformed("a result that is not [\"value\", int or bool in range] or [\"failed\", short string]")


def _empty_dir() -> str:
    """An empty directory, made once per process, for the child to take as its root (removed at exit)."""
    global _empty_root
    with _empty_root_lock:
        if _empty_root is None or not os.path.isdir(_empty_root):  # e.g. swept away by a temp cleaner
            _empty_root = tempfile.mkdtemp(prefix="minitune-sandbox-")
            os.chmod(_empty_root, 0o500)  # nothing may be created in it
            atexit.register(_remove_empty_dir, _empty_root)
        return _empty_root


def _remove_empty_dir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:  # already gone, or something was put in it; a stray temporary directory is harmless
        pass


_empty_root: str | None = None
_empty_root_lock = threading.Lock()
_granted: dict[str, bool] | None = None
