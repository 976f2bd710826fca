"""The restricted evaluator's first wall: good functions give Python's answers, hostile code is refused
before it runs, and the inputs and limits a caller passes are checked too."""

import ast
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minitune.sandbox as sandbox
from minitune.errors import MinituneError, UnsafeCodeError
from minitune.sandbox import CallFailed, check_source, run_function, runner


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
    monkeypatch.setattr(runner, "_execute", lambda *a: pytest.fail("nothing to run"))
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
    monkeypatch.setattr(runner, "_execute", lambda *a: pytest.fail("refused code reached the runner"))
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
