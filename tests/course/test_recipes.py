"""Lesson 3's reading of the recorded recipe sweeps (minitune.course.recipes): the right cells, at each
recipe's own best rate, into the right claims; checked on synthetic records and on the shipped ones."""

import pytest

from minitune.course.recipes import ALL8, ATTN8, MLP8, at_best, cells_of, show_batches, show_recipes
from minitune.course.recorded import recorded_evidence


class Page:
    """Stands in for a Lesson: keeps what would be printed."""

    def __init__(self):
        self.tables, self.claims, self.notes, self.plots = {}, [], [], []

    def table(self, title, rows, **kw):
        self.tables[title] = rows

    def claim(self, statement, source, a, b, names, expect="higher", log=False):
        self.claims.append((statement, a, b, names, expect))

    def note(self, sentence):
        self.notes.append(sentence)

    def plot(self, name, draw, **kw):
        self.plots.append(name)


def record(steps, batch, losses: dict[str, dict[float, list[float]]], task="qa", chosen=None) -> dict:
    """A sweep record in the shape run_sweep writes, each arm chosen at its lowest mean loss."""
    results = []
    for spec, by_lr in losses.items():
        best = min(by_lr, key=lambda lr: sum(by_lr[lr]))
        results.append({"task": task, "strategy": spec, "metric": "exact_match", "grid": sorted(by_lr),
                        "chosen": best, "best": best, "edge": False, "tied": [best], "cells": [
                            {"lr": lr, "diverged": 0, "seeds": len(v), "val_loss": {"values": v},
                             "exact_match": {"values": [1 - x for x in v]}} for lr, v in sorted(by_lr.items())]})
    return {"settings": {"steps": steps, "batch_size": batch, "tasks": [task]}, "results": results,
            "runs": [], "seconds": 60.0, "machine": {"cpus": 2}}


def test_cells_are_read_at_each_recipes_own_best_rate():
    # Catches: a recipe read at another's rate (or the grid's first), or labels that merge two recipes.
    rec = record(160, 16, {"lora": {1e-2: [1.0, 1.1, 0.9], 3e-2: [2.0, 2.1, 1.9]},
                           "lora(targets=c_attn+attn.c_proj+mlp.c_fc+mlp.c_proj)": {3e-3: [0.5, 0.6, 0.4], 1e-2: [0.7, 0.8, 0.6]}})
    cells = cells_of([rec])
    assert set(cells) == {("qa", ATTN8), ("qa", ALL8)}
    assert at_best(cells["qa", ATTN8]).values == (1.0, 1.1, 0.9)
    assert at_best(cells["qa", ALL8]).values == (0.5, 0.6, 0.4)
    assert at_best(cells["qa", ALL8], "score").values == pytest.approx((0.5, 0.4, 0.6))
    assert cells_of([rec], "code") == {}


def test_the_batch_gap_is_lora_minus_full_seed_by_seed_at_each_ones_best_rate():
    # Catches: the gap taken the other way round, at a fixed rate instead of each one's best, or a record
    # of another number of examples (or without both arms) let in.
    all4 = "lora(targets=c_attn+attn.c_proj+mlp.c_fc+mlp.c_proj)"
    evidence = [record(640, 4, {"full": {1e-3: [0.4, 0.5, 0.6]}, all4: {3e-3: [0.5, 0.6, 0.7], 1e-2: [0.9, 0.9, 0.9]}}),
                record(40, 64, {"full": {1e-3: [0.3, 0.3, 0.3], 3e-3: [0.2, 0.25, 0.3]}, all4: {1e-2: [1.2, 1.3, 1.4]}}),
                record(480, 16, {"full": {1e-3: [0.0, 0.0, 0.0]}, all4: {1e-2: [9.0, 9.0, 9.0]}}),
                record(160, 16, {"full": {1e-3: [0.0, 0.0, 0.0]}}, task="qa")]
    page = Page()
    show_batches(page, evidence)
    (statement, large, small, names, expect), = page.claims
    assert names == ("batch 64", "batch 4") and expect == "higher"
    assert large.values == pytest.approx((1.0, 1.05, 1.1)) and small.values == pytest.approx((0.1, 0.1, 0.1))
    assert len(next(iter(page.tables.values()))) == 4  # two arms at two batch sizes


def test_the_shipped_recipe_sweeps_make_every_section_3_claim():
    # Catches a record whose arms no longer carry the labels the claims look up (a renamed recipe would
    # otherwise fail only in a full lesson run), and a claim made the wrong way round.
    page = Page()
    cells = show_recipes(page, recorded_evidence("lora-recipes"), lambda config: 0)
    tasks = {t for t, _ in cells}
    assert {"qa", "code", "summarization"} <= tasks
    for t in tasks:
        assert {(t, ATTN8), (t, MLP8), (t, ALL8), (t, "full FT")} <= set(cells)
    all_four = [c for c in page.claims if c[0].startswith("LoRA on all four matrices")]
    assert len(all_four) == len(tasks) and all(c[3] == ("c_attn", "all four") and c[4] == "higher" for c in all_four)
    assert any("equal trainable count" in c[0] for c in page.claims)
    assert page.plots == ["recipes_qa.png"]
