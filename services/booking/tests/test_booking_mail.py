"""Booking mails: what a mail client reads (headers, text, an iCalendar invitation it can parse),
and delivery over SMTP or into the mail folder."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import icalendar
import pytest
from aiosmtpd.smtp import SMTP, Envelope

from calmesh_booking.domain import Booking
from calmesh_booking.mail import Mailer, Person, _message, booking_mails, verification_mail
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


class SmtpServer:
    """A real SMTP server (aiosmtpd) on this test's event loop, on loopback: it counts the
    connections made to it and keeps what it received; `restart` ends every session as a server
    restart does and listens again on the same port."""

    def __init__(self, refuse: str = "") -> None:
        self.connections = self.quits = 0
        self.received: list[tuple[str, list[str], bytes]] = []
        self.refuse = refuse  # a recipient it answers 550 to
        self.shutting_down = False  # answer 421 (closing) to the next MAIL, as a server going down does
        self.stall = False  # hold the next DATA unanswered
        self.port = 0
        self._server: asyncio.Server | None = None
        self._sessions: list[SMTP] = []

    async def start(self) -> None:
        def session() -> SMTP:
            self.connections += 1
            protocol = SMTP(self, hostname="smtp.test")
            self._sessions.append(protocol)
            return protocol

        self._server = await asyncio.get_running_loop().create_server(session, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for protocol in self._sessions:
            if protocol.transport is not None:
                protocol.transport.close()
        self._sessions.clear()
        await self._server.wait_closed()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def handle_MAIL(self, server: SMTP, session: object, envelope: Envelope, address: str,  # noqa: N802 (aiosmtpd calls its hooks by these names)
                          options: list[str]) -> str:
        if self.shutting_down:
            self.shutting_down = False
            return "421 smtp.test closing the channel"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: object, envelope: Envelope, address: str,  # noqa: N802 (aiosmtpd calls its hooks by these names)
                          options: list[str]) -> str:
        if address == self.refuse:
            return "550 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: object, envelope: Envelope) -> str:  # noqa: N802 (aiosmtpd calls its hooks by these names)
        if self.stall:
            self.stall = False
            await asyncio.sleep(30)
        assert envelope.mail_from is not None and envelope.original_content is not None
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 queued"

    async def handle_QUIT(self, server: SMTP, session: object, envelope: Envelope) -> str:  # noqa: N802 (aiosmtpd calls its hooks by these names)
        self.quits += 1
        return "221 bye"


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpServer]:
    server = SmtpServer()
    await server.start()
    yield server
    await server.stop()


def smtp_settings(server: SmtpServer) -> Settings:
    return Settings(smtp_host="127.0.0.1", smtp_port=server.port, smtp_security="none",
                    mail_from="Terminbüro Café Zürich <bookings@calmesh.test>")


def wire_checked(data: bytes) -> None:
    """What a current mail server accepts: every line ends CRLF (no bare LF or CR), and the header
    block is ASCII (RFC 2047 encoded words) with no line past 78 characters."""
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert all(len(line) <= 78 for line in head.split(b"\r\n")), head


def test_a_non_ascii_sender_name_and_a_long_subject_are_encoded_for_the_wire() -> None:
    # A long time-zone name and the en dash make the subject non-ASCII and longer than one line.
    far = replace(BOOKING, timezone="America/Argentina/ComodRivadavia")
    settings = Settings(mail_from="Terminbüro Café Zürich <bookings@calmesh.test>")
    mails = [
        *booking_mails(far, owner=OWNER, settings=settings, cancel_url=None, cause_id="evt-20", now=NOW,
                       previous=(far.start - timedelta(days=1), far.end - timedelta(days=1))),
        verification_mail(far, owner_name="Ann", settings=settings, verify_url="https://c.example/v?sig=1",
                          expires_at=NOW + timedelta(minutes=15), cause_id="evt-21", now=NOW),
    ]
    for mail in mails:
        wire_checked(mail.data)
        assert b"=?utf-8?q?Terminb=C3=BCro_Caf=C3=A9_Z=C3=BCrich?= <bookings@calmesh.test>" in mail.data
        msg = parse(mail.data)
        sender = msg["From"].addresses[0]
        assert (sender.display_name, sender.addr_spec) == ("Terminbüro Café Zürich", "bookings@calmesh.test")
    assert parse(mails[0].data)["Subject"] == (
        "Booking rescheduled: Monday 07 December 2026, 05:00–05:30 (America/Argentina/ComodRivadavia)")


def test_a_long_subject_of_non_ascii_words_folds_with_crlf_and_decodes_whole() -> None:
    subject = "Bestätigung Ihrer Buchung: " + "Überraschungsfrühstück für Größenwahn " * 6
    data = _message(sender="Zoë Ünïcode <zoe@example.org>", to=OWNER, subject=subject, text="Grüße\n",
                    ics=None, method="", message_id="<evt-22@calmesh>", now=NOW)
    wire_checked(data)
    assert data.split(b"\r\n\r\n", 1)[0].count(b"\r\n ") >= 3  # folded, each continuation after CRLF
    msg = parse(data)
    assert msg["Subject"] == " ".join(subject.split())
    assert msg["From"].addresses[0].display_name == "Zoë Ünïcode"


async def test_mails_go_over_one_smtp_connection(smtp: SmtpServer) -> None:
    settings = smtp_settings(smtp)
    mailer = Mailer(settings)
    mails = [m for i in range(3) for m in booking_mails(BOOKING, owner=OWNER, settings=settings, cancel_url=None,
                                                        cause_id=f"evt-1{i}", now=NOW)]
    try:
        for mail in mails:
            await mailer.send(mail)
    finally:
        await mailer.close()
    assert (smtp.connections, smtp.quits) == (1, 1)  # six mails, one session, ended with a QUIT
    assert [(sender, rcpts) for sender, rcpts, _ in smtp.received] == [
        ("bookings@calmesh.test", ["zoe@example.org"]), ("bookings@calmesh.test", ["ann@example.com"])] * 3
    # What the server received is the message as built, byte for byte.
    assert [body for _, _, body in smtp.received] == [m.data for m in mails]
    wire_checked(smtp.received[0][2])
    assert invitation(parse(smtp.received[0][2]))["METHOD"] == "REQUEST"


async def test_a_mail_after_the_smtp_server_restarted_is_still_delivered(smtp: SmtpServer) -> None:
    settings = smtp_settings(smtp)
    mailer = Mailer(settings)
    first, second = booking_mails(BOOKING, owner=OWNER, settings=settings, cancel_url=None, cause_id="evt-30",
                                  now=NOW)
    try:
        await mailer.send(first)
        await smtp.restart()  # the kept connection is gone
        await mailer.send(second)
        smtp.shutting_down = True  # the kept connection answers 421 to the next mail
        await mailer.send(first)
    finally:
        await mailer.close()
    assert smtp.connections == 3
    assert [body for _, _, body in smtp.received] == [first.data, second.data, first.data]


async def test_a_mail_cancelled_mid_transaction_leaves_no_half_session_behind(smtp: SmtpServer) -> None:
    settings = smtp_settings(smtp)
    mailer = Mailer(settings)
    first, second = booking_mails(BOOKING, owner=OWNER, settings=settings, cancel_url=None, cause_id="evt-35",
                                  now=NOW)
    try:
        smtp.stall = True
        with pytest.raises(TimeoutError):  # the consumer is stopped (or times out) during DATA
            await asyncio.wait_for(mailer.send(first), 0.5)
        await mailer.send(second)  # not on the session left mid-DATA: on a new one
    finally:
        await mailer.close()
    assert smtp.connections == 2
    assert [body for _, _, body in smtp.received] == [second.data]


async def test_a_refused_recipient_fails_that_mail_and_keeps_the_connection() -> None:
    server = SmtpServer(refuse="zoe@example.org")
    await server.start()
    settings = smtp_settings(server)
    mailer = Mailer(settings)
    visitor, owner = booking_mails(BOOKING, owner=OWNER, settings=settings, cancel_url=None, cause_id="evt-40",
                                   now=NOW)
    try:
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await mailer.send(visitor)  # the consumer's retry and dead-letter rules take it from here
        await mailer.send(owner)
    finally:
        await mailer.close()
        await server.stop()
    assert server.connections == 1
    assert [rcpts for _, rcpts, _ in server.received] == [["ann@example.com"]]


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
