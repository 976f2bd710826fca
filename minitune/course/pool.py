"""Independent runs side by side: worker processes, one torch thread each, as many as there are cores.

The tiny base's matrices are too small to keep two threads of one process busy, but two processes with
one thread each keep two cores busy. So wherever the course needs runs that do not depend on each
other (seeds, rates, strategies, tasks), it hands them to `run_all`:

    results = run_all([lambda: shared_run(...), ...], names=["qa / lora / seed 0", ...])

- Every run, in a worker or not, computes with exactly one torch thread: a matmul's sums are grouped by
  the thread count, so this is what makes a run's numbers the same bits whichever way it ran (and what
  its cache entry holds, whoever wrote it).
- The workers are forked, so a run may be any function, a lambda in a notebook included; its result
  comes back pickled. What a run prints is kept and printed when it finishes, in the order the runs
  were given: one run's lines together, the same order every time.
- A run that fails is reported by name with its traceback; the others finish and keep their results
  (shared runs are on disk), then RunsFailed names every failure.
- Ctrl-C (or SIGTERM) stops every worker: each stops at the end of its training step and removes its
  unfinished run folder (minitune.course.runs); a worker that does not stop in STOP_GRACE seconds is killed.
- How many workers: `workers`, else $MINITUNE_WORKERS, else the cores this process may use; 1 runs each
  job here, one after another. Never more workers than cores, and fewer when other processes already
  keep cores busy (it says so): torch threads that outnumber the cores spin against each other.

Without os.fork (Windows) the runs go one after another. On a GPU, forking after CUDA has started in
this process is not possible, so there too they run one after another.
"""

from __future__ import annotations

import io
import os
import pickle
import selectors
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout

import torch

from minitune.errors import MinituneError

WORKERS_VARIABLE = "MINITUNE_WORKERS"
STOP_GRACE = 20.0  # seconds a stopped worker gets to finish its step and clean up before it is killed
_in_worker = False  # True inside a worker: a run that starts runs of its own does them itself, in turn


class RunsFailed(MinituneError):
    """Some runs of a pool failed; the message names each one and why (the others kept their results)."""


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def workers_wanted(workers: int | None = None) -> int:
    """The worker count asked for: `workers`, else $MINITUNE_WORKERS, else the cores; at most the cores."""
    if workers is None:
        text = os.environ.get(WORKERS_VARIABLE, "").strip()
        if text and not (text.isdigit() and int(text) >= 1):
            raise MinituneError(f"{WORKERS_VARIABLE} must be a whole number of workers, at least 1; got {text!r}")
        workers = int(text) if text else cores()
    if workers < 1:
        raise MinituneError(f"workers must be at least 1, got {workers}")
    return min(workers, cores())


def busy_cores(seconds: float = 0.2) -> float | None:
    """How many cores other processes keep busy, sampled over `seconds` while this one waits (None
    where /proc/stat cannot be read)."""
    def sample():
        with open("/proc/stat") as f:
            numbers = [int(v) for v in f.readline().split()[1:]]
        return sum(numbers), numbers[3] + numbers[4]  # all jiffies; idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 == total0:
        return 0.0
    return os.cpu_count() * (1 - (idle1 - idle0) / (total1 - total0))


_checked: tuple[float, int] | None = None  # (when, workers) of the last look at the machine
cut_to: int | None = None  # the fewest workers a busy machine left this process (None: never cut)


def workers_to_use(workers: int | None = None, jobs: int | None = None) -> int:
    """Workers for a pool of `jobs` runs: as asked (workers_wanted), fewer if the machine is already busy."""
    global _checked, cut_to
    n = workers_wanted(workers)
    if jobs is not None:
        n = min(n, jobs)
    if n <= 1:
        return 1
    if _checked is None or time.monotonic() - _checked[0] > 30:  # look at most every 30 s
        busy = busy_cores()
        free = n if busy is None else max(1, min(n, round(cores() - busy)))
        if free < n:
            print(f"(the machine is already busy: other processes keep {busy:.1f} of {cores()} cores working; "
                  f"running {free} worker{'s' if free > 1 else ''}, not {n})", flush=True)
        _checked = (time.monotonic(), free)
    if _checked[1] < n:
        cut_to = min(cut_to or n, _checked[1])
    return min(n, _checked[1])


