"""Booking mails: a confirmation with an iCalendar invitation (METHOD:REQUEST) and a cancellation
(METHOD:CANCEL), to the visitor and to the owner; and, for pages that ask for it, the visitor's
verification mail (a signed link, no invitation).

Messages are built with the standard library's `email.message.EmailMessage` (policy SMTP: CRLF line
ends, RFC 2047 headers, no header can hold a line break) and invitations with the `icalendar`
library (RFC 5545 escaping and folding): no hand-written MIME or iCalendar text. Subject lines hold
fixed words and the booking's time only, never text an owner or a visitor chose (a page title in the
subject of a mail to any address a visitor types is what a spammer wants); the page title appears
in the plain-text body only.

Sent over SMTP (`aiosmtplib`, one connection reused by the process) when ``CALMESH_SMTP_HOST`` is
set; otherwise written as ``.eml`` files to the mail folder (``CALMESH_MAIL_DIR``, default
``$CALMESH_DATA_DIR/mail``) for a developer to open. File names, Message-IDs and MIME boundaries
derive from the event that caused the mail, so a retried delivery rewrites the same file rather
than adding one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email import policy
from email.errors import HeaderDefect, MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any

import aiosmtplib
import icalendar

from calmesh_common.ids import booking_uid
from calmesh_common.logging import get_logger
from calmesh_common.settings import Settings

from .domain import Booking, RuleError, zone

log = get_logger(__name__)

PRODID = "-//CalMesh//Booking//EN"


class UndeliverableAddress(ValueError):
    """An address the message cannot carry with policy SMTP (say, a non-ASCII local part)."""


@dataclass(frozen=True, slots=True)
class Mail:
    """One message: `stem` names its file in the mail folder (stable across retries). `visitor`:
    it goes to an address a visitor typed (what the mail limits count)."""

    stem: str
    to: str
    data: bytes
    visitor: bool = False
    kind: str = ""


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    email: str
    timezone: str


def _lines(value: str) -> str:
    """Any line break (CRLF, a bare CR, LF) as LF: what text bodies and iCalendar TEXT carry."""
    return value.replace("\r\n", "\n").replace("\r", "\n")


def _one_line(value: str) -> str:
    """No line breaks in a header or a parameter: visitors choose their names."""
    return " ".join(value.split())


def _cal_address(person: Person) -> icalendar.vCalAddress:
    address = icalendar.vCalAddress(f"mailto:{_one_line(person.email)}")
    address.params["CN"] = icalendar.vText(_one_line(person.name) or person.email)
    return address


def invitation_ics(booking: Booking, organizer: Person, method: str, *, now: datetime) -> bytes:
    """The booking as an iCalendar object: REQUEST when confirmed, CANCEL when cancelled. Its UID is
    the provider event's (`booking_uid`), so a calendar that holds both sees one event; SEQUENCE is
    the booking's reschedule count (one more for a cancellation)."""
    description = f"Booked by {booking.name} <{booking.email}>."
    if booking.notes:
        description += f"\n\nNotes: {_lines(booking.notes)}"
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("method", method)
    event = icalendar.Event()
    event.add("uid", booking_uid(booking.id))
    event.add("dtstamp", now.astimezone(UTC))
    event.add("dtstart", booking.start.astimezone(UTC))
    event.add("dtend", booking.end.astimezone(UTC))
    event.add("summary", _lines(f"{booking.title} with {booking.name}"))
    event.add("description", description)
    event.add("sequence", booking.sequence if method == "REQUEST" else booking.sequence + 1)
    event.add("status", "CONFIRMED" if method == "REQUEST" else "CANCELLED")
    event.add("organizer", _cal_address(organizer), encode=False)
    for person in (organizer, Person(booking.name, booking.email, booking.timezone)):
        attendee = _cal_address(person)
        attendee.params["ROLE"] = "REQ-PARTICIPANT"
        attendee.params["PARTSTAT"] = "ACCEPTED"
        event.add("attendee", attendee, encode=False)
    cal.add_component(event)
    ics: bytes = cal.to_ical()
    return ics


def _zone(tz_name: str) -> tuple[Any, str]:
    try:
        return zone(tz_name), tz_name
    except RuleError:
        return UTC, "UTC"


def when_text(booking: Booking, tz_name: str) -> str:
    """The booking's time in `tz_name`: "Monday 07 December 2026, 09:00–09:30 (Europe/Amsterdam)"."""
    tz, label = _zone(tz_name)
    start, end = booking.start.astimezone(tz), booking.end.astimezone(tz)
    return f"{start:%A %d %B %Y, %H:%M}–{end:%H:%M} ({label})"


def _at(instant: datetime, tz_name: str) -> str:
    tz, label = _zone(tz_name)
    return f"{instant.astimezone(tz):%A %d %B %Y, %H:%M} ({label})"


def _address(person: Person) -> Address:
    try:
        return Address(display_name=_one_line(person.name), addr_spec=_one_line(person.email))
    except (HeaderDefect, MessageError, ValueError, IndexError) as exc:
        raise UndeliverableAddress(f"cannot address a mail to {person.email!r}: {exc}") from None


