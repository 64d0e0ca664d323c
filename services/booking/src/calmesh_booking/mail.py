"""Booking mails: a confirmation with an iCalendar invitation (METHOD:REQUEST) and a cancellation
(METHOD:CANCEL), to the visitor and to the owner.

Sent over SMTP when ``CALMESH_SMTP_HOST`` is set; otherwise written as ``.eml`` files to the mail
folder (``CALMESH_MAIL_DIR``, default ``$CALMESH_DATA_DIR/mail``) for a developer to open. File
names and Message-IDs derive from the event that caused the mail, so a retried delivery rewrites
the same file rather than adding one.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import ssl
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formataddr, format_datetime, parseaddr
from pathlib import Path

from icalendar import Calendar, Event, vCalAddress, vText

from calmesh_common.settings import Settings

from .domain import Booking, RuleError, zone

PRODID = "-//CalMesh//Booking//EN"


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    email: str
    timezone: str


def invitation_ics(booking: Booking, organizer: Person, method: str, *, now: datetime) -> bytes:
    """The booking as an iCalendar object: REQUEST when confirmed, CANCEL when cancelled."""
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("method", method)
    ev = Event()
    ev.add("uid", f"{booking.id}@calmesh")
    ev.add("dtstamp", now.astimezone(UTC))
    ev.add("dtstart", booking.start.astimezone(UTC))
    ev.add("dtend", booking.end.astimezone(UTC))
    ev.add("summary", f"{booking.title} with {booking.name}")
    description = f"Booked by {booking.name} <{booking.email}>."
    if booking.notes:
        description += f"\n\nNotes: {booking.notes}"
    ev.add("description", description)
    ev.add("sequence", 0 if method == "REQUEST" else 1)
    ev.add("status", "CONFIRMED" if method == "REQUEST" else "CANCELLED")
    org = vCalAddress(f"mailto:{organizer.email}")
    org.params["cn"] = vText(organizer.name)
    ev["organizer"] = org
    for person, partstat in ((organizer, "ACCEPTED"), (Person(booking.name, booking.email, booking.timezone), "ACCEPTED")):
        att = vCalAddress(f"mailto:{person.email}")
        att.params["cn"] = vText(person.name)
        att.params["role"] = vText("REQ-PARTICIPANT")
        att.params["partstat"] = vText(partstat)
        ev.add("attendee", att, encode=0)
    cal.add_component(ev)
    return cal.to_ical()


def _when(booking: Booking, tz_name: str) -> str:
    try:
        tz = zone(tz_name)
    except RuleError:
        tz, tz_name = UTC, "UTC"  # type: ignore[assignment]
    start, end = booking.start.astimezone(tz), booking.end.astimezone(tz)
    return f"{start:%A %d %B %Y, %H:%M}–{end:%H:%M} ({tz_name})"


def _message(
    *, sender: str, to: Person, subject: str, text: str, ics: bytes, method: str, message_id: str, now: datetime
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = formataddr((to.name, to.email))
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now.astimezone(UTC))
    msg["Message-ID"] = message_id
    msg.set_content(text)
    msg.add_alternative(ics.decode("utf-8"), subtype="calendar", params={"method": method})
    msg.add_attachment(
        ics, maintype="application", subtype="ics",
        filename="invite.ics" if method == "REQUEST" else "cancel.ics",
    )
    return msg


def booking_mails(
    booking: Booking,
    *,
    owner: Person,
    settings: Settings,
    cancel_url: str | None,
    cause_id: str,
    now: datetime,
) -> list[tuple[str, EmailMessage]]:
    """(file stem, message) for the visitor and the owner: a confirmation or a cancellation."""
    confirmed = booking.status == "confirmed"
    method = "REQUEST" if confirmed else "CANCEL"
    sender = settings.mail_from
    organizer = owner if owner.email else Person(owner.name, parseaddr(sender)[1] or "bookings@calmesh.localhost", owner.timezone)
    ics = invitation_ics(booking, organizer, method, now=now)
    visitor = Person(booking.name, booking.email, booking.timezone)
    out: list[tuple[str, EmailMessage]] = []
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
        visitor_subject = f"Confirmed: {booking.title} with {owner.name}"
        owner_subject = f"New booking: {booking.title} with {booking.name}"
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
    out.append(
        (
            f"{booking.id}-{'confirmed' if confirmed else 'cancelled'}-visitor",
            _message(sender=sender, to=visitor, subject=visitor_subject, text=visitor_text, ics=ics, method=method,
                     message_id=f"<{cause_id}.visitor@calmesh>", now=now),
        )
    )
    if owner.email:
        out.append(
            (
                f"{booking.id}-{'confirmed' if confirmed else 'cancelled'}-owner",
                _message(sender=sender, to=owner, subject=owner_subject, text=owner_text, ics=ics, method=method,
                         message_id=f"<{cause_id}.owner@calmesh>", now=now),
            )
        )
    return out


class Mailer:
    """Delivers messages over SMTP, or into the mail folder when no SMTP host is set."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folder = Path(settings.mail_dir or os.path.join(settings.data_dir, "mail"))

    async def send(self, stem: str, msg: EmailMessage) -> None:
        if self.settings.smtp_host:
            await asyncio.to_thread(self._smtp, msg)
        else:
            await asyncio.to_thread(self._write, stem, msg)

    def _write(self, stem: str, msg: EmailMessage) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = msg.as_bytes()
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".eml")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self.folder / f"{stem}.eml")

    def _smtp(self, msg: EmailMessage) -> None:
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
            client.send_message(msg)
