"""dirac-proxy-info: subject, identity, group and time left of a proxy."""

from __future__ import annotations

from pathlib import Path

from vmdirac.cli.common import command, parser
from vmdirac.core import x509 as X
from vmdirac.core.client import default_proxy_path
from vmdirac.core.exceptions import SecurityError


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("dirac-proxy-info", "Show what a proxy says and how long it is valid.",
               "dirac-proxy-info -f /tmp/x509up_u1000")
    p.add_argument("-f", "--file", type=Path, default=None, help="proxy file (default $X509_USER_PROXY or /tmp/x509up_u<uid>)")
    p.add_argument("--checkvalid", action="store_true", help="exit 1 if the proxy has expired")
    args = p.parse_args(argv)
    path = args.file or default_proxy_path()
    if not path.exists():
        raise SecurityError(f"no proxy at {path}: run dirac-proxy-init")
    cred = X.Credential.from_files(path)
    info = cred.info
    left = int(info.time_left().total_seconds())
    rows = [
        ("subject", info.subject),
        ("issuer", info.issuer),
        ("identity", info.identity),
        ("timeleft", f"{left // 3600:02d}:{left % 3600 // 60:02d}:{left % 60:02d}"),
        ("DIRAC group", info.group or "(none: the server uses your default group)"),
        ("path", str(path)),
        ("type", f"RFC 3820 compliant proxy, {info.proxy_depth} level(s)" if info.proxy_depth
         else "certificate (not a proxy)"),
        ("strength", f"{cred.chain[0].public_key().key_size} bits"),
    ]
    for key, value in rows:
        print(f"{key:<12}: {value}")
    if args.checkvalid and left <= 0:
        raise SecurityError(f"the proxy {path} has expired")
    return 0
