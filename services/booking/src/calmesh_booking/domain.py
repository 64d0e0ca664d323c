"""The booking domain: slot rules, bookings, cancel links and polls. Pure: no I/O, no clock.

Every instant here is an aware UTC `datetime`. A page's hours are wall-clock times in the page's
timezone; they become instants day by day, so a DST change moves them in UTC but not on the wall.
Candidate slots step through real time from the start of each working interval (a 30-minute slot
is 30 real minutes long even across a transition).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from calmesh_common import hours as common_hours
from calmesh_common.hours import DAY_MINUTES, WEEKDAYS, Hours, HoursError
from calmesh_common.intervals import merge_spans

MAX_RANGE_DAYS = 366

Interval = tuple[datetime, datetime]


class RuleError(HoursError):
    """A booking page rule that cannot be used; `field` names where it is."""


# --- parsing and validating rules --------------------------------------------------------------


def zone(name: str, field: str = "timezone") -> ZoneInfo:
    """The IANA zone `name`; RuleError when there is none."""
    try:
        if not name or name.startswith(("/", ".")) or ".." in name:
            raise ZoneInfoNotFoundError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RuleError(field, f"unknown timezone {name!r} (expected an IANA name such as Europe/Amsterdam)") from None


def parse_hours(raw: Sequence[Sequence[str]], field: str) -> Hours:
    """[["09:00","12:00"], ...] to sorted, merged minute pairs (`calmesh_common.hours`); RuleError
    when a value is not such a range."""
    try:
        return common_hours.parse_hours(raw, field)
    except HoursError as exc:
        raise RuleError(exc.field, exc.message) from None


def format_hours(hours: Hours) -> list[list[str]]:
    return [[_fmt_minutes(a), _fmt_minutes(b)] for a, b in hours]


def _fmt_minutes(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True, slots=True)
class SlotRules:
    """What decides which slots a booking page offers."""

    timezone: ZoneInfo
    duration: timedelta
    interval: timedelta
    #: Indexed by `date.weekday()` (0 = Monday).
    weekly: tuple[Hours, ...]
    overrides: Mapping[date, Hours] = field(default_factory=dict)
    buffer_before: timedelta = timedelta(0)
    buffer_after: timedelta = timedelta(0)
    min_notice: timedelta = timedelta(0)
    max_days_ahead: int = 60

    def hours_on(self, day: date) -> Hours:
        """The hours of local `day`: its override if it has one, else its weekday's."""
        found = self.overrides.get(day)
        return found if found is not None else self.weekly[day.weekday()]


def build_rules(
    *,
    timezone: str,
    duration_minutes: int,
    slot_interval_minutes: int | None,
    weekly_hours: Mapping[str, Sequence[Sequence[str]]],
    date_overrides: Sequence[Mapping[str, object]] = (),
    buffer_before_minutes: int = 0,
    buffer_after_minutes: int = 0,
    min_notice_minutes: int = 0,
    max_days_ahead: int = 60,
) -> SlotRules:
    """Validate a page's settings and turn them into SlotRules (RuleError on a bad value)."""
    tz = zone(timezone)
    unknown = sorted(set(weekly_hours) - set(WEEKDAYS))
    if unknown:
        raise RuleError("weekly_hours", f"unknown day {unknown[0]!r}; days are {', '.join(WEEKDAYS)}")
    weekly = tuple(parse_hours(weekly_hours.get(d, ()), f"weekly_hours.{d}") for d in WEEKDAYS)
    overrides: dict[date, Hours] = {}
    for i, item in enumerate(date_overrides):
        where = f"date_overrides[{i}]"
        raw_date = item.get("date")
        try:
            day = date.fromisoformat(str(raw_date))
        except ValueError:
            raise RuleError(f"{where}.date", f"{raw_date!r} is not a date YYYY-MM-DD") from None
        if day in overrides:
            raise RuleError(f"{where}.date", f"{day} has two overrides")
        overrides[day] = parse_hours(item.get("hours", ()), f"{where}.hours")  # type: ignore[arg-type]
    interval = slot_interval_minutes or duration_minutes
    for name, value, low, high in (
        ("duration_minutes", duration_minutes, 5, DAY_MINUTES),
        ("slot_interval_minutes", interval, 5, DAY_MINUTES),
        ("buffer_before_minutes", buffer_before_minutes, 0, DAY_MINUTES),
        ("buffer_after_minutes", buffer_after_minutes, 0, DAY_MINUTES),
        ("min_notice_minutes", min_notice_minutes, 0, 365 * DAY_MINUTES),
        ("max_days_ahead", max_days_ahead, 1, 730),
    ):
        if not low <= value <= high:
            raise RuleError(name, f"must be between {low} and {high}, got {value}")
    return SlotRules(
        timezone=tz,
        duration=timedelta(minutes=duration_minutes),
        interval=timedelta(minutes=interval),
        weekly=weekly,
        overrides=overrides,
        buffer_before=timedelta(minutes=buffer_before_minutes),
        buffer_after=timedelta(minutes=buffer_after_minutes),
        min_notice=timedelta(minutes=min_notice_minutes),
        max_days_ahead=max_days_ahead,
    )


