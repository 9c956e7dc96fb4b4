"""The RPC client: DIRAC's protocol over keep-alive HTTPS, with failover between URLs.

``RPCClient("WorkloadManagement/JobManager", creds).submitJob(jdl)`` returns the ``Value`` or
raises the typed error the server sent. A service's URLs are tried in turn (starting at a random
one, so clients spread over servers); a URL that cannot be reached is skipped, and the whole list
is tried ``rounds`` times with a short pause. A call is only repeated when it cannot have reached
the server (connection refused, TLS failure, a kept-alive connection the server had closed), so
a submission is never sent twice by the client itself. Connections are kept per thread.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmdirac.core import jencode
from vmdirac.core.exceptions import (
    NotAuthenticated, SecurityError, ServiceUnavailable, VMDiracError, error_class,
)
from vmdirac.core.tls import client_context

log = logging.getLogger(__name__)

# TLS alerts the server sends when it refuses the presented chain, as OpenSSL names them.
_AUTH_ALERTS = ("UNKNOWN_CA", "CERTIFICATE", "BAD_CERTIFICATE", "UNSUPPORTED_CERTIFICATE",
                "DECRYPT_ERROR", "HANDSHAKE_FAILURE", "ACCESS_DENIED")


def default_proxy_path() -> Path:
    return Path(os.environ.get("X509_USER_PROXY") or f"/tmp/x509up_u{os.getuid()}")


@dataclass(frozen=True)
class ClientCredentials:
    """What a client presents and trusts. A proxy file holds its own key (``key`` is None)."""

    cert: str | None
    key: str | None
    ca: str
    use_host: bool = False          # sends extraCredentials="hosts", as DIRAC's host clients do
    delegate: tuple[str, str] | None = None   # [DN, group] a TrustedHost acts for
    _ctx: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context presenting the credential, made again when its files changed: a VM's
        renewed credential replaces its file, and long-lived clients (the pilot) must present it."""
        stamp = self._stamp()
        cached = self._ctx.get("ctx")
        if cached is None or cached[0] != stamp:
            cached = (stamp, client_context(self.cert, self.key, self.ca))
            self._ctx["ctx"] = cached
        return cached[1]

    def _stamp(self) -> tuple:
        out = []
        for path in (self.cert, self.key):
            try:
                st = os.stat(path) if path else None
            except OSError:
                st = None
            out.append(st and (st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)


class _Connections(threading.local):
    def __init__(self) -> None:
        self.by_netloc: dict[str, http.client.HTTPSConnection] = {}


class RPCClient:
    def __init__(self, service: str, credentials: ClientCredentials, urls: list[str] | None = None,
                 config: Any = None, connect_timeout: float = 10.0, timeout: float = 120.0,
                 rounds: int = 3, retry_pause: float = 0.5) -> None:
        """``service`` is ``System/Service``; its URLs come from ``urls`` or the ``config`` snapshot."""
        self.service = service
        self.credentials = credentials
        self._urls = urls
        self._config = config
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.rounds = rounds
        self.retry_pause = retry_pause
        self._conns = _Connections()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.call(name, *args)

    @property
    def urls(self) -> list[str]:
        if self._urls:
            return list(self._urls)
        config = self._config.current if hasattr(self._config, "current") else self._config
        return config.service_urls(self.service)

    def call(self, method: str, *args: Any) -> Any:
        form = {"method": method, "args": jencode.dumps(list(args))}
        if self.credentials.use_host:
            form["extraCredentials"] = jencode.dumps("hosts")
        elif self.credentials.delegate:
            form["extraCredentials"] = jencode.dumps(list(self.credentials.delegate))
        body = urllib.parse.urlencode(form).encode()
        urls = self.urls
        start = random.randrange(len(urls))
        order = urls[start:] + urls[:start]
        failures: list[str] = []
        for attempt in range(self.rounds):
            if attempt:
                time.sleep(self.retry_pause * attempt)
            for url in order:
                try:
                    status, data = self._post(url, body)
                except _Unreachable as e:
                    failures.append(f"{url}: {e}")
                    log.debug("%s.%s: %s unreachable: %s", self.service, method, url, e)
                    continue
                return _unwrap(status, data, f"{self.service}.{method}")
        raise ServiceUnavailable(f"{self.service}.{method}: no server answered ({failures[-1]})",
                                 service=self.service)

    def close(self) -> None:
        for conn in self._conns.by_netloc.values():
            conn.close()
        self._conns.by_netloc.clear()

    # ------------------------------------------------------------ transport

    def _post(self, url: str, body: bytes) -> tuple[int, bytes]:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise VMDiracError(f"bad service URL {url!r}: expected https://host:port/System/Service")
        conn = self._conns.by_netloc.get(parts.netloc)
        if conn is not None and getattr(conn, "vmdirac_ctx", None) is not self.credentials.ssl_context():
            conn.close()  # made with a credential since replaced: the next request presents the new one
            conn = None
        reused = conn is not None and conn.sock is not None
        for fresh_try in (False, True):
            if conn is None or fresh_try:
                if conn is not None:
                    conn.close()
                conn = self._connect(parts)
                self._conns.by_netloc[parts.netloc] = conn
            try:
                conn.request("POST", parts.path, body, {
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Accept": "application/json",
                })
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    conn.close()
                    self._conns.by_netloc.pop(parts.netloc, None)
                return resp.status, data
            except ssl.SSLError as e:
                conn.close()
                self._conns.by_netloc.pop(parts.netloc, None)
                raise _refusal(e, url) from e
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                self._conns.by_netloc.pop(parts.netloc, None)
                if reused and not fresh_try:
                    continue  # the server closed an idle kept-alive connection: send on a new one
                raise _Unreachable(str(e) or type(e).__name__) from e
            except socket.timeout as e:
                conn.close()
                self._conns.by_netloc.pop(parts.netloc, None)
                raise ServiceUnavailable(f"{url}: no answer within {self.timeout:.0f} s") from e
        raise AssertionError("unreachable")

    def _connect(self, parts: urllib.parse.SplitResult) -> http.client.HTTPSConnection:
        try:
            ctx = self.credentials.ssl_context()
        except SecurityError:
            raise
        conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=self.connect_timeout,
                                           context=ctx)
        conn.vmdirac_ctx = ctx
        try:
            conn.connect()
        except ssl.SSLError as e:
            conn.close()
            raise _refusal(e, parts.geturl()) from e
        except OSError as e:
            conn.close()
            raise _Unreachable(e.strerror or str(e)) from e
        conn.sock.settimeout(self.timeout)
        return conn


class _Unreachable(Exception):
    """This URL cannot be used now; the next one may."""


def _refusal(err: ssl.SSLError, url: str) -> Exception:
    reason = (err.reason or str(err)).upper()
    if isinstance(err, ssl.SSLCertVerificationError):
        return SecurityError(f"{url}: the server's certificate is not trusted ({err.verify_message})")
    if "ALERT" in reason and any(a in reason for a in _AUTH_ALERTS):
        text = (err.reason or str(err)).lower().replace("_", " ").replace("sslv3 alert ", "").replace("tlsv1 alert ", "")
        return NotAuthenticated(f"{url} refused the credential: {text}")
    return _Unreachable(f"TLS error: {err.reason or err}")


def _unwrap(status: int, data: bytes, what: str) -> Any:
    try:
        answer = jencode.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or "OK" not in answer:
        raise VMDiracError(f"{what}: unexpected answer from the server (HTTP {status})")
    if answer["OK"]:
        return answer.get("Value")
    cls = error_class(str(answer.get("ErrorClass", "")))
    err = cls(str(answer.get("Message", "unknown error")))
    if "Errno" in answer and isinstance(answer["Errno"], int) and answer["Errno"]:
        err.errno = answer["Errno"]
    raise err
