"""The pilot's pieces on their own: slot and resource rules, the payload's process, the watchdog."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from vmdirac.core.exceptions import ConfigurationError
from vmdirac.pilot.config import PilotOptions, load_options
from vmdirac.pilot.job_agent import cores_for, resource_description
from vmdirac.pilot.payload import (
    ExecutableNotFound, Payload, StatusFile, command_line, install_status_script, payload_environment,
    resolve_executable,
)
from vmdirac.pilot.watchdog import CPU_EXCEEDED, WALL_EXCEEDED, Limits, Usage, Watchdog, describe_exit, verdict
from vmdirac.wms.job_description import JobDescription
from vmdirac.wms.matching import ResourceDescription


def desc(**attrs) -> JobDescription:
    return JobDescription.from_attrs({"Executable": "x", **attrs})


@pytest.mark.parametrize("attrs,free,cores", [
    ({}, 4, 1),                                                   # a plain job: one slot
    ({"NumberOfProcessors": 2}, 4, 2),
    ({"MinNumberOfProcessors": 2}, 3, 3),                         # no maximum: every free slot
    ({"MinNumberOfProcessors": 2, "MaxNumberOfProcessors": 8}, 4, 4),
    ({"MaxNumberOfProcessors": 2}, 4, 2),
])
def test_slots_a_job_takes(attrs, free, cores):
    assert cores_for(desc(**attrs), free) == cores


def test_the_resource_description_speaks_the_matchers_language():
    opts = PilotOptions(Servers=("https://h:1",), Site="LCG.X.ch", Tags=("GPU",), Slots=4, MaxRAM=8000,
                        Platform="x86_64-el9", InstanceID="vm-1", PilotReference="p1")
    wire = resource_description(opts, free=3, time_left=1234.7)
    res = ResourceDescription.from_wire(wire)
    assert (res.site, res.tags, res.cores, res.max_ram_mb, res.cpu_time) == ("LCG.X.ch", ("GPU",), 3, 8000, 1234)
    assert (res.instance_id, res.pilot_reference, res.platform) == ("vm-1", "p1", "x86_64-el9")
    assert "CPUTime" not in resource_description(opts, 1, None)   # no time limit: unlimited


def test_options_from_a_file_and_flags_and_their_checks(tmp_path):
    path = tmp_path / "pilot.yaml"
    path.write_text("Pilot:\n  Servers: [https://a:1, https://b:2]\n  Slots: 2\n  Tags: GPU, SSD\n")
    opts = load_options(path, {"Slots": "3", "Site": None}).resolved()
    assert opts.Servers == ("https://a:1", "https://b:2") and opts.Slots == 3 and opts.Tags == ("GPU", "SSD")
    assert opts.PilotReference.startswith("pilot-") and opts.MaxRAM > 0 and opts.Platform
    with pytest.raises(ConfigurationError, match="unknown option"):
        load_options(None, {"Slot": "3"})
    with pytest.raises(ConfigurationError, match="give the server"):
        PilotOptions().resolved()
    with pytest.raises(ConfigurationError, match="PollingInterval must be positive.*certificate needs its key"):
        PilotOptions(Servers=("https://a:1",), PollingInterval=0, Cert="c").resolved()


def test_the_watchdog_decides_on_cpu_then_wall_time():
    limits = Limits(cpu_s=10, wall_s=100)
    assert verdict(Usage(5, 50, 0, 0, 1), limits) is None
    assert verdict(Usage(11, 50, 0, 0, 1), limits) == CPU_EXCEEDED
    assert verdict(Usage(5, 101, 0, 0, 1), limits) == WALL_EXCEEDED
    assert verdict(Usage(1e9, 1e9, 0, 0, 1), Limits()) is None
    assert describe_exit(3 << 8) == (3, "exit code 3")
    assert describe_exit(signal.SIGKILL) == (-9, "killed by signal SIGKILL")


def test_executables_are_found_as_dirac_finds_them(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "TOOLS": "/bin"}
    (tmp_path / "mine.sh").write_text("#!/bin/sh\n")
    found = resolve_executable("mine.sh", tmp_path, env)
    assert found == tmp_path / "mine.sh" and os.access(found, os.X_OK)    # made executable
    assert resolve_executable("${TOOLS}/sh", tmp_path, env) == Path("/bin/sh")
    assert resolve_executable("echo", tmp_path, env).name == "echo"
    with pytest.raises(ExecutableNotFound):
        resolve_executable("no-such-program", tmp_path, env)
    odd = tmp_path / "it's mine"
    assert command_line(odd, "a > b") == ["/bin/sh", "-c", "'" + str(tmp_path) + "/it'\"'\"'s mine' a > b"]


def test_the_payload_environment_has_diracs_variables_and_not_the_pilots_credential(tmp_path):
    base = {"PATH": "/bin", "X509_USER_PROXY": "/tmp/pilot-proxy", "X509_USER_KEY": "k", "HOME": "/h"}
    env = payload_environment(base, 42, "LCG.X.ch", 2, tmp_path / ".dirac", str(tmp_path))
    assert (env["DIRACJOBID"], env["JOBID"], env["DIRACSITE"], env["DIRAC_PROCESSORS"]) == ("42", "42", "LCG.X.ch", "2")
    assert "X509_USER_PROXY" not in env and "X509_USER_KEY" not in env and env["HOME"] == "/h"
    assert env["PATH"].startswith(str(tmp_path / ".dirac" / "bin") + os.pathsep)


def run(argv: list[str], cwd: Path, env: dict | None = None) -> tuple[Payload, Watchdog]:
    payload = Payload(argv, cwd, env or dict(os.environ), cwd / "out", cwd / "out")
    return payload, Watchdog(payload.pid, Limits())


def test_application_statuses_travel_through_a_file_in_order(tmp_path):
    control = tmp_path / ".dirac"
    install_status_script(control)
    env = payload_environment(dict(os.environ), 1, "S", 1, control, "")
    script = "set-application-status step 1; set-application-status 'Gauss v36r1' Success; echo done"
    payload, _ = run(["/bin/sh", "-c", script], tmp_path, env)
    assert payload.wait_exit(30)
    assert payload.reap()[0] == 0
    statuses = StatusFile(control / "application-status")
    assert statuses.read_new() == ["step 1", "Gauss v36r1 Success"]
    assert statuses.read_new() == []
    with open(control / "application-status", "a") as fh:
        fh.write("half a li")
    assert statuses.read_new() == []          # only complete lines
    with open(control / "application-status", "a") as fh:
        fh.write("ne\n")
    assert statuses.read_new() == ["half a line"]


def test_cpu_of_the_whole_session_counts_and_nothing_outlives_the_payload(tmp_path):
    # A child burns CPU and is reaped by the leader; a grandchild is left running in the background.
    burn = f"{sys.executable} -c 'import time\nwhile time.process_time() < 0.3: pass'"
    script = f"{burn}; sleep 300 & echo $! > bg.pid; exit 4"
    payload, watchdog = run(["/bin/sh", "-c", script], tmp_path)
    assert payload.wait_exit(30)
    background = int((tmp_path / "bg.pid").read_text())
    status, rusage = payload.reap()
    usage = watchdog.finish(rusage)
    assert describe_exit(status) == (4, "exit code 4")
    assert usage.cpu_s >= 0.3
    deadline = time.monotonic() + 10
    while _state(background) not in "ZX":
        assert time.monotonic() < deadline, "the background process survived its payload"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "X"
    return text[text.rfind(")") + 2]


def test_a_signal_reaches_every_process_of_the_payload(tmp_path):
    payload, watchdog = run(["/bin/sh", "-c", "sleep 300 & sleep 300 & wait"], tmp_path)
    deadline = time.monotonic() + 10
    while watchdog.sample().processes < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    payload.signal(signal.SIGTERM)
    assert payload.wait_exit(10)
    assert describe_exit(payload.reap()[0])[0] == -signal.SIGTERM