@contextmanager
def one_thread():
    """Run the block with one torch thread (every run computes so; see the module doc)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_all(jobs: Sequence[Callable[[], object]], names: Sequence[str] | None = None,
            workers: int | None = None) -> list:
    """Every job's result, in order, each job run once with one torch thread, side by side in worker
    processes (see the module doc for how many, and what happens on failure or Ctrl-C)."""
    names = list(names) if names is not None else [f"run {i + 1}" for i in range(len(jobs))]
    if len(names) != len(jobs):
        raise ValueError(f"{len(jobs)} jobs but {len(names)} names")
    n = 1 if _in_worker or not hasattr(os, "fork") or _cuda_started() else workers_to_use(workers, len(jobs))
    if n == 1:
        with one_thread():
            return [job() for job in jobs]
    return _Pool(jobs, names, n).run()


def _cuda_started() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


class _Pool:
    """Forked workers for run_all: start up to n, read each one's pickled answer from its pipe."""

    def __init__(self, jobs, names, n: int):
        self.jobs, self.names, self.n = jobs, names, n
        self.answers: dict[int, tuple] = {}  # job index -> ("done", result, output) or ("failed", why, output)
        self.running: dict[int, tuple[int, bytearray]] = {}  # job index -> (pid, bytes read so far)
        self.shown = 0  # jobs whose output has been printed (in order)
        self.pipes: set[int] = set()  # read ends still open

    def run(self) -> list:
        import torch._dynamo  # noqa: F401  (AdamW's first use imports it, over a second: once here, not per worker)

        selector = selectors.DefaultSelector()
        upcoming = iter(range(len(self.jobs)))
        try:
            for i in upcoming:
                self._start(i, selector)
                if len(self.running) == self.n:
                    break
            while self.running:
                for key, _ in selector.select():
                    i = key.data
                    chunk = os.read(key.fd, 1 << 16)
                    if chunk:
                        self.running[i][1].extend(chunk)
                        continue
                    selector.unregister(key.fd)
                    os.close(key.fd)
                    self.pipes.discard(key.fd)
                    self._finish(i)
                    for j in upcoming:
                        self._start(j, selector)
                        break
        except BaseException:  # Ctrl-C, or anything else: stop every worker before going on
            self._stop_all()
            raise
        finally:
            selector.close()
        failed = [(self.names[i], a[1]) for i, a in sorted(self.answers.items()) if a[0] == "failed"]
        if failed:
            raise RunsFailed(f"{len(failed)} of {len(self.jobs)} runs failed (the others finished and kept their "
                             "results):\n" + "\n".join(f"--- {name}:\n{why.rstrip()}" for name, why in failed))
        return [self.answers[i][1] for i in range(len(self.jobs))]

    def _start(self, i: int, selector) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            os.close(read)
            _work(self.jobs[i], write)
        os.close(write)
        self.running[i] = (pid, bytearray())
        self.pipes.add(read)
        selector.register(read, selectors.EVENT_READ, i)

    def _finish(self, i: int) -> None:
        pid, data = self.running.pop(i)
        _, status = os.waitpid(pid, 0)
        try:
            self.answers[i] = pickle.loads(bytes(data))
        except Exception:  # the worker died before it could answer
            why = f"its worker ended with {_status_text(status)} before it answered"
            self.answers[i] = ("failed", why, "")
        while self.shown in self.answers:  # print every finished run whose turn has come
            kind, what, output = self.answers[self.shown]
            if output:
                print(output, end="" if output.endswith("\n") else "\n", flush=True)
            if kind == "failed":
                print(f"!! {self.names[self.shown]} failed:\n{what.rstrip()}", file=sys.stderr, flush=True)
            self.shown += 1

    def _stop_all(self) -> None:
        for pid, _ in self.running.values():
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for pid, _ in self.running.values():
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    _signal(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.05)
        for fd in self.pipes:
            os.close(fd)
        self.running.clear()


def _work(job, write: int) -> None:
    """In a forked worker: run the job with one torch thread, send back (kind, result or why, output)."""
    global _in_worker
    _in_worker = True
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the workers itself
        signal.signal(signal.SIGTERM, _stopped)
        torch.set_num_threads(1)
        output = io.StringIO()
        try:
            with redirect_stdout(output), redirect_stderr(output):
                answer = ("done", job(), output.getvalue())
            data = pickle.dumps(answer)
        except BaseException:
            data = pickle.dumps(("failed", traceback.format_exc(), output.getvalue()))
        with os.fdopen(write, "wb") as pipe:
            pipe.write(data)
    except BaseException:
        code = 1
    finally:
        os._exit(code)  # no atexit handlers, no flushing of the parent's buffers a second time


def _stopped(signum, frame):
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)} ({signal.Signals(os.WTERMSIG(status)).name})"
    return f"exit code {os.WEXITSTATUS(status)}"
