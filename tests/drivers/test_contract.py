"""The same contract for every cloud driver, each against its emulator on loopback (see
``tests/clouds``): boot with user data and tags, running, listed, user data readable back from
the emulator, terminate, no longer listed; quota and authentication failures typed; ``check``."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.clouds.harness import Cloud, cloud, cloud_emulators  # noqa: F401  (fixtures)
from tests.waiting import wait_for
from vmdirac.drivers.base import (
    DEPLOYMENT_TAG, INSTANCE_TAG, AuthError, BootRequest, NodeNotFound, NodeState, QuotaError, make_driver,
)

USER_DATA = b"#cloud-config\nwrite_files:\n  - path: /etc/vmdirac/id\n    content: \"\xc3\xa9 instance\"\n"


def _driver(cloud: Cloud, creds: str = "good"):
    return make_driver(cloud.endpoint(creds=creds), f"dep-{uuid.uuid4().hex[:8]}", Path("/nonexistent"))


def _request(driver, name: str) -> BootRequest:
    image = next(iter(driver.endpoint.images.values()))
    return BootRequest(name, image, USER_DATA, {DEPLOYMENT_TAG: driver.deployment, INSTANCE_TAG: name})


def test_boot_watch_list_and_terminate(cloud: Cloud):
    driver = _driver(cloud)
    name = f"pod-{uuid.uuid4().hex[:6]}"
    node = driver.boot(_request(driver, name))
    assert node.vm_id and node.tags[INSTANCE_TAG] == name and node.tags[DEPLOYMENT_TAG] == driver.deployment
    assert driver.boot(_request(driver, name)).vm_id == node.vm_id          # idempotent by instance name
    running = wait_for(lambda: driver.status(node.vm_id).state == NodeState.RUNNING, 30, f"{name} running")
    assert running
    listed = driver.list_nodes()
    assert [n.vm_id for n in listed] == [node.vm_id]
    assert listed[0].tags[INSTANCE_TAG] == name
    assert cloud.user_data(node.vm_id) == USER_DATA                           # as the emulator stored it
    driver.terminate(node.vm_id)
    wait_for(lambda: node.vm_id not in [n.vm_id for n in driver.list_nodes()], 30, f"{name} gone from the list")
    driver.terminate(node.vm_id)                                              # already gone: not an error
    try:
        assert driver.status(node.vm_id).state in (NodeState.TERMINATED, NodeState.STOPPING)
    except NodeNotFound:
        pass                                                                  # or forgotten at once


def test_other_deployments_vms_are_not_ours(cloud: Cloud):
    mine, theirs = _driver(cloud), _driver(cloud)
    node = theirs.boot(_request(theirs, f"pod-{uuid.uuid4().hex[:6]}"))
    try:
        assert node.vm_id not in [n.vm_id for n in mine.list_nodes()]
        assert node.vm_id in [n.vm_id for n in theirs.list_nodes()]
    finally:
        theirs.terminate(node.vm_id)


def test_quota_exceeded_is_a_quota_error(cloud: Cloud):
    driver = _driver(cloud)
    name = f"quota-{uuid.uuid4().hex[:6]}"
    cloud.exhaust_quota(name)
    with pytest.raises(QuotaError) as err:
        driver.boot(_request(driver, name))
    assert driver.endpoint.name in err.value.message
    assert not any(n.tags.get(INSTANCE_TAG) == name for n in driver.list_nodes())


def test_refused_credentials_are_an_auth_error_without_the_secret(cloud: Cloud):
    driver = _driver(cloud, creds="bad")
    with pytest.raises(AuthError) as err:
        driver.list_nodes()
    secrets = [v for v in cloud.bad.values() if "refused" in v or "wrong" in v]
    assert secrets and not any(s in str(err.value) for s in secrets)
    assert not any(s in repr(driver.creds) for s in secrets)


def test_check_reports_auth_image_and_flavor(cloud: Cloud):
    good = _driver(cloud).check()
    assert good.auth_ok, good.reason
    [image] = good.images
    assert image.image_ok and image.flavor_ok is not False, image
    bad = _driver(cloud, creds="bad").check()
    assert not bad.auth_ok and "AuthError" in bad.reason and not bad.images


def test_limits_come_from_the_endpoint(cloud: Cloud):
    driver = _driver(cloud)
    limits = driver.limits()
    assert limits.used_instances is not None and limits.used_instances >= 0
    assert limits.max_instances is None or limits.max_instances >= 1
