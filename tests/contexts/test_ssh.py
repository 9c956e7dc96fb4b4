"""SSH contextualization against a real OpenSSH server on loopback (started by the test)."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.contexts.context_fixtures import realistic_context
from tests.waiting import free_port, wait_for
from vmdirac.contexts import CA_PATH, CONFIG_PATH, CREDENTIAL_PATH
from vmdirac.contexts.ssh import (
    SSHAuthFailed, SSHCommandFailed, SSHTarget, SSHUnreachable, contextualize, probe, ssh,
)

SSHD = "/usr/sbin/sshd"


def _missing() -> str:
    if not os.path.exists(SSHD):
        return f"{SSHD} is not installed (apt-get install openssh-server)"
    for tool in ("ssh", "scp", "ssh-keygen"):
        if not shutil.which(tool):
            return f"{tool} is not installed (apt-get install openssh-client)"
    if os.geteuid() != 0:
        return "sshd must run as root here (it changes to the logged-in user)"
    return ""


pytestmark = pytest.mark.skipif(bool(_missing()), reason=_missing() or "-")




def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture
def sshd(tmp_path):
    """An sshd on 127.0.0.1:<free port> that accepts one key the test generated."""
    d = tmp_path / "sshd"
    d.mkdir()
    host_key = keygen(d / "host_key")
    client_key = keygen(d / "client_key")
    (d / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
    port = free_port()
    config = d / "sshd_config"
    config.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {d / "sshd.pid"}
AuthorizedKeysFile {d / "authorized_keys"}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
LogLevel VERBOSE
""")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)    # its privilege separation directory
    log = open(d / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-p", str(port), "-f", str(config), "-h", str(host_key)],
                            stdout=log, stderr=subprocess.STDOUT)

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"sshd exited ({proc.returncode}): {(d / 'sshd.log').read_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, 15, "sshd to listen")
    yield SSHTarget("127.0.0.1", user=getpass.getuser(), port=port, key_file=str(client_key), connect_timeout=5,
                    command_timeout=60)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def fake_monitor(tmp_path: Path) -> tuple[Path, Path]:
    """An executable standing in for the VM's Python: records how the start script ran it."""
    record = tmp_path / "monitor-started"
    exe = tmp_path / "fake-python"
    exe.write_text(f'#!/bin/sh\necho "$@" > {record}.tmp\necho "root=$VMDIRAC_VM_ROOT" >> {record}.tmp\n'
                   f'mv {record}.tmp {record}\n')
    exe.chmod(0o755)
    return exe, record


def test_contextualize_installs_the_files_and_starts_the_monitor(sshd, pki, tmp_path):
    root = tmp_path / "vm-root"
    exe, record = fake_monitor(tmp_path)
    ctx = realistic_context(pki, python=str(exe))
    probe(sshd)
    before = set(Path("/tmp").glob("vmdirac-context-*"))

    result = contextualize(sshd, ctx, remote_root=str(root))

    assert result.files == (CREDENTIAL_PATH, CA_PATH, CONFIG_PATH)
    assert "VM Monitor started" in result.output
    credential = root / CREDENTIAL_PATH.lstrip("/")
    assert credential.read_bytes() == ctx.credential_pem
    assert credential.stat().st_mode & 0o777 == 0o600
    assert (root / CA_PATH.lstrip("/")).read_bytes() == ctx.ca_pem
    tree = yaml.safe_load((root / CONFIG_PATH.lstrip("/")).read_text())
    assert tree["Instance"]["ID"] == ctx.instance_id and tree["Monitor"]["StopPolicy"] == "Elastic"
    # The start script ran the monitor, in the background, with the VM root exported.
    started = wait_for(lambda: record.exists() and record.read_text(), 15, "the monitor to be started")
    assert f"-m vmdirac.cli.vm_monitor --config {root}{CONFIG_PATH}" in started
    assert f"root={root}" in started
    assert (root / "var/log/vmdirac/vm-monitor.log").exists()
    # The staging directory with the credential is gone.
    assert set(Path("/tmp").glob("vmdirac-context-*")) == before


def test_a_refused_key_is_an_authentication_error(sshd, tmp_path):
    other = keygen(tmp_path / "other_key")
    with pytest.raises(SSHAuthFailed, match="authentication refused"):
        probe(SSHTarget(sshd.host, user=sshd.user, port=sshd.port, key_file=str(other), connect_timeout=5))


def test_nothing_listening_is_unreachable_so_the_caller_waits(sshd):
    with pytest.raises(SSHUnreachable, match="not reachable"):
        probe(SSHTarget(sshd.host, user=sshd.user, port=free_port(), key_file=sshd.key_file, connect_timeout=5))


def test_a_failing_command_is_a_command_error(sshd):
    assert ssh(sshd, "echo hello").strip() == "hello"
    with pytest.raises(SSHCommandFailed) as err:
        ssh(sshd, "echo broken >&2; exit 7")
    assert err.value.returncode == 7 and "broken" in str(err.value)
