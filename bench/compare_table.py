"""The table of `python -m bench compare`: a row per tool setting and measure, each with its
baseline from the same run, its ratio to fifoq, and what the run did with the messages; what
should not have happened (a loss, a duplicate, a reordering where the setting keeps order) is
listed as a problem, which makes the command exit non-zero."""
from __future__ import annotations

from dataclasses import dataclass, field

from bench.calls import Check
from bench.common import Table, fmt
from bench.contenders import Setting
from bench.drain import DrainOutcome


@dataclass
class Outcome:
    """One contender's run: a backlog, then a stream (bench.compare.measure)."""

    setting: Setting
    backlog: float = float("nan")  # msg/s
    stream: float = float("nan")
    published: float = float("nan")  # the producer's rate during the stream
    lag: float = float("nan")  # seconds from the end of publishing to the last handler call
    check: Check | None = None
    trouble: str = ""


@dataclass
class Line:
    who: str
    queue: str
    fifo: str
    measure: str
    value: float
    base: float | None
    base_kind: str
    versus_fifoq: float | None
    check: str


HEAD = ("tool, settings", "queue", "keeps order by design", "measure", "msg/s", "baseline (same run)", "baseline is",
        "ratio to baseline", "ratio to fifoq", "order and count")


@dataclass
class SideBySide(Table):
    lines: list[Line] = field(default_factory=list)

    def render(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        for ln in self.lines:
            base = "—" if ln.base is None else f"{fmt(ln.base)} msg/s"
            out.append(f"| {ln.who} | {ln.queue} | {ln.fifo} | {ln.measure} | {fmt(ln.value)} | {base} | {ln.base_kind} "
                       f"| {ratio(ln.value, ln.base)} | {ratio(ln.value, ln.versus_fifoq)} | {ln.check} |")
        out += [""] + [f"- {n}" for n in self.notes] + [f"- PROBLEM: {p}" for p in self.problems]
        return "\n".join(out) + "\n"


def ratio(value: float, base: float | None) -> str:
    if base is None or base != base or value != value or base == 0:
        return "—"
    return f"{value / base:.2f}"


def check_text(check: Check | None, setting: Setting) -> str:
    if check is None:
        return "not run"
    text = check.text()
    if not setting.fifo and not check.in_order:
        text += " (this setting does not keep order)"
    return text


def fill(table: SideBySide, outcomes: dict[str, Outcome], blocked: DrainOutcome, fresh: DrainOutcome,
         n: int, m: int, prefetch: int) -> None:
    """Rows, problems and notes from the outcomes keyed by Setting.key (raw-quorum, raw-classic
    and fifoq among them)."""
    raw = {q: outcomes[f"raw-{q}"] for q in ("quorum", "classic")}
    fifoq = outcomes["fifoq"]
    # Each tool is set against fifoq on the same queue type when the run has it.
    fifoq_on: dict[str, Outcome] = {}
    for out in outcomes.values():
        if out.setting.tool == "fifoq":
            fifoq_on.setdefault(out.setting.queue, out)  # the first row of fifoq on that queue type
    for out in outcomes.values():
        s = out.setting
        check = check_text(out.check, s)
        if s.tool == "raw pika":
            if out.trouble or out.check is None or not (out.check.complete and out.check.in_order):
                table.problems.append(f"raw pika baseline ({s.queue}): {out.trouble or check}")
            continue
        who, fifo, base = f"{s.tool}, {s.how}", "yes" if s.fifo else "no", raw[s.queue]
        versus = None if s.tool == "fifoq" else fifoq_on.get(s.queue, fifoq)
        kind = f"raw pika, {s.queue}, the same measure"
        table.lines.append(Line(who, s.queue, fifo, f"backlog of {n:,}", out.backlog, base.backlog, kind,
                                versus.backlog if versus else None, check))
        table.lines.append(Line(who, s.queue, fifo, stream_text(out, n), out.stream, base.stream, kind,
                                versus.stream if versus else None, check))
        if out.trouble:
            table.problems.append(f"{who} ({s.queue}): {out.trouble}")
        if out.check is None or not out.check.complete:
            table.problems.append(f"{who} ({s.queue}) lost or duplicated messages: {check}")
        elif s.fifo and not out.check.in_order:
            table.problems.append(f"{who} ({s.queue}) is meant to keep order and reordered: {check}")
    drained = Setting("drain", "fifoq", "", fifoq.setting.queue, True)
    table.lines.append(Line("fifoq, 1 connector, default settings", drained.queue, "yes",
                            f"{m:,} queued behind a failed head, drained after its replay", blocked.rate, fresh.rate,
                            f"fifoq, {m + 1:,} on a fresh queue", None,
                            f"{check_text(blocked.check, drained)} (fresh: {check_text(fresh.check, drained)})"))
    for what, d in (("blocked backlog", blocked), ("fresh backlog", fresh)):
        if d.trouble:
            table.problems.append(f"fifoq {what}: {d.trouble}")
        if d.check is None or not (d.check.complete and d.check.in_order):
            table.problems.append(f"fifoq {what}: {check_text(d.check, drained)}")
    table.notes += [
        f"Rates run from the first handler call to the last (n - 1 intervals). \"backlog\": the {n:,} messages were "
        "queued before the consumer started; \"stream\": with the consumer idle, one producer in the benchmark's "
        "process published n more, as fast as the tool's API goes, while it consumed (the producer's rate is in the "
        "row; a consumer that keeps up shows the producer's rate, not its own). Order and count: over both parts.",
        f"Raw pika: consume + ack one by one at prefetch {prefetch} (fifoq's), queues declared with fifoq's arguments, "
        "producer publishing 100 then waiting for their confirms, both in the benchmark's process. fifoq's connector "
        "runs in a thread of the benchmark's process, where its embedded ledger lives, and its producer "
        "(`emit_many`, 100 events per call) in a process of its own that reaches the ledger through the ledger "
        "server (bench.fifoq_producer); dramatiq and celery run their own worker processes (their command line), "
        "their producer runs in the benchmark's process.",
        "dramatiq declares classic queues only (no quorum option); dramatiq and celery publish without publisher "
        "confirms by default, fifoq waits for them and writes the ledger.",
        "Ratio to fifoq: against fifoq on the same queue type (quorum queues are fifoq's default: replicated, they "
        "survive a node's loss; classic queues are faster and live on one node).",
        f"Backlog drain: the head fails (the actor blocks), {m:,} more are emitted behind it, then the head is replayed "
        f"(Operations.replay): the head's call came {blocked.to_head * 1000:,.0f} ms after the replay request; the "
        "rate runs from that call to the last.",
    ]


def stream_text(out: Outcome, n: int) -> str:
    if out.published != out.published:
        return f"stream of {n:,} (not run)"
    text = f"stream of {n:,}, published at {fmt(out.published)} msg/s"
    if out.lag == out.lag:
        text += f", last call {max(0.0, out.lag) * 1000:,.0f} ms after the last publish"
    return text
