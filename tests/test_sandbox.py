"""The restricted evaluator: good functions give Python's answers; hostile code is refused before it runs;
code that gets past the check anyway (run here through an unchecked seam) meets a confined child, and
nothing that child does can hang or crash the parent."""

import ast
import ctypes
import errno
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minitune.sandbox as sandbox
from minitune.errors import MinituneError, UnsafeCodeError
from minitune.sandbox import CallFailed, CodeCrashed, CodeTimedOut, check_source, run_function


def fn(*lines: str, args: str = "x") -> str:
    """Source of `def f(args):` with the given body lines."""
    return f"def f({args}):\n" + "".join(f"    {line}\n" for line in lines)


# ---------------------------------------------------------------- good functions


def test_one_argument():
    assert run_function(fn("return x * x - 3"), "f", [(0,), (4,), (-5,)]) == [-3, 13, 22]


def test_two_arguments_if_elif_else():
    source = fn("if x > y:", "    return x - y", "elif x == y:", "    return 0", "else:", "    return y - x",
                args="x, y")
    assert run_function(source, "f", [(5, 2), (3, 3), (-1, 4)]) == [3, 0, 5]


def test_conditional_expression_and_local_assignment():
    source = fn("a = x + 1", "b = a * 2", "a = b - x", "return a if a > 10 else -a")
    # a = (x + 1) * 2 - x = x + 2
    assert run_function(source, "f", [(20,), (3,)]) == [22, -5]


