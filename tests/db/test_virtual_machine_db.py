"""VirtualMachineDB on both backends: the instance state machine and its history, heartbeats and
their commands, stop requests, counters, time buckets for plots, paging."""

from __future__ import annotations

import datetime as dt
from collections import deque

import pytest
from sqlalchemy import update

from vmdirac.core.config import Snapshot
from vmdirac.core.db import make_engine, utcnow
from vmdirac.core.exceptions import IllegalTransition, InvalidArgument, NotFound
from vmdirac.db.virtual_machine_db import Beat, InstanceFilter, VirtualMachineDB, history, instances
from vmdirac.vm.config import pods, endpoints
from vmdirac.vm.instance_status import TRANSITIONS, InstanceStatus as I

HOUR = dt.timedelta(hours=1)


@pytest.fixture
def db(db_url):
    engine = make_engine(db_url)
    vmdb = VirtualMachineDB(engine)
    vmdb.create_tables()
    yield vmdb
    engine.dispose()


def new(db: VirtualMachineDB, pod: str = "pod1", endpoint: str = "Site1/cloud1", **kw) -> int:
    return db.new_instance(pod, "el9", endpoint, endpoint.split("/")[0], vo=kw.pop("vo", "vo1"), **kw)[0]


def path_to(target: I) -> list[I]:
    """The shortest chain of legal transitions from New to ``target``."""
    seen, queue = {I.NEW: [I.NEW]}, deque([I.NEW])
    while queue:
        cur = queue.popleft()
        for nxt in sorted(TRANSITIONS[cur]):
            if nxt not in seen:
                seen[nxt] = seen[cur] + [nxt]
                queue.append(nxt)
    return seen[target]


def in_status(db: VirtualMachineDB, status: I) -> int:
    instance_id = new(db)
    for step in path_to(status)[1:]:
        db.set_status(instance_id, step, f"to {step}")
    assert db.get(instance_id).status == status
    return instance_id


def age(db: VirtualMachineDB, instance_id: int, delta: dt.timedelta) -> None:
    """Pretend the instance's last update happened ``delta`` earlier (time passing, no sleep)."""
    with db.engine.begin() as conn:
        last = db.get(instance_id).last_update
        conn.execute(update(instances).where(instances.c.InstanceID == instance_id).values(LastUpdate=last - delta))


def test_the_deployment_id_is_made_once_and_kept(db):
    first = db.deployment_id()
    assert first.startswith("vmdirac-") and VirtualMachineDB(db.engine).deployment_id() == first


# ---------------------------------------------------------------- the state machine

def test_a_new_instance_is_recorded_before_anything_else_with_a_unique_name(db):
    first, name = db.new_instance("Big_Pod.1", "el9", "Site1/cloud1", "Site1", vo="vo1")
    second, other = db.new_instance("Big_Pod.1", "el9", "Site1/cloud1", "Site1", vo="vo1")
    assert (name, other) == (f"big-pod-1-{first}", f"big-pod-1-{second}")
    vm = db.get(first)
    assert (vm.status, vm.pod, vm.endpoint, vm.site, vm.endpoint_vm_id, vm.pending_command) == \
        ("New", "Big_Pod.1", "Site1/cloud1", "Site1", "", "")
    assert [(h.status, h.reason) for h in db.history(first)] == [("New", "to be booted")]


def test_every_transition_of_the_table_is_allowed_and_every_other_refused(db):
    refused = allowed = 0
    for current in I:
        for target in I:
            if current == target:
                continue
            instance_id = in_status(db, current)
            rows = len(db.history(instance_id))
            if target in TRANSITIONS[current]:
                assert db.set_status(instance_id, target, f"because {current}->{target}") == target
                last = db.history(instance_id)[-1]
                assert (last.status, last.reason) == (target, f"because {current}->{target}")
                assert len(db.history(instance_id)) == rows + 1
                allowed += 1
            else:
                with pytest.raises(IllegalTransition, match=f"instance {instance_id}: {current} -> {target}"):
                    db.set_status(instance_id, target, "not allowed")
                assert db.get(instance_id).status == current and len(db.history(instance_id)) == rows
                refused += 1
    assert allowed == sum(len(v) for v in TRANSITIONS.values()) and refused == 9 * 8 - allowed


def test_history_has_time_status_and_reason_of_each_change_and_stamps_are_set(db):
    before = utcnow()
    instance_id = new(db)
    assert db.set_submitted(instance_id, "vm-0001", ["192.0.2.7"], ["10.0.0.7", "10.0.0.8"]) == "Submitted"
    db.set_status(instance_id, "Running", "monitor up")
    db.set_status(instance_id, "Running", "again: no change, no row")
    db.set_status(instance_id, "Halted", "done")
    rows = db.history(instance_id)
    assert [(h.status, h.reason) for h in rows] == [
        ("New", "to be booted"), ("Submitted", "the endpoint accepted the boot"), ("Running", "monitor up"),
        ("Halted", "done")]
    assert all(before <= h.time <= utcnow() and h.time.tzinfo is not None for h in rows)
    vm = db.get(instance_id)
    assert (vm.endpoint_vm_id, vm.public_ip, vm.private_ip) == ("vm-0001", "192.0.2.7", "10.0.0.7,10.0.0.8")
    assert vm.created <= vm.submitted <= vm.started <= vm.halted


def test_expect_guards_a_change_against_a_race(db):
    instance_id = in_status(db, I.RUNNING)
    with pytest.raises(IllegalTransition, match="is Running, not Submitted"):
        db.set_status(instance_id, "Stalled", "no heartbeat", expect=("Submitted",))
    assert db.set_status(instance_id, "Stalled", "no heartbeat", expect=("Running",)) == "Stalled"
    with pytest.raises(InvalidArgument, match="unknown instance status 'Sleeping'"):
        db.set_status(instance_id, "Sleeping", "?")
    with pytest.raises(NotFound, match="instance 999999 does not exist"):
        db.set_status(999999, "Halted", "?")


def test_errors_keep_their_message_and_an_error_is_only_halted(db):
    instance_id = new(db)
    assert db.set_error(instance_id, "QuotaExceeded: 20 instances") == "Error"
    vm = db.get(instance_id)
    assert (vm.status, vm.error_message) == ("Error", "QuotaExceeded: 20 instances")
    assert db.history(instance_id)[-1].reason == "QuotaExceeded: 20 instances"
    with pytest.raises(IllegalTransition):
        db.set_status(instance_id, "Running", "?")
    db.set_status(instance_id, "Halted", "cleaned")
    with pytest.raises(IllegalTransition, match="Halted -> Error"):
        db.set_error(instance_id, "late")


def test_a_vm_faster_than_the_scheduler_and_a_boot_stopped_meanwhile(db):
    fast = new(db)
    assert db.declare_running(fast, "10.0.0.1").status == "Running"   # before set_submitted
    assert db.set_submitted(fast, "vm-fast", [], []) == "Running"
    assert [h.status for h in db.history(fast)] == ["New", "Submitted", "Running"]
    stopped = new(db)
    assert db.request_stop(stopped) == "Halted"
    assert db.set_submitted(stopped, "vm-late", ["192.0.2.1"], []) == "Halted"   # the caller terminates it
    assert db.by_endpoint_vm_ids("Site1/cloud1", ["vm-late"])["vm-late"].status == "Halted"


# ---------------------------------------------------------------- heartbeats

def test_heartbeats_record_figures_and_history_and_answer_the_pending_command(db):
    instance_id = in_status(db, I.SUBMITTED)
    assert db.heartbeat(instance_id, 0.75, 2, 10, 2048, 120.0) == ""
    vm = db.get(instance_id)
    assert (vm.status, vm.load, vm.jobs, vm.transferred_files, vm.transferred_bytes, vm.uptime) == \
        ("Running", 0.75, 2, 10, 2048, 120.0)
    assert db.heartbeat(instance_id, 0.5, 1, 12, 4096, 420.0) == ""
    rows = db.history(instance_id)[-2:]
    assert [(h.status, h.load, h.jobs, h.transferred_files, h.transferred_bytes, h.reason) for h in rows] == [
        ("Running", 0.75, 2, 10, 2048, "heartbeat"), ("Running", 0.5, 1, 12, 4096, "heartbeat")]
    assert db.request_stop(instance_id) == "Stopping"
    assert db.heartbeat(instance_id, 0.5, 1, 12, 4096, 720.0) == "stop"
    assert db.heartbeat(instance_id, 0.1, 0, 12, 4096, 1020.0) == "stop"       # repeated until halted
    assert db.get(instance_id).status == "Stopping"
    db.set_status(instance_id, "Halted", "declared halting")
    with pytest.raises(IllegalTransition, match=f"instance {instance_id} is Halted: it may not report"):
        db.heartbeat(instance_id, 0, 0, 0, 0, 1.0)
    assert db.get(instance_id).pending_command == ""


