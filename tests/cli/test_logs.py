"""Secrets never reach log output, whatever path they take into a log call."""

from __future__ import annotations

import io
import logging

from hub.logs import SecretFilter


def test_secret_filter_redacts_message_args_and_tracebacks() -> None:
    f = SecretFilter()
    f.add(["hunter2-password", "syt_token_abcdef", "x"])  # too-short secrets are ignored
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(f)
    logger = logging.getLogger("test.secrets")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("login with %s failed", "hunter2-password")
        logger.warning("url http://hs/?access_token=syt_token_abcdef")
        try:
            raise RuntimeError("token syt_token_abcdef rejected")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "hunter2-password" not in out and "syt_token_abcdef" not in out
    assert out.count("***") >= 3
    assert "http://hs/" in out  # the rest of the text is untouched
