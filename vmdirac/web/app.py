"""The web portal: its routes, and the HTTPS server ``vmdirac-server`` runs beside the services.

Same TLS setup as the RPC server (our CA; client certificates optional, proxies allowed): a
browser with a certificate is that user, others log in with a ``dirac-web-login`` link. Pages
are Tornado templates (autoescaped) plus small scripts of our own that fetch JSON endpoints.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tornado.httputil
import tornado.netutil
import tornado.web
from tornado.httpserver import HTTPServer

from vmdirac.core.tls import server_context
from vmdirac.db.web_db import WebDB
from vmdirac.web import accounting, jobs, launchpad, login, proxy, vms
from vmdirac.web.auth import Sessions
from vmdirac.web.backend import Backend
from vmdirac.web.base import PortalHandler, PortalState

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
MAX_BODY = 20 * 1024 * 1024      # a Launch Pad form with its sandbox files (the store caps sandboxes)
# Tornado reads a whole body before any handler runs (before we know who is asking), so every
# other path gets a small limit, set as soon as the request's headers are in.
BODY_LIMITS = {"/api/submit": MAX_BODY, "/api/proxy/upload": 256 * 1024}
MAX_OTHER_BODY = 1024 * 1024     # a JSON action on 10,000 ids fits
PURGE_EVERY_S = 3600.0
ID = r"([0-9]{1,12})"


class NotFoundPage(PortalHandler):
    public = True

    def prepare(self) -> None:
        self.set_status(404)
        self.answer({"OK": False, "Message": "no such page"})


def routes(state: PortalState) -> list[tuple]:
    table = [
        (r"/", login.RootHandler),
        (r"/login", login.LoginHandler),
        (r"/logout", login.LogoutHandler),
        (r"/api/login-link", login.LoginLinkHandler),
        (r"/api/group", login.GroupHandler),
        (r"/jobs", jobs.JobMonitorPage),
        (r"/api/jobs", jobs.JobsHandler),
        (r"/api/jobs/selectors", jobs.SelectorsHandler),
        (rf"/api/jobs/{ID}/logging", jobs.LoggingInfoHandler),
        (rf"/api/jobs/{ID}/parameters", jobs.ParametersHandler),
        (r"/api/jobs/action", jobs.JobActionHandler),
        (r"/launchpad", launchpad.LaunchPadPage),
        (r"/api/submit", launchpad.SubmitHandler),
        (r"/vms", vms.VirtualMachinesPage),
        (r"/api/vms", vms.InstancesHandler),
        (rf"/api/vms/{ID}/history", vms.HistoryHandler),
        (rf"/api/vms/{ID}/plot.png", vms.LoadPlotHandler),
        (r"/api/vms/stop", vms.StopHandler),
        (r"/api/pods", vms.PodsHandler),
        (r"/proxy", proxy.ProxyPage),
        (r"/api/proxy/upload", proxy.ProxyUploadHandler),
        (r"/api/proxy/list", proxy.ProxyListHandler),
        (r"/accounting", accounting.AccountingPage),
        (r"/api/accounting/reports", accounting.ReportsHandler),
        (r"/api/accounting/report", accounting.ReportHandler),
        (r"/api/accounting/plot.png", accounting.PlotHandler),
    ]
    return [(pattern, cls, {"state": state}) for pattern, cls in table]


def _log_request(handler: tornado.web.RequestHandler) -> None:
    # The path only: a query string may hold a login token, and bodies (passwords) never appear.
    request = handler.request
    user = getattr(handler, "user", None)
    log.info("portal %s %s %d by %s in %.1f ms", request.method, request.path, handler.get_status(),
             user.username if user else "-", 1000.0 * request.request_time())


class PortalApplication(tornado.web.Application):
    def find_handler(self, request: tornado.httputil.HTTPServerRequest, **kwargs: Any) -> Any:
        connection = request.connection
        if hasattr(connection, "set_max_body_size"):
            connection.set_max_body_size(BODY_LIMITS.get(request.path, MAX_OTHER_BODY))
        return super().find_handler(request, **kwargs)


def make_app(state: PortalState) -> tornado.web.Application:
    return PortalApplication(
        routes(state),
        template_path=str(HERE / "templates"),
        static_path=str(HERE / "static"),
        default_handler_class=NotFoundPage,
        default_handler_args={"state": state},
        xsrf_cookies=False,       # our own per-session token (web.auth), checked in prepare()
        log_function=_log_request,
        compress_response=True,
    )


class Portal:
    """The portal of one ``vmdirac-server`` process (its context: configuration, DB, host cert)."""

    def __init__(self, context: Any, max_workers: int = 16) -> None:
        self.context = context
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="web")
        db = WebDB(context.engine)
        db.create_tables()
        local = context.local
        self.sessions = Sessions(db, local.WebSessionHours, local.WebLoginMinutes)
        self.backend = Backend(context.config, context.host_credentials)
        self.state = PortalState(context.config, self.sessions, self.backend, self.executor)
        self.app = make_app(self.state)
        self.http: HTTPServer | None = None
        self.port = 0
        self._purger: asyncio.Task | None = None

    def listen(self, port: int, address: str = "") -> int:
        local, paths = self.context.local, self.context.paths
        ctx = server_context(local.HostCert or paths.security / "hostcert.pem",
                             local.HostKey or paths.security / "hostkey.pem",
                             local.CACertificates or paths.ca_dir)
        self.http = HTTPServer(self.app, ssl_options=ctx, max_body_size=MAX_BODY, idle_connection_timeout=300)
        sockets = tornado.netutil.bind_sockets(port, address=address or None)
        self.http.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._purger = asyncio.ensure_future(self._purge_loop())
        return self.port

    async def _purge_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                n = await loop.run_in_executor(self.executor, self.sessions.db.purge)
                if n:
                    log.info("portal: forgot %d ended sessions and login tokens", n)
            except Exception:
                log.exception("portal: purging ended sessions failed")
            await asyncio.sleep(PURGE_EVERY_S)

    async def stop(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
        if self.http is not None:
            self.http.stop()
            await self.http.close_all_connections()
            self.http = None
        self.executor.shutdown(wait=False, cancel_futures=True)
        started = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, self.backend.close)
        log.info("portal stopped in %.1f s", time.monotonic() - started)
