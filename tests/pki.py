"""Certificates for tests: a CA, a host, users, proxies good and bad, made once per session."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from cryptography.hazmat.primitives import serialization

from vmdirac.core import x509 as X

ALICE = "/O=vmdirac/OU=users/CN=alice"
BOB = "/O=vmdirac/OU=users/CN=bob"
ADMIN = "/O=vmdirac/OU=users/CN=admin"
STRANGER = "/O=vmdirac/OU=users/CN=stranger"   # signed by our CA, not in the Registry
HOST = "/O=vmdirac/OU=hosts/CN=localhost"
OTHER_HOST = "/O=vmdirac/OU=hosts/CN=worker.example.org"


@dataclass
class PKI:
    dir: Path
    ca_dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)


def _write_cert_key(d: Path, name: str, cert, key) -> None:
    (d / f"{name}cert.pem").write_bytes(X.cert_pem(cert))
    X.write_private(d / f"{name}key.pem", X.key_pem(key))


def _write_proxy(d: Path, name: str, chain, key) -> None:
    X.write_private(d / name, X.proxy_pem(chain, key))


def make_pki(d: Path) -> PKI:
    d.mkdir(parents=True, exist_ok=True)
    ca_dir = d / "certificates"
    ca_dir.mkdir()
    ca, ca_key = X.make_ca("/O=vmdirac/CN=vmdirac test CA")
    (ca_dir / "ca.pem").write_bytes(X.cert_pem(ca))
    other_ca, other_key = X.make_ca("/O=vmdirac/CN=vmdirac test CA")  # same name, other key
    (d / "other-ca.pem").write_bytes(X.cert_pem(other_ca))

    host, host_key = X.make_certificate(ca, ca_key, HOST, host_names=["localhost", "127.0.0.1"])
    _write_cert_key(d, "host", host, host_key)
    worker, worker_key = X.make_certificate(ca, ca_key, OTHER_HOST, host_names=["worker.example.org"])
    _write_cert_key(d, "worker", worker, worker_key)

    certs = {}
    for name, dn in (("alice", ALICE), ("bob", BOB), ("admin", ADMIN), ("stranger", STRANGER)):
        cert, key = X.make_certificate(ca, ca_key, dn)
        _write_cert_key(d, name, cert, key)
        certs[name] = (cert, key)
    alice, alice_key = certs["alice"]
    bob, bob_key = certs["bob"]

    # Proxies: one and two levels, with groups; an expired one; one not yet valid.
    p1, k1, chain1 = X.make_proxy([alice], alice_key, 12, group="dirac_user")
    _write_proxy(d, "alice-proxy", chain1, k1)
    p2, k2, chain2 = X.make_proxy(chain1, k1, 6, group="dirac_admin")
    _write_proxy(d, "alice-proxy2", chain2, k2)
    _p, k, chain = X.make_proxy([alice], alice_key, 12)
    _write_proxy(d, "alice-proxy-nogroup", chain, k)
    _p, k, chain = X.make_proxy([bob], bob_key, 12, group="dirac_user")
    _write_proxy(d, "bob-proxy", chain, k)
    _p, k, chain = X.make_proxy([bob], bob_key, 12, group="dirac_admin")
    _write_proxy(d, "bob-proxy-admin", chain, k)   # bob is not in dirac_admin
    _p, k, chain = X.make_proxy([certs["admin"][0]], certs["admin"][1], 12, group="dirac_admin")
    _write_proxy(d, "admin-proxy", chain, k)
    past = X.utcnow() - dt.timedelta(hours=3)
    _p, k, chain = X.make_proxy([alice], alice_key, 1, group="dirac_user", not_before=past)
    _write_proxy(d, "alice-proxy-expired", chain, k)
    future = X.utcnow() + dt.timedelta(hours=3)
    _p, k, chain = X.make_proxy([alice], alice_key, 1, group="dirac_user", not_before=future)
    _write_proxy(d, "alice-proxy-future", chain, k)

    # Alice's DN on a certificate of another CA.
    fake, fake_key = X.make_certificate(other_ca, other_key, ALICE)
    _write_cert_key(d, "fake-alice", fake, fake_key)
    _p, k, chain = X.make_proxy([fake], fake_key, 12)
    _write_proxy(d, "fake-alice-proxy", chain, k)

    # Bob signs a proxy whose subject claims to be Alice's: a forged subject.
    forged_key = X.new_key()
    subject = x509.Name(list(alice.subject.rdns) + [
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "12345")])])
    now = X.utcnow()
    forged = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(bob.subject)
        .public_key(forged_key.public_key()).serial_number(12345)
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.UnrecognizedExtension(X.PROXY_CERT_INFO_OID, X._proxy_cert_info(None)), critical=True)
        .sign(bob_key, hashes.SHA256())
    )
    _write_proxy(d, "forged-proxy", [forged, bob], forged_key)

    # Bob's end-entity certificate used as if it were a CA: signs a plain certificate for Alice.
    ee_key = X.new_key()
    ee_signed = (
        x509.CertificateBuilder().subject_name(X.parse_dn(ALICE)).issuer_name(bob.subject)
        .public_key(ee_key.public_key()).serial_number(777)
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
        .sign(bob_key, hashes.SHA256())
    )
    _write_proxy(d, "ee-signed", [ee_signed, bob], ee_key)

    # A proxy whose signature was tampered with after signing.
    der = bytearray(p1.public_bytes(serialization.Encoding.DER))
    der[-10] ^= 0xFF
    tampered = x509.load_der_x509_certificate(bytes(der))
    _write_proxy(d, "tampered-proxy", [tampered, alice], k1)
    return PKI(d, ca_dir)


REGISTRY = {
    "DefaultVO": "vmdirac",
    "DefaultGroup": "dirac_user",
    "Groups": {
        "dirac_user": {"VO": "vmdirac", "Properties": ["NormalUser"]},
        "dirac_admin": {"VO": "vmdirac", "Properties": ["NormalUser", "Operator", "JobAdministrator",
                                                        "CSAdministrator"]},
        "dirac_pilot": {"VO": "vmdirac", "Properties": ["GenericPilot"]},
    },
    "Users": {
        "alice": {"DN": ALICE, "Groups": ["dirac_user", "dirac_admin"]},
        "bob": {"DN": BOB, "Groups": ["dirac_user"]},
        "admin": {"DN": ADMIN, "Groups": ["dirac_admin"]},
    },
    "Hosts": {
        "localhost": {"DN": HOST, "Properties": ["TrustedHost", "CSAdministrator"]},
        "worker.example.org": {"DN": OTHER_HOST, "Properties": ["GenericPilot"]},
    },
}
