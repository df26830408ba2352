"""The benchmarks run end to end in a tiny quick mode and print their tables with ratios.
No timing assertion: the machine is shared, the numbers are for docs/benchmarks.md."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest

from tests.conftest import API_AUTH, API_URL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATIO_ROW = re.compile(r"^\| [^|]+ \| [\d.,]+ \S+ \| [\d.,]+ \S+ \| [^|]+ \| \d+\.\d\d \((higher|lower) is better\) \|$")


@pytest.mark.slow
def test_bench_quick_prints_a_table_with_ratios_per_benchmark() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--messages", "200", "--actors", "20", "--requests", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert out.startswith("machine: ") and "queue type quorum" in out
    sections = re.split(r"^### ", out, flags=re.M)[1:]
    assert [s.split(".")[0] for s in sections] == ["1", "2", "3", "4", "5"], out
    for section in sections:
        assert "| measure | fifoq | raw baseline | baseline is | fifoq/baseline |" in section
        assert [line for line in section.splitlines() if RATIO_ROW.match(line)], section


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
