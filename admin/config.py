"""The console's own settings, read from the environment by backend.settings' parser."""
from __future__ import annotations

import logging
import secrets
from typing import Any, Literal

from pydantic import field_validator, model_validator

from backend.settings import EnvSettings, setting

log = logging.getLogger(__name__)

MIN_SECRET_LENGTH = 32


class AdminConfig(EnvSettings):
    """ADMIN_SECRET_KEY is required in production; in development or testing a random key is
    generated when it is unset (sessions then do not survive a restart)."""

    env: Literal["production", "development", "testing"] = setting("ADMIN_ENV", "production")
    secret_key: str = setting("ADMIN_SECRET_KEY", "", secret=True)
    session_minutes: int = setting("ADMIN_SESSION_MINUTES", 60, ge=1, le=7 * 24 * 60)
    host: str = setting("ADMIN_HOST", "127.0.0.1")
    port: int = setting("ADMIN_PORT", 5000, ge=1, le=65535)
    # True: /metrics answers without login (keep the console's port on a private network then).
    metrics_public: bool = setting("ADMIN_METRICS_PUBLIC", False)
    # A first admin created by `python -m admin serve` when there is no user yet.
    bootstrap_user: str = setting("ADMIN_BOOTSTRAP_USER", "")
    bootstrap_password: str = setting("ADMIN_BOOTSTRAP_PASSWORD", "", secret=True)

    @field_validator("env", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _secret_key(self) -> AdminConfig:
        if not self.secret_key:
            if self.env == "production":
                raise ValueError(
                    "ADMIN_SECRET_KEY is required (at least 32 random characters, e.g. "
                    "`python -c 'import secrets; print(secrets.token_hex(32))'`); "
                    "set ADMIN_ENV=development to use a throw-away key"
                )
            log.warning("ADMIN_SECRET_KEY is not set: using a random key (ADMIN_ENV=%s); sessions end at restart",
                        self.env)
            object.__setattr__(self, "secret_key", secrets.token_hex(32))  # the model is frozen
        elif len(self.secret_key) < MIN_SECRET_LENGTH:
            raise ValueError(f"ADMIN_SECRET_KEY must be at least {MIN_SECRET_LENGTH} characters long")
        return self

    @property
    def development(self) -> bool:
        return self.env in ("development", "testing")
