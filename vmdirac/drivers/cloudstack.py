"""Apache CloudStack through libcloud's CloudStack driver (signed API requests, async jobs).

Endpoint options: ``URL`` (``https://host/client/api``), ``Zone`` (name or id; default the first
zone), ``Network`` (network ids, comma-separated), ``KeyName`` (an SSH key pair),
``SecurityGroups`` (names). Images: ``ImageID`` is the template (name or id), ``Flavor`` the
service offering (name or id). Credentials: ``api_key`` and ``secret_key``.

CloudStack tags a VM after it exists (``createTags`` on the ``UserVm``), so a boot is found again
by our instance name (the VM's name) as well as by tag.
"""

from __future__ import annotations

import logging
from typing import Any

from vmdirac.drivers.base import (
    DEPLOYMENT_TAG, INSTANCE_TAG, AuthError, BadConfiguration, BootRequest, CapacityError, DriverError, Flavor,
    Limits, Node, NodeState, QuotaError, TransientError,
)
from vmdirac.drivers.cloud_common import QUOTA_WORDS, LibcloudDriver, Ref, http_url, or_none, split_list

log = logging.getLogger(__name__)

# CloudStack VM states (listVirtualMachines ``state``).
NODE_STATE_MAP = {
    "Starting": NodeState.PENDING,
    "Creating": NodeState.PENDING,
    "Running": NodeState.RUNNING,
    "Migrating": NodeState.RUNNING,
    "Stopping": NodeState.STOPPING,
    "Stopped": NodeState.STOPPED,
    "Destroyed": NodeState.TERMINATED,
    "Expunging": NodeState.TERMINATED,
    "Error": NodeState.ERROR,
    "Shutdowned": NodeState.STOPPED,
}

# CloudStack's ApiErrorCode (the ``errorcode`` of an error answer, also its HTTP status).
ERROR_CODES: dict[int, type[DriverError]] = {
    401: AuthError,           # unable to verify user credentials and/or request signature
    429: TransientError,      # API_LIMIT_EXCEED
    430: BadConfiguration,    # MALFORMED_PARAMETER_ERROR
    431: BadConfiguration,    # PARAM_ERROR (unknown template, offering, zone)
    432: BadConfiguration,    # UNSUPPORTED_ACTION_ERROR
    530: TransientError,      # INTERNAL_ERROR
    531: AuthError,           # ACCOUNT_ERROR: not allowed for this account
    532: QuotaError,          # ACCOUNT_RESOURCE_LIMIT_ERROR
    533: CapacityError,       # INSUFFICIENT_CAPACITY_ERROR
    534: CapacityError,       # RESOURCE_UNAVAILABLE_ERROR
    535: CapacityError,       # RESOURCE_ALLOCATION_ERROR (also "Maximum number of resources ... exceeded")
    536: TransientError,      # RESOURCE_IN_USE_ERROR
}
RESOURCE_INSTANCES, RESOURCE_CPU = "0", "8"    # listResourceLimits resourcetype


