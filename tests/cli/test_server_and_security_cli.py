"""The commands a new install uses, as child processes: cert-init, the server, proxies, config."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

from tests.conftest import ROOT, command
from tests.core.test_rpc_protocol import _closed_port
from vmdirac.core import x509 as X


class Install:
    """A one-machine install in a temporary directory, with its own HOME."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.root = tmp_path / "root"
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.env = {**{k: v for k, v in os.environ.items() if k != "VMDIRAC_DB_URL"},
                    "HOME": str(self.home), "X509_USER_PROXY": str(tmp_path / "proxy.pem"),
                    "VMDIRAC_DB_URL": db_url}
        self.proxy = tmp_path / "proxy.pem"
        self.server: subprocess.Popen | None = None
        self.output: list[str] = []

    def run(self, name: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([command(name), *args], env=self.env, input=stdin, capture_output=True,
                              text=True, timeout=120, cwd=ROOT)

    def start(self, *cmd: str) -> int:
        self.server = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        port = None
        for line in self.server.stdout:
            self.output.append(line)
            match = re.search(r"serving .* on https://localhost:(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "".join(self.output)
        threading.Thread(target=lambda: self.output.extend(self.server.stdout), daemon=True).start()
        settings = self.home / ".vmdirac" / "dirac.yaml"
        data = yaml.safe_load(settings.read_text())
        data["ConfigurationServer"] = [f"https://localhost:{port}/Configuration/Server"]
        settings.write_text(yaml.safe_dump(data))
        return port

    def stop(self) -> int:
        self.server.send_signal(signal.SIGTERM)
        return self.server.wait(30)


@pytest.fixture
def install(tmp_path, db_url):
    inst = Install(tmp_path, db_url)
    done = inst.run("dirac-cert-init", "--root", str(inst.root), "--user", "carol")
    assert done.returncode == 0, done.stderr
    yield inst
    if inst.server and inst.server.poll() is None:
        inst.server.kill()


def test_cert_init_makes_a_usable_pki(install):
    sec = install.root / "etc" / "grid-security"
    for key in (sec / "hostkey.pem", sec / "ca" / "cakey.pem", sec / "users" / "carol" / "userkey.pem"):
        assert key.stat().st_mode & 0o077 == 0, key
    host = X.load_certificates((sec / "hostcert.pem").read_bytes())[0]
    sans = host.extensions.get_extension_for_class(X.x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(X.x509.DNSName)
    local = yaml.safe_load((install.root / "etc" / "local.yaml").read_text())
    assert local["Registry"]["Users"]["carol"]["DN"] == "/O=vmdirac/OU=users/CN=carol"
    ca_before = (sec / "certificates" / "vmdirac-ca.pem").read_bytes()
    again = install.run("dirac-cert-init", "--root", str(install.root), "--user", "carol")
    assert again.returncode == 0 and (sec / "certificates" / "vmdirac-ca.pem").read_bytes() == ca_before


def test_server_proxies_and_configuration_end_to_end(install):
    install.start(command("vmdirac-server"), "--root", str(install.root), "-c",
                  str(ROOT / "etc" / "vmdirac.yaml"), "--port", "0", "--web-port", "0")
    done = install.run("dirac-proxy-init", "-g", "dirac_admin", "-v", "2:30")
    assert done.returncode == 0, done.stderr
    assert "in group dirac_admin" in done.stdout
    info = install.run("dirac-proxy-info")
    assert info.returncode == 0
    assert re.search(r"identity\s+: /O=vmdirac/OU=users/CN=carol", info.stdout)
    assert re.search(r"DIRAC group\s+: dirac_admin", info.stdout)
    assert re.search(r"timeleft\s+: 02:(29|30):", info.stdout)
    dump = install.run("dirac-configuration-dump")
    assert dump.returncode == 0 and "dirac_admin" in dump.stdout
    assert "Local" not in yaml.safe_load(dump.stdout)  # the host's own section is never served

    edited = install.home / "cs.yaml"
    tree = yaml.safe_load(dump.stdout)
    tree["Operations"] = {"Defaults": {"Note": "edited"}}
    edited.write_text(yaml.safe_dump(tree))
    stale = install.run("dirac-configuration-commit", str(edited), "--based-on", "0")
    assert stale.returncode == 1 and stale.stderr.count("\n") == 1 and "not 0" in stale.stderr
    ok = install.run("dirac-configuration-commit", str(edited), "--based-on", "1", "-m", "note")
    assert ok.returncode == 0 and "version 2" in ok.stdout

    wrong = install.run("dirac-proxy-init", "-g", "dirac_pilot")
    assert wrong.returncode == 1
    assert wrong.stderr == "ERROR: carol is not a member of group dirac_pilot; your groups: dirac_user, dirac_admin\n"
    bad_valid = install.run("dirac-proxy-init", "-v", "forever")
    assert bad_valid.returncode == 1 and "bad validity" in bad_valid.stderr

    assert install.stop() == 0
    log = "".join(install.output)
    assert re.search(r"Configuration/Server\.getCompressedData by carol@dirac_admin from 127\.0\.0\.1: OK in \d+\.\d ms", log)
    assert "stopped" in log


def test_dirac_service_runs_one_service(install):
    install.start(command("dirac-service"), "Configuration/Server", "--root", str(install.root),
                  "-c", str(ROOT / "etc" / "vmdirac.yaml"), "--port", "0")
    assert install.run("dirac-proxy-init").returncode == 0
    assert install.run("dirac-configuration-dump", "--version-only").stdout.strip() == "1"
    assert install.stop() == 0


def test_commands_without_a_server_fail_in_one_line(install):
    assert install.run("dirac-proxy-init", "--no-check").returncode == 0
    settings = install.home / ".vmdirac" / "dirac.yaml"
    data = yaml.safe_load(settings.read_text())
    data["ConfigurationServer"] = [f"https://localhost:{_closed_port()}/Configuration/Server"]
    settings.write_text(yaml.safe_dump(data))
    done = install.run("dirac-configuration-dump")
    assert done.returncode == 1
    assert done.stderr.startswith("ERROR: Configuration/Server.getCompressedData: no server answered")
    assert done.stderr.count("\n") == 1
    nop = install.run("dirac-proxy-info", "-f", "/nonexistent/proxy")
    assert nop.returncode == 1 and nop.stderr == "ERROR: no proxy at /nonexistent/proxy: run dirac-proxy-init\n"


def test_cert_convert_and_an_encrypted_key(install, tmp_path):
    sec = install.root / "etc" / "grid-security" / "users" / "carol"
    cred = X.Credential.from_files(sec / "usercert.pem", sec / "userkey.pem")
    p12 = tmp_path / "carol.p12"
    p12.write_bytes(pkcs12.serialize_key_and_certificates(b"carol", cred.key, cred.chain[0], None,
                                                          BestAvailableEncryption(b"s3cret")))
    out = tmp_path / "globus"
    wrong = install.run("dirac-cert-convert", str(p12), "-o", str(out), "--pwstdin", stdin="nope\n")
    assert wrong.returncode == 1 and "wrong password" in wrong.stderr
    assert not out.exists() or not (out / "userkey.pem").exists()
    done = install.run("dirac-cert-convert", str(p12), "-o", str(out), "--pwstdin", stdin="s3cret\n")
    assert done.returncode == 0, done.stderr
    key_pem = (out / "userkey.pem").read_bytes()
    assert b"ENCRYPTED" in key_pem and (out / "userkey.pem").stat().st_mode & 0o077 == 0
    assert X.load_certificates((out / "usercert.pem").read_bytes())[0] == cred.chain[0]
    made = install.run("dirac-proxy-init", "--no-check", "-C", str(out / "usercert.pem"), "-K",
                       str(out / "userkey.pem"), "--pwstdin", stdin="s3cret\n")
    assert made.returncode == 0, made.stderr
    bad = install.run("dirac-proxy-init", "--no-check", "-C", str(out / "usercert.pem"), "-K",
                      str(out / "userkey.pem"), "--pwstdin", stdin="wrong\n")
    assert bad.returncode == 1 and "cannot read the private key" in bad.stderr
