"""The `hub` command. Exit status: 0 success, 1 failure with a message, 2 usage error."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from hub import __version__
from hub.config import Settings, load_settings, read_config, resolve_config_path
from hub.errors import ConfigError, HubError
from hub.logs import add_secrets, configure_logging, secret_filter

__all__ = ["main"]

log = logging.getLogger("hub")


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="config file (default: $HUB_CONFIG, else ./config.toml)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hub", description="Cohort Hub: virtual mentoring on Matrix and email.")
    p.add_argument("--version", action="version", version=f"cohort-hub {__version__}")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the service")
    _config_option(run)
    run.add_argument("--new-session", action="store_true",
                     help="forget the saved Matrix session and log in again with the password")

    worker = sub.add_parser("worker", help="an extra email worker beside `hub run`, on this machine or "
                                           "another (PostgreSQL only): renders and sends outbox email")
    _config_option(worker)

    check = sub.add_parser("check", help="validate config and content; test the homeserver and SMTP")
    _config_option(check)
    check.add_argument("--offline", action="store_true", help="do not contact the homeserver or SMTP")

    roster = sub.add_parser("roster", help="participants and pairs from a CSV")
    roster_sub = roster.add_subparsers(dest="roster_command", metavar="COMMAND")
    imp = roster_sub.add_parser("import", help="add participants and pairs from a CSV (idempotent)")
    imp.add_argument("file", metavar="FILE.csv")
    _config_option(imp)
    imp.add_argument("--dry-run", action="store_true", help="check and report; change nothing")

    content = sub.add_parser("content", help="the content library")
    content_sub = content.add_subparsers(dest="content_command", metavar="COMMAND")
    lint = content_sub.add_parser("check", help="lint a content library: front matter, variables, rendering")
    lint.add_argument("dir", nargs="?", metavar="DIR",
                      help="library folder (default: content.path from the config if one is found, "
                           "else the library shipped with the hub)")
    _config_option(lint)
    copy = content_sub.add_parser("copy", help="copy the library shipped with the hub into DIR, to edit")
    copy.add_argument("dir", metavar="DIR", help="a new or empty folder, e.g. ./content")

    digest = sub.add_parser("digest", help="the weekly digest")
    digest_sub = digest.add_subparsers(dest="digest_command", metavar="COMMAND")
    dp = digest_sub.add_parser("preview", help="render a digest without sending (prints the text version)")
    dp.add_argument("--cohort", required=True, metavar="SLUG")
    dp.add_argument("--week", type=int, metavar="N", help="program week (default: this week)")
    dp.add_argument("--for", dest="who", metavar="ADDRESS_OR_MXID",
                    help="one person's email version (default: the lounge version)")
    dp.add_argument("--out", metavar="FILE.html", help="also write the HTML here")
    _config_option(dp)

    match = sub.add_parser("match", help="propose pairs for a cohort's unpaired mentees (changes nothing)")
    match.add_argument("--cohort", required=True, metavar="SLUG")
    _config_option(match)
    match.add_argument("--out", metavar="FILE.csv",
                       help="also write the proposed pairs as a roster CSV, to edit and `hub roster import`")

    demo = sub.add_parser("demo", help="try it: a throwaway homeserver and mail sink, a sample cohort, "
                                       "a compressed program (needs the demo extra)")
    demo.add_argument("--out", default="demo-out", metavar="DIR",
                      help="where the emails, config and roster go (default: ./demo-out)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the homeserver and hub running to look around, until Ctrl-C")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    configure_logging(args.log_level)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "worker":
            return _worker(args)
        if args.command == "check":
            return asyncio.run(_check(args))
        if args.command == "roster" and args.roster_command == "import":
            return asyncio.run(_roster_import(args))
        if args.command == "content" and args.content_command == "check":
            return _content_check(args)
        if args.command == "content" and args.content_command == "copy":
            return _content_copy(args)
        if args.command == "digest" and args.digest_command == "preview":
            return _digest_preview(args)
        if args.command == "match":
            return asyncio.run(_match(args))
        if args.command == "demo":
            from pathlib import Path

            from hub.demo import main as demo_main

            return demo_main(Path(args.out), keep=args.keep)
    except ConfigError as e:
        for problem in e.problems:
            print(secret_filter.redact(problem), file=sys.stderr)
        return 1
    except HubError as e:
        print(f"hub: {secret_filter.redact(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    parser.print_help()
    return 2


def _load(config: str | None) -> Settings:
    path = resolve_config_path(config)
    settings = load_settings(path)
    add_secrets(settings.secrets)
    return settings


def _run(args: argparse.Namespace) -> int:
    from hub.checks import local_problems

    settings = _load(args.config)
    # A data folder the hub cannot use would otherwise fail deep in the start (the crypto
    # store, the database) with an error that does not name the key to fix.
    if local := local_problems(settings):
        for problem in local:
            print(secret_filter.redact(problem), file=sys.stderr)
        return 1

    async def go() -> None:
        from hub.service import Hub

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        hub = Hub(settings)
        if args.new_session:
            from hub.matrix.session import MatrixSession
            from hub.storage.db import open_database

            db = await open_database(settings.database.url)
            await MatrixSession(settings.matrix, db, settings.hub.data_dir).forget()
            await db.close()
        await hub.run(stop)
        log.info("stopped cleanly")

    asyncio.run(go())
    return 0


# A worker never logs in to Matrix: the config `hub run` uses is fine without its Matrix secret.
_WORKER_NEEDS_NOT = frozenset({"matrix.password", "matrix.access_token"})


def _worker(args: argparse.Namespace) -> int:
    from hub.worker import Worker, check_worker_settings

    path = resolve_config_path(args.config)
    report = read_config(path)
    if report.settings is None or not report.bad_keys <= _WORKER_NEEDS_NOT:
        raise ConfigError(report.problems)
    settings = report.settings
    add_secrets(settings.secrets)
    check_worker_settings(settings)  # before anything is opened: SQLite, email off

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Worker(settings).run(stop)
        log.info("stopped cleanly")

    asyncio.run(go())
    return 0


async def _check(args: argparse.Namespace) -> int:
    from hub.checks import run_checks

    path = resolve_config_path(args.config)
    config = read_config(path)
    problems = list(config.problems)
    notes: list[str] = []
    if config.settings is not None:
        add_secrets(config.settings.secrets)
        # A config with problems still names its content and folders: check those too, so
        # one run lists everything. The homeserver and SMTP wait for a config without problems.
        await run_checks(config.settings, offline=args.offline or bool(problems), problems=problems,
                         notes=notes, bad_keys=config.bad_keys)
    for note in notes:
        print(secret_filter.redact(note))
    for problem in problems:
        print(secret_filter.redact(problem), file=sys.stderr)
    if config.problems and not args.offline:
        print(f"{path}: the homeserver and SMTP server were not contacted: fix the config first",
              file=sys.stderr)
    if problems:
        return 1
    print(f"{path}: OK")
    return 0


async def _roster_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hub.errors import RosterError
    from hub.features.roster import import_file

    settings = _load(args.config)
    try:
        report = await import_file(settings, Path(args.file), dry_run=args.dry_run)
    except RosterError as e:
        print(f"{args.file}: nothing was imported:", file=sys.stderr)
        for problem in e.problems:
            print(f"{args.file}: {secret_filter.redact(problem)}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def _digest_preview(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hub.features.digest_commands import preview

    result = asyncio.run(preview(_load(args.config), args.cohort, week=args.week, who=args.who))
    print(f"Subject: {result.subject}\n\n{result.text}")
    if args.out:
        Path(args.out).write_text(result.html, encoding="utf-8")
        print(f"HTML written to {args.out}", file=sys.stderr)
    return 0


async def _match(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hub.features.match_cli import proposal_csv, propose_for_cli

    result = await propose_for_cli(_load(args.config), args.cohort)
    print(result.text())
    if args.out:
        try:
            Path(args.out).write_text(proposal_csv(result), encoding="utf-8")  # noqa: ASYNC240
        except OSError as e:
            print(f"hub: {args.out}: cannot write: {e.strerror or e}", file=sys.stderr)
            return 1
        print(f"Roster CSV with {len(result.proposal.pairs)} proposed pairs written to {args.out}; "
              f"edit it and run `hub roster import {args.out}` to make them.", file=sys.stderr)
    return 0


def _content_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hub.core.content_library import check_library, default_library_path

    if args.dir:
        folder = Path(args.dir)
    else:
        config = resolve_config_path(args.config)
        found = args.config is not None or config.is_file()
        folder = (_load(args.config).content.path if found else None) or default_library_path()
    report = check_library(folder)
    for problem in report.problems:
        print(problem, file=sys.stderr)
    print(report.summary(), file=sys.stderr if report.problems else sys.stdout)
    return 0 if report.ok else 1


def _content_copy(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hub.core.content_library import copy_library

    count = copy_library(Path(args.dir))
    print(f"Copied the shipped content library ({count} items) to {args.dir}. Point the config at it "
          f"with [content] path = \"{args.dir}\", then check your edits with `hub content check {args.dir}`.")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
