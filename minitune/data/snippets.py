"""Tiny Python functions with an English description: the code-generation data.

A function is built as a small expression tree, then (1) rendered to source, (2) described in words and
(3) evaluated directly from the tree. (3) is the reference the tests compare the executed source against,
so a wrong bracket in the renderer cannot hide. The subset: def, return, if/else, ints, + - * // %,
comparisons; one or two arguments; every function is total (no division by an argument).

The space of functions is split in two by a hash of what a function computes (its parameters and its
tree, not its name or wording): one function in `HELD_OUT_ONE_IN` is held out. The pretraining corpus
and the code task's training split only ever draw open functions; the task's validation and test
splits only held-out ones. So no test function, under any name or phrasing, is text the base read or
an answer fine-tuning showed: a model passes a test item by writing a body it has not seen.
"""

from __future__ import annotations

import hashlib
import operator
import random
from dataclasses import dataclass

from minitune.data.text import number_word

# expression tree: ("var", name) | ("num", k) | ("bin", op, l, r) | ("neg", e) | ("cmp", op, l, r)
Expr = tuple
BIN_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv,
           "%": operator.mod}
CMP_OPS = {">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le, "==": operator.eq}
CMP_WORDS = {">": "greater than", "<": "less than", ">=": "at least", "<=": "at most", "==": "equal to"}
PRECEDENCE = {"cmp": 1, "+": 2, "-": 2, "*": 3, "//": 3, "%": 3, "neg": 4, "var": 5, "num": 5}
HELD_OUT_ONE_IN = 4   # the share of the function space kept for evaluation


@dataclass(frozen=True)
class CodeItem:
    """A generated function: description, source, name, arity, and the tree it was rendered from."""

    description: str
    source: str
    fn_name: str
    arity: int
    params: tuple[str, ...]
    recipe: str
    # ("return", expr) or ("if", cond, then_expr, else_expr)
    body: tuple

    def reference(self, *args: int) -> int | bool:
        """The value the function should return, computed from the tree, not from the source."""
        env = dict(zip(self.params, args, strict=True))
        if self.body[0] == "return":
            return evaluate(self.body[1], env)
        _, cond, then, other = self.body
        return evaluate(then if evaluate(cond, env) else other, env)

    @property
    def document(self) -> str:
        """The text a corpus holds: the description as a comment, then the source."""
        return f"# {self.description}\n{self.source}"

    @property
    def signature(self) -> str:
        """The first line of the source: "def name(a, b):"."""
        return f"def {self.fn_name}({', '.join(self.params)}):"

    @property
    def held_out(self) -> bool:
        """Is this function in the held-out part of the space (see the module docstring)?"""
        # the key is what the function computes: the same tree under another name or wording is the same
        key = f"{self.params!r} {self.body!r}".encode()
        return hashlib.sha256(key).digest()[0] % HELD_OUT_ONE_IN == 0


def evaluate(e: Expr, env: dict[str, int]) -> int | bool:
    """Evaluate an expression tree with Python's own integer semantics (floor division, modulo)."""
    if e[0] == "var":
        return env[e[1]]
    if e[0] == "num":
        return e[1]
    if e[0] == "neg":
        return -evaluate(e[1], env)
    ops = CMP_OPS if e[0] == "cmp" else BIN_OPS
    return ops[e[1]](evaluate(e[2], env), evaluate(e[3], env))


def _prec(e: Expr) -> int:
    return PRECEDENCE[e[1] if e[0] == "bin" else e[0]]


def render(e: Expr) -> str:
    """Python source for a tree, with only the brackets precedence needs (all operators left-assoc)."""
    if e[0] in ("var", "num"):
        return str(e[1])
    if e[0] == "neg":
        inner = render(e[1])
        return "-" + (f"({inner})" if _prec(e[1]) < PRECEDENCE["neg"] else inner)
    p = _prec(e)
    left, right = render(e[2]), render(e[3])
    left = f"({left})" if _prec(e[2]) < p else left
    right = f"({right})" if _prec(e[3]) <= p else right
    return f"{left} {e[1]} {right}"


def _num(rng: random.Random, k: int) -> str:
    """A constant in a description: a word or digits."""
    return number_word(k) if k <= 10 and rng.random() < 0.6 else str(k)


def _step(rng: random.Random, e: Expr, v: str, first: bool) -> tuple[Expr, str]:
    """Apply one random step to `e`; describe it ("add three to x" first, "then add three" later)."""
    kind = rng.choice(["add", "sub", "mul", "mul", "div", "mod", "square"])
    it = v if first else rng.choice(["it", "the result"])
    k = rng.randint(2, 9)
    w = _num(rng, k)
    if kind == "add":
        return ("bin", "+", e, ("num", k)), f"add {w} to {v}" if first else f"add {w}"
    if kind == "sub":
        return ("bin", "-", e, ("num", k)), f"subtract {w} from {v}" if first else f"subtract {w}"
    if kind == "mul":
        word = {2: "double", 3: "triple"}.get(k)
        return ("bin", "*", e, ("num", k)), f"{word} {it}" if word else f"multiply {it} by {w}"
    if kind == "div":
        text = f"halve {it}" if k == 2 else f"divide {it} by {w}"
        return ("bin", "//", e, ("num", k)), text + ", rounding down"
    if kind == "mod":
        return ("bin", "%", e, ("num", k)), f"take the remainder of {it} divided by {w}"
    return ("bin", "*", e, e), f"square {it}"


def _chain(rng: random.Random, e: Expr, v: str, n: int, first: bool = True) -> tuple[Expr, str]:
    """`n` steps on `e`, described as "A, then B and C"."""
    parts = []
    for i in range(n):
        e, text = _step(rng, e, v, first and i == 0)
        parts.append(text)
    text = parts[0]
    for i, part in enumerate(parts[1:], start=2):
        text += (" and " if i == len(parts) else rng.choice([", then ", " and then "])) + part
    return e, text


def _value(rng: random.Random, v: str) -> tuple[Expr, str]:
    """A one-step value of `v` as a noun phrase: "x plus 3", "twice x", "x itself"."""
    x, k = ("var", v), rng.randint(2, 9)
    w = _num(rng, k)
    return rng.choice([
        (("bin", "+", x, ("num", k)), f"{v} plus {w}"), (("bin", "-", x, ("num", k)), f"{v} minus {w}"),
        (("bin", "*", x, ("num", k)), f"{v} times {w}"), (("bin", "*", x, ("num", 2)), f"twice {v}"),
        (("bin", "//", x, ("num", k)), f"{v} divided by {w}, rounded down"), (x, f"{v} itself"),
        (("bin", "*", x, x), f"{v} squared"), (("num", k), w),
    ])


def _recipe(rng: random.Random) -> tuple[str, tuple[str, ...], tuple, str, list[str]]:
    """One random function: (recipe, params, body, description, candidate names)."""
    # the one-line recipes (pick, abs, test) have few forms, so they get less weight
    r = rng.choices(["chain", "binary", "branch", "parity", "clamp", "pick", "abs", "test"],
                    weights=[8, 5, 4, 2, 2, 1, 1, 2])[0]
    v = rng.choice(["x", "n", "x", "y"])
    a, b = rng.choice([("a", "b"), ("x", "y"), ("m", "n")])
    A, B = ("var", a), ("var", b)
    if r == "chain":
        e, text = _chain(rng, ("var", v), v, rng.randint(1, 3))
        return r, (v,), ("return", e), text, ["f", "g", "calc", "step", "transform", "work"]
    if r == "binary":
        e, text = rng.choice([
            (("bin", "+", A, B), f"add {a} and {b}"), (("bin", "-", A, B), f"subtract {b} from {a}"),
            (("bin", "*", A, B), f"multiply {a} by {b}"),
            (("bin", "//", ("bin", "+", A, B), ("num", 2)),
             f"take the average of {a} and {b}, rounding down"),
            (("bin", "*", ("bin", "-", A, B), ("bin", "-", A, B)), f"square the difference of {a} and {b}")])
        if rng.random() < 0.4:
            e, more = _chain(rng, e, a, 1, first=False)
            text += rng.choice([", then ", " and "]) + more
        return r, (a, b), ("return", e), text, ["combine", "mix", "f", "calc", "pair"]
    if r == "pick":
        big = rng.random() < 0.5
        cond = ("cmp", ">" if big else "<", A, B)
        word = "larger" if big else "smaller"
        return r, (a, b), ("if", cond, A, B), f"return the {word} of {a} and {b}", \
            ["bigger", "larger", "pick"] if big else ["smaller", "lesser", "pick"]
    x = ("var", v)
    k = rng.randint(2, 20)
    w = _num(rng, k)
    if r == "abs" and rng.random() < 0.3:
        return r, (v,), ("if", ("cmp", "<", x, ("num", 0)), ("neg", x), x), \
            f"return the absolute value of {v}", ["absolute", "size", "magnitude"]
    if r == "abs":
        K = ("num", k)
        return r, (v,), ("if", ("cmp", "<", x, K), ("bin", "-", K, x), ("bin", "-", x, K)), \
            f"return how far {v} is from {w}", ["distance", "gap", "how_far"]
    if r == "clamp":
        high = rng.random() < 0.5
        cond = ("cmp", ">" if high else "<", x, ("num", k))
        text = f"return {v}, but never {'more' if high else 'less'} than {w}"
        return r, (v,), ("if", cond, ("num", k), x), text, ["clamp", "cap", "limit"]
    if r in ("branch", "parity"):
        (t, t_text), (o, o_text) = _value(rng, v), _value(rng, v)
        if r == "parity":
            cond, cond_text = ("cmp", "==", ("bin", "%", x, ("num", 2)), ("num", 0)), f"{v} is even"
        else:
            op = rng.choice(sorted(CMP_WORDS))
            cond, cond_text = ("cmp", op, x, ("num", k)), f"{v} is {CMP_WORDS[op]} {w}"
        text = rng.choice([f"return {t_text} if {cond_text}, otherwise {o_text}",
                           f"if {cond_text}, return {t_text}; if not, return {o_text}"])
        return r, (v,), ("if", cond, t, o), text, ["choose", "branch", "f", "decide"]
    e, text = rng.choice([
        (("cmp", ">", A, B), f"check whether {a} is greater than {b}"),
        (("cmp", "==", A, B), f"check whether {a} and {b} are equal"),
        (("cmp", "==", ("bin", "%", A, ("num", 2)), ("num", 0)), f"check whether {a} is even"),
        (("cmp", "==", ("bin", "%", A, ("num", k)), ("num", 0)), f"check whether {a} can be divided by {w}"),
    ])
    params = (a, b) if b in text.split() else (a,)
    return "test", params, ("return", e), text, ["check", "is_ok", "test", "holds"]


def _source(name: str, params: tuple[str, ...], body: tuple, rng: random.Random) -> str:
    """Render a function; an if sometimes drops its `else` (the early return makes it equivalent)."""
    head = f"def {name}({', '.join(params)}):\n"
    if body[0] == "return":
        return head + f"    return {render(body[1])}\n"
    _, cond, then, other = body
    tail = "    else:\n        return " if rng.random() < 0.6 else "    return "
    return head + f"    if {render(cond)}:\n        return {render(then)}\n" + tail + render(other) + "\n"


def make_code_item(rng: random.Random, held_out: bool | None = None) -> CodeItem:
    """A random function with its description, source and reference tree; with `held_out` True (False),
    one from the held-out (open) part of the space, drawn again until it is."""
    while True:
        recipe, params, body, text, names = _recipe(rng)
        name = rng.choice(names)
        item = CodeItem(text, _source(name, params, body, rng), name, len(params), params, recipe, body)
        if held_out is None or item.held_out == held_out:
            return item


def make_code(rng: random.Random) -> tuple[str, str, str, int]:
    """(description, source, fn_name, arity) of a random function; see `make_code_item` for the tree."""
    item = make_code_item(rng)
    return item.description, item.source, item.fn_name, item.arity


def make_code_document(rng: random.Random) -> str:
    """A corpus document: one open function (sometimes two), each under its description comment."""
    items = [make_code_item(rng, held_out=False) for _ in range(1 if rng.random() < 0.65 else 2)]
    return "\n".join(item.document for item in items)
