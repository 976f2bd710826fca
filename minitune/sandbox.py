"""A restricted evaluator for small integer functions written by a language model.

Threat model, in plain words: the source comes from a model, so it may be anything -- a correct answer,
a wrong one, nonsense, or (copied from its training data) code that imports `os`, opens files, walks
`().__class__.__subclasses__()` to reach the interpreter's internals, or loops forever. We never try to
spot bad code. Instead we list the little that may run and refuse everything else *before anything
runs*: the checker reads the syntax tree, and only a tree made of the pieces below is ever compiled.

What is allowed (a whitelist; anything not named here is refused, with the reason and the line):

    def f(x, y):                 exactly one top-level def, named as the caller asks; plain positional
        z = x * 2 + 1            arguments; no decorators, defaults, *args, **kwargs, keyword-only or
        if z > y and not x:      positional-only markers, annotations, type parameters, async
            return z % 7         statements: return <expr>, if / elif / else, and name = <expr>
        return -z if y else 0    expressions: ints |c| <= 10**6, True, False, names, + - * // % **,
                                 unary - + not, and / or, == != < <= > >=, x if c else y

Why each refusal:
    calls, attributes, indexing      the only roads to other objects (files, modules, `__subclasses__`)
    imports, global, nonlocal        reach outside the function
    names starting with "_"          dunder names are how escapes are spelled; nothing legitimate needs one
    any other name                   only arguments and locals assigned earlier in the text exist to read
    strings, floats, None, bytes     the task is integer arithmetic; strings are also how payloads travel
    "/"                              true division gives floats; integer code uses "//"
    ** with anything but a constant exponent 0..8, and << >> ~ & | ^   ways to make huge numbers (or
                                     simply not integer arithmetic we need)
    loops, comprehensions, lambda, nested def, class, try, with, raise, del, assert, pass, +=, :=,
    docstrings and other bare expressions, lists/tuples/dicts/sets, f-strings, yield, await, match
                                     not needed for the tasks; each is more surface for no gain
    sources over 2,000 characters or syntax trees deeper than 50 levels

Why every accepted program finishes at once with small numbers: there are no loops and no calls, so each
statement runs at most once and the work is bounded by the size of the tree (under 2,000 characters).
Numbers are bounded by a static check: inputs have |x| <= 10**12 (< 2**40), constants |c| <= 10**6, and
the checker gives every expression a bound on its bit length (a + b: max + 1; a * b: sum; a ** k: k
times; a // b: that of a; a % b: that of b; comparisons and `not`: 1; a name: the largest bound among its
assignments earlier in the text, which are the only ones that can have run, since code only moves forward).
A program whose bound passes 4,096 bits is refused, so `x*x` chains built through locals cannot blow up.

Running, behind a second wall. The checked tree is compiled and run with `{"__builtins__": {}}` as its
globals, which by itself stops nothing: one line (`().__class__.__base__.__subclasses__()`, then some
function's `__globals__`) gets the real builtins back. So the code runs in a child process -- a fork, which
starts in milliseconds with minitune already imported -- that confines itself before anything runs, as far
as the platform allows (WALLS names each piece; confinement() reports which ones a machine granted):
    - its own session and process group, which the parent kills whole at the deadline;
    - every descriptor closed except the answer pipe, and at most one open descriptor, so no file, socket
      or pipe can be opened; no file writes, no core dumps, a CPU-time limit, an address-space limit,
      no new processes, and an empty environment;
    - on Linux: a new network namespace (no network at all), a chroot into an empty directory (no file can
      be named and no program exec'd), no new privileges, and death with the parent. Run as root, the child
      also becomes `nobody`, since root could lift every limit above; run as a user, the network namespace
      and the chroot need a user namespace, and the capabilities that come with it are dropped at once.
      Where the kernel refuses a piece (no user namespaces, say), that piece is missing and the rest stand.
What a child past the first wall could still do: use CPU and memory within its limits until the deadline;
send signals to processes of its own user (`nobody`, or you); and, where no user namespace is allowed (or
on macOS), delete your files or exec a program by name, which need no descriptor. The first wall is what
stops those, which is why it comes first; the second is there in case the reasoning above has a hole.

The parent trusts nothing the child does. One deadline covers starting, running and answering, so a child
that writes half an answer and stalls is killed at it; an answer longer than an honest one can be is cut
off; and the answer (JSON, never pickle) must have exactly the expected shape -- one result per input, each
["value", int or bool within 10**12] or ["failed", short string] -- or none of it is used. Every call forks
its own child, waits for that pid alone and closes both pipe ends on every path, so calls from several
threads at once neither disturb each other nor leak. Forking a process that holds other threads (torch's)
is safe here because the child only runs pure Python and exits. There is no fallback where fork does not
exist (Windows): a fresh interpreter would import torch again for every call, and none of the walls above
exist there; run_function says so rather than run code unconfined.

Conventions for evaluation code:
    run_function returns one entry per input: the int or bool the function returned, or CallFailed(reason)
    when that call raised (ZeroDivisionError, a local read before assignment, wrong number of arguments),
    returned nothing, or returned a number with magnitude above 10**12. Comparisons come back as bools;
    since True == 1 in Python, compare types too if a task must tell them apart.
    UnsafeCodeError is raised for refused code (check_source's reason) and out-of-range inputs. Three of
    its subclasses mark failures that are not refusals, so that a metric can count them apart:
    WrongFunctionName (code that passes every check, under another name), CodeTimedOut and CodeCrashed
    (the child died, or answered out of shape).
"""

