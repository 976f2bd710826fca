"""The sweeps on record: a sweep.json read back, the sweeps shipped with the package (where its default
learning rates come from), and their rows and Markdown page (minitune.course.sweep runs them)."""

from __future__ import annotations

from pathlib import Path

from minitune.checkpoint import read_json
from minitune.course.arms import FAMILIES
from minitune.course.stats import SeedValues
from minitune.pretrain import runs_dir
from minitune.strategies import STRATEGIES

SWEEP_JSON, SWEEP_MD = "sweep.json", "sweep.md"


def read_sweep(path: str | Path | None = None) -> dict:
    """A sweep record: sweep.json in `path` (a folder or the file), default runs/sweep."""
    path = Path(path) if path is not None else runs_dir() / "sweep"
    return read_json(path / SWEEP_JSON if path.is_dir() or path.suffix != ".json" else path)


RECORDED = Path(__file__).parents[1] / "assets" / "sweep"  # the sweeps the package defaults come from


def recorded_sweeps() -> list[dict]:
    """The sweeps shipped with the package, oldest first (a later one re-examines some of an earlier one's)."""
    return [read_json(path) for path in sorted(RECORDED.glob("*.json"))]


def recorded_evidence(folder: str) -> list[dict]:
    """The sweeps shipped in assets/sweep/<folder>/ (recipes, other tasks, other budgets), oldest first:
    evidence a lesson reads and shows as recorded, never a package default."""
    found = sorted((RECORDED / folder).glob("*.json"))
    if not found:
        raise FileNotFoundError(f"no recorded sweep in {RECORDED / folder}")
    return [read_json(path) for path in found]


def chosen_cells(record: dict) -> dict[tuple[str, str], dict]:
    """(task, arm) -> its sweep result at a glance: the chosen rate, whether it sat at the grid's edge, the
    rates within noise of it, and the validation loss and metric at every rate tried (rate -> SeedValues)."""
    out = {}
    for r in record["results"]:
        cells = {c["lr"]: c for c in r["cells"] if not c["diverged"]}
        out[r["task"], r["strategy"]] = {
            "chosen": r["chosen"], "edge": r["edge"], "tied": tuple(r["tied"]), "metric": r["metric"],
            "grid": tuple(r["grid"]), "val loss": {lr: _cell(c["val_loss"]) for lr, c in cells.items()},
            "score": {lr: _cell(c[r["metric"]]) for lr, c in cells.items()}}
    return out


def recorded_curves(record: dict, task: str, arm: str, lr: float, column: str = "val_loss") -> list[list[tuple]]:
    """Each seed's curve of one arm at one rate: [(step, loss), ...] per seed, column "val_loss" or
    "train_loss" (a sweep keeps [step, training loss, validation loss] at every evaluation)."""
    at = {"train_loss": 1, "val_loss": 2}[column]
    runs = [r for r in record["runs"] if (r["task"], r["strategy"], r["lr"]) == (task, arm, lr) and not r["diverged"]]
    if not runs or any("curve" not in r for r in runs):
        raise KeyError(f"the record keeps no curves of {arm} on {task} at lr {lr:g}")
    return [[(point[0], point[at]) for point in r["curve"] if point[at] is not None] for r in runs]


def recorded_results() -> dict[tuple[str, str], dict]:
    """(family, strategy) -> the latest recorded sweep's result for it. Only a strategy's own config on its
    family's task counts: a recipe ("lora(r=4)") or another task is evidence, never a package default."""
    return {(r["family"], r["strategy"]): r for record in recorded_sweeps() for r in record["results"]
            if r["strategy"] in STRATEGIES and r["task"] == FAMILIES[r["family"]]}


def recorded_choices() -> dict[str, dict[str, float]]:
    """strategy -> {family: chosen learning rate}, from recorded_results."""
    chosen: dict[str, dict[str, float]] = {}
    for (family, strategy), r in recorded_results().items():
        chosen.setdefault(strategy, {})[family] = r["chosen"]
    return chosen


def table_rows(record: dict) -> list[dict]:
    """One row per family, strategy and rate: validation loss and metric as Cells, and what was chosen."""
    rows = []
    for res in record["results"]:
        for cell in res["cells"]:
            lr = cell["lr"]
            marks = [m for m, on in (("default", lr == res["default"]), ("chosen", lr == res["chosen"]),
                                     ("best mean", lr == res["best"] and res["best"] != res["chosen"]),
                                     ("within noise of the best", lr in res["tied"] and lr != res["best"]),
                                     ("at the grid's edge", lr == res["chosen"] and res["edge"])) if on]
            if cell["diverged"]:
                marks.append(f"diverged {cell['diverged']}/{cell['seeds']}")
            rows.append({"family": res["family"], "task": res["task"], "strategy": res["strategy"], "lr": f"{lr:g}",
                         "validation loss": _cell(cell.get("val_loss")), "metric": res["metric"],
                         "validation score": _cell(cell.get(res["metric"])), "note": ", ".join(marks)})
    return rows


def choices(record: dict) -> dict[tuple[str, str], float | None]:
    """(task, strategy) -> the chosen learning rate."""
    return {(r["task"], r["strategy"]): r["chosen"] for r in record["results"]}


def _cell(d: dict | None) -> SeedValues | str:
    return SeedValues(tuple(d["values"])) if d else "-"


def markdown(record: dict) -> str:
    """The sweep as a Markdown page: how it was run, every cell, and the choices."""
    s = record["settings"]
    lines = [
        "# Learning-rate sweep", "",
        f"`{record['command']}`", "",
        f"{len(s['seeds'])} seeds ({', '.join(map(str, s['seeds']))}), {s['steps']} steps of batch {s['batch_size']}, "
        f"on the validation split; base `{record['base']}`; started {record['started']}, took "
        f"{record['seconds'] / 60:.1f} min on {record['machine']['processor']} ({record['machine']['cpus']} CPUs, "
        f"{record['machine']['torch_threads']} torch threads, {record['machine']['device']}).", "",
        f"Chosen by: {record['selection']}. Cells: mean ± sample sd over the seeds.", "",
    ]
    rows = table_rows(record)
    cols = list(rows[0]) if rows else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    lines += ["", "| family | strategy | current default | best mean | chosen | within noise of the best "
              "| changes the default | best mean vs default |", "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
    for res in record["results"]:
        verdict = "-" if res["versus_default"] is None else res["versus_default"]["text"]
        lines.append(f"| {res['family']} | {res['strategy']} | {fmt(res['default'])} | {fmt(res['best'])} | "
                     f"{fmt(res['chosen'])}{' (grid edge)' if res['edge'] else ''} | "
                     f"{', '.join(fmt(lr) for lr in res['tied'] if lr != res['best']) or '-'} | "
                     f"{'yes' if res['changed'] else 'no'} | {verdict} |")
    return "\n".join(lines) + "\n"


def changes(record: dict) -> list[str]:
    """One line per default the sweep would change."""
    return [f"{r['strategy']} on {r['family']} ({r['task']}): {r['default']:g} -> {r['chosen']:g}"
            + (" (at the grid's edge: the best may lie further out)" if r["edge"] else "")
            for r in record["results"] if r["changed"]]


__all__ = ["RECORDED", "SWEEP_JSON", "SWEEP_MD", "changes", "choices", "chosen_cells", "markdown", "read_sweep",
           "recorded_choices", "recorded_curves", "recorded_evidence", "recorded_results", "recorded_sweeps", "table_rows"]
