"""Handlers: plain Python functions registered under an actor's name."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from backend.errors import ValidationError
from backend.subscriptions import validate_actor_name
from backend.values import Message

Handler = Callable[[Message], None]


class OnInterrupted(str, Enum):
    """What to do with a message whose previous attempt was cut off (process killed mid-handler).

    RETRY calls the handler again: right for idempotent handlers (use message.id as the
    idempotency key with the external system). BLOCK blocks the actor so an operator checks the
    external system first, then replays or cancels: right when a duplicate side effect is worse
    than a stop.
    """

    RETRY = "retry"
    BLOCK = "block"


@dataclass(frozen=True)
class Registration:
    actor: str
    handler: Handler
    on_interrupted: OnInterrupted = OnInterrupted.RETRY


class Registry:
    def __init__(self) -> None:
        self._handlers: dict[str, Registration] = {}

    def register(self, actor: str, handler: Handler, *, on_interrupted: OnInterrupted | str = OnInterrupted.RETRY) -> Registration:
        validate_actor_name(actor)
        if not callable(handler):
            raise ValidationError(f"handler for {actor!r} is not callable")
        reg = Registration(actor, handler, OnInterrupted(on_interrupted))
        self._handlers[actor] = reg
        return reg

    def handler(self, actor: str, *, on_interrupted: OnInterrupted | str = OnInterrupted.RETRY) -> Callable[[Handler], Handler]:
        """Decorator form: `@registry.handler("payment")`."""

        def deco(fn: Handler) -> Handler:
            self.register(actor, fn, on_interrupted=on_interrupted)
            return fn

        return deco

    def get(self, actor: str) -> Registration:
        try:
            return self._handlers[actor]
        except KeyError:
            raise ValidationError(f"no handler registered for actor {actor!r} (known: {', '.join(sorted(self._handlers)) or 'none'})") from None

    @property
    def actors(self) -> list[str]:
        return sorted(self._handlers)
