"""Drive the local 3-node RabbitMQ cluster of ``scripts/cluster.sh`` from the tests.

The availability tests use it to start the cluster, kill or stop a node in the middle of a
workload, and bring it back::

    cluster = Cluster()
    cluster.start()                      # idempotent; about 30 s on a cold start
    url = ",".join(cluster.amqp_urls)    # "amqp://guest:guest@127.0.0.1:5681/%2F,..."
    cluster.kill(2)                      # SIGKILL node 2 (rmq2@host)
    cluster.start_node(2)                # it rejoins the cluster by itself
    cluster.stop()                       # stop every node and delete the state

Node n (1..3) listens for AMQP on 5680+n and serves the management API on 15680+n, on
127.0.0.1, user guest/guest. After ``start_node`` the node is running and in the cluster, but
its quorum queue replicas may take a few more seconds to catch up: poll the queue's ``online``
members through the management API when a test depends on them.

No broker client is imported here: everything goes through the shell script.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "cluster.sh"
NODES = (1, 2, 3)


class ClusterError(RuntimeError):
    """scripts/cluster.sh failed; the message carries its output."""


class Cluster:
    def __init__(self, state_dir: str | os.PathLike | None = None, host: str = "127.0.0.1",
                 user: str = "guest", password: str = "guest", timeout: float = 600.0):
        self.state_dir = Path(state_dir) if state_dir else None
        self.host = host
        self.user = user
        self.password = password
        self.timeout = timeout

    # -- addresses -------------------------------------------------------------------------
    @staticmethod
    def amqp_port(n: int) -> int:
        return 5680 + n

    @staticmethod
    def api_port(n: int) -> int:
        return 15680 + n

    @staticmethod
    def node_name(n: int) -> str:
        return f"rmq{n}@{os.uname().nodename.split('.')[0]}"

    def amqp_url(self, n: int) -> str:
        return f"amqp://{self.user}:{self.password}@{self.host}:{self.amqp_port(n)}/%2F"

    def api_url(self, n: int) -> str:
        return f"http://{self.host}:{self.api_port(n)}"

    @property
    def amqp_urls(self) -> list[str]:
        return [self.amqp_url(n) for n in NODES]

    @property
    def api_urls(self) -> list[str]:
        return [self.api_url(n) for n in NODES]

    # -- control ---------------------------------------------------------------------------
    def _run(self, *args: str) -> str:
        env = dict(os.environ)
        if self.state_dir is not None:
            env["CLUSTER_DIR"] = str(self.state_dir)
        try:
            proc = subprocess.run(["bash", str(SCRIPT), *args], env=env, cwd=ROOT,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=self.timeout)
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"cluster.sh {' '.join(args)} timed out after {self.timeout}s") from exc
        if proc.returncode != 0:
            raise ClusterError(f"cluster.sh {' '.join(args)} failed ({proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}")
        return proc.stdout

    def start(self) -> Cluster:
        """Start the 3 nodes and cluster them (no-op when already up)."""
        self._run("start")
        return self

    def stop(self) -> None:
        """Stop every node and delete the cluster state."""
        self._run("stop")

    def kill(self, n: int) -> None:
        """SIGKILL node n: an abrupt loss of the node process."""
        self._run("kill", str(_check(n)))

    def start_node(self, n: int) -> None:
        """Start node n again after kill() or stop_node(); waits until it is back in the cluster."""
        self._run("start-node", str(_check(n)))

    def stop_node(self, n: int) -> None:
        """Stop node n gracefully."""
        self._run("stop-node", str(_check(n)))

    def pid(self, n: int) -> int | None:
        """OS pid of node n, None when it is not running."""
        try:
            return int(self._run("pid", str(_check(n))).strip())
        except ClusterError:
            return None

    def is_running(self, n: int) -> bool:
        return self.pid(n) is not None

    def status(self) -> str:
        return self._run("status")

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _check(n: int) -> int:
    if n not in NODES:
        raise ValueError(f"node number must be 1, 2 or 3, not {n!r}")
    return n


def cluster_available() -> str | None:
    """None when scripts/cluster.sh can run here, else the reason it cannot."""
    if not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        return "RabbitMQ is not installed (/usr/lib/rabbitmq/bin/rabbitmq-server)"
    return None
