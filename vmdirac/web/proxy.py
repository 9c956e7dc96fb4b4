"""Proxy upload: a PKCS#12 file and its password, handed to the ProxyManager as the user.

The file and password stay in this process's memory for the one call (never written to disk by
the portal, never logged: request bodies are not logged, and errors name no field values).
"""

from __future__ import annotations

from vmdirac.core.exceptions import InvalidArgument
from vmdirac.web.backend import PROXY_MANAGER
from vmdirac.web.base import PageHandler, PortalHandler

MAX_P12 = 64 * 1024   # a certificate and key: a few KB; anything larger is not a PKCS#12 of ours


class ProxyPage(PageHandler):
    template = "proxy.html"
    title = "Proxy upload"


class ProxyUploadHandler(PortalHandler):
    """``POST /api/proxy/upload`` (multipart): ``p12`` file, ``password``, optional ``group``."""

    async def post(self) -> None:
        files = self.request.files.get("p12", [])
        if len(files) != 1:
            raise InvalidArgument("attach exactly one PKCS#12 file (.p12 or .pfx)")
        data = files[0]["body"]
        if not data or len(data) > MAX_P12:
            raise InvalidArgument(f"the PKCS#12 file must be between 1 byte and {MAX_P12 // 1024} KB")
        password = self.get_body_argument("password", "", strip=False)   # spaces may be part of it
        group = self.get_body_argument("group", "")
        try:
            result = await self.rpc(PROXY_MANAGER, "uploadPKCS12", bytes(data), password, group)
        finally:
            del password, data   # drop our references at once
            self.request.body = b""
            self.request.files.clear()
            self.request.body_arguments.clear()
            self.request.arguments.clear()
        self.reply(result)


class ProxyListHandler(PortalHandler):
    async def get(self) -> None:
        self.reply(await self.rpc(PROXY_MANAGER, "getUserProxiesInfo"))
