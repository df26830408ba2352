"""The only module that calls the RabbitMQ management HTTP API.

Read-only, cheap calls: `columns=` to fetch only the fields we show, pagination and a name regex
for the queue list, a timeout on every request. It never reads messages from a queue: POST
/api/queues/{vhost}/{name}/get is refused on single-active-consumer quorum queues and destructive
on the others; the console reads the ledger instead.

A broker that cannot be reached raises BrokerAPIUnavailable: it is never turned into "no queues".
"""
from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import requests

from backend.errors import FifoqError
from backend.settings import Settings, redact_url

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0  # seconds, connect and read: the console must answer even when the broker does not
ADMIN_TIMEOUT = 60.0  # provisioning: creating a vhost or a quorum queue can take seconds on a busy broker
PAGE_SIZE = 500  # the API's maximum page size
MAX_PAGES = 20  # 10,000 queues: far past RabbitMQ's own guidance of about 5,000 quorum queues
# The second and later pages of a queue listing, asked beside the first.
_PAGES = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mgmt-pages")

QUEUE_COLUMNS = ",".join(
    [
        "name",
        "vhost",
        "type",
        "state",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        "single_active_consumer_ctag",  # RabbitMQ 3.10-3.11
        "single_active_consumer_tag",  # RabbitMQ 3.12 and later
        "message_stats.ack_details.rate",
        "message_stats.deliver_get_details.rate",
        "message_stats.publish_details.rate",
    ]
)


class BrokerAPIUnavailable(FifoqError):
    """The management API did not answer, refused our credentials or returned garbage."""

    http_status = 503


@dataclass(frozen=True)
class QueueInfo:
    """What the console shows about one queue. None means the broker has no figure yet (a new
    queue's statistics appear after the first collection interval, 5 s by default)."""

    name: str
    messages_ready: int | None
    messages_unacknowledged: int | None
    consumers: int | None
    active_consumer_tag: str | None
    ack_rate: float | None
    deliver_rate: float | None
    publish_rate: float | None
    state: str | None = None
    type: str | None = None

    @property
    def total(self) -> int | None:
        if self.messages_ready is None or self.messages_unacknowledged is None:
            return None
        return self.messages_ready + self.messages_unacknowledged

    @property
    def consumer_connected(self) -> bool | None:
        """True when a (single active) consumer is attached; None when the broker has no figure."""
        if self.active_consumer_tag or self.consumers:
            return True
        return None if self.consumers is None else False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "messages_ready": self.messages_ready,
            "messages_unacknowledged": self.messages_unacknowledged,
            "consumers": self.consumers,
            "active_consumer_tag": self.active_consumer_tag,
            "consumer_connected": self.consumer_connected,
            "ack_rate": self.ack_rate,
            "deliver_rate": self.deliver_rate,
            "publish_rate": self.publish_rate,
            "state": self.state,
            "type": self.type,
        }

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> QueueInfo:
        stats = item.get("message_stats") or {}

        def rate(key: str) -> float | None:
            value = (stats.get(key) or {}).get("rate")
            return float(value) if isinstance(value, (int, float)) else None

        def count(key: str) -> int | None:
            value = item.get(key)
            return int(value) if isinstance(value, (int, float)) else None

        tag = item.get("single_active_consumer_tag") or item.get("single_active_consumer_ctag")
        return cls(
            name=str(item.get("name", "")),
            messages_ready=count("messages_ready"),
            messages_unacknowledged=count("messages_unacknowledged"),
            consumers=count("consumers"),
            active_consumer_tag=str(tag) if tag else None,
            ack_rate=rate("ack_details"),
            deliver_rate=rate("deliver_get_details"),
            publish_rate=rate("publish_details"),
            state=item.get("state"),
            type=item.get("type"),
        )


def vhost_of(settings: Settings) -> str:
    """The virtual host of the first AMQP URL ('/' when the URL names none)."""
    path = urlsplit(settings.amqp_urls[0]).path if settings.amqp_urls else ""
    return unquote(path[1:]) if len(path) > 1 else "/"


