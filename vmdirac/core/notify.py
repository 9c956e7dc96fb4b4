"""In-process notifications between components of one server: "new jobs", "new VMs", ...

A submission wakes the Matcher's long-polling pilots and the VM scheduler at once instead of
a polling period later. It only reaches components of the same process: those in other
processes fall back to a short re-check (state lives in the DB), so this is an optimisation,
never a correctness requirement.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from typing import Callable


class Notifier:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = defaultdict(set)
        self._subscribers: dict[str, list[Callable[[], None]]] = defaultdict(list)

    def subscribe(self, topic: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the notifying thread; keep it short) on every ``notify(topic)``."""
        with self._lock:
            self._subscribers[topic].append(callback)

    def notify(self, topic: str) -> None:
        with self._lock:
            waiters = list(self._waiters[topic])
            subscribers = list(self._subscribers[topic])
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)
        for callback in subscribers:
            callback()

    async def wait(self, topic: str, timeout: float) -> bool:
        """Wait until ``notify(topic)`` or ``timeout``; True when notified."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters[topic].add(entry)
        try:
            await asyncio.wait_for(entry[1].wait(), max(0.0, timeout))
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters[topic].discard(entry)

    def wake_all(self) -> None:
        """Wake every waiter (the server is stopping: long polls should answer now)."""
        with self._lock:
            waiters = [w for ws in self._waiters.values() for w in ws]
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)
