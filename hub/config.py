"""The TOML configuration, loaded into typed, validated settings.

Every problem is collected and reported together (one per line, naming the
file and the key), because fixing a config one error per run is miserable.
``${NAME}`` in any string is read from the environment; values that came from
the environment for secret keys are remembered so the log filter can hide them.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hub.core.calendar import CohortProgram, Webinar
from hub.core.names import name_problem
from hub.core.schedule import WeeklySlot, parse_weekly_slot
from hub.email.payload import is_address, split_mailbox
from hub.errors import ConfigError

__all__ = [
    "CohortSettings",
    "ConfigReport",
    "ContentSettings",
    "DatabaseSettings",
    "EmailSettings",
    "HubSettings",
    "InboundSettings",
    "MatrixSettings",
    "Settings",
    "VideoSettings",
    "WebSettings",
    "load_settings",
    "read_config",
    "redact_url",
    "resolve_config_path",
]

T = TypeVar("T")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_MXID = re.compile(r"^@[a-z0-9._=\-/+]+:[A-Za-z0-9.\-]+(:\d+)?$")
_ROOM_REF = re.compile(r"^[#!][^:\s]+(:[A-Za-z0-9.\-]+(:\d+)?)?$")


@dataclass(frozen=True)
class HubSettings:
    data_dir: Path
    timezone: ZoneInfo
    catch_up_hours: int = 12


@dataclass(frozen=True)
class DatabaseSettings:
    url: str


@dataclass(frozen=True)
class MatrixSettings:
    homeserver: str
    user_id: str
    password: str | None
    access_token: str | None
    command_prefix: str = "!hub"
    control_room: str = ""
    moderators: tuple[str, ...] = ()
    encrypt_pair_rooms: bool = True
    reset_cross_signing: bool = False

    @property
    def server_name(self) -> str:
        return self.user_id.split(":", 1)[1]


@dataclass(frozen=True)
class EmailSettings:
    enabled: bool = False
    sender: str = ""
    smtp_host: str = "localhost"
    smtp_port: int = 587
    security: str = "starttls"
    username: str = ""
    password: str = ""
    connections: int = 4
    max_per_second: float = 0
    inbound: InboundSettings | None = None  # no [email.inbound] section: no listener


@dataclass(frozen=True)
class InboundSettings:
    """`[email.inbound]`: the hub's own SMTP listener for replies and bounces."""

    host: str = "127.0.0.1"
    port: int = 2525
    domain: str = ""  # reply+<token>@domain, bounce+<token>@domain
    max_size_kb: int = 1024


