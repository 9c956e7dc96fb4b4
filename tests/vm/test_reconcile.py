"""The reconciler's pure decision."""

from __future__ import annotations

import datetime as dt

from vmdirac.vm.reconcile import Known, decide
from vmdirac.drivers.base import INSTANCE_TAG, Node, NodeState

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def known(i, status="Running", minutes=1, vm_id=None, started_hours=1, pod="p", endpoint="S/E"):
    return Known(i, f"vm-{i}", endpoint, vm_id if vm_id is not None else f"id{i}", status,
                 NOW - dt.timedelta(minutes=minutes), NOW - dt.timedelta(hours=started_hours), pod)


def node(i, state=NodeState.RUNNING, name=None):
    return Node(f"id{i}", f"vm-{i}", state, tags={INSTANCE_TAG: name or f"vm-{i}"})


def run(ks, nodes, lifetime=None):
    return decide(ks, nodes, NOW, stalling=40 * 60, boot_grace=20 * 60, max_lifetime=lifetime or {})


def test_silent_vms_are_stalled_and_fresh_ones_left_alone():
    a = run([known(1, minutes=41), known(2, minutes=5), known(3, "Submitted", minutes=21),
             known(4, "Stalled", minutes=300)], {"S/E": [node(1), node(2), node(3), node(4)]})
    assert a.stall == [1, 3] and a.close == [] and a.terminate == []


def test_orphans_are_terminated_only_at_endpoints_that_answered():
    ks = [known(1), known(2, "Halted")]
    a = run(ks, {"S/E": [node(1), node(2), node(9, name="vm-unknown")]})
    assert sorted(a.terminate) == [("S/E", "id2"), ("S/E", "id9")]
    assert run(ks, {}).terminate == []


def test_instances_the_endpoint_lost_are_closed():
    a = run([known(1), known(2), known(3, "New", minutes=30, vm_id="")],
            {"S/E": [node(2, NodeState.TERMINATED)]})
    assert a.close == [1, 2, 3]


def test_max_lifetime_drains_running_vms():
    a = run([known(1, started_hours=30), known(2, started_hours=1)], {"S/E": [node(1), node(2)]}, {"p": 24 * 3600})
    assert a.drain == [1]


def test_an_instance_changed_after_the_listing_began_is_not_closed_for_missing_from_it():
    """The scheduler submitted VM 2 (or VM 2 heartbeated) after the endpoint was listed: the
    listing cannot show it yet, and it must not be closed as gone."""
    listed_at = NOW - dt.timedelta(seconds=30)
    ks = [known(1, minutes=5), known(2, "Submitted", minutes=0)]
    a = decide(ks, {"S/E": []}, NOW, stalling=40 * 60, boot_grace=20 * 60, max_lifetime={}, listed_at=listed_at)
    assert a.close == [1]
