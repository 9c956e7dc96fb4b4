"""The ``ec2`` driver's boot options against moto: a spot instance at most ``MaxAllowedPrice``,
security groups (ids with a subnet, names in the default VPC) and the subnet, each read back from
moto's own state (DescribeInstances through boto3, straight at moto) and, for the spot price that
moto does not keep, from the RunInstances request moto was given (``MotoEC2.received``)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.clouds.harness import Cloud, cloud_emulators, make_cloud  # noqa: F401  (fixtures)
from vmdirac.drivers.base import BadConfiguration, BootRequest, make_driver
from vmdirac.vm.config import Endpoint, EndpointOptions, ImageOptions


@pytest.fixture
def moto(cloud_emulators) -> Cloud:
    if "ec2-moto" not in cloud_emulators:
        cloud_emulators["ec2-moto"] = make_cloud("ec2-moto")
    return cloud_emulators["ec2-moto"]


@pytest.fixture
def network(moto):
    """A VPC of its own with a subnet and two groups; the default VPC's subnet and a group there."""
    ec2, tag = moto.emulator.ec2, uuid.uuid4().hex[:6]
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    groups = [ec2.create_security_group(GroupName=f"vmd-{n}-{tag}", Description="vmdirac test", VpcId=vpc)["GroupId"]
              for n in ("a", "b")]
    default_vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    default_subnet = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [default_vpc]}])["Subnets"][0]
    named = f"vmd-named-{tag}"
    named_id = ec2.create_security_group(GroupName=named, Description="vmdirac test", VpcId=default_vpc)["GroupId"]
    return {"vpc": vpc, "subnet": subnet, "groups": groups, "default_subnet": default_subnet["SubnetId"],
            "named": named, "named_id": named_id}


def _driver(cloud: Cloud, **options):
    opts = cloud.tree_options("good", **options)
    typed = EndpointOptions(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in opts.items()})
    endpoint = Endpoint("Cloud.Test.ch/ec2", "Cloud.Test.ch", typed, {"el9": ImageOptions(**cloud.image)})
    return make_driver(endpoint, f"dep-{uuid.uuid4().hex[:8]}", Path("/nonexistent"))


def _boot(moto: Cloud, **options) -> tuple[dict, dict]:
    """Boot one VM; moto's view of the instance and the RunInstances parameters moto was given."""
    driver = _driver(moto, **options)
    before = len(moto.emulator.requests)
    node = driver.boot(BootRequest(f"opt-{uuid.uuid4().hex[:6]}", driver.endpoint.images["el9"], b"#!/bin/true\n", {}))
    try:
        [run] = [r for r in moto.emulator.requests[before:] if r["Action"] == "RunInstances"]
        return moto.emulator.instance(node.vm_id), run
    finally:
        driver.terminate(node.vm_id)


def test_max_allowed_price_boots_a_spot_instance_at_most_that_price(moto):
    instance, run = _boot(moto, MaxAllowedPrice=0.05)
    assert instance.get("InstanceLifecycle") == "spot"                      # moto's state
    assert run["InstanceMarketOptions.MarketType"] == "spot"
    assert float(run["InstanceMarketOptions.SpotOptions.MaxPrice"]) == 0.05  # moto keeps no price: the request
    on_demand, run = _boot(moto)
    assert "InstanceLifecycle" not in on_demand
    assert not any(k.startswith("InstanceMarketOptions") for k in run)


def test_security_group_ids_and_the_subnet_reach_the_instance(moto, network):
    instance, run = _boot(moto, Network=network["subnet"], SecurityGroups=network["groups"])
    assert instance["SubnetId"] == network["subnet"] and instance["VpcId"] == network["vpc"]
    assert sorted(g["GroupId"] for g in instance["SecurityGroups"]) == sorted(network["groups"])
    assert not any(k.startswith("SecurityGroup.") for k in run)             # ids only as SecurityGroupId.N


def test_security_group_names_reach_the_instance_in_the_default_vpc(moto, network):
    instance, _ = _boot(moto, SecurityGroups=[network["named"]])
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [network["named_id"]]


def test_ids_and_names_together_each_go_as_what_they_are(moto, network):
    ec2 = moto.emulator.ec2
    default_vpc = ec2.describe_subnets(SubnetIds=[network["default_subnet"]])["Subnets"][0]["VpcId"]
    other = ec2.create_security_group(GroupName=f"vmd-other-{uuid.uuid4().hex[:6]}", Description="vmdirac test",
                                      VpcId=default_vpc)["GroupId"]
    instance, run = _boot(moto, Network=network["default_subnet"], SecurityGroups=[other, network["named"]])
    assert run["SecurityGroupId.1"] == other and run["SecurityGroup.1"] == network["named"]
    assert instance["SubnetId"] == network["default_subnet"]
    assert sorted(g["GroupId"] for g in instance["SecurityGroups"]) == sorted([other, network["named_id"]])


def test_group_ids_without_a_subnet_are_refused_before_anything_is_sent(moto, network):
    driver = _driver(moto, SecurityGroups=network["groups"][:1])
    before = len(moto.emulator.requests)
    with pytest.raises(BadConfiguration) as err:
        driver.boot(BootRequest("opt-nosubnet", driver.endpoint.images["el9"], b"", {}))
    assert "Network" in err.value.message
    assert not [r for r in moto.emulator.requests[before:] if r["Action"] == "RunInstances"]
