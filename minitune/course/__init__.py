"""The course harness: what only the lessons use, kept apart from the fine-tuning library.

    lesson.py    a lesson's flags, sections, tables, claims and plots, and the docs page its run writes
    runs.py      shared runs: one fine-tuning run at the standard budget, cached so lessons share it
    stats.py     the noise rule: Welch's t over seeds, and the SeedValues (mean ± sd) every table prints
    studies.py   a setting varied over seeds on a classification task (lessons 4 and 5)
    sweep.py     each strategy's learning rate, chosen on validation (`minitune sweep`)
    plots.py     plots that show every seed beside the mean
    docs.py      the docs pages built from the lessons' runs

The library (everything in minitune/ outside this folder) never imports it.
"""
