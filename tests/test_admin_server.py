"""The console's production server (admin.server): gunicorn behind the image's command line,
Werkzeug's development server only on request, background jobs once per console."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from admin.server import ServerConfig
from backend.errors import ConfigError
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_command() -> list[str]:
    """The Dockerfile's ENTRYPOINT + CMD (exec form), as the container would run them."""
    text = (ROOT / "Dockerfile").read_text()
    found = {kind: json.loads(args) for kind, args in re.findall(r"^(ENTRYPOINT|CMD)\s+(\[.*\])\s*$", text, re.M)}
    return found.get("ENTRYPOINT", []) + found.get("CMD", [])


def _local(command: list[str]) -> list[str]:
    # The image's `python` is this test's interpreter here (no Docker engine on the test machines).
    return [sys.executable if command[0] == "python" else command[0], *command[1:]]


class Served:
    def __init__(self, proc: subprocess.Popen, base: str, log: Path) -> None:
        self.proc, self.base, self.log = proc, base, log

    def text(self) -> str:
        return self.log.read_text()


@pytest.fixture
def serve(tmp_path: Path, settings) -> Iterator:
    procs: list[subprocess.Popen] = []

    def start(command: list[str], **env: str) -> Served:
        port = free_port()
        log = tmp_path / f"server-{len(procs)}.log"
        full_env = {**os.environ, "ADMIN_HOST": "127.0.0.1", "ADMIN_PORT": str(port), "FIFOQ_PREFIX": settings.prefix,
                    "MONGODB_URL": "", "LOG_LEVEL": "INFO", **env}
        with open(log, "w") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        served = Served(proc, f"http://127.0.0.1:{port}", log)

        def up() -> bool:
            assert proc.poll() is None, served.text()
            try:
                return requests.get(served.base + "/login", timeout=2).status_code < 500
            except requests.RequestException:
                return False

        wait_for(up, timeout=60, interval=0.2, what="the console to answer")
        return served

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=60)


def test_admin_server_image_command_serves_the_console_with_gunicorn(serve) -> None:
    command = image_command()
    assert command[-3:] == ["-m", "admin", "serve"] and "--dev" not in command
    compose = (ROOT / "docker-compose.yml").read_text()
    assert re.search(r'^  admin:\n(?:    .*\n)*?    command: \["python", "-m", "admin", "serve"\]', compose, re.M), \
        "compose runs the console as the image does"
    served = serve(_local(command), ADMIN_ENV="production", ADMIN_SECRET_KEY="s" * 40,
                   ADMIN_BOOTSTRAP_USER="boot", ADMIN_BOOTSTRAP_PASSWORD="bootstrap-pw")
    page = requests.get(served.base + "/login", timeout=10)
    assert page.status_code == 200 and 'name="csrf_token"' in page.text
    assert page.headers["Server"] == "gunicorn" and "Werkzeug" not in page.headers["Server"]
    assert requests.get(served.base + "/static/console.css", timeout=10).status_code == 200
    assert requests.get(served.base + "/api/me", timeout=10).status_code == 401
    assert "Secure" in page.headers["Set-Cookie"]  # production: the session cookie needs HTTPS
    # The bootstrap admin logs in (the cookie sent by hand: it is Secure, this is plain HTTP).
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    resp = requests.post(served.base + "/login", allow_redirects=False, timeout=10,
                         headers={"Cookie": f"fifoq_admin={page.cookies['fifoq_admin']}"},
                         data={"username": "boot", "password": "bootstrap-pw", "csrf_token": token})
    assert resp.status_code == 302, resp.text
    me = requests.get(served.base + "/api/me", headers={"Cookie": f"fifoq_admin={resp.cookies['fifoq_admin']}"},
                      timeout=10)
    assert me.json()["name"] == "boot"
    # gunicorn's access log, with the request's duration, through the project's logging: the line
    # carries the request's correlation id (admin.correlation), as every console log line does
    requests.get(served.base + "/static/console.css", headers={"X-Correlation-Id": "cid-static-1"}, timeout=10)
    wait_for(lambda: re.search(r' INFO +gunicorn\.access \[.*\] cid=cid-static-1 .*"GET /static/console.css HTTP/1.1" '
                               r'200 \d+ .* \d+ms', served.text()) is not None, timeout=10, what="the access log line")
    assert re.search(r" INFO +gunicorn\.error \[MainThread\] cid=- Starting gunicorn", served.text())
    assert "Using worker: gthread" in served.text()
    # the console's own background job (the staged-release driver) runs in the worker that leads
    wait_for(lambda: "background job release-driver started" in served.text(), timeout=10,
             what="the release driver to start in the leading worker")


