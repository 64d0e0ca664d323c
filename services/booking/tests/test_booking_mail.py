"""Booking mails: what a mail client reads (headers, text, an iCalendar invitation it can parse),
and delivery over SMTP or into the mail folder."""

from __future__ import annotations

import asyncio
import email
import email.policy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import icalendar

from calmesh_booking.domain import Booking
from calmesh_booking.mail import Mailer, Person, booking_mails, verification_mail
from calmesh_common.settings import Settings

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
BOOKING = Booking(
    id="bk_test", page_id="bp_x", page_slug="intro", user_id="usr_x", calendar_slug="work",
    title="Café; call, now", start=datetime(2026, 12, 7, 8, 0, tzinfo=UTC), end=datetime(2026, 12, 7, 8, 30, tzinfo=UTC),
    name="Zoë Ünïcode", email="zoe@example.org", notes="First line\nSecond line", timezone="America/New_York",
    status="confirmed", created_at=NOW,
)
OWNER = Person("Ann Owner", "ann@example.com", "Europe/Amsterdam")


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def invitation(msg: EmailMessage) -> icalendar.Calendar:
    part = next(p for p in msg.walk() if p.get_content_type() == "text/calendar")
    return icalendar.Calendar.from_ical(part.get_content())


def test_confirmation_mails_carry_a_request_invitation() -> None:
    mails = booking_mails(BOOKING, owner=OWNER, settings=Settings(), cancel_url="https://c.example/x?sig=1",
                          cause_id="evt-1", now=NOW)
    visitor, owner = (parse(m.data) for m in mails)
    assert [m.to for m in mails] == ["zoe@example.org", "ann@example.com"]
    assert visitor["To"].addresses[0].display_name == "Zoë Ünïcode"
    # The subject names the time (in the reader's timezone) and nothing the owner or visitor typed.
    assert visitor["Subject"] == "Booking confirmed: Monday 07 December 2026, 03:00–03:30 (America/New_York)"
    assert owner["Subject"] == "New booking: Monday 07 December 2026, 09:00–09:30 (Europe/Amsterdam)"
    text = visitor.get_body(("plain",)).get_content()
    assert "What: Café; call, now" in text and "With: Ann Owner" in text
    # The visitor reads their own timezone; the owner theirs.
    assert "Monday 07 December 2026, 03:00–03:30 (America/New_York)" in text
    assert "https://c.example/x?sig=1" in text
    assert "09:00–09:30 (Europe/Amsterdam)" in owner.get_body(("plain",)).get_content()
    cal = invitation(visitor)
    event = cal.walk("VEVENT")[0]
    # The provider event's UID: a calendar holding both sees one event.
    assert cal["METHOD"] == "REQUEST" and str(event["UID"]) == "bk_test@calmesh.xyz"
    assert event.decoded("DTSTART") == BOOKING.start and event.decoded("DTEND") == BOOKING.end
    assert str(event["SUMMARY"]) == "Café; call, now with Zoë Ünïcode"
    assert "Second line" in str(event["DESCRIPTION"])
    assert str(event["ORGANIZER"]) == "mailto:ann@example.com"
    assert sorted(str(a) for a in event["ATTENDEE"]) == ["mailto:ann@example.com", "mailto:zoe@example.org"]
    attachment = next(p for p in visitor.walk() if p.get_filename() == "invite.ics")
    assert icalendar.Calendar.from_ical(attachment.get_content())["METHOD"] == "REQUEST"


def test_cancellation_mails_carry_a_cancel_and_no_header_can_be_injected() -> None:
    cancelled = replace(BOOKING, status="cancelled", cancelled_by="visitor", cancel_reason="clash",
                        name="Mallory\r\nBcc: victim@example.org")
    mails = booking_mails(cancelled, owner=OWNER, settings=Settings(), cancel_url=None, cause_id="evt-2", now=NOW)
    msg = parse(mails[0].data)
    assert msg["Bcc"] is None and "\n" not in msg["To"]
    cal = invitation(msg)
    assert cal["METHOD"] == "CANCEL" and str(cal.walk("VEVENT")[0]["STATUS"]) == "CANCELLED"
    assert "Reason: clash" in msg.get_body(("plain",)).get_content()
    # Without the owner's address only the visitor is mailed.
    assert len(booking_mails(cancelled, owner=Person("Ann", "", "UTC"), settings=Settings(), cancel_url=None,
                             cause_id="evt-3", now=NOW)) == 1


