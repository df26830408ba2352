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
stop), ADMIN_KEEPALIVE (5 s) and ADMIN_ACCESS_LOG ("-": standard output; a file path; "off").
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from flask import Flask

from admin.config import AdminConfig, _int
from backend.errors import ConfigError, FifoqError
from backend.settings import Settings

log = logging.getLogger(__name__)

BACKGROUND_KEY = "fifoq_background"
# The request's duration (%(M)s ms) after gunicorn's usual combined format.
ACCESS_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms'
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 4
DEFAULT_TIMEOUT = 30
DEFAULT_GRACEFUL_TIMEOUT = 30
DEFAULT_KEEPALIVE = 5


@dataclass(frozen=True)
class ServerConfig:
    """How gunicorn serves the console (the address is AdminConfig's ADMIN_HOST/ADMIN_PORT)."""

    workers: int = DEFAULT_WORKERS
    threads: int = DEFAULT_THREADS
    timeout: int = DEFAULT_TIMEOUT
    graceful_timeout: int = DEFAULT_GRACEFUL_TIMEOUT
    keepalive: int = DEFAULT_KEEPALIVE
    access_log: str | None = "-"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ServerConfig":
        """Raises ConfigError naming the variable."""
        env = os.environ if env is None else env
        access = str(env.get("ADMIN_ACCESS_LOG", "-")).strip() or "-"
        if access.lower() == "off":
            access_log = None
        elif access == "-":
            access_log = "-"
        else:
            if not Path(access).parent.is_dir():
                raise ConfigError(f"ADMIN_ACCESS_LOG={access!r}: no directory {Path(access).parent}")
            access_log = access
        return cls(
            workers=_int(env, "ADMIN_WORKERS", DEFAULT_WORKERS, 1, 64),
            threads=_int(env, "ADMIN_THREADS", DEFAULT_THREADS, 1, 64),
            timeout=_int(env, "ADMIN_TIMEOUT", DEFAULT_TIMEOUT, 1, 3600),
            graceful_timeout=_int(env, "ADMIN_GRACEFUL_TIMEOUT", DEFAULT_GRACEFUL_TIMEOUT, 1, 3600),
            keepalive=_int(env, "ADMIN_KEEPALIVE", DEFAULT_KEEPALIVE, 0, 300),
            access_log=access_log,
        )


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
    bootstrap_admin(app.extensions["fifoq_users"], os.environ)
    return app


def local_store(settings: Settings) -> bool:
    """Console users live in the process (embedded or served ledger): one process only."""
    return not settings.mongodb_url.startswith(("mongodb://", "mongodb+srv://"))


def gunicorn_options(cfg: ServerConfig, host: str, port: int, *, workers: int, log_level: str) -> dict[str, Any]:
    return {
        "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
        "workers": workers,
        "worker_class": "gthread",
        "threads": cfg.threads,
        "timeout": cfg.timeout,
        "graceful_timeout": cfg.graceful_timeout,
        "keepalive": cfg.keepalive,
        "accesslog": cfg.access_log,
        "access_log_format": ACCESS_LOG_FORMAT,
        "errorlog": "-",
        "loglevel": log_level.lower(),
        "proc_name": "fifoq-console",
        "preload_app": False,
        # heartbeats in memory, not on a container's overlay disk (gunicorn's advice for Docker)
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
        # gunicorn >= 25.1 opens a control socket in the home directory by default: not wanted
        "control_socket_disable": True,
    }


def _gunicorn_application(factory: Callable[[], Flask], options: dict[str, Any], lock_path: str) -> Any:
    from gunicorn.app.base import BaseApplication
    from gunicorn.errors import AppImportError

    class ConsoleServer(BaseApplication):  # type: ignore[misc]  (gunicorn's documented custom application)
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:  # an older gunicorn lacks the newer settings
                    self.cfg.set(key, value)
            self.cfg.set("post_worker_init", _post_worker_init)

        def load(self) -> Flask:
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


def check_port(host: str, port: int) -> None:
    """One line before anything starts when the address is taken (gunicorn would retry 5 times)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"the console cannot listen on {host}:{port}: {exc.strerror or exc} (set ADMIN_PORT)") from None


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
    host, port = host or admin.host, port or admin.port
    if not str(env.get("ADMIN_SECRET_KEY", "")).strip():
        # development: the throw-away key AdminConfig made, shared by every worker (each would
        # otherwise make its own, and a session would only work on the worker that signed it)
        os.environ["ADMIN_SECRET_KEY"] = admin.secret_key
    check_port(host, port)
    if dev:
        return _run_development(host, port, factory)
    workers = cfg.workers
    if local_store(settings) and workers > 1:
        log.warning("MONGODB_URL is not a MongoDB server: console users live in the process, so the console "
                    "runs 1 worker instead of %d (ADMIN_WORKERS)", workers)
        workers = 1
    lock_dir = tempfile.mkdtemp(prefix="fifoq-console-")
    options = gunicorn_options(cfg, host, port, workers=workers, log_level=str(env.get("LOG_LEVEL", "") or "INFO"))
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
