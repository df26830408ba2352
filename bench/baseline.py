"""Raw pika baselines, measured in the same run, on the same broker and queue type as fifoq.

The only bench module that imports pika (the project's own code keeps pika in backend.broker).
Queues get the same arguments as fifoq's actor queues (backend.broker.queue_arguments: single
active consumer, quorum with a delivery limit, dead-letter exchange) so the broker does the same
work; messages are persistent and about the size of a fifoq envelope. Also the bench's cleanup:
deleting queues over AMQP is much faster than through the management API.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pika

from backend.broker import queue_arguments
from backend.settings import Settings

POLL = 0.001


def body(i: int, actor: str = "bench") -> bytes:
    """An envelope-sized message (fifoq sends {"id","actor","seq","event","lane"}, ~110 bytes)."""
    return json.dumps({"id": f"{i:032x}", "actor": actor, "seq": i, "event": "bench.event", "lane": 0,
                       "t": time.time()}, separators=(",", ":")).encode()


PROPS = pika.BasicProperties(delivery_mode=2, content_type="application/json")


CONNECT_ATTEMPTS = 5
CONNECT_TIMEOUT = 30.0  # seconds: a broker busy creating 1,000 quorum queues answers slowly


def connect(settings: Settings) -> pika.BlockingConnection:
    params = pika.URLParameters(settings.amqp_urls[0])
    params.client_properties = {"connection_name": "fifoq-bench-baseline"}
    params.socket_timeout = CONNECT_TIMEOUT
    params.stack_timeout = CONNECT_TIMEOUT
    params.blocked_connection_timeout = 300
    params.connection_attempts = CONNECT_ATTEMPTS
    params.retry_delay = 2.0
    return pika.BlockingConnection(params)


def declare(settings: Settings, names: Sequence[str]) -> float:
    """Declare queues like fifoq's actor queues; returns the seconds it took."""
    conn = connect(settings)
    try:
        ch = conn.channel()
        started = time.perf_counter()
        for name in names:
            ch.queue_declare(name, durable=True, arguments=queue_arguments(settings, settings.queue_type))
        return time.perf_counter() - started
    finally:
        conn.close()


def delete(settings: Settings, queues: Sequence[str], exchanges: Sequence[str] = ()) -> None:
    conn = connect(settings)
    try:
        ch = conn.channel()
        for name in queues:
            ch.queue_delete(name)
        for name in exchanges:
            ch.exchange_delete(name)
    finally:
        if conn.is_open:
            conn.close()


def publish_wait_each(settings: Settings, queues: Sequence[str], count: int) -> float:
    """Publish `count` messages round-robin over `queues`, waiting for each confirm."""
    conn = connect(settings)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        started = time.perf_counter()
        for i in range(count):
            ch.basic_publish("", queues[i % len(queues)], body(i), PROPS, mandatory=True)
        return time.perf_counter() - started
    finally:
        conn.close()


def publish_pipelined(settings: Settings, queues: Sequence[str], count: int, batch: int = 300, first: int = 0) -> float:
    """Publish in batches of `batch`, then wait for all of the batch's confirms (fifoq's emit_many
    does the same per call); message numbers (`seq`) start at `first`. Returns seconds."""
    conn = connect(settings)
    try:
        ch = conn.channel()
        acked = [0]

        def on_confirm(frame: Any) -> None:
            method = frame.method
            acked[0] = max(acked[0], method.delivery_tag)  # multiple=True acks everything below

        ready = threading.Event()
        ch._impl.confirm_delivery(ack_nack_callback=on_confirm, callback=lambda _f: ready.set())
        while not ready.is_set():
            conn.process_data_events(time_limit=POLL)
        started = time.perf_counter()
        sent = 0
        while sent < count:
            n = min(batch, count - sent)
            for i in range(sent, sent + n):  # queued, then sent by the wait for confirms, as fifoq's publisher does
                ch._impl.basic_publish("", queues[i % len(queues)], body(first + i), PROPS, mandatory=True)
            sent += n
            while acked[0] < sent:
                conn.process_data_events(time_limit=POLL)
        return time.perf_counter() - started
    finally:
        conn.close()


