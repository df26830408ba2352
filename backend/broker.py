"""RabbitMQ over AMQP: the only module that imports pika.

Topology (all durable):
- `<prefix>.messages`, a direct exchange: routing key = the actor's queue name. Fan-out is
  computed by the application (each subscriber gets its own ledger message first), so the
  exchange only has to route one envelope to one queue.
- `<prefix>.actor.<actor>`: one queue per actor, single active consumer, quorum by default.
- `<prefix>.dead-letter`: a fanout exchange and its queue, where the broker drops what it cannot
  deliver (delivery limit reached, malformed envelopes rejected by a connector).

Broker behaviours guarded against here (see docs/delivery.md):
- quorum queues put a nacked/requeued message at the BACK (3.10-3.13): we never nack-requeue;
  to let go of held messages we close the channel, which returns them to the head in order.
- basic.cancel on a single-active-consumer queue activates the next consumer while we still hold
  unacked messages: we never cancel, we close the channel.
- 4.x drops a quorum message after 20 returns by default: an explicit, large x-delivery-limit
  and a dead-letter exchange are always set.
"""
from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions as pex

from backend.errors import BrokerUnavailable, ConfigError, FifoqError
from backend.settings import Settings, redact_url
from backend.values import Envelope, QueueType

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30
SOCKET_TIMEOUT_SECONDS = 3.0
BLOCKED_CONNECTION_TIMEOUT_SECONDS = 30
CONFIRM_POLL_SECONDS = 0.001
CLOSE_TIMEOUT_SECONDS = 2.0
FAILED_CLOSE_TIMEOUT_SECONDS = 0.2
CONSUME_TIMEOUT_SECONDS = 30.0


class BrokerRefused(FifoqError):
    """The broker refused an operation (access refused, queue arguments differ, not found)."""

    http_status = 409


def _translate(exc: Exception, what: str) -> FifoqError:
    if isinstance(exc, pex.ChannelClosedByBroker) and exc.reply_code in (403, 404, 405, 406):
        return BrokerRefused(f"{what}: broker refused ({exc.reply_code} {exc.reply_text})")
    return BrokerUnavailable(f"{what}: {exc.__class__.__name__} {exc}")


def tls_context(settings: Settings) -> ssl.SSLContext:
    """A client TLS context that verifies the broker's certificate and host name (always: there is
    no way to turn verification off), trusting AMQP_CA_FILE or else the system's CAs, with the
    client certificate AMQP_CERT_FILE/AMQP_KEY_FILE when given (for brokers that require one)."""
    try:
        ctx = ssl.create_default_context(cafile=settings.amqp_ca_file or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.amqp_cert_file:
            ctx.load_cert_chain(settings.amqp_cert_file, settings.amqp_key_file or None)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"AMQP_CA_FILE/AMQP_CERT_FILE/AMQP_KEY_FILE: cannot load: {exc}") from exc
    return ctx


def connection_parameters(settings: Settings, name: str) -> list[pika.ConnectionParameters]:
    params = []
    context = None
    for url in settings.amqp_urls:
        p = pika.URLParameters(url)
        if p.ssl_options is not None:
            # amqps://: replace pika's default context with ours (CA file, client certificate);
            # the server name is the URL's host, which the certificate must name.
            context = context or tls_context(settings)
            p.ssl_options = pika.SSLOptions(context, server_hostname=p.host)
        p.heartbeat = HEARTBEAT_SECONDS
        p.socket_timeout = SOCKET_TIMEOUT_SECONDS
        p.blocked_connection_timeout = BLOCKED_CONNECTION_TIMEOUT_SECONDS
        p.connection_attempts = 1
        p.client_properties = {"connection_name": name, "product": "fifoq"}
        params.append(p)
    return params


def connect(settings: Settings, name: str, start: int = 0) -> pika.BlockingConnection:
    """Open a connection to the first broker address that answers. Cluster nodes are tried in
    order, beginning with address number `start` (modulo their count) and wrapping around: a
    client that lost its node starts with the next one instead of waiting on the lost one first."""
    params = connection_parameters(settings, name)
    start %= len(params)
    try:
        return pika.BlockingConnection(params[start:] + params[:start])
    except (pex.AMQPError, OSError) as exc:
        urls = ", ".join(redact_url(u) for u in settings.amqp_urls)
        raise BrokerUnavailable(f"cannot connect to RabbitMQ at {urls}: {exc.__class__.__name__} {exc}") from exc


