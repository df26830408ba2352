"""Settings, read from the environment in one place and validated at start-up."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

from backend.errors import ConfigError
from backend.values import QueueType

_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,40}$")


def redact_url(url: str) -> str:
    """Strip the password from a URL before it is logged or shown."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
MAX_PREFETCH = 2000  # RabbitMQ refuses a higher prefetch on quorum queues


def _tls_files(env: Mapping[str, str], urls: tuple[str, ...]) -> dict[str, str]:
    """AMQP_CA_FILE, AMQP_CERT_FILE and AMQP_KEY_FILE, checked: readable files, cert and key
    together, and only with amqps:// URLs (a CA with a plain-text URL would be a false comfort)."""
    out = {name: env.get(name, "").strip() for name in ("AMQP_CA_FILE", "AMQP_CERT_FILE", "AMQP_KEY_FILE")}
    for name, path in out.items():
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"{name}={path!r} is not a readable file")
    if bool(out["AMQP_CERT_FILE"]) != bool(out["AMQP_KEY_FILE"]):
        raise ConfigError("AMQP_CERT_FILE and AMQP_KEY_FILE go together (a client certificate and its key)")
    schemes = {urlsplit(u).scheme for u in urls}
    if any(out.values()) and schemes != {"amqps"}:
        raise ConfigError("AMQP_CA_FILE/AMQP_CERT_FILE/AMQP_KEY_FILE need amqps:// in every AMQP_URL entry")
    for url in urls:
        # pika reads TLS options from the URL's query (ssl_options=...), including cert_reqs=CERT_NONE:
        # refuse it, certificate checks are configured here and always on.
        if "ssl_options" in urlsplit(url).query:
            raise ConfigError(f"AMQP_URL entry {redact_url(url)!r}: use AMQP_CA_FILE/AMQP_CERT_FILE, not ssl_options")
    return out


MIN_RETENTION_SECONDS = 60.0


def _retention(env: Mapping[str, str], name: str, default: float, num: object) -> float:
    """0 keeps everything; otherwise at least MIN_RETENTION_SECONDS (a tombstone must outlive
    any emitter that could still try its number)."""
    value = num(name, default, float, 0.0)  # type: ignore[operator]
    if 0 < value < MIN_RETENTION_SECONDS:
        raise ConfigError(f"{name}={env.get(name)!r} must be 0 (keep everything) or at least {MIN_RETENTION_SECONDS:g} seconds")
    return float(value)


