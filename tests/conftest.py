"""Shared fixtures: one pretrained nano base per test session (a few seconds on a CPU)."""

import os

import pytest
from hypothesis import settings

# CI draws the same examples every run (a red build then means a change, not a new draw); a developer's
# runs draw fresh ones and keep what failed in .hypothesis/ to replay.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from minitune.pretrain import load_run, pretrain


@pytest.fixture(scope="session")
def nano_run(tmp_path_factory):
    """The folder of a nano base pretrained on the tiny world with the built-in recipe."""
    out = tmp_path_factory.mktemp("runs") / "base-nano"
    pretrain("nano", out=out, device="cpu", quiet=True)
    return out


@pytest.fixture
def nano_base(nano_run):
    """A fresh copy of the pretrained nano base (tests may change it freely)."""
    return load_run(nano_run)[0]