def test_admin_server_access_log_file_carries_the_correlation_id_and_json_logs(serve, tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    served = serve([sys.executable, "-m", "admin", "serve"], ADMIN_ENV="development", LOG_FORMAT="json",
                   ADMIN_ACCESS_LOG=str(access))
    requests.get(served.base + "/login", headers={"X-Correlation-Id": "cid-file-1"}, timeout=10)
    wait_for(lambda: access.exists() and "cid=cid-file-1" in access.read_text(), timeout=10, what="the access log file")
    assert re.search(r'"GET /login HTTP/1.1" 200 \d+ .* \d+ms cid=cid-file-1$', access.read_text(), re.M)
    # gunicorn's own lines are the project's JSON lines
    lines = [json.loads(line) for line in served.text().splitlines() if line.startswith("{")]
    assert any(r["logger"] == "gunicorn.error" and r["message"].startswith("Starting gunicorn") for r in lines), lines


def test_admin_server_development_server_only_when_asked(serve) -> None:
    served = serve([sys.executable, "-m", "admin", "serve", "--dev"], ADMIN_ENV="development")
    assert "Werkzeug" in requests.get(served.base + "/login", timeout=10).headers["Server"]
    assert "development server" in served.text()
    wait_for(lambda: "background job release-driver started" in served.text(), timeout=10,
             what="the release driver to start beside the development server")


def test_admin_server_background_job_runs_once_across_workers_and_moves_on_when_its_worker_dies(
        serve, tmp_path: Path) -> None:
    job_file = tmp_path / "job-pids"
    job_file.touch()
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO); from admin import server; "
            "from tests.server_apps import app_with_a_background_job as f; sys.exit(server.run(factory=f))")
    # A MongoDB URL lets the console run several workers (nothing connects to it here).
    served = serve([sys.executable, "-c", code], ADMIN_WORKERS="3", ADMIN_ENV="development",
                   MONGODB_URL="mongodb://127.0.0.1:9/unused", JOB_FILE=str(job_file))

    def pids(pattern: str) -> list[int]:
        return [int(p) for p in re.findall(pattern, served.text())]

    # Every worker has decided: one leads, two stand by; the job ran once.
    wait_for(lambda: len(pids(r"worker (\d+) stands by")) == 2 and len(pids(r"worker (\d+) runs the")) == 1,
             timeout=60, what="three workers to decide who runs the background jobs")
    leader = pids(r"worker (\d+) runs the")[0]
    assert job_file.read_text().split() == [str(leader)]
    # The leader dies: one of the others takes over, and the job runs once more, there.
    os.kill(leader, signal.SIGKILL)
    wait_for(lambda: len(job_file.read_text().split()) == 2, timeout=60, what="another worker to take over")
    successor = int(job_file.read_text().split()[1])
    assert successor != leader and successor in pids(r"worker (\d+) stands by")


@pytest.mark.parametrize("env, needle", [
    ({"ADMIN_WORKERS": "0"}, "ADMIN_WORKERS"),
    ({"ADMIN_THREADS": "many"}, "ADMIN_THREADS"),
    ({"ADMIN_TIMEOUT": "-1"}, "ADMIN_TIMEOUT"),
    ({"ADMIN_KEEPALIVE": "9999"}, "ADMIN_KEEPALIVE"),
    ({"ADMIN_ACCESS_LOG": "/no/such/dir/access.log"}, "ADMIN_ACCESS_LOG"),
])
def test_admin_server_settings_are_validated(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        ServerConfig.from_env(env)


def test_admin_server_bad_setting_or_taken_port_is_one_line_and_exit_2(settings) -> None:
    base = {**os.environ, "ADMIN_ENV": "development", "FIFOQ_PREFIX": settings.prefix, "MONGODB_URL": ""}

    def serve(**env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "admin", "serve"], cwd=ROOT, env={**base, **env},
                              capture_output=True, text=True, timeout=60)

    out = serve(ADMIN_WORKERS="lots")
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("error: ADMIN_WORKERS")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        out = serve(ADMIN_PORT=str(taken.getsockname()[1]))
    assert out.returncode == 2 and "cannot listen" in out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr
