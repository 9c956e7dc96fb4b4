"""The agent base: cycles, failures, wake-ups and a clean stop, in-process and as a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import yaml

from tests.counter_agent import CounterAgent
from tests.conftest import ROOT, command
from vmdirac.core.config import ConfigStore


class Ctx:
    def __init__(self, tree):
        self.config = ConfigStore.fixed(tree)


def agent_tree(tmp_path: Path, **opts) -> dict:
    return {"Systems": {"Test": {"Agents": {"Counter": {"Dir": str(tmp_path), **opts}}}}}


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def lines(tmp_path: Path) -> list[str]:
    log = tmp_path / "cycles.log"
    return log.read_text().split("\n")[:-1] if log.exists() else []


def test_failed_cycle_is_logged_and_the_next_runs(tmp_path, caplog):
    agent = CounterAgent(Ctx(agent_tree(tmp_path, PollingTime=0, MaxCycles=3, FailOn=2)))
    agent.run()
    assert lines(tmp_path) == ["start 1", "end 1", "start 2", "start 3", "end 3"]
    assert agent.failed_cycles == 1
    assert "cycle 2 failed" in caplog.text and "fails on purpose" in caplog.text


def test_wake_starts_the_next_cycle_now(tmp_path):
    agent = CounterAgent(Ctx(agent_tree(tmp_path, PollingTime=3600)))
    t = threading.Thread(target=agent.run)
    t.start()
    assert wait_for(lambda: "end 1" in lines(tmp_path))
    agent.wake()
    assert wait_for(lambda: "end 2" in lines(tmp_path))
    agent.stop()
    t.join(10)
    assert not t.is_alive() and agent.cycles == 2


def _start_agent(tmp_path: Path, **opts) -> subprocess.Popen:
    cfg = tmp_path / "agent.yaml"
    tree = agent_tree(tmp_path, Module="tests.counter_agent:CounterAgent", **opts)
    tree["Local"] = {"DatabaseURL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    cfg.write_text(yaml.safe_dump(tree))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([command("dirac-agent"), "Test/Counter", "--root",
                             str(tmp_path / "root"), "-c", str(cfg)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigterm_lets_the_running_cycle_finish(tmp_path):
    proc = _start_agent(tmp_path, PollingTime=0, WaitForGo=True)
    try:
        assert wait_for(lambda: "start 1" in lines(tmp_path)), proc.stdout.read() if proc.poll() else ""
        proc.send_signal(signal.SIGTERM)
        (tmp_path / "go").touch()
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert lines(tmp_path) == ["start 1", "end 1"]
    assert "Test/Counter" in out and "stopped after 1 cycle(s)" in out


def test_dirac_agent_once_runs_one_cycle(tmp_path):
    cfg = tmp_path / "agent.yaml"
    tree = agent_tree(tmp_path, Module="tests.counter_agent:CounterAgent")
    tree["Local"] = {"DatabaseURL": f"sqlite:///{tmp_path / 'db.sqlite'}"}
    cfg.write_text(yaml.safe_dump(tree))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([command("dirac-agent"), "Test/Counter", "--once",
                           "--root", str(tmp_path / "root"), "-c", str(cfg)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert lines(tmp_path) == ["start 1", "end 1"]


def test_unknown_agent_is_a_one_line_error(tmp_path):
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({"Local": {"DatabaseURL": f"sqlite:///{tmp_path / 'db.sqlite'}"}}))
    done = subprocess.run([command("dirac-agent"), "Test/Nope", "--root",
                           str(tmp_path / "root"), "-c", str(cfg)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("ERROR: unknown agent Test/Nope; known: ")
    assert "WorkloadManagement/StalledJobAgent" in done.stderr
