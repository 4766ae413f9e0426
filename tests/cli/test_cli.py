"""The `hub` command line itself: every subcommand that reads the config says how to name it."""

from __future__ import annotations

import argparse

import pytest

from hub.cli import _parser, main


def _leaves(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...],
                                                                                        argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(words, parser)]
    return [leaf for a in subs for name, p in a.choices.items() for leaf in _leaves(p, (*words, name))]


def test_every_config_option_has_help() -> None:
    leaves = _leaves(_parser())
    with_config = {words: p for words, p in leaves
                   if any("--config" in a.option_strings for a in p._actions)}
    # Every subcommand that reads a config (all but `demo` and `content copy`, which write their own).
    assert set(with_config) == {("run",), ("worker",), ("check",), ("roster", "import"), ("content", "check"),
                                ("digest", "preview"), ("match",)}
    for words, p in with_config.items():
        (option,) = [a for a in p._actions if "--config" in a.option_strings]
        assert option.option_strings == ["-c", "--config"]
        assert option.help and "$HUB_CONFIG" in option.help and "config.toml" in option.help, words


@pytest.mark.parametrize("words", [["run"], ["worker"], ["check"], ["roster", "import"], ["content", "check"],
                                   ["digest", "preview"], ["match"]])
def test_help_shows_what_c_means(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([*words, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "-c FILE, --config FILE config file (default: $HUB_CONFIG, else ./config.toml)" in text