# --- instants and days -------------------------------------------------------------------------


def local_instant(day: date, minutes: int, tz: ZoneInfo) -> datetime:
    """Wall-clock `minutes` after midnight of `day` in `tz`, as a UTC instant.

    A wall time that does not exist (the hour skipped in spring) is read with the offset before the
    change, so 02:30 on a skipped 02:00–03:00 becomes 03:30; an ambiguous one (autumn) is the first.
    """
    return datetime.fromtimestamp(common_hours.local_instant(day, minutes, tz), UTC)


def day_window(first: date, last: date, tz: ZoneInfo) -> Interval:
    """[first 00:00, the day after last 00:00) in `tz`: both dates inclusive."""
    return local_instant(first, 0, tz), local_instant(last + timedelta(days=1), 0, tz)


def all_day_interval(start: date, end: date, tz: ZoneInfo) -> Interval:
    """An all-day event (end date exclusive) as the instants it covers in `tz`."""
    return local_instant(start, 0, tz), local_instant(max(end, start + timedelta(days=1)), 0, tz)


def working_intervals(rules: SlotRules, first: date, last: date) -> list[Interval]:
    """The page's hours on local days first..last (inclusive) as UTC instants, in order."""
    out: list[Interval] = []
    day = first
    while day <= last:
        for a, b in rules.hours_on(day):
            out.append((local_instant(day, a, rules.timezone), local_instant(day, b, rules.timezone)))
        day += timedelta(days=1)
    return out


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, with overlapping and touching intervals merged; empty ones dropped."""
    spans = merge_spans(sorted((_epoch(s), _epoch(e)) for s, e in intervals))
    return [(_from_epoch(s), _from_epoch(e)) for s, e in spans]


def _epoch(dt: datetime) -> int:
    return int(dt.timestamp())


def _from_epoch(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class BusyTime:
    """Merged busy time answering "does [a, b) overlap anything?" in O(log n).

    Built from datetime intervals or from epoch-second spans (what the store reads); merged with
    the shared interval engine (`calmesh_common.intervals.merge_spans`)."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, intervals: Iterable[Interval] = (), spans: Iterable[tuple[int, int]] = ()) -> None:
        all_spans = [(_epoch(s), _epoch(e)) for s, e in intervals]
        all_spans.extend(spans)
        all_spans.sort()
        merged = merge_spans(all_spans)
        self._starts = [s for s, _ in merged]
        self._ends = [e for _, e in merged]

    def overlaps(self, start: datetime, end: datetime) -> bool:
        # Merged spans are disjoint and sorted, so their ends are sorted too.
        a = start.timestamp()
        i = bisect_right(self._ends, a)
        return i < len(self._starts) and self._starts[i] < end.timestamp()

    def spans(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)


def busy_query_range(rules: SlotRules, window_start: datetime, window_end: datetime) -> Interval:
    """The span of busy time that can touch slots starting in [window_start, window_end)."""
    return window_start - rules.buffer_before, window_end + rules.duration + rules.buffer_after


# --- slots -------------------------------------------------------------------------------------