from __future__ import annotations

import ast
import atexit
import ctypes
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

try:
    import pwd
    import resource
except ImportError:  # Windows, where the code cannot run anyway (no fork)
    pwd = resource = None

MAX_SOURCE_CHARS = 2_000
MAX_AST_DEPTH = 50
MAX_CONSTANT = 10**6
MAX_VALUE = 10**12  # inputs and results
MAX_POW_EXPONENT = 8
MAX_BITS = 4_096  # static bound on any intermediate number
_INPUT_BITS = MAX_VALUE.bit_length()  # 40

MAX_TIMEOUT_S = 60.0  # checked code finishes in microseconds; anything near this is a mistake
MAX_REASON_CHARS = 200  # of a CallFailed reason
MEMORY_MARGIN = 256 * 2**20  # address space the child may map beyond what it inherits from the parent
# the most an honest answer can take: a reason of MAX_REASON_CHARS characters is at most 12 bytes each
# in JSON (an escaped surrogate pair), plus the brackets, the kind and the names of the walls
_REPLY_BASE_BYTES = 1_024
_REPLY_BYTES_PER_INPUT = 12 * MAX_REASON_CHARS + 160

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

_BIN_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}
_COMPARE_OPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)

# friendlier words for refused nodes; anything missing is named by its class
_REFUSED = {
    "Call": "a function call", "Attribute": "attribute access (x.y)", "Subscript": "indexing (x[i])",
    "Import": "an import", "ImportFrom": "an import", "Global": "a global declaration",
    "Nonlocal": "a nonlocal declaration", "Lambda": "a lambda", "ListComp": "a comprehension",
    "SetComp": "a comprehension", "DictComp": "a comprehension", "GeneratorExp": "a comprehension",
    "While": "a loop", "For": "a loop", "AsyncFor": "a loop", "Try": "try/except", "TryStar": "try/except",
    "With": "a with block", "AsyncWith": "a with block", "Raise": "raise", "Delete": "del",
    "Assert": "assert", "Pass": "pass", "FunctionDef": "a nested function definition",
    "AsyncFunctionDef": "a nested function definition", "ClassDef": "a class definition",
    "Expr": "a bare expression statement (docstrings included)", "AugAssign": "augmented assignment "
    "(write y = y + 1)", "AnnAssign": "an annotated assignment", "NamedExpr": "the walrus operator :=",
    "Starred": "starred unpacking", "JoinedStr": "an f-string", "List": "a list", "Tuple": "a tuple",
    "Dict": "a dict", "Set": "a set", "Yield": "yield", "YieldFrom": "yield", "Await": "await",
    "Match": "a match statement", "TypeAlias": "a type alias",
}


@dataclass(frozen=True)
class CallFailed:
    """One input for which the function raised, returned nothing, or returned an out-of-range number."""

    reason: str


# Three kinds of failure an evaluation counts apart from a refusal. They subclass UnsafeCodeError so that
# a caller catching it still catches every way run_function can fail to give results.
class WrongFunctionName(UnsafeCodeError):
    """Code that passes every check but defines its function under another name than the one asked for."""


class CodeTimedOut(UnsafeCodeError):
    """The code ran past its time limit and its process group was killed (it may be safe, only slow)."""


class CodeCrashed(UnsafeCodeError):
    """The child running the code died, or answered out of shape; nothing it sent is used."""


def _refuse(what: str, node: ast.AST | None = None) -> NoReturn:
    where = f" (line {node.lineno})" if getattr(node, "lineno", None) is not None else ""
    raise UnsafeCodeError(f"refused: {what}{where}")


def _describe(node: ast.AST) -> str:
    return _REFUSED.get(type(node).__name__, type(node).__name__)


class _Checker:
    """Walks a function body, refusing any node off the whitelist and bounding every number's bit length."""

    def __init__(self, fn: ast.FunctionDef):
        # bits[name] bounds |value| < 2**bits over every assignment to name seen so far in the text
        self.bits = {arg.arg: _INPUT_BITS for arg in fn.args.args}

    def statements(self, body: list[ast.stmt]) -> None:
        for node in body:
            self.statement(node)

    def statement(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Return):
            if node.value is None:
                _refuse("a bare return (the function must return a number)", node)
            self.expression(node.value)
        elif isinstance(node, ast.If):
            self.expression(node.test)
            self.statements(node.body)
            self.statements(node.orelse)
        elif isinstance(node, ast.Assign):
            if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
                _refuse("assignment to anything but one plain name", node)
            bits = self.expression(node.value)  # checked first: `y = y + 1` needs an earlier y
            name = self._new_name(node.targets[0].id, node)
            self.bits[name] = max(self.bits.get(name, 0), bits)
        else:
            _refuse(_describe(node), node)

    def _new_name(self, name: str, node: ast.AST) -> str:
        if name.startswith("_"):
            _refuse(f"the name {name!r} (names may not start with '_')", node)
        return name

    def expression(self, node: ast.expr) -> int:
        bits = self._bits(node)
        if bits > MAX_BITS:
            _refuse(f"numbers here could grow past {MAX_BITS} bits (number too large)", node)
        return bits

    def _bits(self, node: ast.expr) -> int:
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            if not isinstance(node.ctx, ast.Load):
                _refuse(f"storing to {node.id!r} here", node)
            self._new_name(node.id, node)
            if node.id not in self.bits:
                _refuse(f"the name {node.id!r} (only arguments and locals assigned above may be read)", node)
            return self.bits[node.id]
        if isinstance(node, ast.BinOp):
            return self._binop(node)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                self.expression(node.operand)
                return 1
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                _refuse("the operator ~", node)
            return self.expression(node.operand)
        if isinstance(node, ast.BoolOp):  # and / or return one of their operands
            return max(self.expression(value) for value in node.values)
        if isinstance(node, ast.Compare):
            for op in node.ops:
                if not isinstance(op, _COMPARE_OPS):
                    _refuse(f"the comparison {type(op).__name__} (is, in and their negations)", node)
            for operand in [node.left, *node.comparators]:
                self.expression(operand)
            return 1
        if isinstance(node, ast.IfExp):
            self.expression(node.test)
            return max(self.expression(node.body), self.expression(node.orelse))
        _refuse(_describe(node), node)

    def _constant(self, node: ast.Constant) -> int:
        value = node.value
        if isinstance(value, bool):
            return 1
        if not isinstance(value, int):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            _refuse(f"the {type(value).__name__} constant {shown} (only ints and bools)", node)
        if abs(value) > MAX_CONSTANT:
            _refuse(f"a constant with magnitude above {MAX_CONSTANT} (number too large)", node)
        return max(1, abs(value).bit_length())

    def _binop(self, node: ast.BinOp) -> int:
        if isinstance(node.op, ast.Div):
            _refuse("true division '/' (it gives floats; use '//')", node)
        if type(node.op) not in _BIN_OPS:
            _refuse(f"the operator {type(node.op).__name__}", node)
        left = self.expression(node.left)
        if isinstance(node.op, ast.Pow):
            k = node.right
            if not (isinstance(k, ast.Constant) and type(k.value) is int and 0 <= k.value <= MAX_POW_EXPONENT):
                _refuse(f"'**' with an exponent other than a constant 0..{MAX_POW_EXPONENT}", node)
            return max(1, left * k.value)
        right = self.expression(node.right)
        if isinstance(node.op, (ast.Add, ast.Sub)):
            return max(left, right) + 1
        if isinstance(node.op, ast.Mult):
            return left + right
        if isinstance(node.op, ast.FloorDiv):
            return left  # |a // b| <= |a| whenever b != 0
        return right  # a % b: |a % b| < |b|