class RabbitAPI:
    """A small client of the management API, bound to one virtual host."""

    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        *,
        vhost: str = "/",
        verify: str | bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.vhost = vhost
        self.verify = verify
        self.timeout = timeout
        self._session = session or requests.Session()
        self._session.auth = (user, password)
        self._page_counts: dict[str, int] = {}  # queue listing pages per prefix, last time

    @classmethod
    def from_settings(cls, settings: Settings, timeout: float = DEFAULT_TIMEOUT) -> RabbitAPI:
        return cls(
            settings.api_url,
            settings.api_user,
            settings.api_password,
            vhost=vhost_of(settings),
            verify=settings.api_verify,
            timeout=timeout,
        )

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    # -- transport ------------------------------------------------------------------------
    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        url = f"{self.url}/api/{path}"
        try:
            resp = self._session.get(url, params=params, timeout=self.timeout, verify=self.verify)
        except requests.RequestException as exc:
            log.warning("management API %s unreachable: %s", self.display_url, type(exc).__name__)
            raise BrokerAPIUnavailable(
                f"RabbitMQ management API unreachable at {self.display_url}: {type(exc).__name__}"
            ) from exc
        if resp.status_code == 404:
            return None
        if resp.status_code in (401, 403):
            raise BrokerAPIUnavailable(
                f"RabbitMQ management API at {self.display_url} refused the credentials (HTTP {resp.status_code})"
            )
        if resp.status_code >= 400:
            raise BrokerAPIUnavailable(f"RabbitMQ management API at {self.display_url} answered HTTP {resp.status_code}")
        try:
            return resp.json()
        except ValueError as exc:
            raise BrokerAPIUnavailable(f"RabbitMQ management API at {self.display_url} sent invalid JSON") from exc

    # -- cluster --------------------------------------------------------------------------
    def overview(self) -> dict[str, Any]:
        data = self._get(
            "overview", {"columns": "rabbitmq_version,management_version,cluster_name,erlang_version"}
        )
        if not isinstance(data, dict):
            raise BrokerAPIUnavailable(f"RabbitMQ management API at {self.display_url} has no overview")
        return data

    def nodes(self) -> list[dict[str, Any]]:
        data = self._get(
            "nodes", {"columns": "name,running,type,mem_alarm,disk_free_alarm,partitions,uptime"}
        )
        if not isinstance(data, list):
            raise BrokerAPIUnavailable(f"RabbitMQ management API at {self.display_url} has no node list")
        return data

    def health(self) -> dict[str, Any]:
        """Cluster health: nodes up/down and active alarms (memory, disk, partitions)."""
        overview = self.overview()
        nodes = self.nodes()
        alarms: list[str] = []
        for node in nodes:
            name = node.get("name", "?")
            if node.get("mem_alarm"):
                alarms.append(f"memory alarm on {name}")
            if node.get("disk_free_alarm"):
                alarms.append(f"disk space alarm on {name}")
            if node.get("partitions"):
                alarms.append(f"network partition seen by {name}")
        running = [n.get("name") for n in nodes if n.get("running")]
        down = [n.get("name") for n in nodes if not n.get("running")]
        return {
            "url": self.display_url,
            "version": overview.get("rabbitmq_version"),
            "cluster_name": overview.get("cluster_name"),
            "nodes_running": running,
            "nodes_down": down,
            "alarms": alarms,
            "ok": not down and not alarms,
        }

    # -- queues ---------------------------------------------------------------------------
    def queues(self, prefix: str) -> list[QueueInfo]:
        """Every queue of the vhost whose name starts with `prefix`, paginated server-side. The
        pages the previous listing of the prefix had are asked at once (the broker answers them
        in parallel), any further one once the first page tells how many there are."""
        known = min(self._page_counts.get(prefix, 1), MAX_PAGES)
        ahead = {page: _PAGES.submit(self._queue_page, prefix, page) for page in range(2, known + 1)}
        first = self._queue_page(prefix, 1)
        count = int(first.get("page_count") or 1)
        self._page_counts[prefix] = count
        for page in range(known + 1, min(count, MAX_PAGES) + 1):
            ahead[page] = _PAGES.submit(self._queue_page, prefix, page)
        pages = [first] + [ahead[page].result() for page in range(2, min(count, MAX_PAGES) + 1)]
        out: dict[str, QueueInfo] = {}  # pages read at slightly different times may overlap
        for data in pages:
            for item in data["items"]:
                if isinstance(item, dict):
                    info = QueueInfo.from_api(item)
                    out.setdefault(info.name, info)
        if count > MAX_PAGES:
            log.warning("queue listing for prefix %s truncated at %d queues", prefix, len(out))
        return list(out.values())

    def _queue_page(self, prefix: str, page: int) -> dict[str, Any]:
        data = self._get(
            f"queues/{quote(self.vhost, safe='')}",
            {
                "page": page,
                "page_size": PAGE_SIZE,
                "name": "^" + re.escape(prefix),
                "use_regex": "true",
                "columns": QUEUE_COLUMNS,
            },
        )
        if data is None:
            raise BrokerAPIUnavailable(f"virtual host {self.vhost!r} does not exist on {self.display_url}")
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise BrokerAPIUnavailable(f"unexpected queue listing from {self.display_url}")
        return data

    def queue(self, name: str) -> QueueInfo | None:
        """One queue, or None when the broker does not have it."""
        data = self._get(
            f"queues/{quote(self.vhost, safe='')}/{quote(name, safe='')}", {"columns": QUEUE_COLUMNS}
        )
        if data is None:
            return None
        if not isinstance(data, dict):
            raise BrokerAPIUnavailable(f"unexpected queue document from {self.display_url}")
        return QueueInfo.from_api(data)


class BrokerAPIRefused(FifoqError):
    """The management API refused a change (bad definition, inequivalent queue arguments, missing
    rights): the message carries the broker's reason."""

    http_status = 409


