"""The JobWrapper: one matched job from its input sandbox to its final status.

``Running / Downloading Inputs`` (the input sandbox into a directory of its own), ``Running /
Application`` (the payload, with heartbeats, kill commands, application statuses and the
watchdog's limits), ``Running / Uploading Outputs`` (OutputSandbox files that exist plus
StdOutput/StdError, stored as the job's Output sandbox), then ``Done / Execution Complete``,
``Failed / <why>`` or ``Killed / Killed by user``; the directory is removed. If the server says
the job is no longer this pilot's (rescheduled, or reported by someone else), the payload is
killed and nothing more is reported. If the pilot itself dies, the job stops getting
heartbeats and the StalledJobAgent deals with it: nothing here pretends otherwise.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vmdirac.core.exceptions import (
    IllegalTransition, InvalidJDL, NotAuthorized, NotFound, ServiceUnavailable, VMDiracError,
)
from vmdirac.pilot import resources
from vmdirac.pilot.config import Connection, PilotOptions
from vmdirac.pilot.payload import (
    ExecutableNotFound, Payload, StatusFile, command_line, install_status_script, payload_environment,
    resolve_executable,
)
from vmdirac.pilot.watchdog import Limits, Watchdog, describe_exit
from vmdirac.wms.job_description import JobDescription
from vmdirac.wms.job_status import JobStatus as S, MinorStatus as M
from vmdirac.wms.sandbox_client import download_sandbox, make_tarball, sandbox_url

log = logging.getLogger(__name__)

SOURCE = "JobWrapper"
APP_SOURCE = "Payload"
# DIRAC's JobMinorStatus wording for the ends a pilot reports.
APP_ERRORS = "Application Finished With Errors"
APP_NOT_FOUND = "Application not found"
ILLEGAL_JDL = "Illegal Job JDL"
INPUT_FAILED = "Failed Downloading InputSandbox"
OUTPUT_FAILED = "Failed Uploading Output Sandbox"
PILOT_STOPPED = "Payload killed: the pilot was stopped"
EXCEPTION = "Exception During Execution"
FINAL_REPORT_PAUSES = (1, 2, 4, 8, 16)   # seconds between tries of the final status


class JobLost(Exception):
    """The server no longer lets this pilot report for the job."""


@dataclass(frozen=True)
class MatchedJob:
    """What the agent hands a wrapper: the Matcher's answer and the slots it gets."""

    job_id: int
    jdl: str
    owner: str
    cores: int
    wall_limit: float = 0.0      # seconds; 0: none


@dataclass(frozen=True)
class Outcome:
    job_id: int
    status: str
    minor: str
    exit_code: int | None = None


class Reporter:
    """JobStateUpdate calls about one job."""

    def __init__(self, connection: Connection, job_id: int) -> None:
        self.job_id = job_id
        self.client = connection.client("WorkloadManagement/JobStateUpdate", connect_timeout=10, timeout=60)

    def _call(self, method: str, *args) -> object:
        try:
            return self.client.call(method, self.job_id, *args)
        except (NotAuthorized, IllegalTransition, NotFound) as e:
            raise JobLost(f"job {self.job_id}: {e}") from e

    def status(self, status: str, minor: str) -> None:
        self._call("setJobStatus", status, minor, SOURCE)

    def final(self, status: str, minor: str) -> None:
        """The last status: tried again for a while when no server answers."""
        for pause in (*FINAL_REPORT_PAUSES, None):
            try:
                return self.status(status, minor)
            except ServiceUnavailable as e:
                if pause is None:
                    raise
                log.warning("job %d: final status not sent (%s); again in %d s", self.job_id, e, pause)
                time.sleep(pause)

    def application(self, text: str) -> None:
        self._call("setJobApplicationStatus", text, APP_SOURCE)

    def parameters(self, params: dict[str, object]) -> None:
        self._call("setJobParameters", [[k, str(v)] for k, v in params.items()])

    def heartbeat(self, dynamic: dict) -> dict:
        return self._call("sendHeartBeat", dynamic, {}) or {}


