"""What one step of a lane worker ends with."""
from __future__ import annotations

from enum import Enum


class Step(str, Enum):
    PASSED = "passed"  # the message at the position is settled or in custody: the position moved
    CONTINUE = "continue"  # something changed meanwhile: decide again at the same position
    WAIT = "wait"  # a gap or another replica's live claim: keep the deliveries, look again soon
    BLOCKED = "blocked"  # (no ordering keys) the position's message failed: the lane waits for an operator
    STOPPED = "stopped"  # paused or stopping: give the deliveries back
    DEAD_LETTER = "dead_letter"  # not ours (malformed, another actor's, unknown): to the dead-letter queue
