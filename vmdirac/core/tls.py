"""TLS contexts for servers and clients, and the verified peer chain of a connection.

OpenSSL verifies chains, RFC 3820 proxies included (``VERIFY_ALLOW_PROXY_CERTS``), at the
handshake: unknown CAs, bad signatures and proxies whose subject is not their issuer's plus one
CN never complete it. Validity times are left to us (``X509_V_FLAG_NO_CHECK_TIME``) so that an
expired or not-yet-valid credential gets a clear 401 naming the date instead of a bare TLS alert.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509

from vmdirac.core.exceptions import SecurityError

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME; Python has no name for it.
_NO_CHECK_TIME = 0x200000


def ca_files(ca_location: str | Path) -> list[Path]:
    """The CA certificate files of a location: the file itself, or the PEM files of a directory."""
    path = Path(ca_location)
    return sorted(p for p in path.iterdir() if p.suffix in (".pem", ".crt", ".0")) if path.is_dir() else [path]


def load_ca(ctx: ssl.SSLContext, ca_location: str | Path) -> None:
    """Trust every PEM certificate in a file or in the files of a directory (no hash links needed)."""
    path = Path(ca_location)
    files = ca_files(path)
    loaded = 0
    for f in files:
        try:
            ctx.load_verify_locations(cafile=str(f))
            loaded += 1
        except (ssl.SSLError, OSError) as e:
            raise SecurityError(f"cannot load CA certificates from {f}: {e}") from e
    if not loaded:
        raise SecurityError(f"no CA certificate found in {path}")


def server_context(cert: str | Path, key: str | Path, ca_location: str | Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as e:
        raise SecurityError(f"cannot load host certificate {cert} / {key}: {e}") from e
    load_ca(ctx, ca_location)
    # Optional at the TLS level so that a caller without a certificate gets a readable 401.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS | _NO_CHECK_TIME
    return ctx


def client_context(cert: str | Path | None, key: str | Path | None, ca_location: str | Path) -> ssl.SSLContext:
    """A client context presenting ``cert`` (a proxy file holds its key) and checking the host."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # In TLS 1.3 the server judges the client's chain after the client's handshake is over: a
    # refusal then arrives as an alert that races with the request already sent, and often is
    # lost to a connection reset. In TLS 1.2 it ends the handshake itself, so the user is told
    # reliably why (unknown CA, bad signature). Servers still speak 1.3 to other clients.
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    load_ca(ctx, ca_location)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert:
        try:
            ctx.load_cert_chain(str(cert), str(key) if key else None)
        except (ssl.SSLError, OSError) as e:
            raise SecurityError(f"cannot load credential {cert}: {e}") from e
    return ctx


def peer_chain(sock: ssl.SSLSocket | ssl.SSLObject) -> list[x509.Certificate]:
    """The chain OpenSSL verified for this connection, leaf first, CA last; [] without one."""
    sslobj = getattr(sock, "_sslobj", sock)
    try:
        chain = sslobj.get_verified_chain()
    except (AttributeError, ValueError):
        return []
    if not chain:
        return []
    # Python 3.13 returns DER bytes; 3.11 and 3.12 return _ssl.Certificate objects.
    return [
        x509.load_der_x509_certificate(c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER))
        for c in chain
    ]