def _sever(conn: pika.BlockingConnection, what: str, seconds: float) -> None:
    try:
        sock = conn._impl._transport._sock
    except AttributeError:
        return
    if sock is not None:
        log.warning("%s: no answer from the broker within %.1fs, dropping the connection", what, seconds)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@contextmanager
def bounded(conn: pika.BlockingConnection, seconds: float, what: str) -> Iterator[None]:
    """Let blocking pika calls on `conn` run for at most `seconds`.

    pika's BlockingConnection has no timeout on RPCs, and a node cut off from a quorum queue's
    majority may not answer some of them until the majority is back (measured with 2 of 3 nodes
    down: channel.close and queue.declare hung). When time is up the TCP connection is shut down
    from a timer thread: the blocked call fails with a connection error, and the broker treats it
    as a lost connection (held deliveries go back to the head of the queue in order; unconfirmed
    publishes stay pending in the ledger for the relay).
    """
    timer = threading.Timer(seconds, _sever, (conn, what, seconds))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _close(conn: pika.BlockingConnection | None, what: str, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
    """Close a connection, gracefully if the broker answers within `timeout` seconds."""
    if conn is None or not conn.is_open:
        return
    try:
        with bounded(conn, timeout, f"closing {what}"):
            conn.close()
    except Exception:  # noqa: BLE001 - closing a broken connection
        pass


def queue_arguments(settings: Settings, queue_type: QueueType) -> dict[str, Any]:
    args: dict[str, Any] = {
        "x-single-active-consumer": True,
        "x-dead-letter-exchange": settings.dead_letter_exchange,
    }
    if queue_type == QueueType.QUORUM:
        args["x-queue-type"] = "quorum"
        args["x-delivery-limit"] = settings.delivery_limit
    else:
        args["x-queue-type"] = "classic"
    return args


def declare_topology(channel: Any, settings: Settings) -> None:
    if not settings.declare:
        # FIFOQ_DECLARE=0 (least-privilege users): `python -m admin provision` created the topology.
        # A passive declaration needs no permission and fails with 404 when something is missing.
        channel.exchange_declare(settings.exchange, passive=True)
        return
    channel.exchange_declare(settings.exchange, exchange_type="direct", durable=True)
    channel.exchange_declare(settings.dead_letter_exchange, exchange_type="fanout", durable=True)
    channel.queue_declare(
        settings.dead_letter_queue, durable=True, arguments={"x-queue-type": settings.queue_type.value}
    )
    channel.queue_bind(settings.dead_letter_queue, settings.dead_letter_exchange)


def declare_actor_queue(channel: Any, settings: Settings, actor: str, queue_type: QueueType, lane: int = 0) -> str:
    name = settings.queue_name(actor, lane)
    if not settings.declare:
        # Declaring a queue with a dead-letter exchange needs READ on the queue (checked by the
        # broker): a backend allowed to declare could also consume. Least-privilege users only
        # check that the provisioned queue exists.
        channel.queue_declare(name, passive=True)
        return name
    channel.queue_declare(name, durable=True, arguments=queue_arguments(settings, queue_type))
    channel.queue_bind(name, settings.exchange, routing_key=name)
    return name


class Publisher:
    """Publishes envelopes with pipelined publisher confirms. Thread-safe (one lock, one connection).

    `publish` sends every envelope, then waits for all confirms at once, up to a timeout: a quorum
    queue confirms once a majority of replicas has the message on disk, which is this system's
    write concern. Envelopes not confirmed in time are reported as such; they stay pending in the
    ledger and the relay publishes them again (consumers deduplicate by message id).
    """

    def __init__(self, settings: Settings, name: str = "fifoq-publisher") -> None:
        self.settings = settings
        self.name = name
        self._lock = threading.Lock()
        self._conn: pika.BlockingConnection | None = None
        self._ch: Any = None
        self._declared: set[str] = set()
        self._acked: set[int] = set()
        self._nacked: set[int] = set()
        self._returned: set[str] = set()
        self._next_tag = 1
        self._outstanding: set[int] = set()
        self._start = 0  # index of the broker address tried first; moves on after each failure
        self.refused: set[str] = set()  # actors whose queue the broker refused in the last publish

    # pika's BlockingChannel waits for each confirm in basic_publish. We put the underlying channel
    # in confirm mode ourselves so publishes are pipelined and confirms counted by delivery tag.
    def _open(self) -> None:
        if self._conn is not None and self._conn.is_open and self._ch is not None and self._ch.is_open:
            return
        self._close_quietly()
        try:
            conn = connect(self.settings, self.name, self._start)
        except BrokerUnavailable:
            self._start += 1
            raise
        try:
            with bounded(conn, self.settings.confirm_timeout + 1, "opening the publisher channel"):
                ch = conn.channel()
                declare_topology(ch, self.settings)
                ready = threading.Event()
                ch._impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _frame: ready.set())
                deadline = time.monotonic() + self.settings.confirm_timeout
                while not ready.is_set() and time.monotonic() < deadline:
                    conn.process_data_events(time_limit=CONFIRM_POLL_SECONDS)
            if not ready.is_set():
                raise BrokerUnavailable("broker did not enable publisher confirms in time")
            ch.add_on_return_callback(self._on_return)
        except (pex.AMQPError, OSError, BrokerUnavailable) as exc:
            self._start += 1
            _close(conn, self.name)
            if isinstance(exc, BrokerUnavailable):
                raise
            raise _translate(exc, "opening the publisher channel") from exc
        self._conn, self._ch = conn, ch
        self._declared.clear()
        self._acked.clear()
        self._nacked.clear()
        self._outstanding.clear()
        self._next_tag = 1

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        target = self._acked if isinstance(method, pika.spec.Basic.Ack) else self._nacked
        if method.multiple:
            done = {t for t in self._outstanding if t <= method.delivery_tag}
        else:
            done = {method.delivery_tag}
        self._outstanding -= done
        target.update(done)

    def _on_return(self, _ch: Any, _method: Any, props: Any, _body: bytes) -> None:
        if props.message_id:
            self._returned.add(props.message_id)

    def declare_actor(self, actor: str, queue_type: QueueType, lane: int = 0) -> str:
        """Create the actor's queue if it does not exist (idempotent)."""
        with self._lock:
            return self._declare_locked(actor, queue_type, lane)

    def _declare_locked(self, actor: str, queue_type: QueueType, lane: int) -> str:
        name = self.settings.queue_name(actor, lane)
        if name in self._declared and self._ch is not None and self._ch.is_open:
            return name
        self._open()
        try:
            with bounded(self._conn, self.settings.confirm_timeout, f"declaring queue {name}"):
                declare_actor_queue(self._ch, self.settings, actor, queue_type, lane)
        except (pex.AMQPError, OSError) as exc:
            err = _translate(exc, f"declaring queue {name}")
            # A refusal closed the channel only; anything else may be this node's fault.
            self._close_quietly(failed=not isinstance(err, BrokerRefused))
            raise err from exc
        self._declared.add(name)
        return name

    def publish(
        self,
        envelopes: Sequence[Envelope],
        queue_types: dict[str, QueueType],
        timeout: float | None = None,
    ) -> set[str]:
        """Publish persistent envelopes; returns the ids the broker confirmed within the timeout.

        Raises BrokerUnavailable when nothing could be sent at all.
        """
        if not envelopes:
            return set()
        timeout = self.settings.confirm_timeout if timeout is None else timeout
        with self._lock:
            self._open()
            tags: dict[int, str] = {}
            self._returned.clear()
            self.refused = set()
            queues: list[tuple[Envelope, str]] = []
            for env in envelopes:
                # Declared first, one actor at a time: a refusal (permissions, other arguments)
                # holds back that actor's envelopes only.
                if env.actor in self.refused:
                    continue
                try:
                    queues.append((env, self._declare_locked(env.actor, queue_types.get(env.actor, self.settings.queue_type), env.lane)))
                except BrokerRefused as exc:
                    log.error("actor=%s publish held back: %s", env.actor, exc)
                    self.refused.add(env.actor)
                    self._open()
            try:
                for env, queue in queues:
                    # Register the tag before sending: the confirm may be read during basic_publish.
                    tag = self._next_tag
                    self._next_tag += 1
                    tags[tag] = env.id
                    self._outstanding.add(tag)
                    # The underlying channel's publish only queues the frames: the wait for the
                    # confirms below sends the whole batch (BlockingChannel.basic_publish writes
                    # each message to the socket on its own, half of an emit's time in a profile).
                    self._ch._impl.basic_publish(
                        exchange=self.settings.exchange,
                        routing_key=queue,
                        body=json.dumps(env.to_wire(), separators=(",", ":")).encode(),
                        properties=pika.BasicProperties(
                            delivery_mode=2,
                            content_type="application/json",
                            message_id=env.id,
                            type=env.event,
                            headers={"actor": env.actor, "seq": env.seq},
                        ),
                        mandatory=True,
                    )
                deadline = time.monotonic() + timeout
                conn = self._conn
                assert conn is not None
                while time.monotonic() < deadline and not self._outstanding.isdisjoint(tags):
                    # Confirms reach our own callback, which does not end process_data_events'
                    # wait early: poll in short slices instead of one long wait.
                    conn.process_data_events(time_limit=CONFIRM_POLL_SECONDS)
            except (pex.AMQPError, OSError) as exc:
                self._close_quietly(failed=True)
                confirmed = {tags[t] for t in tags if t in self._acked} - self._returned
                if confirmed:
                    log.warning("publisher connection lost after %d confirms: %s", len(confirmed), exc)
                    return confirmed
                raise _translate(exc, "publishing") from exc
            confirmed = {mid for t, mid in tags.items() if t in self._acked} - self._returned
            missing = len(tags) - len(confirmed)
            if missing:
                # Unknown fate: close the channel so that late confirms cannot be miscounted;
                # the relay republishes and consumers deduplicate.
                log.warning("%d of %d publishes not confirmed within %.1fs", missing, len(tags), timeout)
                if self._returned:
                    self._declared.clear()
                # No confirm can also mean that this node is cut off from the queue's majority:
                # the next connection starts with another node.
                self._close_quietly(failed=True)
            for t in tags:
                self._acked.discard(t)
                self._nacked.discard(t)
            return confirmed

    def _close_quietly(self, failed: bool = False) -> None:
        if failed:
            self._start += 1
        conn, self._conn, self._ch = self._conn, None, None
        # After a failure, do not make emit_event wait for a graceful close the broker may never
        # answer (no majority): a publisher holds no deliveries, dropping the connection is enough.
        _close(conn, self.name, FAILED_CLOSE_TIMEOUT_SECONDS if failed else CLOSE_TIMEOUT_SECONDS)

    def close(self) -> None:
        with self._lock:
            self._close_quietly()