@dataclass(frozen=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    secret: str = ""


@dataclass(frozen=True)
class VideoSettings:
    base_url: str = "https://meet.jit.si"


@dataclass(frozen=True)
class ContentSettings:
    path: Path | None = None


@dataclass(frozen=True, kw_only=True)
class CohortSettings(CohortProgram):
    """A `[[cohort]]` table: its program (hub.core.calendar, the one definition) and its name."""

    name: str

    @property
    def webinar(self) -> Webinar | None:
        """The table's `webinar`: a cohort's file names at most one (more are scheduled at run time)."""
        return self.webinars[0] if self.webinars else None


@dataclass(frozen=True)
class Settings:
    path: Path | None
    hub: HubSettings
    database: DatabaseSettings
    matrix: MatrixSettings
    email: EmailSettings
    web: WebSettings
    video: VideoSettings
    content: ContentSettings
    cohorts: tuple[CohortSettings, ...]
    secrets: frozenset[str] = field(default=frozenset(), repr=False)


def resolve_config_path(explicit: str | None) -> Path:
    """`-c FILE`, else `$HUB_CONFIG`, else `./config.toml` (PRODUCT.md, CLI)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("HUB_CONFIG")
    return Path(env) if env else Path("config.toml")


@dataclass(frozen=True)
class ConfigReport:
    """A config as far as it could be read: `hub check` goes on to check content and
    folders with it even when some keys are wrong, so one run shows every problem.

    `settings` is None only when the file is not readable TOML; otherwise a bad key holds
    its default there, and `bad_keys` names it (`content.path`, `hub.data_dir`, ...) so a
    check that depends on it is skipped rather than run on the default.
    """

    settings: Settings | None
    problems: list[str]
    bad_keys: frozenset[str] = frozenset()


class _Problems:
    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[str] = []
        self.keys: set[str] = set()

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{self.file}: {where}: {message}")
        self.keys.add(where)


# How a config value's TOML type reads in a message ("must be an integer, not text").
_KINDS: dict[type, str] = {
    bool: "true or false", int: "an integer", float: "a number", str: "text", list: "a list",
    dict: "a table", datetime: "a date-time", date: "a date", time: "a time of day",
}


def _kind(value_type: type) -> str:
    for t, words in _KINDS.items():  # bool before int, datetime before date: the dict's order
        if issubclass(value_type, t):
            return words
    return value_type.__name__


def _did_you_mean(word: str, known: Iterable[str]) -> str:
    # The content checker's helper, so both checkers suggest alike; imported here because
    # the library's module is heavy and only an unknown key needs it.
    from hub.core.content_library import _suggest

    return _suggest(word, known)


class _Section:
    """Reads one table, recording problems instead of raising, and flags unknown keys."""

    def __init__(
        self,
        problems: _Problems,
        name: str,
        table: Mapping[str, Any],
        env: Mapping[str, str],
        secrets: set[str],
    ) -> None:
        self.p = problems
        self.name = name
        self.table = table
        self.env = env
        self.secrets = secrets
        self.seen: set[str] = set()

    def _where(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def bad(self, key: str) -> bool:
        """True if a problem was already recorded for `key` (an unset ${VAR}, a wrong type)."""
        return self._where(key) in self.p.keys

    def _expand(self, key: str, value: str, secret: bool) -> str | None:
        missing = [m for m in _VAR.findall(value) if m not in self.env]
        for var in missing:
            self.p.add(self._where(key), f"environment variable {var} is not set")
        if missing:
            return None
        out = _VAR.sub(lambda m: self.env[m.group(1)], value)
        if secret and out:
            self.secrets.add(out)
        return out

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.table.get(key)

    def get(
        self,
        key: str,
        kind: type[T],
        default: T | None = None,
        *,
        required: bool = False,
        secret: bool = False,
    ) -> T | None:
        self.seen.add(key)
        if key not in self.table:
            if required:
                self.p.add(self._where(key), "is required")
            return default
        value = self.table[key]
        # bool is an int in Python; `weeks = true` must not pass as 1.
        if kind in (int, float) and isinstance(value, bool):
            self.p.add(self._where(key), f"must be {_kind(kind)}, not {str(value).lower()}")
            return default
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind):
            # The value itself is not repeated: it may be a secret typed in the wrong place.
            self.p.add(self._where(key), f"must be {_kind(kind)}, not {_kind(type(value))}")
            return default
        if isinstance(value, str):
            expanded = self._expand(key, value, secret)
            return default if expanded is None else expanded  # type: ignore[return-value]
        return value

    def check(self, key: str, ok: bool, message: str) -> None:
        if not ok:
            self.p.add(self._where(key), message)

    def finish(self) -> None:
        # Every key a loader asked for was recorded in `seen`: those are the known ones.
        for key in self.table:
            if key not in self.seen:
                self.p.add(self._where(key), f"unknown key{_did_you_mean(key, self.seen)}")


def _zone(sec: _Section, key: str, name: str | None, fallback: ZoneInfo) -> ZoneInfo:
    if name is None:
        return fallback
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "America" is a folder of zones
        sec.check(key, False, f"{name!r} is not a known time zone (e.g. \"Europe/Berlin\")")
        return fallback


def _url(sec: _Section, key: str, value: str | None, schemes: tuple[str, ...]) -> None:
    if value is None:
        return
    try:
        parsed = urlparse(value)
        ok = parsed.scheme in schemes and bool(parsed.netloc)
    except ValueError:  # "http://[::1" is an unclosed IPv6 address, not a crash
        ok = False
    sec.check(key, ok, f"{value!r} is not a URL starting with {' or '.join(s + '://' for s in schemes)}")


def _path(base: Path, value: str) -> Path:
    """Raises ValueError for "~someone" when there is no such user (expanduser's RuntimeError)."""
    try:
        p = Path(value).expanduser()
    except RuntimeError:
        raise ValueError(f"{value!r}: cannot expand ~ (no such user or no home folder)") from None
    return p if p.is_absolute() else (base / p)


def _sqlite_relative(url: str, base: Path) -> str:
    """`sqlite:///./x.db` is relative to the config file's folder, not the cwd."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
        return prefix + str((base / url[len(prefix) :]).resolve())
    return url


def _load_hub(s: _Section, base: Path) -> HubSettings:
    data_dir = s.get("data_dir", str, "./data") or "./data"
    tz = _zone(s, "timezone", s.get("timezone", str, "UTC"), ZoneInfo("UTC"))
    catch_up = s.get("catch_up_hours", int, 12)
    assert catch_up is not None
    s.check("catch_up_hours", catch_up >= 0, "must be 0 or more")
    try:
        folder = _path(base, data_dir)
    except ValueError as e:
        s.check("data_dir", False, str(e))
        folder = base / "data"
    s.finish()
    return HubSettings(folder, tz, catch_up)


def _load_matrix(s: _Section) -> MatrixSettings:
    homeserver = s.get("homeserver", str, required=True) or ""
    _url(s, "homeserver", homeserver or None, ("https", "http"))
    user_id = s.get("user_id", str, required=True) or ""
    if user_id:
        s.check("user_id", bool(_MXID.match(user_id)), f"{user_id!r} is not a Matrix user id")
    password = s.get("password", str, secret=True) or None
    token = s.get("access_token", str, secret=True) or None
    if s.bad("password") or s.bad("access_token"):
        pass  # already reported (an unset ${VAR}, say): "must not be empty" would only repeat it
    elif "password" in s.table or "access_token" in s.table:
        s.check("password", bool(password or token), "password or access_token must not be empty")
    else:
        s.check("password", False, "is required (or set access_token)")
    prefix = s.get("command_prefix", str, "!hub") or "!hub"
    s.check("command_prefix", " " not in prefix.strip(), "must be a single word")
    control = s.get("control_room", str, "") or ""
    if not control and user_id and ":" in user_id:
        control = f"#hub-moderators:{user_id.split(':', 1)[1]}"
    s.check("control_room", bool(_ROOM_REF.match(control)) or not control,
            f"{control!r} is not a room alias (#name:server) or room id (!id)")
    mods_raw = s.get("moderators", list, [])
    mods: list[str] = []
    for i, m in enumerate(mods_raw or []):
        if not isinstance(m, str) or not _MXID.match(m):
            s.check(f"moderators[{i}]", False, f"{m!r} is not a Matrix user id")
        else:
            mods.append(m)
    encrypt = s.get("encrypt_pair_rooms", bool, True)
    reset = s.get("reset_cross_signing", bool, False)
    if reset and not s.bad("password"):
        s.check("reset_cross_signing", bool(password), "needs matrix.password to be set")
    s.finish()
    return MatrixSettings(
        homeserver=homeserver.rstrip("/"),
        user_id=user_id,
        password=password,
        access_token=token,
        command_prefix=prefix.strip(),
        control_room=control,
        moderators=tuple(mods),
        encrypt_pair_rooms=bool(encrypt),
        reset_cross_signing=bool(reset),
    )


def _load_email(s: _Section) -> EmailSettings:
    enabled = bool(s.get("enabled", bool, False))
    sender = s.get("from", str, "", required=enabled) or ""
    if enabled and sender:
        s.check("from", is_address(split_mailbox(sender)[1]),
                f"{sender!r} is not an email address: write \"Name <hub@example.org>\" "
                "or hub@example.org (a domain with a dot, as every address the hub mails)")
    host = s.get("smtp_host", str, "localhost") or "localhost"
    port = s.get("smtp_port", int, 587) or 587
    s.check("smtp_port", 0 < port < 65536, "must be a port number 1-65535")
    security = s.get("security", str, "starttls") or "starttls"
    s.check("security", security in ("none", "starttls", "tls"), "must be none, starttls or tls")
    username = s.get("username", str, "") or ""
    password = s.get("password", str, "", secret=True) or ""
    connections = s.get("connections", int, 4) or 0
    s.check("connections", 1 <= connections <= 64, "must be between 1 and 64")
    mps = s.get("max_per_second", float, 0.0)
    s.check("max_per_second", (mps or 0) >= 0, "must be 0 (no cap) or more")
    raw_inbound = s.raw("inbound")
    inbound: InboundSettings | None = None
    if raw_inbound is not None:
        if not isinstance(raw_inbound, dict):
            s.check("inbound", False, "must be a table ([email.inbound])")
        else:
            inbound = _load_inbound(_Section(s.p, f"{s.name}.inbound", raw_inbound, s.env, s.secrets))
            s.check("inbound", enabled or inbound is None,
                    "needs [email] enabled = true: replies come to mail the hub sends")
    s.finish()
    return EmailSettings(
        enabled, sender, host, port, security, username, password, connections, mps or 0.0, inbound
    )


_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]")


def _load_inbound(s: _Section) -> InboundSettings:
    listen = s.get("listen", str, "127.0.0.1:2525") or "127.0.0.1:2525"
    host, _, port_text = listen.rpartition(":")
    port = int(port_text) if port_text.isascii() and port_text.isdigit() else -1
    s.check("listen", bool(host) and 0 <= port < 65536,
            f"{listen!r} is not HOST:PORT (e.g. \"127.0.0.1:2525\")")
    domain = (s.get("domain", str, "", required=True) or "").strip().lower()
    if domain:
        s.check("domain", bool(_DOMAIN.fullmatch(domain)),
                f"{domain!r} is not a domain name: reply addresses are reply+TOKEN@domain, "
                "so it must be a host name your MX record points at (e.g. \"hub.example.org\")")
    size = s.get("max_size_kb", int, 1024)
    s.check("max_size_kb", size is not None and 16 <= size <= 100 * 1024,
            "must be between 16 and 102400 (KiB)")
    s.finish()
    return InboundSettings(host.strip("[]"), max(port, 0), domain, size or 1024)


def _load_web(s: _Section) -> WebSettings:
    listen = s.get("listen", str, "127.0.0.1:8080") or "127.0.0.1:8080"
    host, _, port_text = listen.rpartition(":")
    # isascii: "²".isdigit() is True but int("²") raises
    port = int(port_text) if port_text.isascii() and port_text.isdigit() else -1
    s.check("listen", bool(host) and 0 <= port < 65536, f"{listen!r} is not HOST:PORT")
    public = s.get("public_url", str, f"http://{listen}") or f"http://{listen}"
    _url(s, "public_url", public, ("https", "http"))
    secret = s.get("secret", str, "", secret=True) or ""
    s.finish()
    return WebSettings(host.strip("[]"), max(port, 0), public.rstrip("/"), secret)


def _weeks(s: _Section, key: str, default: list[int], total: int) -> tuple[int, ...]:
    # The defaults are for a 12-week cohort: a shorter one keeps those that fit rather than
    # failing `hub check` over weeks nobody wrote. Explicit weeks out of range stay errors.
    raw = s.get(key, list, [w for w in default if w <= total]) or []
    out: list[int] = []
    for w in raw:
        if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= total:
            s.check(key, False, f"{w!r} is not a week number between 1 and {total}")
        else:
            out.append(w)
    return tuple(sorted(set(out)))


def _slot(s: _Section, key: str, default: str) -> WeeklySlot:
    text = s.get(key, str, default) or default
    try:
        return parse_weekly_slot(text)
    except ValueError as e:
        s.check(key, False, str(e))
        return parse_weekly_slot(default)


def _load_cohort(s: _Section, default_tz: ZoneInfo) -> CohortSettings | None:
    slug = s.get("slug", str, required=True) or ""
    if slug:
        s.check("slug", bool(_SLUG.match(slug)), f"{slug!r} must be lowercase letters, digits, -")
    name = s.get("name", str, slug) or ""
    if "name" in s.table and isinstance(s.table["name"], str):
        # The same check as `!hub cohort create` and the roster (hub.core.names).
        problem = name_problem(name)
        s.check("name", problem is None, problem or "")
    name = name.strip() or slug
    tz = _zone(s, "timezone", s.get("timezone", str), default_tz)
    start_raw = s.raw("start")
    start: date | None = None
    if isinstance(start_raw, date) and not isinstance(start_raw, datetime):
        start = start_raw
    elif isinstance(start_raw, str):
        try:
            start = date.fromisoformat(start_raw)
        except ValueError:
            s.check("start", False, f"{start_raw!r} is not a date YYYY-MM-DD")
    elif start_raw is not None:
        s.check("start", False, "must be a date YYYY-MM-DD")
    weeks = s.get("weeks", int, 12) or 12
    s.check("weeks", 1 <= weeks <= 104, "must be between 1 and 104")
    webinar = None
    w = s.raw("webinar")
    if w is not None:
        webinar = _load_webinar(s, w, tz)
    cohort = CohortSettings(
        slug=slug,
        name=name,
        timezone=tz,
        start=start,
        weeks=weeks,
        digest=_slot(s, "digest", "mon 09:00"),
        icebreaker=_slot(s, "icebreaker", "tue 10:00"),
        checkin=_slot(s, "checkin", "fri 15:00"),
        checkin_weeks=_weeks(s, "checkin_weeks", [1, 2, 4, 8], weeks),
        reflection=_slot(s, "reflection", "wed 10:00"),
        reflection_weeks=_weeks(s, "reflection_weeks", [3, 6, 9], weeks),
        webinars=(webinar,) if webinar is not None else (),
    )
    s.finish()
    return cohort if slug else None


def _load_webinar(parent: _Section, raw: Any, tz: ZoneInfo) -> Webinar | None:
    if not isinstance(raw, dict):
        parent.check("webinar", False, "must be a table { at = ..., title = ..., url = ... }")
        return None
    s = _Section(parent.p, parent._where("webinar"), raw, parent.env, parent.secrets)
    at_raw = s.raw("at")
    at: datetime | None = None
    if isinstance(at_raw, datetime):
        at = at_raw if at_raw.tzinfo else at_raw.replace(tzinfo=tz)
    elif isinstance(at_raw, str):
        try:
            parsed = datetime.fromisoformat(at_raw)
            at = parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)
        except ValueError:
            s.check("at", False, f"{at_raw!r} is not a date-time YYYY-MM-DDTHH:MM")
    else:
        s.check("at", False, "is required (YYYY-MM-DDTHH:MM)")
    title = s.get("title", str, "Webinar") or "Webinar"
    url = s.get("url", str)
    _url(s, "url", url, ("https", "http"))
    s.finish()
    return Webinar(at, title, url) if at else None


def load_settings(path: Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate `path`; raise ConfigError listing every problem."""
    report = read_config(path, env)
    if report.problems or report.settings is None:
        raise ConfigError(report.problems)
    return report.settings


def read_config(path: Path, env: Mapping[str, str] | None = None) -> ConfigReport:
    """Read and validate `path`: the settings as far as they go, and every problem."""
    env = os.environ if env is None else env
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        return ConfigReport(None, [f"{file}: cannot read config: {e.strerror or e}"])
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        return ConfigReport(None, [f"{file}: not valid TOML: not UTF-8 text (at line {line})"])
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return ConfigReport(None, [f"{file}: not valid TOML: {e}"])
    except RecursionError:  # tomllib recurses once per "[" of a nested array
        return ConfigReport(None, [f"{file}: not valid TOML: arrays or tables nested too deeply"])
    return _read(data, base=path.resolve().parent, file=file, env=env, path=path)


def settings_from_dict(
    data: Mapping[str, Any],
    *,
    base: Path,
    file: str = "<config>",
    env: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> Settings:
    report = _read(data, base=base, file=file, env=os.environ if env is None else env, path=path)
    if report.problems or report.settings is None:
        raise ConfigError(report.problems)
    return report.settings


def _read(
    data: Mapping[str, Any], *, base: Path, file: str, env: Mapping[str, str], path: Path | None
) -> ConfigReport:
    problems = _Problems(file)
    secrets: set[str] = set()

    def section(name: str) -> _Section:
        table = data.get(name, {})
        if not isinstance(table, dict):
            problems.add(name, "must be a table")
            table = {}
        return _Section(problems, name, table, env, secrets)

    known = ("hub", "database", "matrix", "email", "web", "video", "content", "cohort")
    for key in data:
        if key not in known:
            what = "unknown section" if isinstance(data[key], dict) else "unknown key"
            problems.add(key, f"{what}{_did_you_mean(key, known)}")

    hub = _load_hub(section("hub"), base)
    db = section("database")
    url = db.get("url", str, secret=False) or f"sqlite:///{hub.data_dir / 'hub.db'}"
    db.check(
        "url",
        url.startswith(("sqlite:///", "postgresql://", "postgres://", "postgresql+asyncpg://")),
        f"{redact_url(url)!r} must start with sqlite:/// or postgresql://",
    )
    try:
        pw = urlparse(url).password if "://" in url else None
    except ValueError:  # an unclosed "[" in the host part
        pw = None
        db.check("url", False, f"{redact_url(url)!r} is not a valid URL")
    if pw:
        secrets.add(pw)
    db.finish()
    matrix = _load_matrix(section("matrix"))
    email = _load_email(section("email"))
    web = _load_web(section("web"))
    vid = section("video")
    video_url = vid.get("base_url", str, "https://meet.jit.si") or "https://meet.jit.si"
    _url(vid, "base_url", video_url, ("https", "http"))
    vid.finish()
    cs = section("content")
    content_path = cs.get("path", str)
    content_dir: Path | None = None
    if content_path:
        try:
            content_dir = _path(base, content_path)
        except ValueError as e:
            cs.check("path", False, str(e))
    cs.finish()

    cohorts: list[CohortSettings] = []
    raw_cohorts = data.get("cohort", [])
    if not isinstance(raw_cohorts, list):
        problems.add("cohort", "must be an array of tables ([[cohort]])")
        raw_cohorts = []
    for i, table in enumerate(raw_cohorts):
        if not isinstance(table, dict):
            problems.add(f"cohort[{i}]", "must be a table")
            continue
        c = _load_cohort(_Section(problems, f"cohort[{i}]", table, env, secrets), hub.timezone)
        if c is not None:
            if any(other.slug == c.slug for other in cohorts):
                problems.add(f"cohort[{i}].slug", f"{c.slug!r} is used by another cohort")
            cohorts.append(c)

    settings = Settings(
        path=path,
        hub=hub,
        database=DatabaseSettings(_sqlite_relative(url, base)),
        matrix=matrix,
        email=email,
        web=web,
        video=VideoSettings(video_url.rstrip("/")),
        content=ContentSettings(content_dir),
        cohorts=tuple(cohorts),
        secrets=frozenset(s for s in secrets if len(s) >= 4),
    )
    return ConfigReport(settings, problems.items, frozenset(problems.keys))


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, for messages that print it."""
    try:
        password = urlparse(url).password
    except ValueError:
        # Unparseable (an unclosed "[" in the host): hide whatever sits between "://" and "@".
        return re.sub(r"(://)[^/]*@", r"\1***@", url)
    if password:
        return url.replace(password, "***")
    return url

