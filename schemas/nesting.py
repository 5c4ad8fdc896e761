"""How deep a raw item may nest to travel in an envelope.

Meta's payloads nest about ten levels deep. orjson writes at most ~254 levels and
msgspec reads an envelope as deep as Python's recursion limit allows (~1,000), so an item
nested far deeper could be neither published nor materialized. Producers refuse items
nested deeper than :data:`MAX_DEPTH` before building an envelope: the gateway answers
400, the crawler skips the message with the reason ``too_deep``.
"""

from __future__ import annotations

from typing import Any, Final

MAX_DEPTH: Final = 100


def deeper_than(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True if ``value`` nests objects and arrays (dicts and lists) more than ``limit``
    levels deep. Iterative, so any depth is safe to check."""
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False
