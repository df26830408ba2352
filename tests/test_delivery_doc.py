"""docs/delivery.md describes the ledger that runs: its transition table is the one the code
enforces."""
from __future__ import annotations

import re
from pathlib import Path

from backend import transitions

DOC = Path(__file__).resolve().parents[1] / "docs" / "delivery.md"


def test_delivery_transition_table_is_the_one_the_ledger_enforces() -> None:
    text = DOC.read_text()
    match = re.search(r"<!-- transitions:start -->\n(.*?)\n<!-- transitions:end -->", text, re.S)
    assert match, "docs/delivery.md has no transition table between its markers"
    assert match.group(1).strip() == transitions.table_markdown().strip()


def test_delivery_every_status_change_of_the_ledger_goes_through_the_table() -> None:
    """No module but the state machine compares raw status strings of messages."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*root.glob("backend/*.py"), *root.glob("connectors/*.py")]:
        if path.name in ("transitions.py", "values.py"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"""\[["']status["']\]\s*[!=]=\s*["'](pending|queued|processing|done|failed|held|cancelled)["']""", line):
                offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
