"""The one settings parser, the one logging set-up (with correlation ids) and the named backoffs."""
from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest
import requests
from flask import Flask

from admin.config import AdminConfig
from admin.throttle import ThrottleConfig
from backend import backoff, logs
from backend.errors import ConfigError
from backend.settings import EnvSettings, LogSettings, Settings, setting


# -- the parser -----------------------------------------------------------------------------------
def test_settings_empty_or_blank_means_the_default_and_blanks_are_ignored() -> None:
    s = Settings.from_env({"FIFOQ_PREFETCH": "  ", "FIFOQ_PREFIX": "", "FIFOQ_LANES": " 7 ", "FIFOQ_DECLARE": " Off "})
    assert (s.prefetch, s.prefix, s.lanes, s.declare) == (100, "fifoq", 7, False)


@pytest.mark.parametrize("env, message", [
    ({"FIFOQ_PREFETCH": "2001"}, "FIFOQ_PREFETCH='2001': must be <= 2000"),
    ({"FIFOQ_PREFETCH": "1.5"}, "FIFOQ_PREFETCH='1.5': is not an integer"),
    ({"FIFOQ_CONFIRM_TIMEOUT": "nan"}, "FIFOQ_CONFIRM_TIMEOUT='nan': is not a finite number"),
    ({"FIFOQ_GAP_GRACE": "-inf"}, "FIFOQ_GAP_GRACE='-inf': is not a finite number"),
    ({"FIFOQ_POLL_INTERVAL": "0"}, "FIFOQ_POLL_INTERVAL='0': must be >= 0.05"),
    ({"FIFOQ_DECLARE": "maybe"}, "FIFOQ_DECLARE='maybe': must be 1 or 0"),
    ({"FIFOQ_QUEUE_TYPE": "stream"}, "FIFOQ_QUEUE_TYPE='stream': must be one of quorum or classic"),
    ({"FIFOQ_LANES": "9" * 5000}, "FIFOQ_LANES='999"),
    ({"AMQP_URL": " , "}, "AMQP_URL"),
    ({"AMQP_URL": "amqp://h/?ssl_options=x"}, "not ssl_options"),
    ({"AMQP_CERT_FILE": "/etc/hostname"}, "AMQP_CERT_FILE and AMQP_KEY_FILE go together"),
])
def test_settings_bad_values_are_one_line_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert len(str(err.value)) < 300  # a 5,000-digit value is cut, not echoed


def test_settings_secrets_are_never_quoted_in_errors_or_repr() -> None:
    with pytest.raises(ConfigError) as err:
        AdminConfig.from_env({"ADMIN_SECRET_KEY": "tooshort-s3cret"})
    assert "tooshort-s3cret" not in str(err.value) and "ADMIN_SECRET_KEY" in str(err.value)
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"MONGODB_URL": "postgres://u:pw-s3cret@h/db"})
    assert "pw-s3cret" not in str(err.value)
    s = Settings.from_env({"AMQP_URL": "amqp://u:amqp-s3cret@h/%2F", "RABBITMQ_API_PASSWORD": "api-s3cret"})
    assert "amqp-s3cret" not in repr(s) and "api-s3cret" not in repr(s)
    assert s.api_password == "api-s3cret" and s.amqp_urls == ("amqp://u:amqp-s3cret@h/%2F",)


def test_settings_groups_share_the_parser_and_defaults_fill_only_unset_variables() -> None:
    assert ThrottleConfig.from_env({"ADMIN_LOGIN_LIMITS": " 7 per minute "}).limits == "7 per minute"
    with pytest.raises(ConfigError, match="ADMIN_LOGIN_LIMITS='0 per minute': expected limits such as"):
        ThrottleConfig.from_env({"ADMIN_LOGIN_LIMITS": "0 per minute"})
    cfg = AdminConfig.from_env({"ADMIN_ENV": "Testing"}, defaults={"ADMIN_ENV": "production", "ADMIN_PORT": "5055"})
    assert (cfg.env, cfg.port, cfg.development) == ("testing", 5055, True)


