"""SSH contextualization of plain images (no cloud-init): copy the files cloud-init would write
and run the same start script, over the ``ssh`` and ``scp`` client binaries.

The caller (the scheduler or reconciler) owns the instance states: it keeps a VM in
``Wait_ssh_context`` while ``probe`` raises ``SSHUnreachable`` (not up yet: try again later),
moves it to ``Contextualizing`` and calls ``contextualize``; ``SSHAuthFailed`` and
``SSHCommandFailed`` are errors worth an ``Error`` state, not a retry.

One ``contextualize``: ``scp -r`` a private staging directory (the files, an install script,
the start script) to ``/tmp/vmdirac-context-*`` on the VM, then one ``ssh`` running the
install script: it installs each file with its mode (through ``sudo -n`` unless the user is
root), runs the start script (the monitor it starts under ``nohup`` outlives the SSH session)
and removes the staging directory. ``remote_root`` puts every path under a directory
(tests on loopback, or a chroot); it is exported to the start script as ``VMDIRAC_VM_ROOT``.

Host keys are not checked by default (a VM is new at every boot, its key unknown in advance;
VMDIRAC does the same): give ``known_hosts`` to pin them (``StrictHostKeyChecking=accept-new``).
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from vmdirac.contexts import VMContext, VMFile, start_script, vm_files
from vmdirac.core.exceptions import ConfigurationError, VMDiracError

log = logging.getLogger(__name__)

UNREACHABLE = ("connection refused", "connection timed out", "timed out", "no route to host",
               "network is unreachable", "could not resolve hostname", "connection closed",
               "connection reset", "kex_exchange_identification", "host is down")
AUTH = ("permission denied", "too many authentication failures", "no such identity", "host key verification failed")


class SSHError(VMDiracError):
    """SSH contextualization failed."""


class SSHUnreachable(SSHError):
    """The VM does not answer on SSH (yet): keep waiting, try later."""


class SSHAuthFailed(SSHError):
    """The VM refuses the key (or its host key is wrong): a configuration error."""


class SSHCommandFailed(SSHError):
    """Connected, but the copy or the install script failed."""

    def __init__(self, message: str, returncode: int, output: str = "") -> None:
        super().__init__(message, returncode=returncode)
        self.returncode = returncode
        self.output = output


@dataclass(frozen=True)
class SSHTarget:
    host: str
    user: str = "root"
    port: int = 22
    key_file: str = ""
    known_hosts: str = ""            # pin host keys in this file; "" = no host key check
    connect_timeout: float = 10.0
    command_timeout: float = 120.0
    ssh: str = "ssh"
    scp: str = "scp"

    def options(self) -> list[str]:
        opts = ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(self.connect_timeout))}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR"]
        if self.known_hosts:
            opts += ["-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={self.known_hosts}"]
        else:
            opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        if self.key_file:
            if not Path(self.key_file).is_file():
                raise ConfigurationError(f"SSH key file {self.key_file} does not exist")
            opts += ["-o", "IdentitiesOnly=yes", "-i", self.key_file]
        return opts

    @property
    def login(self) -> str:
        return f"{self.user}@{self.host}"


@dataclass(frozen=True)
class ContextResult:
    host: str
    files: tuple[str, ...]        # installed VM paths
    output: str                   # what the install and start scripts printed
    seconds: float


def _classify(target: SSHTarget, what: str, done: subprocess.CompletedProcess) -> SSHError:
    text = (done.stderr or "").strip()
    low = text.lower()
    where = f"{what} {target.login}:{target.port}"
    if done.returncode == 255 or "lost connection" in low:
        if any(s in low for s in AUTH):
            return SSHAuthFailed(f"{where}: authentication refused: {text[-300:]}", host=target.host)
        if any(s in low for s in UNREACHABLE) or not text:
            return SSHUnreachable(f"{where}: not reachable: {text[-300:] or 'no answer'}", host=target.host)
    return SSHCommandFailed(f"{where} failed (exit {done.returncode}): {text[-500:]}", done.returncode,
                            (done.stdout or "") + text)


def _run(target: SSHTarget, what: str, argv: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise SSHUnreachable(f"{what} {target.login}:{target.port}: no answer within {timeout:.0f} s",
                             host=target.host) from e
    except FileNotFoundError as e:
        raise ConfigurationError(f"{argv[0]} is not installed (SSH contextualization needs the OpenSSH client)") from e
    if done.returncode:
        raise _classify(target, what, done)
    return done.stdout


def ssh(target: SSHTarget, command: str, timeout: float | None = None) -> str:
    """Run ``command`` (a shell line) on the VM; its standard output."""
    argv = [target.ssh, *target.options(), "-p", str(target.port), target.login, command]
    return _run(target, "ssh", argv, timeout or target.command_timeout)


def probe(target: SSHTarget) -> None:
    """Raises ``SSHUnreachable`` while the VM's SSH is not up, ``SSHAuthFailed`` if it refuses us."""
    ssh(target, "true", timeout=target.connect_timeout + 10)


def install_script(files: list[VMFile]) -> str:
    lines = ["#!/bin/sh", "# vmdirac SSH contextualization: install the files, start the VM Monitor.", "set -e",
             'R="$1"', 'S="$(cd "$(dirname "$0")" && pwd)"',
             'SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"']
    for n, f in enumerate(files):
        lines.append(f'$SUDO install -D -m {f.mode:04o} "$S/files/{n}" "$R"{shlex.quote(f.path)}')
    lines += [
        # The start script runs the monitor under nohup with its output to a file: it outlives
        # this SSH session (which has no terminal, so no hang-up reaches it anyway).
        '$SUDO env VMDIRAC_VM_ROOT="$R" sh "$S/start.sh" </dev/null',
        'rm -rf "$S"',
    ]
    return "\n".join(lines) + "\n"


def push(target: SSHTarget, files: list[VMFile], script: str, remote_root: str = "") -> ContextResult:
    """Copy ``files`` to the VM and run ``script`` there (see the module's docstring)."""
    started = time.monotonic()
    remote = f"/tmp/vmdirac-context-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="vmdirac-ssh-") as tmp:
        stage = Path(tmp) / "stage"
        (stage / "files").mkdir(parents=True, mode=0o700)
        stage.chmod(0o700)
        for n, f in enumerate(files):
            path = stage / "files" / str(n)
            path.write_bytes(f.content)
            path.chmod(0o600)
        (stage / "install.sh").write_text(install_script(files))
        (stage / "start.sh").write_text(script)
        argv = [target.scp, *target.options(), "-P", str(target.port), "-r", "-p", "-q", str(stage),
                f"{target.login}:{remote}"]
        _run(target, "scp", argv, target.command_timeout)
    output = ssh(target, f"sh {remote}/install.sh {shlex.quote(remote_root)}")
    result = ContextResult(target.host, tuple(f.path for f in files), output, time.monotonic() - started)
    log.info("contextualized %s over SSH in %.1f s: %d file(s) installed, start script run", target.host,
             result.seconds, len(files))
    return result


def contextualize(target: SSHTarget, ctx: VMContext, remote_root: str = "", start_pilot: bool = True) -> ContextResult:
    """Install the VM's credential, CA and configuration, and start its VM Monitor (and pilot)."""
    return push(target, vm_files(ctx, start_pilot), start_script(ctx), remote_root)
