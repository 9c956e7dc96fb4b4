"""SandboxCleaningAgent: unused sandboxes go after their grace, files and rows; used ones stay."""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import tarfile
import time
from pathlib import Path

import pytest
from sqlalchemy import select, update

from vmdirac.agents.sandbox_cleaning_agent import Cutoffs, SandboxCleaningAgent, SandboxCleaningOptions, decide
from vmdirac.core.client import ClientCredentials
from vmdirac.core.db import utcnow
from vmdirac.core.exceptions import NotFound
from vmdirac.db.sandbox_metadata_db import UnusedSandbox, parse_sandbox_id, sandboxes
from vmdirac.wms.sandbox_client import download_sandbox, upload_sandbox

SERVICE = "WorkloadManagement/SandboxStore"
NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def tree(**agent_opts) -> dict:
    return {"Systems": {"WorkloadManagement": {
        "Services": {"SandboxStore": {"Module": "vmdirac.services.sandbox_store:SandboxStoreService"}},
        "Agents": {"SandboxCleaningAgent": {"PollingTime": 0, **agent_opts}},
    }}}


@pytest.fixture
def store(start_server, db_url):
    return start_server(db_url, ["Configuration/Server", SERVICE], tree(UnassignedGraceHours=1))


def upload(server, tmp_path: Path, name: str, cred: str = "alice-proxy") -> str:
    path = tmp_path / f"{name}.tar.gz"
    if not path.exists():  # the same bytes when uploaded again (gzip headers carry a time)
        with tarfile.open(path, "w:gz") as tar:
            info = tarfile.TarInfo(f"{name}.txt")
            info.size = len(name)
            tar.addfile(info, io.BytesIO(name.encode()))
    creds = ClientCredentials(server.pki.path(cred), None, str(server.pki.ca_dir))
    return upload_sandbox(creds, server.url(SERVICE), path)


def file_of(server, sb_id: str) -> Path:
    return server.context.paths.root / "sandboxes" / parse_sandbox_id(sb_id)[1].lstrip("/")


def age(server, sb_id: str, hours: float) -> None:
    """Make a sandbox look last used ``hours`` ago (instead of waiting)."""
    pfn = parse_sandbox_id(sb_id)[1]
    with server.context.engine.begin() as conn:
        conn.execute(update(sandboxes).where(sandboxes.c.SEPFN == pfn).values(
            LastAccessTime=utcnow() - dt.timedelta(hours=hours)))


def pfns(server) -> set[str]:
    with server.context.engine.connect() as conn:
        return set(conn.execute(select(sandboxes.c.SEPFN)).scalars())


def run_one_cycle(server) -> SandboxCleaningAgent:
    agent = SandboxCleaningAgent(server.context)
    agent.run(max_cycles=1)
    assert agent.failed_cycles == 0
    return agent


# ---------------------------------------------------------------- the decision, plain data

def unused(row_id: int, hours_ago: float, assigned: bool = False) -> UnusedSandbox:
    return UnusedSandbox(row_id, f"SB:SE|/g/o/{row_id}", assigned, NOW - dt.timedelta(hours=hours_ago), 10)


def test_decide_applies_each_grace_to_its_kind():
    cutoffs = Cutoffs.at(NOW, SandboxCleaningOptions(UnassignedGraceHours=24, AssignedGraceHours=2))
    candidates = [unused(1, 30), unused(2, 23), unused(3, 3, assigned=True), unused(4, 1, assigned=True),
                  unused(5, 24.5)]
    assert [c.row_id for c in decide(candidates, cutoffs, 100)] == [1, 5, 3]   # oldest first
    assert [c.row_id for c in decide(candidates, cutoffs, 2)] == [1, 5]
    assert decide(candidates, cutoffs, 0) == []


def test_default_options_are_dirac_like():
    opts = SandboxCleaningOptions()
    assert (opts.PollingTime, opts.UnassignedGraceHours, opts.AssignedGraceHours) == (3600.0, 24.0, 0.0)
    cutoffs = Cutoffs.at(NOW, opts)
    assert decide([unused(1, 0.01, assigned=True)], cutoffs, 10) != []  # a deleted job's sandbox goes at once
    assert decide([unused(2, 23.9)], cutoffs, 10) == []


# ---------------------------------------------------------------- the agent on a real store

