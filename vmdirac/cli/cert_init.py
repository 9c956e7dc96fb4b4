"""dirac-cert-init: a local CA, a host and a user certificate for a one-machine install or tests.

Writes under ``<root>/etc/grid-security/``: ``certificates/vmdirac-ca.pem`` (trusted CA),
``ca/cakey.pem``, ``hostcert.pem``/``hostkey.pem`` and ``users/<name>/usercert.pem``/
``userkey.pem``; ``<root>/etc/local.yaml`` registering that user and host; and the client settings
(``~/.vmdirac/dirac.yaml`` unless ``--client-config``). Existing files are kept unless ``--force``.
"""

from __future__ import annotations

import getpass
import socket
from pathlib import Path

import yaml

from vmdirac.cli.common import command, parser
from vmdirac.cli.server import default_root
from vmdirac.core import x509 as X
from vmdirac.core.clientconfig import settings_path
from vmdirac.core.launcher import Paths


def _write(path: Path, data: bytes, private: bool, force: bool) -> bool:
    if path.exists() and not force:
        return False
    if private:
        X.write_private(path, data)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return True


@command
def main(argv: list[str] | None = None) -> int:
    p = parser("dirac-cert-init", "Make a local CA, a host certificate and a user certificate.",
               "dirac-cert-init --root run --user alice")
    p.add_argument("--root", type=Path, default=None, help="run directory (default $VMDIRAC_ROOT or ~/.vmdirac)")
    p.add_argument("--user", default=getpass.getuser(), help="user name to register (default: you)")
    p.add_argument("--groups", default="dirac_user,dirac_admin",
                   help="groups of that user, the first being its default (default: %(default)s)")
    p.add_argument("--host-name", action="append", default=[],
                   help="extra host name for the host certificate (localhost, 127.0.0.1 and this "
                        "host's name are always in it)")
    p.add_argument("--port", type=int, default=8443, help="port written into the client settings")
    p.add_argument("--client-config", type=Path, default=None,
                   help="client settings file to write (default $VMDIRAC_CLIENT_CONFIG or ~/.vmdirac/dirac.yaml)")
    p.add_argument("--days", type=int, default=365, help="validity of the host and user certificates")
    p.add_argument("--force", action="store_true", help="replace existing certificates")
    args = p.parse_args(argv)

    paths = Paths((args.root or default_root()).expanduser().resolve())
    sec = paths.security
    ca_cert_path, ca_key_path = paths.ca_dir / "vmdirac-ca.pem", sec / "ca" / "cakey.pem"
    made = []
    if ca_cert_path.exists() and ca_key_path.exists() and not args.force:
        ca_cert = X.load_certificates(ca_cert_path.read_bytes(), str(ca_cert_path))[0]
        ca_key = X.load_key(ca_key_path.read_bytes(), str(ca_key_path))
    else:
        ca_cert, ca_key = X.make_ca(f"/O=vmdirac/OU={socket.gethostname()}/CN=vmdirac local CA")
        _write(ca_key_path, X.key_pem(ca_key), True, True)
        _write(ca_cert_path, X.cert_pem(ca_cert), False, True)
        made.append(str(ca_cert_path))

    fqdn = socket.getfqdn()
    host_names = list(dict.fromkeys(["localhost", "127.0.0.1", socket.gethostname(), fqdn] + args.host_name))
    host_dn = f"/O=vmdirac/OU=hosts/CN={fqdn}"
    if args.force or not (sec / "hostcert.pem").exists():
        cert, key = X.make_certificate(ca_cert, ca_key, host_dn, args.days, host_names=host_names)
        _write(sec / "hostkey.pem", X.key_pem(key), True, True)
        _write(sec / "hostcert.pem", X.cert_pem(cert), False, True)
        made.append(str(sec / "hostcert.pem"))
    else:
        host_dn = X.chain_info(X.load_certificates((sec / "hostcert.pem").read_bytes())).identity

    user_dir = sec / "users" / args.user
    user_dn = f"/O=vmdirac/OU=users/CN={args.user}"
    if args.force or not (user_dir / "usercert.pem").exists():
        cert, key = X.make_certificate(ca_cert, ca_key, user_dn, args.days)
        _write(user_dir / "userkey.pem", X.key_pem(key), True, True)
        _write(user_dir / "usercert.pem", X.cert_pem(cert), False, True)
        made.append(str(user_dir / "usercert.pem"))
    else:
        user_dn = X.chain_info(X.load_certificates((user_dir / "usercert.pem").read_bytes())).identity

    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    local = yaml.safe_load(paths.local_config.read_text()) if paths.local_config.exists() else {}
    local = local or {}
    registry = local.setdefault("Registry", {})
    registry.setdefault("Users", {})[args.user] = {"DN": user_dn, "Groups": groups}
    registry.setdefault("Hosts", {})[fqdn] = {
        "DN": host_dn, "Properties": ["TrustedHost", "GenericPilot", "VmRpcOperation", "CSAdministrator",
                                      "ProxyManagement", "JobAdministrator", "Operator"]}
    paths.local_config.parent.mkdir(parents=True, exist_ok=True)
    paths.local_config.write_text("# Written by dirac-cert-init: the local user and host.\n"
                                  + yaml.safe_dump(local, sort_keys=False))

    client_path = args.client_config or settings_path()
    if args.force or not client_path.exists():
        client_path.parent.mkdir(parents=True, exist_ok=True)
        client_path.write_text(yaml.safe_dump({
            "ConfigurationServer": [f"https://localhost:{args.port}/Configuration/Server"],
            "CACertificates": str(paths.ca_dir),
            "UserCert": str(user_dir / "usercert.pem"),
            "UserKey": str(user_dir / "userkey.pem"),
        }, sort_keys=False))
        made.append(str(client_path))

    for m in made:
        print(f"made {m}")
    print(f"user {args.user}: {user_dn} in groups {', '.join(groups)}")
    print(f"host {fqdn}: {host_dn}")
    print(f"registry entries: {paths.local_config}")
    return 0
