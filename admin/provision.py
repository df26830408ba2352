"""Least-privilege RabbitMQ set-up: `python -m admin provision payment shipping:4 ...`.

One idempotent pass through the management HTTP API (admin.rabbitmq_api, as an `administrator`):

1. a dedicated virtual host (FIFOQ_VHOST, default "fifoq");
2. the topology, declared here once instead of by the clients: the `<prefix>.messages` exchange,
   the dead-letter exchange and queue, and every actor's queue (and lanes) with the arguments
   backend.broker would use, bound to the exchange;
3. a backstop policy on the actor queues (dead-letter exchange and an explicit delivery limit, so
   that a queue declared some other way is never silently dropped from after 20 returns on 4.x);
4. one user per component, with the least permissions it needs;
5. guest can do nothing any more: it loses its tags (administrator on a fresh broker) and its
   permissions on every virtual host (or is deleted with --guest delete). When guest is the very
   administrator running the provisioning, it only loses its rights on the fifoq virtual host
   (demoting it would lock the run out) and a warning says so.

Why the clients do not declare (they run with FIFOQ_DECLARE=0): RabbitMQ checks, for every
AMQP 0-9-1 method, one of three rights, each a regular expression over resource names:

    queue.declare / exchange.declare       configure on the queue / exchange
      ... with x-dead-letter-exchange      + read on the queue, write on the dead-letter exchange
    passive declare (existence check)      nothing
    queue.bind                             write on the queue, read on the exchange
    basic.publish                          write on the exchange
    basic.consume / basic.get / purge      read on the queue
    queue.delete                           configure on the queue

Actor queues carry a dead-letter exchange, so a user allowed to declare them must also be allowed
to read (consume) them: a backend declaring queues could consume every actor's messages. Declaring
here keeps the backend at "write on <prefix>.messages" and nothing else.

    user                      tags        configure  write                read
    <prefix>-backend          (none)      ^$         ^<prefix>\\.messages$  ^$
    <prefix>-connector-<a>    (none)      ^$         ^$                   ^<prefix>\\.actor\\.<a>(\\.lane[0-9]+)?$
    <prefix>-console          monitoring  ^$         ^$                   ^$

The console reads the management API (overview, nodes, the vhost's queues): `monitoring` is the
smallest tag that may read /api/nodes (`management` gets 401 there), and its permission entry on
the vhost is what lets it list the vhost's queues. It needs no AMQP right: an operator's action is
a write of intent in the ledger, which the lane's connector carries out (backend.operations).
"""
from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from admin.rabbitmq_api import RabbitAdminAPI
from backend.broker import queue_arguments
from backend.errors import ValidationError
from backend.settings import Settings
from backend.values import ACTOR_NAME_RE, QueueType

log = logging.getLogger(__name__)

DEFAULT_VHOST = "fifoq"
NOTHING = "^$"  # a permission that matches no resource name
CONSOLE_TAGS = "monitoring"
GUEST_MODES = ("restrict", "delete", "keep")
MAX_LANES = 64


@dataclass(frozen=True)
class ActorPlan:
    name: str
    lanes: int = 1
    queue_type: QueueType = QueueType.QUORUM

    @classmethod
    def parse(cls, spec: str, queue_type: QueueType, default_lanes: int = 1) -> ActorPlan:
        """'payment' or 'payment:4' (four lanes)."""
        name, _, lanes_raw = spec.partition(":")
        if not ACTOR_NAME_RE.match(name):
            raise ValidationError(f"actor {name[:80]!r}: lowercase letters, digits, '_' or '-', at most 63 characters")
        lanes = default_lanes
        if lanes_raw:
            if not lanes_raw.isdigit() or not 1 <= int(lanes_raw) <= MAX_LANES:
                raise ValidationError(f"actor {name}: lanes must be a number from 1 to {MAX_LANES}")
            lanes = int(lanes_raw)
        return cls(name, lanes, queue_type)


@dataclass(frozen=True)
class Grant:
    """One broker user: its tags and its configure/write/read regular expressions."""

    user: str
    component: str
    tags: str
    configure: str
    write: str
    read: str
    password_env: str


@dataclass
class ProvisionResult:
    vhost: str
    grants: list[Grant]
    # Passwords set by this run (generated, rotated or taken from the environment); the others
    # were kept. Generated ones are shown once by the command line, never logged.
    passwords: dict[str, str] = field(default_factory=dict)
    # Users whose password came from PROVISION_*_PASSWORD: the operator has it already, so the
    # report does not print it (it would end up in a container's log under docker compose).
    from_env: set[str] = field(default_factory=set)
    queues: list[str] = field(default_factory=list)
    guest: str = "restrict"