def compute_slot_spans(
    rules: SlotRules,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
    busy: BusyTime | Iterable[Interval],
) -> list[tuple[int, int]]:
    """The slots that start in [window_start, window_end) and are offered at `now`, as epoch-second
    spans [start, end).

    A slot is offered when it lies inside one day's hours in the page's timezone, starts at least
    `min_notice` after `now` and before `now + max_days_ahead` days, and
    [start − buffer_before, end + buffer_after) overlaps no busy time.
    """
    if not isinstance(busy, BusyTime):
        busy = BusyTime(busy)
    earliest_dt = max(window_start, now + rules.min_notice)
    latest_dt = min(window_end, now + timedelta(days=rules.max_days_ahead))
    if latest_dt <= earliest_dt:
        return []
    tz = rules.timezone
    first = earliest_dt.astimezone(tz).date()
    last = (latest_dt - timedelta(microseconds=1)).astimezone(tz).date()
    earliest, latest = _ceil_epoch(earliest_dt), _ceil_epoch(latest_dt)
    duration = int(rules.duration.total_seconds())
    step = int(rules.interval.total_seconds())
    before = int(rules.buffer_before.total_seconds())
    after = int(rules.buffer_after.total_seconds())
    starts, ends = busy._starts, busy._ends
    n, i = len(starts), 0
    slots: list[tuple[int, int]] = []
    append = slots.append
    # Working intervals come in time order and candidates only move forward, so one pointer
    # into the merged busy spans serves the whole sweep.
    for open_dt, close_dt in working_intervals(rules, first, last):
        open_at, close_at = _epoch(open_dt), _epoch(close_dt)
        if close_at <= earliest or open_at >= latest:
            continue
        t = open_at
        if t < earliest:
            t = open_at + -((open_at - earliest) // step) * step  # first aligned start >= earliest
        while t + duration <= close_at and t < latest:
            lo, hi = t - before, t + duration + after
            while i < n and ends[i] <= lo:
                i += 1
            if i >= n or starts[i] >= hi:
                append((t, t + duration))
            t += step
    return slots


def _ceil_epoch(dt: datetime) -> int:
    ts = dt.timestamp()
    whole = int(ts)
    return whole if whole == ts else whole + 1


def compute_slots(
    rules: SlotRules,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
    busy: BusyTime | Iterable[Interval],
) -> list[Interval]:
    """`compute_slot_spans` as datetime intervals."""
    return [(_from_epoch(s), _from_epoch(e)) for s, e in compute_slot_spans(rules, window_start, window_end, now, busy)]


def is_offered(rules: SlotRules, start: datetime, now: datetime, busy: BusyTime | Iterable[Interval]) -> bool:
    """Whether a slot starting exactly at `start` is offered at `now` given `busy`."""
    slots = compute_slots(rules, start, start + timedelta(seconds=1), now, busy)
    return bool(slots) and slots[0][0] == start


# --- bookings ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Booking:
    id: str
    page_id: str
    page_slug: str
    user_id: str
    calendar_slug: str
    title: str
    start: datetime
    end: datetime
    name: str
    email: str
    notes: str
    timezone: str
    #: "pending" (checked, its time not yet in the projection) | "confirmed" | "cancelled", or on a
    #: page requiring e-mail verification "pending_verification" (slot held, link mailed) | "expired"
    status: str
    created_at: datetime
    event_id: str | None = None
    cancelled_at: datetime | None = None
    cancelled_by: str | None = None
    cancel_reason: str | None = None
    #: Reschedules so far: the SEQUENCE of its invitation.
    sequence: int = 0
    #: Made on a page that requires e-mail verification: until when its verification link works.
    verify_until: datetime | None = None
    #: The visitor's answers to the page's questions, in the page's order.
    answers: tuple[AnswerLine, ...] = ()
    #: Why the provider write failed for good (None: written, or still pending).
    calendar_write_error: str | None = None

    @property
    def calendar_write(self) -> str:
        """Where the booking's provider event stands: written | pending | failed."""
        if self.event_id:
            return "written"
        return "failed" if self.calendar_write_error else "pending"


_EMAIL = re.compile(r"^[^@\s<>\"',;]+@[^@\s<>\"',;]+\.[^@\s<>\"',;]+$")


def valid_email(value: str) -> bool:
    return len(value) <= 254 and bool(_EMAIL.match(value))


# --- cancel links ------------------------------------------------------------------------------


def cancel_signature(secret: bytes, booking_id: str, exp: int, purpose: str = "cancel") -> str:
    """HMAC-SHA256 over the link's purpose (``cancel`` or ``reschedule``: a link of one purpose is
    no good for the other), the booking id and the expiry (Unix seconds), base64url without padding."""
    mac = hmac.new(secret, f"{purpose}\x1f{booking_id}\x1f{exp}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def reschedule_signature(secret: bytes, booking_id: str, exp: int) -> str:
    return cancel_signature(secret, booking_id, exp, "reschedule")


def verify_cancel_signature(secret: bytes, booking_id: str, exp: str | int, sig: str, now: datetime,
                            purpose: str = "cancel") -> str | None:
    """None when `sig` is right for (purpose, booking_id, exp) and `exp` is still ahead; else why not."""
    try:
        exp_value = int(exp)
    except (TypeError, ValueError):
        return "malformed"
    expected = cancel_signature(secret, booking_id, exp_value, purpose)
    if not hmac.compare_digest(expected.encode(), sig.encode()):
        return "bad_signature"
    if exp_value <= int(now.timestamp()):
        return "expired"
    return None


def cancel_link_expiry(booking_end: datetime, now: datetime, lifetime: timedelta) -> int:
    """When a visitor's cancel link stops working: its lifetime after booking, but at least until
    the meeting has ended."""
    return int(max(now + lifetime, booking_end).timestamp())


# --- polls -------------------------------------------------------------------------------------

CHOICES = ("yes", "maybe", "no")


@dataclass(frozen=True, slots=True)
class PollOption:
    id: str
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Vote:
    name: str
    choices: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class OptionTally:
    option_id: str
    start: datetime
    end: datetime
    yes: int
    maybe: int
    no: int
    available: list[str]
    if_need_be: list[str]
    calendar_busy: bool


def tally(options: Sequence[PollOption], votes: Sequence[Vote], busy: BusyTime | Iterable[Interval]) -> list[OptionTally]:
    """Counts per option, with the names of who said yes and maybe, and calendar clashes."""
    if not isinstance(busy, BusyTime):
        busy = BusyTime(busy)
    out = []
    for option in options:
        said = {c: [v.name for v in votes if v.choices.get(option.id) == c] for c in CHOICES}
        out.append(
            OptionTally(
                option_id=option.id,
                start=option.start,
                end=option.end,
                yes=len(said["yes"]),
                maybe=len(said["maybe"]),
                no=len(said["no"]),
                available=said["yes"],
                if_need_be=said["maybe"],
                calendar_busy=busy.overlaps(option.start, option.end),
            )
        )
    return out


def best_option(tallies: Sequence[OptionTally]) -> str | None:
    """Most yes, then most maybe, then no calendar clash, then the earliest start."""
    if not tallies:
        return None
    best = min(tallies, key=lambda t: (-t.yes, -t.maybe, t.calendar_busy, t.start, t.option_id))
    return best.option_id


# --- questions and answers ---------------------------------------------------------------------

QUESTION_TYPES: tuple[str, ...] = ("text", "textarea", "email", "phone", "select", "checkbox")
MAX_QUESTIONS = 20
MAX_LABEL_CHARS = 200
MAX_OPTIONS = 50
MAX_OPTION_CHARS = 200
#: The longest answer of each kind that takes a string (a select's is its longest option).
ANSWER_LIMITS: Mapping[str, int] = {"text": 1000, "textarea": 5000, "email": 254, "phone": 40}

_QUESTION_ID = re.compile(r"^[a-z0-9_]{1,40}$")
_PHONE = re.compile(r"^\+?[0-9 ().\-/]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Question:
    """One field a booking page asks the visitor for, besides name, email and notes."""

    id: str
    label: str
    type: str
    required: bool = False
    #: The choices of a `select` (None for every other type).
    options: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"id": self.id, "label": self.label, "type": self.type, "required": self.required}
        if self.options is not None:
            doc["options"] = list(self.options)
        return doc


@dataclass(frozen=True, slots=True)
class AnswerLine:
    """A visitor's answer to one question, with the label it was asked under (kept on the booking,
    so the description and mails read the same after the page's questions change)."""

    id: str
    label: str
    type: str
    value: str | bool

    def text(self) -> str:
        """The value as a person reads it."""
        if isinstance(self.value, bool):
            return "Yes" if self.value else "No"
        return self.value


FieldProblems = list[tuple[str, str]]


def parse_questions(raw: Sequence[Mapping[str, object]]) -> tuple[tuple[Question, ...], FieldProblems]:
    """A page's `questions` setting as Questions, and every rule it breaks as (field, message)
    pairs (``questions[2].id``): ids `[a-z0-9_]{1,40}` and unique, a known type, a label of 1 to
    200 characters, options (1 to 50 distinct non-empty strings) for `select` and only for it, at
    most 20 questions."""
    problems: FieldProblems = []
    if len(raw) > MAX_QUESTIONS:
        problems.append(("questions", f"a page asks at most {MAX_QUESTIONS} questions, got {len(raw)}"))
        return (), problems
    out: list[Question] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"questions[{i}]"
        qid, label, qtype = item.get("id"), item.get("label"), item.get("type")
        options = item.get("options")
        if not isinstance(qid, str) or not _QUESTION_ID.match(qid):
            problems.append((f"{where}.id", "must be 1 to 40 lowercase letters, digits or underscores"))
        elif qid in seen:
            problems.append((f"{where}.id", f"{qid!r} is the id of an earlier question"))
        else:
            seen.add(qid)
        label_text = " ".join(label.split()) if isinstance(label, str) else ""
        if not 1 <= len(label_text) <= MAX_LABEL_CHARS:
            problems.append((f"{where}.label", f"must be 1 to {MAX_LABEL_CHARS} characters"))
        if qtype not in QUESTION_TYPES:
            problems.append((f"{where}.type", f"must be one of {', '.join(QUESTION_TYPES)}"))
        choices: tuple[str, ...] | None = None
        if qtype == "select":
            if not isinstance(options, list | tuple) or not options:
                problems.append((f"{where}.options", "a select question needs a non-empty list of options"))
            elif len(options) > MAX_OPTIONS:
                problems.append((f"{where}.options", f"a select question has at most {MAX_OPTIONS} options"))
            else:
                cleaned = [" ".join(o.split()) if isinstance(o, str) else "" for o in options]
                bad = next((n for n, o in enumerate(cleaned) if not 1 <= len(o) <= MAX_OPTION_CHARS), None)
                if bad is not None:
                    problems.append((f"{where}.options[{bad}]", f"must be a string of 1 to {MAX_OPTION_CHARS} characters"))
                elif len(set(cleaned)) != len(cleaned):
                    problems.append((f"{where}.options", "holds the same option twice"))
                else:
                    choices = tuple(cleaned)
        elif options is not None and qtype in QUESTION_TYPES:
            problems.append((f"{where}.options", "only a select question has options"))
        out.append(Question(id=str(qid), label=label_text, type=str(qtype), required=item.get("required") is True,
                            options=choices))
    return (tuple(out) if not problems else ()), problems


def questions_of(stored: Sequence[Mapping[str, object]] | None) -> tuple[Question, ...]:
    """The questions of a stored page (validated when written)."""
    return tuple(
        Question(id=str(q["id"]), label=str(q["label"]), type=str(q["type"]), required=bool(q.get("required")),
                 options=tuple(q["options"]) if q.get("options") is not None else None)  # type: ignore[arg-type]
        for q in stored or ()
    )


def _phone_ok(value: str) -> bool:
    if not _PHONE.match(value) or "+" in value[1:]:
        return False
    return 5 <= sum(ch.isdigit() for ch in value) <= 15


def check_answers(questions: Sequence[Question], answers: Mapping[str, object]) -> tuple[tuple[AnswerLine, ...], FieldProblems]:
    """The visitor's answers as AnswerLines in the page's order, and what is wrong with them as
    (``answers.<id>``, message) pairs: a missing required answer (an empty string, or an unchecked
    required checkbox), an id the page does not ask, a wrong type (a string, or a boolean for a
    checkbox), a value outside a select's options, a bad email or phone number, or a text over its
    limit. A null or empty answer to an optional question is no answer."""
    problems: FieldProblems = []
    asked = {q.id for q in questions}
    lines: list[AnswerLine] = []
    for q in questions:
        where = f"answers.{q.id}"
        value = answers.get(q.id)
        if q.type == "checkbox":
            if value is None:
                if q.required:
                    problems.append((where, "is required"))
                continue
            if not isinstance(value, bool):
                problems.append((where, "must be true or false"))
                continue
            if q.required and not value:
                problems.append((where, "must be checked"))
                continue
            lines.append(AnswerLine(q.id, q.label, q.type, value))
            continue
        if value is not None and not isinstance(value, str):
            problems.append((where, "must be a string"))
            continue
        text = _CONTROL.sub("", value or "")
        # One line for everything but a textarea (the description holds one "label: value" line each).
        text = text.strip() if q.type == "textarea" else " ".join(text.split())
        if not text:
            if q.required:
                problems.append((where, "is required"))
            continue
        limit = ANSWER_LIMITS.get(q.type)
        if limit is not None and len(text) > limit:
            problems.append((where, f"must be at most {limit} characters"))
        elif q.type == "email" and not valid_email(text):
            problems.append((where, "is not an email address"))
        elif q.type == "phone" and not _phone_ok(text):
            problems.append((where, "is not a phone number"))
        elif q.type == "select" and text not in (q.options or ()):
            problems.append((where, "must be one of the question's options"))
        else:
            lines.append(AnswerLine(q.id, q.label, q.type, text))
    for key in answers:
        if key not in asked:
            problems.append((f"answers.{key}", "is not a question of this page"))
    return tuple(lines), problems