@dataclass(frozen=True)
class Delivery:
    tag: int
    body: bytes
    redelivered: bool
    message_id: str | None


class ActorConsumer:
    """Consumes one actor queue with manual acks; one connection, used from one thread only."""

    def __init__(
        self,
        settings: Settings,
        actor: str,
        queue_type: QueueType,
        *,
        prefetch: int | None = None,
        lane: int = 0,
        name: str = "fifoq-connector",
    ) -> None:
        self.settings = settings
        self.actor = actor
        self.queue_type = queue_type
        self.lane = lane
        self.queue = settings.queue_name(actor, lane)
        self.prefetch = prefetch or settings.prefetch
        self.name = f"{name}:{self.queue}"
        self._conn: pika.BlockingConnection | None = None
        self._ch: Any = None
        self._buffer: deque[Delivery] = deque()
        self._start = 0  # index of the broker address tried first; moves on after each failure
        self._cancelled = False
        self._ack_upto: int | None = None  # highest delivery tag settled but not acked yet
        self._acks_waiting = 0

    @property
    def is_open(self) -> bool:
        return self._conn is not None and self._conn.is_open and self._ch is not None and self._ch.is_open

    def open(self) -> None:
        """Connect and start consuming (single active consumer: we may wait behind another replica)."""
        if self.is_open:
            return
        self.release()
        try:
            conn = connect(self.settings, self.name, self._start)
        except BrokerUnavailable:
            self._start += 1
            raise
        self._cancelled = False
        try:
            # basic.consume on a quorum queue without a majority waits (measured: 65 s, then 541).
            with bounded(conn, CONSUME_TIMEOUT_SECONDS, f"consuming {self.queue}"):
                ch = conn.channel()
                declare_topology(ch, self.settings)
                declare_actor_queue(ch, self.settings, self.actor, self.queue_type, self.lane)
                ch.basic_qos(prefetch_count=self.prefetch)
                # The broker cancels a consumer when its queue goes away or, for some queue types,
                # when the node holding it fails: without this the worker would wait forever.
                ch.add_on_cancel_callback(self._on_cancel)
                ch.basic_consume(self.queue, on_message_callback=self._on_message, auto_ack=False)
        except (pex.AMQPError, OSError) as exc:
            self._start += 1
            _close(conn, self.name)
            raise _translate(exc, f"consuming {self.queue}") from exc
        self._conn, self._ch = conn, ch

    def _on_cancel(self, _frame: Any) -> None:
        self._cancelled = True

    def _on_message(self, _ch: Any, method: Any, props: Any, body: bytes) -> None:
        self._buffer.append(Delivery(method.delivery_tag, body, bool(method.redelivered), props.message_id))

    def next_delivery(self, timeout: float) -> Delivery | None:
        """The next delivery in queue order, waiting up to `timeout` seconds."""
        if not self._buffer:
            self.pump(timeout)
        return self._buffer.popleft() if self._buffer else None

    def pump(self, seconds: float) -> None:
        """Serve the connection (heartbeats, incoming deliveries) for up to `seconds`."""
        if self._conn is None:
            time.sleep(seconds)
            return
        try:
            self._conn.process_data_events(time_limit=seconds)
        except (pex.AMQPError, OSError) as exc:
            self._drop(failed=True)
            raise _translate(exc, f"consuming {self.queue}") from exc
        if self._cancelled:
            log.warning("%s: consumer cancelled by the broker, reconnecting", self.queue)
            self._drop(failed=True)
            raise BrokerUnavailable(f"consuming {self.queue}: consumer cancelled by the broker")

    def ack(self, tag: int) -> None:
        """Acknowledge `tag` and every delivery before it, lazily.

        The caller has settled the message in the ledger first and settles deliveries in order,
        so one `basic.ack multiple` covers a run of them: it is sent when no delivery is buffered
        (before waiting for more: the broker's prefetch window must reopen), when half the window
        is waiting, before a reject and before the channel closes. A crash in between only causes
        redeliveries of settled messages, which the runtime acks without running them."""
        self._ack_upto = tag
        self._acks_waiting += 1
        if not self._buffer or self._acks_waiting >= max(1, self.prefetch // 2):
            self.flush_acks()

    def flush_acks(self) -> None:
        if self._ack_upto is None:
            return
        tag, self._ack_upto, self._acks_waiting = self._ack_upto, None, 0
        self._settle(lambda: self._ch.basic_ack(tag, multiple=True), "ack")

    def dead_letter(self, tag: int) -> None:
        """Reject without requeue: the broker moves it to the dead-letter exchange."""
        self.flush_acks()
        self._settle(lambda: self._ch.basic_reject(tag, requeue=False), "reject")

    def _settle(self, call: Callable[[], None], what: str) -> None:
        if self._ch is None:
            raise BrokerUnavailable(f"{what} on {self.queue}: not connected")
        try:
            call()
        except (pex.AMQPError, OSError) as exc:
            self._drop(failed=True)
            raise _translate(exc, f"{what} on {self.queue}") from exc

    def ready_count(self) -> int:
        """Messages ready in the queue (not counting those delivered to a consumer)."""
        try:
            if self.is_open:
                with bounded(self._conn, CONSUME_TIMEOUT_SECONDS, f"inspecting {self.queue}"):
                    return int(self._ch.queue_declare(self.queue, passive=True).method.message_count)
            conn = connect(self.settings, self.name + ":probe", self._start)
            try:
                with bounded(conn, CONSUME_TIMEOUT_SECONDS, f"inspecting {self.queue}"):
                    return int(conn.channel().queue_declare(self.queue, passive=True).method.message_count)
            finally:
                _close(conn, self.name + ":probe")
        except (pex.AMQPError, OSError) as exc:
            self._drop(failed=True)
            raise _translate(exc, f"inspecting {self.queue}") from exc

    def buffered(self) -> int:
        return len(self._buffer)

    def release(self) -> None:
        """Let go of every unacked delivery: closing the channel returns them to the head of the
        queue in their original order (never basic.cancel / nack, see module docstring)."""
        if self.is_open:
            try:
                self.flush_acks()  # what was settled is acked, not redelivered
            except BrokerUnavailable:
                pass  # the connection is gone: the broker requeues them, the runtime skips them
        self._drop()

    def _drop(self, failed: bool = False) -> None:
        if failed:
            self._start += 1
        self._buffer.clear()
        self._ack_upto, self._acks_waiting = None, 0  # acks belong to the channel that delivered
        conn, self._conn, self._ch = self._conn, None, None
        # Closing returns held deliveries to the head of the queue; if the broker does not answer
        # the close in time, the connection is dropped, which returns them just the same.
        _close(conn, self.name)
