"""Framework/ProxyManager over HTTPS: PKCS#12 uploads (own certificate only, checked, stored
encrypted), and proxies made from them for a trusted host, which really authenticate as the user."""

from __future__ import annotations

import datetime as dt
import logging
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12
from sqlalchemy import select

from tests.pki import ALICE, BOB
from vmdirac.core import x509 as X
from vmdirac.core.client import ClientCredentials, RPCClient
from vmdirac.core.exceptions import InvalidArgument, NotAuthorized, NotFound
from vmdirac.db.proxy_db import credentials

PM = "Framework/ProxyManager"
PASSWORD = "correct horse battery"


def p12_of(pki, name: str, password: str = PASSWORD) -> bytes:
    cert = X.load_certificates(Path(pki.path(f"{name}cert.pem")).read_bytes())[0]
    key = X.load_key(Path(pki.path(f"{name}key.pem")).read_bytes())
    return pkcs12.serialize_key_and_certificates(name.encode(), key, cert, None,
                                                 BestAvailableEncryption(password.encode()))


@pytest.fixture
def server(start_server, db_url):
    return start_server(db_url, ["Configuration/Server", PM], {"Systems": {"Framework": {"Services": {
        "ProxyManager": {}}}}})


def pm(server, proxy: str = "alice-proxy") -> RPCClient:
    return server.client(PM, proxy)


def host(server, delegate: tuple[str, str] | None = None) -> RPCClient:
    return server.client(PM, "hostcert.pem", "hostkey.pem", delegate=delegate)


def test_a_user_uploads_their_own_pkcs12_and_it_is_stored_encrypted(server, pki, caplog):
    caplog.set_level(logging.DEBUG)
    info = pm(server).uploadPKCS12(p12_of(pki, "alice"), PASSWORD, "dirac_user")
    assert info["DN"] == ALICE and info["Group"] == "dirac_user"
    assert info["Groups"] == ["dirac_user", "dirac_admin"]
    assert info["NotAfter"] > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=300)
    with server.context.engine.connect() as conn:
        row = conn.execute(select(credentials)).mappings().one()
    raw = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row.values())
    assert row["UserDN"] == ALICE
    assert b"PRIVATE KEY" not in raw and b"CERTIFICATE" not in raw
    key_file = server.context.paths.security / "proxymanager.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"credential of {ALICE} stored" in logged
    assert PASSWORD not in logged and "PRIVATE KEY" not in logged
    # The same upload again replaces it: one credential per user.
    pm(server).uploadPKCS12(p12_of(pki, "alice"), PASSWORD)
    assert [i["DN"] for i in pm(server).getUserProxiesInfo()] == [ALICE]


def test_uploading_someone_elses_certificate_is_refused(server, pki):
    with pytest.raises(NotAuthorized, match="the certificate is /O=vmdirac/OU=users/CN=bob's, not yours"):
        pm(server).uploadPKCS12(p12_of(pki, "bob"), PASSWORD)
    assert host(server).call("getUserProxiesInfo") == []


@pytest.mark.parametrize("data, password, message", [
    ("alice", "wrong", "wrong password"),
    (b"not a certificate at all", PASSWORD, "not a PKCS#12 file"),
    (b"", PASSWORD, "is empty"),
])
def test_bad_files_and_passwords_are_refused_with_a_reason(server, pki, data, password, message):
    p12 = p12_of(pki, data) if isinstance(data, str) else data
    with pytest.raises(InvalidArgument, match=message) as err:
        pm(server).uploadPKCS12(p12, password)
    assert "\n" not in str(err.value) and PASSWORD not in str(err.value)


def test_expired_and_foreign_certificates_are_refused(server, pki, tmp_path):
    fake = X.load_certificates(Path(pki.path("fake-alicecert.pem")).read_bytes())[0]
    fake_key = X.load_key(Path(pki.path("fake-alicekey.pem")).read_bytes())
    p12 = pkcs12.serialize_key_and_certificates(b"a", fake_key, fake, None, BestAvailableEncryption(b"pw"))
    with pytest.raises(InvalidArgument, match="not signed by a CA this server trusts"):
        pm(server).uploadPKCS12(p12, "pw")
    # Alice's DN, expired two days ago: the dates are checked (and named) before the signature.
    ca, ca_key = X.make_ca("/O=vmdirac/CN=vmdirac test CA")
    old, old_key = X.make_certificate(ca, ca_key, ALICE, days=1,
                                      not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3))
    p12 = pkcs12.serialize_key_and_certificates(b"a", old_key, old, None, BestAvailableEncryption(b"pw"))
    with pytest.raises(InvalidArgument, match="expired at"):
        pm(server).uploadPKCS12(p12, "pw")


