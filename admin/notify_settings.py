"""Settings of the webhook notifier (admin.notifier), read from the environment and validated at
start-up: where each actor's block and unblock notifications go, signed with which secret.

`NotifySettings` is a settings group like the others (backend.settings.EnvSettings): the
fixed-name variables are its fields, read by the project's one parser with its rules (blanks
ignored, empty means unset, finite numbers in range) and its one-line errors naming the variable.

- ADMIN_NOTIFY_URL, ADMIN_NOTIFY_SECRET: the default receiver and its HMAC secret.
- ADMIN_NOTIFY_INTERVAL_SECONDS (5): how often the notifier reads the current blocks.
- ADMIN_NOTIFY_TIMEOUT_SECONDS (10): connect and read timeout of one delivery.
- ADMIN_NOTIFY_RETRY_SECONDS (5): the first retry's delay; each next one doubles, up to 10 min.
- ADMIN_NOTIFY_GIVE_UP_HOURS (24): a notification still refused after this long is dropped (logged).
- ADMIN_PUBLIC_URL (none): the console's address as people reach it, for links in the payload
  (a trailing `/` is dropped).

The per-actor variables have names no model can declare, so `NotifySettings.from_env` reads them
by prefix, with the same rules (the same functions, `check_url` and `check_secret`, as the
fields' validators) and the same one-line errors:

- ADMIN_NOTIFY_URL_<ACTOR>, ADMIN_NOTIFY_SECRET_<ACTOR>: one actor's own receiver and secret
  (<ACTOR> is the actor's name in capitals, every other character than a letter or a digit as
  `_`: chat-alice -> CHAT_ALICE). An actor's URL without its own secret uses the default secret;
  its secret without its own URL signs what goes to the default URL. ADMIN_NOTIFY_URL_<ACTOR>=off:
  nothing is sent for that actor. Empty, like any variable: not set (the defaults apply).

A URL must be http or https with a host; a secret at least MIN_SECRET characters. Every URL must
have a secret: unsigned notifications are not sent. Secrets never appear in an error or a repr;
URLs only with their password redacted (backend.settings.redact_url).
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from backend.errors import ConfigError
from backend.settings import EnvSettings, redact_url, setting

MIN_SECRET = 16
OFF = "off"
URL_PREFIX = "ADMIN_NOTIFY_URL_"
SECRET_PREFIX = "ADMIN_NOTIFY_SECRET_"


def actor_suffix(actor: str) -> str:
    """The <ACTOR> part of an actor's variables: chat-alice -> CHAT_ALICE."""
    return re.sub(r"[^A-Z0-9]", "_", actor.upper())


def url_variable(actor: str) -> str:
    return f"ADMIN_NOTIFY_URL_{actor_suffix(actor)}"


def secret_variable(actor: str) -> str:
    return f"ADMIN_NOTIFY_SECRET_{actor_suffix(actor)}"


def check_url(value: str) -> str:
    """The rule of every notifier URL (fields and per-actor variables): http or https with a host.
    Raises ValueError whose message quotes the URL with its password redacted."""
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:  # a bad port or IPv6 address
        ok = False
    if not ok:
        raise ValueError(f"{redact_url(value)!r} must be an http:// or https:// URL with a host")
    return value


def check_secret(value: str) -> str:
    """The rule of every notifier secret. Raises ValueError, never quoting the value."""
    if len(value) < MIN_SECRET:
        raise ValueError(f"must be at least {MIN_SECRET} characters long (a random string)")
    return value


@dataclass(frozen=True)
class Target:
    """Where one actor's notifications go."""

    url: str
    secret: str = field(repr=False)

    @property
    def shown_url(self) -> str:
        return redact_url(self.url)