def test_a_stalled_instance_that_heartbeats_is_running_again(db):
    instance_id = in_status(db, I.RUNNING)
    db.set_status(instance_id, "Stalled", "no heartbeat for 2400 s")
    assert db.heartbeat(instance_id, 0.2, 1, 0, 0, 3000.0) == ""
    assert [(h.status, h.reason) for h in db.history(instance_id)[-2:]] == [
        ("Stalled", "no heartbeat for 2400 s"), ("Running", "heartbeat")]


def test_reporting_walks_through_skipped_states_and_an_error_is_told_to_halt(db):
    ssh = in_status(db, I.WAIT_SSH_CONTEXT)
    assert db.heartbeat(ssh, 0.1, 0, 0, 0, 10.0) == ""
    assert [h.status for h in db.history(ssh)][-3:] == ["Wait_ssh_context", "Contextualizing", "Running"]
    broken = in_status(db, I.ERROR)
    assert db.heartbeat(broken, 0.1, 0, 0, 0, 10.0) == "halt"
    assert db.get(broken).status == "Error"
    with pytest.raises(IllegalTransition):
        db.declare_running(broken, "10.0.0.2")


def test_a_batch_of_heartbeats_answers_each_beat_as_alone(db):
    running, stopping, stalled, halted, broken = (in_status(db, s) for s in (
        I.RUNNING, I.RUNNING, I.STALLED, I.HALTED, I.ERROR))
    db.request_stop(stopping)
    beats = [Beat(running, 0.1, 1, 1, 10, 60.0), Beat(stopping, 0.2, 2, 2, 20, 60.0), Beat(999999, 0, 0, 0, 0, 1.0),
             Beat(stalled, 0.3, 3, 3, 30, 60.0), Beat(halted, 0, 0, 0, 0, 1.0), Beat(broken, 0, 0, 0, 0, 1.0),
             Beat(running, 0.4, 4, 4, 40, 120.0)]
    answers = db.heartbeats(beats)
    assert answers[:2] == ["", "stop"] and answers[3] == "" and answers[5:] == ["halt", ""]
    assert isinstance(answers[2], NotFound) and isinstance(answers[4], IllegalTransition)
    assert [(h.status, h.load, h.reason) for h in db.history(running)[-2:]] == [
        ("Running", 0.1, "heartbeat"), ("Running", 0.4, "heartbeat")]
    vm = db.get(running)
    assert (vm.load, vm.jobs, vm.transferred_files, vm.transferred_bytes, vm.uptime) == (0.4, 4, 4, 40, 120.0)
    assert (db.get(stalled).status, db.get(stopping).load, db.get(stopping).status) == ("Running", 0.2, "Stopping")
    assert db.history(halted)[-1].status == "Halted" and db.history(broken)[-1].reason.endswith("told to halt")


def test_cost_accumulates_the_price_over_billed_time_only(db):
    instance_id = new(db, cost_per_hour=0.5)
    age(db, instance_id, 2 * HOUR)                  # two hours New: nothing booted, nothing billed
    db.set_submitted(instance_id, "vm-1", [], [])
    assert db.get(instance_id).cost == 0
    age(db, instance_id, HOUR)
    db.heartbeat(instance_id, 0.1, 0, 0, 0, 3600.0)
    assert db.get(instance_id).cost == pytest.approx(0.5, abs=0.01)
    age(db, instance_id, 2 * HOUR)
    db.set_status(instance_id, "Halted", "done")
    age(db, instance_id, 5 * HOUR)                  # halted: no more cost
    assert db.get(instance_id).cost == pytest.approx(1.5, abs=0.01)


# ---------------------------------------------------------------- stop requests