class JobWrapper:
    def __init__(self, job: MatchedJob, opts: PilotOptions, connection: Connection,
                 abort: threading.Event) -> None:
        self.job = job
        self.opts = opts
        self.connection = connection
        self.abort = abort
        self.report = Reporter(connection, job.job_id)
        self.work = Path(opts.WorkDir)
        self.dir = self.work / str(job.job_id)
        self.control = self.dir / ".dirac"
        self.tag = f"job {job.job_id}"

    # ------------------------------------------------------------ the whole life

    def run(self) -> Outcome:
        try:
            return self._run()
        except JobLost as e:
            log.warning("%s: no longer this pilot's job (%s); stopped reporting", self.tag, e)
            return Outcome(self.job.job_id, "Lost", str(e))
        except Exception as e:   # a bug, or no server answers: say so if we can, else the job stalls
            log.exception("%s: wrapper failed: %s", self.tag, e)
            try:
                self.report.status(S.FAILED, EXCEPTION)
                self.report.parameters({"Error": f"JobWrapper: {type(e).__name__}: {e}"[:1000]})
            except (VMDiracError, JobLost) as again:
                log.warning("%s: could not report the failure (%s); the StalledJobAgent will", self.tag, again)
            return Outcome(self.job.job_id, S.FAILED, EXCEPTION)
        finally:
            if not self.opts.KeepWorkDirs:
                shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self) -> Outcome:
        try:
            desc = JobDescription.from_jdl(self.job.jdl)
        except InvalidJDL as e:
            self.report.parameters({"Error": str(e)[:1000]})
            return self._end(S.FAILED, ILLEGAL_JDL)
        self.report.status(S.RUNNING, M.DOWNLOADING_INPUTS)
        shutil.rmtree(self.dir, ignore_errors=True)   # left by an earlier try of the same job
        self.dir.mkdir(parents=True)
        stdout, stderr = self._std_paths(desc)
        if stdout is None or stderr is None:
            self.report.parameters({"Error": "StdOutput/StdError must be relative paths inside the job directory"})
            return self._end(S.FAILED, ILLEGAL_JDL)
        try:
            self._download_inputs(desc)
        except VMDiracError as e:
            log.warning("%s: input sandbox: %s", self.tag, e)
            self.report.parameters({"Error": f"input sandbox: {e}"[:1000]})
            return self._end(S.FAILED, INPUT_FAILED)
        install_status_script(self.control)
        env = payload_environment(dict(os.environ), self.job.job_id, self.opts.Site, self.job.cores,
                                  self.control, self.connection.credentials.ca)
        self.report.parameters(self._static_parameters())
        if self._killed_before_start():
            return self._end(S.KILLED, M.KILLED_BY_USER)
        try:
            executable = resolve_executable(desc.executable, self.dir, env)
        except ExecutableNotFound as e:
            self.report.parameters({"Error": str(e)})
            return self._end(S.FAILED, APP_NOT_FOUND)
        self.report.status("", M.APPLICATION)
        argv = command_line(executable, desc.arguments)
        status, minor, exit_code = self._execute(desc, argv, env, stdout, stderr)
        self.report.status("", M.UPLOADING_OUTPUTS)
        if not self._upload_outputs(desc, stdout, stderr) and status == S.DONE:
            status, minor = S.FAILED, OUTPUT_FAILED
        return self._end(status, minor, exit_code)

    def _end(self, status: str, minor: str, exit_code: int | None = None) -> Outcome:
        self.report.final(status, minor)
        log.info("%s: %s / %s", self.tag, status, minor)
        return Outcome(self.job.job_id, status, minor, exit_code)

    # ------------------------------------------------------------ the payload

    def _execute(self, desc: JobDescription, argv: list[str], env: dict[str, str], stdout: Path,
                 stderr: Path) -> tuple[str, str, int | None]:
        """Run the payload to its end; ``(status, minor, exit code)`` it deserves."""
        opts = self.opts
        walls = [w for w in (opts.MaxWallClockTime, self.job.wall_limit) if w > 0]
        limits = Limits(cpu_s=float(desc.cpu_time), wall_s=min(walls) if walls else 0.0)
        payload = Payload(argv, self.dir, env, stdout, stderr)
        log.info("%s: payload started, pid %d, %d core(s), CPU limit %.0f s, wall limit %.0f s: %s", self.tag,
                 payload.pid, self.job.cores, limits.cpu_s, limits.wall_s, argv[-1][:200])
        watchdog = Watchdog(payload.pid, limits)
        statuses = StatusFile(self.control / "application-status")
        why: tuple[str, str] | None = None        # (status, minor) once the payload must die
        try:
            why = self._watch(payload, watchdog, statuses)
        finally:
            if payload.status is None and not payload.wait_exit(0):
                payload.signal(signal.SIGKILL)      # this wrapper failed: leave nothing running
                payload.wait_exit(opts.KillGrace + 5)
            status_code, rusage = payload.reap()
        usage = watchdog.finish(rusage)
        self._forward(statuses.read_new())
        exit_code, text = describe_exit(status_code)
        log.info("%s: payload ended, %s, CPU %.2f s, wall %.1f s", self.tag, text, usage.cpu_s, usage.wall_s)
        self.report.parameters({"ExitCode": exit_code, "CPUConsumed": round(usage.cpu_s, 2),
                                "WallClockTime": round(usage.wall_s, 1),
                                "MemoryUsed": round(watchdog.peak_rss_mb, 1)})
        if why is not None:
            return why[0], why[1], exit_code
        if exit_code == 0:
            return S.DONE, M.EXECUTION_COMPLETE, 0
        return S.FAILED, APP_ERRORS, exit_code

    def _watch(self, payload: Payload, watchdog: Watchdog, statuses: StatusFile) -> tuple[str, str] | None:
        """Until the payload exits: statuses forwarded, limits checked, heartbeats sent, and the
        payload's session sent SIGTERM, then SIGKILL after ``KillGrace``, once it must die."""
        opts = self.opts
        tick = min(0.5, opts.WatchdogPeriod, opts.HeartbeatPeriod)
        next_check = time.monotonic() + opts.WatchdogPeriod
        next_beat = time.monotonic() + opts.HeartbeatPeriod
        why: tuple[str, str] | None = None
        kill_at = 0.0
        while not payload.wait_exit(tick):
            now = time.monotonic()
            self._forward(statuses.read_new())
            if why is None and self.abort.is_set():
                why = (S.FAILED, PILOT_STOPPED)
            if why is None and now >= next_check:
                next_check = now + opts.WatchdogPeriod
                usage, reason = watchdog.check()
                if reason:
                    why = (S.FAILED, reason)
                    log.warning("%s: %s (CPU %.1f s of %.0f s, wall %.1f s)", self.tag, reason, usage.cpu_s,
                                watchdog.limits.cpu_s, usage.wall_s)
            if why is None and now >= next_beat:
                next_beat = now + opts.HeartbeatPeriod
                why = self._heartbeat(watchdog)
            if why is not None and not kill_at:
                payload.signal(signal.SIGTERM)
                kill_at = now + opts.KillGrace
            elif kill_at and now >= kill_at:
                payload.signal(signal.SIGKILL)
        return why

    def _heartbeat(self, watchdog: Watchdog) -> tuple[str, str] | None:
        """Send one heartbeat; ``(Killed, Killed by user)`` when the answer says to kill. (A job
        rescheduled meanwhile gets the same command; its next report then finds it lost.)"""
        usage = watchdog.sample()
        data = usage.heartbeat(resources.load_average(), resources.free_disk_mb(self.dir))
        try:
            commands = self.report.heartbeat(data)
        except ServiceUnavailable as e:
            log.warning("%s: heartbeat not sent: %s", self.tag, e)
            return None
        if "Kill" in commands:
            log.info("%s: kill command received (%s)", self.tag, commands["Kill"] or "by user")
            return (S.KILLED, M.KILLED_BY_USER)
        return None

    def _killed_before_start(self) -> bool:
        """One heartbeat before the payload starts: a job killed while Matched never runs."""
        try:
            return "Kill" in self.report.heartbeat({"WallClockTime": 0})
        except ServiceUnavailable as e:
            log.warning("%s: heartbeat not sent: %s", self.tag, e)
            return False

    def _forward(self, lines: list[str]) -> None:
        for line in lines:
            try:
                self.report.application(line)
            except ServiceUnavailable as e:
                log.warning("%s: application status %r not sent: %s", self.tag, line, e)

    # ------------------------------------------------------------ sandboxes

    def _download_inputs(self, desc: JobDescription) -> None:
        urls = self.connection.urls("WorkloadManagement/SandboxStore")
        for sb_id in (s for s in desc.input_sandbox if s.startswith("SB:")):
            for n, url in enumerate(urls):
                try:
                    files = download_sandbox(self.connection.credentials, sandbox_url(url, "download"), sb_id,
                                             self.dir)
                    log.info("%s: input sandbox %s: %d file(s)", self.tag, sb_id, len(files))
                    break
                except ServiceUnavailable:
                    if n == len(urls) - 1:
                        raise

    def _upload_outputs(self, desc: JobDescription, stdout: Path, stderr: Path) -> bool:
        """Store the output sandbox; False when it could not be stored (the job then fails)."""
        found, missing = self._output_files(desc)
        for std in (stdout, stderr):
            if std.is_file() and std not in found:
                found.append(std)
        params: dict[str, object] = {}
        if missing:
            params["OutputSandboxMissingFiles"] = ", ".join(missing)[:1000]
        ok = True
        if found:
            tarball = self.work / f"{self.job.job_id}.output.tar.gz"
            try:
                make_tarball(found, self.dir, tarball)
                sb_id = self.connection.client("WorkloadManagement/SandboxStore", timeout=300).call(
                    "storeOutputSandbox", self.job.job_id, tarball.read_bytes())
                log.info("%s: output sandbox %s: %d file(s), %d bytes", self.tag, sb_id, len(found),
                         tarball.stat().st_size)
            except (NotAuthorized, NotFound, IllegalTransition) as e:
                raise JobLost(str(e)) from e
            except (VMDiracError, OSError) as e:
                log.warning("%s: output sandbox not stored: %s", self.tag, e)
                params["OutputSandboxError"] = str(e)[:1000]
                ok = False
            finally:
                tarball.unlink(missing_ok=True)
        if params:
            self.report.parameters(params)
        return ok

    def _output_files(self, desc: JobDescription) -> tuple[list[Path], list[str]]:
        """Files of ``OutputSandbox`` in the job directory (wildcards as DIRAC allows) and the
        entries that matched nothing. LFNs need a catalogue: reported missing."""
        root = self.dir.resolve()
        found: list[Path] = []
        missing: list[str] = []
        for entry in desc.output_sandbox:
            if entry.upper().startswith("LFN:") or Path(entry).is_absolute():
                missing.append(entry)
                continue
            matches = sorted(self.dir.glob(entry)) if any(c in entry for c in "*?[") else [self.dir / entry]
            matches = [m for m in matches if m.exists() and m.resolve().is_relative_to(root)
                       and not m.resolve().is_relative_to(self.control.resolve())]
            if not matches:
                missing.append(entry)
            found.extend(m for m in matches if m not in found)
        return found, missing

    # ------------------------------------------------------------ small parts

    def _std_paths(self, desc: JobDescription) -> tuple[Path | None, Path | None]:
        def inside(name: str) -> Path | None:
            path = self.dir / name
            ok = name and not Path(name).is_absolute() and path.resolve().is_relative_to(self.dir.resolve())
            return path if ok else None

        return inside(desc.std_output), inside(desc.std_error)

    def _static_parameters(self) -> dict[str, object]:
        try:
            account = getpass.getuser()
        except (KeyError, OSError):
            account = str(os.getuid())
        return {"HostName": resources.hostname(), "Model": resources.cpu_model(), "LocalAccount": account,
                "PilotReference": self.opts.PilotReference, "NumberOfProcessors": self.job.cores,
                "JobPath": str(self.dir)}
