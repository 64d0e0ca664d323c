"""A WHERE clause built from optional conditions, each numbering its own ``$n`` parameters.

    w = Where("user_id = $1", args=[user_id])
    w.add_if(status, "status = {}")
    w.add_if(after, "(start_at, id) > ({}, {})")
    await conn.fetch(f"SELECT ... WHERE {w} ORDER BY ... LIMIT {w.param(limit)}", *w.args)

Conditions are this code's own text; only the values travel as parameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class Where:
    def __init__(self, *conditions: str, args: Iterable[Any] = ()) -> None:
        self.conditions = list(conditions)
        self.args = list(args)

    def param(self, value: Any) -> str:
        """Add `value` as the next parameter; its placeholder (``$n``)."""
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, condition: str, *values: Any) -> Where:
        """Add `condition`, whose ``{}`` stand for `values` in order."""
        self.conditions.append(condition.format(*(self.param(v) for v in values)))
        return self

    def add_if(self, value: Any, condition: str) -> Where:
        """`add` when `value` is not None; a tuple gives one parameter per item."""
        if value is not None:
            self.add(condition, *(value if isinstance(value, tuple) else (value,)))
        return self

    def __str__(self) -> str:
        return " AND ".join(self.conditions)
