"""fifoq's producer in `python -m bench compare`: a process of its own, as a backend service is,
emitting with `Backend.emit_many` through the benchmark's embedded ledger, which the benchmark's
process serves over a Unix socket (MONGODB_URL=embedded:///..., backend.ledger_server) beside the
connector it runs: dramatiq's and celery's producers and workers are apart the same way.

It reads its settings from the environment the benchmark gives it and one command per line on
stdin, `<first> <count>`: it emits the events numbered first .. first + count - 1 in batches of
100 (each stored in the ledger and confirmed by the broker) and answers `ok` on stdout; `ready`
when it has started. End of input ends it.
"""
from __future__ import annotations

import sys

from backend.app import Backend
from backend.settings import Settings
from bench.contenders import ACTOR, BATCH, EVENT


def main() -> int:
    backend = Backend(Settings.from_env())
    try:
        backend.subscriptions.subscribe(ACTOR, EVENT)
        print("ready", flush=True)
        for line in sys.stdin:
            first, count = (int(word) for word in line.split())
            for lo in range(first, first + count, BATCH):
                backend.emit_many([(EVENT, {"i": i}) for i in range(lo, min(first + count, lo + BATCH))])
            print("ok", flush=True)
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
