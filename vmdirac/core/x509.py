"""X.509 certificates and RFC 3820 proxies, made and read with ``cryptography``.

DNs are written as DIRAC writes them: ``/O=vmdirac/OU=local/CN=alice``, most significant first.
A proxy file holds, as Globus and DIRAC write it: the proxy certificate, its key, then the chain
up to (not including) the CA. The DIRAC group travels in the proxy under OID 1.2.42.42.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from vmdirac.core.exceptions import SecurityError

PROXY_CERT_INFO_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.14")
DIRAC_GROUP_OID = ObjectIdentifier("1.2.42.42")
# id-ppl-inheritAll: the proxy has all the rights of its issuer.
_INHERIT_ALL_DER = bytes.fromhex("06082b06010505071501")

_SHORT_NAMES = {
    NameOID.COMMON_NAME: "CN",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COUNTRY_NAME: "C",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.EMAIL_ADDRESS: "emailAddress",
}
_BY_SHORT_NAME = {v: k for k, v in _SHORT_NAMES.items()}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def dn_string(name: x509.Name) -> str:
    parts = []
    for rdn in name.rdns:
        for attr in rdn:
            key = _SHORT_NAMES.get(attr.oid, attr.oid.dotted_string)
            parts.append(f"{key}={attr.value}")
    return "/" + "/".join(parts)


def parse_dn(text: str) -> x509.Name:
    """``/O=vmdirac/CN=alice`` -> Name; a clear error for anything else."""
    if not text.startswith("/") or len(text) < 4:
        raise SecurityError(f"not a DN of the form /O=.../CN=...: {text!r}")
    attrs = []
    for part in text[1:].split("/"):
        key, sep, value = part.partition("=")
        if not sep or not value or key not in _BY_SHORT_NAME:
            raise SecurityError(f"bad DN component {part!r} in {text!r}")
        attrs.append(x509.NameAttribute(_BY_SHORT_NAME[key], value))
    return x509.Name(attrs)


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def _proxy_cert_info(path_len: int | None) -> bytes:
    policy = _der(0x30, _INHERIT_ALL_DER)
    body = b""
    if path_len is not None:
        raw = path_len.to_bytes(max(1, (path_len.bit_length() + 8) // 8), "big")
        body += _der(0x02, raw)
    return _der(0x30, body + policy)


def _group_extension(group: str) -> bytes:
    return _der(0x16, group.encode("ascii"))  # IA5String


def _read_group(value: bytes) -> str | None:
    # Accept any string type DIRAC tools may have written (IA5String, UTF8String, ...).
    if len(value) < 2 or value[0] not in (0x0C, 0x13, 0x16):
        return None
    length = value[1]
    offset = 2
    if length & 0x80:
        nbytes = length & 0x7F
        length = int.from_bytes(value[2 : 2 + nbytes], "big")
        offset = 2 + nbytes
    return value[offset : offset + length].decode("utf-8", "replace")


def new_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def is_proxy(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_oid(PROXY_CERT_INFO_OID)
        return True
    except x509.ExtensionNotFound:
        return False


def cert_group(cert: x509.Certificate) -> str | None:
    try:
        ext = cert.extensions.get_extension_for_oid(DIRAC_GROUP_OID)
    except x509.ExtensionNotFound:
        return None
    return _read_group(ext.value.value)


def _builder(subject: x509.Name, issuer: x509.Name, public_key, not_before, not_after, serial=None):
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def make_ca(dn: str, days: int = 3650) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = new_key(3072)
    name = parse_dn(dn)
    now = utcnow()
    cert = (
        _builder(name, name, key.public_key(), now - dt.timedelta(minutes=5), now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_certificate(
    ca_cert: x509.Certificate,
    ca_key,
    dn: str,
    days: int = 365,
    host_names: list[str] | None = None,
    not_before: dt.datetime | None = None,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """An end-entity certificate: a user's, or a host's when ``host_names`` is given."""
    import ipaddress

    key = new_key()
    start = not_before or utcnow() - dt.timedelta(minutes=5)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        _builder(parse_dn(dn), ca_cert.subject, key.public_key(), start, start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
    )
    if host_names:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        sans: list[x509.GeneralName] = []
        for name in host_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_proxy(
    chain: list[x509.Certificate],
    issuer_key,
    hours: float = 24,
    group: str | None = None,
    cn: str | None = None,
    not_before: dt.datetime | None = None,
    bits: int = 2048,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey, list[x509.Certificate]]:
    """An RFC 3820 proxy signed by ``chain[0]``; returns (proxy, its key, full chain to save).

    The proxy never outlives its issuer. ``cn`` names the new last CN (default: a random
    serial, as RFC 3820 asks); the per-VM credentials use it to carry the instance id.
    """
    issuer = chain[0]
    key = new_key(bits)
    serial = int.from_bytes(secrets.token_bytes(8), "big") | 1
    subject = x509.Name(list(issuer.subject.rdns) + [
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn or str(serial))])
    ])
    start = not_before or utcnow() - dt.timedelta(minutes=5)
    end = min(start + dt.timedelta(minutes=5) + dt.timedelta(hours=hours), _not_after(chain))
    builder = (
        _builder(subject, issuer.subject, key.public_key(), start, end, serial=serial)
        .add_extension(
            x509.UnrecognizedExtension(PROXY_CERT_INFO_OID, _proxy_cert_info(None)), critical=True
        )
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
    )
    if group:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(DIRAC_GROUP_OID, _group_extension(group)), critical=False
        )
    proxy = builder.sign(issuer_key, hashes.SHA256())
    return proxy, key, [proxy] + list(chain)


def _not_after(chain: list[x509.Certificate]) -> dt.datetime:
    return min(c.not_valid_after_utc for c in chain)


def key_pem(key, password: bytes | None = None) -> bytes:
    """PEM of a key: traditional RSA form as Globus tools expect, or encrypted PKCS#8."""
    if password:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.BestAvailableEncryption(password))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def proxy_pem(chain: list[x509.Certificate], key) -> bytes:
    """Globus layout: proxy certificate, its key, then the rest of the chain."""
    return cert_pem(chain[0]) + key_pem(key) + b"".join(cert_pem(c) for c in chain[1:])


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only, created with that mode (no window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def load_certificates(data: bytes, source: str = "input") -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise SecurityError(f"{source}: no PEM certificate found") from e
    return certs


def load_key(data: bytes, source: str = "input", password: bytes | None = None):
    import re

    match = re.search(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", data, re.S)
    if not match:
        raise SecurityError(f"{source}: no PEM private key found")
    try:
        return serialization.load_pem_private_key(match.group(0), password=password)
    except (ValueError, TypeError) as e:
        raise SecurityError(f"{source}: cannot read the private key ({e})") from e


@dataclass(frozen=True)
class Credential:
    """A certificate chain and its key, as read from a proxy or from cert + key files."""

    chain: list[x509.Certificate]
    key: object
    path: str

    @classmethod
    def from_files(cls, cert_path: str | Path, key_path: str | Path | None = None,
                   password: bytes | None = None) -> Credential:
        cert_path = Path(cert_path)
        try:
            data = cert_path.read_bytes()
            key_data = Path(key_path).read_bytes() if key_path else data
        except OSError as e:
            raise SecurityError(f"cannot read credential {e.filename}: {e.strerror}") from e
        chain = load_certificates(data, str(cert_path))
        key = load_key(key_data, str(key_path or cert_path), password)
        if key.public_key().public_numbers() != chain[0].public_key().public_numbers():
            raise SecurityError(f"{key_path or cert_path}: the key does not belong to the certificate")
        return cls(chain, key, str(cert_path))

    @property
    def info(self) -> ChainInfo:
        return chain_info(self.chain)


@dataclass(frozen=True)
class ChainInfo:
    subject: str          # DN of the first certificate (the proxy's own DN for a proxy)
    identity: str         # DN of the end-entity certificate behind the proxies
    issuer: str           # DN of the first certificate's issuer
    group: str | None     # DIRAC group carried by a proxy, if any
    proxy_depth: int      # 0 for a plain certificate
    not_before: dt.datetime
    not_after: dt.datetime
    last_cn: str          # last CN of the first certificate
    delegation_cn: str = ""  # CN the first proxy added to the end entity's DN: per-VM credentials
                             # carry their instance here, where sub-proxies cannot change it

    def time_left(self, now: dt.datetime | None = None) -> dt.timedelta:
        return max(dt.timedelta(0), self.not_after - (now or utcnow()))


def chain_info(chain: list[x509.Certificate]) -> ChainInfo:
    """Identity and limits of a chain ordered leaf first (CA may or may not be at the end)."""
    if not chain:
        raise SecurityError("empty certificate chain")
    depth = 0
    group = None
    for cert in chain:
        if not is_proxy(cert):
            break
        depth += 1
        if group is None:
            group = cert_group(cert)
    if depth >= len(chain):
        raise SecurityError("proxy chain without an end-entity certificate")
    entity = chain[depth]
    relevant = chain[: depth + 1]
    cns = chain[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    first_proxy_cns = chain[depth - 1].subject.get_attributes_for_oid(NameOID.COMMON_NAME) if depth else []
    return ChainInfo(
        subject=dn_string(chain[0].subject),
        identity=dn_string(entity.subject),
        issuer=dn_string(chain[0].issuer),
        group=group,
        proxy_depth=depth,
        not_before=max(c.not_valid_before_utc for c in relevant),
        not_after=min(c.not_valid_after_utc for c in relevant),
        last_cn=str(cns[-1].value) if cns else "",
        delegation_cn=str(first_proxy_cns[-1].value) if first_proxy_cns else "",
    )
