"""SandboxStore.storeOutputSandbox: how a pilot hands back a job's outputs, and who may."""

from __future__ import annotations

import pytest

from tests.pilot.pilot_fixtures import Grid, grid, job  # noqa: F401  (fixture)
from vmdirac.core.exceptions import InvalidArgument, NotAuthorized, RequestTooLarge
from vmdirac.wms.sandbox_client import download_sandbox, make_tarball, sandbox_url


def pilot(grid: Grid, service: str):
    return grid.server.client(f"WorkloadManagement/{service}", "workercert.pem", "workerkey.pem", use_host=True)


def test_only_the_pilot_running_a_job_stores_its_output_sandbox(grid: Grid, tmp_path):
    job_id = grid.submit(job(Executable="/bin/true"))
    (tmp_path / "std.out").write_text("out\n")
    data = make_tarball(["std.out"], tmp_path, tmp_path / "out.tar.gz").read_bytes()
    with pytest.raises(NotAuthorized, match="not run by this pilot"):
        pilot(grid, "SandboxStore").storeOutputSandbox(job_id, data)          # not matched yet
    assert pilot(grid, "Matcher").requestJob({})["JobID"] == job_id
    for cred in ("alice-proxy", "bob-proxy"):   # not even the owner: only the identity that matched it
        with pytest.raises(NotAuthorized, match="not run by this pilot"):
            grid.user("SandboxStore", cred).storeOutputSandbox(job_id, data)
    with pytest.raises(InvalidArgument, match="not a readable tar archive"):
        pilot(grid, "SandboxStore").storeOutputSandbox(job_id, b"not a tarball")
    with pytest.raises(RequestTooLarge, match="MaxSandboxSizeMiB"):
        pilot(grid, "SandboxStore").storeOutputSandbox(job_id, bytes(10 * 1024 * 1024 + 1))

    sb_id = pilot(grid, "SandboxStore").storeOutputSandbox(job_id, data)
    assert "/dirac_user/alice/" in sb_id                                     # owned by the job's owner
    assert grid.user("SandboxStore").getSandboxesForJob(job_id) == {"Input": [], "Output": [sb_id]}
    url = sandbox_url(grid.server.url("WorkloadManagement/SandboxStore"), "download")
    [got] = download_sandbox(grid.credentials(), url, sb_id, tmp_path / "back")
    assert got.read_text() == "out\n"

    update = pilot(grid, "JobStateUpdate")
    update.setJobStatus(job_id, "Running", "Application", "JobWrapper")
    update.setJobStatus(job_id, "Done", "Execution Complete", "JobWrapper")
    with pytest.raises(NotAuthorized):                                        # the job is over
        pilot(grid, "SandboxStore").storeOutputSandbox(job_id, data)
