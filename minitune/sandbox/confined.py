"""The child's side: what the forked child does to confine itself before any of the code runs (WALLS
names each piece), and then runs the code and answers the parent through the pipe."""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
from typing import NoReturn

from minitune.sandbox.syntax import MAX_VALUE

try:
    import pwd
    import resource
except ImportError:  # Windows, where the code cannot run anyway (no fork)
    pwd = resource = None

MAX_REASON_CHARS = 200  # of a CallFailed reason
MEMORY_MARGIN = 256 * 2**20  # address space the child may map beyond what it inherits from the parent

# The second wall, piece by piece, as confinement() reports it (which ones a machine grants varies).
WALLS = (
    "own session",         # setsid: the deadline kills the whole process group, grandchildren included
    "descriptors closed",  # all but the answer pipe, which becomes descriptor 0
    "empty environment",   # os.environ cleared: no tokens or paths to read
    "no network",          # a new network namespace with no interfaces up
    "empty root",          # chroot into an empty directory: no file to open, no program to exec
    "no privileges",       # root becomes nobody; in a user namespace every capability is dropped
                           # (a child started by an ordinary user has none to begin with)
    "no new privileges",   # PR_SET_NO_NEW_PRIVS: exec of a setuid program gains nothing
    "dies with parent",    # PR_SET_PDEATHSIG: killed if the evaluating process dies first
    "cpu time",            # RLIMIT_CPU: a second deadline the kernel enforces by itself
    "no file writes",      # RLIMIT_FSIZE 0
    "one descriptor",      # RLIMIT_NOFILE 1, taken by the answer pipe: no file, socket or pipe can be opened
    "no core dumps",       # RLIMIT_CORE 0
    "no new processes",    # RLIMIT_NPROC 0 (binds only a process that is not root)
    "address space",       # RLIMIT_AS: what it inherited plus MEMORY_MARGIN
)


def _child(write_end: int, code, fn_name: str, inputs: list[tuple], timeout_s: float, parent: int,
           empty_root: str) -> NoReturn:
    status = 70  # anything going wrong in the child itself, seen by the parent as no answer
    try:
        walls = _confine(write_end, empty_root, timeout_s, parent)
        message = _answers(code, fn_name, inputs)
        data = json.dumps({**message, "walls": walls}).encode()
        while data:
            data = data[os.write(0, data):]
        status = 0
    finally:
        os._exit(status)  # whatever happened, never return into the parent's code (or run its atexit hooks)


def _answers(code, fn_name: str, inputs: list[tuple]) -> dict:
    try:
        namespace = {"__builtins__": {}}
        exec(code, namespace)
        return {"results": [_call_one(namespace[fn_name], args) for args in inputs]}
    except Exception as exc:  # cannot happen for checked code; report it instead of printing a traceback
        return {"error": f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]}


def _call_one(fn, args: tuple) -> list:
    # returns ["value", v] or ["failed", reason], plain JSON either way; the parent refuses longer reasons
    try:
        value = fn(*args)
    except Exception as exc:  # ZeroDivisionError, UnboundLocalError, TypeError (arity), ...
        return ["failed", f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]]
    if type(value) not in (int, bool):
        return ["failed", f"returned {type(value).__name__}, not an int or bool"[:MAX_REASON_CHARS]]
    if abs(value) > MAX_VALUE:
        return ["failed", f"result too large ({value.bit_length()} bits; |result| <= 10**12 allowed)"]
    return ["value", value]


def _confine(write_end: int, empty_root: str, timeout_s: float, parent: int) -> list[str]:
    """Raise every wall the platform allows, before any of the code runs; return the names of those raised."""
    walls = []
    os.setsid()  # its own session and process group: the parent's kill takes the group, grandchildren too
    walls.append("own session")
    address_space = _address_space()  # read now, while files can still be opened
    os.dup2(write_end, 0)  # the answer pipe becomes descriptor 0 and every other descriptor is closed
    os.closerange(1, max(os.sysconf("SC_OPEN_MAX"), write_end + 1))
    walls.append("descriptors closed")
    os.environ.clear()
    walls.append("empty environment")
    walls += _isolate(empty_root)
    if _prctl(_PR_SET_NO_NEW_PRIVS, 1):
        walls.append("no new privileges")
    # after the uid change, which clears it; if the parent is already gone there is nobody to answer
    if _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL):
        if os.getppid() != parent:
            os._exit(1)
        walls.append("dies with parent")
    for name, (which, soft, hard) in _limits(address_space, timeout_s).items():
        if _set_limit(which, soft, hard):
            walls.append(name)
    if os.geteuid() == 0 and "no new processes" in walls:
        walls.remove("no new processes")  # RLIMIT_NPROC does not bind root
    return walls


