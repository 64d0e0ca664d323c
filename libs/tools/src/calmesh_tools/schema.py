"""JSON Schema pieces the tool definitions are written with, and the shapes of ids and slugs.

An id or slug argument is checked against its pattern before anything is sent (issue 10.4): a value
such as ``"../webhooks/wh_…"`` can never reach a URL.
"""

from __future__ import annotations

from typing import Any

_ID = "[A-Za-z0-9]{1,64}"
SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
HANDLE_PATTERN = r"^[a-z0-9-]{3,40}$"
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"

#: Each id kind: its pattern and the words a tool error uses for it.
ID_KINDS: dict[str, tuple[str, str]] = {
    "conn": (rf"^conn_{_ID}$", "a connection id (conn_…)"),
    "bk": (rf"^bk_{_ID}$", "a booking id (bk_…)"),
    "poll": (rf"^poll_{_ID}$", "a poll id (poll_…)"),
    "opt": (rf"^opt_{_ID}$", "a poll option id (opt_…)"),
    "src": (rf"^src_{_ID}$", "a source id (src_…)"),
    "evt": (rf"^evt_{_ID}$", "an event id (evt_…)"),
}

#: pattern -> what a value must be, for error messages that say it in words.
PATTERN_WORDS: dict[str, str] = {pattern: words for pattern, words in ID_KINDS.values()}
PATTERN_WORDS[SLUG_PATTERN] = "a slug: 1 to 64 of a-z, 0-9 and -, not starting or ending with -"
PATTERN_WORDS[HANDLE_PATTERN] = "a handle: 3 to 40 of a-z, 0-9 and -"
PATTERN_WORDS[DATE_PATTERN] = "a date, YYYY-MM-DD"


def string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def ident(kind: str, description: str) -> dict[str, Any]:
    pattern, _ = ID_KINDS[kind]
    return {"type": "string", "description": description, "pattern": pattern}


def slug(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description, "pattern": SLUG_PATTERN}


def slugs(description: str, max_items: int = 20) -> dict[str, Any]:
    """A list of calendar slugs, each checked like one."""
    return {"type": "array", "description": description, "items": {"type": "string", "pattern": SLUG_PATTERN},
            "minItems": 1, "maxItems": max_items}


def handle(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description, "pattern": HANDLE_PATTERN}


def instant(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "date-time", "description": description}


def day(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description, "pattern": DATE_PATTERN}


def timezone(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description, "minLength": 1, "maxLength": 64}


def integer(description: str, minimum: int, maximum: int, default: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer", "description": description, "minimum": minimum, "maximum": maximum}
    if default is not None:
        out["default"] = default
    return out


def boolean(description: str, default: bool = False) -> dict[str, Any]:
    return {"type": "boolean", "description": description, "default": default}


def choice(description: str, *values: str) -> dict[str, Any]:
    return {"type": "string", "description": description, "enum": list(values)}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/$defs/{name}"}


def obj(properties: dict[str, Any], required: tuple[str, ...] = (), defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """An input schema: an object of these properties, nothing else."""
    out: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    if defs:
        out["$defs"] = defs
    return out


LIMIT = integer("How many items per page, 1 to 200. Default 50.", 1, 200, 50)
CURSOR = string("The next_cursor of a previous page, to get the page after it. Omit for the first page.")
CALENDAR_SLUG = slug("Slug of a unified calendar, as calmesh_list_calendars shows it (e.g. work).")
PAGE_SLUG = slug("Slug of the booking page (e.g. intro-call).")

TIME_RANGE = {
    "type": "object",
    "description": "A candidate time: start and end in RFC 3339.",
    "properties": {"start": instant("Start, RFC 3339 with an offset."), "end": instant("End, RFC 3339 with an offset.")},
    "required": ["start", "end"],
    "additionalProperties": False,
}
SOURCE_REF = {
    "type": "object",
    "description": "A connection to merge, and optionally one of its calendars.",
    "properties": {
        "connection_id": ident("conn", "The connection (conn_…)."),
        "calendar_id": string("One calendar of that connection, as the connection lists it; omit for all of them.",
                              maxLength=100),
    },
    "required": ["connection_id"],
    "additionalProperties": False,
}
