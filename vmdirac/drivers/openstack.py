"""OpenStack nova through libcloud's OpenStack driver, with keystone v2 password, v3 password or
v3 application-credential authentication.

Endpoint options: ``URL`` is keystone's (without ``/v3`` or ``/v2.0``); ``Region`` the catalog
region; ``KeyName``; ``Network`` (network ids, comma-separated); ``SecurityGroups``. Driver
options: ``AuthVersion`` (``3.x_password`` default, ``3.x_appcred`` when the credentials hold an
application credential, ``2.0_password``), ``Project``, ``ProjectDomainId`` (default ``default``),
``UserDomain`` (default ``Default``), ``ServiceName``/``ServiceType`` (the catalog entry of nova,
default any ``compute``), ``ConfigDrive`` (true: user data also on a config drive),
``FloatingIPPool`` (a pool to take a floating IP from once the server is ACTIVE).
Credentials: ``username`` + ``password`` (+ ``project`` if not in the options), or
``application_credential_id`` + ``application_credential_secret``.
Images: ``ImageID`` and ``Flavor`` are names or ids. Our tags are the server's metadata.
"""

from __future__ import annotations

import logging
from typing import Any

from vmdirac.drivers.base import (
    DEPLOYMENT_TAG, INSTANCE_TAG, AuthError, BadConfiguration, BootRequest, CapacityError, DriverError, Flavor,
    Limits, Node, NodeState, QuotaError,
)
from vmdirac.drivers.cloud_common import LIBCLOUD_STATE_MAP, LibcloudDriver, libcloud_node, or_none, split_list

log = logging.getLogger(__name__)

AUTH_VERSIONS = ("2.0_password", "3.x_password", "3.x_appcred")
# nova server statuses (https://docs.openstack.org/api-guide/compute/server_concepts.html).
NODE_STATE_MAP = {
    "BUILD": NodeState.PENDING,
    "REBUILD": NodeState.PENDING,
    "ACTIVE": NodeState.RUNNING,
    "REBOOT": NodeState.RUNNING,
    "HARD_REBOOT": NodeState.RUNNING,
    "MIGRATING": NodeState.RUNNING,
    "RESIZE": NodeState.RUNNING,
    "VERIFY_RESIZE": NodeState.RUNNING,
    "PAUSED": NodeState.STOPPED,
    "SUSPENDED": NodeState.STOPPED,
    "SHUTOFF": NodeState.STOPPED,
    "SHELVED": NodeState.STOPPED,
    "SHELVED_OFFLOADED": NodeState.STOPPED,
    "DELETED": NodeState.TERMINATED,
    "SOFT_DELETED": NodeState.TERMINATED,
    "ERROR": NodeState.ERROR,
}


