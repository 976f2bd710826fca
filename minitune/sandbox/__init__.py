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

Where each piece lives:
    syntax.py      the first wall: check_source and the checker that bounds every number's bit length
    runner.py      run_function, confinement and the parent's side: fork, deadline, reading and checking
                   the answer, killing the process group
    confined.py    the child's side: raising the walls of WALLS, then running the code and answering
"""

from minitune.errors import UnsafeCodeError
from minitune.sandbox.confined import MAX_REASON_CHARS, MEMORY_MARGIN, WALLS
from minitune.sandbox.runner import (MAX_TIMEOUT_S, CallFailed, CodeCrashed, CodeTimedOut, confinement,
                                     run_function)
from minitune.sandbox.syntax import (MAX_AST_DEPTH, MAX_BITS, MAX_CONSTANT, MAX_POW_EXPONENT, MAX_SOURCE_CHARS,
                                     MAX_VALUE, WrongFunctionName, check_source)

# private names the tests read; a test that patches one must patch it in the module that looks it up
from minitune.sandbox.runner import _REPLY_BASE_BYTES, _REPLY_BYTES_PER_INPUT, _empty_dir, _execute
from minitune.sandbox.syntax import _tree_depth

__all__ = [
    "MAX_AST_DEPTH", "MAX_BITS", "MAX_CONSTANT", "MAX_POW_EXPONENT", "MAX_REASON_CHARS", "MAX_SOURCE_CHARS",
    "MAX_TIMEOUT_S", "MAX_VALUE", "MEMORY_MARGIN", "WALLS", "CallFailed", "CodeCrashed", "CodeTimedOut",
    "UnsafeCodeError", "WrongFunctionName", "check_source", "confinement", "run_function",
]
