"""What a cloud driver does, in one small interface, and the errors it raises.

Drivers block (libcloud does): callers run them in a thread pool, one driver object per thread.
Every VM a driver boots carries our tags: ``vmdirac-deployment`` (this installation) and
``vmdirac-instance`` (our instance name), so ``list_nodes`` finds ours and only ours.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Callable

from vmdirac.core.exceptions import ConfigurationError, NotFound, QuotaExceeded, VMDiracError
from vmdirac.vm.config import Endpoint, ImageOptions

DEPLOYMENT_TAG = "vmdirac-deployment"
INSTANCE_TAG = "vmdirac-instance"


class NodeState(StrEnum):
    """A closed vocabulary; each driver maps its provider's states with ``.get(x, UNKNOWN)``."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    TERMINATED = "terminated"
    ERROR = "error"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class BootRequest:
    instance_name: str           # ours, unique: also the idempotency key of the boot
    image: ImageOptions
    user_data: bytes
    tags: dict[str, str]


@dataclass(frozen=True)
class Node:
    vm_id: str
    name: str
    state: NodeState
    public_ips: tuple[str, ...] = ()
    private_ips: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    max_instances: int | None = None
    used_instances: int | None = None
    max_cores: int | None = None
    used_cores: int | None = None


@dataclass(frozen=True)
class Flavor:
    """What the endpoint says of a flavor / instance type / service offering."""
    name: str
    cores: int | None = None
    ram_mb: int | None = None
    price_per_hour: float | None = None


@dataclass(frozen=True)
class ImageCheck:
    """One configured image of an endpoint: does the endpoint know its image and flavor?"""
    image: str                   # our name (Images/<name>)
    image_id: str
    image_ok: bool | None        # None: not checked (the driver cannot tell)
    flavor: str
    flavor_ok: bool | None
    reason: str = ""


@dataclass(frozen=True)
class CheckResult:
    """``Driver.check``: authentication, then each configured image and flavor."""
    auth_ok: bool
    reason: str = ""
    images: tuple[ImageCheck, ...] = ()


class DriverError(VMDiracError):
    """Base of the errors a driver raises; the scheduler backs off on them."""


class AuthError(DriverError):
    """The endpoint refused our credentials."""


class QuotaError(DriverError, QuotaExceeded):
    """The project's quota is exhausted."""


class CapacityError(DriverError):
    """The endpoint has no room (no valid host, insufficient capacity)."""


class NodeNotFound(DriverError, NotFound):
    """The VM does not exist (any more) at the endpoint."""


class TransientError(DriverError):
    """Timeouts, 5xx, rate limits: worth retrying later."""


class BadConfiguration(DriverError, ConfigurationError):
    """Image, flavor, network or URL unknown to the endpoint."""


class Driver(abc.ABC):
    """One endpoint. ``state_dir`` is for drivers that keep files (the local cloud)."""

    def __init__(self, endpoint: Endpoint, deployment: str, state_dir: Path) -> None:
        self.endpoint = endpoint
        self.deployment = deployment
        self.state_dir = state_dir

    @abc.abstractmethod
    def boot(self, request: BootRequest) -> Node:
        """Start a VM; idempotent by ``request.instance_name`` (a retry finds the first VM)."""

    @abc.abstractmethod
    def status(self, vm_id: str) -> Node:
        """The VM now; ``NodeNotFound`` if the endpoint no longer has it."""

    @abc.abstractmethod
    def terminate(self, vm_id: str) -> None:
        """End the VM; a VM already gone is not an error."""

    @abc.abstractmethod
    def list_nodes(self) -> list[Node]:
        """Every VM at the endpoint carrying this deployment's tag."""

    def limits(self) -> Limits:
        return Limits()

    def flavor(self, name: str) -> Flavor | None:
        """Cores, RAM and price of a flavor as the endpoint states them; None when it cannot tell."""
        return None

    def check(self) -> CheckResult:
        """Authentication, image and flavor of every configured image, without booting anything.

        This default fits the local cloud: listing our VMs proves the endpoint answers, and it runs
        any image and flavor (nothing to look up). Cloud drivers look their images and flavors up."""
        try:
            self.list_nodes()
        except DriverError as e:
            return CheckResult(False, f"{type(e).__name__}: {e.message}")
        return CheckResult(True, "", tuple(
            ImageCheck(name, img.ImageID, None, img.Flavor, None, "any image runs here")
            for name, img in sorted(self.endpoint.images.items())))


DRIVERS = {
    "local": "vmdirac.drivers.local:LocalDriver",
    "ec2": "vmdirac.drivers.ec2:EC2Driver",
    "openstack": "vmdirac.drivers.openstack:OpenStackDriver",
    "cloudstack": "vmdirac.drivers.cloudstack:CloudStackDriver",
    "opennebula": "vmdirac.drivers.opennebula:opennebula_driver",   # XML-RPC or OCCI (Driver/API)
}


def make_driver(endpoint: Endpoint, deployment: str, state_dir: Path) -> Driver:
    spec = DRIVERS.get(endpoint.options.Type)
    if spec is None:
        raise ConfigurationError(f"endpoint {endpoint.name}: unknown Type {endpoint.options.Type!r}; "
                                 f"known: {', '.join(DRIVERS)}")
    module, _, name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigurationError(f"endpoint {endpoint.name}: driver {spec} is not available ({e})") from e
    return cls(endpoint, deployment, state_dir)


class DriverPool:
    """One driver per endpoint, made when first needed and again when the endpoint's
    configuration changed; ``drivers`` holds the ones made so far."""

    def __init__(self, deployment: Callable[[], str], state_dir: Callable[[str], Path]) -> None:
        self.deployment = deployment
        self.state_dir = state_dir
        self.drivers: dict[str, Driver] = {}

    def get(self, endpoint: Endpoint) -> Driver:
        drv = self.drivers.get(endpoint.name)
        if drv is None or drv.endpoint != endpoint:
            drv = make_driver(endpoint, self.deployment(), self.state_dir(endpoint.name))
            self.drivers[endpoint.name] = drv
        return drv
