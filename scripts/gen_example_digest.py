#!/usr/bin/env python3
"""Regenerate docs/example-digest.html (and, with Chromium installed, docs/example-digest.png).

Runs `hub demo` into a temporary folder (or reads an earlier run's folder with
--from DIR), takes a pair member's first weekly digest email (see `find_digest`)
and copies its HTML part, unchanged, to docs/. Never edit the copy by hand: rerun this script.

    python scripts/gen_example_digest.py [--from DEMO_OUT_DIR]
    python scripts/gen_example_digest.py --png-only   # just re-render docs/example-digest.png
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import shutil
import subprocess
import sys
import tempfile
from email.message import EmailMessage
from pathlib import Path

__all__ = ["find_digest", "main"]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


# A digest with every section a participant gets: a pair member's (the "Your pair" section)
# who reads Matrix too (the footer's "message the hub"). The demo mails its digests in no
# fixed order, and the first one is often a moderator's, which has no pair section.
_WANTED = (">Your pair</h2>", ">message the hub</a>")


def find_digest(mail_dir: Path) -> str | None:
    """The HTML of the first week's digest that shows most of what a participant sees.

    Among the demo's digest emails (by subject) of the earliest week, the first (by file
    name) that has every part of `_WANTED`, else the one with the most of them.
    """
    parser = email.parser.BytesParser(policy=email.policy.default)
    found: list[tuple[str, str]] = []  # (subject, html) in file order
    for eml in sorted(mail_dir.glob("*.eml")):
        message = parser.parsebytes(eml.read_bytes())
        assert isinstance(message, EmailMessage)
        subject = str(message.get("Subject", ""))
        if "digest" not in subject.lower():
            continue
        part = message.get_body(preferencelist=("html",))
        if part is not None:
            content = part.get_content()
            if isinstance(content, str):
                found.append((subject, content.replace("\r\n", "\n")))
    if not found:
        return None
    first_week = [html for subject, html in found if subject == found[0][0]]
    return max(first_week, key=lambda html: sum(marker in html for marker in _WANTED))


def screenshot(html: Path, png: Path, *, width: int = 700, height: int = 1060) -> bool:
    """Render with headless Chromium (Debian package `chromium`), if it is installed.

    Not a test: CI machines have no Chromium. The flags make it work as root in a
    container (no sandbox), offline and without touching the user's profile.
    """
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("no Chromium found: skipping the PNG (apt-get install chromium)", file=sys.stderr)
        return False
    with tempfile.TemporaryDirectory(prefix="hub-chromium-") as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
                        f"--screenshot={png}", f"--window-size={width},{height}", html.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    return png.exists()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="an earlier `hub demo --out` folder")
    parser.add_argument("--png-only", action="store_true",
                        help="only render the existing docs/example-digest.html to PNG (needs Chromium)")
    parser.add_argument("--height", type=int, default=1060,
                        help="screenshot height in pixels (a pair member's digest: ~1,040 px at 700 px wide)")
    args = parser.parse_args(argv)
    target = DOCS / "example-digest.html"
    if args.png_only:
        if not screenshot(target, DOCS / "example-digest.png", height=args.height):
            return 1
        print(f"wrote {DOCS / 'example-digest.png'}")
        return 0
    with tempfile.TemporaryDirectory(prefix="hub-digest-") as tmp:
        source: Path = args.source or Path(tmp) / "demo"
        if args.source is None:
            subprocess.run([sys.executable, "-m", "hub", "demo", "--out", str(source)], check=True)
        html = find_digest(source / "mail")
    if html is None:
        print("the demo sent no digest email (is the digest available in this build?)", file=sys.stderr)
        return 1
    target.write_text(html, encoding="utf-8")
    print(f"wrote {target}")
    if screenshot(target, DOCS / "example-digest.png", height=args.height):
        print(f"wrote {DOCS / 'example-digest.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
