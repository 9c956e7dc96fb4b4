"""Matcher throughput: jobs matched per second by 16 pilots, beside the trivial RPC rate.

For each backend (MySQL on a fresh database when ``VMDIRAC_MYSQL_URL`` is set, and SQLite, in the
same run), a fresh server child with the job services, pinned to one CPU (the load generator
keeps the other, as in ``rpc.py``). The user submits 20,000 jobs in 200 task queues: 200
parametric JDLs of ``Parameters = 100`` (8 sites x 5 tag sets x 5 CPU-time segments), with
``submitJobs``. Then 16 pilots, each one keep-alive HTTPS connection presenting the
``GenericPilot`` host certificate (``extraCredentials="hosts"``, as DIRAC's host clients send),
two per site with the union of the tags, so that each pilot fits the 25 queues of its site:

1. ``Configuration/Server.ping`` on the same 16 connections: the trivial rate (1 s warm-up, 4 s);
2. ``Matcher.requestJob``: 2 s of warm-up, then a window of at most 20 s that closes early when a
   site has given 90% of its jobs, so that the rate is never that of queues running dry;
3. ``ping`` again; ``trivial_rps`` is the higher of 1 and 3 (other load on the machine only ever
   lowers a rate, and a short ping window is easily hit: both are shown).

Every JobID answered (warm-up and tail included) is collected: ``double_matches`` counts JobIDs
given twice (must be 0); "wrong" counts matches that break the job's requirements (checked
with ``vmdirac.wms.matching.matches``); the server's job counts must then agree (Matched = JobIDs
answered, Waiting = the rest).

Reading it: ``ratio`` = matches/s / trivial rps (the issue's goal: at least 0.5). "server CPU"
near 1.0 means the server's core is saturated by its Python; clearly below 1.0 during matching,
the server waits for the database (on MySQL, see "DB CPU": the local MySQL server's, shared with
whatever else runs on this machine).

Run: ``.venv/bin/python scripts/bench/matcher.py``. The last line is JSON: ``backend``,
``matches_per_s``, ``trivial_rps``, ``ratio``, ``double_matches`` of the first backend (MySQL
when set), the other one's figures under its name.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy

sys.path.insert(0, str(Path(__file__).parent))
import wmsbench as W  # noqa: E402

from vmdirac.core import jencode  # noqa: E402
from vmdirac.wms.matching import JobRequirements, ResourceDescription, matches  # noqa: E402

SITES = [f"LCG.Bench{n}.org" for n in range(1, 9)]
TAG_SETS = [(), ("GPU",), ("SSD",), ("GPU", "SSD"), ("Docker",)]
CPU_TIMES = [300, 1200, 3000, 20000, 40000]       # five of DIRAC's segments once fitted
JOBS_PER_QUEUE = 100
PILOTS = 16
PILOT_TAGS = ["GPU", "SSD", "Docker"]
PILOT_CPU_TIME = 2 * 86400
SUBMIT_BATCH = 50                                  # JDLs per submitJobs call (5,000 jobs)
PING_WARMUP_S, PING_S = 1.0, 4.0
MATCH_WARMUP_S, MATCH_MAX_S = 2.0, 20.0
SITE_DRY = 0.9                                     # close the window when a site gave this share


@dataclass(frozen=True)
class Queue:
    site: str
    tags: tuple[str, ...]
    cpu_time: int

    def jdl(self) -> str:
        tags = "{" + ", ".join(f'"{t}"' for t in self.tags) + "}"
        return (f'[\n    Executable = "/bin/echo";\n    Arguments = "%s";\n    JobName = "matcher_bench_%n";\n'
                f'    CPUTime = {self.cpu_time};\n    Site = "{self.site}";\n'
                + (f"    Tags = {tags};\n" if self.tags else "")
                + f"    Parameters = {JOBS_PER_QUEUE};\n]\n")

    def requirements(self) -> JobRequirements:
        return JobRequirements.make(owner="bench", owner_group="dirac_user", vo="vmdirac", cpu_time=self.cpu_time,
                                    sites=[self.site], tags=self.tags)


QUEUES = [Queue(s, t, c) for s, t, c in itertools.product(SITES, TAG_SETS, CPU_TIMES)]


def pilot_description(n: int) -> dict:
    return {"Site": SITES[n % len(SITES)], "Tag": PILOT_TAGS, "NumberOfProcessors": 1, "CPUTime": PILOT_CPU_TIME,
            "GridCE": f"ce.{SITES[n % len(SITES)]}", "PilotReference": f"bench-pilot-{n:02d}"}


@dataclass
class Run:
    backend: str
    setup_s: float
    ping_before: W.Window
    matching: W.Window
    ping_after: W.Window
    answered: list[tuple[int, int]]          # (pilot, JobID), every match answered
    no_match: int
    violations: int
    problems: list[str] = field(default_factory=list)

    @property
    def trivial_rps(self) -> float:
        return max(self.ping_before.rate, self.ping_after.rate)

    @property
    def double_matches(self) -> int:
        ids = [job for _p, job in self.answered]
        return len(ids) - len(set(ids))

    @property
    def errors(self) -> list[str]:
        return self.ping_before.errors + self.matching.errors + self.ping_after.errors

    def figures(self) -> dict:
        m = self.matching
        return {"backend": self.backend, "matches_per_s": round(m.rate, 1), "trivial_rps": round(self.trivial_rps, 1),
                "ratio": round(m.rate / self.trivial_rps, 3) if self.trivial_rps else None,
                "double_matches": self.double_matches, "jobs": len(QUEUES) * JOBS_PER_QUEUE,
                "task_queues": len(QUEUES), "pilots": PILOTS, "window_s": round(m.seconds, 2),
                "matches_in_window": m.count, "window_ended_early": m.ended_early,
                "matched_total": len(self.answered), "requirement_violations": self.violations,
                "no_match_answers": self.no_match, "errors": len(self.errors),
                "ping_rps_before_after": [round(self.ping_before.rate, 1), round(self.ping_after.rate, 1)],
                "server_cpu_matching": None if m.server_cpu is None else round(m.server_cpu, 2),
                "verified": not self.problems}


def submit_all(pki: W.PKI, port: int) -> dict[int, int]:
    """Submit every queue's jobs as the user; JobID -> queue index."""
    manager = W.client(pki, port, "JobManager", timeout=600)
    queue_of = {}
    for start in range(0, len(QUEUES), SUBMIT_BATCH):
        batch = QUEUES[start:start + SUBMIT_BATCH]
        ids = manager.submitJobs([q.jdl() for q in batch])
        if len(ids) != len(batch) * JOBS_PER_QUEUE:
            raise RuntimeError(f"submitJobs made {len(ids)} jobs, not {len(batch) * JOBS_PER_QUEUE}")
        for n, job_id in enumerate(ids):   # in the order of the JDLs, 100 per JDL
            queue_of[job_id] = start + n // JOBS_PER_QUEUE
    manager.close()
    return queue_of


