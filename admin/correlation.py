"""Correlation ids for the console's requests: every log line written while a request is served
(the console's own, the WSGI server's request line, the libraries') carries one.

The id is the request's `X-Correlation-Id` header when it is a plausible id (letters, digits and
`._:-`, at most 128 characters: a proxy or a script can follow one request through the logs),
otherwise a new random one. The answer carries it back in the same header.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.wsgi import ClosingIterator

from backend.logs import bind, unbind

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

HEADER = "X-Correlation-Id"
ENVIRON_KEY = "fifoq.correlation_id"
_PLAUSIBLE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(given: str | None) -> str:
    return given if given and _PLAUSIBLE.match(given) else uuid.uuid4().hex[:16]


class CorrelationMiddleware:
    """WSGI middleware: binds the id before the app runs and unbinds it once the server closed
    the answer (after it wrote its request line)."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, wsgi_environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        cid = request_id(wsgi_environ.get("HTTP_X_CORRELATION_ID"))
        wsgi_environ[ENVIRON_KEY] = cid
        token = bind(cid)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:  # StartResponse
            headers.append((HEADER, cid))
            return start_response(status, headers, exc_info)

        def done() -> None:
            try:
                unbind(token)
            except ValueError:  # closed from another context (an async server): nothing to restore there
                pass

        try:
            answer = self.app(wsgi_environ, start)
        except BaseException:
            done()
            raise
        return ClosingIterator(answer, [done])
