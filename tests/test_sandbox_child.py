"""The restricted evaluator's second wall: code that gets past the check anyway (run here through an
unchecked seam) meets a confined child that can open, reach and start nothing."""

import ast
import ctypes
import errno
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import minitune.sandbox as sandbox
from minitune.sandbox import CallFailed, CodeCrashed, confined, run_function, runner
from test_sandbox_syntax import fn


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
        "from test_sandbox_child import escaped\n"
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
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.update(int(p) for p in f.read().split())
        except FileNotFoundError:  # a thread that ended between the listing and the read has no children
            pass
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

    real_setrlimit = confined.resource.setrlimit
    monkeypatch.setattr(confined, "_LIBC", None)  # as on macOS: no prctl, unshare or capset
    monkeypatch.setattr(confined.os, "chroot", refuse)
    monkeypatch.setattr(confined.resource, "setrlimit",  # as where RLIMIT_AS cannot be set
                        lambda which, limits: refuse() if which == confined.resource.RLIMIT_AS
                        else real_setrlimit(which, limits))
    monkeypatch.setattr(runner, "_granted", None)
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
