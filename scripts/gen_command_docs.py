#!/usr/bin/env python3
"""Regenerate the command reference in docs/moderator-guide.md and docs/participant-guide.md.

The usage lines, summaries and where each command works come from the
command registry itself (`hub.service.build_registry`), so the guides cannot
drift from the code; this file adds one example per command and, for the
moderators' guide, what participants see. tests/cli/test_command_docs.py fails
when a guide is out of date or a command has no example here.

    python scripts/gen_command_docs.py          # rewrite the guides
    python scripts/gen_command_docs.py --check  # exit 1 if they are out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hub.core.commands import CommandSpec, RoomKind
from hub.service import build_registry

__all__ = ["BEGIN", "END", "EXAMPLES", "GUIDES", "render", "rewrite"]

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- BEGIN GENERATED COMMANDS (scripts/gen_command_docs.py) -->"
END = "<!-- END GENERATED COMMANDS -->"
PREFIX = "!hub"

# command name -> (example, what people see). Examples must parse as that command.
EXAMPLES: dict[str, tuple[str, str]] = {
    "help": ("!hub help plan", "The commands you may use in this room, or one command's usage."),
    "ping": ("!hub ping", "`pong`: the hub is listening."),
    "plan": ("!hub plan", "The pair's current backup plan."),
    "plan set": ("!hub plan set If the call drops, Ada phones Ben on +49 30 5550 1234",
                 "The plan is posted in the pair room and pinned there."),
    "plan clear": ("!hub plan clear", "The plan is unpinned and forgotten."),
    "dropped": ("!hub dropped", "The backup plan and quick fixes in the room; both people get the plan "
                                "by email too."),
    "call": ("!hub call", "The pair's own video link, with a nudge to use video."),
    "icebreaker": ("!hub icebreaker", "Another icebreaker question (at most 3 a day per room)."),
    "met": ("!hub met video", "A thank-you; a text-only answer gets a friendly nudge towards video."),
    "checkin": ("!hub checkin 4", "A private acknowledgement; a low score brings the private reflection "
                                  "guide and the offer of `!hub support`. Moderators see nothing."),
    "reflect": ("!hub reflect", "The private reflection guide."),
    "support": ("!hub support I'd like to talk about my pairing",
                "Confirmation that the moderators got it; only these words reach them."),
    "rematch": ("!hub rematch We get on, but our goals are too far apart",
                "Confirmation that the program team has it (only that you asked, and your words); your "
                "partner isn't told. Moderators: `!hub rematch SLUG MENTEE` in the control room closes "
                "that mentee's pair with a kind goodbye to both and proposes a new mentor, never a "
                "former one."),
    "email": ("!hub email weekly", "Confirmation of the new email preference."),
    "email unsuppress": ("!hub email unsuppress ben@example.org",
                         "Nothing at once: the next email to that address is sent again."),
    "snooze": ("!hub snooze 7", "Confirmation; no nudges to you for 7 days."),
    "unsnooze": ("!hub unsnooze", "Confirmation; nudges resume."),
    "audit": ("!hub audit 20", "Nothing: the last 20 moderator actions are listed for moderators only."),
    "cohort create": ('!hub cohort create spring-2027 "Spring 2027" tz=Europe/Berlin start=2027-03-01 '
                      "weeks=12", "Nothing yet: the cohort's space and lounge are created empty."),
    "cohort list": ("!hub cohort list", "Nothing: a list for moderators."),
    "cohort show": ("!hub cohort show spring-2027", "Nothing: rooms, people and pairs for moderators."),
    "add": ('!hub add spring-2027 mentee @ben:example.org "Ben Adeyemi" email=ben@example.org',
            "An invitation to the cohort's space and lounge (or a welcome email if they have no "
            "Matrix id)."),
    "remove": ("!hub remove spring-2027 @ben:example.org",
               "They leave the cohort's rooms; their pairs close with a goodbye."),
    "pair": ("!hub pair spring-2027 @ada:example.org @ben:example.org",
             "An invitation to a new private pair room with a welcome, the video link and the "
             "backup-plan prompt."),
    "unpair": ("!hub unpair spring-2027 @ada:example.org @ben:example.org",
               "A goodbye in the pair room; then the hub leaves it."),
    "pause": ("!hub pause spring-2027 @ada:example.org @ben:example.org",
              "Nothing: scheduled content to that pair stops."),
    "resume": ("!hub resume spring-2027 @ada:example.org @ben:example.org",
               "Scheduled content to that pair starts again."),
    "match": ("!hub match spring-2027",
              "Nothing until accepted: `!hub match spring-2027 accept` (or `accept 1 3`) makes the "
              "proposed pairs, with their rooms, welcomes and emails."),
    "webinar": ('!hub webinar spring-2027 2027-03-04T17:00 "Kick-off" https://meet.jit.si/spring-kickoff',
                "An announcement in the lounge and an email with an .ics invite; reminders 24 h and "
                "1 h before; a follow-up after."),
    "send": ("!hub send icebreaker spring-2027",
             "An icebreaker now in every active pair room (and one in the lounge)."),
    "announce": ("!hub announce spring-2027 **Welcome!** The kick-off is on Thursday.",
                 "A post in the lounge and an email to everyone who has not opted out."),
    "report": ("!hub report spring-2027", "Nothing: counts for moderators (pairs, check-in answers, "
                                          "invites, email problems). Never anyone's words."),
    "digest": ("!hub digest spring-2027 preview",
               "`preview`: nothing (the lounge version, for you). `send`: the digest in the lounge "
               "and by email, now."),
}

GUIDES = {
    "moderator": ROOT / "docs" / "moderator-guide.md",
    "participant": ROOT / "docs" / "participant-guide.md",
}


def _where(spec: CommandSpec) -> str:
    if spec.where == frozenset(RoomKind):
        return "any room"
    return ", ".join(sorted(k.value for k in spec.where))


def render(audience: str) -> str:
    """The generated section for one guide: moderator commands, or everyone's."""
    registry = build_registry(PREFIX)
    specs = [s for s in registry.specs if s.moderator_only == (audience == "moderator")]
    lines = [BEGIN, ""]
    if audience == "moderator":
        lines += ["| command | where | what it does | example | what participants see |",
                  "|---|---|---|---|---|"]
    else:
        lines += ["| command | where | what it does | example | what you get back |",
                  "|---|---|---|---|---|"]
    for spec in specs:
        example, seen = EXAMPLES.get(spec.name, ("", "(no example yet: add one to this script)"))
        usage = spec.usage(PREFIX).replace("|", "\\|")
        cells = [f"`{usage}`", _where(spec), spec.summary.replace("|", "\\|"),
                 f"`{example}`" if example else "", seen.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", END]
    return "\n".join(lines)


def rewrite(path: Path, section: str) -> str:
    """The file's text with its generated section replaced (the markers must exist once)."""
    text = path.read_text(encoding="utf-8")
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{path}: the markers {BEGIN!r} and {END!r} are missing")
    return text[:start] + section + text[end + len(END):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a guide is out of date")
    args = parser.parse_args(argv)
    stale = []
    for audience, path in GUIDES.items():
        new = rewrite(path, render(audience))
        if new != path.read_text(encoding="utf-8"):
            stale.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if args.check and stale:
        for path in stale:
            print(f"{path}: out of date; run python scripts/gen_command_docs.py", file=sys.stderr)
        return 1
    for path in stale:
        print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