def fill(settings: Settings, queues: Sequence[str], per_queue: int) -> None:
    """Put `per_queue` messages in each queue (not timed)."""
    publish_pipelined(settings, queues, per_queue * len(queues), batch=1000)


def consume_ack(settings: Settings, queue: str, count: int, prefetch: int) -> float:
    """Consume and ack `count` messages one by one at `prefetch`; returns seconds from opening
    the connection to the last ack (the runtime is timed the same way)."""
    started = time.perf_counter()
    conn = connect(settings)
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=prefetch)
        state = {"n": 0}

        def on_message(channel: Any, method: Any, _props: Any, _body: bytes) -> None:
            channel.basic_ack(method.delivery_tag)
            state["n"] += 1

        ch.basic_consume(queue, on_message)
        while state["n"] < count:
            conn.process_data_events(time_limit=0.05)
        return time.perf_counter() - started
    finally:
        conn.close()


def consume_until(settings: Settings, queue: str, prefetch: int, on_body: Callable[[bytes], None],
                  stop: threading.Event, ready: threading.Event | None = None) -> None:
    """Consume `queue` at `prefetch` until `stop` is set: on_body(body) for each delivery (the
    handler), then its ack, one by one."""
    conn = connect(settings)
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=prefetch)

        def on_message(channel: Any, method: Any, _props: Any, raw: bytes) -> None:
            on_body(raw)
            channel.basic_ack(method.delivery_tag)

        ch.basic_consume(queue, on_message)
        if ready is not None:
            ready.set()
        while not stop.is_set():
            conn.process_data_events(time_limit=0.05)
    finally:
        if conn.is_open:
            conn.close()


def consume_ack_many(settings: Settings, queues: Sequence[str], per_queue: int, prefetch: int) -> float:
    """One thread and connection per queue (as the runtime does per actor); wall-clock seconds
    from start to the last ack of the slowest queue."""
    errors: list[BaseException] = []
    started = time.perf_counter()

    def run(q: str) -> None:
        try:
            consume_ack(settings, q, per_queue, prefetch)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(q,)) for q in queues]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def latency(settings: Settings, queue: str, count: int, rate: float, prefetch: int) -> list[float]:
    """Publish at `rate` messages/s (each confirmed) while a consumer acks: returns per-message
    seconds from the start of the publish to the consumer's ack."""
    sent: dict[int, float] = {}
    lat: list[float] = []
    done = threading.Event()
    ready = threading.Event()

    def consume() -> None:
        conn = connect(settings)
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=prefetch)

            def on_message(channel: Any, method: Any, _props: Any, raw: bytes) -> None:
                channel.basic_ack(method.delivery_tag)
                i = json.loads(raw)["seq"]
                lat.append(time.perf_counter() - sent[i])
                if len(lat) >= count:
                    done.set()

            ch.basic_consume(queue, on_message)
            ready.set()
            while not done.is_set():
                conn.process_data_events(time_limit=0.01)
        finally:
            conn.close()

    consumer = threading.Thread(target=consume)
    consumer.start()
    ready.wait(10)
    conn = connect(settings)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        start = time.perf_counter()
        for i in range(count):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent[i] = time.perf_counter()
            ch.basic_publish("", queue, body(i), PROPS)
    finally:
        conn.close()
    if not done.wait(60):
        raise TimeoutError("baseline consumer did not receive every message")
    consumer.join()
    return lat


def end_to_end(settings: Settings, queues: Sequence[str], per_queue: int, prefetch: int, batch: int = 300) -> float:
    """Pipelined publishing to all queues from one thread while one consumer per queue acks:
    seconds until the last ack."""
    errors: list[BaseException] = []
    started = time.perf_counter()

    def run(q: str) -> None:
        try:
            consume_ack(settings, q, per_queue, prefetch)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(q,)) for q in queues]
    for t in threads:
        t.start()
    publish_pipelined(settings, queues, per_queue * len(queues), batch=batch)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started