def test_removes_unused_past_grace_and_keeps_the_rest(store, tmp_path, caplog):
    db = next(s for s in store.services if s.full_name == SERVICE).db
    never = upload(store, tmp_path, "never-assigned")
    used = upload(store, tmp_path, "used-by-job-1")
    orphan = upload(store, tmp_path, "job-2-deleted")
    recent = upload(store, tmp_path, "recent")
    db.assign_to_job([used], 1, "Input", "alice", "dirac_user")
    db.assign_to_job([orphan], 2, "Output", "alice", "dirac_user")
    db.unassign_jobs([2])
    for sb_id in (never, used, orphan):
        age(store, sb_id, hours=2)    # past the 1-hour grace of this test
    age(store, recent, hours=0.5)     # within it

    with caplog.at_level(logging.INFO):
        run_one_cycle(store)

    assert pfns(store) == {parse_sandbox_id(s)[1] for s in (used, recent)}
    assert not file_of(store, never).exists() and not file_of(store, orphan).exists()
    assert file_of(store, used).exists() and file_of(store, recent).exists()
    assert "removed 2 sandbox(es)" in caplog.text and "(1 never assigned, 1 of deleted jobs)" in caplog.text
    creds = ClientCredentials(store.pki.path("alice-proxy"), None, str(store.pki.ca_dir))
    with pytest.raises(NotFound):
        download_sandbox(creds, store.url(SERVICE), never, tmp_path / "gone")
    [kept] = download_sandbox(creds, store.url(SERVICE), used, tmp_path / "kept")
    assert kept.read_text() == "used-by-job-1"


def test_uploading_the_same_content_again_restarts_the_grace(store, tmp_path):
    db = next(s for s in store.services if s.full_name == SERVICE).db
    sb_id = upload(store, tmp_path, "resubmitted")
    db.assign_to_job([sb_id], 3, "Input", "alice", "dirac_user")
    db.unassign_jobs([3])
    age(store, sb_id, hours=5)
    assert upload(store, tmp_path, "resubmitted") == sb_id   # the user submits the same files again
    assert db.get(sb_id).assigned is False                   # so it waits for its new job
    run_one_cycle(store)
    assert file_of(store, sb_id).exists() and db.get(sb_id).sb_id == sb_id


def test_a_sandbox_taken_by_a_job_meanwhile_is_kept(store, tmp_path):
    """Between the gather and the act, a job was submitted with the sandbox: the act re-checks."""
    db = next(s for s in store.services if s.full_name == SERVICE).db
    sb_id = upload(store, tmp_path, "late-assignment")
    age(store, sb_id, hours=2)
    now = utcnow()
    cutoffs = Cutoffs.at(now, SandboxCleaningOptions(UnassignedGraceHours=1))
    due = decide(db.unused_sandboxes(cutoffs.latest, 100), cutoffs, 100)
    assert [c.sb_id for c in due] == [sb_id]
    db.assign_to_job([sb_id], 4, "Input", "alice", "dirac_user")
    removed_files: list[str] = []
    gone = db.delete_unused([c.row_id for c in due], cutoffs.unassigned_before, cutoffs.assigned_before,
                            lambda info: removed_files.append(info.sb_id) or True)
    assert gone == [] and removed_files == []
    assert file_of(store, sb_id).exists()


def test_a_row_whose_file_is_already_gone_is_removed(store, tmp_path):
    """What a crash between deleting a file and committing leaves behind: the next cycle ends it."""
    sb_id = upload(store, tmp_path, "half-cleaned")
    age(store, sb_id, hours=2)
    file_of(store, sb_id).unlink()
    run_one_cycle(store)
    assert pfns(store) == set()


def test_a_file_that_cannot_be_deleted_keeps_its_row(store, tmp_path, caplog):
    sb_id = upload(store, tmp_path, "stuck")
    age(store, sb_id, hours=2)
    path = file_of(store, sb_id)
    path.unlink()
    path.mkdir()                      # a directory in its place: unlink fails
    (path / "x").write_text("x")
    with caplog.at_level(logging.INFO):
        run_one_cycle(store)
    assert pfns(store) == {parse_sandbox_id(sb_id)[1]}
    assert "cannot delete the file of sandbox" in caplog.text and "1 kept" in caplog.text


def test_abandoned_uploads_are_swept(store, tmp_path):
    incoming = store.context.paths.root / "sandboxes" / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    old, fresh = incoming / "upload-old.part", incoming / "upload-fresh.part"
    old.write_bytes(b"half")
    fresh.write_bytes(b"in progress")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    run_one_cycle(store)
    assert not old.exists() and fresh.exists()
