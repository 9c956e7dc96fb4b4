"""Job Monitor first page with 100,000 jobs: the portal's JSON endpoint, timed per request.

Fills the database (MySQL when VMDIRAC_MYSQL_URL is set, else SQLite) with 100,000 jobs of one
user through JobDB's bulk insert, starts ``vmdirac-server`` with the job services and the portal,
logs in with a one-time link (as dirac-web-login does), then asks for the first page of the Job
Monitor (``GET /api/jobs``, 25 jobs, newest first) over one kept-alive HTTPS connection. The
server time is the portal's ``Server-Timing`` header: the whole request in the portal, including
its RPC call to JobMonitoring (as the user, through the host) and the DB queries behind it.
A few other first pages (sorted by last update, one status, one site) are shown beside it.

Last line: ``{"jobs", "median_ms", "p95_ms"}`` of the default first page's server time.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import rpc  # noqa: E402  (database())
import wmsbench  # noqa: E402  (make_pki, tree)

from vmdirac.core.db import make_engine  # noqa: E402
from vmdirac.db.job_db import JobDB, NewJob  # noqa: E402

JOBS = int(os.environ.get("PORTAL_BENCH_JOBS", "100000"))
REQUESTS = 60
WARMUP = 5
STATUSES = [("Done", "Execution Complete"), ("Failed", "Application Finished With Errors"),
            ("Waiting", "Pilot Agent Submission"), ("Running", "Application"), ("Killed", "Killed by user")]
SITES = ["LCG.CERN.cern", "LCG.IN2P3.fr", "LCG.PIC.es", "LCG.RAL.uk", "DIRAC.Local.local"]
PAGES = [("first page (JobID desc)", "limit=25"),
         ("sorted by LastUpdate", "limit=25&sort=LastUpdateTime&dir=DESC"),
         ("status=Running", "limit=25&status=Running"),
         ("site=LCG.PIC.es", "limit=25&site=LCG.PIC.es")]


def fill(url: str, count: int) -> float:
    """``count`` jobs of the bench user, spread over statuses, sites and 30 days; seconds taken."""
    started = time.perf_counter()
    db = JobDB(make_engine(url))
    db.create_tables()
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    batch: list[NewJob] = []
    for job_id in range(1, count + 1):
        status, minor = STATUSES[job_id % len(STATUSES)]
        when = now - dt.timedelta(seconds=(count - job_id) * 26)
        batch.append(NewJob(job_id, {
            "JobName": f"bench-{job_id}", "JobGroup": f"group{job_id % 20}", "JobType": "User",
            "Owner": "bench", "OwnerDN": wmsbench.USER_DN, "OwnerGroup": "dirac_user", "VO": "vmdirac",
            "Site": SITES[job_id % len(SITES)], "Status": status, "MinorStatus": minor,
            "ApplicationStatus": "Unknown", "UserPriority": 1, "CPUTime": 86400, "NumberOfProcessors": 1,
            "SubmissionTime": when, "LastUpdateTime": when + dt.timedelta(seconds=job_id % 600),
            "RescheduleCounter": 0, "MatchedBy": "", "PilotReference": ""}, "[]", "[]"))
        if len(batch) == 5000:
            db.insert_jobs(batch, [])
            batch = []
    if batch:
        db.insert_jobs(batch, [])
    db.engine.dispose()
    return time.perf_counter() - started


def server_config(d: Path, db_url: str, port: int) -> Path:
    import yaml

    tree = wmsbench.tree(JOBS)
    base = f"https://localhost:{port}"
    tree["Systems"]["Configuration"]["URLs"] = {"Server": [f"{base}/Configuration/Server"]}
    tree["Systems"]["WorkloadManagement"]["URLs"] = {
        s: [f"{base}/WorkloadManagement/{s}"] for s in ("JobManager", "JobMonitoring", "Matcher")}
    tree["Local"] = {"DatabaseURL": db_url, "Host": "127.0.0.1", "Port": port, "HostCert": str(d / "hostcert.pem"),
                     "HostKey": str(d / "hostkey.pem"), "CACertificates": str(d / "certificates"),
                     "LogLevel": "WARNING", "LogFile": str(d / "server.log")}
    path = d / "server.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def start_server(d: Path, config: Path, port: int) -> tuple[subprocess.Popen, int]:
    exe = Path(sys.executable).with_name("vmdirac-server")
    env = {k: v for k, v in os.environ.items() if k != "VMDIRAC_DB_URL"}
    proc = subprocess.Popen([str(exe), "--root", str(d / "root"), "-c", str(config), "--port", str(port),
                             "--no-agents", "--web-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        match = re.search(r"portal on https://[^:]+:(\d+)/", line)
        if match:
            return proc, int(match.group(1))
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError(f"the server did not start; see {d / 'server.log'}")


def connection(ca: str, port: int, cert: str | None = None) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context(cafile=str(Path(ca) / "ca.pem"))
    if cert:
        ctx.load_cert_chain(cert)
    return http.client.HTTPSConnection("localhost", port, timeout=60, context=ctx)


def login(d: Path, port: int) -> str:
    """The session cookie, from a login link obtained with the user's proxy."""
    conn = connection(str(d / "certificates"), port, str(d / "proxy.pem"))
    conn.request("POST", "/api/login-link", b"", {"Content-Length": "0"})
    link = json.loads(conn.getresponse().read())["Value"]["url"]
    conn.close()
    conn = connection(str(d / "certificates"), port)
    parts = urllib.parse.urlsplit(link)
    conn.request("GET", f"{parts.path}?{parts.query}")
    resp = conn.getresponse()
    resp.read()
    cookie = resp.getheader("Set-Cookie", "")
    conn.close()
    match = re.match(r"(vmdirac_session=[^;]+)", cookie)
    if resp.status != 200 or not match:
        raise RuntimeError(f"login failed: HTTP {resp.status}")
    return match.group(1)


