"""What every portal handler shares: who the user is (``prepare``), CSRF on every state change,
RPC calls in the executor, JSON answers, and the headers that keep pages to themselves."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable

import tornado.web

from vmdirac.core.config import ConfigStore
from vmdirac.core.exceptions import (
    BadRequest, InvalidArgument, NotAuthenticated, NotAuthorized, NotFound, VMDiracError,
)
from vmdirac.core.server import connection_chain
from vmdirac.core.auth import identify
from vmdirac.web.auth import COOKIE, CSRF_FIELD, CSRF_HEADER, Sessions, WebUser, csrf_ok, web_user
from vmdirac.web.backend import Backend

log = logging.getLogger(__name__)

SAFE_METHODS = ("GET", "HEAD")
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
MAX_ID = 10 ** 12 - 1          # job and instance ids: 12 digits, as in the routes
MAX_IDS = 10000                # ids in one bulk action
_NUMBER = re.compile(r"[0-9]{1,12}")   # ASCII digits only: str.isdigit() also accepts "²"


def id_list(raw: Any, what: str = "job") -> list[int]:
    """A JSON body's list of ids, checked (not bools, not floats, in range), without repeats."""
    if not isinstance(raw, list) or not raw:
        raise InvalidArgument(f"ids must be a non-empty list of {what} ids")
    if len(raw) > MAX_IDS:
        raise InvalidArgument(f"at most {MAX_IDS} {what} ids at once, not {len(raw)}")
    for i in raw:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 < i <= MAX_ID:
            raise InvalidArgument(f"{str(i)[:40]!r} is not a {what} id")
    return list(dict.fromkeys(raw))


@dataclass
class PortalState:
    """What the handlers get through ``initialize``."""

    config: ConfigStore
    sessions: Sessions
    backend: Backend
    executor: ThreadPoolExecutor


def to_json(value: Any) -> str:
    """JSON for our pages: UTC times as ``YYYY-MM-DD HH:MM:SS``, bytes never."""

    def default(obj: Any) -> Any:
        if isinstance(obj, dt.datetime):
            if obj.tzinfo is not None:
                obj = obj.astimezone(dt.timezone.utc)
            return obj.strftime("%Y-%m-%d %H:%M:%S")
        if isinstance(obj, (set, frozenset, tuple)):
            return list(obj)
        raise TypeError(f"{type(obj).__name__} is not shown in the portal")

    return json.dumps(value, default=default)


def status_of(err: VMDiracError) -> int:
    if err.http_status != 200:
        return err.http_status
    for cls, status in ((NotFound, 404), (InvalidArgument, 400)):
        if isinstance(err, cls):
            return status
    return 502  # the service answered with an error of its own (unavailable, DB, ...)


