"""The HTTPS RPC server: DIRAC's protocol on Tornado, several services on one port.

``POST /<System>/<Service>`` with a form body (``method``, ``args`` as a JSON list, and DIRAC's
``extraCredentials``); the answer is the ``{"OK", "Value" | "Message", "Errno"}`` envelope.
Order of checks: credential (401), service (404), method (501), properties (403), body and
arguments (400/413); then the call, in the thread pool unless the method is async.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import tornado.netutil
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.httputil import parse_body_arguments

from vmdirac.core import jencode
from vmdirac.core.auth import identify
from vmdirac.core.config import ConfigStore
from vmdirac.core.exceptions import (
    BadRequest, InternalError, RequestTooLarge, UnknownMethod, UnknownService,
    VMDiracError,
)
from vmdirac.core.export import Caller, Service, authorize
from vmdirac.core.tls import peer_chain
from vmdirac.core.x509 import ChainInfo, chain_info

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 16 * 1024 * 1024
_NO_CHAIN = object()


def connection_chain(request: tornado.httputil.HTTPServerRequest) -> ChainInfo | None:
    """The verified chain of the request's TLS connection, parsed once per connection."""
    stream = request.connection.stream  # type: ignore[union-attr]
    cached = getattr(stream, "_vmdirac_chain", None)
    if cached is None:
        chain = peer_chain(stream.socket) if stream.socket is not None else []
        cached = chain_info(chain) if chain else _NO_CHAIN
        stream._vmdirac_chain = cached
    return None if cached is _NO_CHAIN else cached


def envelope_error(err: VMDiracError) -> dict:
    return {"OK": False, "Message": err.message, "Errno": err.errno, "ErrorClass": type(err).__name__}