def test_stop_halts_a_new_instance_and_drains_the_others(db):
    fresh = new(db)
    assert db.request_stop(fresh, reason="operator") == "Halted"
    assert db.history(fresh)[-1].reason == "operator"
    running = in_status(db, I.RUNNING)
    assert db.request_stop(running) == "Stopping"
    vm = db.get(running)
    assert (vm.pending_command, vm.force_stop) == ("stop", False)
    assert db.request_stop(running) == "Stopping" and len(db.history(running)) == 4   # nothing new
    assert db.request_stop(running, force=True) == "Stopping"                       # upgraded
    vm = db.get(running)
    assert (vm.pending_command, vm.force_stop) == ("halt", True)
    assert db.request_stop(running) == "Stopping" and db.get(running).pending_command == "halt"  # never downgraded
    forced = in_status(db, I.CONTEXTUALIZING)
    assert db.request_stop(forced, force=True) == "Stopping"
    assert db.heartbeat(forced, 0.3, 1, 0, 0, 60.0) == "halt"
    assert db.request_stop(in_status(db, I.ERROR)) == "Halted"
    halted = in_status(db, I.HALTED)
    assert db.request_stop(halted) == "Halted"


# ---------------------------------------------------------------- queries

def test_counts_stale_and_endpoint_ids(db):
    a = [new(db, "pod1", "Site1/cloud1") for _ in range(3)]
    b = [new(db, "pod2", "Site2/cloud2") for _ in range(2)]
    for n, instance_id in enumerate(a + b):
        db.set_submitted(instance_id, f"vm-{n}", [], [])
    db.heartbeat(a[0], 0.5, 1, 0, 0, 10.0)
    db.set_status(b[1], "Halted", "gone")
    assert db.counts() == {("pod1", "Site1/cloud1", "Running"): 1, ("pod1", "Site1/cloud1", "Submitted"): 2,
                           ("pod2", "Site2/cloud2", "Submitted"): 1, ("pod2", "Site2/cloud2", "Halted"): 1}
    assert db.counts(("Status",), statuses=["Submitted", "Running"]) == {("Submitted",): 3, ("Running",): 1}
    assert db.counts(("Pod",), InstanceFilter({"Site": ("Site2",)})) == {("pod2",): 2}
    with pytest.raises(InvalidArgument):
        db.counts(("ErrorMessage",))
    age(db, a[1], HOUR)
    age(db, a[0], HOUR)
    assert db.stale(["Submitted"], utcnow() - dt.timedelta(minutes=40)) == [a[1]]
    assert db.stale(["Submitted", "Running"], utcnow() - dt.timedelta(minutes=40)) == [a[0], a[1]]
    found = db.by_endpoint_vm_ids("Site1/cloud1", ["vm-0", "vm-2", "vm-3", "unknown"])
    assert {k: v.instance_id for k, v in found.items()} == {"vm-0": a[0], "vm-2": a[2]}
    assert [i.instance_id for i in db.instances(statuses=["Submitted"], pod="pod1")] == a[1:]
    assert [i.instance_id for i in db.instances(endpoint="Site2/cloud2")] == b


def test_pages_sorted_and_filtered(db):
    ids = [new(db, "pod1" if n % 2 else "pod2") for n in range(30)]
    for n, instance_id in enumerate(ids):
        db.set_submitted(instance_id, f"vm-{n:02d}", [], [])
        db.heartbeat(instance_id, n / 10, n % 3, 0, 0, float(n))
    total, first = db.select(InstanceFilter({"Pod": ("pod1",)}), [("Load", "DESC")], 0, 10)
    _, second = db.select(InstanceFilter({"Pod": ("pod1",)}), [("Load", "DESC")], 10, 10)
    assert total == 15 and len(first) == 10 and len(second) == 5
    loads = [i.load for i in first + second]
    assert loads == sorted(loads, reverse=True) and {i.pod for i in first + second} == {"pod1"}
    total, page = db.select(None, [("Jobs", "ASC"), ("InstanceID", "DESC")], 0, 30)
    assert total == 30 and [(i.jobs, -i.instance_id) for i in page] == sorted((i.jobs, -i.instance_id) for i in page)
    with pytest.raises(InvalidArgument):
        db.select(None, [("Nonsense", "ASC")])
    with pytest.raises(InvalidArgument):
        db.select(InstanceFilter({"Load": (1,)}))
    since = utcnow() - dt.timedelta(minutes=5)
    assert db.select(InstanceFilter(since=since), None, 0, 1)[0] == 30
    assert db.select(InstanceFilter(until=since), None, 0, 1)[0] == 0