def _message(
    *, sender: str, to: Person, subject: str, text: str, ics: bytes | None, method: str, message_id: str,
    now: datetime,
) -> bytes:
    """The mail as RFC 5322 bytes. With an invitation: multipart/mixed [multipart/alternative
    [text/plain, text/calendar; method=…], the .ics as an attachment]; without: text/plain."""
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = _one_line(sender)
    msg["To"] = _address(to)
    msg["Subject"] = _one_line(subject)
    msg["Date"] = format_datetime(now.astimezone(UTC))
    msg["Message-ID"] = message_id
    msg.set_content(_lines(text), cte="quoted-printable")
    if ics is not None:
        msg.add_alternative(ics.decode("utf-8"), subtype="calendar", params={"method": method},
                            cte="quoted-printable")
        filename = "invite.ics" if method == "REQUEST" else "cancel.ics"
        msg.add_attachment(ics, maintype="application", subtype="ics", filename=filename)
        # Boundaries from the Message-ID: a retried delivery writes the same bytes.
        token = hashlib.sha256(message_id.encode()).hexdigest()[:24]
        msg.set_boundary(f"calmesh-mixed-{token}")
        alternative = next(msg.iter_parts())
        assert isinstance(alternative, EmailMessage)
        alternative.set_boundary(f"calmesh-alt-{token}")
    return msg.as_bytes()


def _organizer(owner: Person, sender: str) -> Person:
    if owner.email:
        return owner
    return Person(owner.name, parseaddr(sender)[1] or "bookings@calmesh.localhost", owner.timezone)


def booking_mails(
    booking: Booking,
    *,
    owner: Person,
    settings: Settings,
    cancel_url: str | None,
    cause_id: str,
    reschedule_url: str | None = None,
    now: datetime,
    previous: tuple[datetime, datetime] | None = None,
) -> list[Mail]:
    """The mails for the visitor and the owner: a confirmation or a cancellation; with `previous`
    (the old start and end), an updated invitation for a rescheduled booking (same UID, its
    SEQUENCE the booking's). Subjects name the time only; what was booked is in the body."""
    confirmed = booking.status == "confirmed"
    method = "REQUEST" if confirmed else "CANCEL"
    sender = settings.mail_from
    ics = invitation_ics(booking, _organizer(owner, sender), method, now=now)
    visitor = Person(booking.name, booking.email, booking.timezone)
    visitor_when, owner_when = when_text(booking, visitor.timezone), when_text(booking, owner.timezone)
    what = f"What: {booking.title}\n"
    if confirmed and previous is None:
        visitor_text = (f"Hello {booking.name},\n\nYour booking is confirmed.\n\n{what}With: {owner.name}\n"
                        f"When: {visitor_when}\n")
        if reschedule_url:
            visitor_text += f"\nNeed to reschedule? {reschedule_url}\n"
        if cancel_url:
            visitor_text += f"\nNeed to cancel? {cancel_url}\n"
        owner_text = f"New booking.\n\n{what}With: {booking.name} <{booking.email}>\nWhen: {owner_when}\n"
        if booking.notes:
            owner_text += f"\nNotes:\n{booking.notes}\n"
        if booking.answers:
            owner_text += "\n" + "".join(f"{a.label}: {a.text()}\n" for a in booking.answers)
        visitor_subject, owner_subject = f"Booking confirmed: {visitor_when}", f"New booking: {owner_when}"
        kind = "confirmed"
    elif confirmed:
        assert previous is not None
        was = replace(booking, start=previous[0], end=previous[1])
        visitor_text = (f"Hello {booking.name},\n\nYour booking has moved.\n\n{what}With: {owner.name}\n"
                        f"When: {visitor_when}\nWas: {when_text(was, visitor.timezone)}\n")
        if reschedule_url:
            visitor_text += f"\nNeed to reschedule? {reschedule_url}\n"
        if cancel_url:
            visitor_text += f"\nNeed to cancel? {cancel_url}\n"
        owner_text = (f"Booking rescheduled.\n\n{what}With: {booking.name} <{booking.email}>\n"
                      f"When: {owner_when}\nWas: {when_text(was, owner.timezone)}\n")
        visitor_subject, owner_subject = f"Booking rescheduled: {visitor_when}", f"Booking rescheduled: {owner_when}"
        kind = f"rescheduled-{booking.sequence}"
    else:
        reason = f"\nReason: {booking.cancel_reason}\n" if booking.cancel_reason else ""
        visitor_text = (f"Hello {booking.name},\n\nYour booking has been cancelled.\n\n{what}With: {owner.name}\n"
                        f"Was: {visitor_when}\n{reason}")
        owner_text = (f"Booking cancelled.\n\n{what}With: {booking.name} <{booking.email}>\n"
                      f"Was: {owner_when}\nCancelled by: {booking.cancelled_by or 'unknown'}\n{reason}")
        visitor_subject, owner_subject = f"Booking cancelled: {visitor_when}", f"Booking cancelled: {owner_when}"
        kind = "cancelled"
    out: list[Mail] = []
    try:
        out.append(Mail(
            stem=f"{booking.id}-{kind}-visitor", to=visitor.email, visitor=True, kind=kind.split("-")[0],
            data=_message(sender=sender, to=visitor, subject=visitor_subject, text=visitor_text, ics=ics,
                          method=method, message_id=f"<{cause_id}.visitor@calmesh>", now=now),
        ))
    except UndeliverableAddress as exc:  # the owner still hears of the booking
        log.warning("booking_mail_undeliverable", booking_id=booking.id, to="visitor", error=str(exc))
    if owner.email:
        try:
            out.append(Mail(
                stem=f"{booking.id}-{kind}-owner", to=owner.email, kind=kind.split("-")[0],
                data=_message(sender=sender, to=owner, subject=owner_subject, text=owner_text, ics=ics,
                              method=method, message_id=f"<{cause_id}.owner@calmesh>", now=now),
            ))
        except UndeliverableAddress as exc:
            log.warning("booking_mail_undeliverable", booking_id=booking.id, to="owner", error=str(exc))
    return out


