"""fifoq backend: emit events, fan them out to subscribed actors, keep the ledger, operate it."""
from backend.app import Backend
from backend.emit import Emitter, Event
from backend.errors import FifoqError, TransientError
from backend.settings import Settings
from backend.subscriptions import Subscriptions
from backend.values import Message, QueueType, Status

__all__ = [
    "Backend",
    "Emitter",
    "Event",
    "FifoqError",
    "Message",
    "QueueType",
    "Settings",
    "Status",
    "Subscriptions",
    "TransientError",
]
