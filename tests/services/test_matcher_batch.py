"""The Matcher's group commit: requests served together by one transaction each get their own
job, within their requirements; a batch that fails is served again one request at a time, so
that only the request that met the bad job fails, and that job goes back to its queue."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select, update

from tests.services.wms_fixtures import jdl
from vmdirac.core.db import make_engine
from vmdirac.core.exceptions import IllegalTransition
from vmdirac.core.export import Caller
from vmdirac.db.job_db import jobs
from vmdirac.db.job_logging_db import logging_info
from vmdirac.db.task_queue_db import tq_jobs
from vmdirac.logic.jobs import JobLimits, JobStore
from vmdirac.services.matcher import MatchQueue, MatchRequest, match_batch
from vmdirac.wms.matching import ResourceDescription

USER = Caller(dn="/O=vmdirac/CN=alice", username="alice", group="dirac_user", vo="vmdirac",
              properties=frozenset({"NormalUser"}), registered=True)
PILOT = Caller(dn="/O=vmdirac/CN=worker.example.org", username="worker", group="hosts",
               properties=frozenset({"GenericPilot"}), is_host=True, registered=True)


@pytest.fixture
def store(db_url):
    engine = make_engine(db_url)
    store = JobStore(engine, dict)
    store.create_tables()
    yield store
    engine.dispose()


def submit(store: JobStore, n: int, site: str) -> list[int]:
    return store.submit(USER, [jdl(Site=site, Parameters=n)], JobLimits())


def request(site: str, pilot: str) -> MatchRequest:
    return MatchRequest.of(PILOT, ResourceDescription.from_wire({"Site": site, "PilotReference": pilot,
                                                                 "InstanceID": f"vm-{pilot}"}))


def test_one_batch_gives_each_request_its_own_job_within_its_requirements(store: JobStore):
    cern = submit(store, 3, "LCG.CERN.ch")
    in2p3 = submit(store, 10, "LCG.IN2P3.fr")
    requests = [request("LCG.CERN.ch", f"p{n}") for n in range(4)] + [request("LCG.IN2P3.fr", "p4"),
                                                                      request("LCG.IN2P3.fr", "p5")]
    got = store.jobdb.run(lambda conn: match_batch(store, conn, requests))

    cern_got = [g["JobID"] for g in got[:4] if g is not None]
    assert sorted(cern_got) == cern and sum(g is None for g in got[:4]) == 1   # 3 jobs for 4 pilots
    assert {g["JobID"] for g in got[4:]} <= set(in2p3) and got[4]["JobID"] != got[5]["JobID"]
    matched = [g["JobID"] for g in got if g is not None]
    with store.jobdb.engine.connect() as conn:
        rows = {r.JobID: r for r in conn.execute(select(jobs).where(jobs.c.JobID.in_(matched)))}
        left = set(conn.execute(select(tq_jobs.c.JobID)).scalars())
        logged = list(conn.execute(select(logging_info.c.JobID).where(logging_info.c.Status == "Matched")).scalars())
    assert all(r.Status == "Matched" and r.MinorStatus == "Assigned" for r in rows.values())
    for g, r in zip(got, requests):            # each job records its own pilot and site
        if g is not None:
            assert rows[g["JobID"]].PilotReference == r.pilot_reference
            assert rows[g["JobID"]].Site == r.res.site
            assert g["Owner"] == "alice" and "Executable" in g["JDL"]
    assert sorted(logged) == sorted(matched)
    assert left == set(in2p3) - set(matched)
    params = store.jobdb.parameters(matched)
    assert all(params[j]["InstanceID"].startswith("vm-p") for j in matched)


def test_a_failed_batch_is_served_one_by_one_and_only_the_bad_request_fails(store: JobStore):
    good = submit(store, 4, "LCG.CERN.ch")
    [bad] = submit(store, 1, "LCG.Broken.org")
    with store.jobdb.engine.begin() as conn:   # left in its queue while no longer Waiting
        conn.execute(update(jobs).where(jobs.c.JobID == bad).values(Status="Running"))
    requests = [request("LCG.CERN.ch", "p0"), request("LCG.Broken.org", "p1"), request("LCG.CERN.ch", "p2")]

    async def serve() -> list:
        with ThreadPoolExecutor(2) as executor:
            queue = MatchQueue(store, lambda conn, reqs: match_batch(store, conn, reqs), executor, writers=1)
            queue.active = 1      # the writer is busy: the three requests wait as one batch
            calls = [asyncio.ensure_future(queue.submit(r)) for r in requests]
            await asyncio.sleep(0)
            assert len(queue.pending) == 3
            await queue._write()  # as the busy writer does next
            return await asyncio.gather(*calls, return_exceptions=True)

    first, broken, third = asyncio.run(serve())
    assert isinstance(broken, IllegalTransition)
    assert {first["JobID"], third["JobID"]} <= set(good) and first["JobID"] != third["JobID"]
    assert store.tqdb.queue_of([bad]) != {}           # the bad job went back to its queue
    assert store.jobdb.attributes([bad])[bad]["Status"] == "Running"