class OpenStackDriver(LibcloudDriver):
    type_name = "openstack"

    def _connect(self) -> Any:
        from libcloud.compute.drivers.openstack import OpenStack_1_1_NodeDriver

        opts, extra = self.endpoint.options, self.extra
        if not opts.URL:
            raise BadConfiguration(f"endpoint {self.endpoint.name}: URL (keystone) is required")
        appcred = bool(self.creds.get("application_credential_id"))
        version = str(extra.get("AuthVersion") or ("3.x_appcred" if appcred else "3.x_password"))
        if version not in AUTH_VERSIONS:
            raise BadConfiguration(f"endpoint {self.endpoint.name}: AuthVersion is one of {', '.join(AUTH_VERSIONS)}")
        if version == "3.x_appcred":
            key, secret = self.creds.require(self.endpoint.name, "application_credential_id",
                                             "application_credential_secret")
        else:
            key, secret = self.creds.require(self.endpoint.name, "username", "password")
        kwargs: dict[str, Any] = {
            "ex_force_auth_url": opts.URL.rstrip("/"),
            "ex_force_auth_version": version,
            "ex_tenant_name": str(extra.get("Project") or self.creds.get("project") or "") or None,
            "ex_domain_name": str(extra.get("UserDomain") or "Default"),
            "ex_tenant_domain_id": str(extra.get("ProjectDomainId") or "default"),
            "ex_force_service_type": str(extra.get("ServiceType") or "compute"),
        }
        if extra.get("ServiceName"):
            kwargs["ex_force_service_name"] = str(extra["ServiceName"])
        if opts.Region:
            kwargs["ex_force_service_region"] = opts.Region
        # The nova API (servers, flavors, images proxy): what 1.1 in libcloud speaks, nova v2/v2.1 serve.
        return OpenStack_1_1_NodeDriver(key, secret, secure=opts.URL.startswith("https"), **kwargs)

    def _classify(self, e: BaseException, message: str) -> type[DriverError] | None:
        text = message.lower()
        if "quota exceeded" in text or "overlimit" in text:
            return QuotaError
        if "no valid host" in text:
            return CapacityError
        if "could not be found" in text and ("image" in text or "flavor" in text or "network" in text):
            return BadConfiguration
        if type(e).__name__ == "InvalidCredsError":
            return AuthError
        return None

    # ------------------------------------------------------------ the standard API, by parts

    def _create(self, request: BootRequest, tags: dict[str, str]) -> Node:
        from libcloud.compute.drivers.openstack import OpenStackNetwork

        opts, conn = self.endpoint.options, self.conn
        image = self._image(request.image.ImageID)
        size = self._size(request.image.Flavor)
        kwargs: dict[str, Any] = {"ex_userdata": request.user_data.decode("utf-8", "surrogateescape"),
                                  "ex_metadata": tags}
        if opts.KeyName:
            kwargs["ex_keyname"] = opts.KeyName
        networks = split_list(opts.Network)
        if networks:
            kwargs["networks"] = [OpenStackNetwork(n, n, None, conn) for n in networks]
        if opts.SecurityGroups:
            kwargs["ex_security_groups"] = [_Named(g) for g in split_list(opts.SecurityGroups)]
        if _true(self.extra.get("ConfigDrive")):
            kwargs["ex_config_drive"] = True
        if opts.Zone:
            kwargs["ex_availability_zone"] = opts.Zone
        node = conn.create_node(name=request.instance_name, size=size, image=image, **kwargs)
        return self._to_node(node)

    def _get(self, vm_id: str) -> Node | None:
        node = self.conn.ex_get_node_details(vm_id)
        if node is None:
            return None
        out = self._to_node(node)
        if out.state == NodeState.RUNNING and not out.public_ips and self.extra.get("FloatingIPPool"):
            self._attach_floating_ip(node)
        return out

    def _ours(self) -> list[Node]:
        return [self._to_node(n) for n in self.conn.list_nodes()]

    def _destroy(self, vm_id: str) -> None:
        from libcloud.compute.base import Node as LNode

        try:
            self.conn.destroy_node(LNode(vm_id, None, None, [], [], self.conn))
        except Exception as e:
            if getattr(e, "code", None) == 404 or "could not be found" in str(e):
                return
            raise

    def _lookup_image(self, image_id: str) -> Any:
        return or_none(self._image, image_id)

    def _lookup_flavor(self, flavor: str) -> Any:
        return or_none(self._size, flavor)

    # ------------------------------------------------------------ limits and flavors

    def limits(self) -> Limits:
        """nova's absolute limits of the project (``GET /limits``)."""
        absolute = self.call("limits", lambda: self.conn.connection.request("/limits").object["limits"]["absolute"])
        return Limits(max_instances=_int(absolute.get("maxTotalInstances")),
                      used_instances=_int(absolute.get("totalInstancesUsed")),
                      max_cores=_int(absolute.get("maxTotalCores")), used_cores=_int(absolute.get("totalCoresUsed")))

    def flavor(self, name: str) -> Flavor | None:
        try:
            size = self.call("flavor", self._size, name)
        except BadConfiguration:
            return None
        return Flavor(size.name, _int(getattr(size, "vcpus", None) or (size.extra or {}).get("vcpus")),
                      _int(size.ram), float(size.price) if size.price else None)

    # ------------------------------------------------------------ private

    def _image(self, ref: str) -> Any:
        for image in self.conn.list_images():
            if ref in (image.id, image.name):
                return image
        raise BadConfiguration(f"endpoint {self.endpoint.name}: no image {ref!r} (by name or id)")

    def _size(self, ref: str) -> Any:
        for size in self.conn.list_sizes():
            if ref in (str(size.id), size.name):
                return size
        raise BadConfiguration(f"endpoint {self.endpoint.name}: no flavor {ref!r} (by name or id)")

    def _attach_floating_ip(self, node: Any) -> None:
        """Best effort: a floating IP from the pool once the server is ACTIVE (nova refuses before)."""
        pool_name = str(self.extra["FloatingIPPool"])
        try:
            pool = next(p for p in self.conn.ex_list_floating_ip_pools() if p.name == pool_name)
            ip = pool.create_floating_ip()
            self.conn.ex_attach_floating_ip_to_node(node, ip.ip_address)
            log.info("floating IP %s attached to %s at %s", ip.ip_address, node.id, self.endpoint.name)
        except Exception as e:   # the VM works without it; the next status() tries again
            log.warning("no floating IP from %s for %s: %s", pool_name, node.id, self.creds.scrub(str(e)))

    def _to_node(self, node: Any) -> Node:
        extra = node.extra or {}
        tags = extra.get("metadata") or {}
        out = libcloud_node(node, tags, LIBCLOUD_STATE_MAP)
        status = str(extra.get("vm_state") or "").upper()
        state = NODE_STATE_MAP.get(status, out.state)
        return Node(out.vm_id, tags.get(INSTANCE_TAG, out.name), state, out.public_ips, out.private_ips, out.tags)


class _Named:
    """What libcloud's ``ex_security_groups`` needs of a group: its name."""

    def __init__(self, name: str) -> None:
        self.name = name


def _true(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


__all__ = ["OpenStackDriver", "NODE_STATE_MAP", "DEPLOYMENT_TAG"]
