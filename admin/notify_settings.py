"""Settings of the webhook notifier (admin.notifier), read from the environment and validated at
start-up: where each actor's block and unblock notifications go, signed with which secret.

- ADMIN_NOTIFY_URL, ADMIN_NOTIFY_SECRET: the default receiver and its HMAC secret.
- ADMIN_NOTIFY_URL_<ACTOR>, ADMIN_NOTIFY_SECRET_<ACTOR>: one actor's own receiver and secret
  (<ACTOR> is the actor's name in capitals, every other character than a letter or a digit as
  `_`: chat-alice -> CHAT_ALICE). An actor's URL without its own secret uses the default secret;
  its secret without its own URL signs what goes to the default URL. ADMIN_NOTIFY_URL_<ACTOR>=off:
  nothing is sent for that actor.
- ADMIN_NOTIFY_INTERVAL_SECONDS (5): how often the notifier reads the current blocks.
- ADMIN_NOTIFY_TIMEOUT_SECONDS (10): connect and read timeout of one delivery.
- ADMIN_NOTIFY_RETRY_SECONDS (5): the first retry's delay; each next one doubles, up to 10 min.
- ADMIN_NOTIFY_GIVE_UP_HOURS (24): a notification still refused after this long is dropped (logged).
- ADMIN_PUBLIC_URL (none): the console's address as people reach it, for links in the payload.

A URL must be http or https with a host; a secret at least MIN_SECRET characters. Every URL must
have a secret: unsigned notifications are not sent.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from backend.errors import ConfigError
from backend.settings import redact_url

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


@dataclass(frozen=True)
class Target:
    """Where one actor's notifications go."""

    url: str
    secret: str = field(repr=False)

    @property
    def shown_url(self) -> str:
        return redact_url(self.url)


@dataclass(frozen=True)
class NotifySettings:
    default_url: str | None = None
    default_secret: str | None = field(default=None, repr=False)
    urls: Mapping[str, str] = field(default_factory=dict)  # by actor suffix; OFF disables
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    interval_seconds: float = 5.0
    timeout_seconds: float = 10.0
    retry_seconds: float = 5.0
    give_up_hours: float = 24.0
    public_url: str | None = None

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

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NotifySettings:
        """Raises ConfigError naming the variable on bad input."""
        d = cls()
        default_url = _url(env, "ADMIN_NOTIFY_URL")
        default_secret = _secret(env, "ADMIN_NOTIFY_SECRET")
        urls: dict[str, str] = {}
        secrets: dict[str, str] = {}
        for name in sorted(env):
            if name.startswith(URL_PREFIX) and name != URL_PREFIX:
                value = str(env[name]).strip()
                urls[name[len(URL_PREFIX):]] = OFF if value.lower() == OFF else (_url(env, name) or "")
            elif name.startswith(SECRET_PREFIX) and name != SECRET_PREFIX:
                secret = _secret(env, name)
                if secret:
                    secrets[name[len(SECRET_PREFIX):]] = secret
        for suffix, url in urls.items():
            if url and url != OFF and not secrets.get(suffix, default_secret):
                raise ConfigError(f"{URL_PREFIX}{suffix} needs a secret: set {SECRET_PREFIX}{suffix} or ADMIN_NOTIFY_SECRET")
        if default_url and not default_secret:
            raise ConfigError("ADMIN_NOTIFY_URL needs a secret: set ADMIN_NOTIFY_SECRET (at least "
                              f"{MIN_SECRET} random characters)")
        public = _url(env, "ADMIN_PUBLIC_URL")
        return cls(
            default_url=default_url, default_secret=default_secret, urls=urls, secrets=secrets,
            interval_seconds=_positive(env, "ADMIN_NOTIFY_INTERVAL_SECONDS", d.interval_seconds),
            timeout_seconds=_positive(env, "ADMIN_NOTIFY_TIMEOUT_SECONDS", d.timeout_seconds),
            retry_seconds=_positive(env, "ADMIN_NOTIFY_RETRY_SECONDS", d.retry_seconds),
            give_up_hours=_positive(env, "ADMIN_NOTIFY_GIVE_UP_HOURS", d.give_up_hours),
            public_url=public.rstrip("/") if public else None,
        )


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = str(env.get(name, "")).strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={redact_url(raw)!r} must be an http:// or https:// URL with a host")
    return raw


def _secret(env: Mapping[str, str], name: str) -> str | None:
    raw = str(env.get(name, "")).strip()
    if not raw:
        return None
    if len(raw) < MIN_SECRET:
        raise ConfigError(f"{name} must be at least {MIN_SECRET} characters long (a random string)")
    return raw


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    raw = str(env.get(name, "")).strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise ConfigError(f"{name}={raw!r} must be greater than 0")
    return value