@dataclass(frozen=True)
class Settings:
    amqp_urls: tuple[str, ...] = ("amqp://guest:guest@127.0.0.1:5672/%2F",)
    api_url: str = "http://127.0.0.1:15672"
    api_user: str = "guest"
    api_password: str = "guest"
    api_verify: str | bool = True
    mongodb_url: str = ""  # empty: the embedded in-process store (mongomock)
    mongodb_db: str = "fifoq"
    prefix: str = "fifoq"
    queue_type: QueueType = QueueType.QUORUM
    confirm_timeout: float = 5.0
    prefetch: int = 20
    max_payload_bytes: int = 256 * 1024
    delivery_limit: int = 1_000_000
    transient_retries: int = 5
    transient_backoff: float = 0.5
    transient_backoff_max: float = 30.0
    poll_interval: float = 0.5
    gap_grace: float = 30.0
    relay_min_age: float = 10.0
    lanes: int = 4  # default lane count of actors with an ordering key
    # How long a connector's claim on a message lasts without renewal. The runtime renews it while
    # the handler runs; a replica takes over a message left processing by a dead one only after
    # the lease expires, so this is also the longest a SIGKILL mid-handler delays the handover.
    claim_lease: float = 30.0
    # How often an idle connector looks in the ledger for open messages the broker did not
    # deliver (never published, or lost from the queue) and runs them.
    sweep_interval: float = 30.0
    # How often an idle connector process reads its actors' state (pause) in one query: a pause
    # releases an idle queue within this, and a busy one within FIFOQ_POLL_INTERVAL.
    idle_poll: float = 5.0
    # A drain run (`--drain`) ends once no delivery came for this long and nothing is left in the
    # ledger that it could run.
    drain_idle: float = 0.3
    # One deadline per MongoDB operation (pymongo's timeoutMS): past it a write's outcome is
    # unknown and the ledger resolves it by reading back.
    mongodb_timeout_ms: int = 10_000
    # Settled messages older than this are removed (seconds; 0 keeps everything), and audit
    # entries older than audit_retention.
    retention: float = 7 * 24 * 3600.0
    audit_retention: float = 365 * 24 * 3600.0
    # TLS (amqps:// URLs): the CA that signed the broker's certificate (the system's trust store
    # when empty) and an optional client certificate. Verification is always on: there is no
    # setting to turn it off.
    amqp_ca_file: str = ""
    amqp_cert_file: str = ""
    amqp_key_file: str = ""
    # False for least-privilege broker users: the topology was created by `python -m admin
    # provision` and clients only check it with passive declarations (which need no permission).
    declare: bool = True
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build and validate settings. Raises ConfigError with the variable name on bad input."""
        env = os.environ if env is None else env
        d = cls()

        def num(name: str, default: float, kind: type = float, minimum: float = 0, maximum: float | None = None) -> float:
            raw = env.get(name, "")
            if raw.strip() == "":
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
            if value < minimum:
                raise ConfigError(f"{name}={raw!r} must be >= {minimum}")
            if maximum is not None and value > maximum:
                raise ConfigError(f"{name}={raw!r} must be <= {maximum}")
            return value

        urls = tuple(u.strip() for u in env.get("AMQP_URL", ",".join(d.amqp_urls)).split(",") if u.strip())
        if not urls:
            raise ConfigError("AMQP_URL is empty")
        for url in urls:
            if urlsplit(url).scheme not in ("amqp", "amqps"):
                raise ConfigError(f"AMQP_URL entry {redact_url(url)!r} must start with amqp:// or amqps://")
        tls = _tls_files(env, urls)
        declare_raw = env.get("FIFOQ_DECLARE", "1").strip().lower() or "1"
        if declare_raw not in _BOOLEANS:
            raise ConfigError(f"FIFOQ_DECLARE={declare_raw!r} must be 1 or 0 (true/false, yes/no)")
        mongodb_url = env.get("MONGODB_URL", "").strip()
        if mongodb_url and urlsplit(mongodb_url).scheme not in ("mongodb", "mongodb+srv", "mongomock", "mongomock+mongodb", "embedded"):
            raise ConfigError("MONGODB_URL must start with mongodb://, mongodb+srv://, mongomock://, mongomock+mongodb:// or embedded://")
        prefix = env.get("FIFOQ_PREFIX", d.prefix)
        if not _PREFIX_RE.match(prefix):
            raise ConfigError(f"FIFOQ_PREFIX={prefix!r}: use lowercase letters, digits, '.', '_' or '-'")
        try:
            queue_type = QueueType(env.get("FIFOQ_QUEUE_TYPE", d.queue_type.value))
        except ValueError:
            raise ConfigError("FIFOQ_QUEUE_TYPE must be 'quorum' or 'classic'") from None
        verify_raw = env.get("RABBITMQ_API_CA", "").strip()
        api_url = env.get("RABBITMQ_API_URL", d.api_url).rstrip("/")
        if urlsplit(api_url).scheme not in ("http", "https"):
            raise ConfigError("RABBITMQ_API_URL must start with http:// or https://")
        return cls(
            amqp_urls=urls,
            api_url=api_url,
            api_user=env.get("RABBITMQ_API_USER", d.api_user),
            api_password=env.get("RABBITMQ_API_PASSWORD", d.api_password),
            api_verify=verify_raw or True,
            mongodb_url=mongodb_url,
            mongodb_db=env.get("MONGODB_DB", d.mongodb_db) or d.mongodb_db,
            prefix=prefix,
            queue_type=queue_type,
            confirm_timeout=num("FIFOQ_CONFIRM_TIMEOUT", d.confirm_timeout, float, 0.1),
            # RabbitMQ caps prefetch on quorum queues at 2000 (a higher value is refused).
            prefetch=int(num("FIFOQ_PREFETCH", d.prefetch, int, 1, MAX_PREFETCH)),
            max_payload_bytes=int(num("FIFOQ_MAX_PAYLOAD_BYTES", d.max_payload_bytes, int, 64)),
            delivery_limit=int(num("FIFOQ_DELIVERY_LIMIT", d.delivery_limit, int, 1)),
            transient_retries=int(num("FIFOQ_TRANSIENT_RETRIES", d.transient_retries, int, 0)),
            transient_backoff=num("FIFOQ_TRANSIENT_BACKOFF", d.transient_backoff, float, 0.0),
            poll_interval=num("FIFOQ_POLL_INTERVAL", d.poll_interval, float, 0.05),
            gap_grace=num("FIFOQ_GAP_GRACE", d.gap_grace, float, 0.0),
            relay_min_age=num("FIFOQ_RELAY_MIN_AGE", d.relay_min_age, float, 0.0),
            lanes=int(num("FIFOQ_LANES", d.lanes, int, 1)),
            claim_lease=num("FIFOQ_CLAIM_LEASE_SECONDS", d.claim_lease, float, 1.0),
            sweep_interval=num("FIFOQ_SWEEP_INTERVAL", d.sweep_interval, float, 1.0),
            idle_poll=num("FIFOQ_IDLE_POLL_INTERVAL", d.idle_poll, float, 0.05),
            drain_idle=num("FIFOQ_DRAIN_IDLE", d.drain_idle, float, 0.05),
            mongodb_timeout_ms=int(num("MONGODB_TIMEOUT_MS", d.mongodb_timeout_ms, int, 100)),
            retention=_retention(env, "FIFOQ_RETENTION", d.retention, num),
            audit_retention=_retention(env, "FIFOQ_AUDIT_RETENTION", d.audit_retention, num),
            amqp_ca_file=tls["AMQP_CA_FILE"],
            amqp_cert_file=tls["AMQP_CERT_FILE"],
            amqp_key_file=tls["AMQP_KEY_FILE"],
            declare=_BOOLEANS[declare_raw],
        )

    def with_(self, **changes: object) -> "Settings":
        return replace(self, **changes)  # type: ignore[arg-type]

    def queue_name(self, actor: str, lane: int = 0) -> str:
        base = f"{self.prefix}.actor.{actor}"
        return base if lane == 0 else f"{base}.lane{lane}"

    @property
    def exchange(self) -> str:
        return f"{self.prefix}.messages"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dead-letter"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.dead-letter"
