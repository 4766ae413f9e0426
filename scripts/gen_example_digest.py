#!/usr/bin/env python3
"""Regenerate docs/example-digest.html (and, with Chromium installed, docs/example-digest.png).

Runs `hub demo` into a temporary folder (or reads an earlier run's folder with
--from DIR), takes the first weekly digest email it sent and copies its HTML
part, unchanged, to docs/. Never edit the copy by hand: rerun this script.

    python scripts/gen_example_digest.py [--from DEMO_OUT_DIR]
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


def find_digest(mail_dir: Path) -> str | None:
    """The HTML of the first digest email in a demo's mail folder (by its List-Id and subject)."""
    parser = email.parser.BytesParser(policy=email.policy.default)
    for eml in sorted(mail_dir.glob("*.eml")):
        message = parser.parsebytes(eml.read_bytes())
        assert isinstance(message, EmailMessage)
        if "digest" not in str(message.get("Subject", "")).lower():
            continue
        part = message.get_body(preferencelist=("html",))
        if part is not None:
            content = part.get_content()
            if isinstance(content, str):
                return content.replace("\r\n", "\n")
    return None


def screenshot(html: Path, png: Path) -> bool:
    """Render with headless Chromium (Debian package `chromium`), if it is installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("no Chromium found: skipping the PNG (apt-get install chromium)", file=sys.stderr)
        return False
    subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                    f"--screenshot={png}", "--window-size=720,1400", html.as_uri()],
                   check=True, capture_output=True, timeout=120)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="an earlier `hub demo --out` folder")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hub-digest-") as tmp:
        source: Path = args.source or Path(tmp) / "demo"
        if args.source is None:
            subprocess.run([sys.executable, "-m", "hub", "demo", "--out", str(source)], check=True)
        html = find_digest(source / "mail")
    if html is None:
        print("the demo sent no digest email (is the digest available in this build?)", file=sys.stderr)
        return 1
    target = DOCS / "example-digest.html"
    target.write_text(html, encoding="utf-8")
    print(f"wrote {target}")
    if screenshot(target, DOCS / "example-digest.png"):
        print(f"wrote {DOCS / 'example-digest.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
