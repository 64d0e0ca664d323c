"""Booking mails: a confirmation with an iCalendar invitation (METHOD:REQUEST) and a cancellation
(METHOD:CANCEL), to the visitor and to the owner.

Sent over SMTP when ``CALMESH_SMTP_HOST`` is set; otherwise written as ``.eml`` files to the mail
folder (``CALMESH_MAIL_DIR``, default ``$CALMESH_DATA_DIR/mail``) for a developer to open. File
names and Message-IDs derive from the event that caused the mail, so a retried delivery rewrites
the same file rather than adding one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import quopri
import smtplib
import ssl
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path

from calmesh_common.settings import Settings

from .domain import Booking, RuleError, zone

PRODID = "-//CalMesh//Booking//EN"


@dataclass(frozen=True, slots=True)
class Mail:
    """One message: `stem` names its file in the mail folder (stable across retries)."""

    stem: str
    to: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    email: str
    timezone: str


def _ics_text(value: str) -> str:
    """RFC 5545 TEXT escaping."""
    return (value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
            .replace("\r\n", "\\n").replace("\n", "\\n"))


def _ics_param(value: str) -> str:
    """A parameter value (CN=…): quoted, without the characters a quoted value cannot hold."""
    return '"' + value.replace('"', "'").replace("\r", " ").replace("\n", " ") + '"'


def _fold(line: str) -> str:
    """Fold a content line at 75 octets, never inside a UTF-8 sequence."""
    data = line.encode("utf-8")
    if len(data) <= 75:
        return line
    parts, chunk, size = [], [], 0
    limit = 75
    for ch in line:
        n = len(ch.encode("utf-8"))
        if size + n > limit:
            parts.append("".join(chunk))
            chunk, size, limit = [], 0, 74  # continuation lines start with a space
        chunk.append(ch)
        size += n
    parts.append("".join(chunk))
    return "\r\n ".join(parts)


def _ics_time(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def invitation_ics(booking: Booking, organizer: Person, method: str, *, now: datetime) -> bytes:
    """The booking as an iCalendar object: REQUEST when confirmed, CANCEL when cancelled.

    Written by hand (a dozen lines of RFC 5545): this runs for every booking and cancellation, and a
    general-purpose iCalendar library costs milliseconds each time. Tests read it back with
    `icalendar`."""
    description = f"Booked by {booking.name} <{booking.email}>."
    if booking.notes:
        description += f"\n\nNotes: {booking.notes}"
    visitor = Person(booking.name, booking.email, booking.timezone)
    lines = [
        "BEGIN:VCALENDAR",
        f"PRODID:{PRODID}",
        "VERSION:2.0",
        f"METHOD:{method}",
        "BEGIN:VEVENT",
        f"UID:{booking.id}@calmesh",
        f"DTSTAMP:{_ics_time(now)}",
        f"DTSTART:{_ics_time(booking.start)}",
        f"DTEND:{_ics_time(booking.end)}",
        f"SUMMARY:{_ics_text(f'{booking.title} with {booking.name}')}",
        f"DESCRIPTION:{_ics_text(description)}",
        f"SEQUENCE:{booking.sequence if method == 'REQUEST' else booking.sequence + 1}",
        f"STATUS:{'CONFIRMED' if method == 'REQUEST' else 'CANCELLED'}",
        f"ORGANIZER;CN={_ics_param(organizer.name)}:mailto:{organizer.email}",
    ]
    for person in (organizer, visitor):
        lines.append(f"ATTENDEE;CN={_ics_param(person.name)};ROLE=REQ-PARTICIPANT;PARTSTAT=ACCEPTED:mailto:{person.email}")
    lines += ["END:VEVENT", "END:VCALENDAR"]
    return ("\r\n".join(_fold(line) for line in lines) + "\r\n").encode("utf-8")


def _when(booking: Booking, tz_name: str) -> str:
    try:
        tz = zone(tz_name)
    except RuleError:
        tz, tz_name = UTC, "UTC"  # type: ignore[assignment]
    start, end = booking.start.astimezone(tz), booking.end.astimezone(tz)
    return f"{start:%A %d %B %Y, %H:%M}–{end:%H:%M} ({tz_name})"


def _one_line(value: str) -> str:
    """No line breaks in a header: visitors choose their names."""
    return " ".join(value.split())


def _header(value: str) -> str:
    value = _one_line(value)
    return value if value.isascii() else Header(value, "utf-8").encode()


def _address(person: Person) -> str:
    return formataddr((_one_line(person.name), _one_line(person.email)), charset="utf-8")


def _qp(text: str) -> str:
    """Quoted-printable with CRLF line ends: the text stays readable in a saved .eml file."""
    return quopri.encodestring(text.replace("\r\n", "\n").encode("utf-8")).decode("ascii").replace("\n", "\r\n")


def _b64(data: bytes) -> str:
    raw = base64.b64encode(data).decode("ascii")
    return "\r\n".join(raw[i:i + 76] for i in range(0, len(raw), 76))


def _message(
    *, sender: str, to: Person, subject: str, text: str, ics: bytes, method: str, message_id: str, now: datetime
) -> bytes:
    """The mail as RFC 5322 bytes: multipart/mixed [multipart/alternative [text/plain,
    text/calendar; method=…], the .ics as an attachment].

    Assembled directly: the standard library's email generator costs several milliseconds a
    message, too much for a consumer that may mail hundreds of bookings a second."""
    token = hashlib.sha256(message_id.encode()).hexdigest()[:24]
    outer, inner = f"calmesh-mixed-{token}", f"calmesh-alt-{token}"
    filename = "invite.ics" if method == "REQUEST" else "cancel.ics"
    parts = [
        f"From: {_one_line(sender)}",
        f"To: {_address(to)}",
        f"Subject: {_header(subject)}",
        f"Date: {format_datetime(now.astimezone(UTC))}",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{outer}"',
        "",
        f"--{outer}",
        f'Content-Type: multipart/alternative; boundary="{inner}"',
        "",
        f"--{inner}",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: quoted-printable",
        "",
        _qp(text),
        f"--{inner}",
        f'Content-Type: text/calendar; charset="utf-8"; method={method}',
        "Content-Transfer-Encoding: quoted-printable",
        "",
        _qp(ics.decode("utf-8")),
        f"--{inner}--",
        f"--{outer}",
        f'Content-Type: application/ics; name="{filename}"',
        f'Content-Disposition: attachment; filename="{filename}"',
        "Content-Transfer-Encoding: base64",
        "",
        _b64(ics),
        f"--{outer}--",
        "",
    ]
    return "\r\n".join(parts).encode("ascii")


def booking_mails(
    booking: Booking,
    *,
    owner: Person,
    settings: Settings,
    cancel_url: str | None,
    cause_id: str,
    now: datetime,
    previous: tuple[datetime, datetime] | None = None,
) -> list[Mail]:
    """The mails for the visitor and the owner: a confirmation or a cancellation; with `previous`
    (the old start and end), an updated invitation for a rescheduled booking (same UID, its
    SEQUENCE the booking's)."""
    confirmed = booking.status == "confirmed"
    method = "REQUEST" if confirmed else "CANCEL"
    sender = settings.mail_from
    organizer = owner if owner.email else Person(owner.name, parseaddr(sender)[1] or "bookings@calmesh.localhost", owner.timezone)
    ics = invitation_ics(booking, organizer, method, now=now)
    visitor = Person(booking.name, booking.email, booking.timezone)
    out: list[Mail] = []
    if confirmed:
        visitor_text = (
            f"Hello {booking.name},\n\nYour booking is confirmed: {booking.title} with {owner.name}\n"
            f"When: {_when(booking, visitor.timezone)}\n"
        )
        if cancel_url:
            visitor_text += f"\nNeed to cancel? {cancel_url}\n"
        owner_text = (
            f"New booking: {booking.title}\nWith: {booking.name} <{booking.email}>\n"
            f"When: {_when(booking, owner.timezone)}\n"
        )
        if booking.notes:
            owner_text += f"\nNotes:\n{booking.notes}\n"
        if booking.answers:
            owner_text += "\n" + "".join(f"{a.label}: {a.text()}\n" for a in booking.answers)
        visitor_subject = f"Confirmed: {booking.title} with {owner.name}"
        owner_subject = f"New booking: {booking.title} with {booking.name}"
        if previous is not None:
            was = replace(booking, start=previous[0], end=previous[1])
            visitor_text = (
                f"Hello {booking.name},\n\nYour booking has moved: {booking.title} with {owner.name}\n"
                f"When: {_when(booking, visitor.timezone)}\nWas: {_when(was, visitor.timezone)}\n"
            )
            owner_text = (
                f"Booking rescheduled: {booking.title} with {booking.name} <{booking.email}>\n"
                f"When: {_when(booking, owner.timezone)}\nWas: {_when(was, owner.timezone)}\n"
            )
            visitor_subject = f"Rescheduled: {booking.title} with {owner.name}"
            owner_subject = f"Rescheduled: {booking.title} with {booking.name}"
    else:
        reason = f"\nReason: {booking.cancel_reason}\n" if booking.cancel_reason else ""
        visitor_text = (
            f"Hello {booking.name},\n\nYour booking has been cancelled: {booking.title} with {owner.name}\n"
            f"Was: {_when(booking, visitor.timezone)}\n{reason}"
        )
        owner_text = (
            f"Booking cancelled: {booking.title} with {booking.name} <{booking.email}>\n"
            f"Was: {_when(booking, owner.timezone)}\nCancelled by: {booking.cancelled_by or 'unknown'}\n{reason}"
        )
        visitor_subject = f"Cancelled: {booking.title} with {owner.name}"
        owner_subject = f"Cancelled: {booking.title} with {booking.name}"
    kind = ("confirmed" if previous is None else f"rescheduled-{booking.sequence}") if confirmed else "cancelled"
    out.append(Mail(
        stem=f"{booking.id}-{kind}-visitor", to=visitor.email,
        data=_message(sender=sender, to=visitor, subject=visitor_subject, text=visitor_text, ics=ics, method=method,
                      message_id=f"<{cause_id}.visitor@calmesh>", now=now),
    ))
    if owner.email:
        out.append(Mail(
            stem=f"{booking.id}-{kind}-owner", to=owner.email,
            data=_message(sender=sender, to=owner, subject=owner_subject, text=owner_text, ics=ics, method=method,
                          message_id=f"<{cause_id}.owner@calmesh>", now=now),
        ))
    return out


class Mailer:
    """Delivers messages over SMTP, or into the mail folder when no SMTP host is set."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folder = Path(settings.mail_dir or os.path.join(settings.data_dir, "mail"))

    async def send(self, mail: Mail) -> None:
        if self.settings.smtp_host:
            await asyncio.to_thread(self._smtp, mail)
        else:
            await asyncio.to_thread(self._write, mail)

    def _write(self, mail: Mail) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".eml")
        with os.fdopen(fd, "wb") as fh:
            fh.write(mail.data)
        os.replace(tmp, self.folder / f"{mail.stem}.eml")

    def _smtp(self, mail: Mail) -> None:
        s = self.settings
        context = ssl.create_default_context()
        if s.smtp_security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=20, context=context)
        else:
            client = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=20)
        with client:
            if s.smtp_security == "starttls":
                client.starttls(context=context)
            if s.smtp_username:
                client.login(s.smtp_username, s.smtp_password)
            client.sendmail(parseaddr(s.mail_from)[1] or s.mail_from, [mail.to], mail.data)
