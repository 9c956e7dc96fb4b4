"""Submission throughput: one parametric JDL of 10,000 jobs, from the ``submitJob`` call to Waiting.

A server child with the job services (pinned to one CPU, as ``rpc.py`` does) on a fresh database:
MySQL when ``VMDIRAC_MYSQL_URL`` is set, then SQLite too if the run has time left; else SQLite.
The user submits ``Parameters = 10000`` (the caps raised in the configuration) with
``JobManager.submitJob`` over HTTPS; the clock runs from the call to its answer. The submission is
synchronous: when it answers, every job has gone through checking into its task queue. This is
verified after the clock stops: ``JobMonitoring.getJobStats("Status", {})`` must be
``{"Waiting": 10000}`` and the task queue must hold 10,000 jobs. Three rounds per backend, each
on a fresh database and server; the figures are the median round, with the range.

Reading it: "server CPU" is the server child's CPU time during the call; "DB CPU" is the local
MySQL server's over the same time (shared with whatever else runs on this machine: indicative).
Server CPU close to the wall time means the server's Python is the limit.

Run: ``.venv/bin/python scripts/bench/submit.py``. The last line is JSON: ``jobs``, ``seconds``,
``jobs_per_s`` and ``backend`` of the first backend, the other one's figures under its name.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy

sys.path.insert(0, str(Path(__file__).parent))
import wmsbench as W  # noqa: E402

JOBS = 10_000
ROUNDS = 3
SECOND_BACKEND_IF_UNDER_S = 120.0   # run SQLite after MySQL only if the MySQL rounds took less
JDL = f"""[
    Executable = "/bin/echo";
    Arguments = "parameter %s of job %j";
    JobName = "submit_bench_%n";
    JobGroup = "submitbench";
    CPUTime = 3600;
    Site = "LCG.Bench.org";
    Tags = {{"GPU"}};
    Parameters = {JOBS};
    ParameterStart = 1;
    ParameterStep = 1;
]
"""


@dataclass
class Result:
    backend: str
    jobs: int
    seconds: float
    server_cpu_s: float | None
    db_cpu_s: float | None
    stats: dict
    queued: int
    problems: list[str]

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds

    def figures(self) -> dict:
        return {"backend": self.backend, "jobs": self.jobs, "seconds": round(self.seconds, 3),
                "jobs_per_s": round(self.jobs_per_s, 1),
                "server_cpu_s": None if self.server_cpu_s is None else round(self.server_cpu_s, 2)}


def run(backend: str, server_cpu: int | None) -> Result:
    db_pid = W.db_server_pid() if backend == "mysql" else None
    with tempfile.TemporaryDirectory(prefix="vmdirac-bench-submit-") as tmp, \
            W.database(Path(tmp), backend) as url:
        pki = W.make_pki(Path(tmp))
        with W.server_process(W.ServerSpec(tmp, url, JOBS, server_cpu)) as (port, pid):
            manager, monitor = W.client(pki, port, "JobManager", timeout=600), W.client(pki, port, "JobMonitoring")
            manager.ping()    # the TLS handshake is not part of the submission
            cpu0, db0, t0 = W.cpu_seconds(pid), W.cpu_seconds(db_pid) if db_pid else None, time.perf_counter()
            ids = manager.submitJob(JDL)
            t1, cpu1, db1 = time.perf_counter(), W.cpu_seconds(pid), W.cpu_seconds(db_pid) if db_pid else None
            stats = monitor.getJobStats("Status", {})
            manager.close()
            monitor.close()
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as conn:
            queued = conn.exec_driver_sql("SELECT COUNT(*) FROM tq_Jobs").scalar_one()
        engine.dispose()
    problems = []
    if not isinstance(ids, list) or len(ids) != JOBS or len(set(ids)) != JOBS:
        problems.append(f"submitJob answered {len(ids) if isinstance(ids, list) else ids!r} ids, not {JOBS} distinct")
    if stats != {"Waiting": JOBS}:
        problems.append(f"getJobStats('Status') = {stats}, not {{'Waiting': {JOBS}}}")
    if queued != JOBS:
        problems.append(f"the task queues hold {queued} jobs, not {JOBS}")
    return Result(backend, JOBS, t1 - t0, None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
                  None if db0 is None or db1 is None else db1 - db0, stats, queued, problems)


def main() -> int:
    server_cpu = W.pin_self()
    started = time.monotonic()
    rounds: dict[str, list[Result]] = {}
    for n, backend in enumerate(W.backends()):
        if n and time.monotonic() - started > SECOND_BACKEND_IF_UNDER_S:
            print(f"({backend} skipped: the first backend took {time.monotonic() - started:.0f} s, "
                  "the benchmark must stay under five minutes)")
            continue
        rounds[backend] = [run(backend, server_cpu) for _ in range(ROUNDS)]

    def opt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    print(f"{JOBS}-job parametric submission (one submitJob call over HTTPS) until all are Waiting in "
          f"their task queue; {W.pinning_note(server_cpu, 'client')}")
    print(f"{ROUNDS} rounds per backend, each on a fresh database and server; 'median' = the median round")
    print(f"{'backend':<8} {'round':>6} {'jobs':>6} {'seconds':>8} {'jobs/s':>8} {'server CPU s':>13} "
          f"{'DB CPU s':>9}  check")
    medians: list[Result] = []
    for backend, results in rounds.items():
        for n, r in enumerate(results, 1):
            check = "all Waiting and queued: ok" if not r.problems else "FAILED: " + "; ".join(r.problems)
            print(f"{r.backend:<8} {n:>6} {r.jobs:>6} {r.seconds:>8.2f} {r.jobs_per_s:>8.0f} "
                  f"{opt(r.server_cpu_s):>13} {opt(r.db_cpu_s):>9}  {check}")
        median = sorted(results, key=lambda r: r.seconds)[len(results) // 2]
        print(f"{backend:<8} {'median':>6} {median.jobs:>6} {median.seconds:>8.2f} {median.jobs_per_s:>8.0f}"
              f"   (range {min(r.jobs_per_s for r in results):.0f}-{max(r.jobs_per_s for r in results):.0f} jobs/s)")
        medians.append(median)

    def figures(backend: str, median: Result) -> dict:
        results = rounds[backend]
        return {**median.figures(), "jobs_per_s_range": [round(min(r.jobs_per_s for r in results), 1),
                                                         round(max(r.jobs_per_s for r in results), 1)],
                "rounds": len(results), "verified": all(not r.problems for r in results)}

    first, *others = medians
    print(json.dumps({**figures(first.backend, first), **{r.backend: figures(r.backend, r) for r in others}}))
    return 0 if all(not r.problems for results in rounds.values() for r in results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
