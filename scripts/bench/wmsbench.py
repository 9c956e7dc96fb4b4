"""What the job-service benchmarks (``matcher.py``, ``submit.py``) share.

A throw-away PKI (CA, server host, pilot host with ``GenericPilot``, a user proxy), a server child
with the job services started with 'spawn' and pinned to one CPU (as ``rpc.py`` does), the
database (``rpc.database``: SQLite, or a fresh MySQL database when ``VMDIRAC_MYSQL_URL`` is set),
and a cheap asyncio load generator of raw keep-alive HTTPS requests on a fixed set of
connections that several measurements share.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import multiprocessing as mp
import os
import re
import signal
import ssl
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).parent))
import rpc  # noqa: E402  (only its stable helpers: database, cpu_seconds)

from vmdirac.core import jencode  # noqa: E402
from vmdirac.core import x509 as X  # noqa: E402
from vmdirac.core.client import ClientCredentials, RPCClient  # noqa: E402
from vmdirac.core.launcher import LocalOptions, Paths, make_context, make_services, run_components  # noqa: E402
from vmdirac.core.logs import setup_logging  # noqa: E402

cpu_seconds = rpc.cpu_seconds

USER_DN = "/O=vmdirac/OU=users/CN=bench"
HOST_DN = "/O=vmdirac/OU=hosts/CN=localhost"
PILOT_DN = "/O=vmdirac/OU=hosts/CN=pilot.bench"
SERVICES = ["Configuration/Server", "WorkloadManagement/JobManager", "WorkloadManagement/JobMonitoring",
            "WorkloadManagement/Matcher"]
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


def tree(max_jobs: int) -> dict:
    """The served configuration: one user who submits, one pilot host, caps raised to ``max_jobs``."""
    return {
        "Registry": {
            "DefaultVO": "vmdirac", "DefaultGroup": "dirac_user",
            "Groups": {"dirac_user": {"VO": "vmdirac", "Properties": ["NormalUser"]}},
            "Users": {"bench": {"DN": USER_DN, "Groups": ["dirac_user"]}},
            "Hosts": {"localhost": {"DN": HOST_DN, "Properties": ["TrustedHost"]},
                      "pilot.bench": {"DN": PILOT_DN, "Properties": ["GenericPilot"]}},
        },
        "Systems": {
            "Configuration": {"Services": {"Server": {}}},
            "WorkloadManagement": {"Services": {
                "JobManager": {"MaxParametricJobs": max_jobs, "MaxJobsPerSubmission": max_jobs},
                "JobMonitoring": {}, "Matcher": {}}},
        },
    }


@dataclass(frozen=True)
class PKI:
    dir: Path

    @property
    def ca(self) -> str:
        return str(self.dir / "certificates")

    def user(self) -> ClientCredentials:
        return ClientCredentials(str(self.dir / "proxy.pem"), None, self.ca)

    def pilot_tls(self) -> ssl.SSLContext:
        from vmdirac.core.tls import client_context
        return client_context(self.dir / "pilotcert.pem", self.dir / "pilotkey.pem", self.ca)


def make_pki(d: Path) -> PKI:
    """CA; host certificate for localhost; a pilot host certificate; a proxy of the user."""
    (d / "certificates").mkdir()
    ca, ca_key = X.make_ca("/O=vmdirac/CN=vmdirac bench CA")
    (d / "certificates" / "ca.pem").write_bytes(X.cert_pem(ca))
    for name, dn, names in (("host", HOST_DN, ["localhost", "127.0.0.1"]), ("pilot", PILOT_DN, ["pilot.bench"])):
        cert, key = X.make_certificate(ca, ca_key, dn, host_names=names)
        (d / f"{name}cert.pem").write_bytes(X.cert_pem(cert))
        X.write_private(d / f"{name}key.pem", X.key_pem(key))
    user, user_key = X.make_certificate(ca, ca_key, USER_DN)
    _proxy, proxy_key, chain = X.make_proxy([user], user_key, 12, group="dirac_user")
    X.write_private(d / "proxy.pem", X.proxy_pem(chain, proxy_key))
    return PKI(d)


def backends() -> list[str]:
    """MySQL first when ``VMDIRAC_MYSQL_URL`` is set, then SQLite."""
    return ["mysql", "sqlite"] if os.environ.get("VMDIRAC_MYSQL_URL") else ["sqlite"]


@contextlib.contextmanager
def database(d: Path, backend: str) -> Iterator[str]:
    """The URL of a fresh database of ``backend`` (``rpc.database``; a MySQL one is dropped after)."""
    hidden = os.environ.pop("VMDIRAC_MYSQL_URL", None) if backend == "sqlite" else None
    try:
        with rpc.database(d) as (got, url):
            if hidden is not None:  # rpc.database has read it: put it back for the next run
                os.environ["VMDIRAC_MYSQL_URL"], hidden = hidden, None
            if got != backend:
                raise RuntimeError(f"asked for a {backend} database, got {got}")
            yield url
    finally:
        if hidden is not None:
            os.environ["VMDIRAC_MYSQL_URL"] = hidden


# ---------------------------------------------------------------- the server child

@dataclass(frozen=True)
class ServerSpec:
    """What the server child needs (picklable: it crosses the 'spawn' boundary)."""

    dir: str
    db_url: str
    max_jobs: int
    cpu: int | None             # the core the server is pinned to


def serve(spec: ServerSpec, conn: Connection) -> None:
    """Child process: the job services on a free loopback port, sent on ``conn``, until SIGTERM."""
    if spec.cpu is not None:
        os.sched_setaffinity(0, {spec.cpu})
    os.environ.pop("VMDIRAC_DB_URL", None)  # the benchmark chooses its database
    d = Path(spec.dir)
    setup_logging("WARNING", str(d / "server.log"), component="bench")
    local = LocalOptions(DatabaseURL=spec.db_url, Host="127.0.0.1", Port=0, HostCert=str(d / "hostcert.pem"),
                         HostKey=str(d / "hostkey.pem"), CACertificates=str(d / "certificates"),
                         LogLevel="WARNING", LogFile=str(d / "server.log"))
    context = make_context(tree(spec.max_jobs), local, Paths(d / "root"))
    services = make_services(context, SERVICES)
    with contextlib.redirect_stdout(io.StringIO()):  # run_components announces itself on stdout
        asyncio.run(run_components(context, services, [], port=0, ready=lambda server: conn.send(server.port)))


@contextlib.contextmanager
def server_process(spec: ServerSpec) -> Iterator[tuple[int, int]]:
    """(port, pid) of a server child started with 'spawn'; stopped with SIGTERM on exit."""
    ctx = mp.get_context("spawn")
    parent_end, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=serve, args=(spec, child_end), name="bench-wms", daemon=True)
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while not parent_end.poll(0.2):
            if not proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start (exit code {proc.exitcode}); "
                                   f"see {Path(spec.dir) / 'server.log'}")
        yield parent_end.recv(), proc.pid
    finally:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def pin_self() -> int | None:
    """Keep this process off the first CPU and return that CPU for the server (None with one CPU)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return None
    os.sched_setaffinity(0, set(cpus[1:]))
    return cpus[0]


