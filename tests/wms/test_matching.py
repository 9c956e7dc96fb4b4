"""DIRAC's matching rule, CPU segments, processor and RAM tags, and queue priorities."""

from __future__ import annotations

import pytest

from vmdirac.core.exceptions import BadRequest
from vmdirac.wms.matching import JobRequirements, ResourceDescription, fit_cpu_time, matches
from vmdirac.wms.priorities import QueueLoad, tq_priorities


def req(**kw) -> JobRequirements:
    base = {"owner": "alice", "owner_group": "dirac_user", "vo": "vmdirac", "cpu_time": 3600}
    return JobRequirements.make(**{**base, **kw})


@pytest.mark.parametrize("seconds,segment", [(1, 360), (360, 360), (361, 1800), (3600, 3600),
                                             (3601, 21600), (86400, 86400), (10**9, 1080000)])
def test_cpu_time_rounds_up_to_dirac_segments(seconds, segment):
    assert fit_cpu_time(seconds) == segment


def test_same_requirements_same_key_whatever_the_order():
    a = req(sites=["B", "A"], tags=["x", "y"])
    b = req(sites=["A", "B", "A"], tags=("y", "x"))
    assert a.key == b.key and a != req(sites=["A"])


def test_cores_and_ram_become_tags():
    assert req(cores=4, max_ram_mb=3000).tags == ("3GB", "4Processors", "MultiProcessor")
    res = ResourceDescription(cores=8, max_ram_mb=4096)
    assert {"1Processors", "8Processors", "MultiProcessor", "4GB", "1GB"} <= res.all_tags()
    assert matches(req(cores=4, max_ram_mb=3000), res)
    assert not matches(req(cores=16), res)
    assert not matches(req(cores=2), ResourceDescription(cores=1))


@pytest.mark.parametrize("job,resource,ok", [
    ({}, {}, True),
    ({"sites": ["LCG.CERN.ch"]}, {"site": "LCG.CERN.ch"}, True),
    ({"sites": ["LCG.CERN.ch"]}, {"site": "LCG.IN2P3.fr"}, False),
    ({"sites": ["ANY"]}, {"site": "LCG.IN2P3.fr"}, True),
    ({"banned_sites": ["LCG.CERN.ch"]}, {"site": "LCG.CERN.ch"}, False),
    ({"platforms": ["el9"]}, {"platform": "el9"}, True),
    ({"platforms": ["el9"]}, {"platform": "el8"}, False),
    ({"tags": ["GPU"]}, {"tags": ("GPU", "cvmfs")}, True),
    ({"tags": ["GPU"]}, {"tags": ("cvmfs",)}, False),
    ({}, {"required_tags": ("GPU",)}, False),          # the resource only takes GPU jobs
    ({"tags": ["GPU"]}, {"tags": ("GPU",), "required_tags": ("GPU",)}, True),
    ({"cpu_time": 7200}, {"cpu_time": 3600}, False),    # 7200 s fits the 6 h segment
    ({"cpu_time": 3000}, {"cpu_time": 3600}, True),
    ({}, {"vo": "other"}, False),
    ({}, {"owner": "bob"}, False),
])
def test_matching_rule(job, resource, ok):
    assert matches(req(**job), ResourceDescription(**resource)) is ok


def test_resource_description_from_dirac_keys():
    res = ResourceDescription.from_wire({"Site": "LCG.CERN.ch", "Tag": ["GPU"], "NumberOfProcessors": 4,
                                         "MaxRAM": 8192, "CPUTime": 86400, "GridCE": "ce.cern.ch"})
    assert (res.site, res.tags, res.cores, res.max_ram_mb, res.cpu_time) == ("LCG.CERN.ch", ("GPU",), 4, 8192, 86400)
    assert res.extra == {"GridCE": "ce.cern.ch"}
    with pytest.raises(BadRequest, match="NumberOfProcessors must be a non-negative number"):
        ResourceDescription.from_wire({"NumberOfProcessors": "four"})
    with pytest.raises(BadRequest, match="Tag must be a list of strings"):
        ResourceDescription.from_wire({"Tag": [1]})


def test_shares_split_between_owners_then_queues():
    loads = [QueueLoad(1, "alice", "users", 900), QueueLoad(2, "alice", "users", 100),
             QueueLoad(3, "bob", "users", 1), QueueLoad(4, "carol", "prod", 5), QueueLoad(5, "dan", "users", 0)]
    prios = tq_priorities(loads, {"users": 1000, "prod": 3000})
    assert prios[1] == pytest.approx(450) and prios[2] == pytest.approx(50)
    assert prios[3] == pytest.approx(500)   # bob's single job gets as much as all of alice's
    assert prios[4] == pytest.approx(3000)
    assert 5 not in prios
