"""Fixtures for the `hub` command-line tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _drop_cli_log_handlers() -> Iterator[None]:
    """main() installs a log handler on the test's captured stderr; don't let it outlive the test."""
    yield
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_hub", False):
            root.removeHandler(h)
