"""Display names (a person's, a cohort's): one check for every way a name comes in.

A name ends up in email headers (`To:` display name, `List-Id`), room names,
subjects and one-line Markdown. A line break there is not cosmetic: email
headers refuse it, so a name with one used to stop a whole cohort's digest.
Commands, the config and the roster CSV therefore all refuse the same
things, with the same words, before anything is stored.
"""

from __future__ import annotations

import unicodedata

__all__ = ["MAX_NAME", "check_name", "name_problem", "one_line"]

MAX_NAME = 100

# Explicit embeddings, overrides and isolates: they reorder the text around them,
# so a name could make "Ann" display as something else in a list of people.
# The plain marks (LRM, RLM, ALM) only nudge neutral characters and are legitimate
# in right-to-left names, so they stay allowed.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_LINE_BREAKS = frozenset("\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029")


def name_problem(text: str) -> str | None:
    """Why `text` cannot be a display name, or None when it can (after trimming spaces)."""
    clean = text.strip()
    if not clean:
        return "is empty"
    for ch in clean:
        if ch in _LINE_BREAKS:
            return "contains a line break"
        if ch in _BIDI:
            return f"contains a bidirectional override (U+{ord(ch):04X})"
        if unicodedata.category(ch) == "Cc":
            return f"contains a control character (U+{ord(ch):04X})"
    if len(clean) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters ({len(clean)})"
    return None


def check_name(text: str, label: str = "name") -> str:
    """`text` trimmed; ValueError ``"<label>: <problem>"`` when it is not a usable name."""
    problem = name_problem(text)
    if problem is not None:
        raise ValueError(f"{label}: {problem}")
    return text.strip()


def one_line(text: str) -> str:
    """`text` as a single line for places that must not break (a name stored by an older hub).

    Control characters become spaces and runs of spaces one space; used where a
    name is only shown, never where one is accepted (that is `check_name`'s job).
    """
    out = "".join(" " if ch in _LINE_BREAKS or unicodedata.category(ch) == "Cc" else ch
                  for ch in text if ch not in _BIDI)
    return " ".join(out.split())
