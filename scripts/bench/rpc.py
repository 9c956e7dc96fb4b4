"""RPC throughput: calls per second of ``Configuration/Server.ping`` beside a bare Tornado handler.

Both servers run in their own child process, one at a time, behind the same TLS context (host
certificate, client certificate requested, our CA); the load generator (asyncio, one persistent
keep-alive HTTPS connection per client, presenting a proxy as real clients do) runs here. With two
or more CPUs the server is pinned to one core and the load generator to another. Each point is a
1 s warm-up then 4 s of counting. ``ratio`` is framework/bare: the share of the bare Tornado rate
the framework keeps (the issue's goal is 0.6 at 32 clients). "CPU" columns are the cores used
over the window: a server near 1.0 is saturated (the figure is its limit); a load generator near
1.0 means the client may be the bottleneck. The last line is JSON with the 32-client figures.

Run: ``.venv/bin/python scripts/bench/rpc.py`` (MySQL when ``VMDIRAC_MYSQL_URL`` is set).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import multiprocessing as mp
import os
import re
import signal
import ssl
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Iterator

import sqlalchemy
import tornado.netutil
import tornado.web
from tornado.httpserver import HTTPServer

from vmdirac.core import x509 as X
from vmdirac.core.launcher import LocalOptions, Paths, make_context, make_services, run_components
from vmdirac.core.logs import setup_logging
from vmdirac.core.tls import client_context, server_context

CLIENTS = (1, 8, 32)
WARMUP_S = 1.0
MEASURE_S = 4.0
SERVICE = "Configuration/Server"
BODY = b"method=ping&args=%5B%5D"
USER_DN = "/O=vmdirac/OU=users/CN=bench"
HOST_DN = "/O=vmdirac/OU=hosts/CN=localhost"
TREE = {
    "Registry": {
        "DefaultVO": "vmdirac", "DefaultGroup": "dirac_user",
        "Groups": {"dirac_user": {"VO": "vmdirac", "Properties": ["NormalUser"]}},
        "Users": {"bench": {"DN": USER_DN, "Groups": ["dirac_user"]}},
        "Hosts": {"localhost": {"DN": HOST_DN, "Properties": ["TrustedHost"]}},
    },
    "Systems": {"Configuration": {"Services": {"Server": {}}}},
}
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class ServerSpec:
    """What a server child needs (picklable: it crosses the 'spawn' boundary)."""

    kind: str           # "bare" or "framework"
    dir: str            # the throw-away PKI and DB directory
    db_url: str
    log_level: str
    log_file: str
    cpu: int | None     # the core to pin the server to


@dataclass
class Point:
    clients: int
    rps: float
    errors: int
    server_cpu: float | None
    client_cpu: float


@dataclass
class Counts:
    ok: int = 0
    errors: int = 0
    running: bool = True
    failures: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- set-up

def make_pki(d: Path) -> None:
    """CA, host certificate for localhost, and a one-level proxy of the registered user."""
    (d / "certificates").mkdir()
    ca, ca_key = X.make_ca("/O=vmdirac/CN=vmdirac bench CA")
    (d / "certificates" / "ca.pem").write_bytes(X.cert_pem(ca))
    host, host_key = X.make_certificate(ca, ca_key, HOST_DN, host_names=["localhost", "127.0.0.1"])
    (d / "hostcert.pem").write_bytes(X.cert_pem(host))
    X.write_private(d / "hostkey.pem", X.key_pem(host_key))
    user, user_key = X.make_certificate(ca, ca_key, USER_DN)
    _proxy, proxy_key, chain = X.make_proxy([user], user_key, 2, group="dirac_user")
    X.write_private(d / "proxy.pem", X.proxy_pem(chain, proxy_key))


@contextlib.contextmanager
def database(d: Path) -> Iterator[tuple[str, str]]:
    """(backend, URL): a fresh database on VMDIRAC_MYSQL_URL's server, dropped after; else SQLite."""
    server_url = os.environ.get("VMDIRAC_MYSQL_URL", "")
    if not server_url:
        yield "sqlite", f"sqlite:///{d / 'vmdirac.sqlite'}"
        return
    name = f"vmdirac_bench_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(server_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    try:
        url = sqlalchemy.engine.make_url(server_url).set(database=name)
        yield "mysql", url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


