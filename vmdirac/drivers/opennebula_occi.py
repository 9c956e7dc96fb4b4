"""OpenNebula 2.x-4.x through its OCCI interface (OGF OCCI draft 0.8 with OpenNebula's XML), on
libcloud's OpenNebula driver; ``Type: opennebula`` with ``Driver: {API: occi}`` (see
``opennebula.opennebula_driver``).

Endpoint options: ``URL`` (``http(s)://host:4567[/path]``), ``Network`` (virtual network ids or
names, comma-separated), ``KeyName`` (an SSH public key put in the context). Driver options:
``APIVersion`` (libcloud's: 2.0, 2.2, 3.0, 3.2, 3.6, 3.8; default 3.8), ``PlainAuth`` (3.8 only:
send the password itself, not its SHA1). Images: ``ImageID`` is the storage (image) id or name,
``Flavor`` the instance type (``small``, ``medium``, ...). Credentials: ``username``, ``password``.

The user data goes in the COMPUTE's ``CONTEXT`` as ``USER_DATA`` (base64,
``USERDATA_ENCODING="base64"``), next to our tags ``VMDIRAC_DEPLOYMENT`` and ``VMDIRAC_INSTANCE``:
the OCCI server shows each COMPUTE's CONTEXT, so ``list_nodes`` finds ours by them. The VM's name
cannot carry anything: libcloud's ``create_node`` sends an empty ``NAME`` (it rebinds ``name`` to
the element it creates), so the server names the VM ``one-<id>``.

Two more things of libcloud's driver are worked around by ``_Compat``: its ``__new__`` returns
None for every class but the base one (so a versioned class cannot be made directly), and every
parsed COMPUTE looks its instance type up again (3.2+: one more request per VM; 3.8: one per
type), which we never read. libcloud's 1.4 driver sends no CONTEXT at all: refused.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from vmdirac.drivers.base import INSTANCE_TAG, BadConfiguration, BootRequest, DriverError, Flavor, Limits, Node, NodeState
from vmdirac.drivers.cloud_common import LibcloudDriver, http_url, split_list
from vmdirac.drivers.opennebula import TAG_ATTRS, boot_context, by_text, tag_attribute

log = logging.getLogger(__name__)

API_VERSIONS = {"2.0": "OpenNebula_2_0_NodeDriver", "2.2": "OpenNebula_2_0_NodeDriver",
                "3.0": "OpenNebula_3_0_NodeDriver", "3.2": "OpenNebula_3_2_NodeDriver",
                "3.6": "OpenNebula_3_6_NodeDriver", "3.8": "OpenNebula_3_8_NodeDriver"}
DEFAULT_API_VERSION = "3.8"

# A COMPUTE's STATE: OpenNebula's VM state (INIT ... FAILED), or on some servers the LCM state of
# an ACTIVE VM (PROLOG, BOOT, RUNNING, ...). libcloud maps these coarsely (SUSPENDED is PENDING,
# STOPPED is TERMINATED, FAILED is TERMINATED); we keep the STATE text and map it here.
NODE_STATE_MAP = {
    "INIT": NodeState.PENDING,
    "PENDING": NodeState.PENDING,
    "HOLD": NodeState.PENDING,
    "PROLOG": NodeState.PENDING,
    "BOOT": NodeState.PENDING,
    "ACTIVE": NodeState.RUNNING,
    "RUNNING": NodeState.RUNNING,
    "MIGRATE": NodeState.RUNNING,
    "SAVE_STOP": NodeState.STOPPING,
    "SAVE_SUSPEND": NodeState.STOPPING,
    "SHUTDOWN": NodeState.STOPPING,
    "EPILOG": NodeState.STOPPING,
    "CANCEL": NodeState.STOPPING,
    "STOPPED": NodeState.STOPPED,
    "SUSPENDED": NodeState.STOPPED,
    "POWEROFF": NodeState.STOPPED,
    "DONE": NodeState.TERMINATED,
    "FAILED": NodeState.ERROR,
    "FAILURE": NodeState.ERROR,
    "UNKNOWN": NodeState.UNKNOWN,
}


class _Compat:
    """Mixed into libcloud's versioned OpenNebula driver class (see the module docstring)."""

    plain_auth = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return object.__new__(cls)

    def _ex_connection_class_kwargs(self) -> dict:
        return {"plain_auth": self.plain_auth}

    def _to_node(self, compute: Any) -> Any:
        node = super()._to_node(compute)                      # type: ignore[misc]
        node.extra["occi_state"] = (compute.findtext("STATE") or "").strip().upper()
        return node

    def _extract_size(self, compute: Any) -> None:
        return None


@functools.lru_cache(maxsize=None)
def _libcloud_class(version: str, plain_auth: bool) -> type:
    from libcloud.compute.drivers import opennebula

    base = getattr(opennebula, API_VERSIONS[version])
    return type(f"VMDirac{base.__name__}", (_Compat, base), {"plain_auth": plain_auth})


