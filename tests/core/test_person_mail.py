"""Fast checks of an email-only participant's mail (issue 12 item 5), without servers.

The same things through a real hub, Synapse and SMTP server are in test_email_only_live.py;
here each rule is pinned on its own: the library check, the digest's email-only sections,
the unsubscribe footer, and the welcome's page.
"""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from hub.core import content as ct
from hub.core.content_library import check_library, default_library_path, load_library
from hub.core.digest import CohortInfo, DigestBuilder, DigestIssue, PairCounts, Prompt, Recipient, Tip
from hub.core.person_email import AnswerLink, PersonEmailBuilder, VideoCall
from hub.core.tokens import TokenSigner
from hub.email.payload import email_payload

NOW = datetime(2027, 2, 1, 9, 0, tzinfo=UTC)
PUBLIC = "https://hub.example.org"
UNSUBSCRIBE = f"{PUBLIC}/unsubscribe/t0k3n"
HOSTILE = "[Kat](https://evil.example/x)"


def test_content_check_refuses_an_email_only_welcome_or_question_naming_a_command(tmp_path: Path) -> None:
    root = tmp_path / "content"
    shutil.copytree(default_library_path(), root)
    assert check_library(root).problems == ()
    welcome = root / "welcome" / "direct.md"
    text = welcome.read_text(encoding="utf-8")
    # The email branch (person.on_matrix false) is what an email-only person reads.
    text = text.replace("You're taking part by email.", "You're taking part by email. Type `!hub help`.")
    welcome.write_text(text, encoding="utf-8")
    question = root / "checkins" / "did-you-meet-email.md"
    question.write_text(question.read_text(encoding="utf-8") + "\nOr answer with `!hub met video`.\n",
                        encoding="utf-8")
    problems = [f"{p.path.name}: {p.message}" for p in check_library(root).problems]
    assert any(p.startswith("direct.md:") and "names a command" in p for p in problems), problems
    assert any(p.startswith("did-you-meet-email.md:") and "names a command" in p for p in problems), problems
    assert len(problems) == 2, problems


def _issue() -> DigestIssue:
    return DigestIssue(
        cohort=CohortInfo("spring", "Spring 2027", ZoneInfo("UTC"), "!lounge:example.org"),
        week=2, weeks=12, generated_at=NOW,
        prompts=(Prompt("Check-in", "Did you meet?", "Answer with !hub met video, voice, text or notyet.",
                        by_email="The question comes in its own email."),
                 Prompt("Reflection", "Looking back",
                        "Talk it through.\n\nThen send !hub reflect privately.")),
        tip=Tip("Backup plans", "Save it with !hub plan set."),
        email_tip=Tip("Short and regular", "Twenty minutes every week beats an hour once a month."),
    )


def test_the_digest_for_an_email_only_reader_names_no_command() -> None:
    builder = DigestBuilder(public_url=PUBLIC, signer=TokenSigner("s3cret"), hub_user_id="@hub:example.org")
    pairs = (PairCounts(days_since_active=3, backup_plan_set=True), PairCounts(None, False))
    eve = builder.email(_issue(), Recipient("h-eve", "Eve", ZoneInfo("UTC"), pairs=pairs, on_matrix=False))
    for part in (eve.text, eve.html):
        assert "!hub" not in part
        assert "The question comes in its own email." in part  # the check-in, said for email
        assert "Talk it through." in part and "Short and regular" in part  # a command-free tip instead
        assert "Backup plan: set." in part and "Backup plan: not set yet." in part
    # A Matrix reader still gets the hints (the same digest, rendered once per variant).
    ada = builder.email(_issue(), Recipient("h-ada", "Ada", ZoneInfo("UTC"), pairs=pairs, on_matrix=True))
    assert "!hub met video" in ada.text and "!hub plan set" in ada.text and "Backup plans" in ada.text


def test_every_list_email_shows_its_unsubscribe_link_in_both_bodies_once() -> None:
    headers = {"List-Id": "Spring <spring.example.org>", "List-Unsubscribe": f"<{UNSUBSCRIBE}>",
               "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    page = "<!DOCTYPE html><html><body><p>Hello</p></body></html>"
    mail = email_payload(to="ada@example.org", subject="s", text="Hello", html=page, headers=headers)
    assert mail["text"].endswith(f"Unsubscribe: {UNSUBSCRIBE}\n")
    html = mail.get("html", "")
    assert f'href="{UNSUBSCRIBE}"' in html and html.index(UNSUBSCRIBE) < html.index("</body>")
    # A template that shows the link itself (the digest) gets no second one.
    own = f'<p><a href="{UNSUBSCRIBE}">Unsubscribe</a></p>'
    mail = email_payload(to="ada@example.org", subject="s", text=f"Hi\nUnsubscribe: {UNSUBSCRIBE}\n",
                         html=own, headers=headers)
    assert mail["text"].count(UNSUBSCRIBE) == 1 and mail.get("html", "").count(UNSUBSCRIBE) == 1
    # One person's own mail without list headers (an address confirmation) is left alone.
    mail = email_payload(to="ada@example.org", subject="s", text="Your code", html="<p>Your code</p>")
    assert mail["text"] == "Your code" and mail.get("html") == "<p>Your code</p>"


def test_the_welcome_is_the_library_email_part_in_the_digest_design() -> None:
    library = load_library()
    rendered = library.render(library.pick(ct.Kind.WELCOME, ct.Audience.PERSON), ct.Variables(
        cohort=ct.Cohort("Spring **2027**", "spring", 12, date(2027, 1, 4)),
        person=ct.Person("Eve", "mentee", on_matrix=False), partner=ct.Person(HOSTILE, "mentor")))
    mail = PersonEmailBuilder().build(
        subject=rendered.subject, eyebrow="Spring 2027 · welcome", fragment=rendered.formatted_body,
        text=rendered.body, cohort_name="Spring **2027**", unsubscribe_url=UNSUBSCRIBE,
        call=VideoCall(HOSTILE, "https://meet.jit.si/CohortHub-abc"),
        answers=(AnswerLink("We met on video", f"{PUBLIC}/answer/t0k3n"),))
    # Plain text: the item's words, no Markdown; every link spelled out.
    assert "You're taking part by email" in mail.text and "Your mentor is " + HOSTILE in mail.text
    assert "Spring **2027**" in mail.text  # the cohort's name as typed: its stars are the name's own
    assert "**Hi" not in mail.text and "https://meet.jit.si/CohortHub-abc" in mail.text
    assert f"{PUBLIC}/answer/t0k3n" in mail.text and f"Unsubscribe: {UNSUBSCRIBE}" in mail.text
    # HTML: the digest's classes with their CSS inlined, the links clickable, the names text.
    assert '<p class="p" style="' in mail.html and "background-color: #1e3a5f" in mail.html
    assert 'href="https://meet.jit.si/CohortHub-abc"' in mail.html and f'href="{UNSUBSCRIBE}"' in mail.html
    assert 'href="https://evil.example' not in mail.html
    assert "<strong>Spring **2027**" not in mail.html and "<strong>2027</strong>" not in mail.html
    assert "!hub" not in mail.text + mail.html
