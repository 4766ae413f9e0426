"""Loading and checking the content library: the shipped one, each mistake at its file and line, the CLI.

Mirrors `hub.core.content_library`. Fast unit tests: no homeserver, no SMTP, no database.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hub.cli import main
from hub.core.content import SAMPLES, SLOTS, VARIABLE_TYPES, Audience, Kind, Library
from hub.core.content_library import Problem, check_library, default_library_path, load_library
from hub.errors import ContentError

ROOT = Path(__file__).resolve().parents[2]


def _copy_shipped(tmp_path: Path) -> Path:
    target = tmp_path / "library"
    shutil.copytree(default_library_path(), target)
    return target


def _minimal(tmp_path: Path) -> Path:
    """A small complete library: one item per slot, so checks of fixtures stay fast."""
    folder = tmp_path / "minimal"
    for (kind, audience, use) in SLOTS:
        name = f"{kind}-{audience}-{use}"
        body = {
            Audience.PAIR: "Hi {{ pair.mentor.name }} and {{ pair.mentee.name }}: {{ pair.video_url }}",
            Audience.COHORT: "Hello, {{ cohort.name }}!",
            Audience.PERSON: "Hi {{ person.name }}.",
        }[audience]
        if kind is Kind.WEBINAR:
            body += " {{ webinar.title }} at {{ webinar.local_time }}."
        _write(folder, f"{kind}/{name}.md",
               f"---\nid: {name}\nkind: {kind}\naudience: {audience}\nuse: {use}\n---\n{body}\n")
    return folder


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"), encoding="utf-8")
    return path



# --- the shipped library -------------------------------------------------------------------


def test_shipped_library_passes_the_check_with_the_required_counts() -> None:
    report = check_library(default_library_path())
    assert report.problems == (), "\n".join(map(str, report.problems))
    counts = report.counts()
    assert counts[(Kind.ICEBREAKER, Audience.PAIR, "prompt")] >= 16
    assert counts[(Kind.ICEBREAKER, Audience.COHORT, "prompt")] >= 6
    assert counts[(Kind.REFLECTION, Audience.PAIR, "prompt")] >= 4
    assert counts[(Kind.REFLECTION, Audience.PERSON, "guide")] >= 1
    assert counts[(Kind.PLAN, Audience.PAIR, "prompt")] >= 1
    assert counts[(Kind.PLAN, Audience.PAIR, "dropped")] >= 1
    assert counts[(Kind.VIDEO, Audience.PAIR, "nudge")] >= 3
    assert counts[(Kind.CHECKIN, Audience.PAIR, "prompt")] >= 1
    assert counts[(Kind.CHECKIN, Audience.PERSON, "prompt")] >= 1
    for audience in Audience:
        assert counts[(Kind.WELCOME, audience, "greeting")] >= 1
    assert counts[(Kind.WELCOME, Audience.PAIR, "launch")] >= 1
    for use in ("announcement", "reminder", "follow-up"):
        assert counts[(Kind.WEBINAR, Audience.COHORT, use)] >= 1
    assert counts[(Kind.TIP, Audience.COHORT, "digest")] >= 5
    assert set(counts) == set(SLOTS), "every slot is covered and nothing else"
    assert "OK" in report.summary()


# Chat-only requests: fine in the lounge, pointing nowhere in an email.
_CHAT_ONLY = re.compile(r"\b(?:say so|reply|ask|answer|post|share|write|tell us)(?: it| them)? here\b", re.I)


@pytest.mark.parametrize("use", ["announcement", "reminder"])
def test_webinar_mail_asks_nothing_only_a_chat_room_could_answer(library: Library, use: str) -> None:
    """Issue 16: the invite email said "Can't make it? Say so here": the same text goes to the lounge
    and by email, so it must ask only what an email reader can do."""
    for item in library.select(Kind.WEBINAR, Audience.COHORT, use=use):
        for label, variables in SAMPLES:
            text = library.render(item, variables).email_text
            assert not _CHAT_ONLY.search(text), (item.id, label, _CHAT_ONLY.search(text))


def test_default_library_is_the_repository_content_folder() -> None:
    # In a checkout, hub/content is a symlink to content/ (what the wheel ships as package data).
    assert default_library_path() == (ROOT / "content").resolve()
    assert (ROOT / "hub" / "content").resolve() == (ROOT / "content").resolve()


def test_readme_is_not_an_item(library: Library) -> None:
    assert (default_library_path() / "README.md").is_file()
    assert all(item.path.name != "README.md" for item in library)


# --- the check reports each mistake at its file and line -----------------------------------


MISTAKES: dict[str, tuple[str, int, str]] = {
    # file name: (content, expected line, expected message fragment)
    "unknown-key.md": ("""
