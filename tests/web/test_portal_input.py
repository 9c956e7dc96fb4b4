"""Every JSON endpoint and form of the portal refuses bad input with 400 and a one-line reason
(never a 500, never a traceback): bad ids, dates, pages, sort columns, types, file names."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

from tests.services.wms_fixtures import jdl
from tests.web.portal_fixtures import PortalServer, multipart, portal_tree_all
from vmdirac.core import x509 as X


@pytest.fixture(scope="module")
def portal(pki, tmp_path_factory):
    root = tmp_path_factory.mktemp("portal-input")
    server = PortalServer(pki, root / "root", f"sqlite:///{root / 'vmdirac.sqlite'}", tree=portal_tree_all)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def alice(portal):
    browser = portal.browser()
    assert browser.follow(portal.login_link()).status == 200
    browser.token = browser.csrf()
    return browser


def one_line_400(answer) -> str:
    assert answer.status == 400, (answer.status, answer.text)
    message = answer.json()["Message"]
    assert message and "\n" not in message and "Traceback" not in message
    return message


BAD_QUERIES = [
    "/api/jobs?limit=100000", "/api/jobs?limit=0", "/api/jobs?start=-1", "/api/jobs?limit=%C2%B2",
    "/api/jobs?start=99999999999999999999999", "/api/jobs?sort=Bogus", "/api/jobs?dir=sideways",
    "/api/jobs?from=notadate", "/api/jobs?to=2024-13-45", "/api/jobs?from=2024-01-01%2099:00",
    "/api/jobs?ids=abc", "/api/jobs?ids=1-99999999", "/api/jobs?ids=99999999999999999999", "/api/jobs?ids=%C2%B2",
    "/api/jobs?status=" + "x" * 300,
    "/api/vms?limit=100000", "/api/vms?start=x", "/api/vms?limit=%C2%B2", "/api/vms?status=Bogus",
    "/api/vms?start=99999999999999999999999",
    "/api/accounting/report", "/api/accounting/report?name=jobs", "/api/accounting/report?name=bogus&grouping=Site",
    "/api/accounting/report?name=jobs&grouping=Bogus", "/api/accounting/report?name=jobs&grouping=Site&span=year",
    "/api/accounting/plot.png?name=jobs&grouping=Site&span=year", "/api/accounting/plot.png",
]


@pytest.mark.parametrize("path", BAD_QUERIES)
def test_bad_queries_are_400_with_a_reason(alice, path):
    one_line_400(alice.get(path))


BAD_BODIES = [
    ("/api/jobs/action", b"not json"),
    ("/api/jobs/action", b"[]"),
    ("/api/jobs/action", b'{"action": "explode", "ids": [1]}'),
    ("/api/jobs/action", b'{"action": "kill", "ids": "1"}'),
    ("/api/jobs/action", b'{"action": "kill", "ids": [true]}'),
    ("/api/jobs/action", b'{"action": "kill", "ids": [1.5]}'),
    ("/api/jobs/action", b'{"action": "kill", "ids": [99999999999999999999999]}'),
    ("/api/jobs/action", b'{"action": "kill", "ids": [' + b",".join(b"%d" % i for i in range(1, 20002)) + b"]}"),
    ("/api/jobs/action", b"[" * 100000 + b"]" * 100000),
    ("/api/jobs/action", b'\xff\xfe{"action"'),
    ("/api/group", b"{}"),
    ("/api/group", b'{"group": 5}'),
    ("/api/vms/stop", b'{"ids": [1], "force": "false"}'),
    ("/api/vms/stop", b'{"ids": [true]}'),
    ("/api/vms/stop", b'{"ids": [99999999999999999999999]}'),
]


@pytest.mark.parametrize("path,body", BAD_BODIES, ids=[f"{p}-{i}" for i, (p, _) in enumerate(BAD_BODIES)])
def test_bad_json_bodies_are_400_with_a_reason(alice, path, body):
    answer = alice.request("POST", path, body, {"Content-Type": "application/json", "X-CSRF-Token": alice.token})
    one_line_400(answer)


BAD_SUBMITS = [
    ({"Executable": "/bin/true", "CPUTime": "abc"}, {}, "CPUTime"),
    ({"Executable": "/bin/true", "CPUTime": "\u00b2"}, {}, "CPUTime"),
    ({"Executable": "/bin/true", "NumberOfProcessors": "99999999999999999999999"}, {}, "NumberOfProcessors"),
    ({"Arguments": "x"}, {}, "Executable"),
    ({"JDL": "[ this is not JDL"}, {}, ""),
    ({"Executable": "/bin/true"}, {"sandbox": ("a\x01b.sh", b"x")}, ""),      # refused by Tornado's parser
    ({"Executable": "/bin/true"}, {"sandbox": ("evil\u202egnp.sh", b"x")}, "file name"),
    ({"Executable": "/bin/true"}, {"sandbox": ("x" * 300, b"x")}, "file name"),
    ({"Executable": "/bin/true"}, {"sandbox": ("..", b"x")}, "file name"),
]


@pytest.mark.parametrize("fields,files,word", BAD_SUBMITS, ids=[str(i) for i in range(len(BAD_SUBMITS))])
def test_bad_launch_pad_forms_are_400_with_a_reason(alice, fields, files, word):
    body, ctype = multipart(fields, files)
    answer = alice.request("POST", "/api/submit", body, {"Content-Type": ctype, "X-CSRF-Token": alice.token})
    assert word in one_line_400(answer)


def test_bad_proxy_uploads_are_400_with_a_reason(alice):
    for fields, files in (({"password": "x"}, {}), ({"password": "x"}, {"p12": ("a.p12", b"not a pkcs12")}),
                          ({"password": "x"}, {"p12": ("a.p12", b"x" * (65 * 1024))})):
        body, ctype = multipart(fields, files)
        answer = alice.request("POST", "/api/proxy/upload", body, {"Content-Type": ctype, "X-CSRF-Token": alice.token})
        assert "x" * 10 not in one_line_400(answer)


@pytest.mark.parametrize("path", ["/api/jobs/0/logging", "/api/jobs/999999999999/parameters",
                                  "/api/vms/0/history", "/api/vms/999999999999/plot.png"])
def test_unknown_ids_are_refused_not_500(alice, path):
    answer = alice.get(path)
    assert answer.status in (400, 403, 404), (answer.status, answer.text)
    assert "\n" not in answer.json()["Message"]


def test_a_pkcs12_password_is_taken_as_typed_spaces_included(alice, pki):
    cert = X.load_certificates(Path(pki.path("alicecert.pem")).read_bytes())[0]
    key = X.load_key(Path(pki.path("alicekey.pem")).read_bytes())
    p12 = pkcs12.serialize_key_and_certificates(b"alice", key, cert, None, BestAvailableEncryption(b" two words "))
    body, ctype = multipart({"password": " two words "}, {"p12": ("alice.p12", p12)})
    answer = alice.request("POST", "/api/proxy/upload", body, {"Content-Type": ctype, "X-CSRF-Token": alice.token})
    assert answer.status == 200, answer.text
    assert answer.json()["Value"]["DN"] == "/O=vmdirac/OU=users/CN=alice"


def test_parameters_of_a_job_written_with_leading_zeros(alice, portal):
    job = portal.client("WorkloadManagement/JobManager", "alice-proxy").submitJob(jdl())
    answer = alice.get(f"/api/jobs/{job:05d}/parameters")
    assert answer.status == 200, answer.text
    assert answer.json()["Value"]["attributes"]["JobID"] == job
