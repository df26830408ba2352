"""Test helpers: recording handlers and waiting for conditions without timing assertions."""
from __future__ import annotations

import threading
import time
from typing import Callable

from backend.values import Message


class Recorder:
    """A handler that records every call; optionally fails on chosen payloads."""

    def __init__(self, fail_when: Callable[[Message], bool] | None = None) -> None:
        self.calls: list[Message] = []
        self.lock = threading.Lock()
        self.fail_when = fail_when

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.calls.append(message)
        if self.fail_when is not None and self.fail_when(message):
            raise ValueError(f"cannot handle {message.payload!r}")

    def payloads(self) -> list:
        with self.lock:
            return [m.payload for m in self.calls]

    def seqs(self) -> list[int]:
        with self.lock:
            return [m.seq for m in self.calls]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> None:
    """Poll until condition() is true; fail the test with `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def emit_around_a_gap(backend, actor: str = "payment", event: str = "x") -> None:
    """Emit {"i": 0} and {"i": 2} to `actor` with sequence number 2 allocated but never stored
    between them (an emitter that died between allocation and insert)."""
    backend.subscriptions.subscribe(actor, event)
    backend.declare()
    backend.emit_event(event, {"i": 0})
    backend.ledger.allocate(actor, 1)
    backend.emit_event(event, {"i": 2})


def set_json_editor(page, scope: str, text: str) -> None:
    """Replace the content of the console's JSON editor (CodeMirror, admin/static/editor.js) inside
    `scope` as an operator would: select all, then paste (no auto-closed brackets on the way)."""
    page.click(f"{scope} .cm-content")
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(text)
