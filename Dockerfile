# fifoq application image: the admin console, the connectors and the demo backend.
#   docker build -t fifoq .
#   docker run --rm -e ADMIN_SECRET_KEY=... -p 127.0.0.1:5000:5000 fifoq   # the console (gunicorn)
#   docker run --rm fifoq python -m connectors run ACTOR [ACTOR...]      # connector workers
#   docker run --rm fifoq python -m demo emit                            # the demo backend
#   docker compose up -d                        # the whole production-like stack
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 fifoq \
 && useradd --system --uid 10001 --gid fifoq --home-dir /app --shell /usr/sbin/nologin fifoq

WORKDIR /app
# Dependencies first, so that code changes do not reinstall them: the exact versions of the lock
# file, checked against their hashes; then the project itself, without dependencies.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY . .
RUN pip install --no-deps . && chown -R fifoq:fifoq /app

USER fifoq
# `python -m demo` and `python -m bench` run from /app (the working directory is on sys.path).
# The default command is the admin console under gunicorn (admin/server.py: ADMIN_WORKERS,
# ADMIN_THREADS, ADMIN_TIMEOUT; its log and access log on standard error), listening on every interface of
# the container; the other services give their own command.
ENV ADMIN_HOST=0.0.0.0 \
    ADMIN_PORT=5000
EXPOSE 5000
CMD ["python", "-m", "admin", "serve"]
