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

Running: the checked tree is compiled and run with `{"__builtins__": {}}` as its globals, in a separate
process that is killed after `timeout_s` (for the whole batch of inputs). This guard should never fire
for checked code; it is there in case the reasoning above has a hole. We fork where the platform offers
it (Linux and macOS): the child starts in a few milliseconds with minitune already imported, whereas
"spawn" would import torch afresh for every call (spawn is used only where fork does not exist).
Forking a process that holds other threads (torch's) is safe here because the child only runs pure
Python and exits; were it ever to hang, the timeout reports it. The child sends its answers back as
JSON, not pickle, so nothing it writes is ever unpickled by the parent.

Conventions for evaluation code:
    run_function returns one entry per input: the int or bool the function returned, or CallFailed(reason)
    when that call raised (ZeroDivisionError, a local read before assignment, wrong number of arguments),
    returned nothing, or returned a number with magnitude above 10**12. Comparisons come back as bools;
    since True == 1 in Python, compare types too if a task must tell them apart.
    UnsafeCodeError is raised for refused code (check_source's reason), out-of-range inputs, and timeouts.
"""

from __future__ import annotations

import ast
import json
import math
import multiprocessing
from dataclasses import dataclass
from typing import NoReturn

from minitune.errors import UnsafeCodeError

MAX_SOURCE_CHARS = 2_000
MAX_AST_DEPTH = 50
MAX_CONSTANT = 10**6
MAX_VALUE = 10**12  # inputs and results
MAX_POW_EXPONENT = 8
MAX_BITS = 4_096  # static bound on any intermediate number
_INPUT_BITS = MAX_VALUE.bit_length()  # 40

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
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    if not (isinstance(fn_name, str) and fn_name.isidentifier()):
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
    if fn.name != fn_name:
        _refuse(f"the function is named {fn.name!r}, expected {fn_name!r}", fn)
    _check_signature(fn)
    _Checker(fn).statements(fn.body)
    return fn


def _check_inputs(inputs: list[tuple]) -> None:
    for i, args in enumerate(inputs):
        if not isinstance(args, tuple):
            raise TypeError(f"inputs[{i}] must be a tuple of arguments, got {type(args).__name__}")
        for value in args:
            if type(value) not in (int, bool):
                raise UnsafeCodeError(f"refused: inputs[{i}] holds a {type(value).__name__}; only ints and bools")
            if abs(value) > MAX_VALUE:
                raise UnsafeCodeError(f"refused: inputs[{i}] holds a number too large "
                                      f"({value.bit_length()} bits; |x| <= 10**12 allowed)")


def run_function(source: str, fn_name: str, inputs: list[tuple], timeout_s: float = 1.0) -> list:
    """Check source, then run fn_name on each input tuple in a child process; return value or CallFailed each."""
    fn = check_source(source, fn_name)
    _check_inputs(inputs)
    if not inputs:
        return []
    return _execute(ast.Module(body=[fn], type_ignores=[]), fn_name, inputs, timeout_s)


def _context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _execute(module: ast.Module, fn_name: str, inputs: list[tuple], timeout_s: float) -> list:
    """Run an already-checked module in a child process, killed after timeout_s (the seam tests use)."""
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(sender, module, fn_name, inputs), daemon=True)
    process.start()
    sender.close()  # keep only the child's end open, so a dead child reads as EOF rather than a hang
    answered = False
    try:
        if not receiver.poll(timeout_s):
            raise UnsafeCodeError(f"refused: timed out after {timeout_s:g} s (process killed)")
        try:
            message = json.loads(receiver.recv_bytes())
        except EOFError:
            process.join(1.0)
            raise UnsafeCodeError(f"refused: the sandbox process died (exit code {process.exitcode})") from None
        answered = True
    finally:
        if answered:
            process.join(1.0)  # it is exiting on its own
        if process.is_alive():
            process.kill()
        process.join()
        process.close()
        receiver.close()
    if "error" in message:
        raise UnsafeCodeError(f"refused: the function could not be set up: {message['error']}")
    return [value if kind == "value" else CallFailed(value) for kind, value in message["results"]]


def _call_one(fn, args: tuple) -> list:
    # runs in the child; returns ["value", v] or ["failed", reason], plain JSON either way
    try:
        value = fn(*args)
    except Exception as exc:  # ZeroDivisionError, UnboundLocalError, TypeError (arity), ...
        return ["failed", f"{type(exc).__name__}: {exc}"[:200]]
    if type(value) not in (int, bool):
        return ["failed", f"returned {type(value).__name__}, not an int or bool"]
    if abs(value) > MAX_VALUE:
        return ["failed", f"result too large ({value.bit_length()} bits; |result| <= 10**12 allowed)"]
    return ["value", value]


def _child(conn, module: ast.Module, fn_name: str, inputs: list[tuple]) -> None:
    try:
        namespace = {"__builtins__": {}}
        exec(compile(module, "<sandbox>", "exec"), namespace)
        message = {"results": [_call_one(namespace[fn_name], args) for args in inputs]}
    except Exception as exc:  # cannot happen for checked code; report it instead of printing a traceback
        message = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    conn.send_bytes(json.dumps(message).encode())
    conn.close()
