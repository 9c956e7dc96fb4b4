"""10,000 waiting jobs, 32 pilots on two Matcher processes over one MySQL: each job matched once,
and every match within its requirements."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from tests.conftest import base_tree
from tests.processes import ServerProcess
from tests.services.wms_fixtures import jdl, wms_tree
from vmdirac.core.config import deep_merge
from vmdirac.wms import jdl as J

KINDS = {  # requirement -> JDL fields; 2,500 jobs each
    "cern": {"Site": "LCG.CERN.ch"},
    "in2p3": {"Site": "LCG.IN2P3.fr"},
    "gpu": {"Tags": ["GPU"]},
    "any": {},
}
PILOT_RESOURCES = [  # 32 pilots: what each offers
    {"Site": "LCG.CERN.ch"}, {"Site": "LCG.IN2P3.fr"}, {"Site": "LCG.CERN.ch", "Tag": ["GPU"]},
    {"Site": "LCG.Other.org"},
] * 8


def fits(attrs: dict, resource: dict) -> bool:
    sites = attrs.get("Site")
    if sites and resource.get("Site") not in ([sites] if isinstance(sites, str) else sites):
        return False
    return set(attrs.get("Tags", [])) <= set(resource.get("Tag", []))


@pytest.mark.slow
def test_every_job_is_matched_exactly_once(pki, mysql_url, tmp_path):
    tree = deep_merge(base_tree(), wms_tree(MaxParametricJobs=2500))
    servers = [ServerProcess(pki, tmp_path / f"s{i}", tree, mysql_url) for i in range(2)]
    try:
        manager = servers[0].client("WorkloadManagement/JobManager", timeout=600)
        submitted = []
        for fields in KINDS.values():
            submitted += manager.submitJob(jdl(Parameters=2500, **fields))
        assert len(set(submitted)) == 10000

        matches: list[tuple[int, dict, dict]] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def pilot(n: int) -> None:
            server = servers[n % 2]
            client = server.client("WorkloadManagement/Matcher", "workercert.pem", "workerkey.pem", use_host=True)
            resource = PILOT_RESOURCES[n]
            try:
                while True:
                    got = client.requestJob(resource)
                    if got is None:
                        return
                    with lock:
                        matches.append((got["JobID"], J.parse(got["JDL"]), resource))
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=pilot, args=(n,)) for n in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert not errors, errors[:3]
        counts = Counter(job_id for job_id, _, _ in matches)
        assert len(counts) == 10000 and set(counts) == set(submitted)
        assert max(counts.values()) == 1
        bad = [(j, a.get("Site"), a.get("Tags"), r) for j, a, r in matches if not fits(a, r)]
        assert not bad, bad[:5]
        stats = servers[1].client("WorkloadManagement/JobMonitoring", "admin-proxy").getJobStats("Status", {})
        assert stats == {"Matched": 10000}
    finally:
        for s in servers:
            s.stop()
