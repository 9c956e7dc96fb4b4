"""Amazon EC2 (and EC2-compatible endpoints) through libcloud's EC2 driver, signed with SigV4.

Endpoint options: ``Region`` (default us-east-1), or ``URL`` for another EC2 endpoint (its
region still signs the requests); ``KeyName``; ``SecurityGroups`` (``sg-`` ids, which need a
subnet, and/or names, which EC2 takes in the default VPC only); ``Network`` (a subnet id);
``MaxAllowedPrice`` > 0 asks for a spot instance at most that price per hour (RunInstances with
``InstanceMarketOptions``, what AWS recommends over the legacy RequestSpotInstances: the instance
exists, tagged, when the call returns). Credentials: ``access_key``, ``secret_key`` and optionally
``session_token``. Images: ``ImageID`` is the AMI, ``Flavor`` the instance type.

Our tags travel as EC2 tags on the instance (TagSpecification at RunInstances, so a VM is never
untagged). A boot is idempotent twice over: a VM already tagged with our instance name is
returned, and RunInstances carries a ClientToken derived from it.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from vmdirac.drivers.base import (
    DEPLOYMENT_TAG, INSTANCE_TAG, AuthError, BadConfiguration, BootRequest, CapacityError, DriverError, Flavor,
    Limits, Node, NodeNotFound, NodeState, QuotaError, TransientError,
)
from vmdirac.drivers.cloud_common import LibcloudDriver, Ref, http_url, libcloud_node, split_list

log = logging.getLogger(__name__)

# EC2's own instance-state names (DescribeInstances instanceState/name); libcloud maps them to its
# vocabulary first, we keep EC2's meaning where it is finer (shutting-down is not yet gone).
NODE_STATE_MAP = {
    "pending": NodeState.PENDING,
    "running": NodeState.RUNNING,
    "shutting-down": NodeState.STOPPING,
    "stopping": NodeState.STOPPING,
    "stopped": NodeState.STOPPED,
    "terminated": NodeState.TERMINATED,
}

# EC2 error codes (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html).
ERROR_CODES: dict[str, type[DriverError]] = {
    "AuthFailure": AuthError,
    "UnauthorizedOperation": AuthError,
    "InvalidClientTokenId": AuthError,
    "SignatureDoesNotMatch": AuthError,
    "OptInRequired": AuthError,
    "InstanceLimitExceeded": QuotaError,
    "VcpuLimitExceeded": QuotaError,
    "MaxSpotInstanceCountExceeded": QuotaError,
    "ResourceLimitExceeded": QuotaError,
    "InsufficientInstanceCapacity": CapacityError,
    "InsufficientCapacity": CapacityError,
    "SpotMaxPriceTooLow": CapacityError,
    "Unsupported": BadConfiguration,
    "InvalidAMIID.NotFound": BadConfiguration,
    "InvalidAMIID.Malformed": BadConfiguration,
    "InvalidParameterValue": BadConfiguration,
    "InvalidKeyPair.NotFound": BadConfiguration,
    "InvalidSubnetID.NotFound": BadConfiguration,
    "InvalidGroup.NotFound": BadConfiguration,
    "InvalidInstanceID.NotFound": NodeNotFound,
    "InvalidInstanceID.Malformed": NodeNotFound,
    "RequestLimitExceeded": TransientError,
    "ServiceUnavailable": TransientError,
    "InternalError": TransientError,
    "Unavailable": TransientError,
}


class EC2Driver(LibcloudDriver):
    type_name = "ec2"

    def _connect(self) -> Any:
        from libcloud.compute.drivers.ec2 import EC2NodeDriver

        key, secret = self.creds.require(self.endpoint.name, "access_key", "secret_key")
        opts = self.endpoint.options
        region = opts.Region or "us-east-1"
        kwargs: dict[str, Any] = {"region": region, "signature_version": "4",
                                  "token": self.creds.get("session_token") or None}
        if opts.URL:
            url, secure, port = http_url(self.endpoint.name, opts.URL, f"URL {opts.URL!r} is not http(s)://host[:port]")
            kwargs.update(secure=secure, host=url.hostname, port=port)
        try:
            return EC2NodeDriver(key, secret, **kwargs)
        except ValueError as e:   # an unknown region
            raise BadConfiguration(f"endpoint {self.endpoint.name}: {e}") from None

    def _classify(self, e: BaseException, message: str) -> type[DriverError] | None:
        # libcloud formats each error as "<Code>: <Message>"; the code says what happened.
        for line in message.splitlines():
            code = line.split(":", 1)[0].strip()
            if code in ERROR_CODES:
                return ERROR_CODES[code]
        return None

    # ------------------------------------------------------------ the standard API, by parts

    def _create(self, request: BootRequest, tags: dict[str, str]) -> Node:
        from libcloud.compute.base import NodeImage, NodeSize

        opts = self.endpoint.options
        image = request.image
        if not image.ImageID or not image.Flavor:
            raise BadConfiguration(f"endpoint {self.endpoint.name}: image needs ImageID (AMI) and Flavor (type)")
        conn = self.conn
        groups = split_list(opts.SecurityGroups)
        kwargs: dict[str, Any] = {
            "ex_userdata": request.user_data,
            "ex_metadata": tags,
            # ClientToken: at most 64 ASCII characters, unique per request we mean.
            "ex_clienttoken": hashlib.sha256(f"{self.deployment}/{request.instance_name}".encode()).hexdigest()[:64],
        }
        if opts.KeyName:
            kwargs["ex_keyname"] = opts.KeyName
        if opts.Network:
            kwargs["ex_subnet"] = Ref(opts.Network)
        # Group ids go as SecurityGroupId (libcloud sends those only with a subnet), names as
        # SecurityGroup (EC2 takes names in the default VPC only); an id sent as a name is unknown.
        ids = [g for g in groups if g.startswith("sg-")]
        names = [g for g in groups if not g.startswith("sg-")]
        if ids and not opts.Network:
            raise BadConfiguration(f"endpoint {self.endpoint.name}: security group ids ({', '.join(ids)}) need "
                                   "Network (a subnet id); without one, give the groups' names")
        if ids:
            kwargs["ex_security_group_ids"] = ids
        if names:
            kwargs["ex_security_groups"] = names
        if opts.MaxAllowedPrice > 0:
            kwargs.update(ex_spot=True, ex_spot_max_price=opts.MaxAllowedPrice)
        node = conn.create_node(name=request.instance_name, size=NodeSize(image.Flavor, image.Flavor, image.RAM,
                                                                          image.Disk, 0, 0, conn),
                                image=NodeImage(image.ImageID, image.ImageID, conn), **kwargs)
        if isinstance(node, list):
            # libcloud found no instance in the answer: an EC2 endpoint that does not speak its XML.
            raise TransientError(f"ec2 {self.endpoint.name}: RunInstances answered without an instance")
        return self._to_node(node)

    def _find(self, name: str) -> Node | None:
        nodes = self.conn.list_nodes(ex_filters={f"tag:{INSTANCE_TAG}": name,
                                                 f"tag:{DEPLOYMENT_TAG}": self.deployment})
        alive = [self._to_node(n) for n in nodes]
        return next((n for n in alive if n.state != NodeState.TERMINATED), None)

    def _get(self, vm_id: str) -> Node | None:
        try:
            nodes = self.conn.list_nodes(ex_node_ids=[vm_id])
        except Exception as e:
            if "InvalidInstanceID" in str(e):
                return None
            raise
        return self._to_node(nodes[0]) if nodes else None

    def _ours(self) -> list[Node]:
        return [self._to_node(n) for n in self.conn.list_nodes(ex_filters={f"tag:{DEPLOYMENT_TAG}": self.deployment})]

    def _destroy(self, vm_id: str) -> None:
        from libcloud.compute.base import Node as LNode

        try:
            self.conn.destroy_node(LNode(vm_id, None, None, [], [], self.conn))
        except Exception as e:
            if "InvalidInstanceID" in str(e):
                return
            raise

    def _authenticate(self) -> None:
        self.conn.list_nodes(ex_filters={f"tag:{DEPLOYMENT_TAG}": self.deployment})

    def _lookup_image(self, image_id: str) -> Any:
        images = self.conn.list_images(ex_image_ids=[image_id])
        return images[0] if images else None

    def _lookup_flavor(self, flavor: str) -> Any:
        return self.flavor(flavor)

    # ------------------------------------------------------------ limits and flavors

    def limits(self) -> Limits:
        """EC2 states its instance limit as the account attribute ``max-instances``."""
        used = len(self.list_nodes())
        try:
            attrs = self.call("limits", self.conn.ex_describe_account_attributes if hasattr(
                self.conn, "ex_describe_account_attributes") else lambda: {})
        except DriverError:
            attrs = {}
        maximum = attrs.get("max-instances") if isinstance(attrs, dict) else None
        return Limits(max_instances=int(maximum) if maximum else self.endpoint.options.MaxInstances,
                      used_instances=used)

    def flavor(self, name: str) -> Flavor | None:
        """libcloud ships the instance types (cores, RAM) and on-demand prices of each region."""
        sizes = self.call("flavors", self.conn.list_sizes)
        for size in sizes:
            if size.id == name:
                cores = (size.extra or {}).get("vcpu") or (size.extra or {}).get("cpu")
                return Flavor(name, int(cores) if cores else None, int(size.ram) if size.ram else None,
                              float(size.price) if size.price else None)
        return None

    # ------------------------------------------------------------ private

    def _to_node(self, node: Any) -> Node:
        tags = (node.extra or {}).get("tags") or {}
        ec2_state = str((node.extra or {}).get("status") or "").lower()
        out = libcloud_node(node, tags)
        state = NODE_STATE_MAP.get(ec2_state, out.state)
        return Node(out.vm_id, tags.get(INSTANCE_TAG, out.name), state, out.public_ips, out.private_ips, out.tags)