# ---------------------------------------------------------------- server children

class BareHandler(tornado.web.RequestHandler):
    def post(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(b'{"OK":true,"Value":{}}')


def serve(spec: ServerSpec, conn: Connection) -> None:
    """Child process: one server on a free loopback port, its port sent on ``conn``, until SIGTERM."""
    if spec.cpu is not None:
        os.sched_setaffinity(0, {spec.cpu})
    os.environ.pop("VMDIRAC_DB_URL", None)  # the benchmark chooses its database
    setup_logging(spec.log_level, spec.log_file or None, component="bench")
    d = Path(spec.dir)
    if spec.kind == "bare":
        asyncio.run(_serve_bare(d, conn))
        return
    local = LocalOptions(DatabaseURL=spec.db_url, Host="127.0.0.1", Port=0, HostCert=str(d / "hostcert.pem"),
                         HostKey=str(d / "hostkey.pem"), CACertificates=str(d / "certificates"),
                         LogLevel=spec.log_level, LogFile=spec.log_file)
    context = make_context(TREE, local, Paths(d / "root"))
    services = make_services(context, [SERVICE])
    with contextlib.redirect_stdout(io.StringIO()):  # run_components announces itself on stdout
        asyncio.run(run_components(context, services, [], port=0, ready=lambda server: conn.send(server.port)))


async def _serve_bare(d: Path, conn: Connection) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    app = tornado.web.Application([(f"/{SERVICE}", BareHandler)], log_function=lambda handler: None)
    http = HTTPServer(app, ssl_options=server_context(d / "hostcert.pem", d / "hostkey.pem", d / "certificates"),
                      idle_connection_timeout=300)
    sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1")
    http.add_sockets(sockets)
    conn.send(sockets[0].getsockname()[1])
    await stop.wait()
    http.stop()
    await http.close_all_connections()


@contextlib.contextmanager
def server_process(spec: ServerSpec) -> Iterator[tuple[int, int]]:
    """(port, pid) of a server child started with 'spawn'; stopped with SIGTERM on exit."""
    ctx = mp.get_context("spawn")
    parent_end, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=serve, args=(spec, child_end), name=f"bench-{spec.kind}", daemon=True)
    proc.start()
    try:
        if not parent_end.poll(60):
            raise RuntimeError(f"the {spec.kind} server did not start (exit code {proc.exitcode})")
        yield parent_end.recv(), proc.pid
    finally:
        proc.terminate()
        proc.join(15)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process, all threads (Linux /proc); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- load generator

async def _client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes,
                  counts: Counts) -> None:
    """One keep-alive connection sending ``request`` after each answer until told to stop."""
    try:
        while counts.running:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = _LENGTH.search(head)
            body = await reader.readexactly(int(length.group(1))) if length else b""
            if head.startswith(b"HTTP/1.1 200 ") and b'"OK":true' in body:
                counts.ok += 1
            else:
                counts.errors += 1
                if len(counts.failures) < 3:
                    counts.failures.append((head.split(b"\r\n", 1)[0] + b" " + body[:200]).decode(errors="replace"))
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError) as e:
        counts.errors += 1
        counts.failures.append(f"connection lost: {e!r}")
    finally:
        writer.close()


async def measure(port: int, clients: int, tls: ssl.SSLContext, server_pid: int) -> tuple[Point, str]:
    """Calls per second with ``clients`` connections, counted after a warm-up; and the TLS version."""
    request = (f"POST /{SERVICE} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n"
               f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(BODY)}\r\n\r\n"
               ).encode() + BODY
    conns = [await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=tls), 10)
             for _ in range(clients)]
    tls_version = conns[0][1].get_extra_info("ssl_object").version() or "?"
    counts = Counts()
    tasks = [asyncio.create_task(_client(r, w, request, counts)) for r, w in conns]
    await asyncio.sleep(WARMUP_S)
    ok0, err0, wall0, own0, srv0 = counts.ok, counts.errors, time.perf_counter(), time.process_time(), \
        cpu_seconds(server_pid)
    await asyncio.sleep(MEASURE_S)
    ok1, err1, wall1, own1, srv1 = counts.ok, counts.errors, time.perf_counter(), time.process_time(), \
        cpu_seconds(server_pid)
    counts.running = False
    _done, late = await asyncio.wait(tasks, timeout=10)
    for task in late:
        task.cancel()
    for failure in counts.failures:
        print(f"  error ({clients} clients): {failure}", file=sys.stderr)
    wall = wall1 - wall0
    server_cpu = (srv1 - srv0) / wall if srv0 is not None and srv1 is not None else None
    return Point(clients, (ok1 - ok0) / wall, err1 - err0, server_cpu, (own1 - own0) / wall), tls_version


