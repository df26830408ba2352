"""Checks on what callers hand us as a payload: JSON only, bounded in size and depth, storable."""
from __future__ import annotations

import json
from typing import Any

from backend.errors import PayloadTooLarge, ValidationError

MAX_DEPTH = 64  # MongoDB refuses documents nested deeper than 100 levels; keep room for the envelope


def normalise(payload: Any, max_bytes: int) -> Any:
    """Return the payload as JSON would give it back (tuples become lists...).

    Raises ValidationError (not JSON serialisable, NaN, too deep, keys MongoDB cannot store)
    or PayloadTooLarge.
    """
    try:
        text = json.dumps(payload, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"payload is not JSON serialisable: {exc}") from None
    except RecursionError:
        raise ValidationError(f"payload is nested deeper than {MAX_DEPTH} levels") from None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise PayloadTooLarge(f"payload is {size} bytes, the limit is {max_bytes} bytes")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("payload contains invalid Unicode (lone surrogates)") from None
    value = json.loads(text)
    _check(value, 0, "$")
    return value


def _check(value: Any, depth: int, path: str) -> None:
    if depth > MAX_DEPTH:
        raise ValidationError(f"payload is nested deeper than {MAX_DEPTH} levels (at {path[:80]})")
    if isinstance(value, dict):
        for key, item in value.items():
            if key.startswith("$") or "\x00" in key:
                raise ValidationError(f"payload key {key[:40]!r} at {path[:80]} cannot start with '$' or contain NUL")
            _check(item, depth + 1, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check(item, depth + 1, f"{path}[{i}]")
    elif isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise ValidationError(f"integer at {path[:80]} does not fit in 64 bits")
