"""One payload process: how it is started, waited for, killed, and how it reports its status.

The payload is DIRAC's command line ``<Executable> <Arguments>`` run by ``/bin/sh -c``, as DIRAC's
JobWrapper runs it (users rely on redirections and ``$VAR`` in Arguments; the shell gives the
payload no power it would not have anyway, since it is the user's own code). The executable
path itself is resolved first (``${VAR}`` expanded, then the job directory, then ``PATH``) and
quoted, so an odd file name cannot inject anything. The process is the leader of a session of
its own: every process it starts can be found and killed through the session id.

The payload sets its application status by running ``set-application-status TEXT`` (put first
on its ``PATH``), which appends a line to the file named by ``$DIRAC_APPLICATION_STATUS_FILE``;
the wrapper reads new lines as they come and forwards them. A plain file needs no socket, no
daemon and no credential inside the payload, and any language can write to it.
"""

from __future__ import annotations

import logging
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from vmdirac.pilot.watchdog import signal_session

log = logging.getLogger(__name__)

STATUS_SCRIPT = "set-application-status"
STATUS_ENV = "DIRAC_APPLICATION_STATUS_FILE"
MAX_STATUS = 255               # the width of the ApplicationStatus column
_SCRIPT = """#!/bin/sh
# set-application-status TEXT...: the job's application status, as the portal shows it.
# Written by the vmdirac pilot; the JobWrapper forwards each line to JobStateUpdate.
if [ -z "$DIRAC_APPLICATION_STATUS_FILE" ]; then
  echo "set-application-status: not inside a vmdirac job" >&2; exit 1
fi
printf '%s\\n' "$(printf '%s' "$*" | tr '\\n\\r' '  ')" >> "$DIRAC_APPLICATION_STATUS_FILE"
"""
# Variables of the pilot that are its own business, not the payload's.
_PRIVATE_ENV = ("X509_USER_PROXY", "X509_USER_CERT", "X509_USER_KEY", "VMDIRAC_CLIENT_CONFIG", "VMDIRAC_DB_URL")


class ExecutableNotFound(Exception):
    pass


def resolve_executable(executable: str, job_dir: Path, env: dict[str, str]) -> Path:
    """The file DIRAC would run for ``Executable``: absolute, in the job directory, or on PATH."""
    expanded = os.path.expanduser(_expand(executable, env))
    path = Path(expanded)
    if path.is_absolute():
        if path.is_file():
            return path
        raise ExecutableNotFound(f"{executable}: no such file")
    local = job_dir / path
    if local.is_file():
        inside = local.resolve().is_relative_to(job_dir.resolve())
        if inside and not os.access(local, os.X_OK):
            local.chmod(local.stat().st_mode | 0o700)   # a script from the input sandbox
        return local.absolute()
    found = shutil.which(expanded, path=env.get("PATH", os.defpath)) if "/" not in expanded else None
    if found:
        return Path(found)
    raise ExecutableNotFound(f"{executable}: not in the job directory nor on PATH")


_VAR = re.compile(r"\$(\w+|\{[^}]*\})")


def _expand(text: str, env: dict[str, str]) -> str:
    """``$VAR`` and ``${VAR}`` from ``env``; unknown ones left as written (as os.path.expandvars,
    which reads only the process environment, shared by every wrapper thread)."""
    def value(m: re.Match) -> str:
        name = m.group(1).strip("{}")
        return env.get(name, m.group(0))

    return _VAR.sub(value, text)


def command_line(executable: Path, arguments: str) -> list[str]:
    line = shlex.quote(str(executable)) + (f" {arguments}" if arguments.strip() else "")
    return ["/bin/sh", "-c", line]


def payload_environment(base: dict[str, str], job_id: int, site: str, cores: int, control: Path,
                        ca_dir: str) -> dict[str, str]:
    """The payload's environment: the pilot's, minus its credential, plus DIRAC's variables."""
    env = {k: v for k, v in base.items() if k not in _PRIVATE_ENV}
    env.update({
        "DIRACJOBID": str(job_id), "JOBID": str(job_id), "DIRACSITE": site,
        "DIRAC_PROCESSORS": str(cores), "DIRAC_JOB_PROCESSORS": str(cores), "DIRAC_WHOLENODE": "False",
        STATUS_ENV: str(control / "application-status"),
        "PATH": f"{control / 'bin'}{os.pathsep}{base.get('PATH', os.defpath)}",
    })
    if ca_dir and Path(ca_dir).is_dir():
        env["X509_CERT_DIR"] = ca_dir
    return env


def install_status_script(control: Path) -> None:
    (control / "bin").mkdir(parents=True, exist_ok=True)
    script = control / "bin" / STATUS_SCRIPT
    script.write_text(_SCRIPT)
    script.chmod(0o755)
    (control / "application-status").touch()


class StatusFile:
    """New complete lines of the application-status file, in order."""

    MAX_PER_READ = 10   # a payload that floods gets its latest statuses forwarded, not all

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def read_new(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read(1 << 20)
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        lines = [line.decode("utf-8", "replace").strip()[:MAX_STATUS] for line in data[:end].split(b"\n")]
        lines = [line for line in lines if line]
        return lines[-self.MAX_PER_READ:]


class Payload:
    """A started payload process (session leader) until it is reaped."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], stdout: Path, stderr: Path) -> None:
        out = open(stdout, "ab")
        err = out if stderr == stdout else open(stderr, "ab")
        try:
            self._proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=err, start_new_session=True, close_fds=True)
        finally:
            out.close()
            if err is not out:
                err.close()
        self.pid = self._proc.pid
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # pragma: no cover - kernels before 5.3
            self._pidfd = None
        self.status: int | None = None
        self.rusage: os.struct_rusage | None = None

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the payload to exit; True once it has (not yet reaped, so
        its session id stays reserved for ``signal``)."""
        if self._pidfd is not None:
            readable, _, _ = select.select([self._pidfd], [], [], max(0.0, timeout))
            if not readable:
                return False
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None and self._pidfd is None:
            # Without a pidfd, poll in short steps.
            deadline = time.monotonic() + timeout
            while info is None and time.monotonic() < deadline:
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return info is not None

    def signal(self, sig: int) -> None:
        """``sig`` to every process of the payload's session (before it is reaped)."""
        if self.status is None:
            signal_session(self.pid, sig)

    def reap(self) -> tuple[int, os.struct_rusage]:
        """Once exited: kill what it left running in its session, then collect its status."""
        if self.status is None:
            signal_session(self.pid, signal.SIGKILL)   # its leftovers; the leader is a zombie
            _, self.status, self.rusage = os.wait4(self.pid, 0)
            self._proc.returncode = self.status        # reaped here, not by subprocess
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        assert self.rusage is not None
        return self.status, self.rusage
