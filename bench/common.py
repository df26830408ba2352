"""What every benchmark shares: options, its own prefix and database, cleanup, result tables."""
from __future__ import annotations

import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

from backend.settings import EnvSettings, Settings, setting
from backend.store import Store
from backend.values import QueueType
from bench import baseline


class BenchSettings(EnvSettings):
    # A tag in the benchmark's queue prefix (bench-TAG...), so a caller (tests/test_bench.py)
    # recognises its own queues among others.
    tag: str = setting("BENCH_TAG", "", pattern=r"^[a-z0-9-]*$", max_length=20)


@dataclass(frozen=True)
class Options:
    messages: int = 5000  # per throughput measurement
    actors: int = 1000  # dynamic queues and console benchmarks
    rate: float = 200.0  # messages/s for the latency benchmark
    latency_messages: int = 1000
    requests: int = 20  # console requests per endpoint
    batch: int = 100  # events per emit_many call
    backlog: int = 20_000  # messages behind a blocked actor (compare)
    queue_type: QueueType = QueueType.QUORUM
    quick: bool = False
    ledger_latency_ms: float = 2.0  # added to every ledger operation by the ledger benchmark
    soak_minutes: float = 30.0
    soak_rate: float = 50.0  # events/s
    soak_retention: float = 300.0  # seconds

    @classmethod
    def quick_mode(cls, messages: int = 200, **kw: Any) -> Options:
        return cls(messages=messages, actors=50, rate=200.0, latency_messages=min(messages, 200), requests=3,
                   backlog=messages, quick=True, **kw)


@dataclass
class Row:
    measure: str
    fifoq: float
    base: float | None
    base_kind: str
    unit: str
    higher_is_better: bool = True

    def ratio(self) -> str:
        if self.base is None or self.base == 0:
            return "n/a"
        return f"{self.fifoq / self.base:.2f}"


@dataclass
class Table:
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # What went wrong in a run that still printed its numbers (lost or reordered messages): the
    # command prints the table and exits non-zero.
    problems: list[str] = field(default_factory=list)

    def add(self, measure: str, fifoq: float, base: float | None, base_kind: str, unit: str,
            higher_is_better: bool = True) -> None:
        self.rows.append(Row(measure, fifoq, base, base_kind, unit, higher_is_better))

    def render(self) -> str:
        head = ["measure", "fifoq", "raw baseline", "baseline is", "fifoq/baseline"]
        lines = [f"### {self.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            base = "—" if r.base is None else f"{fmt(r.base)} {r.unit}"
            better = "" if r.base is None else (" (higher is better)" if r.higher_is_better else " (lower is better)")
            lines.append(f"| {r.measure} | {fmt(r.fifoq)} {r.unit} | {base} | {r.base_kind} | {r.ratio()}{better} |")
        lines += [""] + [f"- {n}" for n in self.notes] + [f"- PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines) + "\n"


def fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def base_settings(opts: Options) -> Settings:
    env = {k: v for k, v in os.environ.items() if k.startswith(("AMQP_", "RABBITMQ_"))}
    return Settings.from_env(env).with_(queue_type=opts.queue_type)


@contextlib.contextmanager
def bench_settings(name: str, opts: Options, **changes: Any) -> Iterator[Settings]:
    """Settings with the benchmark's own prefix and embedded database; removes both afterwards."""
    prefix = f"bench-{BenchSettings.from_env().tag}{name}-{uuid.uuid4().hex[:6]}"
    s = base_settings(opts).with_(prefix=prefix, mongodb_url=f"mongomock://{prefix}", mongodb_db=f"db_{prefix}", **changes)
    try:
        yield s
    finally:
        Store.open(s).drop()
        cleanup(s)


def api(settings: Settings, path: str, **params: Any) -> Any:
    resp = requests.get(f"{settings.api_url}/api/{path}", params=params or None,
                        auth=(settings.api_user, settings.api_password), timeout=30)
    resp.raise_for_status()
    return resp.json()


def cleanup(settings: Settings) -> None:
    """Delete every queue and exchange named `<prefix>.*` (over AMQP: fast with 1,000 queues)."""
    names: dict[str, list[str]] = {"queues": [], "exchanges": []}
    for kind in names:
        for item in api(settings, kind, columns="name"):
            if item["name"].startswith(settings.prefix + "."):
                names[kind].append(item["name"])
    if names["queues"] or names["exchanges"]:
        baseline.delete(settings, names["queues"], names["exchanges"])


def broker_memory(settings: Settings) -> int:
    """mem_used summed over the cluster's nodes (bytes), as the management API reports it."""
    return sum(int(n.get("mem_used") or 0) for n in api(settings, "nodes", columns="name,mem_used"))


def settle_memory(settings: Settings, seconds: float = 6.0) -> int:
    """The management API refreshes node figures every 5 s: wait for a fresh one."""
    time.sleep(seconds)
    return broker_memory(settings)