class PortalHandler(tornado.web.RequestHandler):
    """A page or JSON endpoint that needs a user. ``public = True`` handlers skip the login."""

    public = False
    json_api = True

    def initialize(self, state: PortalState) -> None:
        self.state = state
        self.user: WebUser | None = None

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")   # login tokens never leak onwards
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Cache-Control", "no-store")
        # A browser holding a client certificate presents it to any page's subrequests too: no
        # other site may embed our JSON or plots, nor keep a handle on our windows.
        self.set_header("Cross-Origin-Resource-Policy", "same-origin")
        self.set_header("Cross-Origin-Opener-Policy", "same-origin")

    def _request_summary(self) -> str:
        # Tornado's own puts the full URI (a login link's token) into its warnings: the path only.
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # Refusals are one line; the unexpected get a traceback and an id to quote (never the
        # request's repr, which holds the query string).
        if isinstance(value, VMDiracError):
            log.info("portal %s refused: %s", self._request_summary(), value.message)
        elif isinstance(value, tornado.web.HTTPError):
            # Not its message: Tornado's quote the argument's value (a token, say).
            log.warning("portal %s: HTTP %d", self._request_summary(), value.status_code)
        else:
            self.error_id = uuid.uuid4().hex[:12]
            log.error("portal %s failed (error id %s)", self._request_summary(), self.error_id,
                      exc_info=(typ, value, tb))

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Blocking work (DB, RPC calls) off the IOLoop."""
        return await asyncio.get_running_loop().run_in_executor(self.state.executor, fn, *args)

    async def rpc(self, service: str, method: str, *args: Any) -> Any:
        assert self.user is not None
        return await self.run(self.state.backend.call, self.user, service, method, *args)

    # ------------------------------------------------------------ who

    async def prepare(self) -> None:
        if self.public:
            return
        try:
            self.user = await self.identify()
        except NotAuthenticated as e:
            return self.refuse(401, e.message)
        if self.user is None:
            return self.refuse(401, "not logged in: run dirac-web-login and open the link it prints")
        if self.request.method not in SAFE_METHODS:
            presented = self.request.headers.get(CSRF_HEADER) or self.get_body_argument(CSRF_FIELD, None)
            if not csrf_ok(self.user.session_id, presented):
                log.warning("portal: %s %s by %s refused: CSRF token %s", self.request.method, self.request.path,
                            self.user.username, "missing" if not presented else "wrong")
                return self.refuse(403, "refused: the CSRF token is " + ("missing" if not presented else "wrong")
                                   + " (reload the page)")

    async def identify(self) -> WebUser | None:
        """The session's user, else the client certificate's (without a session yet)."""
        registry = self.state.config.current.registry
        session_id = self.get_cookie(COOKIE)
        session = await self.run(self.state.sessions.find, session_id) if session_id else None
        chain = connection_chain(self.request)
        cert_dn = None
        if chain is not None:
            try:
                caller = identify(chain, registry)
                if caller.registered and not caller.is_host and caller.instance_id is None:
                    cert_dn, cert_group = caller.dn, caller.group
            except NotAuthenticated:
                cert_dn = None
        if session is not None and (cert_dn is None or session.dn == cert_dn):
            return web_user(registry, session.dn, session.group, session_id, session.method)
        if cert_dn is not None:
            return web_user(registry, cert_dn, cert_group)
        return None

    def refuse(self, status: int, reason: str) -> None:
        if self.json_api or self.request.method not in SAFE_METHODS:
            self.set_status(status)
            self.answer({"OK": False, "Message": reason})
        else:
            self.login_page(status, reason)

    def login_page(self, status: int, reason: str) -> None:
        self.set_status(status)
        self.render("login.html", reason=reason, user=None, title="Log in", page="login")

    # ------------------------------------------------------------ answers

    def answer(self, envelope: dict) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(to_json(envelope))

    def reply(self, value: Any) -> None:
        self.answer({"OK": True, "Value": value})

    def fail(self, err: VMDiracError) -> None:
        self.set_status(status_of(err))
        self.answer({"OK": False, "Message": err.message})

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, VMDiracError):
            return self.fail(exc)
        if isinstance(exc, tornado.web.MissingArgumentError):
            return self.fail(BadRequest(f"the {exc.arg_name} argument is missing"))
        message = self._reason
        if getattr(self, "error_id", None):
            message = f"internal error in the portal (error id {self.error_id}); the server log has the details"
        self.answer({"OK": False, "Message": message})

    def int_arg(self, name: str, default: int, low: int = 0, high: int = MAX_ID) -> int:
        """A whole-number query argument between ``low`` and ``high``, else 400."""
        value = self.get_query_argument(name, "").strip() or str(default)
        if not _NUMBER.fullmatch(value) or not low <= int(value) <= high:
            raise InvalidArgument(f"{name} must be a whole number from {low} to {high}")
        return int(value)

    def json_body(self) -> dict:
        try:
            body = json.loads(self.request.body or b"{}")
        except (ValueError, RecursionError) as e:
            raise BadRequest("the body is not JSON") from e
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    def need(self, *props: str) -> None:
        """Hide what the RPC layer would refuse anyway (it checks again; this is for the page)."""
        assert self.user is not None
        if not self.user.has(*props):
            raise NotAuthorized(f"{self.user.username}@{self.user.group} needs one of {', '.join(props)}")


class PageHandler(PortalHandler):
    """An HTML page: a certificate user without a session gets one here (hence a CSRF token)."""

    json_api = False
    template = ""
    title = ""

    async def get(self) -> None:
        assert self.user is not None
        if self.user.session_id is None:
            session_id, session = await self.run(self.state.sessions.start, self.user.dn, self.user.group,
                                                  "certificate")
            set_session_cookie(self, session_id, session.expires)
            self.user = replace(self.user, session_id=session_id)
        self.render(self.template, user=self.user, title=self.title, page=self.template.split(".")[0],
                    **self.page_args())

    def page_args(self) -> dict:
        return {}


def set_session_cookie(handler: tornado.web.RequestHandler, session_id: str, expires: dt.datetime) -> None:
    handler.set_cookie(COOKIE, session_id, expires=expires, path="/", secure=True, httponly=True,
                       samesite="Strict")


def clear_session_cookie(handler: tornado.web.RequestHandler) -> None:
    # A "__Host-" cookie is replaced only by one with the same attributes (Secure, Path=/).
    handler.clear_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