def _anchored(name: str) -> str:
    return "^" + re.escape(name) + "$"


def grants(settings: Settings, actors: Iterable[ActorPlan]) -> list[Grant]:
    """The users of one deployment and their rights (see the module docstring)."""
    p = settings.prefix
    out = [
        Grant(f"{p}-backend", "backend", "", NOTHING, _anchored(settings.exchange), NOTHING,
              "PROVISION_BACKEND_PASSWORD"),
        # the console reads the management API and writes intents in the ledger: no AMQP right
        Grant(f"{p}-console", "console", CONSOLE_TAGS, NOTHING, NOTHING, NOTHING, "PROVISION_CONSOLE_PASSWORD"),
    ]
    for actor in actors:
        queue = re.escape(settings.queue_name(actor.name))
        out.append(Grant(f"{p}-connector-{actor.name}", f"connector:{actor.name}", "", NOTHING, NOTHING,
                         f"^{queue}(\\.lane[0-9]+)?$",
                         f"PROVISION_CONNECTOR_{actor.name.upper().replace('-', '_')}_PASSWORD"))
    return out


def provision(
    api: RabbitAdminAPI,
    settings: Settings,
    actors: Iterable[ActorPlan],
    *,
    vhost: str = DEFAULT_VHOST,
    env: Mapping[str, str] | None = None,
    rotate: Iterable[str] = (),
    guest: str = "restrict",
    guest_user: str = "guest",
) -> ProvisionResult:
    """Create or update everything; safe to run again (passwords are kept unless rotated).

    Args:
        api: an administrator's client of the management API.
        settings: prefix, queue type and delivery limit (FIFOQ_*).
        actors: the actors whose queues and connector users to create.
        vhost: the virtual host (created when missing).
        env: where PROVISION_*_PASSWORD are read from (os.environ when None).
        rotate: user names (or "all") whose password is replaced by a generated one.
        guest: "restrict" (guest loses its tags and its permissions on every vhost, so it can do
            nothing; only those on `vhost` when guest itself runs the provisioning), "delete"
            (the guest user) or "keep".
        guest_user: the name of that default account ("guest"; tests use a throw-away user).
    Raises:
        BrokerAPIUnavailable, BrokerAPIRefused, ValidationError.
    """
    env = os.environ if env is None else env
    if guest not in GUEST_MODES:
        raise ValidationError(f"guest must be one of {', '.join(GUEST_MODES)}")
    plans = list(actors)
    names = [a.name for a in plans]
    if len(set(names)) != len(names):
        raise ValidationError("an actor is listed twice")
    rotate = set(rotate)
    me = str(api.whoami().get("name", ""))
    if guest == "delete" and me == guest_user:
        raise ValidationError(f"--guest delete: run provisioning as another administrator than {guest_user}")

    api.put_vhost(vhost, "fifoq actor queues")
    # The management API declares queues over an internal AMQP connection as the calling user:
    # it needs rights on the vhost for the duration of the run.
    api.put_permissions(vhost, me, ".*", ".*", ".*")
    result = ProvisionResult(vhost=vhost, grants=grants(settings, plans), guest=guest)
    try:
        _declare_topology(api, settings, vhost, plans, result)
        for grant in result.grants:
            password = _password(api, grant, env, rotate)
            if password is not None:
                result.passwords[grant.user] = password
                if env.get(grant.password_env, ""):
                    result.from_env.add(grant.user)
            api.put_permissions(vhost, grant.user, grant.configure, grant.write, grant.read)
            log.info("broker user %s (%s) provisioned on vhost %s", grant.user, grant.component, vhost)
    finally:
        # Nobody keeps more than the listed rights on this vhost, the provisioning admin included
        # (an administrator can still manage the vhost through the management API).
        if me != guest_user or guest != "keep":
            api.delete_permissions(vhost, me)
    if guest == "restrict":
        _restrict_guest(api, guest_user, vhost, me)
    elif guest == "delete":
        api.delete_user(guest_user)
        log.warning("deleted the broker user %s", guest_user)
    return result


def _restrict_guest(api: RabbitAdminAPI, user: str, vhost: str, me: str) -> None:
    """Leave the default account able to do nothing: no tag (no management API), no permission on
    any virtual host (no AMQP connection). Its password hash is sent back unchanged: the account is
    not re-created, and an operator may give it rights again without resetting its password."""
    api.delete_permissions(vhost, user)
    if me == user:
        log.warning("broker user %s runs this provisioning: it keeps its tags and its rights on other "
                    "virtual hosts (provision as another administrator, or use --guest delete)", user)
        return
    existing = api.user(user)
    if existing is None:
        return  # never create it (the Docker image has no guest when RABBITMQ_DEFAULT_USER is set)
    if _tags(existing):
        api.put_user(user, "", password_hash=existing.get("password_hash", ""),
                     hashing_algorithm=existing.get("hashing_algorithm"))
    for perm in api.user_permissions(user):
        api.delete_permissions(str(perm["vhost"]), user)
    log.warning("broker user %s restricted: no tags, no permissions", user)


