"""The scheduler's pure decision: elastic and static pods, caps, endpoint choice, back-off."""

from __future__ import annotations

import pytest

from vmdirac.vm.allocation import Backoff, Boot, EndpointCapacity, PodDemand, decide, wanted


def pod(**kw) -> PodDemand:
    base = dict(pod="p", policy="Elastic", endpoints=("A", "B"), slots_per_vm=1, cpu_per_instance=0,
                max_instances=100, max_boots_per_cycle=100)
    return PodDemand(**{**base, **kw})


@pytest.mark.parametrize("kw,n", [
    ({}, 0),                                                    # no work, no VM
    ({"waiting_jobs": 5}, 5),                                   # CPUPerInstance 0: a VM per job
    ({"waiting_jobs": 5, "slots_per_vm": 4}, 2),                # ... per slots' worth
    ({"waiting_jobs": 5, "booting": 2}, 3),                     # booting VMs will take 2
    ({"waiting_jobs": 5, "free_slots": 5}, 0),                  # idle VMs will take them all
    ({"waiting_jobs": 10, "waiting_cpu": 36000, "cpu_per_instance": 7200}, 5),   # average CPU
    ({"waiting_jobs": 10, "waiting_cpu": 36000, "cpu_per_instance": 10**9}, 1),  # pack: one VM
    ({"policy": "Static", "static_instances": 3, "alive": 1}, 2),
    ({"policy": "Static", "static_instances": 3, "alive": 5}, 0),
])
def test_how_many_vms_a_pod_wants(kw, n):
    assert wanted(pod(**kw)) == n


def test_caps_per_pod_per_cycle_and_per_endpoint():
    eps = {"A": EndpointCapacity("A", 2, 0), "B": EndpointCapacity("B", 10, 9)}
    boots = decide([pod(waiting_jobs=50, max_instances=10, alive=7)], eps)
    assert len(boots) == 3 and boots.count(Boot("p", "A")) == 2 and boots.count(Boot("p", "B")) == 1
    assert len(decide([pod(waiting_jobs=50, max_boots_per_cycle=2)], eps)) == 2


def test_priority_then_free_capacity_and_back_off():
    eps = {"A": EndpointCapacity("A", 10, 0, priority=1), "B": EndpointCapacity("B", 10, 0, priority=5)}
    assert {b.endpoint for b in decide([pod(waiting_jobs=3)], eps)} == {"B"}
    eps["B"] = EndpointCapacity("B", 10, 0, priority=5, backed_off=True)
    assert {b.endpoint for b in decide([pod(waiting_jobs=3)], eps)} == {"A"}
    # Equal priority: the emptier endpoint first, so boots spread.
    eps = {"A": EndpointCapacity("A", 10, 8), "B": EndpointCapacity("B", 10, 0)}
    assert [b.endpoint for b in decide([pod(waiting_jobs=1)], eps)] == ["B"]


def test_endpoints_whose_site_the_work_excludes_are_not_used():
    eps = {"A": EndpointCapacity("A", 10, 0), "B": EndpointCapacity("B", 10, 0, priority=9)}
    boots = decide([pod(waiting_jobs=2, eligible=frozenset({"A"}))], eps)
    assert [b.endpoint for b in boots] == ["A", "A"]


def test_pods_share_endpoint_room():
    eps = {"A": EndpointCapacity("A", 3, 0)}
    boots = decide([pod(pod="p1", endpoints=("A",), waiting_jobs=2), pod(pod="p2", endpoints=("A",), waiting_jobs=2)], eps)
    assert [b.pod for b in boots] == ["p1", "p1", "p2"]


def test_back_off_grows_and_resets():
    b = Backoff(base=10, cap=35)
    assert [b.failed("A", 0) for _ in range(4)] == [10, 20, 35, 35]
    assert b.backed_off("A", 30) and not b.backed_off("A", 36)
    b.succeeded("A")
    assert not b.backed_off("A", 0) and b.failed("A", 0) == 10


def test_what_a_failing_endpoint_could_not_take_goes_to_the_others_within_the_caps():
    from vmdirac.vm.allocation import after_boots

    demands = [pod(waiting_jobs=5, max_boots_per_cycle=3, max_instances=4)]
    eps = {"A": EndpointCapacity("A", 1, 0, priority=2), "B": EndpointCapacity("B", 2, 0, priority=1)}
    first = decide(demands, eps)
    assert first == [Boot("p", "A"), Boot("p", "B"), Boot("p", "B")]
    # A failed; B's two went through: a second decision may not use A, nor exceed the cycle cap.
    demands, eps = after_boots(demands, eps, first[1:], {"A"})
    assert eps["A"].backed_off and eps["B"].alive == 2 and demands[0].max_boots_per_cycle == 1
    assert decide(demands, eps) == []                                   # B is full, A backed off
    eps["B"] = EndpointCapacity("B", 3, 2, priority=1)
    assert decide(demands, eps) == [Boot("p", "B")]                    # one left of the cycle cap
