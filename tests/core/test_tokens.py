"""Signed unsubscribe / confirm-address tokens: only the genuine article verifies."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.core.tokens import (
    MAX_TOKEN_LENGTH,
    Purpose,
    TokenSigner,
    list_unsubscribe_headers,
    new_handle,
    unsubscribe_url,
)
from hub.errors import HubError, LinkTokenError

SECRET = "correct horse battery staple"
NOW = datetime(2027, 1, 25, 8, 0, tzinfo=UTC)
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

signer = TokenSigner(SECRET)


def _unpadded(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _decode(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def test_round_trip_carries_handle_purpose_and_time() -> None:
    handle = new_handle()
    for purpose in Purpose:
        token = signer.sign(handle, purpose, issued_at=NOW)
        claims = signer.verify(token, purpose)
        assert (claims.handle, claims.purpose, claims.issued_at) == (handle, purpose, NOW)
        assert set(token) <= set(B64URL) and "=" not in token  # safe in a URL path as is
        assert len(token) <= MAX_TOKEN_LENGTH


def test_signing_is_deterministic_for_the_same_inputs() -> None:
    # The same digest rendered twice must produce the same links.
    assert signer.sign("abc", Purpose.UNSUBSCRIBE, issued_at=NOW) == signer.sign(
        "abc", Purpose.UNSUBSCRIBE, issued_at=NOW
    )


def test_handles_are_random_and_opaque() -> None:
    handles = {new_handle() for _ in range(100)}
    assert len(handles) == 100
    assert all(len(h) >= 20 and not h.isdigit() for h in handles)


def test_every_single_character_substitution_is_rejected() -> None:
    token = signer.sign(new_handle(), Purpose.UNSUBSCRIBE, issued_at=NOW)
    tried = 0
    for i, original in enumerate(token):
        for ch in B64URL:
            if ch == original:
                continue
            tampered = token[:i] + ch + token[i + 1 :]
            with pytest.raises(LinkTokenError):
                signer.verify(tampered, Purpose.UNSUBSCRIBE)
            tried += 1
    # Including the last character, whose low bits are padding: a non-canonical
    # spelling of the same bytes must not count as the same token.
    assert tried == len(token) * 63


def test_every_bit_flip_in_the_decoded_bytes_is_rejected() -> None:
    token = signer.sign(new_handle(), Purpose.UNSUBSCRIBE, issued_at=NOW)
    raw = _decode(token)
    for i in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[i] ^= 1 << bit
            with pytest.raises(LinkTokenError):
                signer.verify(_unpadded(bytes(flipped)), Purpose.UNSUBSCRIBE)


def test_truncated_and_extended_tokens_are_rejected() -> None:
    token = signer.sign(new_handle(), Purpose.UNSUBSCRIBE, issued_at=NOW)
    for n in range(len(token)):
        with pytest.raises(LinkTokenError):
            signer.verify(token[:n], Purpose.UNSUBSCRIBE)
    for extra in ("A", "AA", "AAAA", "=", "==", "\n", " "):
        with pytest.raises(LinkTokenError):
            signer.verify(token + extra, Purpose.UNSUBSCRIBE)
    raw = _decode(token)
    with pytest.raises(LinkTokenError):  # valid base64 of the bytes without the last MAC byte
        signer.verify(_unpadded(raw[:-1]), Purpose.UNSUBSCRIBE)


@pytest.mark.parametrize(
    "garbage",
    ["", "x", "!!!!", "====", "a b c", "é" * 20, "A" * 200, "A" * (MAX_TOKEN_LENGTH + 1), "../../etc/passwd",
     _unpadded(b"\x01\x01" + b"\x00" * 60)],
)
def test_garbage_is_rejected_with_the_specific_exception(garbage: str) -> None:
    with pytest.raises(LinkTokenError) as info:
        signer.verify(garbage, Purpose.UNSUBSCRIBE)
    assert isinstance(info.value, HubError) and info.value.reason


def test_standard_base64_spelling_is_rejected() -> None:
    # "+" and "/" are the non-URL-safe alphabet; a token must be exactly what we issued.
    for _ in range(50):
        token = signer.sign(new_handle(), Purpose.UNSUBSCRIBE, issued_at=NOW)
        if "-" in token or "_" in token:
            break
    std = token.replace("-", "+").replace("_", "/")
    assert std != token
    with pytest.raises(LinkTokenError):
        signer.verify(std, Purpose.UNSUBSCRIBE)


def test_wrong_secret_is_rejected() -> None:
    token = signer.sign("abc", Purpose.UNSUBSCRIBE, issued_at=NOW)
    for other in ("correct horse battery stapl", SECRET + " ", "x"):
        with pytest.raises(LinkTokenError, match="bad signature"):
            TokenSigner(other).verify(token, Purpose.UNSUBSCRIBE)


def test_purpose_mismatch_is_rejected_both_ways() -> None:
    unsub = signer.sign("abc", Purpose.UNSUBSCRIBE, issued_at=NOW)
    confirm = signer.sign("abc", Purpose.CONFIRM_ADDRESS, issued_at=NOW)
    with pytest.raises(LinkTokenError, match="wrong purpose"):
        signer.verify(unsub, Purpose.CONFIRM_ADDRESS)
    with pytest.raises(LinkTokenError, match="wrong purpose"):
        signer.verify(confirm, Purpose.UNSUBSCRIBE)


def test_max_age_expires_tokens() -> None:
    token = signer.sign("abc", Purpose.CONFIRM_ADDRESS, issued_at=NOW)
    week = timedelta(days=7)
    assert signer.verify(token, Purpose.CONFIRM_ADDRESS, now=NOW + week, max_age=week).handle == "abc"
    with pytest.raises(LinkTokenError, match="expired"):
        signer.verify(token, Purpose.CONFIRM_ADDRESS, now=NOW + week + timedelta(seconds=1), max_age=week)
    with pytest.raises(ValueError):
        signer.verify(token, Purpose.CONFIRM_ADDRESS, max_age=week)


def test_bad_signing_inputs_are_programming_errors() -> None:
    with pytest.raises(ValueError):
        TokenSigner("")
    for handle in ("", "a/b", "a b", "é", "x" * 65, "123\n"):
        with pytest.raises(ValueError):
            signer.sign(handle, Purpose.UNSUBSCRIBE, issued_at=NOW)
    with pytest.raises(ValueError):
        signer.sign("abc", Purpose.UNSUBSCRIBE, issued_at=datetime(2027, 1, 1))


def test_list_unsubscribe_headers_use_public_url_as_configured() -> None:
    token = signer.sign("abc", Purpose.UNSUBSCRIBE, issued_at=NOW)
    assert list_unsubscribe_headers("https://hub.example.org", token) == {
        "List-Unsubscribe": f"<https://hub.example.org/unsubscribe/{token}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    # A hub behind a path prefix keeps it; a trailing slash does not double up.
    assert unsubscribe_url("https://example.org/mentoring", token) == (
        f"https://example.org/mentoring/unsubscribe/{token}"
    )
    assert unsubscribe_url("https://example.org/mentoring/", token) == (
        f"https://example.org/mentoring/unsubscribe/{token}"
    )


handles = st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")
moments = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=200, deadline=None)
@given(handle=handles, purpose=st.sampled_from(list(Purpose)), when=moments)
def test_property_round_trip(handle: str, purpose: Purpose, when: datetime) -> None:
    claims = signer.verify(signer.sign(handle, purpose, issued_at=when), purpose)
    assert claims.handle == handle and claims.purpose is purpose
    assert claims.issued_at == when.replace(microsecond=0)


@settings(max_examples=300, deadline=None)
@given(handle=handles, data=st.data())
def test_property_any_other_string_is_rejected(handle: str, data: st.DataObject) -> None:
    token = signer.sign(handle, Purpose.UNSUBSCRIBE, issued_at=NOW)
    other = data.draw(
        st.one_of(
            st.text(max_size=200),
            st.text(alphabet=B64URL, min_size=len(token) - 2, max_size=len(token) + 2),
            # A random edit of the genuine token: the most realistic forgery.
            st.tuples(st.integers(0, len(token) - 1), st.sampled_from(B64URL)).map(
                lambda edit: token[: edit[0]] + edit[1] + token[edit[0] + 1 :]
            ),
        )
    )
    if other == token:
        return
    with pytest.raises(LinkTokenError):
        signer.verify(other, Purpose.UNSUBSCRIBE)
