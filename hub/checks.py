"""`hub check`: everything an operator should know before `hub run`, one line per problem."""

from __future__ import annotations

import logging
import ssl

import aiosmtplib

from hub.config import Settings, redact_url
from hub.errors import HubError

__all__ = ["run_checks"]

log = logging.getLogger(__name__)


async def run_checks(settings: Settings, *, offline: bool, problems: list[str], notes: list[str]) -> None:
    where = str(settings.path or "config")
    if settings.content.path is not None and not settings.content.path.is_dir():
        problems.append(f"{where}: content.path: {settings.content.path} is not a folder")
    else:
        _check_content(settings, problems, notes)
    if offline:
        return
    await _check_database(settings, where, problems, notes)
    await _check_matrix(settings, where, problems, notes)
    if settings.email.enabled:
        await _check_smtp(settings, where, problems, notes)


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
    notes.append(f"database: OK (schema {await db.revision()})")
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
        client = await session.open()
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
    except HubError as e:
        problems.append(f"{where}: matrix: {e}")
    except Exception as e:
        problems.append(f"{where}: matrix.homeserver: cannot reach {settings.matrix.homeserver}: {e}")
    finally:
        await session.close()
        await db.close()


async def _check_smtp(settings: Settings, where: str, problems: list[str], notes: list[str]) -> None:
    e = settings.email
    smtp = aiosmtplib.SMTP(
        hostname=e.smtp_host, port=e.smtp_port, use_tls=e.security == "tls",
        start_tls=e.security == "starttls", timeout=15, tls_context=ssl.create_default_context(),
    )
    try:
        await smtp.connect()
        if e.username:
            await smtp.login(e.username, e.password)
        notes.append(f"smtp: OK ({e.smtp_host}:{e.smtp_port}, {e.security})")
        await smtp.quit()
    except (aiosmtplib.SMTPException, OSError) as exc:
        problems.append(f"{where}: email.smtp_host: {e.smtp_host}:{e.smtp_port}: {exc}")