def pinning_note(server_cpu: int | None, us: str = "load generator") -> str:
    if server_cpu is None:
        return "no CPU pinning (fewer than 2 CPUs)"
    return (f"server on CPU {server_cpu}, {us} on CPU "
            f"{','.join(map(str, sorted(os.sched_getaffinity(0))))}")


def client(pki: PKI, port: int, service: str, timeout: float = 120.0) -> RPCClient:
    """An RPC client of ``WorkloadManagement/<service>`` as the user."""
    return RPCClient(f"WorkloadManagement/{service}", pki.user(),
                     urls=[f"https://localhost:{port}/WorkloadManagement/{service}"], timeout=timeout)


def db_server_pid() -> int | None:
    """The local MySQL/MariaDB server, to show its CPU beside ours (it is shared: indicative)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() in ("mysqld", "mariadbd"):
                    return int(proc.name)
            except OSError:
                continue
    return None


# ---------------------------------------------------------------- the load generator

def request(port: int, path: str, method: str, args: list, host_credentials: bool = False) -> bytes:
    """One raw HTTP/1.1 POST of DIRAC's form (``extraCredentials="hosts"`` for a host)."""
    form = {"method": method, "args": jencode.dumps(args)}
    if host_credentials:
        form["extraCredentials"] = jencode.dumps("hosts")
    body = urllib.parse.urlencode(form).encode()
    return (f"POST /{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


@dataclass
class Window:
    """One measurement: answers counted between the end of the warm-up and the end of the window."""

    count: int
    seconds: float
    server_cpu: float | None        # cores used by the server child over the window
    client_cpu: float               # cores used by this process over the window
    db_cpu: float | None = None     # cores used by the local MySQL server (shared with others)
    ended_early: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


class Connections:
    """``n`` keep-alive HTTPS connections, reused by every measurement on them."""

    def __init__(self, streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
        self.streams = streams

    @classmethod
    async def open(cls, port: int, n: int, tls: ssl.SSLContext) -> Connections:
        streams = [await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=tls,
                                                                  server_hostname="localhost"), 10)
                   for _ in range(n)]
        return cls(streams)

    def close(self) -> None:
        for _r, w in self.streams:
            w.close()

    async def measure(self, requests: list[bytes], warmup: float, window: float,
                      pids: tuple[int | None, int | None], on_answer: Callable[[int, bytes], bool] = lambda i, b: True,
                      stop_early: Callable[[], bool] = lambda: False) -> Window:
        """Send ``requests[i]`` on connection ``i`` after each answer; count the answers that count.

        An answer counts when it is ``{"OK": true, ...}`` and ``on_answer(i, body)`` says so
        (``on_answer`` sees every OK answer, warm-up and tail included); any other is an error.
        The window closes after ``window`` seconds or as soon as ``stop_early()`` is true; every
        request in flight is then answered before returning.
        """
        server_pid, db_pid = pids
        ok = 0
        errors: list[str] = []
        running = True

        async def loop(i: int) -> None:
            nonlocal ok
            reader, writer = self.streams[i]
            while running:
                writer.write(requests[i])
                head = await reader.readuntil(b"\r\n\r\n")
                length = _LENGTH.search(head)
                body = await reader.readexactly(int(length.group(1))) if length else b""
                if head.startswith(b"HTTP/1.1 200 ") and b'"OK":true' in body:
                    ok += on_answer(i, body)
                else:
                    errors.append((head.split(b"\r\n", 1)[0] + b" " + body[:300]).decode(errors="replace"))

        def snapshot() -> tuple[int, float, float, float | None, float | None]:
            return (ok, time.perf_counter(), time.process_time(), cpu_seconds(server_pid) if server_pid else None,
                    cpu_seconds(db_pid) if db_pid else None)

        tasks = [asyncio.create_task(loop(i)) for i in range(len(requests))]
        await asyncio.sleep(warmup)
        start = snapshot()
        deadline = start[1] + window
        ended_early = False
        while time.perf_counter() < deadline and not any(t.done() for t in tasks):
            if stop_early():
                ended_early = True
                break
            await asyncio.sleep(0.02)
        end = snapshot()
        running = False
        done, late = await asyncio.wait(tasks, timeout=60)
        for task in late:
            task.cancel()
            errors.append("no answer within 60 s after the window")
        for task in done:
            if task.exception() is not None:
                errors.append(f"connection lost: {task.exception()!r}")
        wall = end[1] - start[1]

        def cores(a: float | None, b: float | None) -> float | None:
            return (b - a) / wall if a is not None and b is not None else None

        return Window(end[0] - start[0], wall, cores(start[3], end[3]), (end[2] - start[2]) / wall,
                      cores(start[4], end[4]), ended_early, errors)