class RabbitAdminAPI(RabbitAPI):
    """Writes through the management API, for `python -m admin provision` only: virtual hosts,
    users, permissions, policies and the topology. Needs an `administrator` user; the console
    itself only ever uses the read-only RabbitAPI above, with a `monitoring` user.

    Passwords travel in request bodies and are never logged.
    """

    def __init__(self, url: str, user: str, password: str, *, verify: str | bool = True,
                 timeout: float = ADMIN_TIMEOUT, session: requests.Session | None = None) -> None:
        super().__init__(url, user, password, verify=verify, timeout=timeout, session=session)

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None, *, missing_ok: bool = False) -> Any:
        url = f"{self.url}/api/{path}"
        try:
            resp = self._session.request(method, url, json=body, timeout=self.timeout, verify=self.verify)
        except requests.RequestException as exc:
            log.warning("management API %s unreachable: %s", self.display_url, type(exc).__name__)
            raise BrokerAPIUnavailable(
                f"RabbitMQ management API unreachable at {self.display_url}: {type(exc).__name__}"
            ) from exc
        if resp.status_code == 404 and missing_ok:
            return None
        if resp.status_code == 401:
            raise BrokerAPIUnavailable(
                f"RabbitMQ management API at {self.display_url} refused the credentials (HTTP 401): "
                "provisioning needs a user tagged administrator"
            )
        if resp.status_code >= 400:
            try:
                reason = resp.json().get("reason", "")
            except ValueError:
                reason = resp.text[:200]
            raise BrokerAPIRefused(f"{method} /api/{path.split('?')[0]}: HTTP {resp.status_code} {reason}".rstrip())
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            return None

    @staticmethod
    def _q(value: str) -> str:
        return quote(value, safe="")

    # -- identity and virtual hosts --------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        return self._send("GET", "whoami")

    def put_vhost(self, vhost: str, description: str = "") -> None:
        """Create the virtual host (no-op when it exists)."""
        self._send("PUT", f"vhosts/{self._q(vhost)}", {"description": description, "tags": "fifoq"})

    def delete_vhost(self, vhost: str) -> None:
        self._send("DELETE", f"vhosts/{self._q(vhost)}", missing_ok=True)

    # -- users and permissions -------------------------------------------------------------
    def user(self, name: str) -> dict[str, Any] | None:
        """The user's record (tags, password hash and algorithm), or None."""
        return self._send("GET", f"users/{self._q(name)}", missing_ok=True)

    def put_user(self, name: str, tags: str, *, password: str | None = None,
                 password_hash: str | None = None, hashing_algorithm: str | None = None) -> None:
        """Create or update a user. Without a password, keep its current one by sending its hash."""
        body: dict[str, Any] = {"tags": tags}
        if password is not None:
            body["password"] = password
        else:
            body["password_hash"] = password_hash or ""
            if hashing_algorithm:
                body["hashing_algorithm"] = hashing_algorithm
        self._send("PUT", f"users/{self._q(name)}", body)

    def delete_user(self, name: str) -> None:
        self._send("DELETE", f"users/{self._q(name)}", missing_ok=True)

    def permissions(self, vhost: str) -> list[dict[str, Any]]:
        return self._send("GET", f"vhosts/{self._q(vhost)}/permissions", missing_ok=True) or []

    def user_permissions(self, name: str) -> list[dict[str, Any]]:
        """The user's permission entries on every virtual host ([] for an unknown user)."""
        return self._send("GET", f"users/{self._q(name)}/permissions", missing_ok=True) or []

    def put_permissions(self, vhost: str, user: str, configure: str, write: str, read: str) -> None:
        """Regular expressions (matched against resource names) for the three AMQP 0-9-1 rights."""
        self._send("PUT", f"permissions/{self._q(vhost)}/{self._q(user)}",
                   {"configure": configure, "write": write, "read": read})

    def delete_permissions(self, vhost: str, user: str) -> None:
        self._send("DELETE", f"permissions/{self._q(vhost)}/{self._q(user)}", missing_ok=True)

    # -- policies and topology -------------------------------------------------------------
    def put_policy(self, vhost: str, name: str, pattern: str, definition: dict[str, Any], *,
                   apply_to: str = "queues", priority: int = 0) -> None:
        self._send("PUT", f"policies/{self._q(vhost)}/{self._q(name)}",
                   {"pattern": pattern, "definition": definition, "apply-to": apply_to, "priority": priority})

    def put_exchange(self, vhost: str, name: str, kind: str) -> None:
        self._send("PUT", f"exchanges/{self._q(vhost)}/{self._q(name)}",
                   {"type": kind, "durable": True, "auto_delete": False, "internal": False, "arguments": {}})

    def put_queue(self, vhost: str, name: str, arguments: dict[str, Any]) -> None:
        """Declare a durable queue; BrokerAPIRefused when it exists with other arguments."""
        self._send("PUT", f"queues/{self._q(vhost)}/{self._q(name)}",
                   {"durable": True, "auto_delete": False, "arguments": arguments})

    def put_binding(self, vhost: str, exchange: str, queue: str, routing_key: str) -> None:
        """Bind (idempotent: the broker keeps one binding per exchange, queue and key)."""
        self._send("POST", f"bindings/{self._q(vhost)}/e/{self._q(exchange)}/q/{self._q(queue)}",
                   {"routing_key": routing_key, "arguments": {}})