def _tree_depth(root: ast.AST) -> int:
    # iterative, so a pathological tree cannot exhaust Python's recursion limit here
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _check_signature(fn: ast.FunctionDef) -> None:
    args = fn.args
    if fn.decorator_list:
        _refuse("a decorator", fn.decorator_list[0])
    if fn.returns is not None or any(a.annotation is not None for a in args.args):
        _refuse("an annotation", fn)
    if getattr(fn, "type_params", None):
        _refuse("type parameters", fn)
    if args.vararg or args.kwarg:
        _refuse("*args or **kwargs", fn)
    if args.kwonlyargs or args.posonlyargs:
        _refuse("keyword-only or positional-only arguments", fn)
    if args.defaults:  # checked last: kw_defaults only exists for keyword-only arguments, refused above
        _refuse("a default argument value", fn)
    for arg in args.args:
        if arg.arg.startswith("_"):
            _refuse(f"the argument name {arg.arg!r} (names may not start with '_')", fn)


def check_source(source: str, fn_name: str) -> ast.FunctionDef:
    """Parse and validate source without running it; return the function's tree or raise UnsafeCodeError."""
    # exact types: a str subclass could report a false length to the size check below
    if type(source) is not str:
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    if not (type(fn_name) is str and fn_name.isidentifier()):
        raise ValueError(f"fn_name {fn_name!r} is not a Python identifier")
    if len(source) > MAX_SOURCE_CHARS:
        _refuse(f"source of {len(source)} characters (at most {MAX_SOURCE_CHARS})")
    try:
        module = ast.parse(source)
    except SyntaxError as exc:
        raise UnsafeCodeError(f"refused: syntax error: {exc.msg} (line {exc.lineno})") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        raise UnsafeCodeError(f"refused: source cannot be parsed: {type(exc).__name__}") from None
    if _tree_depth(module) > MAX_AST_DEPTH:
        _refuse(f"a syntax tree deeper than {MAX_AST_DEPTH} levels")
    if not module.body:
        _refuse(f"no function definition (expected 'def {fn_name}(...)')")
    for node in module.body:
        if isinstance(node, ast.AsyncFunctionDef):
            _refuse("async def", node)
        if not isinstance(node, ast.FunctionDef):
            _refuse(f"{_describe(node)} at top level (only 'def {fn_name}(...)' is allowed)", node)
    if len(module.body) > 1:
        _refuse(f"a second function definition {module.body[1].name!r}", module.body[1])
    fn = module.body[0]
    _check_signature(fn)
    _Checker(fn).statements(fn.body)
    if fn.name != fn_name:  # checked last, so this error means "safe, but under another name"
        raise WrongFunctionName(f"refused: the function is named {fn.name!r}, expected {fn_name!r} "
                                f"(line {fn.lineno})")
    return fn


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


# ---------------------------------------------------------------- the parent's side


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


# ---------------------------------------------------------------- the child's side


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
_empty_root: str | None = None
_empty_root_lock = threading.Lock()
_granted: dict[str, bool] | None = None
