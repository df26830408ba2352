"""Prometheus metrics of a connector process, served over HTTP for Prometheus to scrape.

    python -m connectors run payment --metrics-port 9101   # GET http://127.0.0.1:9101/metrics

Counters and the handler-latency histogram come from the runtime's on_event hook
(backend.metrics.PipelineMetrics); this module adds whether each actor's worker currently holds
a consumer on its queue, and the small HTTP server.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from connectors.runtime import Runtime

log = logging.getLogger(__name__)


class WorkerCollector(Collector):
    """fifoq_connector_consuming{actor}: 1 while the worker has an open consumer on the queue
    (0 when paused, blocked, reconnecting, or waiting behind another replica's consumer)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[GaugeMetricFamily]:
        consuming = GaugeMetricFamily(
            "fifoq_connector_consuming", "1 while this process holds an open consumer on the actor's queue.",
            labels=["actor"],
        )
        active = GaugeMetricFamily(
            "fifoq_connector_active", "1 when this process received deliveries in its current consume session "
            "(it is the single active consumer).", labels=["actor"],
        )
        for actor, worker in sorted(self.runtime.workers.items()):
            # Read from the scrape thread: two attribute reads, a stale value at worst.
            consumer = worker.consumer
            consuming.add_metric([actor], 1.0 if consumer is not None and consumer.is_open else 0.0)
            active.add_metric([actor], 1.0 if worker.active else 0.0)
        yield consuming
        yield active


def serve(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> Any:
    """Serve /metrics on a daemon thread; returns the HTTP server (call .shutdown() to stop).

    Raises OSError when the port is taken.
    """
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    log.info("metrics on http://%s:%d/metrics", addr, server.server_port)
    return server
