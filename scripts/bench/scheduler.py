"""One VirtualMachineScheduler cycle with 10,000 instances, 100 pods and 1,000 task queues.

In-process, against a fresh database (SQLite in a throw-away directory, or a fresh database on
``VMDIRAC_MYSQL_URL``'s server): the configuration has 100 running pods (10 VOs, each pod on 3
of 40 cloud endpoints of 20 sites), the DB 10,000 alive instances of those pods (mostly Running,
some booting, stopping or stalled) and 1,000 task queues with 1 to 20 waiting jobs each (some
with sites, banned sites, platforms or tags, so the matching rule has work to do).

Every endpoint's ``MaxInstances`` is exactly its alive instances: the pods want VMs, but the
caps are full, so a cycle decides everything and boots nothing (the act's per-VM cost, a
credential with a fresh RSA key and the DB writes, is measured apart with a driver that does
nothing). Timed: the whole cycle (``execute()``: sync the pods to the DB, gather, decide), and
its parts; several cycles, median; statements sent to the DB per cycle are counted.

The data go in with bulk inserts through the DB classes' tables: ``VirtualMachineDB.new_instance``
(three statements and a transaction per instance) is measured on a few hundred instances and
the time it would take for 10,000 is printed.

Run: ``.venv/bin/python scripts/bench/scheduler.py`` (``--profile`` prints a cProfile of one
cycle; it is printed anyway when the cycle misses the goal). The last line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import event, insert

sys.path.insert(0, str(Path(__file__).parent))
import rpc  # noqa: E402  (its database() helper: SQLite or a fresh MySQL database)

from vmdirac.agents import vm_scheduler as S  # noqa: E402
from vmdirac.core import x509 as X  # noqa: E402
from vmdirac.core.db import utcnow  # noqa: E402
from vmdirac.core.launcher import LocalOptions, Paths, make_context  # noqa: E402
from vmdirac.db import task_queue_db as T  # noqa: E402
from vmdirac.db.virtual_machine_db import history, instance_name, instances  # noqa: E402
from vmdirac.drivers.base import Driver, Limits, Node, NodeState  # noqa: E402
from vmdirac.vm import config as vmconfig  # noqa: E402
from vmdirac.vm.allocation import decide  # noqa: E402
from vmdirac.vm.instance_status import ALIVE  # noqa: E402

INSTANCES, PODS, TASK_QUEUES = 10_000, 100, 1_000
VOS, SITES, ENDPOINTS_PER_SITE, ENDPOINTS_PER_POD = 10, 20, 2, 3
CYCLES, GOAL_S = 7, 2.0
HOST_DN = "/O=vmdirac/OU=hosts/CN=localhost"
STATUS_MIX = [("Running", 80), ("Submitted", 6), ("New", 2), ("Stopping", 7), ("Stalled", 5)]


def tree(seed: int = 1) -> dict:
    rnd = random.Random(seed)
    groups = {f"pilot_vo{v}": {"VO": f"vo{v}", "Properties": ["GenericPilot"]} for v in range(VOS)}
    groups.update({f"user_vo{v}": {"VO": f"vo{v}", "Properties": ["NormalUser"]} for v in range(VOS)})
    sites = {}
    for s in range(SITES):
        sites[f"CLOUD.Site{s}.org"] = {"Cloud": {f"ep{e}": {
            "Type": "local", "MaxInstances": 0,     # set to the alive count once instances exist
            "Priority": rnd.randint(1, 3),
            "Images": {"img": {"Cores": rnd.choice([1, 2, 4, 8]), "RAM": 4096 * rnd.choice([1, 2, 4]),
                               "Platform": rnd.choice(["EL9", "EL9", "EL8"]),
                               "Tags": rnd.sample(["GPU", "SSD", "HighMem"], rnd.randint(0, 1))}}}
            for e in range(ENDPOINTS_PER_SITE)}}
    names = [f"CLOUD.Site{s}.org/ep{e}" for s in range(SITES) for e in range(ENDPOINTS_PER_SITE)]
    pods = {f"pod{p:03d}": {"Image": "img", "Endpoints": rnd.sample(names, ENDPOINTS_PER_POD),
                            "PilotGroup": f"pilot_vo{p % VOS}", "MaxInstances": 200, "MaxBootsPerCycle": 5,
                            "CPUPerInstance": rnd.choice([0, 0, 3600, 86400])}
            for p in range(PODS)}
    return {
        "Registry": {"DefaultVO": "vo0", "Groups": groups,
                     "Hosts": {"localhost": {"DN": HOST_DN, "Properties": ["TrustedHost", "GenericPilot",
                                                                            "VmRpcOperation"]}}},
        "Resources": {"Sites": sites},
        "Operations": {"Defaults": {"VirtualMachines": {"RunningPods": pods}}},
        "Systems": {"WorkloadManagement": {
            "Agents": {"VirtualMachineScheduler": {"PollingTime": 60}},
            "URLs": {s: f"https://localhost:8443/WorkloadManagement/{s}" for s in (
                "JobManager", "JobMonitoring", "JobStateUpdate", "Matcher", "SandboxStore", "VirtualMachineManager")}}},
    }


def fill_instances(engine, pod_endpoints: dict[str, tuple[str, ...]], seed: int = 2) -> dict[str, int]:
    """10,000 alive instances (one history row each), in bulk; returns alive per endpoint."""
    rnd = random.Random(seed)
    now = utcnow()
    statuses = [s for s, w in STATUS_MIX for _ in range(w)]
    rows, hist, per_endpoint = [], [], {}
    pods = sorted(pod_endpoints)
    for n in range(1, INSTANCES + 1):
        pod = pods[(n - 1) % len(pods)]
        endpoint = rnd.choice(pod_endpoints[pod])
        status = rnd.choice(statuses)
        per_endpoint[endpoint] = per_endpoint.get(endpoint, 0) + 1
        rows.append({"InstanceID": n, "Name": instance_name(pod, n), "Pod": pod, "VO": f"vo{pods.index(pod) % VOS}",
                     "Image": "img", "Endpoint": endpoint, "Site": endpoint.split("/")[0],
                     "EndpointVMID": "" if status == "New" else uuid.uuid4().hex, "Status": status,
                     "Load": round(rnd.random(), 3), "Jobs": rnd.randint(0, 1) if status == "Running" else 0,
                     "Created": now, "LastUpdate": now, "Started": now if status != "New" else None})
        hist.append({"InstanceID": n, "Time": now, "Status": status, "Reason": "bench"})
    with engine.begin() as conn:
        for i in range(0, len(rows), 2000):
            conn.execute(insert(instances), rows[i:i + 2000])
            conn.execute(insert(history), hist[i:i + 2000])
    return per_endpoint


def fill_task_queues(engine, seed: int = 3) -> int:
    """1,000 task queues over the VOs, 1 to 20 waiting jobs each; returns the jobs."""
    rnd = random.Random(seed)
    site_names = [f"CLOUD.Site{s}.org" for s in range(SITES)]
    queues, jobs, multi = [], [], {name: [] for name in T._MULTI}
    job_id = 0
    for q in range(1, TASK_QUEUES + 1):
        vo = q % VOS
        queues.append({"TQId": q, "ReqKey": uuid.uuid4().hex, "Owner": f"user{q % 37}", "OwnerGroup": f"user_vo{vo}",
                       "VO": f"vo{vo}", "CPUTime": rnd.choice([360, 1800, 3600, 21600, 86400]),
                       "Priority": rnd.uniform(0.1, 10), "Enabled": True})
        if rnd.random() < 0.3:
            multi["sites"] += [{"TQId": q, "Value": s} for s in rnd.sample(site_names, rnd.randint(1, 3))]
        elif rnd.random() < 0.1:
            multi["banned_sites"] += [{"TQId": q, "Value": rnd.choice(site_names)}]
        if rnd.random() < 0.5:
            multi["platforms"] += [{"TQId": q, "Value": rnd.choice(["EL9", "EL8"])}]
        if rnd.random() < 0.2:
            multi["tags"] += [{"TQId": q, "Value": t} for t in rnd.sample(["GPU", "2Processors", "MultiProcessor",
                                                                           "8GB"], rnd.randint(1, 2))]
        for _ in range(rnd.randint(1, 20)):
            job_id += 1
            jobs.append({"TQId": q, "JobID": job_id, "Priority": 1})
    with engine.begin() as conn:
        conn.execute(insert(T.task_queues), queues)
        for name, rows in multi.items():
            if rows:
                conn.execute(insert(T._MULTI[name]), rows)
        for i in range(0, len(jobs), 5000):
            conn.execute(insert(T.tq_jobs), jobs[i:i + 5000])
    return job_id


class NullDriver(Driver):
    """A cloud that accepts every boot at once and runs nothing."""

    def boot(self, request) -> Node:
        return Node(vm_id=uuid.uuid4().hex, name=request.instance_name, state=NodeState.RUNNING, public_ips=(),
                    private_ips=("10.0.0.1",), tags=dict(request.tags))

    def status(self, vm_id: str) -> Node:
        raise NotImplementedError

    def terminate(self, vm_id: str) -> None:
        pass

    def list_nodes(self) -> list[Node]:
        return []

    def limits(self) -> Limits:
        return Limits(max_instances=0, used_instances=0)


@contextlib.contextmanager
def counting(engine):
    counter = {"n": 0}

    def count(*_args, **_kw):
        counter["n"] += 1

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield counter
    finally:
        event.remove(engine, "before_cursor_execute", count)


def make_pki(d: Path) -> dict[str, str]:
    ca_dir = d / "certificates"
    ca_dir.mkdir(parents=True)
    ca, ca_key = X.make_ca("/O=vmdirac/CN=vmdirac bench CA")
    (ca_dir / "ca.pem").write_bytes(X.cert_pem(ca))
    cert, key = X.make_certificate(ca, ca_key, HOST_DN, host_names=["localhost", "127.0.0.1"])
    (d / "hostcert.pem").write_bytes(X.cert_pem(cert))
    X.write_private(d / "hostkey.pem", X.key_pem(key))
    return {"ca": str(ca_dir), "cert": str(d / "hostcert.pem"), "key": str(d / "hostkey.pem")}


def profile_cycle(agent) -> str:
    prof = cProfile.Profile()
    prof.enable()
    agent.execute()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(18)
    return out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description="one VM scheduler cycle: 10,000 instances, 100 pods, 1,000 queues")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one cycle")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="vmdirac-schedbench-"))
    pki = make_pki(work / "pki")
    with rpc.database(work) as (backend, url):
        cfg = tree()
        local = LocalOptions(DatabaseURL=url, HostCert=pki["cert"], HostKey=pki["key"], CACertificates=pki["ca"])
        context = make_context(cfg, local, Paths(work / "root"))
        engine = context.engine
        agent = S.VirtualMachineScheduler(context)
        agent.initialize()
        snap = context.config.current
        pods = vmconfig.pods(snap)
        agent.vmdb.sync_pods(pods, vmconfig.endpoints(snap))

        # new_instance, one by one, on a scratch pod: what 10,000 would cost that way.
        sample = 300
        t0 = time.perf_counter()
        for _ in range(sample):
            agent.vmdb.new_instance("pod000", "img", "CLOUD.Site0.org/ep0", "CLOUD.Site0.org")
        per_new = (time.perf_counter() - t0) / sample
        with engine.begin() as conn:
            conn.execute(history.delete())
            conn.execute(instances.delete())

        t0 = time.perf_counter()
        per_endpoint = fill_instances(engine, {n: p.options.Endpoints for n, p in pods.items()})
        jobs = fill_task_queues(engine)
        fill_s = time.perf_counter() - t0

        # Caps full: every endpoint's MaxInstances is its alive count (a new configuration version).
        for site, section in cfg["Resources"]["Sites"].items():
            for ep, opts in section["Cloud"].items():
                opts["MaxInstances"] = per_endpoint.get(f"{site}/{ep}", 0)
        context = make_context(cfg, local, Paths(work / "root"))
        agent.context = context
        snap = context.config.current
        assert len(agent.vmdb.instances(statuses=sorted(ALIVE))) == INSTANCES

        # Warm-up (statement compilation, caches), then the cycles.
        agent.execute()
        rows = []
        for _ in range(CYCLES):
            snap = context.config.current
            t0 = time.perf_counter()
            agent.vmdb.sync_pods(vmconfig.pods(snap), vmconfig.endpoints(snap))
            t1 = time.perf_counter()
            with counting(engine) as gather_q:
                demands, capacity, _pods, _eps = agent.gather(snap)
            t2 = time.perf_counter()
            boots = decide(demands, capacity)
            t3 = time.perf_counter()
            with counting(engine) as cycle_q:
                c0 = time.perf_counter()
                agent.execute()
                cycle = time.perf_counter() - c0
            rows.append({"sync": t1 - t0, "gather": t2 - t1, "decide": t3 - t2, "cycle": cycle,
                         "gather_q": gather_q["n"], "cycle_q": cycle_q["n"], "boots": len(boots)})
        wanted = sum(1 for d in demands if d.waiting_jobs)

        # The act, per VM, with a driver that does nothing: room on one endpoint, one pod.
        pod = pods["pod000"]
        endpoint = vmconfig.endpoints(snap)[pod.options.Endpoints[0]]
        agent.drivers[endpoint.name] = NullDriver(endpoint, agent.vmdb.deployment_id(), work / "null")
        acts = []
        for _ in range(5):
            t0 = time.perf_counter()
            agent.boot(S.Boot(pod.name, endpoint.name), pod, endpoint, snap)
            acts.append(time.perf_counter() - t0)

        profile = profile_cycle(agent) if (args.profile or statistics.median(r["cycle"] for r in rows) > GOAL_S) else ""
        engine.dispose()
    shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(r[k] for r in rows) for k in ("sync", "gather", "decide", "cycle")}
    print(f"VM scheduler cycle, {backend}: {INSTANCES} alive instances, {PODS} pods on {SITES * ENDPOINTS_PER_SITE} "
          f"endpoints ({ENDPOINTS_PER_POD} each), {TASK_QUEUES} task queues with {jobs} waiting jobs")
    print(f"  (data inserted in bulk in {fill_s:.1f} s; VirtualMachineDB.new_instance: {per_new * 1000:.1f} ms each, "
          f"{per_new * INSTANCES:.0f} s for {INSTANCES})")
    print(f"{'part':<34} {'median s':>9} {'min s':>8} {'max s':>8}")
    for key, label in (("sync", "sync_pods (100 pods, images)"), ("gather", "gather (queues, instances)"),
                       ("decide", "decide (pure)"), ("cycle", "whole cycle: execute()")):
        values = [r[key] for r in rows]
        print(f"{label:<34} {med[key]:>9.3f} {min(values):>8.3f} {max(values):>8.3f}")
    print(f"{'statements to the DB: gather':<34} {rows[-1]['gather_q']:>9d}   whole cycle {rows[-1]['cycle_q']}")
    print(f"{'pods with waiting work they can run':<34} {wanted:>9d}   boots decided (caps full): {rows[-1]['boots']}")
    print(f"{'act per VM (null driver)':<34} {statistics.median(acts):>9.3f}   (credential with a new RSA key, "
          f"DB writes, user data)")
    print(f"goal: cycle under {GOAL_S:g} s -> {'met' if med['cycle'] < GOAL_S else 'MISSED'}")
    if profile:
        print(profile)
    print(json.dumps({"instances": INSTANCES, "pods": PODS, "task_queues": TASK_QUEUES,
                      "cycle_s": round(med["cycle"], 4), "gather_s": round(med["gather"], 4),
                      "decide_s": round(med["decide"], 5), "sync_pods_s": round(med["sync"], 4),
                      "statements_per_cycle": rows[-1]["cycle_q"], "act_per_vm_s": round(statistics.median(acts), 4),
                      "new_instance_s": round(per_new, 5), "backend": backend}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
