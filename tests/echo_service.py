"""A service with typed methods, to exercise the RPC framework itself."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Literal

from vmdirac.core.exceptions import NotFound
from vmdirac.core.export import Caller, Service, export


class EchoService(Service):
    system = "Test"
    name = "Echo"

    def initialize(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    @export()
    def add(self, caller: Caller, a: int, b: int) -> int:
        return a + b

    @export()
    def join(self, caller: Caller, items: list[str], sep: str = ",") -> str:
        return sep.join(items)

    @export()
    def scale(self, caller: Caller, values: dict[str, float], factor: float | None = None) -> dict:
        return {k: v * (factor or 1.0) for k, v in values.items()}

    @export()
    def later(self, caller: Caller, when: dt.datetime, days: int) -> dt.datetime:
        return when + dt.timedelta(days=days)

    @export()
    def pick(self, caller: Caller, color: Literal["red", "green"]) -> str:
        return color

    @export(properties=["Operator"])
    def operatorOnly(self, caller: Caller) -> str:
        return f"hello {caller.username}"

    @export()
    def missing(self, caller: Caller, key: str) -> None:
        raise NotFound(f"no such thing: {key}")

    @export()
    def boom(self, caller: Caller) -> None:
        raise RuntimeError("secret internal detail")

    @export()
    def waitForRelease(self, caller: Caller) -> str:
        """Blocks until the test releases it: a call in flight during a shutdown."""
        self.entered.set()
        self.release.wait(30)
        return "released"

    @export()
    async def asyncAdd(self, caller: Caller, a: int, b: int) -> int:
        return a + b
