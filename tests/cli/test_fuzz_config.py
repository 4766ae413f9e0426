"""Fuzzing the config loader: any file, any TOML, any value for any key -> Settings or a ConfigError.

Every ConfigError problem must name the file and then the key (``file: cohort[0].weeks: ...``),
or, for a file that is not TOML at all, where the TOML breaks (line and column). Nothing else
may escape `load_settings`: `hub check` and `hub run` would print a traceback instead.
See tests/support/fuzz.py for the settings used.
"""

from __future__ import annotations

import math
import re
import tempfile
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from hub.config import Settings, load_settings
from hub.errors import ConfigError

from tests.support.fuzz import ANY_TEXT, fuzz, spliced

# --- a small TOML writer (the venv has a reader only); inline tables below the top level ---------

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else _string(k)


def _string(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def to_toml(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    def tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    for k, v in doc.items():  # plain values first: after a [table] header they would belong to it
        if not isinstance(v, dict) and not tables(v):
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{_key(k)}]")
            lines.extend(f"{_key(kk)} = {_value(vv)}" for kk, vv in v.items())
        elif tables(v):
            for table in v:
                lines.append(f"[[{_key(k)}]]")
                lines.extend(f"{_key(kk)} = {_value(vv)}" for kk, vv in table.items())
    return "\n".join(lines) + "\n"


# --- strategies ----------------------------------------------------------------------------------

FRAGMENTS = [
    "http://", "https://", "[", "]", "::1", "~", "~nosuchuser/", "America", "Europe/Berlin", "UTC",
    "../", "/", "²", "٣", "mon 09:00", "fri", " 25:00", ":", "@", "@hub:example.org", "${HUB_X}",
    "${UNSET_VAR}", "${", "}", "sqlite:///", "postgresql://u:p@h/db", "127.0.0.1:8080", ":8080",
    "\x00", " ", "\n", "#room:example.org", "!id", "2027-01-11", "T17:00", "+02:00", "-", "0", "9",
    "%", "\u200b",
]
STRINGS = spliced(FRAGMENTS)
_ZONE = st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30))])
SCALARS = st.one_of(
    STRINGS, ANY_TEXT, st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(), st.booleans(),
    st.dates(), st.times(), st.builds(lambda d, z: d.replace(tzinfo=z), st.datetimes(), _ZONE),
)
KEYNAMES = st.text("abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=8)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYNAMES, inner, max_size=3),
    max_leaves=8,
)

SCHEMA: dict[str, list[str]] = {
    "hub": ["data_dir", "timezone", "catch_up_hours"],
    "database": ["url"],
    "matrix": ["homeserver", "user_id", "password", "access_token", "command_prefix", "control_room",
               "moderators", "encrypt_pair_rooms", "reset_cross_signing"],
    "email": ["enabled", "from", "smtp_host", "smtp_port", "security", "username", "password",
              "connections", "max_per_second"],
    "web": ["listen", "public_url", "secret"],
    "video": ["base_url"],
    "content": ["path"],
}
COHORT_KEYS = ["slug", "name", "timezone", "start", "weeks", "digest", "icebreaker", "checkin",
               "checkin_weeks", "reflection", "reflection_weeks", "webinar"]


