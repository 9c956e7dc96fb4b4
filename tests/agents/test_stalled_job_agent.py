"""StalledJobAgent: silent pilots' jobs become Stalled, then Failed; unstarted matches go back."""

from __future__ import annotations

import datetime as dt

from tests.services.wms_fixtures import WMS, jdl, wms  # noqa: F401  (fixture)
from vmdirac.agents.stalled_job_agent import StalledJobAgent, decide
from vmdirac.core.db import utcnow
from vmdirac.db.job_db import JobDB


def test_decide_gives_each_job_one_action():
    actions = decide([1, 2], [2, 3], [4, 1])
    assert (actions.fail, actions.stall, actions.reschedule) == ([2, 3], [1], [4])


def _age(wms: WMS, job_id: int, **columns_minutes_ago):
    db = JobDB(wms.server.context.engine)
    db.set_attributes(job_id, {k: utcnow() - dt.timedelta(minutes=m) for k, m in columns_minutes_ago.items()})


def test_silent_running_job_is_stalled_then_failed(wms: WMS):
    job_id = wms.submit(jdl())
    fresh = wms.submit(jdl())
    pilot, update = wms.pilot(), wms.pilot("JobStateUpdate")
    for j in (job_id, fresh):
        pilot.requestJob({})
        update.setJobStatus(j, "Running", "Application", "JobWrapper")
    agent = StalledJobAgent(wms.server.context)
    agent.initialize()
    _age(wms, job_id, HeartBeatTime=180, LastUpdateTime=180)
    agent.execute()
    assert wms.status(job_id) == ("Stalled", "Job stalled: no heartbeat")
    assert wms.status(fresh) == ("Running", "Application")
    # A heartbeat brings it back ...
    update.sendHeartBeat(job_id, {}, {})
    assert wms.status(job_id)[0] == "Running"
    # ... silence again for long enough makes it fail.
    _age(wms, job_id, HeartBeatTime=180, LastUpdateTime=180)
    agent.execute()
    _age(wms, job_id, LastUpdateTime=7 * 60)
    agent.execute()
    assert wms.status(job_id) == ("Failed", "Stalled for too long")
    assert [s for s, _, src in wms.logging(job_id) if src == "StalledJobAgent"] == ["Stalled", "Stalled", "Failed"]


def test_stalled_job_the_user_killed_ends_killed(wms: WMS):
    job_id = wms.submit(jdl())
    wms.pilot().requestJob({})
    wms.pilot("JobStateUpdate").setJobStatus(job_id, "Running", "Application", "JobWrapper")
    wms.user("JobManager").killJob(job_id)
    agent = StalledJobAgent(wms.server.context)
    agent.initialize()
    _age(wms, job_id, HeartBeatTime=180, LastUpdateTime=180)
    agent.execute()
    _age(wms, job_id, LastUpdateTime=7 * 60)
    agent.execute()
    assert wms.status(job_id) == ("Killed", "Killed by user")


def test_matched_job_never_started_is_rescheduled(wms: WMS):
    job_id = wms.submit(jdl())
    wms.pilot().requestJob({})
    agent = StalledJobAgent(wms.server.context)
    agent.initialize()
    agent.execute()
    assert wms.status(job_id) == ("Matched", "Assigned")     # not yet too long
    _age(wms, job_id, LastUpdateTime=3 * 60)
    agent.execute()
    assert wms.status(job_id) == ("Waiting", "Pilot Agent Submission")
    assert ("Rescheduled", "Matched for too long: pilot did not start it", "StalledJobAgent") in wms.logging(job_id)
    assert wms.pilot().requestJob({})["JobID"] == job_id
