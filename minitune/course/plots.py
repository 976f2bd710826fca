"""Plots that show the noise: every seed's value beside the mean and its spread (used by the lessons)."""

from __future__ import annotations

from collections.abc import Sequence

from minitune.course.stats import SeedValues, summarize


def plot_seeds(ax, xs: Sequence, cells: Sequence[SeedValues | Sequence[float]], label: str | None = None,
               color=None, line: bool = True, marker: str = "o"):
    """Every seed's value as a faint dot, the mean with a ± sd error bar (joined by a line if `line`).

    xs may be numbers (a rank, a learning rate) or names (then placed at 0, 1, 2, ... and written under
    the axis). Returns the mean line's colour, so a caller can match other marks to it.
    """
    cells = [summarize(c) for c in cells]
    named = any(isinstance(x, str) for x in xs)
    pos = list(range(len(xs))) if named else list(xs)
    sd = [0.0 if c.n < 2 else c.sd for c in cells]
    bars = ax.errorbar(pos, [c.mean for c in cells], yerr=sd, label=label, color=color, marker=marker,
                       linestyle="-" if line else "none", capsize=3, zorder=3)
    color = bars.lines[0].get_color()
    for x, c in zip(pos, cells):
        ax.scatter([x] * c.n, c.values, s=12, color=color, alpha=0.4, zorder=2, linewidths=0)
    if named:
        ax.set_xticks(pos, [str(x) for x in xs])
    return color


def bar_seeds(ax, names: Sequence[str], cells: Sequence[SeedValues | Sequence[float]], label: str | None = None,
              offset: float = 0.0, width: float = 0.8, color=None):
    """Bars of the means with ± sd error bars and every seed's value as a dot on its bar.

    For grouped bars call it once per group with a shared width and offsets (e.g. -0.2 and +0.2 with
    width 0.4). Returns the bars' colour.
    """
    cells = [summarize(c) for c in cells]
    pos = [i + offset for i in range(len(names))]
    sd = [0.0 if c.n < 2 else c.sd for c in cells]
    bars = ax.bar(pos, [c.mean for c in cells], width=width, yerr=sd, capsize=3, label=label, color=color,
                  alpha=0.75, zorder=2)
    color = bars.patches[0].get_facecolor() if bars.patches else color
    for x, c in zip(pos, cells):
        ax.scatter([x] * c.n, c.values, s=12, color="black", alpha=0.6, zorder=3, linewidths=0)
    ax.set_xticks(range(len(names)), list(names))
    return color


def bar_groups(ax, groups: Sequence[str], series: dict[str, Sequence[SeedValues]], ylabel: str = "test score") -> None:
    """Grouped bars: for each group (e.g. a task) one bar per series (e.g. a strategy), each with its seeds."""
    width = 0.8 / len(series)
    for i, (name, cells) in enumerate(series.items()):
        bar_seeds(ax, groups, cells, label=name, offset=(i - (len(series) - 1) / 2) * width, width=width)
    ax.set_ylabel(f"{ylabel} (mean ± sd; dots: seeds)")
    ax.legend(fontsize=8)
