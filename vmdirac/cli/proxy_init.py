"""dirac-proxy-init: make an RFC 3820 proxy of your certificate, carrying your DIRAC group."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from vmdirac.cli.common import command, parser, read_password
from vmdirac.core import x509 as X
from vmdirac.core.client import ClientCredentials, default_proxy_path
from vmdirac.core.clientconfig import load_settings, remote_store, user_cert_paths
from vmdirac.core.exceptions import InvalidArgument, SecurityError, ServiceUnavailable, VMDiracError


def parse_hours(text: str) -> float:
    """``12``, ``12.5`` or DIRAC's ``HH:MM`` -> hours."""
    match = re.fullmatch(r"(\d+)(?::(\d{1,2}))?|(\d+\.\d+)", text.strip())
    if not match:
        raise InvalidArgument(f"bad validity {text!r}: give hours, e.g. 24 or 24:00")
    hours = float(match.group(3)) if match.group(3) else int(match.group(1)) + int(match.group(2) or 0) / 60
    if not 0 < hours <= 24 * 31:
        raise InvalidArgument(f"validity {text!r} must be more than 0 and at most 31 days")
    return hours


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("dirac-proxy-init", "Make a proxy of your user certificate for a group.",
               "dirac-proxy-init -g dirac_user -v 24:00")
    p.add_argument("-g", "--group", default=None, help="DIRAC group (default: your default group)")
    p.add_argument("-v", "--valid", default="24", help="validity, hours or HH:MM (default 24)")
    p.add_argument("-C", "--cert", type=Path, default=None, help="user certificate (default: client settings or ~/.globus)")
    p.add_argument("-K", "--key", type=Path, default=None, help="user key")
    p.add_argument("-o", "--out", type=Path, default=None, help="proxy file (default $X509_USER_PROXY or /tmp/x509up_u<uid>)")
    p.add_argument("--pwstdin", action="store_true", help="read the key's password from standard input")
    p.add_argument("--no-check", action="store_true", help="do not ask the server whether the group is yours")
    args = p.parse_args(argv)
    hours = parse_hours(args.valid)
    settings = None
    try:
        settings = load_settings()
    except VMDiracError:
        if not (args.cert and args.key) or not args.no_check:
            raise
    cert_path, key_path = (args.cert, args.key) if args.cert and args.key else user_cert_paths(settings)
    data = key_path.read_bytes() if key_path.exists() else b""
    password = None
    if b"ENCRYPTED" in data:
        password = read_password(f"Enter Certificate password for {key_path}: ", args.pwstdin)
    cred = X.Credential.from_files(cert_path, key_path, password)
    info = cred.info
    if info.time_left().total_seconds() <= 0:
        raise SecurityError(f"your certificate {cert_path} expired at {info.not_after:%Y-%m-%d %H:%M} UTC")
    group = args.group
    if not args.no_check:
        group = _check_group(settings, cred, group)
    proxy, key, chain = X.make_proxy(cred.chain, cred.key, hours, group=group)
    out = args.out or default_proxy_path()
    X.write_private(out, X.proxy_pem(chain, key))
    left = X.chain_info(chain).time_left()
    print(f"Proxy created for {info.identity}{' in group ' + group if group else ''}")
    print(f"  file: {out}")
    print(f"  valid for {int(left.total_seconds() // 3600):02d}:{int(left.total_seconds() % 3600 // 60):02d}")
    return 0


def _check_group(settings, cred: X.Credential, group: str | None) -> str | None:
    """Check the group against the Registry served by the Configuration server.

    The server is asked with a throw-away ten-minute proxy, so an encrypted key is unlocked once.
    """
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.pem"
        _proxy, key, chain = X.make_proxy(cred.chain, cred.key, 0.1)
        X.write_private(probe, X.proxy_pem(chain, key))
        creds = ClientCredentials(str(probe), None, settings.CACertificates)
        try:
            registry = remote_store(settings, creds, cache_dir=Path(tmp)).current.registry
        except ServiceUnavailable as e:
            print(f"WARNING: cannot check the group with the server ({e.message}); proxy made as asked")
            return group
    dn = cred.info.identity
    user = registry.users_by_dn.get(dn)
    if user is None:
        raise SecurityError(f"{dn} is not registered in the configuration's Registry")
    group = group or registry.default_group_of(user)
    if group not in user.groups:
        raise InvalidArgument(f"{user.name} is not a member of group {group}; your groups: {', '.join(user.groups)}")
    return group