async def test_mails_go_to_the_folder_without_smtp(tmp_path: Path) -> None:
    mailer = Mailer(Settings(data_dir=str(tmp_path)))
    for m in booking_mails(BOOKING, owner=OWNER, settings=Settings(), cancel_url=None, cause_id="evt-4", now=NOW):
        await mailer.send(m)
        await mailer.send(m)  # a retried delivery rewrites the same file
    assert sorted(p.name for p in (tmp_path / "mail").iterdir()) == [
        "bk_test-confirmed-owner.eml", "bk_test-confirmed-visitor.eml"]


async def test_mails_go_over_smtp_when_a_host_is_set() -> None:
    received: list[tuple[str, list[str], bytes]] = []

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sender, rcpts = "", []
        writer.write(b"220 fake ESMTP\r\n")
        while line := await reader.readline():
            command = line.decode().strip()
            verb = command.upper()
            if verb.startswith(("EHLO", "HELO")):
                writer.write(b"250-fake\r\n250 8BITMIME\r\n")
            elif verb.startswith("MAIL FROM:"):
                sender = command[10:].strip("<> ")
                writer.write(b"250 OK\r\n")
            elif verb.startswith("RCPT TO:"):
                rcpts.append(command[8:].strip("<> "))
                writer.write(b"250 OK\r\n")
            elif verb == "DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                body = b""
                while (chunk := await reader.readline()) != b".\r\n":
                    body += chunk
                received.append((sender, rcpts, body))
                writer.write(b"250 queued\r\n")
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 OK\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = Settings(smtp_host="127.0.0.1", smtp_port=port, smtp_security="none",
                        mail_from="CalMesh <bookings@calmesh.test>")
    try:
        mail = booking_mails(BOOKING, owner=OWNER, settings=settings, cancel_url=None, cause_id="evt-5", now=NOW)[0]
        await Mailer(settings).send(mail)
    finally:
        server.close()
        await server.wait_closed()
    assert len(received) == 1
    sender, rcpts, body = received[0]
    assert (sender, rcpts) == ("bookings@calmesh.test", ["zoe@example.org"])
    assert invitation(parse(body))["METHOD"] == "REQUEST"


def test_line_breaks_and_ical_specials_in_visitor_text_round_trip_through_a_parseable_invitation() -> None:
    notes = "Bare CR\rthen CRLF\r\nthen LF\nsemi; comma, backslash \\ colon: done"
    tricky = replace(BOOKING, name='Zoë "Q"; Ünïcode, \\ x', notes=notes)
    mails = booking_mails(tricky, owner=OWNER, settings=Settings(), cancel_url=None, cause_id="evt-6", now=NOW)
    for mail in mails:
        msg = parse(mail.data)
        part = next(p for p in msg.walk() if p.get_content_type() == "text/calendar")
        raw = part.get_payload(decode=True)
        # No content line holds a bare CR or LF: every line ends CRLF, continuations start with a space.
        assert b"\r\n" in raw and b"\r" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b"")
        cal = icalendar.Calendar.from_ical(raw)
        event = cal.walk("VEVENT")[0]
        description = str(event["DESCRIPTION"])
        assert description.endswith("Notes: Bare CR\nthen CRLF\nthen LF\nsemi; comma, backslash \\ colon: done")
        assert str(event["SUMMARY"]) == 'Café; call, now with Zoë "Q"; Ünïcode, \\ x'
        cns = sorted(str(a.params["CN"]) for a in event["ATTENDEE"])
        assert cns == ["Ann Owner", 'Zoë "Q"; Ünïcode, \\ x']
        # The .ics attachment is the same object.
        attachment = next(p for p in msg.walk() if p.get_filename() == "invite.ics")
        assert attachment.get_payload(decode=True) == raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    owner_text = parse(mails[1].data).get_body(("plain",)).get_content()
    assert "Bare CR\nthen CRLF\nthen LF" in owner_text.replace("\r\n", "\n")


