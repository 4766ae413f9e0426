"""Loading and checking a content library: a folder of item files -> a `Library`, or every problem.

A library is a folder of ``*.md`` files (sub-folders allowed; files and
folders whose names start with ``.`` or ``_``, and ``README.md``, are
ignored). Each file is one item, in the format `hub.core.content` describes.

The check reports each mistake at its file and line: the front matter, ids,
the variables and fields a template uses (statically), renders with the sample
variables (`hub.core.content.SAMPLES`), and a missing item for any of `SLOTS`.
`hub content check` and `hub check` print its report; `load_library` only
returns a library that passes it.

Public API::

    default_library_path() -> Path
    copy_library(dest: Path) -> int       # `hub content copy DIR`: the shipped library, to edit
    check_library(path: Path, *, command_prefix="!hub") -> CheckReport
    load_library(path: Path | None = None, *, command_prefix="!hub") -> Library   # raises ContentError

    CheckReport: root, files, items, problems (Problem: path, line, message; str() is
                 "file:line: message"); ok, counts(), summary()

Errors are `hub.errors.ContentError`, whose `problems` are ``file:line: reason``
lines.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, get_args, get_type_hints

import yaml  # type: ignore[import-untyped]
from frontmatter.default_handlers import YAMLHandler
from jinja2 import TemplateSyntaxError, meta, nodes

from hub.core.content import (
    FRONT_MATTER_KEYS,
    REQUIRED_KEYS,
    SAMPLES,
    SLOTS,
    VARIABLE_TYPES,
    Audience,
    ContentItem,
    Kind,
    Library,
    available_variables,
    default_use,
)
from hub.core.content_render import _MARKDOWN_ENV, _RenderFailure, _tidy_tag_lines
from hub.errors import ContentError

__all__ = ["CheckReport", "Problem", "check_library", "copy_library", "default_library_path", "load_library"]

_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")
_MAX_EVENT_BYTES = 48_000  # Matrix caps an event at 65 536 bytes, JSON and encryption included


def _fields(cls: type) -> dict[str, type | None]:
    """Field name -> its dataclass type (for nested checks), None for plain values."""
    hints = get_type_hints(cls)
    out: dict[str, type | None] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        inner = [a for a in get_args(hint) if a is not type(None)] or [hint]
        first = inner[0]
        out[f.name] = first if isinstance(first, type) and dataclasses.is_dataclass(first) else None
    return out


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


@dataclass(frozen=True)
class CheckReport:
    root: Path
    files: int
    items: tuple[ContentItem, ...]
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> Counter[tuple[Kind, Audience, str]]:
        return Counter((i.kind, i.audience, i.use) for i in self.items)

    def summary(self) -> str:
        """``78 items in 78 files: icebreaker 16 pair + 8 cohort, ...`` (or the problem count)."""
        if self.problems:
            return f"{self.root}: {len(self.problems)} problem(s) in {self.files} file(s)"
        per_kind: list[str] = []
        for kind in Kind:
            by_audience = Counter(i.audience for i in self.items if i.kind is kind)
            if by_audience:
                parts = " + ".join(f"{by_audience[a]} {a}" for a in Audience if by_audience[a])
                per_kind.append(f"{kind} {parts}")
        return f"{self.root}: {len(self.items)} items in {self.files} files, OK ({'; '.join(per_kind)})"


def default_library_path() -> Path:
    """The library shipped with the package.

    ``hub/content`` in an installed wheel; in a checkout that is a symlink to
    the repository's ``content/``, which is also tried directly in case the
    symlink did not survive (e.g. a Windows checkout without symlinks).
    """
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "content", package.parent / "content"):
        if candidate.is_dir():
            return candidate.resolve()
    raise ContentError(f"the shipped content library is missing (looked in {package / 'content'})")


def copy_library(dest: Path) -> int:
    """Copy the shipped library into `dest`, a new or empty folder; returns the number of items copied.

    This is `hub content copy DIR`: it works wherever `hub` does, while a path inside the
    installed package is awkward to find from a shell (and `python -c` there may be another
    Python than the hub's). A folder with anything in it is refused, so an edited library is
    never overwritten; the copies are plain files the operator can edit (no read-only modes
    carried over from a system-wide install).
    """
    source = default_library_path()
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ContentError(f"{dest}: is a file, not a folder; nothing was copied")
    if dest.is_dir() and any(dest.iterdir()):
        raise ContentError(f"{dest}: the folder is not empty; copy into a new folder (nothing was copied)")
    try:
        shutil.copytree(source, dest, dirs_exist_ok=True, copy_function=shutil.copyfile,
                        ignore=shutil.ignore_patterns("__pycache__", ".*"))
        for folder in (dest, *(d for d in dest.rglob("*") if d.is_dir())):
            folder.chmod(0o755)
    except OSError as e:
        raise ContentError(f"{dest}: cannot copy the library there: {e.strerror or e}") from None
    return len(_library_files(dest))


def _library_files(root: Path) -> list[Path]:
    found = []
    for path in root.rglob("*.md"):
        rel = path.relative_to(root)
        if any(part.startswith((".", "_")) for part in rel.parts) or path.name.lower() == "readme.md":
            continue
        if path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _FileParser:
    """Front matter of one file -> a `ContentItem` (or None) and its problems, each with a line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[Problem] = []
        # What is known even when the file is not a valid item, so the check can still find a
        # duplicate id and lint the templates: one mistake must not hide the file's others.
        self.item_id: str | None = None
        self.id_line = 1
        self.kind: Kind | None = None
        self.audience: Audience | None = None
        self.templates: list[tuple[str, int]] = []  # (source, first file line): body, title, summary

    def problem(self, line: int | None, message: str) -> None:
        self.problems.append(Problem(self.path, line, message))

    def parse(self) -> ContentItem | None:
        try:
            text = self.path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            self.problem(e.object[: e.start].count(b"\n") + 1, "not UTF-8 text")
            return None
        except OSError as e:
            self.problem(None, f"cannot read: {e.strerror or e}")
            return None
        handler = YAMLHandler()
        boundaries = list(handler.FM_BOUNDARY.finditer(text))
        if not boundaries or text[: boundaries[0].start()].strip():
            self.problem(1, "no front matter: the file must start with a '---' line, then id, kind and "
                            "audience, then another '---' line")
            return None
        if len(boundaries) < 2:
            self.problem(text.count("\n", 0, boundaries[0].start()) + 1,
                         "the front matter is never closed: add a '---' line after it")
            return None
        start, end = boundaries[0], boundaries[1]
        yaml_text = text[start.end(): end.start()]
        yaml_line = text.count("\n", 0, start.end()) + 1  # file line of yaml_text's first line
        body_line = text.count("\n", 0, end.end()) + 1
        self.templates.append((text[end.end():], body_line))
        try:
            node = yaml.compose(yaml_text, Loader=yaml.SafeLoader)
            data = handler.load(yaml_text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            context_mark = getattr(e, "context_mark", None)
            reason = getattr(e, "problem", None) or str(e)
            if getattr(e, "context", None):
                reason = f"{reason} ({e.context}"
                if context_mark is not None:
                    reason += f" on line {yaml_line + context_mark.line}"
                reason += ")"
            self.problem(yaml_line + mark.line if mark is not None else yaml_line,
                         f"front matter is not valid YAML: {reason}")
            return None
        except RecursionError:  # PyYAML recurses once per "[" or "{": 2 000 of them would crash the check
            self.problem(yaml_line, "front matter is not valid YAML: lists or mappings nested too deeply")
            return None
        if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
            self.problem(yaml_line, "front matter must be 'key: value' lines")
            return None
        lines: dict[str, int] = {}
        for key_node, _value in node.value:
            key = str(key_node.value)
            line = yaml_line + key_node.start_mark.line
            if key in lines:
                self.problem(line, f"front-matter key {key!r} appears twice (also on line {lines[key]})")
            lines.setdefault(key, line)
            if key not in FRONT_MATTER_KEYS:
                self.problem(line, f"unknown front-matter key {key!r}{_suggest(key, FRONT_MATTER_KEYS)}; "
                                   f"allowed: {', '.join(FRONT_MATTER_KEYS)}")
        opening_line = text.count("\n", 0, start.start()) + 1
        for key in REQUIRED_KEYS:
            if key not in data:
                self.problem(opening_line, f"missing required front-matter key {key!r}")
        closing_line = text.count("\n", 0, end.start()) + 1
        return self._item(data, lines, text[end.end():], body_line, yaml_line, closing_line)

    def _item(self, data: dict[Any, Any], lines: dict[str, int], body: str, body_line: int,
              yaml_line: int, closing_line: int) -> ContentItem | None:
        def at(key: str) -> int:
            return lines.get(key, yaml_line)

        ok = True
        item_id = data.get("id")
        if isinstance(item_id, int | float | date) and not isinstance(item_id, bool):
            # `id: 2027` is YAML for a number; "must be letters or digits" would puzzle the author.
            what = "date" if isinstance(item_id, date) else "number"
            self.problem(at("id"), f"id {item_id} is read as a {what}, not text: "
                                   f"put it in quotes (id: '{item_id}')")
            ok = False
        elif "id" in data and not (isinstance(item_id, str) and _ID.match(item_id)):
            self.problem(at("id"), f"id {item_id!r} must be lowercase letters, digits, '-', '_' or '.', "
                                   "starting with a letter or digit (e.g. icebreaker-pair-desk-tour)")
            ok = False
        elif isinstance(item_id, str):
            self.item_id, self.id_line = item_id, at("id")
        kind = audience = None
        if "kind" in data:
            try:
                kind = Kind(str(data["kind"]))
            except ValueError:
                self.problem(at("kind"), f"kind {data['kind']!r} is not one of {', '.join(Kind)}"
                                         f"{_suggest(str(data['kind']), Kind)}")
        if "audience" in data:
            try:
                audience = Audience(str(data["audience"]))
            except ValueError:
                given = str(data["audience"])
                self.problem(at("audience"), f"audience {given!r} is not one of "
                                             f"{', '.join(Audience)}{_suggest(given, Audience)}")
        self.kind, self.audience = kind, audience
        use = None
        if kind is not None and audience is not None:
            uses = [u for (k, a, u) in SLOTS if k is kind and a is audience]
            if not uses:
                fits = sorted({a.value for (k, a, _u) in SLOTS if k is kind})
                self.problem(at("audience"), f"the hub never sends {kind} items to audience {audience} "
                                             f"({kind} items are for audience {' or '.join(fits)})")
            elif "use" in data:
                if data["use"] in uses:
                    use = str(data["use"])
                else:
                    self.problem(at("use"), f"use {data['use']!r} is not one of {', '.join(uses)} for "
                                            f"{kind}/{audience}{_suggest(str(data['use']), uses)}")
            else:
                use = default_use(kind, audience)
        week = data.get("week")
        if week is not None and (isinstance(week, bool) or not isinstance(week, int) or not 1 <= week <= 520):
            self.problem(at("week"), f"week {week!r} must be a program week number: 1, 2, 3, ...")
            week = None
        texts: dict[str, str | None] = {}
        for key in ("title", "summary"):
            value = data.get(key)
            if value is not None and not (isinstance(value, str) and value.strip()):
                self.problem(at(key), f"{key} must be a line of text")
                value = None
            texts[key] = value
            if value is not None:
                self.templates.append((value, at(key)))
        tags = data.get("tags", [])
        if isinstance(tags, str) or not isinstance(tags, list) or not all(
                isinstance(t, str) and t.strip() for t in tags):
            self.problem(at("tags"), "tags must be a list of words, e.g. [video, light]")
            tags = []
        if not body.strip():
            self.problem(closing_line, "the body is empty: write the message under the front matter")
            ok = False
        if not ok or not isinstance(item_id, str) or kind is None or audience is None or use is None:
            return None
        return ContentItem(
            id=item_id, kind=kind, audience=audience, use=use, body=body, path=self.path,
            week=week, title=texts["title"], summary=texts["summary"], tags=tuple(tags),
            id_line=at("id"), title_line=at("title"), summary_line=at("summary"), body_line=body_line,
        )


def _lint_template(path: Path, kind: Kind | None, audience: Audience | None, source: str, first_line: int,
                   problems: list[Problem]) -> bool:
    """Static checks of one template: syntax, variables, fields. False when it does not even parse.

    Without a valid kind and audience (a mistake in the front matter, reported on its own)
    a variable is checked against every variable there is, so a typo still shows.
    """
    try:
        ast = _MARKDOWN_ENV.parse(_tidy_tag_lines(source))
    except TemplateSyntaxError as e:
        problems.append(Problem(path, first_line + (e.lineno or 1) - 1, f"template syntax: {e.message}"))
        return False
    except RecursionError:  # Jinja's parser recurses per "(" or "[": thousands would crash the check
        problems.append(Problem(path, first_line, "template syntax: brackets nested too deeply"))
        return False
    found: dict[tuple[int, str], None] = {}  # ordered set: the same mistake once per line

    def report(node: nodes.Node, message: str) -> None:
        found[(first_line + (node.lineno or 1) - 1, message)] = None

    for stmt in ast.find_all((nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport)):
        report(stmt, "include, extends and import are not available: each file stands alone")
    known = kind is not None and audience is not None
    available = available_variables(kind, audience) if kind is not None and audience is not None \
        else frozenset(VARIABLE_TYPES)
    undeclared = meta.find_undeclared_variables(ast)
    for name_node in ast.find_all(nodes.Name):
        name = name_node.name
        if name_node.ctx != "load" or name not in undeclared or name in available:
            continue
        if name in VARIABLE_TYPES and known:
            report(name_node, f"variable {name!r} is not available in a {kind}/{audience} item "
                              f"(available: {', '.join(sorted(available))})")
        else:
            report(name_node, f"unknown variable {name!r}{_suggest(name, available)} "
                              f"(available here: {', '.join(sorted(available))})")
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        chain: list[str] = []
        cur: nodes.Expr = node
        while isinstance(cur, nodes.Getattr | nodes.Getitem):
            if isinstance(cur, nodes.Getattr):
                chain.append(cur.attr)
            elif isinstance(cur.arg, nodes.Const) and isinstance(cur.arg.value, str):
                chain.append(cur.arg.value)
            else:
                chain = []
                break
            cur = cur.node
        if not chain or not isinstance(cur, nodes.Name) or cur.name not in undeclared:
            continue
        if cur.name not in available:
            continue  # already reported as a variable
        chain.reverse()
        owner: type | None = VARIABLE_TYPES[cur.name]
        dotted = cur.name
        for attr in chain:
            if owner is None or not dataclasses.is_dataclass(owner):
                break  # a plain value (text, number, date): its methods are the sandbox's business
            fields = _fields(owner)
            if attr not in fields:
                report(node, f"{dotted!r} has no field {attr!r}{_suggest(attr, fields)} "
                             f"(fields: {', '.join(fields)})")
                break
            owner = fields[attr]
            dotted = f"{dotted}.{attr}"
    problems.extend(Problem(path, line, message) for (line, message) in found)
    return True


_IMAGE = re.compile(r"!\[|<img", re.IGNORECASE)
_PREFIX_LINE = re.compile(r"!hub\b")
_CODE_VARIABLE = re.compile(r"`[^`]*\{\{|^( {4}|\t)")


def _sample_check(library: Library, item: ContentItem, problems: list[Problem]) -> None:
    for label, variables in SAMPLES:
        try:
            rendered = library._render(item, variables)
        except _RenderFailure as e:
            problems.append(Problem(item.path, e.line,
                                    f"does not render with the sample variables ({label}): {e.reason}"))
            return
        if not rendered.body.strip():
            problems.append(Problem(item.path, item.text_line, f"renders to nothing ({label})"))
            return
        if "<img" in rendered.formatted_body:
            problems.append(Problem(item.path, item.line_of(_IMAGE),
                                    "images are not supported: emails load nothing remote "
                                    "and Matrix needs uploaded (mxc://) images"))
            return
        if "Ada\\-Marie" in rendered.body:
            problems.append(Problem(item.path, item.line_of(_CODE_VARIABLE),
                                    "a variable is printed inside `code` or a code block, where its escaping "
                                    "shows (Ada\\-Marie); move it out of the backticks"))
            return
        # What the hub emails to people without Matrix (hub.features.person_mail): their welcome
        # and check-in questions, rendered with `person.on_matrix` false.
        email_only = item.audience is Audience.PERSON and item.kind in (Kind.WELCOME, Kind.CHECKIN) and (
            item.use == "met" or (variables.person is not None and not variables.person.on_matrix))
        if email_only and library.command_prefix in rendered.body:
            problems.append(Problem(item.path, item.line_of(_PREFIX_LINE),
                                    f"the email for email-only people ({label}) names a command "
                                    f"({library.command_prefix}), which they cannot type"))
            return
        size = len(rendered.body.encode()) + len(rendered.formatted_body.encode())
        if size > _MAX_EVENT_BYTES:
            problems.append(Problem(item.path, item.text_line,
                                    f"too long for one Matrix message ({size} bytes; keep it under "
                                    f"{_MAX_EVENT_BYTES})"))
            return


def check_library(path: Path, *, command_prefix: str = "!hub") -> CheckReport:
    """Lint a library folder: front matter, ids, template variables and fields, sample renders, coverage."""
    root = Path(path)
    if not root.is_dir():
        return CheckReport(root, 0, (), (Problem(root, None, "not a folder"),))
    files = _library_files(root)
    problems: list[Problem] = []
    items: list[ContentItem] = []
    first_seen: dict[str, str] = {}  # id -> where it first appears, in any file
    taken: set[str] = set()  # ids of the items kept
    linted: dict[Path, bool] = {}  # file -> its templates parsed and passed the static checks
    for file in files:
        parser = _FileParser(file)
        item = parser.parse()
        problems.extend(parser.problems)
        if parser.item_id is not None:
            # Ids of files with other mistakes count too: fixing those must not reveal a duplicate.
            where = first_seen.setdefault(parser.item_id, f"{file}:{parser.id_line}")
            if where != f"{file}:{parser.id_line}":
                problems.append(Problem(file, parser.id_line,
                                        f"duplicate id {parser.item_id!r} (also in {where})"))
            if item is not None and item.id in taken:
                item = None
        before = len(problems)
        parsed = [_lint_template(file, parser.kind, parser.audience, source, line, problems)
                  for source, line in parser.templates]
        linted[file] = all(parsed) and len(problems) == before
        if item is not None:
            taken.add(item.id)
            items.append(item)
    library = Library(items, root=root, command_prefix=command_prefix)
    for item in library.items:
        # A mistake in the front matter (an unknown key, say) does not stop the sample renders;
        # one in a template would only be reported again by them.
        if linted[item.path]:
            _sample_check(library, item, problems)
    if not files:
        problems.append(Problem(root, None, "no content files (*.md) in this folder"))
    else:
        have = {(i.kind, i.audience, i.use) for i in items}
        for slot, what in SLOTS.items():
            if slot not in have:
                kind, audience, use = slot
                problems.append(Problem(root, None, f"no {kind} item for audience {audience} with use {use}: "
                                                    f"the hub needs one for {what}"))
    return CheckReport(root, len(files), library.items, tuple(problems))


def load_library(path: Path | None = None, *, command_prefix: str = "!hub") -> Library:
    """Check and load a library (the shipped one when `path` is None).

    Raises `ContentError` listing every problem, as `hub content check` would.
    """
    root = Path(path) if path is not None else default_library_path()
    report = check_library(root, command_prefix=command_prefix)
    if report.problems:
        raise ContentError([str(p) for p in report.problems])
    return Library(report.items, root=root, command_prefix=command_prefix)
