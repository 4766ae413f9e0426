"""`hub demo` end to end, as a newcomer runs it: a subprocess, real Synapse, real SMTP sink.

Checks the README's promise: exit 0, a summary, and every email it lists exists
and parses. It takes about a minute, most of it the compressed program.
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.synapse, pytest.mark.slow]


def test_demo_runs_and_its_emails_parse(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "hub", "demo", "--out", str(out)],
                          capture_output=True, text=True, timeout=240, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    text = proc.stdout
    assert "What happened" in text and "homeserver  http://127.0.0.1:" in text
    assert "incomplete" not in text and "\n  ! " not in text, text

    listed = [Path(line.strip()) for line in text.splitlines() if line.strip().endswith(".eml")]
    assert listed, text
    parser = email.parser.BytesParser(policy=email.policy.default)
    for path in listed:
        assert path.is_file(), path
        message = parser.parsebytes(path.read_bytes())
        assert message["Subject"] and message["To"] and message["Message-ID"], path
        assert message.get_body(preferencelist=("plain",)) is not None, path

    mails = sorted((out / "mail").glob("*.eml"))
    count = re.search(r"- (\d+) emails", text)
    assert count is not None and int(count.group(1)) == len(mails) > 0
    for path in mails:
        parser.parsebytes(path.read_bytes())
    # The summary's "digest:" line is honest either way; when it says sent, a digest email exists.
    if "digest: sent" in text:
        assert any("digest" in p.name for p in mails)
    assert (out / "config.toml").is_file() and (out / "roster.csv").is_file()
