"""`hub check`: everything an operator should know before `hub run`, one line per problem."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

import aiosmtplib

from hub.clock import SystemClock
from hub.config import Settings, redact_url
from hub.errors import HubError, UnreachableError

__all__ = ["folder_problem", "local_problems", "run_checks"]

log = logging.getLogger(__name__)


async def run_checks(
    settings: Settings,
    *,
    offline: bool,
    problems: list[str],
    notes: list[str],
    bad_keys: frozenset[str] = frozenset(),
) -> None:
    """Add every problem found to `problems`. `bad_keys` (from a config with problems) are
    not checked further: a check run on a default the operator did not choose would mislead."""
    where = str(settings.path or "config")
    local = local_problems(settings, bad_keys)
    problems.extend(local)
    if "content.path" in bad_keys:
        pass  # its own problem is reported; the shipped library is not what was asked for
    elif settings.content.path is not None and not settings.content.path.is_dir():
        problems.append(f"{where}: content.path: {settings.content.path} is not a folder")
    else:
        _check_content(settings, problems, notes)
    if offline:
        return
    # The database and the crypto store live in those folders: with one unusable, opening
    # the database or the Matrix session would fail and blame the wrong thing.
    if not local:
        await _check_database(settings, where, problems, notes)
        await _check_matrix(settings, where, problems, notes)
    if settings.email.enabled:
        await _check_smtp(settings, where, problems, notes)


def local_problems(settings: Settings, bad_keys: frozenset[str] = frozenset()) -> list[str]:
    """`hub.data_dir` and the SQLite database's folder: usable folders, or ones the hub can create.

    `hub run` checks these before it starts too, so a wrong path is named by its key
    instead of surfacing as an error about the crypto store or the homeserver.
    """
    from hub.storage.db import _sqlite_file

    where = str(settings.path or "config")
    out: list[str] = []
    data_dir = settings.hub.data_dir
    if "hub.data_dir" not in bad_keys and (problem := folder_problem(data_dir)):
        out.append(f"{where}: hub.data_dir: {problem}")
    db_file = _sqlite_file(settings.database.url)
    if db_file is not None and "database.url" not in bad_keys:
        folder = db_file.parent
        if out and _inside(folder, data_dir):
            return out  # the same cause, already named
        problem = folder_problem(folder)
        if problem is None and db_file.exists():
            problem = _file_problem(db_file)
        if problem:
            out.append(f"{where}: database.url: {problem}")
    return out


def folder_problem(path: Path) -> str | None:
    """Why the hub could not keep files in `path` (creating it if missing), or None.

    Writability is tried, not inferred from mode bits: root passes every permission
    check, yet cannot create a folder in /proc or on a read-only mount. The try is a
    temporary folder, removed at once.
    """
    try:
        if path.exists():
            return _cannot_write(path) if path.is_dir() else f"{path} is a file, not a folder"
        parent = path.parent
        while not parent.exists():
            parent = parent.parent
    except OSError as e:
        return f"cannot look at {path}: {e.strerror or e}"
    if not parent.is_dir():
        return f"cannot create {path}: {parent} is a file, not a folder"
    cause = _cannot_write(parent)
    return f"cannot create {path}: {cause}" if cause else None


def _cannot_write(folder: Path) -> str | None:
    try:
        tempfile.TemporaryDirectory(dir=folder, prefix=".hub-check-").cleanup()
    except OSError as e:
        return f"cannot write in {folder} ({e.strerror or e})"
    return None


def _file_problem(file: Path) -> str | None:
    if not file.is_file():
        return f"{file} is not a file"
    try:
        with file.open("r+b"):  # opened for writing, nothing written
            return None
    except OSError as e:
        return f"cannot write {file} ({e.strerror or e})"


def _inside(path: Path, folder: Path) -> bool:
    with contextlib.suppress(ValueError):
        path.resolve().relative_to(folder.resolve())
        return True
    return False


def _check_content(settings: Settings, problems: list[str], notes: list[str]) -> None:
    """The same lint as `hub content check`, on the library `hub run` would load."""
    from hub.core.content_library import check_library, default_library_path

    try:
        folder = settings.content.path or default_library_path()
    except HubError as e:
        problems.append(f"content: {e}")
        return
    report = check_library(folder, command_prefix=settings.matrix.command_prefix)
    problems.extend(str(p) for p in report.problems)
    if report.ok:
        notes.append(f"content: {report.summary()}")


async def _check_database(settings: Settings, where: str, problems: list[str], notes: list[str]) -> None:
    from hub.storage.db import open_database

    try:
        db = await open_database(settings.database.url)
    except HubError as e:
        problems.append(f"{where}: database.url: {e}")
        return
    except Exception as e:
        problems.append(f"{where}: database.url: cannot open {redact_url(settings.database.url)}: {e}")
        return
    try:
        notes.append(f"database: OK (schema {await db.revision()})")
    finally:
        await db.close()


async def _check_matrix(settings: Settings, where: str, problems: list[str], notes: list[str]) -> None:
    from hub.matrix.crosssign import CrossSigningStatus, check_cross_signing
    from hub.matrix.session import MatrixSession
    from hub.storage.db import open_database

    try:
        db = await open_database(settings.database.url)
    except Exception:
        return  # already reported by the database check
    session = MatrixSession(settings.matrix, db, settings.hub.data_dir)
    try:
        client = await session.open()  # no waiting here: a check answers at once
        notes.append(f"matrix: logged in as {client.user_id}, device {client.device_id}")
        report = await check_cross_signing(
            settings.matrix.homeserver, client.access_token, client.user_id, client.device_id,
            settings.hub.data_dir / "cross-signing.json",
        )
        if report.status is CrossSigningStatus.SIGNED:
            notes.append(f"matrix: device cross-signed: yes ({report.message})")
        elif report.status is CrossSigningStatus.FOREIGN_IDENTITY:
            problems.append(f"{where}: matrix: {report.message}")
        else:
            notes.append(f"matrix: device cross-signed: no ({report.message}); `hub run` will do it")
    except UnreachableError as e:
        problems.append(f"{where}: matrix.homeserver: {e}")
    except HubError as e:
        problems.append(f"{where}: matrix: {e}")
    except Exception as e:  # not the homeserver's fault as far as we know: say what it was
        problems.append(f"{where}: matrix: {e.__class__.__name__}: {e}")
    finally:
        await session.close()
        await db.close()


async def _check_smtp(settings: Settings, where: str, problems: list[str], notes: list[str]) -> None:
    """The greeting `hub run` starts with (connect, EHLO, STARTTLS, AUTH), once."""
    from hub.email.pool import SmtpPool

    e = settings.email
    pool = SmtpPool(e, SystemClock(), timeout=15)
    try:
        await pool.greet()
        notes.append(f"smtp: OK ({pool.url}, {e.security})")
    except UnreachableError as exc:
        problems.append(f"{where}: email.smtp_host: {exc}")
    except aiosmtplib.SMTPAuthenticationError as exc:
        problems.append(f"{where}: email.username: {pool.url} refused the login: {exc.code} {exc.message}")
    except aiosmtplib.SMTPException as exc:
        problems.append(f"{where}: email.smtp_host: {pool.url}: {exc}")
    finally:
        await pool.close()
