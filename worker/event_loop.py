"""Which asyncio event loop the worker runs on: uvloop where it is installed, else asyncio's own.

uvloop (libuv, in C) runs the same asyncio code; what it replaces is the event loop's own work:
socket reads and writes, callbacks, futures and timers. On the stream path that work is a large
part of each message's cost, because aiokafka's fetches, produce requests and acknowledgements all
go through the loop (``bench/stream.py`` measures the worker on both: the ``worker`` and
``worker-asyncio`` cases; ``docs/performance.md`` has the figures).

The choice is made once, before faust, aiokafka or the startup checks create a loop, by setting
asyncio's event loop policy; ``mode.loop.use("uvloop")``, faust's own switch, does the same.
uvloop has no Windows build, so ``auto`` falls back to asyncio where it is missing.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from schemas.errors import ConfigError

EventLoop = Literal["auto", "uvloop", "asyncio"]


def chosen_loop(choice: EventLoop) -> str:
    """The loop :func:`use_event_loop` installs for ``choice``, without installing it, named as the
    startup log names it: ``"uvloop 0.23.0"`` or ``"asyncio"``.

    ``auto`` is uvloop if it can be imported, else asyncio's; ``uvloop`` insists (a
    :class:`ConfigError` naming the setting when it is missing); ``asyncio`` is the standard
    library's.
    """
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "--event-loop uvloop (SENTIMENT_EVENT_LOOP): uvloop is not installed "
                "(pip install uvloop; it has no Windows build), or use --event-loop auto"
            ) from None
        return "asyncio"
    return f"uvloop {uvloop.__version__}"


def use_event_loop(choice: EventLoop) -> str:
    """Make :func:`chosen_loop`'s loop the one every later ``asyncio`` loop of this process is
    built with, and return its name. Calling it again with the same choice changes nothing."""
    name = chosen_loop(choice)
    if name == "asyncio":
        asyncio.set_event_loop_policy(None)  # the standard library's default
        return name
    import uvloop

    if not isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy):
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return name


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """What ``loop`` is, named as :func:`chosen_loop` names it: the worker logs the loop it runs
    on once started (``event loop: uvloop 0.23.0``), not the choice it was given."""
    return chosen_loop("uvloop") if type(loop).__module__.split(".")[0] == "uvloop" else "asyncio"
