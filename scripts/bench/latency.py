"""Latency from ``submitJob`` to ``Running`` with an idle pilot waiting.

Starts everything in a throw-away directory: a local CA and credentials, ``vmdirac-server``
(SQLite, or a fresh database on ``VMDIRAC_MYSQL_URL``), and one ``dirac-pilot`` process with one
slot. For each job: a random pause (so submissions fall anywhere in the pilot's waiting cycle, as
real ones do), ``submitJob``, then ``getJobsStates`` every 5 ms until the job is ``Running``
(the pilot's first report, ``Running / Downloading Inputs``). The payload waits for a release
file, so the job is caught Running; then it is released and the next job waits until this one is
Done. Measured twice: the pilot's default (long polls, ``MatchWait`` 10 s: the Matcher answers
when a fitting job arrives) and plain polling every 0.5 s (``MatchWait`` 0: what a Matcher without
long polls gives). Figures are client-side wall-clock times, submit call included.

Run: ``.venv/bin/python scripts/bench/latency.py`` (``--jobs N`` to change the 100). The last line
is JSON: ``median_s`` and ``p95_s`` of the default mode, plus the polling figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy
import yaml

from vmdirac.core import x509 as X
from vmdirac.core.client import ClientCredentials, RPCClient

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
USER_DN = "/O=vmdirac/OU=users/CN=bench"
HOST_DN = "/O=vmdirac/OU=hosts/CN=localhost"
PILOT_DN = "/O=vmdirac/OU=hosts/CN=pilot.bench"
SERVICES = ("JobManager", "JobMonitoring", "JobStateUpdate", "Matcher", "SandboxStore")
MODES = (("long poll (MatchWait 10 s)", ["--match-wait", "10"], 0.3),
         ("polling every 0.5 s (MatchWait 0)", ["--match-wait", "0", "--polling-interval", "0.5"], 0.7))
WARMUP = 3


def make_pki(d: Path) -> dict[str, str]:
    ca_dir = d / "certificates"
    ca_dir.mkdir(parents=True)
    ca, ca_key = X.make_ca("/O=vmdirac/CN=vmdirac bench CA")
    (ca_dir / "ca.pem").write_bytes(X.cert_pem(ca))
    paths = {"ca": str(ca_dir)}
    for name, dn, hosts in (("host", HOST_DN, ["localhost", "127.0.0.1"]), ("pilot", PILOT_DN, ["pilot.bench"]),
                            ("user", USER_DN, None)):
        cert, key = X.make_certificate(ca, ca_key, dn, host_names=hosts)
        (d / f"{name}cert.pem").write_bytes(X.cert_pem(cert))
        X.write_private(d / f"{name}key.pem", X.key_pem(key))
        paths[name] = str(d / f"{name}cert.pem")
        paths[f"{name}key"] = str(d / f"{name}key.pem")
        if name == "user":
            _p, pkey, chain = X.make_proxy([cert], key, 12, group="bench_user")
            X.write_private(d / "proxy", X.proxy_pem(chain, pkey))
            paths["proxy"] = str(d / "proxy")
    return paths


def database(d: Path) -> tuple[str, callable]:
    server_url = os.environ.get("VMDIRAC_MYSQL_URL", "")
    if not server_url:
        return f"sqlite:///{d / 'vmdirac.sqlite'}", lambda: None
    name = f"vmdirac_bench_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(server_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")

    def drop() -> None:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()

    url = sqlalchemy.engine.make_url(server_url).set(database=name)
    return url.render_as_string(hide_password=False), drop


def start_server(d: Path, pki: dict, db_url: str) -> tuple[subprocess.Popen, int]:
    tree = {
        "Registry": {
            "DefaultVO": "bench", "DefaultGroup": "bench_user",
            "Groups": {"bench_user": {"VO": "bench", "Properties": ["NormalUser"]}},
            "Users": {"bench": {"DN": USER_DN, "Groups": ["bench_user"]}},
            "Hosts": {"localhost": {"DN": HOST_DN, "Properties": ["TrustedHost"]},
                      "pilot.bench": {"DN": PILOT_DN, "Properties": ["GenericPilot"]}},
        },
        "Systems": {"Configuration": {"Services": {"Server": {}}},
                    "WorkloadManagement": {"Services": {s: {} for s in SERVICES}}},
        "Local": {"DatabaseURL": db_url, "HostCert": pki["host"], "HostKey": pki["hostkey"],
                  "CACertificates": pki["ca"], "Host": "127.0.0.1", "LogLevel": "WARNING"},
    }
    config = d / "server.yaml"
    config.write_text(yaml.safe_dump(tree))
    env = {k: v for k, v in os.environ.items() if k != "VMDIRAC_DB_URL"}
    proc = subprocess.Popen([str(BIN / "vmdirac-server"), "--root", str(d / "server"), "-c", str(config),
                             "--port", "0", "--no-agents", "--log-level", "WARNING"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        found = re.search(r"serving .* on https://[^:]+:(\d+)", line)
        if found:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, int(found.group(1))
    raise RuntimeError("the server did not start:\n" + "".join(seen))


def start_pilot(d: Path, pki: dict, port: int, name: str, extra: list[str]) -> tuple[subprocess.Popen, Path]:
    stop = d / f"{name}.stop"
    argv = [str(BIN / "dirac-pilot"), "--url", f"https://localhost:{port}", "--cert", pki["pilot"],
            "--key", pki["pilotkey"], "--ca", pki["ca"], "--slots", "1", "--site", "LCG.Bench.org",
            "--work-dir", str(d / name), "--stop-file", str(stop), "--heartbeat-period", "30",
            "--log-level", "WARNING", "--log-file", str(d / f"{name}.log"), *extra]
    return subprocess.Popen(argv, cwd=d), stop


def measure(jobs: int, release: Path, user: ClientCredentials, port: int, pause_max: float) -> list[float]:
    url = f"https://localhost:{port}/WorkloadManagement/"
    manager = RPCClient("WorkloadManagement/JobManager", user, urls=[url + "JobManager"])
    monitor = RPCClient("WorkloadManagement/JobMonitoring", user, urls=[url + "JobMonitoring"])
    script = f"while [ ! -e {release}/$DIRACJOBID ]; do sleep 0.01; done"
    jdl = f'[ Executable = "/bin/sh"; Arguments = "-c \'{script}\'"; JobName = "latency"; CPUTime = 300; ]'

    def state(job_id: int) -> str:
        return monitor.getJobsStates([job_id])[str(job_id)]["Status"]

    def wait(job_id: int, wanted: set[str], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while (status := state(job_id)) not in wanted:
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} still {status} after {timeout} s")
            time.sleep(0.005)
        return status

    out = []
    for n in range(jobs + WARMUP):
        time.sleep(random.uniform(0, pause_max))    # anywhere in the idle pilot's cycle
        start = time.perf_counter()
        job_id = manager.submitJob(jdl)
        status = wait(job_id, {"Running", "Done", "Failed"})
        took = time.perf_counter() - start
        if status != "Running":
            raise RuntimeError(f"job {job_id} is {status}, not Running")
        (release / str(job_id)).touch()
        wait(job_id, {"Done"})
        if n >= WARMUP:
            out.append(took)
    manager.close()
    monitor.close()
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def main() -> int:
    ap = argparse.ArgumentParser(description="submit-to-Running latency with an idle pilot waiting")
    ap.add_argument("--jobs", type=int, default=100)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmdirac-latency-"))
    pki = make_pki(work / "pki")
    db_url, drop = database(work)
    backend = "mysql" if db_url.startswith("mysql") else "sqlite"
    server, port = start_server(work, pki, db_url)
    user = ClientCredentials(pki["proxy"], None, pki["ca"])
    release = work / "release"
    release.mkdir()
    results: list[tuple[str, list[float]]] = []
    try:
        for n, (mode, extra, pause_max) in enumerate(MODES):
            pilot, stop = start_pilot(work, pki, port, f"pilot{n}", extra)
            try:
                results.append((mode, measure(args.jobs, release, user, port, pause_max)))
            finally:
                stop.touch()
                try:
                    pilot.wait(30)
                except subprocess.TimeoutExpired:
                    pilot.kill()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        drop()
    print(f"submit -> Running, one idle 1-slot pilot, {backend}, {args.jobs} jobs per mode")
    print(f"{'pilot mode':<36} {'median s':>9} {'p95 s':>7} {'min s':>7} {'max s':>7}")
    for mode, values in results:
        print(f"{mode:<36} {statistics.median(values):>9.3f} {p95(values):>7.3f} {min(values):>7.3f} "
              f"{max(values):>7.3f}")
    (_, default), (_, polling) = results
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"median_s": round(statistics.median(default), 4), "p95_s": round(p95(default), 4),
                      "backend": backend, "jobs": args.jobs, "mode": "long poll",
                      "polling_median_s": round(statistics.median(polling), 4),
                      "polling_p95_s": round(p95(polling), 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
