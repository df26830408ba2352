"""Wire format of the embedded ledger server (backend.ledger_server): framed JSON, data only.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON. Values travel as JSON
with a few tags for what JSON lacks, so that a frame can only ever carry data, never code (the
server this replaces unpickled whatever an authenticated client sent):

    {"m": [[key, value], ...]}      a dict (keys may be any value below)
    {"t": [...]}                    a tuple          {"s": [...]}    a set
    {"dt": "2024-06-01T12:00:00+00:00"}              {"d": "2024-06-01"}
    {"td": 1.5}                     a timedelta      {"b": "<base64>"}  bytes
    {"e": ["backend.values.Status", "done"]}         an enum of the backend package
    {"c": ["backend.values.ErrorInfo", {...}]}       a dataclass of the backend package

JSON arrays are lists; strings, numbers, booleans and null are themselves. Decoding builds only
these types: a tagged enum or dataclass must be defined in the `backend` package.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import socket
import struct
import sys
from collections.abc import Callable
from datetime import date, datetime, timedelta
from enum import Enum
from typing import Any

from backend.errors import FifoqError, StoreError, ValidationError

HEADER = struct.Struct("!I")
# A whole find() page of maximal payloads fits; anything larger is a bug or an attack.
MAX_FRAME = 256 * 1024 * 1024
# What a peer may send before it has authenticated.
MAX_HANDSHAKE_FRAME = 4096
TRUSTED_PACKAGE = "backend"
# Exceptions of the standard library a ledger method may raise on bad arguments: re-raised as is.
BUILTIN_ERRORS = {cls.__name__: cls for cls in (ValueError, TypeError, KeyError, LookupError, IndexError)}


class ProtocolError(StoreError):
    """The peer broke the wire format (or is not a ledger server / client at all)."""


# -- values ------------------------------------------------------------------------------------
def encode(value: Any) -> Any:
    """A JSON-serialisable form of `value`. Raises ValidationError on what cannot travel."""
    try:
        return _encode(value)
    except RecursionError:
        raise ValidationError("value nested too deeply to send to the ledger server") from None


def _encode(value: Any) -> Any:
    # Enums first: the project's statuses are str (and int) subclasses.
    if isinstance(value, Enum):
        return {"e": [_qualname(type(value)), _encode(value.value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {"m": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, tuple):
        return {"t": [_encode(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {"s": [_encode(v) for v in value]}
    if isinstance(value, datetime):
        return {"dt": value.isoformat()}
    if isinstance(value, date):
        return {"d": value.isoformat()}
    if isinstance(value, timedelta):
        return {"td": value.total_seconds()}
    if isinstance(value, (bytes, bytearray)):
        return {"b": base64.b64encode(bytes(value)).decode("ascii")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return {"c": [_qualname(type(value)), fields]}
    raise ValidationError(f"a {type(value).__name__} cannot be sent to the ledger server")


def decode(data: Any) -> Any:
    """The value `encode` made. Raises ProtocolError on anything else."""
    try:
        return _decode(data)
    except RecursionError:
        raise ProtocolError("frame nested too deeply") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ProtocolError(f"malformed value in frame: {exc}") from None


def _decode(data: Any) -> Any:
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [_decode(v) for v in data]
    if not isinstance(data, dict) or len(data) != 1:
        raise ValueError("expected a tagged object")
    ((tag, body),) = data.items()
    decoder = _TAGS.get(tag)
    if decoder is None:
        raise ValueError(f"unknown tag {tag!r}")
    return decoder(body)


def _decode_enum(body: Any) -> Enum:
    cls = _trusted_class(body[0])
    if not issubclass(cls, Enum):
        raise ValueError(f"{body[0]} is not an enum")
    return cls(_decode(body[1]))


def _decode_dataclass(body: Any) -> Any:
    cls = _trusted_class(body[0])
    if not dataclasses.is_dataclass(cls):
        raise ValueError(f"{body[0]} is not a dataclass")
    return cls(**{str(k): _decode(v) for k, v in body[1].items()})


_TAGS: dict[str, Callable[[Any], Any]] = {
    "m": lambda body: {_hashable(_decode(k)): _decode(v) for k, v in body},
    "t": lambda body: tuple(_decode(v) for v in body),
    "s": lambda body: {_hashable(_decode(v)) for v in body},
    "dt": datetime.fromisoformat,
    "d": date.fromisoformat,
    "td": lambda body: timedelta(seconds=float(body)),
    "b": lambda body: base64.b64decode(body, validate=True),
    "e": _decode_enum,
    "c": _decode_dataclass,
}


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, dict, set)):
        raise ValueError("a dict key or set member must be hashable")
    return value


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _trusted_class(name: Any) -> type:
    """A class defined in the backend package, by its qualified name (module.Class). Only modules
    already imported are searched: decoding never imports (and so never runs) anything."""
    if not isinstance(name, str) or not name.startswith(TRUSTED_PACKAGE + "."):
        raise ValueError(f"{name!r} is not a class of the {TRUSTED_PACKAGE} package")
    module_name, _, attr = name.rpartition(".")
    module = sys.modules.get(module_name)
    cls = getattr(module, attr, None) if module is not None else None
    if not isinstance(cls, type) or cls.__module__ != module_name:
        raise ValueError(f"{name!r} is not a class of the {TRUSTED_PACKAGE} package")
    return cls


# -- errors ------------------------------------------------------------------------------------
def encode_error(exc: BaseException) -> dict[str, Any]:
    return {"type": _qualname(type(exc)), "message": str(exc),
            "details": encode(getattr(exc, "details", None) or [])}


def decode_error(data: Any) -> Exception:
    """The exception a ledger method raised in the server, as the caller would have seen it:
    the project's own errors and a few of the standard library's; StoreError for the rest."""
    try:
        name, message = str(data["type"]), str(data["message"])
        details = decode(data.get("details") or [])
    except (KeyError, TypeError, ProtocolError):
        return ProtocolError("malformed error frame from the ledger server")
    if name.startswith("builtins.") and name[len("builtins."):] in BUILTIN_ERRORS:
        return BUILTIN_ERRORS[name[len("builtins."):]](message)
    try:
        cls = _trusted_class(name)
    except ValueError:
        cls = None
    if cls is not None and issubclass(cls, FifoqError):
        try:
            return cls(message, details) if issubclass(cls, ValidationError) else cls(message)
        except TypeError:
            pass
    return StoreError(f"the ledger server failed: {name}: {message}")


# -- frames ------------------------------------------------------------------------------------
def send(sock: socket.socket, message: dict[str, Any]) -> None:
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    if len(body) > MAX_FRAME:
        raise ValidationError(f"frame of {len(body)} bytes exceeds the ledger server's limit ({MAX_FRAME})")
    sock.sendall(HEADER.pack(len(body)) + body)


def recv(sock: socket.socket, limit: int = MAX_FRAME) -> dict[str, Any] | None:
    """The next frame, or None when the peer closed the connection between frames."""
    head = _read(sock, HEADER.size, eof_ok=True)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    if size > limit:
        raise ProtocolError(f"frame of {size} bytes exceeds the limit of {limit}")
    body = _read(sock, size, eof_ok=False)
    try:
        message = json.loads(body.decode("utf-8", "surrogatepass"))  # type: ignore[union-attr]
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    return message


def _read(sock: socket.socket, size: int, *, eof_ok: bool) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            if eof_ok and left == size:
                return None
            raise ProtocolError("connection closed in the middle of a frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
