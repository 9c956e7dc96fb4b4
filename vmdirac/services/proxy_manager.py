"""Framework/ProxyManager: users' credentials uploaded as PKCS#12 (the portal's "Proxy upload"),
and RFC 3820 proxies made from them for delegation.

- ``uploadPKCS12(p12, password, group="")`` (NormalUser): the certificate must be the caller's own
  (the portal calls as its host, delegating the user with ``[DN, group]``: the caller is then the
  user), signed by a CA this server trusts, and valid now. Certificate and key are stored
  encrypted (``db.proxy_db``); the password and the key are never logged nor written to disk.
- ``getUserProxiesInfo()``: the caller's own stored credential; with ProxyManagement, all of the
  caller's VO (a host with ProxyManagement: all).
- ``deleteProxy(dn)``: the caller's own only.
- ``getProxy(dn, group, seconds)`` (ProxyManagement, TrustedHost): a fresh proxy of the stored
  credential carrying ``group``, as PEM (proxy, its key, chain): DIRAC's delegation.

The key that encrypts stored credentials is ``<root>/etc/grid-security/proxymanager.key`` (0600,
made on first use); every host serving this service on one database must have the same file. A
key of its own rather than one derived from the host key: host certificates are renewed (and
their keys with them) while stored credentials must stay readable, and several hosts have several
host keys.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import pkcs12

from vmdirac.core import x509 as X
from vmdirac.core.db import utcnow
from vmdirac.core.exceptions import InvalidArgument, NotAuthorized, NotFound, SecurityError
from vmdirac.core.export import Caller, Service, export
from vmdirac.core.tls import ca_files
from vmdirac.db.proxy_db import ProxyDB, SecretBox, StoredCredential

log = logging.getLogger(__name__)

MAX_P12_BYTES = 64 * 1024
MIN_PROXY_SECONDS = 60
MAX_PROXY_SECONDS = 7 * 86400
KEY_FILE = "proxymanager.key"


def read_pkcs12(data: bytes, password: str) -> tuple[object, x509.Certificate, list[x509.Certificate]]:
    """Key, certificate and extra certificates of a PKCS#12; ``InvalidArgument`` saying why not."""
    if not data:
        raise InvalidArgument("the PKCS#12 file is empty")
    if len(data) > MAX_P12_BYTES:
        raise InvalidArgument(f"the PKCS#12 file is over {MAX_P12_BYTES // 1024} KiB: not a user certificate")
    if data[:1] != b"\x30":   # a DER SEQUENCE, as every PKCS#12 starts
        raise InvalidArgument("this is not a PKCS#12 file (.p12/.pfx)")
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password.encode() or None)
    except ValueError:
        raise InvalidArgument("cannot open the PKCS#12 file: wrong password (or a damaged file)") from None
    if key is None or cert is None:
        raise InvalidArgument("the PKCS#12 file does not hold both a certificate and its private key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise InvalidArgument("the private key in the PKCS#12 file does not belong to its certificate")
    return key, cert, list(extra)


def trusted_cas(location: Path) -> list[x509.Certificate]:
    cas: list[x509.Certificate] = []
    for f in ca_files(location):
        cas += X.load_certificates(f.read_bytes(), str(f))
    return cas


def verify_chain(cert: x509.Certificate, extra: list[x509.Certificate], cas: list[x509.Certificate],
                 now: dt.datetime) -> None:
    """``cert`` (through intermediates in ``extra``) is signed by one of ``cas`` and every
    certificate on the way is valid ``now``; ``InvalidArgument`` otherwise."""
    if X.is_proxy(cert):
        raise InvalidArgument("the PKCS#12 holds a proxy: upload your certificate itself")
    current = cert
    for _ in range(8):
        if now > current.not_valid_after_utc:
            raise InvalidArgument(f"certificate {X.dn_string(current.subject)} expired at "
                                  f"{current.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
        if now < current.not_valid_before_utc:
            raise InvalidArgument(f"certificate {X.dn_string(current.subject)} is not valid before "
                                  f"{current.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
        for ca in cas:
            if ca.subject == current.issuer and _signed_by(current, ca):
                return
        parent = next((c for c in extra if c.subject == current.issuer and c != current
                       and _signed_by(current, c)), None)
        if parent is None:
            raise InvalidArgument(f"certificate {X.dn_string(current.subject)} is not signed by a CA this "
                                  f"server trusts (issuer {X.dn_string(current.issuer)})")
        current = parent
    raise InvalidArgument("the certificate chain is too long")


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


class ProxyManagerService(Service):
    system = "Framework"
    name = "ProxyManager"

    def initialize(self) -> None:
        paths, local = self.context.paths, self.context.local
        self.db = ProxyDB(self.context.engine, SecretBox(paths.security / KEY_FILE))
        self.db.create_tables()
        self.ca_location = Path(local.CACertificates or paths.ca_dir)

    # ------------------------------------------------------------ users

    @export(properties=["NormalUser"])
    def uploadPKCS12(self, caller: Caller, p12: bytes, password: str, group: str = "") -> dict:
        """Store the caller's own certificate and key from a PKCS#12 file; returns what was stored."""
        if caller.is_host or not caller.username:
            raise NotAuthorized(f"{caller} is not a user: only users upload their certificate")
        key, cert, extra = read_pkcs12(p12, password)
        dn = X.dn_string(cert.subject)
        if dn != caller.dn:
            raise NotAuthorized(f"the certificate is {dn}'s, not yours ({caller.dn}): upload your own")
        now = utcnow()
        verify_chain(cert, extra, trusted_cas(self.ca_location), now)
        user = self.context.config.current.registry.users_by_dn.get(dn)
        groups = list(user.groups) if user else []
        if group and group not in groups:
            raise InvalidArgument(f"{caller.username} is not a member of group {group}; "
                                  f"their groups: {', '.join(groups)}")
        info = StoredCredential(dn, caller.username, caller.vo, group, X.dn_string(cert.issuer),
                                cert.not_valid_after_utc.replace(microsecond=0), now)
        pem = X.cert_pem(cert) + X.key_pem(key)
        self.db.store(info, pem)
        log.info("credential of %s stored (valid until %s) by %s", dn, info.not_after, caller)
        return {"DN": dn, "NotAfter": info.not_after, "Groups": groups, "Group": group, "Issuer": info.issuer}

    @export(properties=["authenticated"])
    def getUserProxiesInfo(self, caller: Caller) -> list[dict]:
        """The caller's stored credential; with ProxyManagement every one of its VO (host: all)."""
        if caller.has("ProxyManagement"):
            found = self.db.infos(vo=None if caller.is_host else caller.vo)
        else:
            found = self.db.infos(dn=caller.dn)
        return [c.to_wire() for c in found]

    @export(properties=["NormalUser"])
    def deleteProxy(self, caller: Caller, dn: str) -> dict:
        if dn != caller.dn:
            raise NotAuthorized(f"{caller} may delete its own credential only, not {dn}'s")
        if not self.db.remove(dn):
            raise NotFound(f"no credential stored for {dn}", dn=dn)
        log.info("credential of %s deleted by %s", dn, caller)
        return {"DN": dn, "Deleted": True}

    # ------------------------------------------------------------ delegation

    @export(properties=["ProxyManagement", "TrustedHost"])
    def getProxy(self, caller: Caller, dn: str, group: str, seconds: int) -> str:
        """A proxy of ``dn``'s stored credential carrying ``group``, lasting ``seconds`` (at most
        until the certificate expires), as PEM: proxy certificate, its key, then the certificate."""
        if not MIN_PROXY_SECONDS <= seconds <= MAX_PROXY_SECONDS:
            raise InvalidArgument(f"seconds must be between {MIN_PROXY_SECONDS} and {MAX_PROXY_SECONDS}")
        registry = self.context.config.current.registry
        user = registry.users_by_dn.get(dn)
        if user is None:
            raise NotFound(f"{dn} is not a registered user", dn=dn)
        if group not in user.groups:
            raise InvalidArgument(f"{user.name} is not a member of group {group}")
        if not caller.is_host and registry.groups[group].vo != caller.vo:
            raise NotAuthorized(f"{caller} may get proxies of its own VO ({caller.vo}) only")
        info, pem = self.db.load(dn)
        if info.group and info.group != group:
            raise NotAuthorized(f"the credential of {dn} was uploaded for group {info.group}, not {group}")
        chain = X.load_certificates(pem, "stored credential")
        key = X.load_key(pem, "stored credential")
        if utcnow() > chain[0].not_valid_after_utc:
            raise SecurityError(f"the stored certificate of {dn} expired at {info.not_after:%Y-%m-%d %H:%M:%S} UTC")
        _proxy, proxy_key, full = X.make_proxy(chain, key, hours=seconds / 3600, group=group)
        log.info("proxy of %s for group %s (%d s) issued to %s", dn, group, seconds, caller)
        return X.proxy_pem(full, proxy_key).decode()
