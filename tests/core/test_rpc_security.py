"""Who may call: certificates, proxies, bad chains, the Registry and properties, over real HTTPS."""

from __future__ import annotations

import http.client
import json
import socket
import ssl

import pytest

from tests.pki import ADMIN, ALICE, BOB, HOST, STRANGER
from vmdirac.core.client import ClientCredentials, RPCClient
from vmdirac.core.exceptions import NotAuthenticated, NotAuthorized
from vmdirac.core.tls import client_context


def test_plain_user_certificate(server):
    me = server.client("Test/Echo", "alicecert.pem", "alicekey.pem").whoami()
    assert me["DN"] == ALICE
    assert (me["username"], me["group"]) == ("alice", "dirac_user")  # the default group


def test_one_level_proxy_carries_its_group(server):
    me = server.client("Test/Echo", "alice-proxy").whoami()
    assert (me["DN"], me["group"], me["VO"]) == (ALICE, "dirac_user", "vmdirac")
    assert me["properties"] == ["NormalUser"]


def test_two_level_proxy_identity_is_the_end_entity(server):
    me = server.client("Test/Echo", "alice-proxy2").whoami()
    assert me["DN"] == ALICE
    assert me["group"] == "dirac_admin"  # the nearest proxy's group wins
    assert "CSAdministrator" in me["properties"]


def test_proxy_without_group_gets_the_default_group(server):
    assert server.client("Test/Echo", "alice-proxy-nogroup").whoami()["group"] == "dirac_user"


def test_expired_proxy_is_refused_with_401_naming_the_date(server):
    with pytest.raises(NotAuthenticated, match="expired at"):
        server.client("Test/Echo", "alice-proxy-expired").ping()


def test_not_yet_valid_proxy_is_refused(server):
    with pytest.raises(NotAuthenticated, match="not valid before"):
        server.client("Test/Echo", "alice-proxy-future").ping()


@pytest.mark.parametrize("cred,key", [
    ("fake-alice-proxy", None),              # Alice's DN, another CA
    ("fake-alicecert.pem", "fake-alicekey.pem"),
    ("forged-proxy", None),                  # Bob signs a proxy claiming Alice's subject
    ("ee-signed", None),                     # Bob's EE certificate used as a CA
    ("tampered-proxy", None),                # signature broken after signing
])
def test_untrusted_chains_are_refused(server, cred, key):
    with pytest.raises(NotAuthenticated, match="refused the credential"):
        server.client("Test/Echo", cred, key).ping()


def _raw_post(server, body: bytes, cred: str | None = "alice-proxy", path="/Test/Echo",
              ctype="application/x-www-form-urlencoded", method="POST"):
    ctx = client_context(server.pki.path(cred) if cred else None, None, server.pki.ca_dir)
    conn = http.client.HTTPSConnection("localhost", server.port, context=ctx, timeout=10)
    conn.request(method, path, body, {"Content-Type": ctype})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data)


def test_no_certificate_is_401(server):
    status, answer = _raw_post(server, b"method=ping&args=[]", cred=None)
    assert status == 401
    assert answer["OK"] is False and "no client certificate" in answer["Message"]


def test_expired_proxy_is_http_401(server):
    status, answer = _raw_post(server, b"method=ping&args=[]", cred="alice-proxy-expired")
    assert status == 401 and "expired" in answer["Message"]


def test_unregistered_identity_may_ping_but_nothing_more(server):
    c = server.client("Test/Echo", "strangercert.pem", "strangerkey.pem")
    assert c.ping()["service"] == "Test/Echo"
    assert c.whoami()["DN"] == STRANGER
    with pytest.raises(NotAuthorized, match="not registered"):
        c.add(1, 2)


def test_group_the_user_is_not_in_is_refused(server):
    with pytest.raises(NotAuthenticated, match="not a member of group dirac_admin"):
        server.client("Test/Echo", "bob-proxy-admin").whoami()


def test_properties_decide_who_may_call(server):
    with pytest.raises(NotAuthorized, match="Operator"):
        server.client("Test/Echo", "bob-proxy").operatorOnly()
    assert server.client("Test/Echo", "admin-proxy").operatorOnly() == "hello admin"
    status, answer = _raw_post(server, b"method=operatorOnly&args=[]", cred="bob-proxy")
    assert status == 403 and answer["OK"] is False


def test_host_certificate_acts_as_host(server):
    c = server.client("Test/Echo", "hostcert.pem", "hostkey.pem", use_host=True)
    me = c.whoami()
    assert me["isHost"] and me["DN"] == HOST and "TrustedHost" in me["properties"]


def test_trusted_host_acts_for_a_user(server):
    c = server.client("Test/Echo", "hostcert.pem", "hostkey.pem", delegate=(BOB, "dirac_user"))
    me = c.whoami()
    assert (me["DN"], me["group"], me["isHost"]) == (BOB, "dirac_user", False)


def test_untrusted_host_cannot_act_for_a_user(server):
    c = server.client("Test/Echo", "workercert.pem", "workerkey.pem", delegate=(ADMIN, "dirac_admin"))
    with pytest.raises(NotAuthenticated, match="not a TrustedHost"):
        c.whoami()


def test_user_cannot_delegate(server):
    c = server.client("Test/Echo", "bob-proxy", delegate=(ADMIN, "dirac_admin"))
    assert c.whoami()["DN"] == BOB  # extraCredentials from a user are ignored


def test_client_refuses_a_server_not_signed_by_its_ca(server, pki):
    creds = ClientCredentials(pki.path("alice-proxy"), None, pki.path("other-ca.pem"))
    with pytest.raises(Exception, match="not trusted"):
        RPCClient("Test/Echo", creds, urls=[server.url("Test/Echo")], rounds=1).ping()


def test_host_name_is_checked(server, pki):
    # The host certificate names localhost and 127.0.0.1 only.
    c = RPCClient("Test/Echo", ClientCredentials(pki.path("alice-proxy"), None, str(pki.ca_dir)),
                  urls=[server.url("Test/Echo", host="127.0.0.1")])
    assert c.ping()["service"] == "Test/Echo"
    ctx = client_context(pki.path("alice-proxy"), None, pki.ca_dir)
    with pytest.raises(ssl.SSLCertVerificationError):
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.port), 5),
                             server_hostname="not-this-host.example.org"):
            pass


def test_a_replaced_credential_file_is_presented_by_the_same_client(server, pki, tmp_path):
    """A VM's monitor renews its credential by replacing the file; the pilot's long-lived clients
    must present the new one from their next call, on a new connection."""
    cred = tmp_path / "x509up"
    cred.write_bytes(open(pki.path("alice-proxy"), "rb").read())
    client = server.client("Test/Echo", str(cred))
    assert client.whoami()["group"] == "dirac_user"
    fresh = tmp_path / "x509up.new"
    fresh.write_bytes(open(pki.path("alice-proxy2"), "rb").read())
    fresh.replace(cred)
    assert client.whoami()["group"] == "dirac_admin"
    assert client.whoami()["group"] == "dirac_admin"
