"""The ``opennebula`` driver through OCCI (``Driver: {API: occi}``) on every API version of
libcloud's OpenNebula driver, against the OCCI fake: what differs between versions (instance
types from the client or the server), how the driver is chosen and configured (API, APIVersion,
PlainAuth, a URL with a path, images and networks by name), and the errors the contract suite
does not reach (5xx, capacity, unknown storage/network/instance type)."""

from __future__ import annotations

import base64
import hashlib
import uuid
from pathlib import Path

import pytest

from tests.clouds.opennebula_occi_fake import OpenNebulaOCCIFake
from vmdirac.drivers.base import (
    DEPLOYMENT_TAG, INSTANCE_TAG, AuthError, BadConfiguration, BootRequest, CapacityError, NodeState,
    TransientError, make_driver,
)
from vmdirac.drivers.opennebula import OpenNebulaDriver
from vmdirac.drivers.opennebula_occi import OpenNebulaOCCIDriver
from vmdirac.vm.config import Endpoint, EndpointOptions, ImageOptions

USER, PASSWORD = "oneadmin", "occi-test-password"
VERSIONS = ["2.0", "2.2", "3.0", "3.2", "3.6", "3.8"]


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("VMD_OCCI_T_USERNAME", USER)
    monkeypatch.setenv("VMD_OCCI_T_PASSWORD", PASSWORD)
    return "VMD_OCCI_T"


def driver(url: str, creds: str, image: str = "7", flavor: str = "small", network: str = "0", **drv):
    opts = EndpointOptions(Type="opennebula", URL=url, Network=network, CredentialsEnv=creds,
                           Driver={"API": "occi", **drv})
    endpoint = Endpoint("Cloud.Test.ch/occi", "Cloud.Test.ch", opts,
                        {"el9": ImageOptions(ImageID=image, Flavor=flavor, Cores=1, RAM=1024)})
    return make_driver(endpoint, f"dep-{uuid.uuid4().hex[:8]}", Path("/nonexistent"))


def boot(drv, name: str | None = None):
    name = name or f"pod-{uuid.uuid4().hex[:6]}"
    return drv.boot(BootRequest(name, drv.endpoint.images["el9"], b"#cloud-config\n", {}))


@pytest.fixture(params=VERSIONS)
def fake(request):
    f = OpenNebulaOCCIFake(request.param)
    yield f
    f.stop()


def test_every_api_version_boots_lists_and_ends_a_vm(fake, creds):
    drv = driver(fake.url, creds, APIVersion=".".join(map(str, fake.api_version)))
    node = boot(drv, "pod-one")
    assert isinstance(drv, OpenNebulaOCCIDriver) and node.name == "pod-one"
    assert fake.tags(node.vm_id) == {"vmdirac-deployment": drv.deployment, "vmdirac-instance": "pod-one"}
    assert fake.user_data(node.vm_id) == b"#cloud-config\n"
    assert fake.vms[int(node.vm_id)]["networks"] == [0]
    assert drv.status(node.vm_id).state == NodeState.RUNNING
    [listed] = drv.list_nodes()
    assert listed.tags == {DEPLOYMENT_TAG: drv.deployment, INSTANCE_TAG: "pod-one"} and listed.private_ips
    drv.terminate(node.vm_id)
    assert drv.status(node.vm_id).state == NodeState.TERMINATED and drv.list_nodes() == []
    drv.terminate(node.vm_id)                           # DONE: the server would refuse a second DELETE
    assert [m for m, p in fake.calls].count("DELETE") == 1


def test_instance_types_come_from_the_server_from_3_2(fake, creds):
    drv = driver(fake.url, creds, APIVersion=".".join(map(str, fake.api_version)))
    medium = drv.flavor("medium")
    assert (medium.cores, medium.ram_mb) == ((2, 4096) if fake.api_version >= (3, 2) else (4, 4096))
    assert drv.flavor("xlarge") is None
    assert any(p.endswith("/instance_type") for _, p in fake.calls) == (fake.api_version >= (3, 2))


def test_password_is_sent_as_its_sha1_unless_plain_auth(creds):
    hashed, plain = OpenNebulaOCCIFake("3.8"), OpenNebulaOCCIFake("3.8", plain_auth=True)
    try:
        driver(hashed.url, creds).list_nodes()
        digest = hashlib.sha1(PASSWORD.encode()).hexdigest()
        assert hashed.authorizations[-1] == "Basic " + base64.b64encode(f"{USER}:{digest}".encode()).decode()
        assert driver(plain.url, creds, PlainAuth=True).list_nodes() == []
        with pytest.raises(AuthError):
            driver(plain.url, creds).list_nodes()
    finally:
        hashed.stop()
        plain.stop()


def test_api_and_version_options_are_checked(creds):
    assert isinstance(make_driver(Endpoint("S/x", "S", EndpointOptions(Type="opennebula", URL="http://h:2633/RPC2"),
                                           {}), "d", Path("/nonexistent")), OpenNebulaDriver)
    for bad in ({"API": "rest"}, {"API": "occi", "APIVersion": "1.4"}, {"API": "occi", "APIVersion": "4.0"},
                {"API": "occi", "APIVersion": "3.2", "PlainAuth": True}):
        with pytest.raises(BadConfiguration):
            make_driver(Endpoint("S/x", "S", EndpointOptions(Type="opennebula", URL="http://h:4567", Driver=bad), {}),
                        "d", Path("/nonexistent"))


def test_a_url_with_a_path_and_images_and_networks_by_name(creds):
    f = OpenNebulaOCCIFake("3.2", prefix="/occi")
    try:
        drv = driver(f.url, creds, image="el9-one", network="public,private", APIVersion="3.2")
        node = boot(drv)
        assert f.vms[int(node.vm_id)]["image"] == 7 and f.vms[int(node.vm_id)]["networks"] == [1, 0]
        assert all(p.startswith("/occi/") for _, p in f.calls)
        check = drv.check()
        assert check.auth_ok and check.images[0].image_ok and check.images[0].flavor_ok
    finally:
        f.stop()


def test_unknown_storage_network_or_instance_type_is_bad_configuration(creds):
    f = OpenNebulaOCCIFake("3.8")
    try:
        for kwargs in ({"image": "99"}, {"image": "no-such-image"}, {"network": "5"}, {"network": "dmz"},
                       {"flavor": "xlarge"}):
            with pytest.raises(BadConfiguration):
                boot(driver(f.url, creds, **kwargs))
        assert f.vms == {}
        [image] = driver(f.url, creds, image="99").check().images
        assert image.image_ok is False and image.flavor_ok is True
    finally:
        f.stop()


def test_server_errors_are_transient_and_capacity_text_is_capacity(creds):
    f = OpenNebulaOCCIFake("3.8")
    try:
        drv = driver(f.url, creds)
        f.fail_next("GET", 503, "Service Unavailable")
        with pytest.raises(TransientError):
            drv.list_nodes()
        f.fail_next("POST", 500, "[VirtualMachineAllocate] Cannot dispatch VM: no space left on any host")
        with pytest.raises(CapacityError):
            boot(drv)
        assert drv.list_nodes() == []
    finally:
        f.stop()