def test_modulo_and_floor_division_follow_python_on_negative_numbers():
    source = fn("return x // y * 1000 + x % y", args="x, y")
    cases = [(7, 2), (-7, 2), (7, -2), (-7, -3)]
    assert run_function(source, "f", cases) == [x // y * 1000 + x % y for x, y in cases]


def test_comparisons_return_bools_and_boolean_operators_return_operands():
    out = run_function(fn("return x < y", args="x, y"), "f", [(1, 2), (2, 1)])
    assert out == [True, False] and all(type(v) is bool for v in out)
    out = run_function(fn("return x and y or not x", args="x, y"), "f", [(3, 5), (3, 0), (0, 9)])
    assert out == [5, False, True]
    assert [type(v) for v in out] == [int, bool, bool]


def test_small_constant_powers_and_bool_inputs():
    assert run_function(fn("return x ** 3 + x ** 0"), "f", [(-2,), (True,)]) == [-7, 2]


def test_per_input_failures_come_back_as_call_failed():
    out = run_function(fn("return 100 // x"), "f", [(5,), (0,), (-3,)])
    assert out[0] == 20 and out[2] == -34
    assert isinstance(out[1], CallFailed) and "ZeroDivisionError" in out[1].reason

    unbound = run_function(fn("if x > 0:", "    y = 1", "return y"), "f", [(1,), (-1,)])
    assert unbound[0] == 1 and "UnboundLocalError" in unbound[1].reason

    no_return = run_function(fn("if x > 0:", "    return 1"), "f", [(-1,)])
    assert isinstance(no_return[0], CallFailed) and "NoneType" in no_return[0].reason

    too_big = run_function(fn("return x * x"), "f", [(10**6,), (10**6 + 1,)])
    assert too_big[0] == 10**12 and "too large" in too_big[1].reason

    wrong_arity = run_function(fn("return x"), "f", [(1, 2)])
    assert "TypeError" in wrong_arity[0].reason


def test_check_source_returns_the_function_and_empty_inputs_run_nothing(monkeypatch):
    tree = check_source(fn("return x"), "f")
    assert isinstance(tree, ast.FunctionDef) and tree.name == "f"
    monkeypatch.setattr(sandbox, "_execute", lambda *a: pytest.fail("nothing to run"))
    assert run_function(fn("return x"), "f", []) == []


def test_inputs_are_validated():
    with pytest.raises(UnsafeCodeError, match="too large"):
        run_function(fn("return x"), "f", [(1,), (10**20,)])
    with pytest.raises(UnsafeCodeError, match="float"):
        run_function(fn("return x"), "f", [(1.5,)])
    with pytest.raises(TypeError):
        run_function(fn("return x"), "f", [1])
    assert run_function(fn("return x"), "f", [(-10**12,)]) == [-10**12]  # the bound itself is allowed


# ---------------------------------------------------------------- hostile code, refused before running

# each source either names what it does or would create {marker} if it ran
HOSTILE = {
    "import": ("import os\ndef f(x):\n    return os.system('touch {marker}')\n", "import"),
    "__import__": (fn("return __import__('os').system('touch {marker}')"), "function call"),
    "subclasses": (fn("return ().__class__.__bases__[0].__subclasses__()"), "line 2"),
    "open": (fn("return open('{marker}', 'w')"), "function call"),
    "eval": (fn("return eval('1')"), "function call"),
    "exec": (fn("return exec(\"open('{marker}', 'w')\")"), "function call"),
    "attribute chain": (fn("return x.real.numerator"), "attribute"),
    "getattr": (fn("return getattr(x, 'real')"), "function call"),
    "lambda": (fn("g = lambda y: y", "return x"), "lambda"),
    "list comprehension": (fn("return [y for y in x]"), "comprehension"),
    "while": (fn("while True:", "    pass", "return x"), "loop"),
    "for": (fn("for i in x:", "    x = x + 1", "return x"), "loop"),
    "recursion": (fn("return f(x)"), "function call"),
    "tower of powers": (fn("return 9 ** 9 ** 9"), "exponent"),
    "big power": (fn("return 10 ** 100"), "exponent"),
    "string times": (fn("return 'a' * 10 ** 9"), "str constant"),
    "string constant": (fn("return 'hello'"), "str constant"),
    "decorator": ("@open('{marker}', 'w')\ndef f(x):\n    return x\n", "decorator"),
    "default runs code": ("def f(x, y=open('{marker}', 'w')):\n    return x\n", "default"),
    "two functions": (fn("return x") + "def g(x):\n    return x\n", "second function"),
    "class": ("class A:\n    pass\n" + fn("return x"), "class"),
    "top-level call": ("open('{marker}', 'w')\n" + fn("return x"), "top level"),
    "top-level assignment": ("y = 1\n" + fn("return x"), "top level"),
    "global": (fn("global y", "y = x", "return x"), "global"),
    "dunder name": (fn("return __builtins__"), "'__builtins__'"),
    "underscore argument": (fn("return _x", args="_x"), "'_x'"),
    "underscore local": (fn("_y = x", "return _y"), "'_y'"),
    "true division": (fn("return x / 2"), "'/'"),
    "docstring": (fn("'''doc'''", "return x"), "expression statement"),
    "nested def": (fn("def g(y):", "    return y", "return x"), "nested function"),
    "async": ("async def f(x):\n    return x\n", "async def"),
    "try": (fn("try:", "    return x", "except:", "    return 0"), "try"),
    "with": (fn("with x:", "    return x"), "with"),
    "walrus": (fn("return (y := x)"), ":="),
    "f-string": (fn("return f'{{x}}'"), "f-string"),
    "augmented assignment": (fn("x += 1", "return x"), "augmented"),
    "tuple": (fn("return x, x"), "tuple"),
    "shift": (fn("return 1 << 1000000"), "LShift"),
    "invert": (fn("return ~x"), "~"),
    "is": (fn("return x is None"), "comparison"),
    "None": (fn("return None"), "NoneType constant"),
    "float": (fn("return x * 1.5"), "float constant"),
    "huge literal": (fn("return 10000000"), "too large"),
    "star args": (fn("return x", args="*x"), "*args"),
    "keyword-only": (fn("return x", args="*, x"), "keyword-only"),
    "annotation": (fn("return x", args="x: int"), "annotation"),
    "bare return": (fn("return"), "bare return"),
    "unknown name": (fn("return y"), "'y'"),
    "used before assignment": (fn("z = y", "y = 1", "return z"), "'y'"),
    "squaring through locals": (fn(*[f"x = x * x" for _ in range(8)], "return x"), "too large"),
    "wrong name": ("def g(x):\n    return x\n", "named 'g'"),
    "empty": ("# just a comment\n", "no function"),
    "syntax error": ("def f(x):\n    return x +\n", "syntax error"),
    "syntax error 2": ("def f(x) return x", "syntax error"),
    "too long": (fn("return " + " + ".join(["x"] * 600)), "characters"),
    "too deep": (fn("return " + "-" * 60 + "x"), "deeper"),
    "null byte": (fn("return x") + "\0", ""),  # ValueError or SyntaxError, by Python version
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_code_is_refused_before_running(name, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    source, reason = HOSTILE[name]
    source = source.format(marker=marker)
    monkeypatch.setattr(sandbox, "_execute", lambda *a: pytest.fail("refused code reached the runner"))
    with pytest.raises(UnsafeCodeError, match=r"^refused: .*" + re.escape(reason)) as caught:
        check_source(source, "f")
    with pytest.raises(UnsafeCodeError):
        run_function(source, "f", [(1,)])
    assert isinstance(caught.value, MinituneError)
    assert not marker.exists()


def test_the_size_guards_refuse_only_past_their_bounds():
    # catches: a size check off by one (>= for >), which would refuse code at exactly the allowed size
    body = "return x"
    at_limit = fn(body + " " * (sandbox.MAX_SOURCE_CHARS - len(fn(body))))
    assert len(at_limit) == sandbox.MAX_SOURCE_CHARS
    check_source(at_limit, "f")
    with pytest.raises(UnsafeCodeError, match="characters"):
        check_source(at_limit + " ", "f")
    depth = {k: sandbox._tree_depth(ast.parse(fn("return " + "-" * k + "x"))) for k in range(60)}
    deepest = max(k for k, d in depth.items() if d <= sandbox.MAX_AST_DEPTH)
    assert depth[deepest] == sandbox.MAX_AST_DEPTH
    check_source(fn("return " + "-" * deepest + "x"), "f")
    with pytest.raises(UnsafeCodeError, match="deeper"):
        check_source(fn("return " + "-" * (deepest + 1) + "x"), "f")


def test_refusals_name_the_line():
    with pytest.raises(UnsafeCodeError, match=r"function call \(line 4\)"):
        check_source(fn("y = x + 1", "if y > 2:", "    return len(y)", "return y"), "f")


# ---------------------------------------------------------------- inputs, read once


class Shifty(tuple):
    """A tuple that shows its first reader small numbers and every later reader a huge one."""

    reads = 0

    def __iter__(self):
        Shifty.reads += 1
        return iter((1,) if Shifty.reads == 1 else (10**20,))


def test_inputs_are_read_once_so_what_runs_is_what_was_checked():
    # catches: checking the caller's tuples and then handing those same objects to the child
    Shifty.reads = 0
    assert run_function(fn("return x"), "f", [Shifty((1,))]) == [1]

    class ShiftyList(list):
        def __iter__(self):
            self.reads = getattr(self, "reads", 0) + 1
            return iter([(2,)] if self.reads == 1 else [(10**20,), (3,)])

    assert run_function(fn("return x"), "f", ShiftyList()) == [2]


def test_source_and_name_must_be_plain_strings():
    # catches: trusting a str subclass's len() in the size check
    class Short(str):
        def __len__(self):
            return 0

    long_source = fn(*["x = x + 1"] * 300, "return x")
    assert len(long_source) > sandbox.MAX_SOURCE_CHARS
    with pytest.raises(TypeError):
        run_function(Short(long_source), "f", [(1,)])
    with pytest.raises(ValueError):
        run_function(fn("return x"), Short("f"), [(1,)])


@pytest.mark.parametrize("timeout_s", [True, 0, -1.0, float("nan"), float("inf"), 60.5, 1e9, "1", None])
def test_timeout_must_be_a_sensible_number_of_seconds(timeout_s):
    # catches: accepting True as one second, or a timeout so long it is no timeout
    with pytest.raises(ValueError):
        run_function(fn("return x"), "f", [(1,)], timeout_s=timeout_s)


def test_timeouts_up_to_the_bound_are_accepted():
    assert sandbox.MAX_TIMEOUT_S == 60
    for timeout_s in (2, 0.5, sandbox.MAX_TIMEOUT_S):
        assert run_function(fn("return x"), "f", [(1,)], timeout_s=timeout_s) == [1]


def test_a_safe_function_under_another_name_is_told_apart_from_unsafe_code():
    # catches: checking the name before the body, so that unsafe code could be reported as merely misnamed
    with pytest.raises(sandbox.WrongFunctionName):
        check_source(fn("return x").replace("def f", "def g"), "f")
    with pytest.raises(UnsafeCodeError) as caught:
        check_source("def g(x):\n    return open(x)\n", "f")
    assert not isinstance(caught.value, sandbox.WrongFunctionName)


# ---------------------------------------------------------------- the second wall, with the first bypassed


def parse_unchecked(source: str) -> ast.Module:
    return ast.parse(source)  # deliberately skips check_source: only the runner's guards stand


def escaped(payload: str) -> ast.Module:
    """An unchecked f(x) that gets the real builtins back in one line and runs payload with them.

    This is what a hole in the checker would hand an attacker; f returns the payload's `result`.
    """
    return parse_unchecked(
        "def f(x):\n"
        "    b = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0]"
        ".__init__.__globals__['__builtins__']\n"
        "    ns = {'__builtins__': b, 'x': x}\n"
        f"    b['exec']({payload!r}, ns)\n"
        "    return ns['result']\n")


def run_escaped(payload: str, inputs=((0,),), timeout_s: float = 5.0) -> list:
    return sandbox._execute(escaped(payload), "f", list(inputs), timeout_s)


def needs(wall: str) -> None:
    if not sandbox.confinement()[wall]:
        pytest.skip(f"this machine does not let the child raise the wall {wall!r}")


def children() -> set[int]:
    """This process's child processes, zombies included (Linux)."""
    if not os.path.exists(f"/proc/self/task/{os.getpid()}/children"):
        pytest.skip("no /proc/<pid>/task/<tid>/children here to count child processes with")
    pids = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return pids


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def open_dir():
    """A directory anyone may write to and read from, so that only the walls, not permissions, stop the child."""
    path = Path(tempfile.mkdtemp())
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def test_one_line_gets_past_empty_builtins():
    # the control for every test below: were the escape broken, they would pass for the wrong reason
    assert run_escaped("import os\nresult = os.getpid()")[0] not in (os.getpid(), None)
    assert isinstance(sandbox._execute(parse_unchecked(fn("return len([x])")), "f", [(1,)], 5.0)[0], CallFailed)


def test_the_child_can_open_no_file_or_socket(open_dir):
    # catches: a child that keeps the parent's descriptor limit
    secret = open_dir / "secret"
    secret.write_text("token")
    secret.chmod(0o644)
    target = open_dir / "written"
    payload = ("import socket\n"
               f"attempts = [lambda: open({str(target)!r}, 'w'), lambda: open({str(secret)!r}),\n"
               "            lambda: socket.socket(), lambda: __import__('os').pipe()]\n"
               "try:\n"
               "    attempts[x]()\n"
               "    result = 0\n"
               "except OSError as e:\n"
               "    result = e.errno\n")
    assert run_escaped(payload, [(0,), (1,), (2,), (3,)]) == [errno.EMFILE] * 4
    assert not target.exists()


def test_with_its_pipe_closed_the_child_still_finds_no_file_or_program(open_dir):
    # catches: a child left in the real filesystem, where closing the answer pipe frees a descriptor
    needs("empty root")
    target, marker = open_dir / "written", open_dir / "ran"
    touch = shutil.which("touch") or pytest.skip("no touch program to try to exec")
    for payload in (f"import os\nos.close(0)\nopen({str(target)!r}, 'w')",
                    f"import os\nos.close(0)\nos.execv({touch!r}, ['touch', {str(marker)!r}])"):
        with pytest.raises(CodeCrashed):  # it cannot answer through a closed pipe
            run_escaped(payload)
    assert not target.exists() and not marker.exists()


def test_the_empty_root_comes_back_if_a_temporary_files_cleaner_removes_it():
    # catches: a root directory made once and trusted for ever, which would silently end the chroot
    needs("empty root")
    os.rmdir(sandbox._empty_dir())
    assert run_escaped("import os\nresult = int(os.getcwd() == '/')") == [1]


def test_the_child_sees_no_environment(monkeypatch):
    # catches: a fork that keeps the parent's environment, tokens and all
    monkeypatch.setenv("MINITUNE_TEST_SECRET", "hunter2")
    assert run_escaped("import os\nresult = len(os.environ)") == [0]


def test_the_child_cannot_start_a_process():
    # catches: no RLIMIT_NPROC, or one set while still root (it does not bind root)
    needs("no new processes")
    payload = ("import os\n"
               "try:\n"
               "    pid = os.fork()\n"
               "except OSError as e:\n"
               "    result = e.errno\n"
               "else:\n"
               "    if pid == 0:\n"
               "        os._exit(0)\n"
               "    os.waitpid(pid, 0)\n"
               "    result = 0\n")
    assert run_escaped(payload) == [errno.EAGAIN]


def test_the_child_cannot_reach_the_network():
    # catches: a child in the parent's network namespace (it frees a descriptor by closing its pipe first)
    needs("no network")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        payload = ("import os, socket\n"
                   "os.close(0)\n"
                   "s = socket.socket()\n"  # not create_connection: its idna codec is not importable in a chroot
                   "s.settimeout(2)\n"
                   f"s.connect(('127.0.0.1', {port}))\n")
        with pytest.raises(CodeCrashed):
            run_escaped(payload)
        readable, _, _ = select.select([listener], [], [], 0.2)
        assert readable == []  # nobody connected


def test_the_child_cannot_take_much_memory():
    # catches: no address-space limit (a bomb would take the machine's memory, not just its own)
    needs("address space")
    payload = ("try:\n"
               "    block = bytearray(1 << 30)\n"
               "    result = 0\n"
               "except MemoryError:\n"
               "    result = 1\n")
    assert run_escaped(payload) == [1]


def test_the_limits_are_set_and_cannot_be_raised_again():
    # catches: a missing limit, a soft-only limit the code may raise, or root keeping CAP_SYS_RESOURCE
    needs("no privileges")
    payload = ("import resource as r\n"
               "limits = [r.RLIMIT_CPU, r.RLIMIT_FSIZE, r.RLIMIT_NOFILE, r.RLIMIT_CORE, r.RLIMIT_NPROC]\n"
               "if x < len(limits):\n"
               "    result = r.getrlimit(limits[x])[1]\n"
               "elif x == len(limits):\n"
               "    result = int(r.getrlimit(r.RLIMIT_AS)[1] != r.RLIM_INFINITY)\n"
               "else:\n"
               "    try:\n"
               "        r.setrlimit(r.RLIMIT_NOFILE, (64, 64))\n"
               "        result = 0\n"
               "    except ValueError:\n"
               "        result = 1\n")
    # hard limits: CPU seconds (the 5 s timeout + 2), file size, descriptors, core size, processes
    assert run_escaped(payload, [(i,) for i in range(7)], timeout_s=5.0) == [7, 0, 1, 0, 0, 1, 1]


def test_the_child_holds_only_its_answer_pipe_in_a_session_of_its_own(tmp_path):
    # catches: inherited descriptors, and a child in the parent's process group (a group kill would miss
    # nothing then, but the parent's own kill would have to chase grandchildren one by one)
    payload = ("import os\n"
               "def is_open(fd):\n"
               "    try:\n"
               "        os.fstat(fd)\n"
               "        return True\n"
               "    except OSError:\n"
               "        return False\n"
               "checks = [lambda: sum(map(is_open, range(4096))),\n"
               "          lambda: os.getsid(0) == os.getpgid(0) == os.getpid(),\n"
               "          lambda: os.geteuid() != 0]\n"
               "result = checks[x]()\n")
    with open(tmp_path / "held", "w"):  # one more descriptor the child must not get
        assert run_escaped(payload, [(0,), (1,), (2,)]) == [1, True, True]


def test_the_child_dies_with_the_process_that_evaluates(tmp_path):
    # catches: a child left running (until its CPU limit, if ever: this one sleeps) when its parent is killed
    needs("dies with parent")
    script = tmp_path / "parent.py"
    script.write_text(
        "import ast, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import minitune.sandbox as sandbox\n"
        "from test_sandbox import escaped\n"
        "print(sandbox._empty_dir(), flush=True)\n"
        "sandbox._execute(escaped('import time\\ntime.sleep(60)'), 'f', [(0,)], 30.0)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, cwd=Path(__file__).parents[1])
    empty_root = Path(parent.stdout.readline().decode().strip())  # killed, it cannot remove this itself
    try:
        assert empty_root.name.startswith("minitune-sandbox-")  # the script is running
        deadline = time.monotonic() + 30
        while not (grandchildren := children_of(parent.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(grandchildren) == 1
        child = grandchildren.pop()
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while is_running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not is_running(child)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        if empty_root.name.startswith("minitune-sandbox-") and empty_root.is_dir():
            empty_root.rmdir()


def children_of(pid: int) -> set[int]:
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found.update(int(p) for p in f.read().split())
    return found


def is_running(pid: int) -> bool:
    """Whether pid is alive, a zombie counting as dead (an orphan's reaper may be slow to collect it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_evaluator_still_runs_where_the_platform_refuses_the_optional_walls(monkeypatch):
    # catches: a wall whose refusal crashes the child instead of leaving that wall out
    def refuse(*args):
        raise PermissionError("refused here")

    real_setrlimit = sandbox.resource.setrlimit
    monkeypatch.setattr(sandbox, "_LIBC", None)  # as on macOS: no prctl, unshare or capset
    monkeypatch.setattr(sandbox.os, "chroot", refuse)
    monkeypatch.setattr(sandbox.resource, "setrlimit",  # as where RLIMIT_AS cannot be set
                        lambda which, limits: refuse() if which == sandbox.resource.RLIMIT_AS
                        else real_setrlimit(which, limits))
    monkeypatch.setattr(sandbox, "_granted", None)
    assert run_function(fn("return x + 1"), "f", [(1,)]) == [2]
    walls = sandbox.confinement()
    assert [name for name in sandbox.WALLS if not walls[name]] == \
        ["no network", "empty root", "no new privileges", "dies with parent", "address space"]


def test_the_report_names_every_wall():
    walls = sandbox.confinement()
    assert set(walls) == set(sandbox.WALLS)
    # these need nothing but POSIX, so every machine that can fork grants them
    assert all(walls[name] for name in ("own session", "descriptors closed", "empty environment", "cpu time",
                                        "no file writes", "one descriptor", "no core dumps"))


def kernel_allows(flags: int) -> bool:
    """Whether a forked process here may unshare these namespaces (asked directly, not through sandbox)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0 if ctypes.CDLL(None, use_errno=True).unshare(flags) == 0 else 1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


@pytest.mark.skipif(sys.platform != "linux", reason="the namespaces and prctl walls are Linux's")
def test_every_wall_the_kernel_allows_is_raised():
    # catches: a wall silently dropped, which the tests that need it would only skip
    walls = sandbox.confinement()
    assert walls["dies with parent"] and walls["no new privileges"]  # prctl: any Linux since 3.5
    new_user, new_net = 0x10000000, 0x40000000
    if kernel_allows(new_net if os.geteuid() == 0 else new_user | new_net):
        assert walls["no network"] and walls["empty root"] and walls["no privileges"]
    if os.geteuid() != 0 or walls["no privileges"]:
        assert walls["no new processes"] and walls["address space"]


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
    real_limits = sandbox._limits
    monkeypatch.setattr(sandbox, "_limits", lambda *a: {name: limit for name, limit in real_limits(*a).items()
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
    monkeypatch.setattr(sandbox.os, "fork", no_fork)
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


# ---------------------------------------------------------------- agreement with Python


def _extend(children):
    def fmt(template):
        return lambda parts: template.format(*parts)

    binary = st.sampled_from(["+", "-", "*", "//", "%", "==", "!=", "<", "<=", ">", ">=", "and", "or"])
    return st.one_of(
        st.tuples(children, binary, children).map(fmt("({} {} {})")),
        st.tuples(children, st.integers(0, 3)).map(fmt("({} ** {})")),
        st.tuples(st.sampled_from(["-", "+", "not "]), children).map(fmt("({}{})")),
        st.tuples(children, children, children).map(fmt("({} if {} else {})")),
    )


expressions = st.recursive(
    st.one_of(st.sampled_from(["x", "y"]), st.integers(-50, 50).map(lambda c: f"({c})")), _extend, max_leaves=8)
numbers = st.one_of(st.integers(-100, 100), st.integers(-10**12, 10**12))


def python_answer(expr: str, x: int, y: int):
    try:
        value = eval(expr, {"__builtins__": {}}, {"x": x, "y": y})
    except ZeroDivisionError:
        return "failed"
    return "failed" if abs(value) > 10**12 else (type(value), value)


@settings(max_examples=80, deadline=None)  # each example forks one process
@given(expressions, st.lists(st.tuples(numbers, numbers), min_size=1, max_size=4))
def test_sandbox_agrees_with_python_eval(expr, pairs):
    source = fn(f"return {expr}", args="x, y")
    try:
        check_source(source, "f")
    except UnsafeCodeError as exc:  # only the size guards may refuse a generated expression
        assert "too large" in str(exc) or "deeper" in str(exc)
        assume(False)
    got = run_function(source, "f", pairs)
    for out, (x, y) in zip(got, pairs):
        expected = python_answer(expr, x, y)
        assert ("failed" if isinstance(out, CallFailed) else (type(out), out)) == expected
