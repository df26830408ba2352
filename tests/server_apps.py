"""Small apps for tests/test_admin_server.py, served by admin.server in a subprocess."""
from __future__ import annotations

import os
import threading

from flask import Flask

from admin.server import background


def app_with_a_background_job() -> Flask:
    """An app whose background job writes its process id to $JOB_FILE, then waits to be stopped."""
    app = Flask(__name__)

    def job(stop: threading.Event) -> None:
        with open(os.environ["JOB_FILE"], "a") as f:
            f.write(f"{os.getpid()}\n")
        stop.wait()

    background(app, "pid-writer", job)

    @app.get("/")
    def pid() -> str:
        return str(os.getpid())

    return app