async def measure(pki: W.PKI, port: int, pids: tuple[int | None, int | None]
                  ) -> tuple[W.Window, W.Window, W.Window, list[tuple[int, int]], int]:
    conns = await W.Connections.open(port, PILOTS, pki.pilot_tls())
    ping = [W.request(port, "Configuration/Server", "ping", [], host_credentials=True)] * PILOTS
    match = [W.request(port, "WorkloadManagement/Matcher", "requestJob", [pilot_description(n)],
                       host_credentials=True) for n in range(PILOTS)]
    answered: list[tuple[int, int]] = []
    per_site: collections.Counter[str] = collections.Counter()
    site_jobs = len(QUEUES) // len(SITES) * JOBS_PER_QUEUE
    no_match = 0

    def on_match(pilot: int, body: bytes) -> bool:
        nonlocal no_match
        value = jencode.loads(body)["Value"]
        if value is None:
            no_match += 1
            return False
        answered.append((pilot, value["JobID"]))
        per_site[SITES[pilot % len(SITES)]] += 1
        return True

    def site_dry() -> bool:
        return bool(per_site) and per_site.most_common(1)[0][1] >= SITE_DRY * site_jobs

    try:
        before = await conns.measure(ping, PING_WARMUP_S, PING_S, pids)
        matching = await conns.measure(match, MATCH_WARMUP_S, MATCH_MAX_S, pids, on_match, site_dry)
        after = await conns.measure(ping, PING_WARMUP_S, PING_S, pids)
    finally:
        conns.close()
    return before, matching, after, answered, no_match


