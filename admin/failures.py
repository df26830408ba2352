"""The failures board: every failed message and every block across actors, grouped by error.

A group is one kind of failure, whatever the actor: the same exception type, the same message
once ids and numbers are normalised ("currency 'XXX' of B-0004" and "... of B-0017" are one
kind), raised from the same place in handler code (the innermost frame of the traceback that
belongs to the handler, not to the runtime, the standard library or an installed package). Its
fingerprint is a short digest of those three, stable across processes and restarts, so a URL or
an API call can name a group.

Read only: the actions on a group are in admin.group_actions and admin.releases.
"""
from __future__ import annotations

import hashlib
import re
import sysconfig
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backend.app import Backend
from backend.errors import NotFound
from backend.ledger import as_aware, utcnow
from backend.values import Status

FAILURES_LIMIT = 1000  # failed messages read per board; the board says when there are more
MAX_NORMALISED = 300
FINGERPRINT_CHARS = 12

_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
# Hex ids (message ids, hashes): at least 8 hex digits with at least one digit in them.
_HEX_ID = re.compile(r"\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>.+?)\s*$')
_CHAIN = "Traceback (most recent call last):"
# Frames that are never "the handler": the connector runtime that calls it, and what runs it.
_RUNTIME_FILES = ("connectors/runtime.py", "connectors/registry.py")
_LIBRARY_DIRS = tuple(p for p in {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")} if p)


def normalise_message(text: str) -> str:
    """The error message with what varies between occurrences replaced: ids by <id>, numbers by <n>."""
    text = _UUID.sub("<id>", str(text or ""))
    text = _HEX_ID.sub("<id>", text)
    text = _NUMBER.sub("<n>", text)
    text = " ".join(text.split())
    return text[:MAX_NORMALISED]


@dataclass(frozen=True)
class Frame:
    file: str  # the last two components of the path: the same on every host
    function: str
    line: int

    @property
    def label(self) -> str:
        return f"{self.file}:{self.line} in {self.function}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "function": self.function, "line": self.line, "label": self.label}


def _is_handler_frame(path: str) -> bool:
    norm = path.replace("\\", "/")
    if norm.endswith(_RUNTIME_FILES) or "site-packages/" in norm or "dist-packages/" in norm:
        return False
    return not any(norm.startswith(d.replace("\\", "/") + "/") for d in _LIBRARY_DIRS)


def handler_frame(traceback_text: str | None) -> Frame | None:
    """The innermost frame of the last exception of a formatted traceback that belongs to the
    handler's code; the innermost frame at all when none does; None without a traceback."""
    text = str(traceback_text or "")
    last = text.rsplit(_CHAIN, 1)[-1]
    frames = []
    for line in last.splitlines():
        m = _FRAME.match(line)
        if m:
            frames.append((m.group("file"), int(m.group("line")), m.group("function")))
    if not frames:
        return None
    chosen = next((f for f in reversed(frames) if _is_handler_frame(f[0])), frames[-1])
    path, lineno, function = chosen
    short = "/".join(path.replace("\\", "/").split("/")[-2:])
    return Frame(short, function, lineno)


def fingerprint(error: dict[str, Any] | None) -> str:
    """A short stable digest of (exception type, normalised message, handler frame without its line
    number: a redeploy that moves the code keeps the group)."""
    error = error or {}
    frame = handler_frame(error.get("traceback"))
    where = f"{frame.file}:{frame.function}" if frame else ""
    key = "\x00".join((str(error.get("type") or ""), normalise_message(error.get("message") or ""), where))
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:FINGERPRINT_CHARS]


def _first_failed_at(doc: dict[str, Any]) -> datetime | None:
    for entry in doc.get("attempt_log") or []:
        if entry.get("outcome") == Status.FAILED.value and entry.get("finished_at"):
            return as_aware(entry["finished_at"])
    return as_aware((doc.get("last_error") or {}).get("at"))


@dataclass
class Group:
    fingerprint: str
    type: str
    message: str
    frame: Frame | None
    members: list[dict[str, Any]] = field(default_factory=list)
    sample: dict[str, Any] | None = None

    @property
    def actors(self) -> list[str]:
        return sorted({m["actor"] for m in self.members})

    @property
    def message_ids(self) -> list[str]:
        return [m["id"] for m in self.members]

    @property
    def first_seen(self) -> datetime | None:
        seen = [m["first_failed_at"] for m in self.members if m["first_failed_at"]]
        return min(seen) if seen else None

    @property
    def last_seen(self) -> datetime | None:
        seen = [m["failed_at"] for m in self.members if m["failed_at"]]
        return max(seen) if seen else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "type": self.type,
            "message": self.message,
            "frame": self.frame.to_dict() if self.frame else None,
            "count": len(self.members),
            "actors": self.actors,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "sample": self.sample,
            "messages": self.members,
        }


@dataclass
class Board:
    groups: list[Group]
    blocks: list[dict[str, Any]]
    total_failed: int
    truncated: bool
    generated_at: datetime = field(default_factory=utcnow)

    def group(self, fp: str) -> Group:
        for g in self.groups:
            if g.fingerprint == fp:
                return g
        raise NotFound(f"no failure group {fp!r} now (its messages may have been repaired)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": [g.to_dict() for g in self.groups],
            "blocks": self.blocks,
            "total_failed": self.total_failed,
            "blocked_actors": sum(1 for b in self.blocks if b["key"] is None),
            "blocked_keys": sum(1 for b in self.blocks if b["key"] is not None),
            "truncated": self.truncated,
            "generated_at": self.generated_at,
        }


def _member(doc: dict[str, Any], block: dict[str, Any] | None) -> dict[str, Any]:
    error = doc.get("last_error") or {}
    return {
        "id": doc["_id"],
        "actor": doc["actor"],
        "key": doc.get("key"),
        "lane": doc.get("lane", 0),
        "seq": doc["seq"],
        "event": doc.get("event"),
        "status": doc["status"],
        "version": int(doc.get("version", 1)),
        "attempts": doc.get("attempts", 0),
        "correlation_id": doc.get("correlation_id"),
        "error_message": error.get("message"),
        "failed_at": as_aware(error.get("at")),
        "first_failed_at": _first_failed_at(doc),
        "replay_requested": doc.get("replay_requested") is not None,
        "blocking": block is not None,
        "blocked_since": block["since"] if block else None,
    }


def build_board(backend: Backend, limit: int = FAILURES_LIMIT) -> Board:
    """Every failed message grouped by fingerprint (largest group first), and every block.

    Raises StoreError when the ledger is unreachable: the board cannot exist without it."""
    failed = backend.ledger.failures(limit=limit)
    blocks = backend.ledger.blocks()
    block_of = {b["message_id"]: b for b in blocks}
    groups: dict[str, Group] = {}
    for doc in failed:
        error = doc.get("last_error") or {}
        fp = fingerprint(error)
        group = groups.get(fp)
        if group is None:
            group = groups[fp] = Group(fp, str(error.get("type") or "(no error recorded)"),
                                       normalise_message(error.get("message") or ""), handler_frame(error.get("traceback")))
            group.sample = {
                "message_id": doc["_id"], "actor": doc["actor"], "seq": doc["seq"], "key": doc.get("key"),
                "error": {"type": error.get("type"), "message": error.get("message"),
                          "traceback": error.get("traceback")},
                "payload": doc.get("payload"),
            }
        group.members.append(_member(doc, block_of.get(doc["_id"])))
    fp_of = {m["id"]: g.fingerprint for g in groups.values() for m in g.members}
    shown_blocks = []
    for b in blocks:
        # A block whose message is not failed any more: a replay is running, or the block is being
        # lifted (the runtime clears it once the message settles).
        shown_blocks.append(dict(b, fingerprint=fp_of.get(b["message_id"]), message_failed=b["message_id"] in fp_of))
    ordered = sorted(groups.values(), key=lambda g: (-len(g.members), -(g.last_seen or utcnow()).timestamp()))
    return Board(ordered, shown_blocks, len(failed), len(failed) >= limit)


def group_of(backend: Backend, fp: str) -> Group:
    """One group as it is now; NotFound when no failed message has that fingerprint."""
    return build_board(backend).group(fp)
