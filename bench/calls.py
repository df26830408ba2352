"""The handler-call log of `python -m bench compare`, the same for every tool.

Each handler appends one line per call, `<message number> <CLOCK_MONOTONIC ns>`, to a file of its
own process in a directory given to it (one `write` per call: a few microseconds, the same cost for
every tool). The clock is system-wide on Linux, so calls made by several worker processes merge
into one timeline. From the log the benchmark reads the rate (first to last handler call) and
checks the count and the order: every message once, in the order it was published. A worker
process of another tool learns the directory from bench.workers.worker_config().
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


class CallLog:
    """Appends this process's calls to `<directory>/calls-<pid>.log` (reopened after a fork)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._fd: int | None = None
        self._pid = 0

    def __call__(self, number: int) -> None:
        pid = os.getpid()
        if self._fd is None or pid != self._pid:  # first call, or first call in a forked child
            self._fd = os.open(self.directory / f"calls-{pid}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._pid = pid
        # O_APPEND and one short write: lines of several threads never interleave.
        os.write(self._fd, b"%d %d\n" % (number, time.monotonic_ns()))

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


def count(directory: str | os.PathLike[str]) -> int:
    """Calls recorded so far (complete lines) by every process."""
    total = 0
    for path in Path(directory).glob("calls-*.log"):
        total += path.read_bytes().count(b"\n")
    return total


def read(directory: str | os.PathLike[str]) -> list[tuple[int, int]]:
    """Every call as (message number, ns), in the order they were made."""
    calls: list[tuple[int, int, int]] = []
    for path in sorted(Path(directory).glob("calls-*.log")):
        for k, line in enumerate(path.read_bytes().splitlines()):
            number, ns = line.split()
            calls.append((int(ns), k, int(number)))  # k keeps a process's own order on equal ns
    calls.sort()
    return [(number, ns) for ns, _k, number in calls]


def rate(calls: Sequence[tuple[int, int]]) -> float:
    """Messages per second from the first handler call to the last (n - 1 intervals)."""
    if len(calls) < 2:
        return float("nan")
    span = (calls[-1][1] - calls[0][1]) / 1e9
    return (len(calls) - 1) / span if span > 0 else float("inf")


@dataclass(frozen=True)
class Check:
    """What a run did with the messages it was given, in handler-call order."""

    expected: int
    calls: int
    missing: int  # never handled
    duplicates: int  # handled more than once
    out_of_order: int  # handled after a message published later than them
    unexpected: int = 0  # numbers nobody published

    @property
    def complete(self) -> bool:
        return self.missing == 0 and self.duplicates == 0 and self.unexpected == 0

    @property
    def in_order(self) -> bool:
        return self.out_of_order == 0

    def text(self) -> str:
        parts = [f"{self.expected - self.missing:,} of {self.expected:,}"]
        parts.append("in order" if self.in_order else f"REORDERED: {self.out_of_order:,} out of order")
        if self.missing:
            parts.append(f"LOST {self.missing:,}")
        if self.duplicates:
            parts.append(f"DUPLICATED {self.duplicates:,}")
        if self.unexpected:
            parts.append(f"UNEXPECTED {self.unexpected:,}")
        return ", ".join(parts)


def check(numbers: Iterable[int], expected: Sequence[int]) -> Check:
    """Compare the handled message numbers (in call order) with the published ones (in publish
    order). A call is out of order when a message published after it was handled before it."""
    rank = {n: k for k, n in enumerate(expected)}
    seen: set[int] = set()
    calls = duplicates = out_of_order = unexpected = 0
    highest = -1
    for n in numbers:
        calls += 1
        if n not in rank:
            unexpected += 1
            continue
        if n in seen:
            duplicates += 1
            continue
        seen.add(n)
        if rank[n] < highest:
            out_of_order += 1
        highest = max(highest, rank[n])
    return Check(expected=len(expected), calls=calls, missing=len(expected) - len(seen), duplicates=duplicates,
                 out_of_order=out_of_order, unexpected=unexpected)


def wait_for(directory: str | os.PathLike[str], total: int, *, first: float, idle: float,
             alive: Callable[[], bool] = lambda: True, poll: float = 0.05) -> int:
    """Wait until `total` calls are recorded; give up when no call came within `first` seconds
    (the consumer's start-up), then none for `idle` seconds (some were lost: the caller says so),
    or when the consumer is gone. Returns the count."""
    last, since, patience = -1, time.monotonic(), first
    while True:
        n = count(directory)
        if n >= total:
            return n
        now = time.monotonic()
        if n != last:
            if last >= 0 or n > 0:
                patience = idle
            last, since = n, now
        elif now - since >= patience or not alive():
            return n
        time.sleep(poll)
