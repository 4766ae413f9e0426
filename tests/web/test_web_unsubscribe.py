"""`/unsubscribe/<token>` on a real aiohttp server: GET asks, POST acts, bad tokens change nothing."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from hub.core.digest import CohortInfo, DigestBuilder, DigestIssue, Prompt, Recipient
from hub.core.tokens import Purpose, TokenSigner
from hub.delivery.outbox import Outbox
from hub.web import HealthSource, WebServer
from hub.web_pages import SECURITY_HEADERS
from hub.web_unsubscribe import routes

SECRET = "web-unsubscribe-test-secret"
NOW = datetime(2027, 1, 25, 8, 0, tzinfo=UTC)
signer = TokenSigner(SECRET)


class MemoryStore:
    """The in-memory `SubscriptionStore` for tests; records every call."""

    def __init__(self, subscribed: set[str], known: set[str] | None = None) -> None:
        self.subscribed = set(subscribed)
        self.known = set(known or ()) | self.subscribed
        self.calls: list[tuple[str, str]] = []
        self.fail = False

    async def is_subscribed(self, handle: str) -> bool:
        self.calls.append(("is_subscribed", handle))
        if self.fail:
            raise RuntimeError("database is down")
        return handle in self.subscribed

    async def unsubscribe(self, handle: str) -> bool:
        self.calls.append(("unsubscribe", handle))
        if self.fail:
            raise RuntimeError("database is down")
        self.subscribed.discard(handle)
        return handle in self.known


@dataclass
class Site:
    base: str
    store: MemoryStore
    http: aiohttp.ClientSession
    tokens: dict[str, str] = field(default_factory=dict)

    def url(self, token: str) -> str:
        return f"{self.base}/unsubscribe/{token}"


async def _true() -> bool:
    return True


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    store = MemoryStore({"ada", "bea"}, known={"cy"})
    # The real WebServer, so add_routes is exercised the way the lead wires it.
    health = HealthSource(sync_ok=lambda: True, database_ok=_true, smtp_ok=lambda: True,
                          outbox=cast(Outbox, None))
    server = WebServer("127.0.0.1", 0, health)
    server.add_routes(routes(store, SECRET))
    await server.start()
    async with aiohttp.ClientSession() as http:
        yield Site(f"http://127.0.0.1:{server.bound_port}", store, http)
    await server.stop()


def token(handle: str, purpose: Purpose = Purpose.UNSUBSCRIBE) -> str:
    return signer.sign(handle, purpose, issued_at=NOW)


def tampered(good: str) -> str:
    i = len(good) // 2
    return good[:i] + ("A" if good[i] != "A" else "B") + good[i + 1 :]


async def test_get_shows_a_confirm_page_and_changes_nothing(site: Site) -> None:
    for _ in range(3):  # a mail scanner may prefetch a link several times
        async with site.http.get(site.url(token("ada"))) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            page = await resp.text()
    assert site.store.subscribed == {"ada", "bea"}
    assert all(call == "is_subscribed" for call, _ in site.store.calls)
    assert "Unsubscribe from these emails?" in page
    assert re.search(r'<form method="post">', page) and '<button type="submit">' in page
    # Self-contained: no scripts, no external resources, nothing to load.
    assert "<script" not in page and "src=" not in page and "<link" not in page and "http" not in page
    async with site.http.head(site.url(token("ada"))) as resp:
        assert resp.status == 200
    assert site.store.subscribed == {"ada", "bea"}


async def test_get_for_an_unsubscribed_person_says_so(site: Site) -> None:
    async with site.http.get(site.url(token("cy"))) as resp:
        assert resp.status == 200
        assert "already unsubscribed" in await resp.text()


async def test_security_headers_keep_the_token_private(site: Site) -> None:
    async with site.http.get(site.url(token("ada"))) as resp:
        for name, value in SECURITY_HEADERS.items():
            assert resp.headers[name] == value
    assert "no-referrer" in SECURITY_HEADERS["Referrer-Policy"]


async def test_one_click_post_unsubscribes_at_once(site: Site) -> None:
    async with site.http.post(
        site.url(token("ada")),
        data="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as resp:
        assert resp.status == 200
        assert "You are unsubscribed" in await resp.text()
    assert site.store.subscribed == {"bea"}
    # Again: idempotent, still a success page.
    async with site.http.post(site.url(token("ada")), data={"List-Unsubscribe": "One-Click"}) as resp:
        assert resp.status == 200
    assert site.store.subscribed == {"bea"}


async def test_one_click_as_multipart_form_data(site: Site) -> None:
    # RFC 8058 allows either form encoding for the one-click POST.
    with aiohttp.MultipartWriter("form-data") as form:
        part = form.append("One-Click")
        part.set_content_disposition("form-data", name="List-Unsubscribe")
    async with site.http.post(site.url(token("bea")), data=form) as resp:
        assert resp.status == 200
        assert resp.request_info.headers["Content-Type"].startswith("multipart/form-data")
    assert site.store.subscribed == {"ada"}


async def test_plain_form_post_from_the_confirm_page(site: Site) -> None:
    async with site.http.post(site.url(token("ada")), data=b"") as resp:
        assert resp.status == 200
    assert site.store.subscribed == {"bea"}


async def test_valid_token_for_an_unknown_person_is_still_a_success(site: Site) -> None:
    async with site.http.post(site.url(token("gone")), data="List-Unsubscribe=One-Click") as resp:
        assert resp.status == 200
    assert site.store.subscribed == {"ada", "bea"}


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_tampered_wrong_purpose_and_garbage_tokens_get_400_and_change_nothing(
    site: Site, method: str
) -> None:
    good = token("ada")
    bad = [
        tampered(good),
        good[:-1],
        good + "A",
        token("ada", Purpose.CONFIRM_ADDRESS),
        TokenSigner("another secret").sign("ada", Purpose.UNSUBSCRIBE, issued_at=NOW),
        "garbage",
        "%00%ff",
    ]
    for t in bad:
        async with site.http.request(method, site.url(t), data="List-Unsubscribe=One-Click") as resp:
            assert resp.status == 400, t
            page = await resp.text()
            assert "This link does not work" in page and "Nothing was changed" in page
            assert resp.headers["Cache-Control"] == "no-store"
    assert site.store.subscribed == {"ada", "bea"}
    assert site.store.calls == []  # a bad token never reaches the store at all


async def test_store_failure_is_a_503_not_a_false_success(site: Site) -> None:
    site.store.fail = True
    async with site.http.post(site.url(token("ada")), data="List-Unsubscribe=One-Click") as resp:
        assert resp.status == 503
        assert "nothing was changed" in await resp.text()
    async with site.http.get(site.url(token("ada"))) as resp:
        assert resp.status == 503


async def test_the_link_from_a_digest_email_header_works_end_to_end(site: Site) -> None:
    builder = DigestBuilder(public_url=site.base, signer=signer)
    berlin = ZoneInfo("Europe/Berlin")
    issue = DigestIssue(
        cohort=CohortInfo("winter-2027", "Winter 2027", berlin, "!lounge:example.org"),
        week=1, weeks=12, generated_at=NOW, prompts=(Prompt("Icebreaker", "Hello", "Say hi."),),
    )
    mail = builder.email(issue, Recipient(handle="bea", name="Bea", timezone=berlin))
    header = mail.headers["List-Unsubscribe"]
    assert header.startswith("<") and header.endswith(">")
    async with site.http.get(header[1:-1]) as resp:
        assert resp.status == 200
    assert "bea" in site.store.subscribed
    async with site.http.post(header[1:-1], data=mail.headers["List-Unsubscribe-Post"]) as resp:
        assert resp.status == 200
    assert site.store.subscribed == {"ada"}
