# fifoq application image: the admin console, the connectors and the demo backend.
#   docker build -t fifoq .
#   docker run --rm fifoq                       # prints how to run each service
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
CMD ["python", "-c", "print('fifoq image. Run one of:\\n  python -m admin serve                      admin console on ADMIN_PORT (5000)\\n  python -m connectors run ACTOR [ACTOR...]   connector workers\\n  python -m demo emit                        demo backend emitting events\\nConfiguration: environment variables, see .env.example')"]