def test_history_buckets_average_load_and_count_running_vms_and_jobs(db):
    a, b, c = (in_status(db, I.SUBMITTED) for _ in range(3))
    with db.engine.begin() as conn:   # only the heartbeats below, at chosen times
        conn.execute(history.delete())
    base = dt.datetime(2001, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
    beats = [(a, 0, 1.0, 2), (a, 100, 0.5, 2), (b, 200, 0.3, 1),        # bucket 12:00-12:05
             (a, 310, 0.2, 1), (c, 320, 0.0, 0)]                         # bucket 12:05-12:10
    for instance_id, offset, load, jobs in beats:
        db.heartbeat(instance_id, load, jobs, 0, 0, 1.0)
        with db.engine.begin() as conn:
            last = conn.execute(history.select().order_by(history.c.HistoryID.desc()).limit(1)).first()
            conn.execute(update(history).where(history.c.HistoryID == last.HistoryID)
                         .values(Time=base + dt.timedelta(seconds=offset)))
    db.set_status(c, "Halted", "gone")   # now: a Halted row, not counted
    buckets = db.history_buckets(300, base - HOUR)
    assert [(x.time, x.instances, x.load, x.jobs) for x in buckets] == [
        (base, 2, pytest.approx((0.75 + 0.3) / 2), pytest.approx(3.0)),
        (base + dt.timedelta(minutes=5), 2, pytest.approx(0.1), pytest.approx(1.0))]
    db.new_instance("podX", "el9", "Site9/c", "Site9", vo="vo2")
    grouped = db.history_buckets(300, base - HOUR, "Pod", InstanceFilter({"VO": ("vo1",)}))
    assert {(x.time, x.group) for x in grouped} == {(base, "pod1"), (base + dt.timedelta(minutes=5), "pod1")}
    assert db.history_buckets(300, base + HOUR) == []        # only now's New and Halted rows since
    assert db.purge_history(base + dt.timedelta(seconds=150)) == 2
    assert db.history_buckets(300, base - HOUR)[0].instances == 1


def test_pods_from_the_configuration_give_new_instances_their_vo_and_price(db):
    snapshot = Snapshot.make(1, {
        "Registry": {"Groups": {"vo2_pilot": {"VO": "vo2", "Properties": ["GenericPilot"]}}},
        "Resources": {"Sites": {"Site1": {"Cloud": {"cloud1": {"Images": {"el9": {"CostPerHour": 0.25}}}}}}},
        "Operations": {"Defaults": {"VirtualMachines": {"RunningPods": {
            "pod1": {"Image": "el9", "Endpoints": ["Site1/cloud1"], "PilotGroup": "vo2_pilot", "MaxInstances": 7}}}}},
    })
    db.sync_pods(pods(snapshot), endpoints(snapshot))
    assert db.running_pods()["pod1"]["VO"] == "vo2" and db.running_pods()["pod1"]["MaxInstances"] == 7
    instance_id, _name = db.new_instance("pod1", "el9", "Site1/cloud1", "Site1")
    vm = db.get(instance_id)
    assert (vm.vo, vm.cost_per_hour) == ("vo2", 0.25)
    db.sync_pods({})
    assert db.running_pods() == {}
    assert db.get(db.new_instance("pod1", "el9", "Site1/cloud1", "Site1")[0]).vo == ""


def test_concurrent_heartbeats_and_a_stop_lose_nothing(db):
    import threading

    instance_id = in_status(db, I.RUNNING)
    rows = len(db.history(instance_id))
    start = threading.Barrier(9)
    answers: list[str] = []

    def beat() -> None:
        start.wait(10)
        for n in range(15):
            answers.append(db.heartbeat(instance_id, 0.5, 1, n, n, float(n)))

    def stop() -> None:
        start.wait(10)
        db.request_stop(instance_id)

    threads = [threading.Thread(target=beat) for _ in range(8)] + [threading.Thread(target=stop)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 120 and set(answers) <= {"", "stop"}
    assert len(db.history(instance_id)) == rows + 121
    assert db.get(instance_id).pending_command == "stop" and db.heartbeat(instance_id, 0, 0, 0, 0, 1.0) == "stop"