# ---------------------------------------------------------------- the run and the table

def _cpu(value: float | None) -> str:
    return "   -" if value is None else f"{value:4.2f}"


def main() -> int:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    server_cpu = cpus[0] if len(cpus) >= 2 else None
    if server_cpu is not None:
        os.sched_setaffinity(0, set(cpus[1:]))
    with tempfile.TemporaryDirectory(prefix="vmdirac-bench-rpc-") as tmp, database(Path(tmp)) as (backend, url):
        d = Path(tmp)
        make_pki(d)
        tls = client_context(d / "proxy.pem", None, d / "certificates")
        runs = [("bare", "WARNING", CLIENTS), ("framework", "WARNING", CLIENTS), ("framework", "INFO", (32,))]
        points: dict[tuple[str, str], dict[int, Point]] = {}
        tls_version = "?"
        for kind, level, clients in runs:
            spec = ServerSpec(kind, tmp, url, level, str(d / "server.log") if level == "INFO" else "", server_cpu)
            with server_process(spec) as (port, pid):
                for n in clients:
                    point, tls_version = asyncio.run(measure(port, n, tls, pid))
                    points.setdefault((kind, level), {})[n] = point
    bare, fw, info = points["bare", "WARNING"], points["framework", "WARNING"], points["framework", "INFO"][32]

    pinned = (f"server pinned to CPU {server_cpu}, load generator to CPU(s) {','.join(map(str, cpus[1:]))}"
              if server_cpu is not None else "no CPU pinning (fewer than 2 CPUs available)")
    print(f"{SERVICE}.ping over keep-alive HTTPS ({tls_version}, client proxy), {backend} DB; "
          f"{WARMUP_S:.0f} s warm-up, {MEASURE_S:.0f} s per point; {pinned}")
    print("server log level WARNING: the per-call INFO log line is not written (see the INFO row below)")
    print(f"{'clients':>7} {'bare rps':>9} {'framework rps':>13} {'ratio':>6} {'errors':>7}"
          f"  {'server CPU bare/fw':>18}  {'loadgen CPU bare/fw':>19}")
    for n in CLIENTS:
        b, f = bare[n], fw[n]
        print(f"{n:>7} {b.rps:>9.0f} {f.rps:>13.0f} {f.rps / b.rps:>6.2f} {b.errors + f.errors:>7}"
              f"  {_cpu(b.server_cpu):>13}/{_cpu(f.server_cpu)}  {_cpu(b.client_cpu):>14}/{_cpu(f.client_cpu)}")
    print(f"{32:>7} {'':>9} {info.rps:>13.0f} {info.rps / bare[32].rps:>6.2f} {info.errors:>7}"
          f"  {_cpu(info.server_cpu):>18}  {_cpu(info.client_cpu):>19}  <- framework at INFO, logging to a file")
    ratio = fw[32].rps / bare[32].rps
    print(f"goal (issue): framework >= 60% of bare at 32 clients: {'met' if ratio >= 0.6 else 'MISSED'} "
          f"({ratio:.0%})")
    print(json.dumps({
        "bare_rps": round(bare[32].rps, 1), "framework_rps": round(fw[32].rps, 1), "ratio": round(ratio, 3),
        "framework_rps_info_log": round(info.rps, 1), "ratio_info_log": round(info.rps / bare[32].rps, 3),
        "errors": sum(p.errors for p in [*bare.values(), *fw.values(), info]), "db": backend,
        "per_clients": {str(n): {"bare_rps": round(bare[n].rps, 1), "framework_rps": round(fw[n].rps, 1),
                                 "ratio": round(fw[n].rps / bare[n].rps, 3)} for n in CLIENTS},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
