"""The benchmarks run end to end in a tiny quick mode and print their tables with ratios.
No timing assertion: the machine is shared, the numbers are for docs/benchmarks.md."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import API_AUTH, API_URL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATIO_ROW = re.compile(r"^\| [^|]+ \| [\d.,]+ \S+ \| [\d.,]+ \S+ \| [^|]+ \| \d+\.\d\d \((higher|lower) is better\) \|$")


@pytest.mark.slow
def test_bench_quick_prints_a_table_with_ratios_per_benchmark() -> None:
    res = subprocess.run(
        # every benchmark but compare (its own quick run below) and soak (minutes long, run by name)
        [sys.executable, "-m", "bench", "--quick", "--messages", "200", "--actors", "20", "--requests", "2",
         "emit", "connector", "latency", "queues", "console", "growth", "ledger"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert out.startswith("machine: ") and "queue type quorum" in out
    sections = re.split(r"^### ", out, flags=re.M)[1:]
    assert [s.split(".")[0] for s in sections] == ["1", "2", "3", "4", "5", "7", "8"], out
    for section in sections:
        assert "| measure | fifoq | raw baseline | baseline is | fifoq/baseline |" in section
        assert [line for line in section.splitlines() if RATIO_ROW.match(line)], section


COMPARE_HEAD = ("| tool, settings | queue | keeps order by design | measure | msg/s | baseline (same run) | baseline is "
                "| ratio to baseline | ratio to fifoq | order and count |")
# (tool, queue, keeps order by design) -> rows expected: backlog and stream, plus fifoq's blocked drain.
COMPARE_ROWS = {("fifoq", "quorum", "yes"): 3, ("fifoq", "classic", "yes"): 2, ("dramatiq", "classic", "yes"): 2, ("dramatiq", "classic", "no"): 2,
                ("celery", "classic", "yes"): 2, ("celery", "quorum", "yes"): 2, ("celery", "classic", "no"): 2}
COUNT = re.compile(r"^(\d+(?:,\d{3})*) of (\d+(?:,\d{3})*)")


def assert_compare_table(section: str, messages: int, backlog: int) -> None:
    """Every tool setting has its rows with numbers and ratios; every run handled each message
    exactly once, and each setting meant to keep order did (a reordering there, or a loss or a
    duplicate anywhere, fails)."""
    assert COMPARE_HEAD in section, section
    assert "PROBLEM" not in section, section
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| tool")]
    found: dict[tuple[str, str, str], int] = {}
    for who, queue, fifo, measure, rate, base, _kind, to_base, _to_fifoq, result in rows:
        key = (who.split(",")[0], queue, fifo)
        found[key] = found.get(key, 0) + 1
        assert re.fullmatch(r"[\d.,]+", rate) and re.fullmatch(r"[\d.,]+ msg/s", base), (measure, rate, base)
        assert re.fullmatch(r"\d+\.\d\d", to_base), (who, measure, to_base)
        count = COUNT.match(result)
        assert count and count.group(1) == count.group(2), (who, result)
        expected = backlog + 1 if "blocked" in measure or "failed head" in measure else 2 * messages
        assert int(count.group(2).replace(",", "")) == expected, (who, measure, result)
        assert not re.search(r"LOST|DUPLICATED|UNEXPECTED", result), (who, result)
        if fifo == "yes":
            assert "in order" in result and "REORDERED" not in result, (who, result)
    assert found == COMPARE_ROWS, found


def own_processes(tag: str) -> list[int]:
    """Processes (worker processes of other tools included) started for the run tagged `tag`."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f'"queue": "bench-{tag}'.encode() in environ.read_bytes():
                pids.append(int(environ.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_bench_compare_quick_runs_every_tool_in_order_and_cleans_up() -> None:
    """dramatiq and celery beside fifoq on the real broker: the table has every row, no run lost,
    duplicated or (in a FIFO setting) reordered a message, and no queue, exchange or worker
    process of the run is left."""
    import requests

    def broker_names() -> set[str]:
        return {item["name"] for kind in ("queues", "exchanges") for item in
                requests.get(f"{API_URL}/api/{kind}", auth=API_AUTH, timeout=10, params={"columns": "name"}).json()}

    tag = "t" + uuid.uuid4().hex[:6]
    before = broker_names()
    res = subprocess.run([sys.executable, "-m", "bench", "compare", "--quick", "--messages", "60"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, BENCH_TAG=tag))
    assert res.returncode == 0, res.stdout + res.stderr
    sections = re.split(r"^### ", res.stdout, flags=re.M)[1:]
    assert [s.split(".")[0] for s in sections] == ["6"], res.stdout
    assert_compare_table(sections[0], 60, 60)
    left = {name for name in broker_names() - before if tag in name or name.startswith("celery_delayed_")}
    assert not left, left
    assert not own_processes(tag)


def test_bench_leaves_no_queue_behind() -> None:
    """Each benchmark removes its queues and exchanges (run after the quick run above, or alone)."""
    import requests

    tag = "t" + uuid.uuid4().hex[:6]
    res = subprocess.run([sys.executable, "-m", "bench", "emit", "--quick", "--messages", "30"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, BENCH_TAG=tag))
    assert res.returncode == 0, res.stdout + res.stderr
    names = [q["name"] for q in requests.get(f"{API_URL}/api/queues", auth=API_AUTH, timeout=10,
                                             params={"columns": "name"}).json()]
    assert not [n for n in names if n.startswith(f"bench-{tag}")]


def test_bench_unknown_name_is_a_usage_error() -> None:
    res = subprocess.run([sys.executable, "-m", "bench", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown benchmark" in res.stderr
