"""SandboxStore over real HTTPS: uploads checked before anything is stored, downloads for those
allowed, sandboxes linked to jobs; and the client's tarball, URL and extraction helpers."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import tarfile
import time
import urllib.parse
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.pki import REGISTRY
from vmdirac.core.client import ClientCredentials
from vmdirac.core.config import Snapshot
from vmdirac.core.exceptions import (
    BadRequest, InvalidArgument, NotAuthorized, NotFound, RequestTooLarge,
)
from vmdirac.core.tls import client_context
from vmdirac.db.sandbox_metadata_db import entity_mapping, sandboxes
from vmdirac.wms.sandbox_client import (
    download_sandbox, extract_tarball, make_tarball, progress_bar, sandbox_url, upload_sandbox,
)

SERVICE = "WorkloadManagement/SandboxStore"
MODULE = "vmdirac.services.sandbox_store:SandboxStoreService"


def store_tree(**opts) -> dict:
    return {"Systems": {"WorkloadManagement": {"Services": {"SandboxStore": {"Module": MODULE, **opts}}}}}


@pytest.fixture
def store(start_server, db_url):
    return start_server(db_url, ["Configuration/Server", SERVICE], store_tree())


def creds(server, name: str = "alice-proxy", key: str | None = None) -> ClientCredentials:
    return ClientCredentials(server.pki.path(name), server.pki.path(key) if key else None, str(server.pki.ca_dir))


def service(server):
    return next(s for s in server.services if s.full_name == SERVICE)


def base_path(server) -> Path:
    return server.context.paths.root / "sandboxes"


def stored_files(server) -> list[Path]:
    """Every file under the store, half-received uploads included."""
    return sorted(p for p in base_path(server).rglob("*") if p.is_file())


def row_count(server) -> int:
    with server.context.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(sandboxes)).scalar_one()


def tarball(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def upload(server, path: Path, cred: str = "alice-proxy", **kwargs) -> str:
    return upload_sandbox(creds(server, cred), sandbox_url(server.url(SERVICE)), path, **kwargs)


def raw(server, method: str, action: str, query: dict, body: bytes = b"", cred: str | None = "alice-proxy",
        headers: dict | None = None) -> tuple[int, dict]:
    ctx = client_context(server.pki.path(cred) if cred else None, None, server.pki.ca_dir)
    conn = http.client.HTTPSConnection("localhost", server.port, context=ctx, timeout=20)
    try:
        conn.request(method, f"/{SERVICE}/{action}?{urllib.parse.urlencode(query)}", body, headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def assert_nothing_stored(server) -> None:
    assert stored_files(server) == []
    assert row_count(server) == 0


# ---------------------------------------------------------------- upload and download

def test_round_trip_with_progress(store, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "job.sh").write_text("#!/bin/sh\necho hello\n")
    payload = os.urandom(700_000)
    (src / "sub" / "data.bin").write_bytes(payload)
    tar = make_tarball([src / "job.sh", Path("sub")], base=src)
    seen: list[tuple[int, int]] = []

    sb_id = upload(store, tar, progress=lambda done, total: seen.append((done, total)))

    checksum = hashlib.sha256(tar.read_bytes()).hexdigest()
    assert sb_id == f"SB:ProductionSandboxSE|/dirac_user/alice/{checksum[:2]}/{checksum}.tar.gz"
    assert (base_path(store) / "dirac_user" / "alice" / checksum[:2] / f"{checksum}.tar.gz").read_bytes() == tar.read_bytes()
    assert seen[-1] == (tar.stat().st_size, tar.stat().st_size) and len(seen) > 1
    info = service(store).db.get(sb_id)
    assert (info.owner, info.group, info.vo, info.checksum, info.assigned) == (
        "alice", "dirac_user", "vmdirac", checksum, False)

    got = download_sandbox(creds(store), store.url(SERVICE), sb_id, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in got) == ["job.sh", "sub/data.bin"]
    assert (tmp_path / "out" / "sub" / "data.bin").read_bytes() == payload
    assert (tmp_path / "out" / "job.sh").read_text() == "#!/bin/sh\necho hello\n"
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []  # no partial file left


def test_same_content_same_owner_same_id(store, tmp_path):
    tar = tarball(tmp_path / "a.tar.gz", {"a.txt": b"same"})
    first = upload(store, tar)
    assert upload(store, tar) == first
    assert row_count(store) == 1
    by_bob = upload(store, tar, cred="bob-proxy")
    assert by_bob != first and "/dirac_user/bob/" in by_bob
    assert row_count(store) == 2 and len(stored_files(store)) == 2


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:bz2", ".tar.bz2"), ("w:xz", ".tar.xz")])
def test_every_tar_compression_is_accepted(store, tmp_path, mode, suffix):
    sb_id = upload(store, tarball(tmp_path / "sb", {"f.txt": b"content " * 100}, mode))
    assert sb_id.endswith(suffix)
    [path] = download_sandbox(creds(store), store.url(SERVICE), sb_id, tmp_path / "out")
    assert path.read_bytes() == b"content " * 100


def test_checksum_mismatch_is_refused_and_nothing_stored(store, tmp_path):
    data = tarball(tmp_path / "a.tar.gz", {"a.txt": b"hello"}).read_bytes()
    status, answer = raw(store, "PUT", "upload", {"checksum": "0" * 64, "size": len(data)}, data)
    assert status == 400 and answer["OK"] is False
    assert "checksum mismatch" in answer["Message"] and hashlib.sha256(data).hexdigest() in answer["Message"]
    assert_nothing_stored(store)


def test_size_mismatch_and_bad_parameters_are_refused(store, tmp_path):
    data = tarball(tmp_path / "a.tar.gz", {"a.txt": b"hello"}).read_bytes()
    good = hashlib.sha256(data).hexdigest()
    status, answer = raw(store, "PUT", "upload", {"checksum": good, "size": len(data) + 1}, data)
    assert status == 400 and f"differs from size={len(data) + 1}" in answer["Message"]
    status, answer = raw(store, "PUT", "upload", {"checksum": "xyz", "size": len(data)}, data)
    assert status == 400 and "sha256" in answer["Message"]
    status, answer = raw(store, "PUT", "upload", {"checksum": good}, data)
    assert status == 400 and "size must be" in answer["Message"]
    assert_nothing_stored(store)


def test_over_the_limit_is_413_before_the_body_is_sent(start_server, db_url, tmp_path):
    srv = start_server(db_url, ["Configuration/Server", SERVICE], store_tree(MaxSandboxSizeMiB=0.05))
    big = tarball(tmp_path / "big.tar", {"noise.bin": os.urandom(200_000)}, "w")
    sent: list[int] = []
    with pytest.raises(RequestTooLarge, match=r"over the 0.05 MiB limit \(MaxSandboxSizeMiB\)"):
        upload(srv, big, progress=lambda done, total: sent.append(done))
    assert sent == []  # refused on the headers: the body never went
    status, answer = raw(srv, "PUT", "upload", {"checksum": "a" * 64, "size": 10 ** 9}, b"x")
    assert status == 413 and answer["Errno"] == 27
    assert_nothing_stored(srv)
    small = tarball(tmp_path / "small.tar.gz", {"a.txt": b"fits"})
    assert upload(srv, small).startswith("SB:")  # the limit refuses only what is over it


def _member(kind: str) -> tarfile.TarInfo:
    if kind == "dotdot":
        return tarfile.TarInfo("data/../../x")
    if kind == "absolute":
        return tarfile.TarInfo("/etc/cron.d/evil")
    info = tarfile.TarInfo(f"{kind}-member")
    info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "device": tarfile.CHRTYPE,
                 "fifo": tarfile.FIFOTYPE}[kind]
    info.linkname = "/etc/passwd" if kind in ("symlink", "hardlink") else ""
    return info


@pytest.mark.parametrize("kind,problem", [
    ("dotdot", "contains '..'"), ("absolute", "has an absolute path"), ("symlink", "is a symbolic link"),
    ("hardlink", "is a hard link"), ("device", "is a device"), ("fifo", "is a FIFO"),
])
def test_unsafe_members_are_refused(store, tmp_path, kind, problem):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("fine.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        tar.addfile(_member(kind), io.BytesIO(b""))
    bad = _member(kind).name
    with pytest.raises(BadRequest, match="sandbox member") as err:
        upload(store, path)
    assert repr(bad) in err.value.message and problem in err.value.message
    assert_nothing_stored(store)


def test_not_a_tar_is_refused(store, tmp_path):
    path = tmp_path / "notes.tar.gz"
    path.write_bytes(b"this is plain text, not an archive\n" * 50)
    with pytest.raises(BadRequest, match="not a readable tar archive"):
        upload(store, path)
    assert_nothing_stored(store)


def test_a_client_gone_mid_upload_leaves_nothing(store):
    ctx = client_context(store.pki.path("alice-proxy"), None, store.pki.ca_dir)
    conn = http.client.HTTPSConnection("localhost", store.port, context=ctx, timeout=20)
    conn.putrequest("PUT", f"/{SERVICE}/upload?checksum={'a' * 64}&size=1000000")
    conn.putheader("Content-Length", "1000000")
    conn.endheaders()
    conn.send(b"y" * 300_000)
    assert wait_for(lambda: stored_files(store) != [])       # being received
    conn.sock.close()
    conn.close()
    assert wait_for(lambda: stored_files(store) == [] and store.rpc.state.in_flight == 0)
    assert row_count(store) == 0


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


# ---------------------------------------------------------------- who may download

def test_only_the_owner_or_an_admin_of_the_vo_may_download(store, tmp_path):
    sb_id = upload(store, tarball(tmp_path / "a.tar.gz", {"secret.txt": b"alice's"}))
    url = store.url(SERVICE)
    with pytest.raises(NotAuthorized, match="may not download"):
        download_sandbox(creds(store, "bob-proxy"), url, sb_id, tmp_path / "bob")
    assert not (tmp_path / "bob" / "secret.txt").exists()
    status, answer = raw(store, "GET", "download", {"sb": sb_id}, cred="bob-proxy")
    assert status == 403 and answer["OK"] is False
    [got] = download_sandbox(creds(store, "admin-proxy"), url, sb_id, tmp_path / "admin")
    assert got.read_bytes() == b"alice's"
    # A pilot fetches the input sandboxes of the jobs it runs (tests/pilot), no others.
    with pytest.raises(NotAuthorized, match="may not download"):
        download_sandbox(creds(store, "workercert.pem", "workerkey.pem"), url, sb_id, tmp_path / "pilot")


def test_no_certificate_is_401(store, tmp_path):
    data = tarball(tmp_path / "a.tar.gz", {"a.txt": b"x"}).read_bytes()
    status, answer = raw(store, "PUT", "upload", {"checksum": hashlib.sha256(data).hexdigest(),
                                                  "size": len(data)}, data, cred=None)
    assert status == 401 and "no client certificate" in answer["Message"]
    status, answer = raw(store, "GET", "download", {"sb": "SB:ProductionSandboxSE|/x"}, cred=None)
    assert status == 401 and answer["OK"] is False
    assert_nothing_stored(store)


def test_unregistered_or_host_callers_cannot_upload(store, tmp_path):
    tar = tarball(tmp_path / "a.tar.gz", {"a.txt": b"x"})
    with pytest.raises(NotAuthorized, match="not registered"):
        upload_sandbox(creds(store, "strangercert.pem", "strangerkey.pem"), store.url(SERVICE), tar)
    with pytest.raises(NotAuthorized, match="use a user proxy"):
        upload_sandbox(creds(store, "workercert.pem", "workerkey.pem"), store.url(SERVICE), tar)
    assert_nothing_stored(store)


def test_unknown_and_malformed_ids(store, tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        download_sandbox(creds(store), store.url(SERVICE), "SB:ProductionSandboxSE|/dirac_user/alice/no.tar", tmp_path)
    status, answer = raw(store, "GET", "download", {"sb": "SB:ProductionSandboxSE|/nothing"})
    assert status == 404 and answer["Errno"] == 2
    status, answer = raw(store, "GET", "download", {"sb": "not-an-id"})
    assert status == 400 and "is not a sandbox id" in answer["Message"]
    status, answer = raw(store, "GET", "download", {})
    assert status == 400 and "name the sandbox" in answer["Message"]


def test_wrong_http_method_gets_an_envelope(store):
    status, answer = raw(store, "GET", "upload", {})
    assert status == 405 and answer["OK"] is False


# ---------------------------------------------------------------- links to jobs

def test_assign_to_job_checks_every_id_and_owner(store, tmp_path):
    db = service(store).db
    alice = upload(store, tarball(tmp_path / "a.tar.gz", {"a": b"1"}))
    bob = upload(store, tarball(tmp_path / "b.tar.gz", {"b": b"2"}), cred="bob-proxy")
    missing = "SB:ProductionSandboxSE|/dirac_user/alice/00/none.tar"

    with pytest.raises(NotAuthorized, match="does not belong to alice@dirac_user") as err:
        db.assign_to_job([alice, bob], 7, "Input", "alice", "dirac_user")
    assert bob in err.value.message and err.value.ids["sb_id"] == bob
    with pytest.raises(NotFound) as err:
        db.assign_to_job([alice, missing], 7, "Input", "alice", "dirac_user")
    assert missing in err.value.message
    with pytest.raises(NotAuthorized):
        db.assign_to_job([alice], 7, "Input", "alice", "dirac_admin")  # same user, other group
    assert db.get_job_sandboxes(7) == {"Input": [], "Output": []}  # all or nothing

    assert db.assign_to_job([alice, alice], 7, "Input", "alice", "dirac_user") == 1
    assert db.assign_to_job([alice], 7, "Input", "alice", "dirac_user") == 0  # already linked
    assert db.assign_to_job([alice], 7, "Output", "alice", "dirac_user") == 1
    assert db.get_job_sandboxes(7) == {"Input": [alice], "Output": [alice]}
    assert db.get(alice).assigned is True
    assert db.unassign_jobs([7]) == 2
    assert db.get_job_sandboxes(7) == {"Input": [], "Output": []}


def test_assign_to_job_is_part_of_the_callers_transaction(store, tmp_path):
    db = service(store).db
    sb = upload(store, tarball(tmp_path / "a.tar.gz", {"a": b"1"}))

    def submit_then_fail(conn):
        assert db.assign_to_job([sb], 9, "Input", "alice", "dirac_user", conn=conn) == 1
        raise RuntimeError("the job insert failed after the link")

    with pytest.raises(RuntimeError):
        db.run(submit_then_fail)
    assert db.get_job_sandboxes(9) == {"Input": [], "Output": []}
    assert db.get(sb).assigned is False
    db.run(lambda conn: db.assign_to_job([sb], 9, "Input", "alice", "dirac_user", conn=conn))
    assert db.get_job_sandboxes(9)["Input"] == [sb]
    with store.context.engine.connect() as conn:
        assert conn.execute(select(entity_mapping.c.EntityId, entity_mapping.c.Type)).all() == [("Job:9", "Input")]


def test_rpc_assign_read_and_unassign(store, tmp_path):
    alice_in = upload(store, tarball(tmp_path / "in.tar.gz", {"in": b"1"}))
    alice_out = upload(store, tarball(tmp_path / "out.tar.gz", {"out": b"2"}))
    admin = store.client(SERVICE, "admin-proxy")
    alice = store.client(SERVICE, "alice-proxy")
    bob = store.client(SERVICE, "bob-proxy")

    with pytest.raises(NotAuthorized, match="JobAdministrator"):
        alice.assignSandboxesToJob(5, [alice_in])
    assert admin.assignSandboxesToJob(5, [alice_in, [alice_out, "Output"]], "alice", "dirac_user") == 2
    with pytest.raises(InvalidArgument, match="expected \\[sandbox id"):
        admin.assignSandboxesToJob(5, [[alice_in, "Sideways"]], "alice", "dirac_user")

    both = sorted([[alice_in, "Input"], [alice_out, "Output"]])
    assert sorted(alice.getSandboxesAssignedToEntity("Job:5")) == both
    assert sorted(admin.getSandboxesAssignedToEntity("Job:5")) == both
    with pytest.raises(NotAuthorized, match="Job:5"):
        bob.getSandboxesAssignedToEntity("Job:5")
    # getSandboxesForJob follows the job itself (tests/services/test_jobs.py): job 5 is no job.
    with pytest.raises(NotAuthorized, match="job 5 does not exist or is not yours"):
        alice.getSandboxesForJob(5)

    with pytest.raises(NotAuthorized):
        alice.unassignJobs([5])
    assert admin.unassignJobs([5]) == 2
    assert alice.getSandboxesAssignedToEntity("Job:5") == []


# ---------------------------------------------------------------- client helpers

def test_make_tarball_names_a_missing_file(tmp_path):
    (tmp_path / "here.txt").write_text("x")
    with pytest.raises(NotFound) as err:
        make_tarball([tmp_path / "here.txt", Path("missing.dat")], base=tmp_path)
    assert str(err.value) == "missing.dat: no such file"


def test_make_tarball_is_reproducible_with_relative_names(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "d" / "f.txt")
    first = make_tarball([Path("d"), tmp_path / "link"], base=tmp_path, dest=tmp_path / "1.tar.gz")
    second = make_tarball([tmp_path / "link", Path("d")], base=tmp_path, dest=tmp_path / "2.tar.gz")
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = {m.name: m for m in tar}
    assert sorted(members) == ["d", "d/f.txt", "link"]
    assert members["link"].isfile() and members["d/f.txt"].uname == ""


def test_extract_refuses_unsafe_members_and_writes_nothing_outside(tmp_path):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"!"))
    with pytest.raises(InvalidArgument, match="'../escaped.txt' contains '..'"):
        extract_tarball(path, tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists()


def test_extract_refuses_to_follow_a_symlink_already_in_the_destination(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (dest / "out").symlink_to(tmp_path / "elsewhere")
    path = tarball(tmp_path / "a.tar", {"out/file.txt": b"x"}, "w")
    with pytest.raises(InvalidArgument, match="would land outside"):
        extract_tarball(path, dest)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_sandbox_url_from_configuration_or_urls():
    snap = Snapshot.make(1, {"Registry": REGISTRY, "Systems": {"WorkloadManagement": {"URLs": {
        "SandboxStore": ["https://wms.example.org:9443/WorkloadManagement/SandboxStore"]}}}})
    assert sandbox_url(snap) == "https://wms.example.org:9443/WorkloadManagement/SandboxStore/upload"
    assert sandbox_url(snap, "download") == "https://wms.example.org:9443/WorkloadManagement/SandboxStore/download"
    assert sandbox_url(["https://h:1/WorkloadManagement/SandboxStore/"]) == "https://h:1/WorkloadManagement/SandboxStore/upload"
    assert sandbox_url("https://h:1/WorkloadManagement/SandboxStore/upload", "download") == \
        "https://h:1/WorkloadManagement/SandboxStore/download"


def test_progress_bar_only_on_a_terminal():
    assert progress_bar(io.StringIO()) is None

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    bar = progress_bar(term, width=10)
    bar(0, 2 * 1048576)
    bar(1048576, 2 * 1048576)
    bar(2 * 1048576, 2 * 1048576)
    out = term.getvalue()
    assert "[#####.....]  50% 1.0/2.0 MiB" in out and out.endswith("100% 2.0/2.0 MiB\n")
    assert out.count("\n") == 1
