"""The pieces of `python -m bench compare` that decide what its table says: the handler-call log,
the order and count check, the rows and problems built from a run, the exit status, and the
profile of threads. No broker timing here (tests/test_bench.py runs the benchmark itself)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench import calls
from bench.calls import CallLog, check
from bench.common import Options, Table
from bench.compare import settings_list
from bench.compare_table import Outcome, SideBySide, fill
from bench.drain import DrainOutcome
from bench.profiling import ThreadsProfile


def test_call_log_merges_the_calls_of_several_processes_in_time_order(tmp_path: Path) -> None:
    log = CallLog(tmp_path)
    log(0)
    code = "import sys; from bench.calls import CallLog; log = CallLog(sys.argv[1]); log(1); log(2)"
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=Path(__file__).parent.parent,
                   env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
    log(3)
    log.close()
    assert len(list(tmp_path.glob("calls-*.log"))) == 2
    assert calls.count(tmp_path) == 4
    assert [n for n, _ns in calls.read(tmp_path)] == [0, 1, 2, 3]


def test_call_log_rate_runs_from_the_first_call_to_the_last() -> None:
    assert calls.rate([(0, 0), (1, 500_000_000), (2, 1_000_000_000)]) == pytest.approx(2.0)


def test_check_accepts_every_message_once_in_order() -> None:
    result = check([0, 1, 2, 3], range(4))
    assert result.complete and result.in_order
    assert result.text() == "4 of 4, in order"


def test_check_reports_a_reordering() -> None:
    result = check([0, 2, 1, 3], range(4))
    assert result.complete and not result.in_order
    assert result.out_of_order == 1 and "REORDERED: 1 out of order" in result.text()


def test_check_reports_lost_duplicated_and_unexpected_messages() -> None:
    result = check([0, 1, 1, 3, 7], range(4))
    assert not result.complete
    assert (result.missing, result.duplicates, result.unexpected) == (1, 1, 1)
    assert "3 of 4" in result.text() and "LOST 1" in result.text() and "DUPLICATED 1" in result.text()


def outcomes(**checks: calls.Check) -> dict[str, Outcome]:
    """An outcome per contender of the compare benchmark, in order unless `checks` says otherwise."""
    out = {}
    for s in settings_list(Options(), 20):
        c = checks.get(s.key.replace("-", "_"), check(range(20), range(20)))
        out[s.key] = Outcome(s, backlog=1000.0, stream=900.0, published=1500.0, lag=0.01, check=c)
    return out


def drained(result: calls.Check | None = None) -> DrainOutcome:
    return DrainOutcome(rate=800.0, to_head=0.4, check=result or check(range(11), range(11)))


def test_compare_table_has_a_row_per_tool_setting_and_measure_with_its_ratios() -> None:
    table = SideBySide("6. test")
    fill(table, outcomes(), drained(), drained(), 10, 10, 20)
    text = table.render()
    assert not table.problems, table.problems
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| tool")]
    assert len(rows) == 2 * 7 + 1
    assert any(r.startswith("| dramatiq, `--processes 1 --threads 1` | classic | yes | backlog of 10 | 1,000 | 1,000 msg/s")
               and r.endswith("| 1.00 | 1.00 | 20 of 20, in order |") for r in rows), text
    assert any(r.startswith("| fifoq, 1 connector, default settings | quorum | yes | 10 queued behind a failed head")
               for r in rows), text


def test_compare_each_tool_is_set_against_fifoq_on_the_same_queue_type() -> None:
    outs = outcomes()
    outs["fifoq-classic"].backlog = 500.0  # fifoq on quorum stays at 1,000
    table = SideBySide("6. test")
    fill(table, outs, drained(), drained(), 10, 10, 20)
    rows = {(ln.who.split(",")[0], ln.queue, ln.fifo, ln.measure): ln for ln in table.lines}
    assert rows[("dramatiq", "classic", "yes", "backlog of 10")].versus_fifoq == 500.0
    assert rows[("celery", "classic", "yes", "backlog of 10")].versus_fifoq == 500.0
    assert rows[("celery", "quorum", "yes", "backlog of 10")].versus_fifoq == 1000.0
    assert rows[("fifoq", "classic", "yes", "backlog of 10")].versus_fifoq is None
    assert "against fifoq on the same queue type" in table.render()


def test_compare_a_fifo_setting_that_reorders_is_a_problem() -> None:
    table = SideBySide("6. test")
    fill(table, outcomes(celery_solo_quorum=check([1, 0, 2], range(3))), drained(), drained(), 10, 10, 20)
    assert len(table.problems) == 1 and "celery" in table.problems[0] and "reordered" in table.problems[0]
    assert "- PROBLEM: celery" in table.render()


def test_compare_a_setting_without_order_may_reorder_but_never_lose() -> None:
    table = SideBySide("6. test")
    fill(table, outcomes(dramatiq_default=check([1, 0, 2], range(3))), drained(), drained(), 10, 10, 20)
    assert not table.problems
    assert "REORDERED: 1 out of order (this setting does not keep order)" in table.render()
    table = SideBySide("6. test")
    fill(table, outcomes(dramatiq_default=check([1, 0], range(3))), drained(), drained(), 10, 10, 20)
    assert len(table.problems) == 1 and "lost" in table.problems[0] and "LOST 1" in table.problems[0]


def test_compare_fifoq_losing_or_reordering_is_a_problem() -> None:
    table = SideBySide("6. test")
    fill(table, outcomes(fifoq=check([0, 2], range(3))), drained(), drained(check([0, 2, 1], range(3))), 10, 10, 20)
    assert len(table.problems) == 2, table.problems


def test_bench_exits_non_zero_when_a_table_lists_problems(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from bench import cli

    monkeypatch.setitem(cli.BENCHMARKS, "fake", lambda _opts: Table("9. fake", problems=["3 messages lost"]))
    assert cli.main(["fake"]) == 1
    out = capsys.readouterr().out
    assert "- PROBLEM: 3 messages lost" in out and "### fake: FAILED" in out


def test_bench_rejects_a_backlog_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import cli

    assert cli.main(["compare", "--backlog", "0"]) == 2  # click's one-line refusal, as every CLI
    assert "--backlog" in capsys.readouterr().err


def marked_function_in_a_thread() -> int:
    return sum(range(1000))


def test_profile_covers_threads_started_while_profiling(tmp_path: Path) -> None:
    profile = ThreadsProfile()
    profile.enable()
    t = threading.Thread(target=marked_function_in_a_thread)
    t.start()
    t.join()
    profile.disable()
    stats = profile.dump(str(tmp_path / "run.prof"))
    assert any(name == "marked_function_in_a_thread" for (_file, _line, name) in stats.stats)  # type: ignore[attr-defined]
    assert (tmp_path / "run.prof").stat().st_size > 0


def test_compare_without_the_bench_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import contenders

    monkeypatch.setitem(sys.modules, "dramatiq", None)  # an import of it fails as if not installed
    monkeypatch.delitem(sys.modules, "bench.dramatiq_app", raising=False)
    with pytest.raises(RuntimeError, match=r"dramatiq is not installed: run `make venv`"):
        contenders.tool_module("dramatiq")