def run(backend: str, server_cpu: int | None) -> Run:
    db_pid = W.db_server_pid() if backend == "mysql" else None
    total = len(QUEUES) * JOBS_PER_QUEUE
    with tempfile.TemporaryDirectory(prefix="vmdirac-bench-matcher-") as tmp, \
            W.database(Path(tmp), backend) as url:
        pki = W.make_pki(Path(tmp))
        with W.server_process(W.ServerSpec(tmp, url, total, server_cpu)) as (port, pid):
            t0 = time.perf_counter()
            queue_of = submit_all(pki, port)
            setup_s = time.perf_counter() - t0
            monitor = W.client(pki, port, "JobMonitoring")
            problems = []
            if (stats := monitor.getJobStats("Status", {})) != {"Waiting": total}:
                problems.append(f"before matching: {stats}, not {{'Waiting': {total}}}")
            engine = sqlalchemy.create_engine(url)
            with engine.connect() as conn:
                if (n := conn.exec_driver_sql("SELECT COUNT(*) FROM tq_TaskQueues").scalar_one()) != len(QUEUES):
                    problems.append(f"{n} task queues, not {len(QUEUES)}")
            engine.dispose()
            before, matching, after, answered, no_match = asyncio.run(measure(pki, port, (pid, db_pid)))
            stats = monitor.getJobStats("Status", {})
            monitor.close()
    distinct = len({job for _p, job in answered})
    if stats != {"Matched": distinct, "Waiting": total - distinct}:
        problems.append(f"after matching: {stats}, not Matched {distinct} / Waiting {total - distinct}")
    resources = [ResourceDescription.from_wire(pilot_description(n)) for n in range(PILOTS)]
    requirements = [q.requirements() for q in QUEUES]
    violations = sum(1 for pilot, job in answered
                     if job not in queue_of or not matches(requirements[queue_of[job]], resources[pilot]))
    return Run(backend, setup_s, before, matching, after, answered, no_match, violations, problems)


def report(runs: list[Run], server_cpu: int | None) -> None:
    def cpu(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    print(f"Matcher.requestJob beside Configuration/Server.ping: {PILOTS} pilots (keep-alive HTTPS, GenericPilot "
          f"host certificate), {len(QUEUES) * JOBS_PER_QUEUE} waiting jobs in {len(QUEUES)} task queues, "
          f"{len(SITES)} sites; {W.pinning_note(server_cpu)}")
    print(f"matching: {MATCH_WARMUP_S:.0f} s warm-up, then at most {MATCH_MAX_S:.0f} s, closed early when a site "
          f"has given {SITE_DRY:.0%} of its jobs; ping: {PING_WARMUP_S:.0f} s + {PING_S:.0f} s before and after")
    print(f"{'backend':<7} {'submit s':>8} {'ping rps':>9} {'(before/after)':>15} {'matches/s':>9} {'ratio':>6} "
          f"{'window s':>9} {'matched':>8} {'double':>6} {'wrong':>5} {'errors':>6} "
          f"{'server CPU ping/match/ping':>21} {'DB CPU':>6} {'loadgen CPU':>11}")
    for r in runs:
        m = r.matching
        pings = f"({r.ping_before.rate:.0f}/{r.ping_after.rate:.0f})"
        window = f"{m.seconds:.1f}{'*' if m.ended_early else ''}"
        print(f"{r.backend:<7} {r.setup_s:>8.1f} {r.trivial_rps:>9.0f} {pings:>15} {m.rate:>9.0f} "
              f"{m.rate / r.trivial_rps:>6.2f} {window:>9} {len(r.answered):>8} {r.double_matches:>6} "
              f"{r.violations:>5} {len(r.errors):>6} "
              f"{cpu(r.ping_before.server_cpu) + '/' + cpu(m.server_cpu) + '/' + cpu(r.ping_after.server_cpu):>21} "
              f"{cpu(m.db_cpu):>6} "
              f"{cpu(m.client_cpu):>11}")
    starved = [f"{r.backend} ping {when}" for r in runs for when, w in (("before", r.ping_before), ("after", r.ping_after))
               if w.server_cpu is not None and w.server_cpu < 0.85]
    if starved:
        print(f"warning: the server had less than 0.85 of its core during {', '.join(starved)}: other load on "
              "this machine; the trivial rate is unreliable, run again on a quiet machine")
    if any(r.matching.ended_early for r in runs):
        print("* the window closed early: a site had given 90% of its jobs")
    for r in runs:
        for e in r.errors[:3]:
            print(f"  {r.backend} error: {e}")
        for p in r.problems:
            print(f"  {r.backend} CHECK FAILED: {p}")
        if r.no_match:
            print(f"  {r.backend}: {r.no_match} 'no match' answers (queues running dry)")
        ratio = r.matching.rate / r.trivial_rps if r.trivial_rps else 0
        print(f"goal (issue), {r.backend}: matches/s >= half the trivial RPC rate: "
              f"{'met' if ratio >= 0.5 else 'MISSED'} ({ratio:.0%})")


def main() -> int:
    server_cpu = W.pin_self()
    runs = [run(backend, server_cpu) for backend in W.backends()]
    report(runs, server_cpu)
    first, *others = runs
    print(json.dumps({**first.figures(), **{r.backend: r.figures() for r in others}}))
    return 0 if all(not r.problems and not r.double_matches and not r.violations for r in runs) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