def test_settings_adding_a_setting_is_one_line() -> None:
    class Ledger(EnvSettings):
        sweep_interval: float = setting("FIFOQ_SWEEP_INTERVAL", 60.0, ge=1.0)

    assert Ledger.from_env({}).sweep_interval == 60.0
    assert Ledger.from_env({"FIFOQ_SWEEP_INTERVAL": "2.5"}).sweep_interval == 2.5
    with pytest.raises(ConfigError, match=r"FIFOQ_SWEEP_INTERVAL='0.5': must be >= 1.0"):
        Ledger.from_env({"FIFOQ_SWEEP_INTERVAL": "0.5"})
    assert Ledger.variables() == {"FIFOQ_SWEEP_INTERVAL": "sweep_interval"}


def test_settings_public_api_is_kept() -> None:
    s = Settings.from_env({"FIFOQ_PREFIX": "shop"})
    assert s.queue_name("payment") == "shop.actor.payment" and s.queue_name("payment", 2) == "shop.actor.payment.lane2"
    assert (s.exchange, s.dead_letter_exchange, s.dead_letter_queue) == ("shop.messages", "shop.dead-letter",
                                                                         "shop.dead-letter")
    changed = s.with_(prefetch=5, prefix="other")
    assert (changed.prefetch, changed.prefix, s.prefetch) == (5, "other", 100)
    with pytest.raises(TypeError, match="no setting"):
        s.with_(prefecth=5)
    assert Settings(prefix="x") == Settings(prefix="x") and hash(Settings()) == hash(Settings())


# -- logging --------------------------------------------------------------------------------------
@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def test_logs_json_lines_carry_the_correlation_id(restore_logging: None) -> None:
    out = io.StringIO()
    settings = logs.configure(env={"LOG_FORMAT": "JSON", "LOG_LEVEL": "debug"}, stream=out)
    assert settings == LogSettings(level="DEBUG", format="json")
    with logs.correlation("order-42"):
        logging.getLogger("fifoq.test").info("actor=%s message=%s done", "payment", "m1")
    logging.getLogger("fifoq.test").warning("outside")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["correlation_id"] == "order-42" and first["message"] == "actor=payment message=m1 done"
    assert first["level"] == "INFO" and first["logger"] == "fifoq.test" and "time" in first
    assert second["correlation_id"] == "-"


def test_logs_configure_is_idempotent_and_leaves_other_handlers(restore_logging: None) -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    logs.configure(env={}, stream=io.StringIO())
    out = io.StringIO()
    logs.configure("WARNING", env={}, stream=out)
    assert foreign in root.handlers and root.level == logging.WARNING
    logging.getLogger("fifoq.test").warning("once")
    assert out.getvalue().count("once") == 1 and "cid=-" in out.getvalue()
    with pytest.raises(ConfigError, match="LOG_FORMAT='xml'"):
        logs.configure(env={"LOG_FORMAT": "xml"})


def test_logs_console_requests_carry_a_correlation_id(app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    """The console's own lines and the server's request line carry the request's id, echoed in
    X-Correlation-Id; an implausible id from a client is replaced."""
    from werkzeug.serving import make_server

    logs.install()
    caplog.set_level(logging.INFO)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        resp = requests.get(f"{base}/login", headers={"X-Correlation-Id": "trace-7"}, timeout=10)
        assert resp.headers["X-Correlation-Id"] == "trace-7"
        hostile = requests.get(f"{base}/login", headers={"X-Correlation-Id": "a b\u00e9<script>"}, timeout=10)
        generated = hostile.headers["X-Correlation-Id"]
        assert generated.isalnum() and len(generated) == 16
    finally:
        server.shutdown()
        thread.join(timeout=10)
    request_lines = [r for r in caplog.records if r.name == "werkzeug" and "GET /login" in r.getMessage()]
    assert [r.correlation_id for r in request_lines] == ["trace-7", generated]


# -- backoff schedules ----------------------------------------------------------------------------
def test_backoff_schedules_are_named_and_capped() -> None:
    assert [backoff.RECONNECT.delay(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]
    assert [backoff.relay(1.0).delay(n) for n in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    s = Settings().with_(transient_backoff=0.5, transient_backoff_max=3.0)
    assert [backoff.transient(s).delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.RECONNECT.delay(10_000) == 15.0  # no overflow after a long outage
    delays = backoff.LEDGER_RETRY.delays()
    assert [next(delays) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    with pytest.raises(ValueError):
        backoff.Backoff(first=-1)