def verification_mail(
    booking: Booking,
    *,
    owner_name: str,
    settings: Settings,
    verify_url: str,
    expires_at: datetime,
    cause_id: str,
    now: datetime,
) -> Mail:
    """The one mail a visitor of a page with `require_email_verification` gets before the booking
    is confirmed: the signed link that confirms it. No invitation (nothing is booked yet)."""
    visitor = Person(booking.name, booking.email, booking.timezone)
    text = (
        f"Hello {booking.name},\n\n"
        "Someone, hopefully you, asked to book this time with this address:\n\n"
        f"What: {booking.title}\nWith: {owner_name}\nWhen: {when_text(booking, visitor.timezone)}\n\n"
        f"To confirm the booking, open this link and press its button before {_at(expires_at, visitor.timezone)}:\n"
        f"{verify_url}\n\n"
        "If it was not you, ignore this mail: nothing is booked, and the time is released on its own.\n"
    )
    return Mail(
        stem=f"{booking.id}-verify-visitor", to=visitor.email, visitor=True, kind="verify",
        data=_message(sender=settings.mail_from, to=visitor, subject=f"Confirm your booking: {when_text(booking, visitor.timezone)}",
                      text=text, ics=None, method="", message_id=f"<{cause_id}.verify@calmesh>", now=now),
    )


class Mailer:
    """Delivers messages over SMTP, or into the mail folder when no SMTP host is set.

    Over SMTP it keeps one connection for the process (`aiosmtplib`): opened on the first mail,
    reused by every later one (one mail at a time: an SMTP session carries one transaction at a
    time), opened again when the server dropped it (an idle timeout, a restart), and closed with a
    QUIT by `close` at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folder = Path(settings.mail_dir or os.path.join(settings.data_dir, "mail"))
        self._client: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()

    async def send(self, mail: Mail) -> None:
        if self.settings.smtp_host:
            async with self._lock:
                await self._smtp(mail)
        else:
            await asyncio.to_thread(self._write, mail)

    async def close(self) -> None:
        """QUIT the SMTP connection, if one is open (a later mail opens a new one)."""
        async with self._lock:
            client, self._client = self._client, None
            if client is None:
                return
            if client.is_connected:
                try:
                    await client.quit()
                    return
                except (aiosmtplib.SMTPException, OSError):
                    pass  # gone meanwhile: closed below
            client.close()

    def _write(self, mail: Mail) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".eml")
        with os.fdopen(fd, "wb") as fh:
            fh.write(mail.data)
        os.replace(tmp, self.folder / f"{mail.stem}.eml")

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.smtp_host, port=s.smtp_port, timeout=20,
            use_tls=s.smtp_security == "ssl", start_tls=s.smtp_security == "starttls",
            tls_context=ssl.create_default_context() if s.smtp_security != "none" else None,
            username=s.smtp_username or None, password=s.smtp_password if s.smtp_username else None,
        )
        await client.connect()
        log.debug("smtp_connected", host=s.smtp_host, port=s.smtp_port)
        return client

    async def _smtp(self, mail: Mail) -> None:
        sender = parseaddr(self.settings.mail_from)[1] or self.settings.mail_from
        # A kept connection may have been closed by the server (idle timeout, restart) without our
        # noticing yet: a mail that finds it dropped gets one more try on a new one.
        reused = self._client is not None and self._client.is_connected
        while True:
            if self._client is None or not self._client.is_connected:
                self._drop()
                self._client = await self._connect()
            try:
                await self._client.sendmail(sender, [mail.to], mail.data)
                return
            except aiosmtplib.SMTPRecipientsRefused:
                raise  # this mail's address is refused (the envelope was reset): the session goes on
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code != 421:
                    raise  # refused likewise; 421: the server is closing the channel
                self._drop()
                if not reused:
                    raise
            except aiosmtplib.SMTPServerDisconnected:
                self._drop()
                if not reused:
                    raise
            except BaseException:
                self._drop()  # a timeout or a cancellation mid-transaction: the session's state is unknown
                raise
            reused = False
            log.info("smtp_reconnecting", host=self.settings.smtp_host)

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