def _tags(user: Mapping[str, Any]) -> list[str]:
    """A user's tags: a list on 3.9+, a comma-separated string on older brokers."""
    tags = user.get("tags") or []
    if isinstance(tags, str):
        tags = [t for t in tags.split(",") if t.strip()]
    return list(tags)


def _declare_topology(api: RabbitAdminAPI, settings: Settings, vhost: str, plans: list[ActorPlan],
                      result: ProvisionResult) -> None:
    api.put_exchange(vhost, settings.exchange, "direct")
    api.put_exchange(vhost, settings.dead_letter_exchange, "fanout")
    api.put_queue(vhost, settings.dead_letter_queue, {"x-queue-type": settings.queue_type.value})
    api.put_binding(vhost, settings.dead_letter_exchange, settings.dead_letter_queue, "")
    api.put_policy(
        vhost, f"{settings.prefix}-actor-queues", "^" + re.escape(f"{settings.prefix}.actor."),
        {"dead-letter-exchange": settings.dead_letter_exchange, "delivery-limit": settings.delivery_limit},
        apply_to="queues",
    )
    for actor in plans:
        for lane in range(actor.lanes):
            name = settings.queue_name(actor.name, lane)
            api.put_queue(vhost, name, queue_arguments(settings, actor.queue_type))
            api.put_binding(vhost, settings.exchange, name, name)
            result.queues.append(name)


def _password(api: RabbitAdminAPI, grant: Grant, env: Mapping[str, str], rotate: set[str]) -> str | None:
    """Set the user's tags and password; returns the password when this run set one."""
    given = env.get(grant.password_env, "")
    existing = api.user(grant.user)
    if given:
        api.put_user(grant.user, grant.tags, password=given)
        return given
    if existing is None or grant.user in rotate or "all" in rotate:
        password = secrets.token_urlsafe(24)
        api.put_user(grant.user, grant.tags, password=password)
        return password
    api.put_user(grant.user, grant.tags, password_hash=existing.get("password_hash", ""),
                 hashing_algorithm=existing.get("hashing_algorithm"))
    return None


def amqp_url_for(settings: Settings, user: str, password: str, vhost: str) -> str:
    """The first AMQP_URL with another user, password and virtual host."""
    parts = urlsplit(settings.amqp_urls[0])
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}{port}"
    return urlunsplit((parts.scheme, netloc, "/" + quote(vhost, safe=""), "", ""))


def report(result: ProvisionResult, settings: Settings) -> list[str]:
    """Lines for the operator: what each component should set. Passwords appear once, here."""
    lines = [f"vhost {result.vhost}: {len(result.queues)} actor queue(s) declared; guest: {result.guest}"]
    for grant in result.grants:
        password = result.passwords.get(grant.user)
        rights = f"configure={grant.configure} write={grant.write} read={grant.read}"
        lines.append(f"# {grant.component}: user {grant.user} tags=[{grant.tags}] {rights}")
        if password is None:
            lines.append("#   password unchanged (use --rotate USER to replace it)")
            continue
        if grant.user in result.from_env:
            lines.append(f"#   password set from {grant.password_env} (not shown)")
            continue
        if grant.component == "console":
            lines.append(f"RABBITMQ_API_USER={grant.user}")
            lines.append(f"RABBITMQ_API_PASSWORD={password}")
        lines.append(f"AMQP_URL={amqp_url_for(settings, grant.user, password, result.vhost)}")
        lines.append("FIFOQ_DECLARE=0")
    return lines


def actors_from(specs: Iterable[str], settings: Settings, ledger_actors: Iterable[dict[str, Any]] = ()) -> list[ActorPlan]:
    """Actors named on the command line, plus those registered in the ledger (with their own
    queue type and lane count)."""
    plans = {a.name: a for a in (ActorPlan.parse(s, settings.queue_type, settings.lanes) for s in specs)}
    for doc in ledger_actors:
        name = str(doc.get("_id", ""))
        if name and name not in plans:
            qtype = QueueType(doc.get("queue_type") or settings.queue_type.value)
            plans[name] = ActorPlan.parse(f"{name}:{int(doc.get('lanes') or 1)}", qtype)
    return list(plans.values())
