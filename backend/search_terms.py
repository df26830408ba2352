"""The words of the console's payload search: one tokenizer for both sides of it.

A message stores `terms` (written with it, and again in the same write as every new payload);
a search splits its text with the same `words`, and finds the messages that have every word
(`{"actor": ..., "terms": {"$all": words}}`, served by the index `actor_terms_created`). Because
both sides use this module, a search can never look for a word in a form the write side would
not have stored.

- A term is a casefolded word (a run of letters, digits and underscores, `\\w+`), cut to
  MAX_TERM_CHARS characters.
- A message's terms are the words of its correlation id, then those of its payload's values in
  document order: strings, and numbers and booleans by their JSON text (`12.5` gives `12` and
  `5`, `true` gives `true`). Keys are not terms, nor is null.
- At most MAX_TERMS distinct terms per message (the first ones in that order): a word found only
  past them is not found.
"""
from __future__ import annotations

import json
import re
from typing import Any

MAX_TERM_CHARS = 64  # longer words are cut, on both sides (so a long word still finds itself)
MAX_TERMS = 128  # distinct terms stored per message
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The distinct casefolded words of `text`, in order, each at most MAX_TERM_CHARS long."""
    out: dict[str, None] = {}
    for word in _WORD.findall(text.casefold()):
        out[word[:MAX_TERM_CHARS]] = None
    return list(out)


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return None


def message_terms(payload: Any, correlation_id: str | None) -> list[str]:
    """The terms stored with a message (see the module docstring)."""
    out: dict[str, None] = {}
    if correlation_id:
        out.update(dict.fromkeys(words(str(correlation_id))))
    stack: list[Any] = [payload]
    while stack and len(out) < MAX_TERMS:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(reversed(list(value.values())))
        elif isinstance(value, (list, tuple)):
            stack.extend(reversed(value))
        else:
            text = _scalar_text(value)
            if text:
                out.update(dict.fromkeys(words(text)))
    return list(out)[:MAX_TERMS]