def test_the_portal_uploads_for_the_user_it_delegates_and_only_for_them(server, pki):
    assert host(server, (ALICE, "dirac_user")).uploadPKCS12(p12_of(pki, "alice"), PASSWORD)["DN"] == ALICE
    with pytest.raises(NotAuthorized, match="not yours"):
        host(server, (BOB, "dirac_user")).uploadPKCS12(p12_of(pki, "alice"), PASSWORD)
    with pytest.raises(NotAuthorized, match="may not call"):      # the host itself is no user
        host(server).uploadPKCS12(p12_of(pki, "alice"), PASSWORD)


def test_get_proxy_gives_a_trusted_host_a_proxy_that_is_the_user(server, pki, tmp_path):
    pm(server).uploadPKCS12(p12_of(pki, "alice"), PASSWORD)
    with pytest.raises(NotAuthorized):
        pm(server).getProxy(ALICE, "dirac_user", 3600)           # a user cannot
    pem = host(server).getProxy(ALICE, "dirac_admin", 3600)
    chain = X.load_certificates(pem.encode())
    info = X.chain_info(chain)
    assert (info.identity, info.group, info.proxy_depth) == (ALICE, "dirac_admin", 1)
    assert dt.timedelta(minutes=55) < info.time_left() <= dt.timedelta(minutes=66)
    # It authenticates as Alice in that group.
    path = tmp_path / "delegated"
    X.write_private(path, pem.encode())
    whoami = RPCClient(PM, ClientCredentials(str(path), None, str(pki.ca_dir)), urls=[server.url(PM)]).whoami()
    assert (whoami["DN"], whoami["group"]) == (ALICE, "dirac_admin")
    with pytest.raises(InvalidArgument, match="not a member of group dirac_admin"):
        host(server).getProxy(BOB, "dirac_admin", 3600)
    with pytest.raises(NotFound, match="no credential stored"):
        host(server).getProxy(BOB, "dirac_user", 3600)
    with pytest.raises(InvalidArgument, match="seconds must be between"):
        host(server).getProxy(ALICE, "dirac_user", 10)


def test_a_credential_uploaded_for_one_group_gives_proxies_of_that_group_only(server, pki):
    pm(server).uploadPKCS12(p12_of(pki, "alice"), PASSWORD, "dirac_user")
    with pytest.raises(NotAuthorized, match="uploaded for group dirac_user"):
        host(server).getProxy(ALICE, "dirac_admin", 3600)
    with pytest.raises(InvalidArgument, match="not a member of group dirac_pilot"):
        pm(server).uploadPKCS12(p12_of(pki, "alice"), PASSWORD, "dirac_pilot")


def test_users_list_and_delete_their_own_credential_only(server, pki):
    pm(server).uploadPKCS12(p12_of(pki, "alice"), PASSWORD)
    assert pm(server, "bob-proxy").getUserProxiesInfo() == []
    with pytest.raises(NotAuthorized, match="its own credential only"):
        pm(server, "bob-proxy").deleteProxy(ALICE)
    assert pm(server).deleteProxy(ALICE) == {"DN": ALICE, "Deleted": True}
    assert pm(server).getUserProxiesInfo() == []
    with pytest.raises(NotFound):
        pm(server).deleteProxy(ALICE)


def test_a_database_copy_without_the_key_file_holds_nothing_usable(server, pki, tmp_path):
    from vmdirac.core.exceptions import SecurityError
    from vmdirac.db.proxy_db import ProxyDB, SecretBox

    pm(server).uploadPKCS12(p12_of(pki, "alice"), PASSWORD)
    other = ProxyDB(server.context.engine, SecretBox(tmp_path / "another.key"))
    with pytest.raises(SecurityError, match="cannot be decrypted"):
        other.load(ALICE)
