"""dirac-cert-convert: split a PKCS#12 file (from a browser) into usercert.pem and userkey.pem.

The key is written encrypted with the same password, readable by you only; existing files are
kept as ``*.bak-<time>``, as DIRAC's script does.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography.hazmat.primitives.serialization import pkcs12

from vmdirac.cli.common import command, parser, read_password
from vmdirac.core import x509 as X
from vmdirac.core.exceptions import SecurityError


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("dirac-cert-convert", "Convert a PKCS#12 certificate into usercert.pem and userkey.pem.",
               "dirac-cert-convert mycert.p12 -o ~/.globus")
    p.add_argument("p12", type=Path, help="the .p12 or .pfx file")
    p.add_argument("-o", "--out", type=Path, default=Path.home() / ".globus", help="directory (default ~/.globus)")
    p.add_argument("--pwstdin", action="store_true", help="read the password from standard input")
    args = p.parse_args(argv)
    data = args.p12.read_bytes()
    password = read_password(f"Enter password for {args.p12}: ", args.pwstdin)
    try:
        key, cert, _extra = pkcs12.load_key_and_certificates(data, password or None)
    except ValueError as e:
        raise SecurityError(f"{args.p12}: cannot open it (wrong password, or not PKCS#12)") from e
    if key is None or cert is None:
        raise SecurityError(f"{args.p12}: it does not hold both a certificate and its key")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d%H%M%S")
    for name in ("usercert.pem", "userkey.pem"):
        old = args.out / name
        if old.exists():
            old.rename(old.with_name(f"{name}.bak-{stamp}"))
    X.write_private(args.out / "userkey.pem", X.key_pem(key, password or None))
    (args.out / "usercert.pem").write_bytes(X.cert_pem(cert))
    (args.out / "usercert.pem").chmod(0o644)
    print(f"usercert.pem and userkey.pem written to {args.out} for {X.dn_string(cert.subject)}")
    return 0
