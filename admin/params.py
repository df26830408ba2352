"""Parsing what callers send (query strings, forms, JSON bodies) into plain values.

Every parser raises backend.errors.ValidationError with a clear message: bad input is a 400,
never a 500, and never reaches the ledger as anything but a plain string, number or date.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from admin.timefmt import json_default
from backend.errors import ValidationError
from backend.ledger import as_aware
from backend.values import Status

MAX_PER_PAGE = 200
DEFAULT_PER_PAGE = 50
MAX_FILTER = 200


def text_filter(args: Mapping[str, Any], name: str) -> str | None:
    value = args.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be text")
    value = value.strip()
    if len(value) > MAX_FILTER:
        raise ValidationError(f"{name} is longer than {MAX_FILTER} characters")
    return value or None


def int_param(args: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    raw = args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise ValidationError(f"{name} must be between {lo} and {hi}")
    return value


def date_param(args: Mapping[str, Any], name: str, *, end_of_day: bool = False) -> datetime | None:
    """'2024-05-01' or an ISO 8601 date-time; naive values are UTC. For a bare date used as an
    upper bound, the whole day is included."""
    raw = text_filter(args, name)
    if raw is None:
        return None
    message = f"{name} must be a date (YYYY-MM-DD) or an ISO 8601 date-time"
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            value = datetime.combine(day, time.min, tzinfo=timezone.utc)
            return value + timedelta(days=1) if end_of_day else value
        # Converted to UTC here, so that an offset near the ends of the calendar is refused now
        # rather than overflowing later in a comparison or a query.
        return as_aware(datetime.fromisoformat(raw.replace("Z", "+00:00"))).astimezone(timezone.utc)
    except OverflowError:
        raise ValidationError(f"{message} within the years 1 to 9999 (UTC)") from None
    except ValueError:
        raise ValidationError(message) from None


@dataclass(frozen=True)
class Page:
    number: int
    per_page: int

    @property
    def skip(self) -> int:
        return (self.number - 1) * self.per_page

    def count(self, total: int | None) -> int:
        """Pages for `total` items; None (the ledger could only say "more than shown"): this page
        and one more."""
        if total is None:
            return self.number + 1
        return max(1, -(-total // self.per_page))


def page_param(args: Mapping[str, Any], default_per_page: int = DEFAULT_PER_PAGE) -> Page:
    return Page(int_param(args, "page", 1, 1, 1_000_000), int_param(args, "per_page", default_per_page, 1, MAX_PER_PAGE))


# `sort=` of a message list: the ledger orders by creation time (then sequence number).
SORTS = {"newest": True, "oldest": False}
DEFAULT_SORT = "newest"


@dataclass(frozen=True)
class MessageFilter:
    status: str | None = None
    event: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None
    sort: str = DEFAULT_SORT

    @property
    def newest_first(self) -> bool:
        return SORTS[self.sort]

    def query_args(self) -> dict[str, str]:
        """The filter as query-string arguments, for pagination links."""
        out = {"status": self.status, "event": self.event, "q": self.text,
               "since": self.since.isoformat() if self.since else None,
               "until": self.until.isoformat() if self.until else None,
               "sort": self.sort if self.sort != DEFAULT_SORT else None}
        return {k: v for k, v in out.items() if v}


def message_filter(args: Mapping[str, Any]) -> MessageFilter:
    status = text_filter(args, "status")
    if status is not None and status not in {s.value for s in Status}:
        raise ValidationError(f"status must be one of {', '.join(s.value for s in Status)}")
    return MessageFilter(
        status=status,
        event=text_filter(args, "event"),
        since=date_param(args, "since"),
        until=date_param(args, "until", end_of_day=True),
        text=text_filter(args, "q"),
        sort=sort_param(args),
    )


def sort_param(args: Mapping[str, Any]) -> str:
    """`sort=newest` (the default) or `sort=oldest`."""
    value = text_filter(args, "sort") or DEFAULT_SORT
    if value not in SORTS:
        raise ValidationError(f"sort must be one of {', '.join(SORTS)}")
    return value


def parse_json_text(raw: Any, what: str = "payload") -> Any:
    """The operator's edited JSON, from a textarea."""
    if not isinstance(raw, str) or not raw.strip():
        raise ValidationError(f"{what} is required (JSON text)")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                              [{"path": "$", "message": f"{exc.msg} (line {exc.lineno}, column {exc.colno})"}]) from None
    except RecursionError:
        raise ValidationError(f"{what} is nested too deeply") from None
    except ValueError as exc:
        # An integer of more than 4,300 digits (Python's int max_str_digits). Python's advice
        # after the ';' (sys.set_int_max_str_digits) is not for the operator.
        reason = str(exc).split(";")[0]
        raise ValidationError(f"{what} is not valid JSON: {reason}", [{"path": "$", "message": reason}]) from None


def pretty_json(value: Any) -> str:
    """Indented JSON for pages; a datetime (audit details, actor documents) in the console's ISO form."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=json_default)