def _table(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Some of the known keys, each with any value (often a near-miss string), plus unknown keys."""
    known = st.dictionaries(st.sampled_from(keys), st.one_of(STRINGS, VALUES), max_size=len(keys))
    unknown = st.dictionaries(KEYNAMES, VALUES, max_size=2)
    return st.builds(lambda a, b: {**b, **a}, known, unknown)


_WEBINAR = st.dictionaries(st.sampled_from(["at", "title", "url"]), st.one_of(STRINGS, VALUES), max_size=3)
_COHORT = st.builds(
    lambda t, w: {**t, **({"webinar": w} if w is not None else {})},
    _table(COHORT_KEYS), st.none() | _WEBINAR,
)
DOCUMENTS = st.builds(
    lambda sections, cohorts, stray: {**stray, **sections, **({"cohort": cohorts} if cohorts else {})},
    st.fixed_dictionaries({}, optional={name: _table(keys) for name, keys in SCHEMA.items()}),
    st.lists(_COHORT, max_size=3),
    st.dictionaries(KEYNAMES, VALUES, max_size=2),
)
ENV = {"HUB_X": "x-value", "HUB_PW": "a-password"}


def _load(text: str | bytes, env: dict[str, str] = ENV) -> tuple[str, Settings | ConfigError]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        try:
            return str(path), load_settings(path, env=env)
        except ConfigError as e:
            return str(path), e


def _assert_names_a_key(file: str, error: ConfigError, roots: set[str]) -> None:
    assert error.problems, "a ConfigError with no problems tells nobody anything"
    for p in error.problems:
        assert p.startswith(f"{file}: "), p
        where, sep, message = p[len(file) + 2:].partition(": ")
        assert sep and message.strip(), p
        root = re.split(r"[.\[]", where)[0]
        assert root in roots, f"{p!r} does not name a key of the file"


# --- the properties ------------------------------------------------------------------------------


@fuzz(300)
@given(DOCUMENTS)
@example({"web": {"listen": "h:²"}})  # '²'.isdigit() but int('²') raises
@example({"video": {"base_url": "http://[::1"}})  # urlparse: "Invalid IPv6 URL"
@example({"database": {"url": "postgresql://u:p@[::1/x"}})
@example({"hub": {"data_dir": "~nosuchuser/d"}})  # expanduser: RuntimeError
@example({"content": {"path": "~nosuchuser"}})
@example({"hub": {"timezone": "America"}})  # a folder of zones: IsADirectoryError
@example({"cohort": [{"slug": "a", "webinar": {"at": "2027-01-11T17:00", "url": "https://[x"}}]})
def test_any_document_loads_or_names_each_bad_key(doc: dict[str, Any]) -> None:
    file, result = _load(to_toml(doc))
    if isinstance(result, ConfigError):
        _assert_names_a_key(file, result, set(doc) | set(SCHEMA))


_TOML_BITS = ["[matrix]\n", "[[cohort]]\n", "homeserver = ", "weeks = ", "a.b = ", '"', "'", '"""', "'''",
              "\\", "\\u00", "=", "\n", "{", "}", "[", "]", ",", "#", "1979-05-27T07:32:00", "12", "x",
              "\r", "\x00", "\ufeff", "\u2028"]


@fuzz(300)
@given(st.one_of(spliced(_TOML_BITS, max_size=12), ANY_TEXT))
@example("a = " + "[" * 5000)  # deep nesting
def test_any_text_is_toml_or_says_where_it_breaks(text: str) -> None:
    file, result = _load(text)
    if isinstance(result, ConfigError) and any("not valid TOML" in p for p in result.problems):
        (problem,) = result.problems
        assert problem.startswith(f"{file}: not valid TOML: "), problem
        assert re.search(r"line \d+|end of document|nested too deeply", problem), problem


@fuzz(100)
@given(st.binary(max_size=60).map(lambda b: b'[hub]\ntimezone = "' + b + b'"\n'))
@example(b'[hub]\ntimezone = "\xff"\n')  # not UTF-8: read_text raises UnicodeDecodeError
def test_any_bytes_load_or_fail_with_a_config_error(data: bytes) -> None:
    file, result = _load(data)
    if isinstance(result, ConfigError):
        assert all(p.startswith(f"{file}: ") and p[len(file) + 2:].strip() for p in result.problems)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        assert isinstance(result, ConfigError)
        assert result.problems == [f"{file}: not valid TOML: not UTF-8 text (at line {line})"]


# --- valid documents round-trip ------------------------------------------------------------------

_SLUGS = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)
_SLOTS = st.builds(lambda d, h, m: f"{d} {h:02d}:{m:02d}",
                   st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]),
                   st.integers(0, 23), st.integers(0, 59))
_NAMES = st.text(st.characters(categories=("L", "N", "P", "Zs")), min_size=1, max_size=40).map(
    str.strip).filter(bool)
_ZONES = st.sampled_from(["UTC", "Europe/Berlin", "America/Sao_Paulo", "Asia/Kolkata", "Pacific/Chatham"])


