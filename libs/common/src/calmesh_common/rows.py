"""Reading a database row into a record whose fields are named like its columns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def same_named(row: Mapping[str, Any], *columns: str) -> dict[str, Any]:
    """The row's values of `columns`, keyed by the column names: the keyword arguments of a
    constructor whose fields are named like them (the others are passed beside them)."""
    return {c: row[c] for c in columns}
