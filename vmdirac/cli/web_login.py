"""dirac-web-login: a one-time link that logs your browser in to the web portal as you.

Presents your proxy to the portal (``POST /api/login-link``), which answers with a link holding a
single-use token that lasts a few minutes; opening it starts a browser session for the identity
and group of the proxy.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from pathlib import Path

from vmdirac.cli.common import command, parser
from vmdirac.core.clientconfig import load_settings, proxy_credentials
from vmdirac.core.exceptions import NotAuthenticated, ServiceUnavailable, VMDiracError

DEFAULT_WEB_PORT = 8444


def portal_url(given: str | None, config_servers: tuple[str, ...]) -> str:
    """``--url``, else ``$VMDIRAC_WEB_URL``, else the configuration server's host on 8444."""
    url = given or os.environ.get("VMDIRAC_WEB_URL", "")
    if not url:
        host = urllib.parse.urlsplit(config_servers[0]).hostname if config_servers else "localhost"
        url = f"https://{host}:{DEFAULT_WEB_PORT}/"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise VMDiracError(f"bad portal URL {url!r}: expected https://host:port/")
    return url


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("dirac-web-login", "Print a one-time link that logs your browser in to the web portal.",
               "$ dirac-web-login\n  https://localhost:8444/login?token=...  (use once, within 5 minutes)")
    p.add_argument("--url", default=None,
                   help=f"portal URL (default $VMDIRAC_WEB_URL, else the configuration server's host on port "
                        f"{DEFAULT_WEB_PORT})")
    p.add_argument("--proxy", type=Path, default=None, help="proxy to present (default $X509_USER_PROXY)")
    args = p.parse_args(argv)
    settings = load_settings()
    creds = proxy_credentials(settings, args.proxy)
    url = portal_url(args.url, settings.ConfigurationServer)
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=30, context=creds.ssl_context())
    try:
        conn.request("POST", "/api/login-link", b"", {"Accept": "application/json", "Content-Length": "0"})
        resp = conn.getresponse()
        status, body = resp.status, resp.read()
    except OSError as e:
        raise ServiceUnavailable(f"cannot reach the portal at {url}: {getattr(e, 'strerror', None) or e}") from e
    finally:
        conn.close()
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    if status != 200 or not answer.get("OK"):
        message = answer.get("Message") or f"HTTP {status}"
        if status == 401:
            raise NotAuthenticated(f"the portal refused your proxy: {message}")
        raise VMDiracError(f"the portal at {url} answered: {message}")
    value = answer["Value"]
    print(value["url"])
    print(f"(for {value['user']} in group {value['group']}; use it once, within "
          f"{value['expires_minutes']:g} minutes)")
    return 0
