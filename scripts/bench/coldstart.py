"""Cold start: from ``submitJob`` to ``Running`` with no VM up, on the local cloud.

Starts, in a throw-away directory: a CA and credentials, ``vmdirac-server`` as a child process
with every WMS service, the VirtualMachineManager and the VM agents (SQLite, or a fresh
database on ``VMDIRAC_MYSQL_URL``), and one pod on the ``local`` cloud (1-core VMs, a short
``HaltPeriod``). Each round, with no VM alive: ``submitJob``, then ``getJobsStates`` and
``getInstances`` every 50 ms until the job is ``Running``; the payload waits for a release file,
so it is caught Running. Then it is released, and the next round waits until the job is Done,
its VM Halted and every process of the VM gone. The first round is a warm-up (not counted).

What a cold start is made of (first seen by the client's polls, 50 ms resolution): the scheduler
recording the VM (``New``: the submission wakes it at once), the local driver's boot
(``Submitted``: includes the VM's credential, an RSA key made for it), the VM's init and its
monitor declaring itself (``Running``), then the pilot started by the monitor asking the Matcher
and starting the job (job ``Running``).

Run: ``.venv/bin/python scripts/bench/coldstart.py`` (``--rounds N``, default 8). The last line
is JSON: ``median_s`` (and ``p95_s``, ``min_s``, ``max_s``, the phases' medians).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
import latency  # noqa: E402  (its make_pki and database helpers)

from vmdirac.core.client import ClientCredentials, RPCClient  # noqa: E402
from vmdirac.drivers.local_vm import vm_processes  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SITE, CLOUD, POD = "CLOUD.Local.org", "local", "coldstart"
ENDPOINT = f"{SITE}/{CLOUD}"
SERVICES = ("JobManager", "JobMonitoring", "JobStateUpdate", "Matcher", "SandboxStore", "VirtualMachineManager")
POLL = 0.05
ALIVE = ("New", "Submitted", "Wait_ssh_context", "Contextualizing", "Running", "Stopping", "Stalled")
PHASES = (("vm_recorded", "VM recorded (New)"), ("vm_submitted", "VM booted by the driver (Submitted)"),
          ("vm_running", "VM monitor declared (Running)"), ("job_running", "job Running (pilot matched it)"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_tree(port: int, pki: dict, db_url: str) -> dict:
    base = f"https://localhost:{port}"
    return {
        "Registry": {
            "DefaultVO": "bench", "DefaultGroup": "bench_user",
            "Groups": {"bench_user": {"VO": "bench", "Properties": ["NormalUser"]},
                       "bench_pilot": {"VO": "bench", "Properties": ["GenericPilot"]}},
            "Users": {"bench": {"DN": latency.USER_DN, "Groups": ["bench_user"]}},
            # The server's host certificate is also the pilot identity the VMs' credentials derive from.
            "Hosts": {"localhost": {"DN": latency.HOST_DN,
                                    "Properties": ["TrustedHost", "GenericPilot", "VmRpcOperation"]}},
        },
        "Resources": {"Sites": {SITE: {"Cloud": {CLOUD: {
            "Type": "local", "MaxInstances": 4, "Images": {"el9": {"Cores": 1, "RAM": 2048}}}}}}},
        "Operations": {"Defaults": {"VirtualMachines": {"RunningPods": {POD: {
            "Image": "el9", "Endpoints": [ENDPOINT], "PilotGroup": "bench_pilot", "MaxInstances": 2,
            "MaxBootsPerCycle": 2, "HeartBeatPeriod": 1, "HaltPeriod": 2, "MinWorkingLoad": 0.9,
            "LoadAverageTimespan": 1, "PilotOptions": {"HeartbeatPeriod": 5},
            "MonitorOptions": {"Tick": 0.2}}}}}},
        "Systems": {
            "Configuration": {"Services": {"Server": {}}, "URLs": {"Server": [f"{base}/Configuration/Server"]}},
            "WorkloadManagement": {
                "Services": {s: {} for s in SERVICES},
                # The scheduler is woken by the submission itself: its polling period plays no part.
                "Agents": {"VirtualMachineScheduler": {"PollingTime": 60},
                           "VirtualMachineReconciler": {"PollingTime": 30}},
                "URLs": {s: [f"{base}/WorkloadManagement/{s}"] for s in SERVICES}},
        },
        "Local": {"DatabaseURL": db_url, "HostCert": pki["host"], "HostKey": pki["hostkey"],
                  "CACertificates": pki["ca"], "Host": "127.0.0.1", "LogLevel": "WARNING"},
    }


def start_server(work: Path, tree: dict, port: int) -> subprocess.Popen:
    config = work / "server.yaml"
    config.write_text(yaml.safe_dump(tree))
    env = {k: v for k, v in os.environ.items() if k != "VMDIRAC_DB_URL"}
    proc = subprocess.Popen([str(BIN / "vmdirac-server"), "--root", str(work / "server"), "-c", str(config),
                             "--port", str(port)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.search(r"serving .* on https://", line):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc
    raise RuntimeError("the server did not start:\n" + "".join(seen))


def vm_leftovers(work: Path) -> dict[str, list[int]]:
    out = {}
    for path in (work / "server" / "clouds").glob("*/*/node.json"):
        try:
            node = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        procs = vm_processes(node.get("pgid") or -1, node["vm_id"])
        if procs:
            out[node["vm_id"]] = [p.pid for p in procs]
    return out


def wait(predicate, timeout: float, what: str, every: float = POLL):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
    return value


def one_round(manager, monitoring, vmm, release: Path) -> dict[str, float]:
    def alive() -> list[list]:
        page = vmm.getInstances({"Status": list(ALIVE)}, None, 0, 100)
        return [dict(zip(page["ParameterNames"], r)) for r in page["Records"]]

    if alive():
        raise RuntimeError("a VM is still alive at the start of a round")
    script = f"while [ ! -e {release}/$DIRACJOBID ]; do sleep 0.02; done"
    jdl = f'[ Executable = "/bin/sh"; Arguments = "-c \'{script}\'"; JobName = "coldstart"; CPUTime = 300; ]'
    seen: dict[str, float] = {}
    start = time.perf_counter()
    job_id = manager.submitJob(jdl)
    deadline = time.monotonic() + 120
    while True:
        now = time.perf_counter() - start
        status = monitoring.getJobsStates([job_id])[str(job_id)]["Status"]
        if status in ("Running", "Done", "Failed"):
            if status != "Running":
                raise RuntimeError(f"job {job_id} is {status}, not Running")
            seen["job_running"] = now
            break
        statuses = {r["Status"] for r in alive()}
        if statuses:
            seen.setdefault("vm_recorded", now)
        if statuses & {"Submitted", "Running"}:
            seen.setdefault("vm_submitted", now)
        if "Running" in statuses:
            seen.setdefault("vm_running", now)
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} not Running after 120 s ({status})")
        time.sleep(POLL)
    (release / str(job_id)).touch()
    wait(lambda: monitoring.getJobsStates([job_id])[str(job_id)]["Status"] == "Done", 60, f"job {job_id} Done")
    wait(lambda: not alive(), 90, "every VM Halted")
    return seen


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


def main() -> int:
    ap = argparse.ArgumentParser(description="submit -> Running with no VM up, local cloud")
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmdirac-coldstart-"))
    pki = latency.make_pki(work / "pki")
    db_url, drop = latency.database(work)
    backend = "mysql" if db_url.startswith("mysql") else "sqlite"
    port = free_port()
    server = start_server(work, server_tree(port, pki, db_url), port)
    user = ClientCredentials(pki["proxy"], None, pki["ca"])
    url = f"https://localhost:{port}/WorkloadManagement/"
    manager = RPCClient("WorkloadManagement/JobManager", user, urls=[url + "JobManager"])
    monitoring = RPCClient("WorkloadManagement/JobMonitoring", user, urls=[url + "JobMonitoring"])
    vmm = RPCClient("WorkloadManagement/VirtualMachineManager", user, urls=[url + "VirtualMachineManager"])
    release = work / "release"
    release.mkdir()
    rounds: list[dict[str, float]] = []
    try:
        for n in range(args.rounds + 1):
            seen = one_round(manager, monitoring, vmm, release)
            if n:      # round 0 warms up
                rounds.append(seen)
            print(f"  round {n}{' (warm-up)' if not n else ''}: job Running after {seen['job_running']:.2f} s",
                  file=sys.stderr, flush=True)
        wait(lambda: not vm_leftovers(work), 30, "every VM process to end")
    finally:
        for client in (manager, monitoring, vmm):
            client.close()
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait()
        for pids in vm_leftovers(work).values():    # a bench leaves nothing running
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        drop()
        shutil.rmtree(work, ignore_errors=True)
    totals = [r["job_running"] for r in rounds]
    print(f"submit -> Running with no VM up, local cloud, {backend}, {len(rounds)} rounds "
          f"(+1 warm-up); client polls every {POLL * 1000:.0f} ms; server exit code {code}")
    print(f"{'first seen, s after submitJob':<40} {'median':>7} {'min':>7} {'max':>7}")
    medians = {}
    for key, label in PHASES:
        values = [r[key] for r in rounds if key in r]
        if values:
            medians[key] = statistics.median(values)
            print(f"{label:<40} {medians[key]:>7.2f} {min(values):>7.2f} {max(values):>7.2f}")
    print(f"{'submit -> Running: p95':<40} {p95(totals):>7.2f}")
    print(json.dumps({"median_s": round(statistics.median(totals), 3), "p95_s": round(p95(totals), 3),
                      "min_s": round(min(totals), 3), "max_s": round(max(totals), 3), "rounds": len(totals),
                      "backend": backend, **{f"{k}_s": round(v, 3) for k, v in medians.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