def measure(conn: http.client.HTTPSConnection, cookie: str, query: str) -> tuple[list[float], list[float], int]:
    """(server ms, client ms) of REQUESTS requests after WARMUP, and the total the page reported."""
    server, client, total = [], [], 0
    for i in range(WARMUP + REQUESTS):
        started = time.perf_counter()
        conn.request("GET", f"/api/jobs?{query}", headers={"Cookie": cookie, "Accept": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        elapsed = (time.perf_counter() - started) * 1000
        if resp.status != 200 or not body.get("OK"):
            raise RuntimeError(f"GET /api/jobs?{query}: HTTP {resp.status} {body.get('Message')}")
        timing = re.search(r"dur=([0-9.]+)", resp.getheader("Server-Timing", ""))
        if i >= WARMUP:
            server.append(float(timing.group(1)) if timing else float("nan"))
            client.append(elapsed)
            total = body["Value"]["total"]
    return server, client, total


def free_port() -> int:
    """A port for the RPC server, chosen first: the served URLs must name it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="vmdirac-bench-portal-") as tmp:
        d = Path(tmp)
        wmsbench.make_pki(d)
        with rpc.database(d) as (backend, url):
            print(f"portal benchmark: {JOBS} jobs on {backend}", flush=True)
            fill_s = fill(url, JOBS)
            print(f"filled in {fill_s:.1f} s", flush=True)
            port = free_port()
            proc, web_port = start_server(d, server_config(d, url, port), port)
            try:
                cookie = login(d, web_port)
                conn = connection(str(d / "certificates"), web_port)
                results = []
                for label, query in PAGES:
                    server, client, total = measure(conn, cookie, query)
                    results.append((label, total, statistics.median(server), p95(server),
                                    statistics.median(client), p95(client)))
                conn.close()
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(f"\n{REQUESTS} requests each over one kept-alive HTTPS connection ({backend}); server = the "
          f"portal's Server-Timing (RPC to JobMonitoring and its DB queries included)")
    print(f"{'page':<26}{'matching':>10}{'server med':>12}{'server p95':>12}{'client med':>12}{'client p95':>12}")
    for label, total, smed, sp95, cmed, cp95 in results:
        print(f"{label:<26}{total:>10}{smed:>10.1f}ms{sp95:>10.1f}ms{cmed:>10.1f}ms{cp95:>10.1f}ms")
    first = results[0]
    print(json.dumps({"jobs": JOBS, "median_ms": round(first[2], 1), "p95_ms": round(first[3], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