class BaseHandler(tornado.web.RequestHandler):
    """What every HTTPS handler of ours shares: the caller, the envelope, the error page."""

    def initialize(self, app_state: AppState) -> None:
        self.state = app_state

    def caller(self, extra_credentials: Any = None) -> Caller:
        return identify(connection_chain(self.request), self.state.config.current.registry, extra_credentials)

    def reply(self, status: int, body: dict) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(jencode.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Tornado's own errors (e.g. 405): still an envelope, never a traceback.
        self.set_header("Content-Type", "application/json")
        self.finish(jencode.dumps({"OK": False, "Message": self._reason, "Errno": 0}))


class AppState:
    """Shared by the handlers of one server: services, configuration, executor, counters."""

    def __init__(self, services: dict[str, Service], config: ConfigStore,
                 executor: ThreadPoolExecutor, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.services = services
        self.config = config
        self.executor = executor
        self.max_body = max_body
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()


@tornado.web.stream_request_body
class RPCHandler(BaseHandler):
    def prepare(self) -> None:
        self.state.in_flight += 1
        self.state.idle.clear()
        self._counted = True
        self._start = time.perf_counter()
        self._body = bytearray()
        self._too_large = False
        length = self.request.headers.get("Content-Length")
        if length is not None and (not length.isdigit() or int(length) > self.state.max_body):
            self.set_header("Connection", "close")  # the unread body makes the connection unusable
            self._fail(RequestTooLarge(f"request body of {length} bytes is over the "
                                       f"{self.state.max_body}-byte limit"))

    def data_received(self, chunk: bytes) -> None:
        if self._too_large:
            return
        if len(self._body) + len(chunk) > self.state.max_body:
            self._too_large = True
            self._body.clear()
            return
        self._body += chunk

    def on_finish(self) -> None:
        if getattr(self, "_counted", False):
            self._counted = False
            self.state.in_flight -= 1
            if self.state.in_flight == 0:
                self.state.idle.set()

    def _fail(self, err: VMDiracError) -> None:
        self.reply(err.http_status, envelope_error(err))

    def _form(self) -> dict[str, str]:
        if self._too_large:
            raise RequestTooLarge(f"request body is over the {self.state.max_body}-byte limit")
        args: dict[str, list[bytes]] = {}
        ctype = self.request.headers.get("Content-Type", "application/x-www-form-urlencoded")
        if not ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            raise BadRequest(f"the body must be form-encoded, not {ctype.split(';')[0]}")
        parse_body_arguments(ctype, bytes(self._body), args, {}, self.request.headers)
        try:
            return {k: v[0].decode() for k, v in args.items() if v}
        except UnicodeDecodeError as e:
            raise BadRequest("the form is not UTF-8") from e

    async def post(self, system: str, service_name: str) -> None:
        full = f"{system}/{service_name}"
        method_name = "?"
        caller: Caller | None = None
        status = "OK"
        try:
            form = self._form()
            method_name = form.get("method", "")
            extra = _decode(form["extraCredentials"], "extraCredentials") if "extraCredentials" in form else None
            caller = self.caller(extra)
            service = self.state.services.get(full)
            if service is None:
                raise UnknownService(f"no service {full} here")
            if not method_name:
                raise BadRequest("no method named in the request")
            method = service.methods.get(method_name)
            if method is None:
                raise UnknownMethod(f"{full} has no method {method_name}")
            authorize(caller, method.properties, f"{full}.{method_name}")
            raw = _decode(form.get("args", "[]"), "args")
            if not isinstance(raw, list):
                raise BadRequest("args must be a JSON list")
            args = method.bind(raw)
            if method.is_async:
                value = await method.function(caller, *args)
            else:
                loop = asyncio.get_running_loop()
                value = await loop.run_in_executor(self.state.executor, _call, method.function, caller, args)
            self.reply(200, {"OK": True, "Value": value})
        except VMDiracError as err:
            status = f"{type(err).__name__}: {err.message}"
            self._fail(err)
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("%s.%s by %s failed (error id %s)", full, method_name, caller, error_id)
            status = f"internal error {error_id}"
            self._fail(InternalError(f"internal error in {full}.{method_name} (error id {error_id}); "
                                     "the server log has the details"))
        finally:
            ms = (time.perf_counter() - self._start) * 1000
            log.info("%s.%s by %s from %s: %s in %.1f ms", full, method_name,
                     caller or "unauthenticated", self.request.remote_ip, status, ms)


def _call(fn: Callable[..., Any], caller: Caller, args: list[Any]) -> Any:
    return fn(caller, *args)


def _decode(text: str, what: str) -> Any:
    try:
        return jencode.loads(text)
    except ValueError as e:
        raise BadRequest(f"{what} is not valid JSON ({e.args[0] if e.args else e})") from e


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        self.reply(404, envelope_error(UnknownService(f"nothing at {self.request.path}: "
                                                      "call POST /<System>/<Service>")))


def make_application(state: AppState, extra_handlers: list | None = None) -> tornado.web.Application:
    handlers = list(extra_handlers or [])
    handlers.append((r"/([A-Za-z][A-Za-z0-9_]*)/([A-Za-z][A-Za-z0-9_]*)/?", RPCHandler, {"app_state": state}))
    return tornado.web.Application(
        handlers, default_handler_class=NotFoundHandler, default_handler_args={"app_state": state},
        log_function=lambda handler: None,  # our own one line per call is enough
    )


class RPCServer:
    """Services on one HTTPS port, with a graceful stop."""

    def __init__(self, services: list[Service], config: ConfigStore, ssl_context: ssl.SSLContext,
                 max_workers: int = 32, max_body: int = DEFAULT_MAX_BODY,
                 extra_handlers: list | None = None) -> None:
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc")
        self.state = AppState({s.full_name: s for s in services}, config, self.executor, max_body)
        routes = list(extra_handlers or [])
        for service in services:
            routes += [(pattern, cls, {"app_state": self.state, **kwargs})
                       for pattern, cls, kwargs in service.handlers()]
        self.app = make_application(self.state, routes)
        self.ssl_context = ssl_context
        self.http: HTTPServer | None = None
        self.port = 0

    def listen(self, port: int, address: str = "") -> int:
        self.http = HTTPServer(self.app, ssl_options=self.ssl_context, xheaders=False,
                               max_body_size=max(self.state.max_body * 4, 1 << 30),
                               idle_connection_timeout=300)
        sockets = tornado.netutil.bind_sockets(port, address=address or None)
        self.http.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        return self.port

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let calls in flight finish (up to ``grace`` s), then close."""
        if self.http is None:
            return
        self.http.stop()
        try:
            await asyncio.wait_for(self.state.idle.wait(), grace)
        except asyncio.TimeoutError:
            log.warning("stopping with %d call(s) still running after %.0f s", self.state.in_flight, grace)
        await self.http.close_all_connections()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.http = None


