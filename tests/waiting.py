"""Waiting in tests: poll a condition with a deadline (never a bare sleep), and pick a free port."""

from __future__ import annotations

import socket
import time
from typing import Any, Callable


def wait_for(check: Callable[[], Any], timeout: float, what: str, log: Callable[[], str] = lambda: "",
             interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns something true and return that, or fail after ``timeout``
    seconds naming ``what`` (and whatever ``log`` returns, to show why)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{log()}".rstrip())
        time.sleep(interval)


def free_port() -> int:
    """A port nothing listens on now (for servers whose URLs must be in their configuration)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
