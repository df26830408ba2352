"""dramatiq's side of `python -m bench compare`: a RabbitMQ broker and one no-op actor.

The worker runs with dramatiq's own command line, which imports this module and uses the broker
it sets (`python -m dramatiq bench.dramatiq_app --processes 1 --threads 1`), configured by the
benchmark (bench.workers.worker_config); the benchmark's producer calls `make` with the same
arguments. The actor records each call (bench.calls) and does nothing else.
"""
from __future__ import annotations

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.calls import CallLog
from bench.workers import worker_config

ACTOR = "bench_noop"
_config = worker_config()
_log = CallLog(_config["calls_dir"]) if _config else None


def noop(number: int) -> None:
    if _log is not None:
        _log(number)


def make(url: str, queue: str) -> tuple[RabbitmqBroker, dramatiq.Actor]:
    """dramatiq's RabbitMQ broker with its default settings (classic queues: dramatiq declares no
    other type), and the actor on `queue`."""
    broker = RabbitmqBroker(url=url)
    dramatiq.set_broker(broker)
    actor = dramatiq.actor(noop, actor_name=ACTOR, queue_name=queue, broker=broker)  # type: ignore[call-overload]
    return broker, actor


if _config:  # imported by the worker's command line
    broker, actor = make(_config["url"], _config["queue"])
