"""Worker processes of other tools, started with their own command line and always stopped.

Each worker runs in a session of its own (its own process group), its output goes to a log file,
and `stop` asks it to shut down as its docs say (SIGTERM: a warm shutdown for celery, a graceful
one for dramatiq, which forwards it to its worker processes); only if it has not exited after
STOP_TIMEOUT is its process group killed, while its leader is still unreaped (so the group id is
still ours).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT = 30.0  # seconds for a warm shutdown before the group is killed
# How a worker learns its broker URL, queue, queue type and call-log directory: one JSON object,
# set by the benchmark for the processes it starts (not a user setting).
ENV_CONFIG = "BENCH_WORKER"


def worker_config() -> dict[str, Any] | None:
    """The configuration the benchmark gave this worker process, or None outside one."""
    raw = os.environ.get(ENV_CONFIG, "")
    return json.loads(raw) if raw else None


class WorkerProcess:
    def __init__(self, name: str, args: Sequence[str], config: Mapping[str, Any], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.argv = [sys.executable, "-m", *args]
        full_env = dict(os.environ, **{ENV_CONFIG: json.dumps(dict(config))})
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        log.info("%s worker started (pid %d): %s", name, self.proc.pid, " ".join(self.argv))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        """Ask it to shut down (SIGTERM), without waiting: see wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """Wait for it to exit after terminate(); returns its exit code (negative: killed by that
        signal). Past STOP_TIMEOUT its process group is killed."""
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("%s worker (pid %d) still running %.0fs after SIGTERM: killing its process group",
                        self.name, self.proc.pid, STOP_TIMEOUT)
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait()

    def stop(self) -> int:
        self.terminate()
        return self.wait()

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