---
id: mistake-unknown-key
kind: tip
audience: cohort
titel: Oops
---
Body.
""", 5, "unknown front-matter key 'titel' (did you mean 'title'?)"),
    "missing-key.md": ("""
---
id: mistake-missing-key
kind: tip
---
Body.
""", 1, "missing required front-matter key 'audience'"),
    "bad-kind.md": ("""
---
id: mistake-bad-kind
kind: icebraker
audience: pair
---
Body.
""", 3, "kind 'icebraker' is not one of icebreaker, checkin"),
    "bad-audience.md": ("""
---
id: mistake-bad-audience
kind: icebreaker
audience: pairs
---
Body.
""", 4, "audience 'pairs' is not one of pair, cohort, person (did you mean 'pair'?)"),
    "bad-use.md": ("""
---
id: mistake-bad-use
kind: webinar
audience: cohort
use: remind
---
Body.
""", 5, "use 'remind' is not one of announcement, reminder, follow-up"),
    "never-sent.md": ("""
---
id: mistake-never-sent
kind: tip
audience: pair
---
Body.
""", 4, "the hub never sends tip items to audience pair"),
    "unknown-variable.md": ("""
---
id: mistake-unknown-variable
kind: icebreaker
audience: pair
---
Hello!

Say hi to {{ pairr.mentor.name }}.
""", 8, "unknown variable 'pairr' (did you mean 'pair'?"),
    "wrong-audience-variable.md": ("""
---
id: mistake-wrong-audience-variable
kind: icebreaker
audience: cohort
---
Hi {{ person.name }}
""", 6, "variable 'person' is not available in a icebreaker/cohort item"),
    "unknown-field.md": ("""
---
id: mistake-unknown-field
kind: video
audience: pair
---
First line.
Second line.
Link: {{ pair.video_link }}
""", 8, "'pair' has no field 'video_link' (did you mean 'video_url'?)"),
    "nested-field.md": ("""
---
id: mistake-nested-field
kind: video
audience: pair
---
{{ pair.mentor.nmae }}
""", 6, "'pair.mentor' has no field 'nmae' (did you mean 'name'?)"),
    "render-fails.md": ("""
---
id: mistake-render-fails
kind: checkin
audience: person
---
Hi {{ person.name }},

how are things with {{ partner.name }}?
""", 8, "does not render with the sample variables (optional values missing)"),
    "render-error.md": ("""
---
id: mistake-render-error
kind: tip
audience: cohort
---
One.
Two: {{ week / 0 }}
""", 7, "does not render with the sample variables"),
    "syntax.md": ("""
---
id: mistake-syntax
kind: tip
audience: cohort
---
Fine.
{% if week %}
Never closed.
""", 8, "template syntax:"),
    "bad-yaml.md": ("""