@st.composite
def _valid_cohort(draw: st.DrawFn, slug: str) -> dict[str, Any]:
    weeks = draw(st.integers(1, 104))
    week_lists = st.lists(st.integers(1, weeks), max_size=6)
    cohort = {
        "slug": slug, "name": draw(_NAMES), "timezone": draw(_ZONES), "weeks": weeks,
        "start": draw(st.dates(date(2026, 1, 1), date(2030, 12, 31))),
        "digest": draw(_SLOTS), "icebreaker": draw(_SLOTS), "checkin": draw(_SLOTS),
        "reflection": draw(_SLOTS), "checkin_weeks": draw(week_lists), "reflection_weeks": draw(week_lists),
    }
    if draw(st.booleans()):
        at = draw(st.datetimes(datetime(2026, 1, 1), datetime(2030, 12, 31))).replace(second=0, microsecond=0)
        cohort["webinar"] = {"at": at, "title": draw(_NAMES), "url": "https://meet.example.org/kick-off"}
    return cohort


_USER_ID = r"@[a-z0-9._=/+-]{1,20}:[a-z0-9][a-z0-9.-]{0,20}"


@st.composite
def _valid_document(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, str]]:
    password = draw(ANY_TEXT.filter(lambda s: s.strip()))
    doc: dict[str, Any] = {
        "matrix": {"homeserver": "https://matrix.example.org",
                   "user_id": draw(st.from_regex(_USER_ID, fullmatch=True)),
                   "password": "${HUB_PW}",
                   "command_prefix": draw(st.from_regex(r"![a-z]{1,8}", fullmatch=True))},
        "hub": {"timezone": draw(_ZONES), "catch_up_hours": draw(st.integers(0, 1000))},
        "email": {"enabled": True, "from": "Hub <hub@example.org>", "smtp_port": draw(st.integers(1, 65535)),
                  "connections": draw(st.integers(1, 64))},
    }
    slugs = draw(st.lists(_SLUGS, max_size=3, unique=True))
    if slugs:
        doc["cohort"] = [draw(_valid_cohort(slug)) for slug in slugs]
    return doc, {"HUB_PW": password}


@fuzz(150)
@given(_valid_document())
def test_valid_documents_round_trip(case: tuple[dict[str, Any], dict[str, str]]) -> None:
    doc, env = case
    _, result = _load(to_toml(doc), env)
    assert isinstance(result, Settings), result
    m = doc["matrix"]
    assert (result.matrix.user_id, result.matrix.command_prefix) == (m["user_id"], m["command_prefix"])
    assert result.matrix.password == env["HUB_PW"]
    assert len(env["HUB_PW"]) < 4 or env["HUB_PW"] in result.secrets  # the log filter hides it
    assert result.hub.timezone.key == doc["hub"]["timezone"]
    assert result.email.smtp_port == doc["email"]["smtp_port"]
    assert len(result.cohorts) == len(doc.get("cohort", []))
    for got, want in zip(result.cohorts, doc.get("cohort", []), strict=True):
        assert (got.slug, got.name, got.timezone.key, got.weeks, got.start) == (
            want["slug"], want["name"], want["timezone"], want["weeks"], want["start"])
        assert [str(got.digest), str(got.icebreaker), str(got.checkin), str(got.reflection)] == [
            want["digest"], want["icebreaker"], want["checkin"], want["reflection"]]
        assert got.checkin_weeks == tuple(sorted(set(want["checkin_weeks"])))
        assert got.reflection_weeks == tuple(sorted(set(want["reflection_weeks"])))
        if "webinar" in want:
            assert got.webinar is not None
            assert got.webinar.at == want["webinar"]["at"].replace(tzinfo=got.timezone)
            assert got.webinar.title == want["webinar"]["title"]
        else:
            assert got.webinar is None


@fuzz(150)
@given(spliced(["${HUB_X}", "${HUB_PW}", "${UNSET_VAR}", "${", "}", "$", "{", "HUB_X", "$$"], max_size=8))
def test_variables_expand_or_name_the_missing_one(value: str) -> None:
    doc = {"matrix": {"homeserver": "https://m.example.org", "user_id": "@hub:example.org",
                      "password": "pw-1234"},
           "email": {"username": value}}
    file, result = _load(to_toml(doc))
    missing = sorted(set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value)) - set(ENV))
    if missing:
        assert isinstance(result, ConfigError)
        assert [p for p in result.problems if "email.username" in p] == [
            f"{file}: email.username: environment variable {v} is not set" for v in
            re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value) if v not in ENV]
    else:
        assert isinstance(result, Settings), result
        expected = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda mt: ENV[mt.group(1)], value)
        assert result.email.username == expected
