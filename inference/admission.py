"""Admission: a bounded queue per model in front of the nodes, with a wait deadline.

Requests run while the model's in-flight count is below the fleet's slots for it; the next
ones wait in a bounded FIFO. Full queue -> 429 with Retry-After; waited past the deadline -> 504.
"""

import asyncio
from collections import deque

from django.conf import settings

from axserving.errors import GatewayTimeout, RateLimited


class Gate:
    def __init__(self) -> None:
        self.active = 0
        self.capacity = 1
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, capacity: int) -> None:
        self.capacity = max(capacity, 1)
        if self.active < self.capacity and not self.waiters:
            self.active += 1
            return
        if len(self.waiters) >= settings.AXS_ADMISSION_QUEUE:
            raise RateLimited(
                "Too many requests are queued for this model; retry shortly.",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout=settings.AXS_ADMISSION_TIMEOUT)
        except TimeoutError:
            self._drop(waiter)
            raise GatewayTimeout(
                f"The request waited more than {settings.AXS_ADMISSION_TIMEOUT:g}s for a free slot.", code="queue_timeout"
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as the client went away: hand the slot on
            else:
                self._drop(waiter)
            raise
        # Granted: release() already counted this request in `active`.

    def _drop(self, waiter: asyncio.Future[None]) -> None:
        try:
            self.waiters.remove(waiter)
        except ValueError:
            pass

    def release(self) -> None:
        self.active -= 1
        while self.waiters and self.active < self.capacity:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.active += 1
                waiter.set_result(None)


_gates: dict[str, Gate] = {}


def gate(model: str) -> Gate:
    return _gates.setdefault(model, Gate())


def queue_depth() -> dict[str, int]:
    return {model: len(g.waiters) for model, g in _gates.items()}
