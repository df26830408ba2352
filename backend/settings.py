"""Settings of every fifoq process, read from the environment by one parser and validated at start-up.

Each group of settings is a frozen model whose fields are declared with `setting()`: the
environment variable, the default, the range, in one line. Adding a setting is that one line
(plus its row in README.md's Configuration table and in .env.example, which
tests/test_config_docs.py checks):

    sweep_interval: float = setting("FIFOQ_SWEEP_INTERVAL", 60.0, ge=1.0)

`Model.from_env(env)` reads a mapping (os.environ when None). The rules are the same for every
variable of every process: surrounding blanks are ignored, an empty value means "not set" (the
default applies), numbers must be finite and in range, flags are 1/0 (true/false, yes/no, on/off).
A bad value raises ConfigError with one line naming the variable, which every command line turns
into `error: ...` and exit code 2.

The groups: `Settings` (broker, ledger, queues and delivery: every process), `LogSettings`
(backend.logs), `backend.ledger_server.LedgerClientSettings`, `admin.config.AdminConfig`,
`admin.alerts.AlertRules`, `admin.throttle.ThrottleConfig`, `admin.server.ServerConfig`,
`admin.releases.ReleaseSettings`, `admin.notify_settings.NotifySettings` (plus its per-actor
variables, read by prefix and checked by the same rules), the demo's `demo.cli.DemoSettings` and the benchmarks'
`bench.common.BenchSettings`.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.config import JsonDict

from backend.errors import ConfigError
from backend.values import QueueType

MAX_PREFETCH = 2000  # RabbitMQ refuses a higher prefetch on quorum queues
MAX_SHOWN = 60  # characters of a bad value quoted in an error message

_PREFIX_RE = r"^[a-z0-9][a-z0-9_.-]{0,40}$"
_AMQP_TLS_FILES = ("AMQP_CA_FILE", "AMQP_CERT_FILE", "AMQP_KEY_FILE")

M = TypeVar("M", bound="EnvSettings")


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


def setting(env: str, default: Any, *, secret: bool = False, doc: str = "", **constraints: Any) -> Any:
    """Declare one setting: its environment variable, its default and its range.

    Args:
        env: the environment variable (also the name used in error messages).
        default: the value when the variable is unset or empty.
        secret: never quote the value in an error message (passwords, keys).
        doc: a one-line description.
        constraints: pydantic's ge, gt, le, lt, pattern, min_length...
    """
    extra: JsonDict | None = {"secret": True} if secret else None
    return Field(default, validation_alias=env, description=doc or None, json_schema_extra=extra, repr=not secret,
                 **constraints)


class EnvSettings(BaseModel):
    """Base of every settings group: frozen, built from a mapping of environment variables."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True, extra="forbid",
                              allow_inf_nan=False, str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _flags_any_case(cls, value: Any, info: ValidationInfo) -> Any:
        """1/0, true/false, yes/no, on/off in any case (pydantic alone is case-sensitive)."""
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and field.annotation is bool and isinstance(value, str):
            return value.strip().lower()
        return value

    @classmethod
    def variables(cls) -> dict[str, str]:
        """{environment variable: field name} of this group."""
        return {str(f.validation_alias): name for name, f in cls.model_fields.items() if f.validation_alias}

    @classmethod
    def from_env(cls: type[M], env: Mapping[str, str] | None = None, *,
                 defaults: Mapping[str, str] | None = None) -> M:
        """Build and validate the group. Raises ConfigError (one line, naming the variable).

        Args:
            env: the variables (os.environ when None).
            defaults: values for variables `env` leaves unset, e.g. the demo's ADMIN_ENV=development.
        """
        env = os.environ if env is None else env
        given = {}
        for name in cls.variables():
            for source in (env, defaults or {}):
                raw = source.get(name)
                if raw is not None and str(raw).strip():
                    given[name] = str(raw)
                    break
        try:
            return cls.model_validate(given)
        except pydantic.ValidationError as exc:
            raise ConfigError(describe(cls, exc, given)) from None

    def with_(self: M, **changes: Any) -> M:
        """A copy with some attributes changed, like dataclasses.replace (for code and tests: the
        values are not validated again)."""
        unknown = set(changes) - set(type(self).model_fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no setting {', '.join(sorted(unknown))}")
        return self.model_copy(update=changes)


def describe(model: type[EnvSettings], exc: pydantic.ValidationError, given: Mapping[str, str]) -> str:
    """pydantic's errors as one line: `FIFOQ_PREFETCH='0': must be >= 1; ...`."""
    secret = {str(f.validation_alias) for f in model.model_fields.values()
              if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("secret")}
    parts = []
    for err in exc.errors(include_url=False):
        message = _message(err)
        name = str(err["loc"][0]) if err["loc"] else ""
        if not name:
            parts.append(message)
        elif name in secret or name not in given:
            parts.append(f"{name}: {message}")
        else:
            raw = given[name].strip()
            shown = raw if len(raw) <= MAX_SHOWN else raw[:MAX_SHOWN] + "..."
            parts.append(f"{name}={shown!r}: {message}")
    return "; ".join(parts)


_MESSAGES = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "int_parsing": "is not an integer",
    "int_from_float": "is not an integer",
    "float_parsing": "is not a number",
    "finite_number": "is not a finite number",
    "bool_parsing": "must be 1 or 0 (true/false, yes/no, on/off)",
    "string_too_short": "must be at least {min_length} characters long",
    "string_too_long": "must be at most {max_length} characters long",
}