class OpenNebulaOCCIDriver(LibcloudDriver):
    type_name = "opennebula-occi"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        name, opts = self.endpoint.name, self.endpoint.options
        self.api_version = str(self.extra.get("APIVersion") or DEFAULT_API_VERSION)
        if self.api_version not in API_VERSIONS:
            raise BadConfiguration(f"endpoint {name}: OCCI APIVersion {self.api_version!r} is not one of "
                                   f"{', '.join(API_VERSIONS)} (1.4 sends no CONTEXT, so no user data)")
        self.plain_auth = bool(self.extra.get("PlainAuth", False))
        if self.plain_auth and self.api_version != "3.8":
            raise BadConfiguration(f"endpoint {name}: PlainAuth is for OCCI APIVersion 3.8 only")
        self.url, self.secure, self.port = http_url(name, opts.URL,
                                                    "URL is http(s)://host:4567[/path] (the OCCI server)")

    def _connect(self) -> Any:
        user, password = self.creds.require(self.endpoint.name, "username", "password")
        conn = _libcloud_class(self.api_version, self.plain_auth)(
            user, password, secure=self.secure, host=self.url.hostname, port=self.port, api_version=self.api_version)
        conn.connection.request_path = self.url.path.rstrip("/")
        return conn

    def _classify(self, e: BaseException, message: str) -> type[DriverError] | None:
        # The OCCI server answers OpenNebula's errors as 401/403/404/500 with OpenNebula's text,
        # which says quota (a 403) or capacity where there is one.
        return by_text(message, None)

    # ------------------------------------------------------------ the standard API, by parts

    def _create(self, request: BootRequest, tags: dict[str, str]) -> Node:
        from libcloud.common.exceptions import BaseHTTPError
        from libcloud.compute.base import NodeImage, NodeSize
        from libcloud.compute.drivers.opennebula import OpenNebulaNetwork

        image, opts = request.image, self.endpoint.options
        if not image.ImageID or not image.Flavor:
            raise BadConfiguration(f"endpoint {self.endpoint.name}: image needs ImageID (storage) and Flavor "
                                   "(instance type)")
        conn = self.conn
        context = boot_context(request, opts.KeyName)
        context.update({tag_attribute(k): v for k, v in tags.items()})
        networks = [OpenNebulaNetwork(n, None, None, 1, conn) for n in self._network_ids()]
        try:
            node = conn.create_node(name=request.instance_name, size=NodeSize(image.Flavor, image.Flavor, None, None,
                                                                              None, None, conn),
                                    image=NodeImage(self._image_id(image.ImageID), image.ImageID, conn),
                                    networks=networks or None, context=context)
        except BaseHTTPError as e:
            if e.code in (400, 404):   # an unknown storage, network or instance type
                raise BadConfiguration(f"opennebula-occi {self.endpoint.name}: boot: "
                                       f"{self.creds.scrub(str(e.message))}") from None
            raise
        return self._to_node(node)

    def _get(self, vm_id: str) -> Node | None:
        if not vm_id.isdigit():
            return None
        compute = self._request_or_none(f"/compute/{vm_id}")
        return None if compute is None else self._to_node(self.conn._to_node(compute))

    def _ours(self) -> list[Node]:
        return [self._to_node(n) for n in self.conn.list_nodes()]

    def _destroy(self, vm_id: str) -> None:
        from libcloud.compute.base import Node as LNode

        node = self._get(vm_id)
        if node is None or node.state == NodeState.TERMINATED:
            return               # the server refuses to end a DONE VM
        self.conn.destroy_node(LNode(vm_id, None, None, [], [], self.conn))

    def _authenticate(self) -> None:
        self.conn.connection.request("/compute")              # the collection only: no request per VM

    def _lookup_image(self, image_id: str) -> Any:
        if image_id.isdigit():
            storage = self._request_or_none(f"/storage/{image_id}")
            return None if storage is None else self.conn._to_image(storage)
        return next((i for i in self.conn.list_images() if i.name == image_id), None)

    def _lookup_flavor(self, flavor: str) -> Any:
        return next((s for s in self.conn.list_sizes() if s.name == flavor), None)

    # ------------------------------------------------------------ limits and flavors

    def limits(self) -> Limits:
        """libcloud's OCCI driver reads no quota: the VMs we have are what we know."""
        return Limits(used_instances=len(self.list_nodes()))

    def flavor(self, name: str) -> Flavor | None:
        """An instance type: 2.0-3.0 are libcloud's fixed small/medium/large, 3.2+ the server's."""
        size = self.call("flavor", self._lookup_flavor, name)
        if size is None:
            return None
        cpu = getattr(size, "cpu", None)
        return Flavor(name, int(cpu) if cpu else None, int(size.ram) if size.ram else None,
                      float(size.price) if size.price else None)

    # ------------------------------------------------------------ private

    def _request_or_none(self, path: str) -> Any:
        from libcloud.common.exceptions import BaseHTTPError

        try:
            return self.conn.connection.request(path).object
        except BaseHTTPError as e:
            if e.code == 404:
                return None
            raise

    def _image_id(self, ref: str) -> str:
        if ref.isdigit():
            return ref
        found = self._lookup_image(ref)
        if found is None:
            raise BadConfiguration(f"endpoint {self.endpoint.name}: no OCCI storage named {ref!r}")
        return str(found.id)

    def _network_ids(self) -> list[str]:
        refs = split_list(self.endpoint.options.Network)
        if all(r.isdigit() for r in refs):
            return refs
        by_name = {n.name: n.id for n in self.conn.ex_list_networks()}
        missing = [r for r in refs if not r.isdigit() and r not in by_name]
        if missing:
            raise BadConfiguration(f"endpoint {self.endpoint.name}: no OCCI network named {', '.join(missing)}")
        return [r if r.isdigit() else str(by_name[r]) for r in refs]

    def _to_node(self, node: Any) -> Node:
        context = {str(k).upper(): v or "" for k, v in ((node.extra or {}).get("context") or {}).items()}
        tags = {key: context[attr] for key, attr in TAG_ATTRS.items() if context.get(attr)}
        state = NODE_STATE_MAP.get((node.extra or {}).get("occi_state", ""), NodeState.UNKNOWN)
        ips = tuple(n.address for n in (node.public_ips or []) if getattr(n, "address", None))
        return Node(str(node.id), tags.get(INSTANCE_TAG, str(node.name or "")), state, (), ips, tags)
