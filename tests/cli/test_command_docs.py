"""The guides' command references are generated from the registry and every example really parses."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from hub.service import build_registry

ROOT = Path(__file__).resolve().parents[2]


def _gen() -> ModuleType:
    script = ROOT / "scripts" / "gen_command_docs.py"
    spec = importlib.util.spec_from_file_location("gen_command_docs", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _gen()


@pytest.mark.parametrize("audience", sorted(GEN.GUIDES))
def test_guide_is_up_to_date(audience: str) -> None:
    path = GEN.GUIDES[audience]
    assert GEN.rewrite(path, GEN.render(audience)) == path.read_text(encoding="utf-8"), (
        f"{path} is out of date: run python scripts/gen_command_docs.py")


def test_every_command_has_an_example_that_parses_as_itself() -> None:
    registry = build_registry("!hub")
    missing = [s.name for s in registry.specs if s.name not in GEN.EXAMPLES]
    assert not missing, f"add examples to scripts/gen_command_docs.py for: {', '.join(missing)}"
    unknown = sorted(set(GEN.EXAMPLES) - {s.name for s in registry.specs})
    assert not unknown, f"examples for commands that no longer exist: {unknown}"
    for name, (example, _) in GEN.EXAMPLES.items():
        rest = registry.addressed(example)
        assert rest is not None, example
        assert registry.parse(rest).spec.name == name, example


def test_every_command_line_in_the_guides_is_registered() -> None:
    """Examples in prose and code blocks too, not only the generated tables."""
    registry = build_registry("!hub")
    usages = {s.usage("!hub") for s in registry.specs}
    for path in GEN.GUIDES.values():
        text = path.read_text(encoding="utf-8")
        for line in re.findall(r"^!hub .+$", text, flags=re.MULTILINE):
            rest = registry.addressed(line)
            assert rest is not None
            registry.parse(rest)  # raises UsageError if unknown or malformed
        for usage in re.findall(r"^\| `(!hub [^`]*)` \|", text, flags=re.MULTILINE):
            assert usage.replace("\\|", "|") in usages, f"{path.name}: {usage} is not a registered usage"
