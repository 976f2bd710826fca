"""The project's exceptions: one small hierarchy, so callers can catch `MinituneError`; and the two
checks that config dataclasses share."""

import math


def is_count(value) -> bool:
    """A positive int, and not a bool (True is an int in Python, but never a rank or a width)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def is_number(value) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class MinituneError(Exception):
    """Base class of every error minitune raises on purpose."""


class ConfigError(MinituneError, ValueError):
    """A setting is out of range or inconsistent; the message names the field and what is allowed."""


class DataError(MinituneError):
    """A corpus, dataset or batch cannot be used (missing, empty, unreadable, malformed)."""


class CheckpointError(MinituneError):
    """A saved model or run cannot be read, or does not fit the model it is loaded into."""


class TokenizerError(MinituneError):
    """A tokenizer cannot be built or loaded."""


class UnsafeCodeError(MinituneError):
    """Code refused by the restricted evaluator (minitune.sandbox); the message says what and where."""


class TrainingError(MinituneError):
    """Training cannot go on (a non-finite loss or gradient, out of memory); the message says what to change."""


class TrainingInterrupted(MinituneError):
    """Training was stopped by a signal after saving a checkpoint; the message says how to resume."""
