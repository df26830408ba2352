"""The backlog drain of `python -m bench compare`: how fast one fifoq connector works off messages
that queued up behind a blocked actor once the operator releases it, against the same backlog on
a fresh queue.

Blocked: the head message fails (the actor blocks), `m` more are emitted behind it, the handler is
fixed and the head is replayed (backend.operations.Operations.replay), as an operator would.
Fresh: the head and the same `m` emitted, then a connector started. Both on the embedded ledger,
each with a database of its own; the rate runs from the first handler call to the last.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from backend.settings import Settings
from backend.values import Message
from bench import calls
from bench.calls import Check
from bench.contenders import ACTOR, EVENT, Fifoq, Setting
from connectors.registry import Registry
from connectors.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class DrainOutcome:
    rate: float = float("nan")  # msg/s, first to last handler call
    to_head: float = float("nan")  # seconds from the replay request to the head's successful call
    check: Check | None = None
    trouble: str = ""


def drain(settings: Settings, m: int, work: Path, *, blocked: bool, startup: float, idle: float) -> DrainOutcome:
    """See the module docstring. `startup` and `idle`: how long to wait for the first call, then
    between calls, before the missing messages count as lost."""
    key = "blocked" if blocked else "fresh"
    calls_dir = work / f"drain-{key}"
    calls_dir.mkdir()
    out = DrainOutcome()
    setting = Setting(f"drain-{key}", "fifoq", "", settings.queue_type.value, True)
    contender = Fifoq(setting, calls_dir, settings.with_(mongodb_db=f"{settings.mongodb_db}_{key}"))
    failed = threading.Event()
    fixed = threading.Event()

    def handler(message: Message) -> None:
        number = message.payload["i"]
        if blocked and number == 0 and not fixed.is_set():
            raise RuntimeError("the head fails until the operator replays it")
        contender.log(number)

    registry = Registry()
    registry.register(ACTOR, handler)
    runtime = Runtime(contender.settings, contender.backend.ledger, registry, [ACTOR],
                      on_event=lambda kind, *_: failed.set() if kind == "failed" else None)
    replayed = 0
    try:
        head = contender.backend.emit_event(EVENT, {"i": 0})[0]
        if blocked:
            runtime.start()
            if not failed.wait(startup):
                raise TimeoutError(f"the head message did not fail within {startup:.0f} s")
        contender.publish(range(1, m + 1))
        if blocked:
            fixed.set()
            replayed = time.monotonic_ns()
            contender.backend.operations.replay(head, by="bench")
        else:
            runtime.start()
        calls.wait_for(calls_dir, m + 1, first=startup, idle=idle)
    except Exception as exc:
        log.exception("compare: the %s backlog drain failed", key)
        out.trouble = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            runtime.stop()
        finally:
            contender.close()
    records = calls.read(calls_dir)
    out.rate = calls.rate(records)
    out.check = calls.check([number for number, _ns in records], range(m + 1))
    if records and replayed:
        out.to_head = (records[0][1] - replayed) / 1e9
    return out
