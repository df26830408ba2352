"""Serve the console: gunicorn in production, Werkzeug's development server on request.

    run()                      # gunicorn: ADMIN_WORKERS processes of ADMIN_THREADS threads
    run(dev=True)              # Werkzeug's development server, one process (a developer asked)

Every gunicorn worker builds its own app (`console_app`, no preloading: MongoDB clients must not
cross a fork). The console's background jobs (`background(app, name, run)`) still run once per
console: the worker that takes an exclusive lock on a file of this server runs them; the others
wait on that lock and take over if that worker dies.

With the embedded store (MONGODB_URL empty, mongomock://) or a served one (embedded://), console
users live in the process: the console then runs one worker, whatever ADMIN_WORKERS says.

Settings (environment, validated before anything starts; ConfigError names the variable):
ADMIN_HOST, ADMIN_PORT (admin.config), ADMIN_WORKERS (2), ADMIN_THREADS (4), ADMIN_TIMEOUT (30 s:
a worker silent that long is restarted), ADMIN_GRACEFUL_TIMEOUT (30 s to finish requests on
stop), ADMIN_KEEPALIVE (5 s) and ADMIN_ACCESS_LOG ("-": the console's log; a file path; "off").

gunicorn logs through the project's logging (backend.logs, set up by the command line before
run()): its own lines and, with ADMIN_ACCESS_LOG=-, the access log, each line with the request's
correlation id (LOG_FORMAT text or json). An access log file gets gunicorn's combined format
plus the duration and `cid=`, the correlation id.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from pydantic import field_validator

from admin.config import AdminConfig
from backend.commandline import check_port
from backend.errors import ConfigError, FifoqError
from backend.settings import EnvSettings, LogSettings, Settings, setting

log = logging.getLogger(__name__)

BACKGROUND_KEY = "fifoq_background"
# gunicorn's combined format, then the request's duration (%(M)s ms).
ACCESS_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms'
# In an access log file (not the console's log, whose lines carry cid=), the request's
# correlation id from the answer's header (admin.correlation).
ACCESS_LOG_FILE_FORMAT = ACCESS_LOG_FORMAT + " cid=%({x-correlation-id}o)s"


class ServerConfig(EnvSettings):
    """How gunicorn serves the console (the address is AdminConfig's ADMIN_HOST/ADMIN_PORT)."""

    workers: int = setting("ADMIN_WORKERS", 2, ge=1, le=64)
    threads: int = setting("ADMIN_THREADS", 4, ge=1, le=64)
    # A worker silent this long is restarted; on stop, requests get this long to finish.
    timeout: int = setting("ADMIN_TIMEOUT", 30, ge=1, le=3600)
    graceful_timeout: int = setting("ADMIN_GRACEFUL_TIMEOUT", 30, ge=1, le=3600)
    keepalive: int = setting("ADMIN_KEEPALIVE", 5, ge=0, le=300)
    # "-": the console's log (standard error, LOG_FORMAT); a file path; "off".
    access_log: str = setting("ADMIN_ACCESS_LOG", "-")

    @field_validator("access_log")
    @classmethod
    def _access_log(cls, value: str) -> str:
        if value.lower() == "off":
            return "off"
        if value != "-" and not Path(value).parent.is_dir():
            raise ValueError(f"no directory {Path(value).parent}")
        return value

    @property
    def access_log_target(self) -> str | None:
        """gunicorn's accesslog: None when off."""
        return None if self.access_log == "off" else self.access_log


# -- background jobs: once per console -----------------------------------------------------------
def background(app: Flask, name: str, run: Callable[[threading.Event], None]) -> None:
    """Register a job the console runs in a background thread, once per console whatever the
    number of workers. `run(stop)` returns when `stop` is set."""
    app.extensions.setdefault(BACKGROUND_KEY, []).append((name, run))


def start_background(app: Flask, stop: threading.Event | None = None) -> threading.Event:
    """Start the app's background jobs in this process; returns the event that stops them."""
    stop = stop or threading.Event()
    for name, run in app.extensions.get(BACKGROUND_KEY, []):
        threading.Thread(target=run, args=(stop,), name=f"console-{name}", daemon=True).start()
        log.info("background job %s started in process %d", name, os.getpid())
    return stop


def _lead_then_start(app: Flask, lock_path: str) -> None:
    """In a gunicorn worker: take the console's lock (waiting while another worker holds it),
    then start the background jobs. The lock goes with the process that holds it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)  # per worker: a lock of its own
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("worker %d stands by for the console's background jobs", os.getpid())
        fcntl.flock(fd, fcntl.LOCK_EX)
    log.info("worker %d runs the console's background jobs", os.getpid())
    start_background(app)


# -- the app each worker builds ------------------------------------------------------------------
def console_app() -> Flask:
    """The console from the environment, with the first admin from ADMIN_BOOTSTRAP_USER."""
    from admin import create_app
    from admin.accounts import bootstrap_admin

    app = create_app()
    cfg = app.config["ADMIN"]
    bootstrap_admin(app.extensions["fifoq_users"], cfg.bootstrap_user, cfg.bootstrap_password)
    return app


def local_store(settings: Settings) -> bool:
    """Console users live in the process (embedded or served ledger): one process only."""
    return not settings.mongodb_url.startswith(("mongodb://", "mongodb+srv://"))


def gunicorn_options(cfg: ServerConfig, host: str, port: int, *, workers: int, log_level: str) -> dict[str, Any]:
    access_log = cfg.access_log_target
    return {
        "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
        "workers": workers,
        "worker_class": "gthread",
        "threads": cfg.threads,
        "timeout": cfg.timeout,
        "graceful_timeout": cfg.graceful_timeout,
        "keepalive": cfg.keepalive,
        "accesslog": access_log,
        "access_log_format": ACCESS_LOG_FORMAT if access_log in (None, "-") else ACCESS_LOG_FILE_FORMAT,
        "errorlog": "-",
        "logger_class": project_logger_class(),
        "loglevel": log_level.lower(),
        "proc_name": "fifoq-console",
        "preload_app": False,
        # heartbeats in memory, not on a container's overlay disk (gunicorn's advice for Docker)
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
        # gunicorn >= 25.1 opens a control socket in the home directory by default: not wanted
        "control_socket_disable": True,
    }


def project_logger_class() -> type:
    from gunicorn.glogging import Logger

    class _ProjectLogger(Logger):  # gunicorn's documented logger_class hook
        """gunicorn's error log, and its access log when it goes to "-", through the handlers of
        backend.logs.configure (the root logger's) instead of gunicorn's own stream handlers."""

        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for logger, output in ((self.error_log, cfg.errorlog), (self.access_log, cfg.accesslog)):
                if output == "-":
                    for handler in [h for h in logger.handlers if getattr(h, "_gunicorn", False)]:
                        logger.removeHandler(handler)
                    logger.propagate = True

    return _ProjectLogger


def _gunicorn_application(factory: Callable[[], Flask], options: dict[str, Any], lock_path: str) -> Any:
    from gunicorn.app.base import BaseApplication
    from gunicorn.errors import AppImportError

    class ConsoleServer(BaseApplication):  # gunicorn's documented custom application
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:  # an older gunicorn lacks the newer settings
                    self.cfg.set(key, value)
            self.cfg.set("post_worker_init", _post_worker_init)

        def load(self) -> Any:  # the WSGI app: a Flask app
            try:
                return factory()
            except ConfigError as exc:
                raise AppImportError(f"error: {exc}") from None  # one line, then gunicorn stops
            except FifoqError as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
                sys.exit(3)  # gunicorn's "worker failed to boot": it stops

    def _post_worker_init(worker: Any) -> None:
        app = worker.wsgi
        if isinstance(app, Flask) and app.extensions.get(BACKGROUND_KEY):
            threading.Thread(target=_lead_then_start, args=(app, lock_path), name="console-leader",
                             daemon=True).start()

    return ConsoleServer()


def run(*, host: str | None = None, port: int | None = None, dev: bool = False,
        factory: Callable[[], Flask] = console_app, env: Mapping[str, str] | None = None) -> int:
    """Serve the console until stopped (SIGTERM, Ctrl-C); returns the exit code.

    Raises ConfigError (a bad setting, the address taken) before anything starts.
    """
    env = os.environ if env is None else env
    cfg = ServerConfig.from_env(env)
    # What create_app would refuse, refused here once, before any worker starts.
    admin = AdminConfig.from_env(env)
    settings = Settings.from_env(env)
    log_level = LogSettings.from_env(env).level or "INFO"
    host, port = host or admin.host, port or admin.port
    if not str(env.get("ADMIN_SECRET_KEY", "")).strip():
        # development: the throw-away key AdminConfig made, shared by every worker (each would
        # otherwise make its own, and a session would only work on the worker that signed it)
        os.environ["ADMIN_SECRET_KEY"] = admin.secret_key
    check_port(host, port, "ADMIN_PORT or --port")  # one line now; gunicorn would retry 5 times
    if dev:
        return _run_development(host, port, factory)
    workers = cfg.workers
    if local_store(settings) and workers > 1:
        log.warning("MONGODB_URL is not a MongoDB server: console users live in the process, so the console "
                    "runs 1 worker instead of %d (ADMIN_WORKERS)", workers)
        workers = 1
    lock_dir = tempfile.mkdtemp(prefix="fifoq-console-")
    options = gunicorn_options(cfg, host, port, workers=workers, log_level=log_level)
    log.info("serving the admin console on http://%s:%d (gunicorn, %d worker(s) x %d threads)",
             host, port, workers, cfg.threads)
    try:
        _gunicorn_application(factory, options, os.path.join(lock_dir, "background.lock")).run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        # 4: a worker refused a setting (one line above); 3: it failed to boot
        return 2 if code == 4 else code
    finally:
        shutil.rmtree(lock_dir, ignore_errors=True)
    return 0


def _run_development(host: str, port: int, factory: Callable[[], Flask]) -> int:
    app = factory()
    log.warning("serving the admin console with Werkzeug's development server on http://%s:%d: "
                "for development only (drop --dev for gunicorn)", host, port)
    stop = start_background(app)
    try:
        app.run(host=host, port=port, debug=False, use_reloader=False, threaded=True)
    finally:
        stop.set()
    return 0