class CloudStackDriver(LibcloudDriver):
    type_name = "cloudstack"

    def _connect(self) -> Any:
        from libcloud.compute.drivers.cloudstack import CloudStackNodeDriver

        if not self.endpoint.options.URL:
            raise BadConfiguration(f"endpoint {self.endpoint.name}: URL (…/client/api) is required")
        key, secret = self.creds.require(self.endpoint.name, "api_key", "secret_key")
        url, secure, port = http_url(self.endpoint.name, self.endpoint.options.URL,
                                     "URL is http(s)://host[:port]/client/api")
        # libcloud's ``url=`` keeps https whatever the scheme says: give it the parts.
        return CloudStackNodeDriver(key, secret, secure=secure, host=url.hostname, port=port,
                                    path=url.path or "/client/api")

    def _classify(self, e: BaseException, message: str) -> type[DriverError] | None:
        text = message.lower()
        # "Maximum number of resources of type 'user_vm' ... exceeded" comes as 535: a quota all the same.
        if any(w in text for w in QUOTA_WORDS):
            return QuotaError
        code = getattr(e, "http_code", None)
        if code in ERROR_CODES:
            return ERROR_CODES[code]
        if "insufficient" in text or "unable to create a deployment" in text:
            return CapacityError      # async job failures carry no code, only CloudStack's text
        return None

    # ------------------------------------------------------------ the standard API, by parts

    def _create(self, request: BootRequest, tags: dict[str, str]) -> Node:
        from libcloud.compute.base import NodeImage, NodeLocation, NodeSize

        opts, conn = self.endpoint.options, self.conn
        template = self._template(request.image.ImageID)
        offering = self._offering(request.image.Flavor)
        zone = self._zone(opts.Zone)
        networks = [Ref(n) for n in split_list(opts.Network)]
        node = conn.create_node(
            name=request.instance_name, ex_displayname=request.instance_name,
            size=NodeSize(offering["id"], offering["name"], None, None, None, None, conn),
            image=NodeImage(template["id"], template["name"], conn),
            location=NodeLocation(zone["id"], zone["name"], "", conn), networks=networks or None,
            ex_keyname=opts.KeyName or None, ex_userdata=request.user_data,
            ex_security_groups=split_list(opts.SecurityGroups) or None, ex_start_vm=True)
        conn.ex_create_tags([node.id], "UserVm", tags)
        return self._get(node.id) or Node(str(node.id), request.instance_name, NodeState.PENDING, tags=tags)

    def _find(self, name: str) -> Node | None:
        vms = self._list({"name": name})
        ours = [v for v in vms if v.name == name and v.state != NodeState.TERMINATED
                and v.tags.get(DEPLOYMENT_TAG, self.deployment) == self.deployment]
        return ours[0] if ours else None

    def _get(self, vm_id: str) -> Node | None:
        found = self._list({"id": vm_id})
        return found[0] if found else None

    def _ours(self) -> list[Node]:
        return self._list({"tags[0].key": DEPLOYMENT_TAG, "tags[0].value": self.deployment})

    def _destroy(self, vm_id: str) -> None:
        if self._get(vm_id) is None:
            return
        self.conn._async_request(command="destroyVirtualMachine", params={"id": vm_id}, method="GET")

    def _lookup_image(self, image_id: str) -> Any:
        return or_none(self._template, image_id)

    def _lookup_flavor(self, flavor: str) -> Any:
        return or_none(self._offering, flavor)

    # ------------------------------------------------------------ limits and flavors

    def limits(self) -> Limits:
        rows = self.call("limits", self.conn._sync_request, "listResourceLimits", method="GET").get("resourcelimit", [])
        maxima = {str(r.get("resourcetype")): int(r.get("max", -1)) for r in rows}
        used = len(self.list_nodes())
        max_instances = maxima.get(RESOURCE_INSTANCES)
        return Limits(max_instances=None if max_instances in (None, -1) else max_instances, used_instances=used,
                      max_cores=None if maxima.get(RESOURCE_CPU, -1) == -1 else maxima[RESOURCE_CPU])

    def flavor(self, name: str) -> Flavor | None:
        try:
            offering = self.call("flavor", self._offering, name)
        except BadConfiguration:
            return None
        return Flavor(offering["name"], offering.get("cpunumber"), offering.get("memory"), None)

    # ------------------------------------------------------------ private

    def _list(self, params: dict[str, str]) -> list[Node]:
        result = self.conn._sync_request("listVirtualMachines", params={**params, "listall": "true"}, method="GET")
        return [self._to_node(vm) for vm in result.get("virtualmachine", [])]

    def _one(self, command: str, key: str, ref: str, what: str, params: dict | None = None) -> dict:
        rows = self.conn._sync_request(command, params=params or {}, method="GET").get(key, [])
        for row in rows:
            if ref in (row.get("id"), row.get("name")):
                return row
        raise BadConfiguration(f"endpoint {self.endpoint.name}: no {what} {ref!r} (by name or id)")

    def _template(self, ref: str) -> dict:
        return self._one("listTemplates", "template", ref, "template", {"templatefilter": "executable"})

    def _offering(self, ref: str) -> dict:
        return self._one("listServiceOfferings", "serviceoffering", ref, "service offering")

    def _zone(self, ref: str) -> dict:
        if not ref:
            zones = self.conn._sync_request("listZones", method="GET").get("zone", [])
            if not zones:
                raise BadConfiguration(f"endpoint {self.endpoint.name}: the endpoint has no zone")
            return zones[0]
        return self._one("listZones", "zone", ref, "zone")

    def _to_node(self, vm: dict) -> Node:
        tags = {t["key"]: t["value"] for t in vm.get("tags", []) if "key" in t}
        nics = vm.get("nic", [])
        private = tuple(n["ipaddress"] for n in nics if n.get("ipaddress"))
        public = tuple(ip for ip in (vm.get("publicip"),) if ip)
        return Node(str(vm["id"]), tags.get(INSTANCE_TAG, vm.get("name", "")),
                    NODE_STATE_MAP.get(vm.get("state", ""), NodeState.UNKNOWN), public, private, tags)