class NotifySettings(EnvSettings):
    """The notifier's settings: the fixed-name variables as fields; `urls` and `secrets`, by actor
    suffix, from the per-actor variables (filled by from_env)."""

    # The URLs are declared secret so that an error never quotes them raw (a URL may carry a
    # password): check_url's message shows them redacted, and so does the repr.
    default_url: str | None = setting("ADMIN_NOTIFY_URL", None, secret=True, doc="the default receiver")
    default_secret: str | None = setting("ADMIN_NOTIFY_SECRET", None, secret=True,
                                         doc=f"HMAC secret of the notifications ({MIN_SECRET}+ characters)")
    interval_seconds: float = setting("ADMIN_NOTIFY_INTERVAL_SECONDS", 5.0, gt=0, doc="seconds between two readings of the blocks")
    timeout_seconds: float = setting("ADMIN_NOTIFY_TIMEOUT_SECONDS", 10.0, gt=0, doc="connect and read timeout of one delivery")
    retry_seconds: float = setting("ADMIN_NOTIFY_RETRY_SECONDS", 5.0, gt=0, doc="first retry delay (doubling, up to 10 min)")
    give_up_hours: float = setting("ADMIN_NOTIFY_GIVE_UP_HOURS", 24.0, gt=0, doc="hours after which a refused notification is dropped")
    public_url: str | None = setting("ADMIN_PUBLIC_URL", None, secret=True, doc="the console's address, for links")
    # By actor suffix, from ADMIN_NOTIFY_URL_<ACTOR> (OFF: nothing sent) and ADMIN_NOTIFY_SECRET_<ACTOR>.
    urls: dict[str, str] = Field(default_factory=dict, repr=False)
    secrets: dict[str, str] = Field(default_factory=dict, repr=False)

    @field_validator("default_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return check_url(value) if value else None

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return check_url(value).rstrip("/") if value else None

    @field_validator("default_secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        return check_secret(value) if value else None

    @model_validator(mode="after")
    def _signed(self) -> NotifySettings:
        if self.default_url and not self.default_secret:
            raise ValueError(f"ADMIN_NOTIFY_URL needs a secret: set ADMIN_NOTIFY_SECRET (at least {MIN_SECRET} random characters)")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *,
                 defaults: Mapping[str, str] | None = None) -> NotifySettings:
        """The fixed-name variables through EnvSettings.from_env, then the per-actor ones by
        prefix. Raises ConfigError (one line, naming the variable) on bad input."""
        env = os.environ if env is None else env
        fixed = super().from_env(env, defaults=defaults)
        urls: dict[str, str] = {}
        secrets: dict[str, str] = {}
        for name in sorted(set(env) | set(defaults or {})):
            if name.startswith(URL_PREFIX) and name != URL_PREFIX:
                raw = _given(name, env, defaults)
                if raw:
                    urls[name[len(URL_PREFIX):]] = OFF if raw.lower() == OFF else _checked(name, raw, check_url)
            elif name.startswith(SECRET_PREFIX) and name != SECRET_PREFIX:
                raw = _given(name, env, defaults)
                if raw:
                    secrets[name[len(SECRET_PREFIX):]] = _checked(name, raw, check_secret)
        for suffix, url in urls.items():
            if url != OFF and not secrets.get(suffix, fixed.default_secret):
                raise ConfigError(f"{URL_PREFIX}{suffix} needs a secret: set {SECRET_PREFIX}{suffix} or ADMIN_NOTIFY_SECRET "
                                  f"(at least {MIN_SECRET} random characters)")
        return fixed.with_(urls=urls, secrets=secrets)

    def target(self, actor: str) -> Target | None:
        """The actor's receiver, or None when nothing is sent for it."""
        suffix = actor_suffix(actor)
        url = self.urls.get(suffix, self.default_url)
        if not url or url == OFF:
            return None
        secret = self.secrets.get(suffix, self.default_secret)
        assert secret, "validated by from_env"
        return Target(url, secret)

    @property
    def configured(self) -> bool:
        return bool(self.default_url) or any(u != OFF for u in self.urls.values())

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield from super().__repr_args__()
        yield "default_url", _redacted(self.default_url)
        yield "public_url", _redacted(self.public_url)
        yield "urls", {suffix: _redacted(url) for suffix, url in self.urls.items()}


def _given(name: str, env: Mapping[str, str], defaults: Mapping[str, str] | None) -> str:
    """A per-actor variable's value as EnvSettings.from_env reads one: blanks stripped, from `env`
    or else `defaults`; "" when unset."""
    for source in (env, defaults or {}):
        raw = str(source.get(name) or "").strip()
        if raw:
            return raw
    return ""


def _checked(name: str, raw: str, check: Callable[[str], str]) -> str:
    """One per-actor value through the fields' rule, its error as backend.settings.describe writes
    a secret field's: `NAME: message` (the value itself never quoted)."""
    try:
        return check(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _redacted(url: str | None) -> str | None:
    return redact_url(url) if url and url != OFF else url
