"""Hostile arguments to every registered command: the hub's reply never carries a link or an
image someone typed, and an error quotes the input only as short inline code.

The commands run through the real `CommandRunner` on a database (the world of
test_program_wiring: a cohort, three pairs, rooms with ids), as the sync loop would run
them; the reply row's content is what a client would render. A live check on Synapse is
in test_echo_live.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.core.commands import CommandContext, CommandRegistry, Handler, Reply
from hub.core.markup import ECHO_LIMIT
from hub.service import build_registry

from tests.features.test_program_wiring import BERLIN, CONTROL, MOD, PEOPLE, World, give_rooms_ids, make_world

REGISTRY = build_registry("!hub")
NAMES = sorted(s.name for s in REGISTRY.specs)

# What an attacker types: Markdown links and images, raw tags, backticks to close a code
# span early, line breaks to end a paragraph, and long runs to test the cut.
_PIECES = [
    "[Reset your password](https://evil.example/login)", "![x](https://evil.example/p.png)",
    "<a href=https://evil.example>x</a>", "<img src=https://evil.example/p.png>",
    "<img src=//evil.example/p.png>", "https://evil.example/x", "<https://evil.example/y>",
    "`", "``", "```", "\\", "\n", "\n\n", "*", "_", "[", "](", ")", "<", ">", "&amp;", "'", '"',
    "x" * 80, "=", "@", ":", "winter", "1",
]
hostile = st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=8)), min_size=1, max_size=8).map(
    "".join)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


def tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.found


_CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)


def outside_code(body: str) -> str:
    """The plain body less its inline code spans (where echoed input belongs)."""
    return _CODE_SPAN.sub("", body)


def check_reply(content: dict[str, Any], line: str, *, error: bool) -> None:
    html = content.get("formatted_body") or ""
    for tag, attrs in tags(html):
        assert tag != "img", (line, html)
        if tag == "a":
            href = attrs.get("href") or ""
            # The hub's own links (a video room, the guides) are https and never the attacker's.
            assert "evil.example" not in href and href.startswith("https://"), (line, html)
    if not error:
        # A success may show what someone stored (a plan) as typed in the plain body: the
        # README's decision; its HTML above is what must be inert, and is.
        return
    body = content["body"]
    rest = outside_code(body)
    assert "evil.example" not in rest, (line, body)
    assert "<img" not in rest and "<a " not in rest, (line, body)
    # Cut: an 80-character run typed in is never quoted whole.
    assert "x" * (ECHO_LIMIT + 1) not in body, (line, body)


@dataclass(repr=False)  # hypothesis prints the fixture in every failing example
class Rig:
    loop: asyncio.AbstractEventLoop
    world: World
    rooms: dict[str, str]

    def __repr__(self) -> str:
        return "Rig(...)"

    succeeded: list[str]

    def command(self, sender: str, room: str, line: str) -> tuple[dict[str, Any], bool]:
        """The reply's content, and whether it is an error (no handler returned normally)."""
        self.succeeded.clear()
        content = self.loop.run_until_complete(self.world.command(sender, room, line))
        return content, not self.succeeded


def _recording(registry: CommandRegistry, succeeded: list[str]) -> None:
    """Wrap every handler so the test knows a reply came from its success path."""
    for spec in registry.specs:
        def wrap(handler: Handler, name: str) -> Handler:
            async def run(ctx: CommandContext) -> Reply:
                reply = await handler(ctx)
                succeeded.append(name)
                return reply
            return run
        registry._specs[spec.name] = dataclasses.replace(spec, handler=wrap(spec.handler, spec.name))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    # One world for all examples, on its own loop: hypothesis drives a plain function.
    loop = asyncio.new_event_loop()
    tmp = tmp_path_factory.mktemp("echo")
    world = loop.run_until_complete(make_world(tmp, f"sqlite:///{tmp / 'hub.db'}",
                                               datetime(2027, 1, 12, 12, 0, tzinfo=BERLIN)))
    rooms = loop.run_until_complete(give_rooms_ids(world))
    succeeded: list[str] = []
    _recording(world.runner.registry, succeeded)
    yield Rig(loop, world, rooms, succeeded)
    loop.run_until_complete(world.db.close())
    loop.close()


def _where(rig: Rig, place: str) -> tuple[str, str]:
    """(sender, room id) for a place a command may be sent from."""
    mentor, mentee = PEOPLE[0]
    return {
        "control": (MOD, CONTROL),
        "lounge": (mentee, rig.rooms["lounge:1"]),
        "pair": (mentor, rig.rooms["pair:1"]),
        "other": (mentee, "!elsewhere:example.org"),
    }[place]


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from([*NAMES, "nosuchcommand"]), args=st.lists(hostile, min_size=0, max_size=4),
       quote=st.booleans(), place=st.sampled_from(["control", "lounge", "pair", "other"]))
def test_no_command_reply_carries_a_typed_link_or_image(
    rig: Rig, name: str, args: list[str], quote: bool, place: str,
) -> None:
    words = [shlex.quote(a) if quote else a for a in args]
    line = " ".join(["!hub", name, *words])
    sender, room = _where(rig, place)
    content, error = rig.command(sender, room, line)
    check_reply(content, line, error=error)


@pytest.mark.parametrize("payload", [
    "[Reset your password](https://evil.example/login)",
    "<img src=https://evil.example/pixel.png>",
    "`[Reset](https://evil.example/login)`",
    "x" * 500 + "[Reset](https://evil.example/login)",
])
def test_every_command_with_a_link_in_each_argument(rig: Rig, payload: str) -> None:
    """Each command, the payload in each argument position (others plausible), from each place."""
    for spec in REGISTRY.specs:
        for i in range(len(spec.args) + 1):
            words = []
            for j, arg in enumerate(spec.args):
                if j == i:
                    words.append(payload)
                else:
                    words.append("1" if arg.kind == "int" else (arg.choices[0] if arg.choices else "winter"))
            if i == len(spec.args):
                words.append(payload)  # one too many
            line = " ".join(["!hub", spec.name, *(shlex.quote(w) for w in words)])
            for place in ("control", "lounge", "pair"):
                content, error = rig.command(*_where(rig, place), line)
                check_reply(content, line, error=error)


def test_the_reported_met_example_shows_the_link_as_code() -> None:
    """Unit-level twin of the live check: the parser's error for `!hub met "[Reset](...)"`."""
    from hub.core.markup import markdown_to_matrix
    from hub.errors import UsageError

    line = '!hub met "[Reset your password](https://evil.example/login)"'
    with pytest.raises(UsageError) as e:
        REGISTRY.parse(REGISTRY.addressed(line) or "")
    body, html = markdown_to_matrix(str(e.value))
    assert "evil.example" not in outside_code(body)
    assert "<a" not in html and "<code>[Reset your password](https://evil.example/login)</code>" in html
    assert len(str(e.value)) < 200 + ECHO_LIMIT
