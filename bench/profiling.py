"""`python -m bench --profile FILE`: cProfile of the main thread and of every thread started while
it runs (the connector runtime's lane workers run in threads: a main-thread profile misses them).

Each new thread gets a profiler of its own (through threading.setprofile); at the end all are
merged into one pstats file, which `pstats` or snakeviz open. Worker processes of other tools
(dramatiq, celery) are not profiled.
"""
from __future__ import annotations

import cProfile
import pstats
import threading
from typing import Any


class ThreadsProfile:
    def __init__(self) -> None:
        self.main = cProfile.Profile()
        self.threads: list[cProfile.Profile] = []

    def _start_in_thread(self, *_args: Any) -> None:
        # Runs as the new thread's first profile event: replace this hook by a profiler of its own.
        profile = cProfile.Profile()
        self.threads.append(profile)
        profile.enable()

    def enable(self) -> None:
        threading.setprofile(self._start_in_thread)
        self.main.enable()

    def disable(self) -> None:
        self.main.disable()
        threading.setprofile(None)

    def dump(self, path: str) -> pstats.Stats:
        stats = pstats.Stats(self.main)
        for profile in self.threads:
            try:
                stats.add(profile)
            except TypeError:  # a thread that made no call while profiled has no stats
                continue
        stats.dump_stats(path)
        return stats
