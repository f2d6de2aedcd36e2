"""Client helpers shared by the integration tests that use Python `websockets` (asyncio)."""
import asyncio

import websockets

STEP = 10.0  # seconds any single network step may take


def run(coro, timeout=60.0):
    """Runs coro to completion, failing after timeout seconds."""

    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def connect(url, **kw):
    """websockets.connect with the tests' defaults: no size cap, no compression, no client pings."""
    kw.setdefault("max_size", None)
    kw.setdefault("compression", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("close_timeout", 5)
    kw.setdefault("open_timeout", STEP)
    return websockets.connect(url, **kw)
