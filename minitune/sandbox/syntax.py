"""The first wall: check_source reads the syntax tree and admits only the tiny language described in
minitune.sandbox, refusing anything else, with the reason and the line, before any of it runs."""

from __future__ import annotations

import ast
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


# A failure an evaluation counts apart from a refusal (CodeTimedOut and CodeCrashed, in runner.py, are the
# others). It subclasses UnsafeCodeError so that a caller catching it still catches every way run_function
# can fail to give results.
class WrongFunctionName(UnsafeCodeError):
    """Code that passes every check but defines its function under another name than the one asked for."""


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

