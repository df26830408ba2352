"""celery's side of `python -m bench compare`: an app on RabbitMQ with one no-op task.

The worker runs with celery's own command line (`python -m celery -A bench.celery_app worker
--pool solo`), configured by the benchmark (bench.workers.worker_config); the benchmark's
producer calls `make` with the same arguments. Everything is
celery's default except names: the task queue, and the control and event exchanges, carry the
run's prefix so that the run deletes exactly what it created. The task records each call
(bench.calls) and does nothing else.
"""
from __future__ import annotations

from celery import Celery

from bench.calls import CallLog
from bench.workers import worker_config

TASK = "bench.noop"
_config = worker_config()
_log = CallLog(_config["calls_dir"]) if _config else None


def make(url: str, queue: str, queue_type: str) -> Celery:
    """The app; `queue_type` is "classic" (celery's default) or "quorum"
    (`task_default_queue_type`, as celery's RabbitMQ guide says)."""
    app = Celery(queue, broker=url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_default_queue_type=queue_type,
        control_exchange=f"{queue}.control",
        event_exchange=f"{queue}.events",
        event_queue_prefix=f"{queue}.events",
        broker_connection_retry_on_startup=True,  # celery's own default; set to silence its warning
    )

    @app.task(name=TASK, shared=False)
    def noop(number: int) -> None:
        if _log is not None:
            _log(number)

    return app


if _config:  # imported by the worker's command line
    app = make(_config["url"], _config["queue"], _config["queue_type"])
