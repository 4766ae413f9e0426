"""Shared settings and building blocks for the fuzz tests (tests/*/test_fuzz_*.py).

The contract they check is PRODUCT.md's "bad input gets a clear message naming
what is wrong": a parser either returns a value or raises one of the hub's own
error types (hub/errors.py) whose message says where the problem is. Any other
exception is a crash that would reach a person as a traceback.

Settings: on a developer's machine, Hypothesis's defaults (a fresh random
search each run, failures replayed from the local example database), so every
run explores new inputs; under CI (`CI` set) `derandomize=True`, so a
submission's verdict does not depend on the draw and a CI failure replays
exactly on any machine. Each crash found is pinned with `@example` in its test
so it stays a deterministic regression. `deadline=None` because the suite shares a small
machine and per-example timings are noise there. `HUB_FUZZ_SCALE=20` runs a
longer campaign locally without slowing the default suite; `HUB_FUZZ_SEARCH_ONLY=1`
skips the pinned examples and the database, to check that the random search finds a
crash on its own.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

SCALE = max(1, int(os.environ.get("HUB_FUZZ_SCALE", "1")))
SEARCH_ONLY = os.environ.get("HUB_FUZZ_SEARCH_ONLY") == "1"
IN_CI = bool(os.environ.get("CI"))


def fuzz(max_examples: int) -> settings:
    """Settings for one fuzz test: `max_examples` per run (times HUB_FUZZ_SCALE), no deadline."""
    if SEARCH_ONLY:
        return settings(max_examples=max_examples * SCALE, deadline=None, database=None,
                        phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
    return settings(
        max_examples=max_examples * SCALE,
        deadline=None,
        derandomize=IN_CI,
        database=None if IN_CI else settings().database,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


# Any text a person could type or paste, including control characters and
# astral-plane symbols, but no lone surrogates (those cannot be UTF-8 encoded, so
# they never arrive from a file, an email or a Matrix event).
ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=80)


def spliced(fragments: list[str], max_size: int = 6) -> st.SearchStrategy[str]:
    """Text made of known-tricky fragments and random text, so the search reaches the edges.

    Pure random text almost never spells "http://[" or "America"; fragments
    known to sit on a parser's edges, recombined with noise, do.
    """
    piece = st.one_of(st.sampled_from(fragments), st.text(max_size=6))
    return st.lists(piece, max_size=max_size).map("".join)
