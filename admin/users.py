"""Console users and API tokens, kept in the `users` and `api_tokens` collections of the store.

User names are unique without regard to case (`VIEWER1` cannot join `viewer1`) and looked up
without regard to case (logging in as `Ada` is logging in as `ada`): each user document keeps its
name as created in `_id` and its lower-case form in `name_key`, under a unique index.

Passwords are hashed with werkzeug (scrypt/pbkdf2, salted). API tokens are random 256-bit secrets
shown once; only their SHA-256 is stored (a fast hash is right for high-entropy secrets and keeps
each API call cheap).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any

from werkzeug.security import check_password_hash, generate_password_hash

from backend.errors import ConfigError, Conflict, NotFound, ValidationError
from backend.ledger import as_aware, utcnow
from backend.store import ASCENDING, DuplicateKey, Store

log = logging.getLogger(__name__)

USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 256
MAX_LABEL = 100
TOKEN_PREFIX = "fq_"
# A token's last use is written when a request authenticates with it, at most once per this many
# seconds: an API client or a Prometheus scrape calling every few seconds costs one small write a
# minute, not one per request, and "last used" is exact to the minute.
LAST_USE_RESOLUTION_SECONDS = 60


class Role(str, Enum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank

    @classmethod
    def parse(cls, value: Any) -> Role:
        try:
            return cls(value)
        except ValueError:
            raise ValidationError(f"role must be one of {', '.join(r.value for r in cls)}") from None


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class UnknownUser(NotFound):
    pass


@dataclass(frozen=True)
class User:
    """A console user, as flask-login needs it."""

    name: str
    role: Role
    active: bool = True
    # Bumped on logout and password change: a session cookie made before then no longer loads.
    session_version: int = 0

    # flask-login protocol
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_active(self) -> bool:
        return self.active

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        return self.name

    def can(self, needed: Role) -> bool:
        return self.active and self.role.allows(needed)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role.value, "active": self.active}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> User:
        return cls(name=doc["_id"], role=Role(doc["role"]), active=bool(doc.get("active", True)),
                   session_version=int(doc.get("session_version", 0)))


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not USER_NAME_RE.match(name):
        raise ValidationError("user name: 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
    return name


def validate_password(password: Any) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise ValidationError(f"password must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise ValidationError(f"password must be at most {MAX_PASSWORD} characters")
    return password


def _token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def name_key(name: str) -> str:
    return name.lower()


class UserStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        with store.op() as db:
            db.api_tokens.create_index([("user", ASCENDING)], name="user")
            db.api_tokens.create_index([("created_at", ASCENDING)], name="created")  # the Users page's list
            # Users created before names ignored case get their key now.
            for doc in list(db.users.find({"name_key": {"$exists": False}}, {"_id": 1})):
                db.users.update_one({"_id": doc["_id"]}, {"$set": {"name_key": name_key(str(doc["_id"]))}})
        try:
            with store.op() as db:
                db.users.create_index([("name_key", ASCENDING)], name="name_key", unique=True)
        except DuplicateKey:
            raise ConfigError(f"console users differ only in case ({', '.join(self._case_clashes())}): "
                              "user names ignore case now; rename or delete all but one of each") from None

    def _case_clashes(self) -> list[str]:
        with self.store.op() as db:
            names = [str(d["_id"]) for d in db.users.find({}, {"_id": 1})]
        seen: dict[str, list[str]] = {}
        for name in names:
            seen.setdefault(name_key(name), []).append(name)
        return [" / ".join(group) for group in seen.values() if len(group) > 1]

    def _filter(self, name: Any) -> dict[str, Any] | None:
        return {"name_key": name_key(name)} if isinstance(name, str) else None

    # -- users ----------------------------------------------------------------------------
    def create(self, name: str, password: str, role: Role | str) -> User:
        """Raises ValidationError on bad input, Conflict if the name is taken."""
        name, password, role = validate_name(name), validate_password(password), Role.parse(role)
        doc = {
            "_id": name,
            "name_key": name_key(name),
            "password_hash": generate_password_hash(password),
            "role": role.value,
            "active": True,
            "session_version": 0,
            "created_at": utcnow(),
        }
        try:
            with self.store.op() as db:
                db.users.insert_one(doc)
        except DuplicateKey:
            raise Conflict(f"user {name!r} already exists (user names ignore case)") from None
        log.info("user %s created with role %s", name, role.value)
        return User.from_doc(doc)

    def get(self, name: str) -> User | None:
        """The user of that name, whatever its case; None when there is none."""
        query = self._filter(name)
        if query is None:
            return None
        with self.store.op() as db:
            doc = db.users.find_one(query, {"password_hash": 0})
        return User.from_doc(doc) if doc else None

    def require(self, name: str) -> User:
        user = self.get(name)
        if user is None:
            raise UnknownUser(f"unknown user {name!r}")
        return user

    def all(self) -> list[dict[str, Any]]:
        with self.store.op() as db:
            rows = list(db.users.find({}, {"password_hash": 0}).sort("_id", ASCENDING))
        for row in rows:
            row["created_at"] = as_aware(row.get("created_at"))
        return rows

    def count(self) -> int:
        with self.store.op() as db:
            return db.users.count_documents({})

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password matches and the account is active; None otherwise."""
        if not isinstance(name, str) or not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return None
        with self.store.op() as db:
            doc = db.users.find_one({"name_key": name_key(name)})
        if doc is None:
            # Spend the same time as a real check so that timing does not reveal which names exist.
            check_password_hash(_DUMMY_HASH, password)
            return None
        if not check_password_hash(doc["password_hash"], password) or not doc.get("active", True):
            return None
        return User.from_doc(doc)

    def set_role(self, name: str, role: Role | str) -> User:
        role = Role.parse(role)
        with self.store.op() as db:
            res = db.users.update_one({"name_key": name_key(name)}, {"$set": {"role": role.value}})
        if res.matched_count == 0:
            raise UnknownUser(f"unknown user {name!r}")
        return self.require(name)

    def set_password(self, name: str, password: str) -> None:
        password = validate_password(password)
        with self.store.op() as db:
            res = db.users.update_one({"name_key": name_key(name)}, {"$set": {"password_hash": generate_password_hash(password)},
                                                      "$inc": {"session_version": 1}})
        if res.matched_count == 0:
            raise UnknownUser(f"unknown user {name!r}")

    def end_sessions(self, name: str) -> None:
        """Invalidates every session cookie issued to the user so far (logout everywhere)."""
        with self.store.op() as db:
            db.users.update_one({"name_key": name_key(name)}, {"$inc": {"session_version": 1}})

    def set_active(self, name: str, active: bool) -> User:
        """A deactivated user can neither log in nor use a token; open sessions end at the next request."""
        with self.store.op() as db:
            res = db.users.update_one({"name_key": name_key(name)}, {"$set": {"active": bool(active)}})
        if res.matched_count == 0:
            raise UnknownUser(f"unknown user {name!r}")
        return self.require(name)

    # -- API tokens -----------------------------------------------------------------------
    def create_token(self, name: str, label: str = "") -> tuple[str, dict[str, Any]]:
        """Returns (the token, shown once, and its stored record without the hash)."""
        name = self.require(name).name
        if not isinstance(label, str) or len(label) > MAX_LABEL:
            raise ValidationError(f"token label must be text of at most {MAX_LABEL} characters")
        token_id = uuid.uuid4().hex[:12]
        secret = secrets.token_urlsafe(32)
        doc = {"_id": token_id, "user": name, "label": label.strip(), "hash": _token_hash(secret), "created_at": utcnow(),
               "last_used_at": None}
        with self.store.op() as db:
            db.api_tokens.insert_one(doc)
        log.info("API token %s created for user %s", token_id, name)
        return f"{TOKEN_PREFIX}{token_id}.{secret}", {k: v for k, v in doc.items() if k != "hash"}

    def tokens(self, name: str | None = None) -> list[dict[str, Any]]:
        """Tokens (without their hash), with `last_used_at` (None: never used)."""
        user = self.get(name) if name is not None else None
        query = {} if name is None else {"user": user.name if user is not None else name}
        with self.store.op() as db:
            rows = list(db.api_tokens.find(query, {"hash": 0}).sort("created_at", ASCENDING))
        for row in rows:
            row["created_at"] = as_aware(row.get("created_at"))
            row["last_used_at"] = as_aware(row.get("last_used_at"))
        return rows

    def token(self, token_id: str) -> dict[str, Any] | None:
        with self.store.op() as db:
            return db.api_tokens.find_one({"_id": str(token_id)}, {"hash": 0})

    def revoke_token(self, token_id: str) -> bool:
        with self.store.op() as db:
            return db.api_tokens.delete_one({"_id": str(token_id)}).deleted_count == 1

    def user_for_token(self, token: str) -> User | None:
        """The active user a bearer token belongs to, or None."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or "." not in token:
            return None
        token_id, _, secret = token[len(TOKEN_PREFIX):].partition(".")
        with self.store.op() as db:
            doc = db.api_tokens.find_one({"_id": token_id})
        if doc is None or not hmac.compare_digest(doc["hash"], _token_hash(secret)):
            return None
        user = self.get(doc["user"])
        if user is None or not user.active:
            return None
        self._note_use(doc)
        return user

    def _note_use(self, doc: dict[str, Any]) -> None:
        """Record the token's last use, unless it was recorded less than a resolution ago. The
        update is conditional, so concurrent requests (several workers) write it once."""
        now = utcnow()
        last = as_aware(doc.get("last_used_at"))
        cutoff = now - timedelta(seconds=LAST_USE_RESOLUTION_SECONDS)
        if last is not None and last > cutoff:
            return
        with self.store.op() as db:
            db.api_tokens.update_one({"_id": doc["_id"], "$or": [{"last_used_at": None}, {"last_used_at": {"$lte": cutoff}}]},
                                     {"$set": {"last_used_at": now}})


_DUMMY_HASH = generate_password_hash("not a real password")