def _isolate(empty_root: str) -> list[str]:
    """No network, no filesystem, no privileges: as much of it as this platform grants."""
    walls = []
    root = os.geteuid() == 0
    # root may make a network namespace directly; anyone else needs a user namespace around it
    if _unshare(_CLONE_NEWNET if root else _CLONE_NEWUSER | _CLONE_NEWNET):
        walls.append("no network")
    in_user_namespace = not root and "no network" in walls
    try:
        if not (root or in_user_namespace):
            raise PermissionError("chroot needs root or a user namespace")
        os.chroot(empty_root)  # no file can even be named, and there is no program to exec
        os.chdir("/")
        walls.append("empty root")
    except OSError:
        try:
            os.chdir(empty_root)  # relative paths at least lead nowhere
        except OSError:
            pass
    if root:
        try:
            os.setgroups([])
            os.setgid(_NOBODY[1])
            os.setuid(_NOBODY[0])
        except OSError:
            pass
        if os.geteuid() != 0:
            walls.append("no privileges")
    elif not in_user_namespace or _drop_capabilities():  # a user namespace gives full capabilities inside it
        walls.append("no privileges")
    return walls


def _address_space() -> int | None:
    """Bytes of address space this process has mapped (Linux), or None where /proc cannot say."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _limits(address_space: int | None, timeout_s: float) -> dict[str, tuple[int, int, int]]:
    """Wall name -> (resource, soft, hard). Hard limits cannot be raised again without privileges."""
    if resource is None:
        return {}
    cpu = math.ceil(timeout_s) + 1  # a backstop: the parent's deadline normally acts first
    limits = {"cpu time": (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL at the hard
              "no file writes": (resource.RLIMIT_FSIZE, 0, 0),
              "one descriptor": (resource.RLIMIT_NOFILE, 1, 1),  # descriptor 0, the answer pipe, fills it
              "no core dumps": (resource.RLIMIT_CORE, 0, 0)}
    if hasattr(resource, "RLIMIT_NPROC"):
        limits["no new processes"] = (resource.RLIMIT_NPROC, 0, 0)
    if address_space is not None and hasattr(resource, "RLIMIT_AS"):
        limits["address space"] = (resource.RLIMIT_AS, address_space + MEMORY_MARGIN,
                                   address_space + MEMORY_MARGIN)
    return limits


def _set_limit(which: int, soft: int, hard: int) -> bool:
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    try:
        resource.setrlimit(which, (soft, hard))
        return True
    except (ValueError, OSError):
        return False


# The standard library has no prctl, no capset and (before Python 3.12) no unshare, so these three Linux
# calls go through ctypes. Each reports success; elsewhere (or if refused) the wall is simply not raised.
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
_CAPABILITY_VERSION_3 = 0x20080522


def _libc_call(name: str, *args) -> bool:
    function = getattr(_LIBC, name, None)
    return function is not None and function(*args) == 0


def _prctl(option: int, value: int) -> bool:
    return _libc_call("prctl", option, value, 0, 0, 0)


def _unshare(flags: int) -> bool:
    return _libc_call("unshare", flags)


class _CapabilityHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


def _drop_capabilities() -> bool:
    # effective, permitted and inheritable sets all empty, for both 32-bit halves
    return _libc_call("capset", ctypes.byref(_CapabilityHeader(_CAPABILITY_VERSION_3, 0)), (ctypes.c_uint32 * 6)())


def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (KeyError, AttributeError):  # no such user, or no pwd module on this platform
        return 65534, 65534


try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
except (OSError, TypeError):  # no C library to load this way (Windows)
    _LIBC = None
_NOBODY = _nobody()  # looked up once here: after fork the child must not read /etc/passwd
