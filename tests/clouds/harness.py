"""One harness per cloud emulator, with the same face for the driver contract tests: the endpoint
options to reach it (good or refused credentials), an image it has, how to exhaust its quota,
and what it holds (user data, tags) read from the emulator itself, not through the driver."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from vmdirac.vm.config import Endpoint, EndpointOptions, ImageOptions

KINDS = ["ec2-moto", "openstack-v2-mimic", "openstack-v3-password", "openstack-v3-appcred", "cloudstack", "opennebula",
         "opennebula-occi", "opennebula-occi-2.0"]


@dataclass
class Cloud:
    kind: str
    emulator: Any
    options: dict                       # endpoint options, as in Resources/Sites/<Site>/Cloud/<Endpoint>
    image: dict                         # image options
    good: dict[str, str]                # credentials that work
    bad: dict[str, str]                 # credentials the emulator refuses
    exhaust_quota: Callable[[str], None]   # (instance name) -> the next boot of it hits the quota
    restore_quota: Callable[[], None] = lambda: None
    env_prefixes: list[str] = field(default_factory=list)

    def set_env(self, prefix: str, creds: dict[str, str]) -> str:
        for k, v in creds.items():
            os.environ[f"{prefix}_{k.upper()}"] = v
        self.env_prefixes.append(prefix)
        return prefix

    def tree_options(self, creds: str = "good", **extra) -> dict:
        prefix = self.set_env(f"VMD_{self.kind.replace('-', '_').upper()}_{creds.upper()}",
                              self.good if creds == "good" else self.bad)
        return {**self.options, "CredentialsEnv": prefix, "Images": {"el9": self.image}, **extra}

    def endpoint(self, name: str = "Cloud.Test.ch/cloud", creds: str = "good") -> Endpoint:
        opts = self.tree_options(creds)
        images = {"el9": ImageOptions(**self.image)}
        typed = EndpointOptions(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in opts.items()})
        return Endpoint(name, name.split("/")[0], typed, images)

    def user_data(self, vm_id: str) -> bytes:
        return self.emulator.user_data(vm_id)

    def cleanup_env(self) -> None:
        for prefix in self.env_prefixes:
            for k in [k for k in os.environ if k.startswith(prefix + "_")]:
                del os.environ[k]


def make_cloud(kind: str) -> Cloud:
    if kind == "ec2-moto":
        from tests.clouds.moto_ec2 import KEY, SECRET, MotoEC2

        m = MotoEC2()
        m.reject_key("AKIDREFUSED000000001")
        return Cloud(kind, m, {"Type": "ec2", "URL": m.url, "Region": "us-east-1"},
                     {"ImageID": m.ami, "Flavor": "t2.micro", "Cores": 1, "RAM": 1024},
                     {"access_key": KEY, "secret_key": SECRET},
                     {"access_key": "AKIDREFUSED000000001", "secret_key": "refused-secret-0001"},
                     lambda name: m.fail_next("RunInstances", "InstanceLimitExceeded",
                                              "Your quota allows for 0 more running instance(s)."),
                     lambda: m.faults.clear())
    if kind == "openstack-v2-mimic":
        from tests.clouds.mimic_nova import REGION, TENANT, MimicNova

        m = MimicNova()
        m.reject_user("refused-user")
        cloud = Cloud(kind, m, {"Type": "openstack", "URL": f"{m.url}/identity", "Region": REGION,
                                "Driver": {"AuthVersion": "2.0_password", "ServiceName": "cloudServersOpenStack"}},
                      {}, {"username": "vmdirac", "password": "mimic-pw-1", "project": TENANT},
                      {"username": "refused-user", "password": "mimic-pw-1", "project": TENANT},
                      lambda name: m.quota_for(f"^{name}$"))
        probe = cloud.endpoint()
        from vmdirac.drivers.base import make_driver
        from pathlib import Path

        conn = make_driver(probe, "probe", Path("/nonexistent")).conn
        cloud.image = {"ImageID": conn.list_images()[0].id, "Flavor": conn.list_sizes()[0].name, "Cores": 1, "RAM": 512}
        return cloud
    if kind.startswith("openstack-v3"):
        from tests.clouds.openstack_fake import OpenStackFake

        f = OpenStackFake()
        good = ({"application_credential_id": "appcred-id-1", "application_credential_secret": "appcred-secret-1"}
                if kind.endswith("appcred") else {"username": "vmdirac", "password": "os-test-password"})
        bad = ({"application_credential_id": "appcred-id-1", "application_credential_secret": "wrong-secret-9"}
               if kind.endswith("appcred") else {"username": "vmdirac", "password": "wrong-password-9"})
        return Cloud(kind, f, {"Type": "openstack", "URL": f.base, "Region": "RegionOne", "Network": "net-1",
                               "Driver": {"Project": "vmdirac-prj", "ConfigDrive": True}},
                     {"ImageID": "el9-cloud", "Flavor": "m1.small", "Cores": 1, "RAM": 2048}, good, bad,
                     lambda name: setattr(f, "max_instances", 0), lambda: setattr(f, "max_instances", 100))
    if kind == "cloudstack":
        from tests.clouds.cloudstack_fake import CloudStackFake

        f = CloudStackFake()
        return Cloud(kind, f, {"Type": "cloudstack", "URL": f.url, "Zone": "zone1", "Network": "net-1"},
                     {"ImageID": "el9-template", "Flavor": "Small Instance", "Cores": 1, "RAM": 2048},
                     {"api_key": "cs-api-key-1", "secret_key": "cs-secret-key-1"},
                     {"api_key": "cs-api-key-1", "secret_key": "wrong-secret-key"},
                     lambda name: setattr(f, "max_instances", 0), lambda: setattr(f, "max_instances", 100))
    if kind == "opennebula":
        from tests.clouds.opennebula_fake import OpenNebulaFake

        f = OpenNebulaFake()
        return Cloud(kind, f, {"Type": "opennebula", "URL": f.url, "Network": "0"},
                     {"ImageID": "el9-one", "Cores": 1, "RAM": 2048},
                     {"username": "oneadmin", "password": "one-test-password"},
                     {"username": "oneadmin", "password": "wrong-password-9"},
                     lambda name: setattr(f, "max_vms", 0), lambda: setattr(f, "max_vms", 100))
    if kind.startswith("opennebula-occi"):
        from tests.clouds.opennebula_occi_fake import OpenNebulaOCCIFake

        version = kind.rpartition("-")[2] if kind[-1].isdigit() else "3.8"   # 3.8: the last OCCI server
        f = OpenNebulaOCCIFake(version)
        return Cloud(kind, f, {"Type": "opennebula", "URL": f.url, "Network": "private",
                               "Driver": {"API": "occi", "APIVersion": version}},
                     {"ImageID": "7", "Flavor": "small", "Cores": 1, "RAM": 1024},
                     {"username": "oneadmin", "password": "occi-test-password"},
                     {"username": "oneadmin", "password": "wrong-password-9"},
                     lambda name: setattr(f, "max_vms", 0), lambda: setattr(f, "max_vms", 100))
    raise ValueError(kind)


_clouds: dict[str, Cloud] = {}


@pytest.fixture(scope="session")
def cloud_emulators():
    """Emulators are started once per session (moto and mimic take seconds) and stopped at its end."""
    yield _clouds
    for cloud in _clouds.values():
        cloud.cleanup_env()
        stop = getattr(cloud.emulator, "stop", None)
        if stop:
            stop()


@pytest.fixture(params=KINDS)
def cloud(request, cloud_emulators) -> Cloud:
    kind = request.param
    if kind not in cloud_emulators:
        cloud_emulators[kind] = make_cloud(kind)
    c = cloud_emulators[kind]
    yield c
    c.restore_quota()
