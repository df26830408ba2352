"""User administration actions, each written to the audit log (shared by the pages and the API)."""
from __future__ import annotations

import logging
from typing import Any

from admin.users import Role, User, UserStore
from backend.audit import AuditEntry, AuditLog
from backend.errors import Conflict, NotFound, ValidationError

log = logging.getLogger(__name__)


def bootstrap_admin(users: UserStore, name: str, password: str) -> None:
    """Create a first admin from ADMIN_BOOTSTRAP_USER/PASSWORD (AdminConfig) when no user exists
    yet (handy with the embedded store, whose data lives in the console's process). Every console
    worker runs this at start: the one that loses the race finds the user there."""
    if name and password and users.count() == 0:
        try:
            users.create(name, password, Role.ADMIN)
        except Conflict:
            return
        log.warning("created the first admin %s from ADMIN_BOOTSTRAP_USER", name)


def create_user(users: UserStore, audit: AuditLog, by: str, name: Any, password: Any, role: Any) -> User:
    if not isinstance(name, str) or not isinstance(password, str) or not isinstance(role, str):
        raise ValidationError("username, password and role must be text")
    user = users.create(name, password, role)
    audit.record(AuditEntry(by, "user.create", details={"user": user.name, "role": user.role.value}))
    return user


def set_role(users: UserStore, audit: AuditLog, by: str, name: str, role: Any) -> User:
    new_role = Role.parse(role)
    before = users.require(name)  # user names ignore case: before.name is how it is spelled
    if before.name == by and new_role is not Role.ADMIN:
        raise ValidationError("you cannot remove your own admin role: ask another admin")
    user = users.set_role(before.name, new_role)
    audit.record(AuditEntry(by, "user.role", changed=before.role is not new_role,
                            details={"user": before.name, "role": new_role.value, "previous": before.role.value}))
    log.info("user %s set the role of %s to %s", by, before.name, new_role.value)
    return user


def create_token(users: UserStore, audit: AuditLog, by: str, name: str, label: Any) -> tuple[str, dict[str, Any]]:
    if label is None:
        label = ""
    token, record = users.create_token(name, label)
    audit.record(AuditEntry(by, "token.create", details={"user": record["user"], "token_id": record["_id"],
                                                          "label": record["label"]}))
    return token, record


def revoke_token(users: UserStore, audit: AuditLog, by: str, token_id: str) -> None:
    if not users.revoke_token(token_id):
        raise NotFound(f"no API token {token_id!r}")
    audit.record(AuditEntry(by, "token.revoke", details={"token_id": token_id}))


def set_active(users: UserStore, audit: AuditLog, by: str, name: str, active: Any) -> User:
    if not isinstance(active, bool):
        raise ValidationError("active must be true or false")
    before = users.require(name)
    if before.name == by and not active:
        raise ValidationError("you cannot deactivate yourself: ask another admin")
    user = users.set_active(before.name, active)
    audit.record(AuditEntry(by, "user.activate" if active else "user.deactivate", changed=before.active != active,
                            details={"user": before.name}))
    return user


def reset_password(users: UserStore, audit: AuditLog, by: str, name: str, password: Any) -> None:
    user = users.require(name)
    users.set_password(user.name, password)
    audit.record(AuditEntry(by, "user.password", details={"user": user.name}))