def test_no_subject_holds_the_page_title_or_other_chosen_text() -> None:
    spam = replace(BOOKING, title="WIN A PRIZE http://spam.example", name="Buy now http://spam.example")
    owner = Person("Cheap pills http://spam.example", "ann@example.com", "Europe/Amsterdam")
    cancelled = replace(spam, status="cancelled", cancelled_by="visitor", cancel_reason="http://spam.example")
    moved = replace(spam, sequence=1)
    mails = [
        *booking_mails(spam, owner=owner, settings=Settings(), cancel_url=None, cause_id="e1", now=NOW),
        *booking_mails(moved, owner=owner, settings=Settings(), cancel_url=None, cause_id="e2", now=NOW,
                       previous=(spam.start - timedelta(hours=1), spam.end - timedelta(hours=1))),
        *booking_mails(cancelled, owner=owner, settings=Settings(), cancel_url=None, cause_id="e3", now=NOW),
        verification_mail(spam, owner_name=owner.name, settings=Settings(), verify_url="https://c.example/v?sig=1",
                          expires_at=NOW + timedelta(minutes=15), cause_id="e4", now=NOW),
    ]
    assert len(mails) == 7
    for mail in mails:
        msg = parse(mail.data)
        subject = str(msg["Subject"])
        assert "spam" not in subject.lower() and "WIN" not in subject and "Cheap" not in subject, subject
        assert subject.split(":", 1)[0] in ("Booking confirmed", "New booking", "Booking rescheduled",
                                             "Booking cancelled", "Confirm your booking")
        # The page title is in the plain-text body, where the reader sees it as what was booked.
        assert "What: WIN A PRIZE http://spam.example" in msg.get_body(("plain",)).get_content()
        for header in ("From", "Subject", "Date", "Message-ID"):
            assert "spam" not in str(msg[header]), header


def test_the_verification_mail_carries_the_link_and_no_invitation() -> None:
    mail = verification_mail(BOOKING, owner_name="Ann Owner", settings=Settings(),
                             verify_url="https://c.example/api/v1/bookings/bk_test/verify?exp=1&sig=abc",
                             expires_at=NOW + timedelta(minutes=15), cause_id="evt-7", now=NOW)
    msg = parse(mail.data)
    assert (mail.to, mail.visitor, mail.stem) == ("zoe@example.org", True, "bk_test-verify-visitor")
    assert msg["Subject"] == "Confirm your booking: Monday 07 December 2026, 03:00–03:30 (America/New_York)"
    assert msg.get_content_type() == "text/plain"
    text = msg.get_content()
    assert "https://c.example/api/v1/bookings/bk_test/verify?exp=1&sig=abc" in text
    assert "Wednesday 25 November 2026, 07:15 (America/New_York)" in text  # the link's expiry, visitor's time


def test_a_retried_mail_is_the_same_bytes() -> None:
    first = booking_mails(BOOKING, owner=OWNER, settings=Settings(), cancel_url=None, cause_id="evt-8", now=NOW)
    again = booking_mails(BOOKING, owner=OWNER, settings=Settings(), cancel_url=None, cause_id="evt-8", now=NOW)
    assert [m.data for m in first] == [m.data for m in again]
    assert parse(first[0].data)["Message-ID"] == "<evt-8.visitor@calmesh>"


def test_an_address_a_mail_cannot_carry_skips_that_mail_only() -> None:
    # A non-ASCII local part needs SMTPUTF8, which policy SMTP does not speak: no mail to it, but the
    # owner still hears of the booking.
    mails = booking_mails(replace(BOOKING, email="zoë@example.org"), owner=OWNER, settings=Settings(),
                          cancel_url=None, cause_id="evt-9", now=NOW)
    assert [m.to for m in mails] == ["ann@example.com"]
    assert "zoë@example.org" in parse(mails[0].data).get_body(("plain",)).get_content()
