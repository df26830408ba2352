"""The console's own settings, read from the environment and validated at start-up."""
from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from typing import Mapping

from backend.errors import ConfigError

log = logging.getLogger(__name__)

ENVIRONMENTS = ("production", "development", "testing")
MIN_SECRET_LENGTH = 32


@dataclass(frozen=True)
class AdminConfig:
    env: str
    secret_key: str
    session_minutes: int
    host: str
    port: int

    @property
    def development(self) -> bool:
        return self.env in ("development", "testing")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "AdminConfig":
        """Raises ConfigError naming the variable on bad input.

        ADMIN_SECRET_KEY is required in production; in development or testing a random key is
        generated (sessions then do not survive a restart).
        """
        env = os.environ if env is None else env
        mode = env.get("ADMIN_ENV", "production").strip().lower() or "production"
        if mode not in ENVIRONMENTS:
            raise ConfigError(f"ADMIN_ENV={mode!r} must be one of {', '.join(ENVIRONMENTS)}")
        secret = env.get("ADMIN_SECRET_KEY", "").strip()
        if not secret:
            if mode == "production":
                raise ConfigError(
                    "ADMIN_SECRET_KEY is required (at least 32 random characters, e.g. "
                    "`python -c 'import secrets; print(secrets.token_hex(32))'`); "
                    "set ADMIN_ENV=development to use a throw-away key"
                )
            secret = secrets.token_hex(32)
            log.warning("ADMIN_SECRET_KEY is not set: using a random key (ADMIN_ENV=%s); sessions end at restart", mode)
        elif len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(f"ADMIN_SECRET_KEY must be at least {MIN_SECRET_LENGTH} characters long")
        minutes = _int(env, "ADMIN_SESSION_MINUTES", 60, 1, 7 * 24 * 60)
        port = _int(env, "ADMIN_PORT", 5000, 1, 65535)
        host = env.get("ADMIN_HOST", "127.0.0.1").strip() or "127.0.0.1"
        return cls(env=mode, secret_key=secret, session_minutes=minutes, host=host, port=port)


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={raw!r} must be between {lo} and {hi}")
    return value