def _message(err: Any) -> str:
    template = _MESSAGES.get(err["type"])
    if template:
        return template.format(**(err.get("ctx") or {}))
    if err["type"] in ("enum", "literal_error"):
        return "must be one of " + str((err.get("ctx") or {}).get("expected", "")).replace("'", "")
    message = str(err["msg"])
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if message[1:2].islower():  # "Input should be..." reads "input should be..." after the name
        message = message[:1].lower() + message[1:]
    return message


MIN_RETENTION_SECONDS = 60.0


class Settings(EnvSettings):
    """Broker, ledger, queues and delivery: the settings every process shares."""

    # AMQP URL(s); a comma-separated list for a cluster. The path is the virtual host.
    amqp_urls: tuple[str, ...] = setting("AMQP_URL", ("amqp://guest:guest@127.0.0.1:5672/%2F",))
    api_url: str = setting("RABBITMQ_API_URL", "http://127.0.0.1:15672")
    api_user: str = setting("RABBITMQ_API_USER", "guest")
    api_password: str = setting("RABBITMQ_API_PASSWORD", "guest", secret=True)
    # A CA bundle (path) for an https:// management API, or True: the system's trust store.
    api_verify: str | bool = setting("RABBITMQ_API_CA", True)
    mongodb_url: str = setting("MONGODB_URL", "", secret=True)  # empty: the embedded in-process store
    mongodb_db: str = setting("MONGODB_DB", "fifoq")
    prefix: str = setting("FIFOQ_PREFIX", "fifoq")
    queue_type: QueueType = setting("FIFOQ_QUEUE_TYPE", QueueType.QUORUM)
    confirm_timeout: float = setting("FIFOQ_CONFIRM_TIMEOUT", 5.0, ge=0.1)
    prefetch: int = setting("FIFOQ_PREFETCH", 100, ge=1, le=MAX_PREFETCH)
    max_payload_bytes: int = setting("FIFOQ_MAX_PAYLOAD_BYTES", 256 * 1024, ge=64, le=64 * 1024 * 1024)
    delivery_limit: int = setting("FIFOQ_DELIVERY_LIMIT", 1_000_000, ge=1, le=2**31 - 1)
    transient_retries: int = setting("FIFOQ_TRANSIENT_RETRIES", 5, ge=0, le=1000)
    transient_backoff: float = setting("FIFOQ_TRANSIENT_BACKOFF", 0.5, ge=0.0, le=3600.0)
    transient_backoff_max: float = setting("FIFOQ_TRANSIENT_BACKOFF_MAX", 30.0, ge=0.0, le=86400.0)
    poll_interval: float = setting("FIFOQ_POLL_INTERVAL", 0.5, ge=0.05, le=60.0)
    gap_grace: float = setting("FIFOQ_GAP_GRACE", 30.0, ge=0.0, le=86400.0)
    relay_min_age: float = setting("FIFOQ_RELAY_MIN_AGE", 10.0, ge=0.0, le=86400.0)
    lanes: int = setting("FIFOQ_LANES", 4, ge=1, le=64)  # lanes of actors with an ordering key
    # How long a connector's claim on a message lasts without renewal. The runtime renews it while
    # the handler runs; a replica takes over a message left processing by a dead one only after
    # the lease expires, so this is also the longest a SIGKILL mid-handler delays the handover.
    claim_lease: float = setting("FIFOQ_CLAIM_LEASE_SECONDS", 30.0, ge=1.0, le=86400.0)
    # How often an idle connector looks in the ledger for open messages the broker did not deliver
    # (never published, or lost from the queue) and runs them.
    sweep_interval: float = setting("FIFOQ_SWEEP_INTERVAL", 60.0, ge=1.0, le=86400.0)
    # How often an idle connector process reads its actors' state (pause), in one query for all:
    # a pause releases an idle queue within this, and a busy one within FIFOQ_POLL_INTERVAL.
    idle_poll: float = setting("FIFOQ_IDLE_POLL_INTERVAL", 6.0, ge=0.05, le=3600.0)
    # A drain run (`--drain`) ends once no delivery came for this long and nothing is left in the
    # ledger that it could run.
    drain_idle: float = setting("FIFOQ_DRAIN_IDLE", 0.3, ge=0.05, le=60.0)
    # One deadline per MongoDB operation (pymongo's timeoutMS): past it a write's outcome is
    # unknown and the ledger resolves it by reading back.
    mongodb_timeout_ms: int = setting("MONGODB_TIMEOUT_MS", 10_000, ge=100, le=600_000)
    # Settled messages older than this are removed (seconds; 0 keeps everything); audit entries
    # older than audit_retention.
    retention: float = setting("FIFOQ_RETENTION", 7 * 24 * 3600.0, ge=0.0)
    audit_retention: float = setting("FIFOQ_AUDIT_RETENTION", 365 * 24 * 3600.0, ge=0.0)
    # TLS (amqps:// URLs): the CA that signed the broker's certificate (the system's trust store
    # when empty) and an optional client certificate. Verification is always on: there is no
    # setting to turn it off.
    amqp_ca_file: str = setting("AMQP_CA_FILE", "")
    amqp_cert_file: str = setting("AMQP_CERT_FILE", "")
    amqp_key_file: str = setting("AMQP_KEY_FILE", "")
    # False for least-privilege broker users: the topology was created by `python -m admin
    # provision` and clients only check it with passive declarations (which need no permission).
    declare: bool = setting("FIFOQ_DECLARE", True)
    vhost: str = setting("FIFOQ_VHOST", "fifoq", max_length=100)  # the virtual host provisioning creates
    operator: str = setting("FIFOQ_OPERATOR", "", max_length=100)  # operator name of CLI actions

    @field_validator("amqp_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = tuple(u.strip() for u in value.split(",") if u.strip())
        for url in value or ():
            if urlsplit(str(url)).scheme not in ("amqp", "amqps"):
                raise ValueError(f"entry {redact_url(str(url))!r} must start with amqp:// or amqps://")
            # pika reads TLS options from the URL's query (ssl_options=...), including
            # cert_reqs=CERT_NONE: refuse it, certificate checks are configured here and always on.
            if "ssl_options" in urlsplit(str(url)).query:
                raise ValueError(f"entry {redact_url(str(url))!r}: use AMQP_CA_FILE/AMQP_CERT_FILE, not ssl_options")
        if not value:
            raise ValueError("no URL given")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.match(_PREFIX_RE, value):
            raise ValueError("use 1 to 41 lowercase letters, digits, '.', '_' or '-'")
        return value

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("mongodb_url")
    @classmethod
    def _mongodb_url(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("mongodb", "mongodb+srv", "mongomock", "mongomock+mongodb", "embedded"):
            raise ValueError("must start with mongodb://, mongodb+srv://, mongomock://, mongomock+mongodb:// or embedded://")
        return value

    @field_validator("retention", "audit_retention")
    @classmethod
    def _retention(cls, value: float) -> float:
        # A tombstone must outlive any emitter that could still try its number.
        if 0 < value < MIN_RETENTION_SECONDS:
            raise ValueError(f"must be 0 (keep everything) or at least {MIN_RETENTION_SECONDS:g} seconds")
        return value

    @field_validator("amqp_ca_file", "amqp_cert_file", "amqp_key_file")
    @classmethod
    def _readable(cls, value: str) -> str:
        if value and not os.access(value, os.R_OK):
            raise ValueError(f"{value!r} is not a readable file")
        return value

    @model_validator(mode="after")
    def _tls(self) -> Settings:
        """The client certificate and its key go together, and only with amqps:// URLs (a CA
        with a plain-text URL would be a false comfort)."""
        if bool(self.amqp_cert_file) != bool(self.amqp_key_file):
            raise ValueError("AMQP_CERT_FILE and AMQP_KEY_FILE go together (a client certificate and its key)")
        schemes = {urlsplit(u).scheme for u in self.amqp_urls}
        if (self.amqp_ca_file or self.amqp_cert_file) and schemes != {"amqps"}:
            raise ValueError("AMQP_CA_FILE/AMQP_CERT_FILE/AMQP_KEY_FILE need amqps:// in every AMQP_URL entry")
        return self

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, (tuple(redact_url(u) for u in value) if name == "amqp_urls" else value)

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


class LogSettings(EnvSettings):
    """How entry points log (backend.logs.configure)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = setting("LOG_LEVEL", None)
    format: Literal["text", "json"] = setting("LOG_FORMAT", "text")

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value
