"""The op handler table: aten op kind -> the handler that says what the op does to channels.

Apart from the handlers and the walk so that both can import it: the walk looks handlers up here,
and handlers.py / layout_handlers.py fill it when the package is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import graph as g

# The first argument is the analysis.GraphWalk being run; typed loosely so that this table does not
# import the walk that reads it.
Handler = Callable[[Any, g.Node], None]
HANDLERS: dict[str, Handler] = {}


def handles(*kinds: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        for kind in kinds:
            HANDLERS[kind] = handler
        return handler

    return register