---
id: mistake-bad-yaml
kind: tip
audience: cohort
tags: [one, two
---
Body.
""", 6, "front matter is not valid YAML"),
    "yaml-colon.md": ("""
---
id: mistake-yaml-colon
kind: tip
audience: cohort
title: Note: this breaks YAML
---
Body.
""", 5, "front matter is not valid YAML"),
    "no-front-matter.md": ("""
Just text, no front matter.
""", 1, "no front matter"),
    "bad-id.md": ("""
---
id: Not An Id
kind: tip
audience: cohort
---
Body.
""", 2, "id 'Not An Id' must be lowercase letters"),
    "bad-week.md": ("""
---
id: mistake-bad-week
kind: tip
audience: cohort
week: first
---
Body.
""", 5, "week 'first' must be a program week number"),
    "empty-body.md": ("""
---
id: mistake-empty-body
kind: tip
audience: cohort
---

""", 5, "the body is empty"),
    "image.md": ("""
---
id: mistake-image
kind: tip
audience: cohort
---
Look:

![a cat](https://example.org/cat.png)
""", 8, "images are not supported"),
    "code-variable.md": ("""
---
id: mistake-code-variable
kind: welcome
audience: pair
---
Type `!hub plan set {{ pair.mentor.name }} calls` now.
""", 6, "a variable is printed inside `code`"),
    "print-object.md": ("""
---
id: mistake-print-object
kind: video
audience: pair
---
{{ pair.mentor }}
""", 6, "print one field of the person"),
    "unguarded-none.md": ("""
---
id: mistake-unguarded-none
kind: plan
audience: pair
use: dropped
---
Room: {{ pair.room_url }}
""", 7, "a value is empty (None) here"),
    "include.md": ("""
---
id: mistake-include
kind: tip
audience: cohort
---
{% include "other.md" %}
""", 6, "include, extends and import are not available"),
    "bad-title.md": ("""
---
id: mistake-bad-title
kind: tip
audience: cohort
title: "Hi {{ persn.name }}"
---
Body.
""", 5, "unknown variable 'persn'"),
    "duplicate-key.md": ("""
---
id: mistake-duplicate-key
kind: tip
audience: cohort
kind: tip
---
Body.
""", 5, "front-matter key 'kind' appears twice (also on line 3)"),
}


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Problem]]:
    """The shipped library plus one file per mistake, checked once for all the tests below."""
    folder = _minimal(tmp_path_factory.mktemp("mistakes"))
    for name, (text, _line, _message) in MISTAKES.items():
        _write(folder, f"mistakes/{name}", text)
    return folder, list(check_library(folder).problems)


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_each_mistake_is_reported_with_file_and_line(mistakes: tuple[Path, list[Problem]], name: str) -> None:
    folder, problems = mistakes
    path = folder / "mistakes" / name
    _text, line, message = MISTAKES[name]
    lines = [str(p) for p in problems if p.path == path]
    assert any(s.startswith(f"{path}:{line}: ") and message in s for s in lines), lines


def test_one_mistake_does_not_cascade(mistakes: tuple[Path, list[Problem]]) -> None:
    folder, problems = mistakes
    assert {p.path.name for p in problems} == set(MISTAKES)
    assert all(p.path.parent == folder / "mistakes" for p in problems)
    assert len(problems) == len(MISTAKES), "\n".join(map(str, problems))


def test_duplicate_id_names_both_files(tmp_path: Path) -> None:
    folder = _minimal(tmp_path)
    path = _write(folder, "zz/duplicate.md", """
---
kind: tip
audience: cohort
id: tip-cohort-digest
---
Again.
""")
    lines = [str(p) for p in check_library(folder).problems]
    first = folder / "tip" / "tip-cohort-digest.md"
    assert lines == [f"{path}:4: duplicate id 'tip-cohort-digest' (also in {first}:2)"]


def test_every_problem_of_a_file_is_reported_in_one_run(tmp_path: Path) -> None:
    """Issue 16: a front-matter mistake hid a duplicate id and a mistake in the body; an unknown
    key hid a body that does not render."""
    folder = _minimal(tmp_path)
    first = folder / "tip" / "tip-cohort-digest.md"
    many = _write(folder, "zz/many.md", """
---
id: tip-cohort-digest
kind: tipp
audience: cohort
---
Hello {{ cohrt.name }}!
""")
    render = _write(folder, "zz/render.md", """
---
id: zz-render
kind: tip
audience: cohort
titel: Oops
---
One.
Two: {{ week / 0 }}
""")
    lines = [str(p) for p in check_library(folder).problems]
    assert lines[:3] == [
        f"{many}:3: kind 'tipp' is not one of {', '.join(Kind)} (did you mean 'tip'?)",
        f"{many}:2: duplicate id 'tip-cohort-digest' (also in {first}:2)",
        f"{many}:6: unknown variable 'cohrt' (did you mean 'cohort'?) (available here: "
        f"{', '.join(sorted(VARIABLE_TYPES))})",
    ], lines
    assert lines[3].startswith(f"{render}:5: unknown front-matter key 'titel'"), lines
    assert lines[4].startswith(f"{render}:8: does not render with the sample variables"), lines
    assert len(lines) == 5, lines


def test_a_file_that_is_no_item_still_has_its_templates_checked(tmp_path: Path) -> None:
    folder = _minimal(tmp_path)
    path = _write(folder, "zz/yaml.md", """
---
id: zz-yaml
kind: tip
audience: [cohort
---
Fine.
{% if week %}
""")
    lines = [str(p) for p in check_library(folder).problems]
    assert len(lines) == 2 and lines[0].startswith(f"{path}:5: front matter is not valid YAML"), lines
    assert lines[1].startswith(f"{path}:7: template syntax:"), lines


def test_missing_slots_and_empty_folders_are_reported(tmp_path: Path) -> None:
    folder = _minimal(tmp_path)
    (folder / "plan" / "plan-pair-dropped.md").unlink()
    lines = [str(p) for p in check_library(folder).problems]
    assert lines == [f"{folder}: no plan item for audience pair with use dropped: the hub needs one for "
                     f"{SLOTS[(Kind.PLAN, Audience.PAIR, 'dropped')]}"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert [str(p) for p in check_library(empty).problems] == [
        f"{empty}: no content files (*.md) in this folder"]
    nope = tmp_path / "nope"
    assert [str(p) for p in check_library(nope).problems] == [f"{nope}: not a folder"]


def test_load_library_raises_with_every_problem(tmp_path: Path) -> None:
    folder = _minimal(tmp_path)
    _write(folder, "a.md", MISTAKES["bad-kind.md"][0])
    _write(folder, "b.md", MISTAKES["unknown-key.md"][0])
    with pytest.raises(ContentError) as info:
        load_library(folder)
    assert len(info.value.problems) == 2


def test_a_moderator_can_add_and_replace_files(tmp_path: Path) -> None:
    folder = _copy_shipped(tmp_path)
    shutil.rmtree(folder / "tips")
    _write(folder, "tips/our-tip.md", """
---
id: tip-our-own
kind: tip
audience: cohort
title: Our own tip
---
**Tip:** {{ cohort.name }} does things its own way.
""")
    lib = load_library(folder)
    assert [i.id for i in lib.select(Kind.TIP)] == ["tip-our-own"]
    assert lib.render("tip-our-own", SAMPLES[0][1]).body == "Tip: Winter 2027 does things its own way."


# --- the CLI -------------------------------------------------------------------------------


def test_cli_content_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["content", "check", str(default_library_path())]) == 0
    out = capsys.readouterr()
    assert "OK" in out.out and out.err == ""

    folder = _minimal(tmp_path)
    path = _write(folder, "broken.md", MISTAKES["unknown-variable.md"][0])
    assert main(["content", "check", str(folder)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:8: unknown variable 'pairr'" in err
    assert "1 problem(s)" in err


def test_cli_content_check_uses_the_configured_library(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _minimal(tmp_path)
    _write(folder, "broken.md", MISTAKES["bad-kind.md"][0])
    config = tmp_path / "config.toml"
    config.write_text('[matrix]\nhomeserver = "https://m.example.org"\nuser_id = "@hub:example.org"\n'
                      'password = "x"\n\n[content]\npath = "minimal"\n', encoding="utf-8")
    assert main(["content", "check", "-c", str(config)]) == 1
    assert "kind 'icebraker'" in capsys.readouterr().err


def test_cli_content_copy_gives_an_editable_copy_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "content"
    assert main(["content", "copy", str(target)]) == 0
    shipped = default_library_path()
    names = sorted(p.relative_to(shipped).as_posix() for p in shipped.rglob("*.md"))
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*.md")) == names
    report = check_library(target)
    out = capsys.readouterr().out
    assert report.ok and f"Copied the shipped content library ({len(report.items)} items)" in out
    edited = target / "tips" / "01-camera-first.md"
    edited.write_text(edited.read_text(encoding="utf-8") + "\nOur own words.\n", encoding="utf-8")
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert main(["content", "copy", str(target)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert main(["content", "copy", str(edited)]) == 1
    assert "not a folder" in capsys.readouterr().err


def test_the_guides_copy_command_works_outside_the_virtualenv(tmp_path: Path) -> None:
    """Issue 16: the guide's `cp -r "$(python -c ...)"` needed the hub importable by whatever `python`
    the shell finds. Run the documented command with only the `hub` command on the PATH."""
    guide = (ROOT / "docs" / "content-authoring.md").read_text(encoding="utf-8")
    section = guide.split("## Replacing or adding files", 1)[1]
    command = next(line.strip().removeprefix("$ ") for line in section.splitlines()
                   if line.strip().startswith("$ "))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hub").symlink_to(Path(sys.executable).parent / "hub")
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(["/bin/sh", "-c", command], cwd=work, capture_output=True, text=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}, check=False)
    assert done.returncode == 0, (command, done.stderr)
    assert check_library(work / "content").ok


def test_cli_subprocess_and_hub_check(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "hub", "content", "check"], cwd=tmp_path,
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "items in" in ok.stdout

    folder = _minimal(tmp_path)
    _write(folder, "broken.md", MISTAKES["missing-key.md"][0])
    config = tmp_path / "config.toml"
    config.write_text('[matrix]\nhomeserver = "https://m.example.org"\nuser_id = "@hub:example.org"\n'
                      'password = "x"\n\n[content]\npath = "minimal"\n', encoding="utf-8")
    bad = subprocess.run([sys.executable, "-m", "hub", "check", "--offline", "-c", str(config)],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert f"{folder / 'broken.md'}:1: missing required front-matter key 'audience'" in bad.stderr
