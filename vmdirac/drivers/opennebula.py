"""OpenNebula (5.x/6.x) through its XML-RPC API (``one.vm.allocate`` and friends), stdlib only.

Endpoint options: ``URL`` (``http(s)://host:2633/RPC2``), ``Network`` (virtual network ids or
names, comma-separated), ``KeyName`` (an SSH public key put in the context). Driver options:
``TemplateID`` (instantiate this VM template, our attributes merged into it) else the VM is
described here: ``ImageID`` (image id or name) as its disk, the image's ``Cores``/``RAM`` as
CPU, VCPU and MEMORY. Credentials: ``username`` and ``password`` (the XML-RPC session is
``user:password``; it never leaves this module in a message).

The user data goes in ``CONTEXT`` as ``USER_DATA`` (base64, ``USERDATA_ENCODING="base64"``), what
OpenNebula's cloud-init datasource reads. Our tags are attributes of the VM's user template:
``VMDIRAC_DEPLOYMENT``, ``VMDIRAC_INSTANCE``.

OpenNebula 2.x/3.x's OCCI interface (gone since 5.0) is the other way in: ``Driver: {API: occi}``
picks ``opennebula_occi.OpenNebulaOCCIDriver`` (libcloud's OCCI-style driver); ``opennebula_driver``
below makes one or the other for ``Type: opennebula``.
"""

from __future__ import annotations

import base64
import logging
import threading
import xml.etree.ElementTree as ET
import xmlrpc.client
from pathlib import Path
from typing import Any, TypeVar

from vmdirac.drivers.base import (
    DEPLOYMENT_TAG, INSTANCE_TAG, AuthError, BadConfiguration, BootRequest, CapacityError, CheckResult, Driver,
    DriverError, ImageCheck, Limits, Node, NodeNotFound, NodeState, QuotaError, TransientError,
)
from vmdirac.drivers.cloud_common import QUOTA_WORDS, Credentials, alive_ours, http_url, split_list
from vmdirac.vm.config import Endpoint

log = logging.getLogger(__name__)
_D = TypeVar("_D", type[DriverError], None)

TAG_ATTRS = {DEPLOYMENT_TAG: "VMDIRAC_DEPLOYMENT", INSTANCE_TAG: "VMDIRAC_INSTANCE"}
# VM STATE (one.vm.info) -> ours; ACTIVE (3) is refined by LCM_STATE below.
NODE_STATE_MAP = {
    0: NodeState.PENDING,      # INIT
    1: NodeState.PENDING,      # PENDING
    2: NodeState.PENDING,      # HOLD
    3: NodeState.RUNNING,      # ACTIVE
    4: NodeState.STOPPED,      # STOPPED
    5: NodeState.STOPPED,      # SUSPENDED
    6: NodeState.TERMINATED,   # DONE
    8: NodeState.STOPPED,      # POWEROFF
    9: NodeState.STOPPED,      # UNDEPLOYED
    10: NodeState.PENDING,     # CLONING
    11: NodeState.ERROR,       # CLONING_FAILURE
}
LCM_PENDING = {0, 1, 2, 4, 5, 6, 7, 8, 9, 10}   # LCM_INIT, PROLOG, BOOT and migrations/saves
LCM_STOPPING = {11, 12, 13, 15, 18, 19, 20, 21, 23}  # EPILOG*, SHUTDOWN*, CLEANUP*
LCM_ERROR = {14, 36, 37, 38, 39, 40, 41, 42, 44, 46, 47, 48}  # FAILURE, BOOT_FAILURE, *_FAILURE

# OpenNebula's error codes (the third value of a failed answer).
AUTHENTICATION, AUTHORIZATION, NO_EXISTS, ACTION, XML_RPC_API, INTERNAL = 0x100, 0x200, 0x400, 0x800, 0x1000, 0x2000
ALL_VMS_OF_MINE, ANY_STATE_BUT_DONE = -3, -1


def opennebula_driver(endpoint: Endpoint, deployment: str, state_dir: Path) -> Driver:
    """``Type: opennebula``: XML-RPC (the default, ``Driver: {API: xmlrpc}``) or OCCI (``API: occi``)."""
    api = str((endpoint.options.Driver or {}).get("API") or "xmlrpc").lower()
    if api == "xmlrpc":
        return OpenNebulaDriver(endpoint, deployment, state_dir)
    if api == "occi":
        from vmdirac.drivers.opennebula_occi import OpenNebulaOCCIDriver

        return OpenNebulaOCCIDriver(endpoint, deployment, state_dir)
    raise BadConfiguration(f"endpoint {endpoint.name}: Driver/API is xmlrpc or occi, not {api!r}")


def tag_attribute(key: str) -> str:
    """The OpenNebula attribute (user template or CONTEXT) carrying the tag ``key``."""
    return TAG_ATTRS.get(key) or "VMDIRAC_TAG_" + "".join(c if c.isalnum() else "_" for c in key).upper()


class OpenNebulaDriver(Driver):
    def __init__(self, endpoint: Endpoint, deployment: str, state_dir: Path) -> None:
        super().__init__(endpoint, deployment, Path(state_dir))
        self.creds = Credentials.load(endpoint)
        self.extra: dict[str, Any] = dict(endpoint.options.Driver or {})
        http_url(endpoint.name, endpoint.options.URL, "URL is http(s)://host:2633/RPC2")
        self._local = threading.local()       # ServerProxy is not thread-safe: one per thread

    # ------------------------------------------------------------ the standard API

    def boot(self, request: BootRequest) -> Node:
        found = self._find(request.instance_name)
        if found is not None:
            log.info("boot of %s: already VM %s at %s", request.instance_name, found.vm_id, self.endpoint.name)
            return found
        tags = {**request.tags, DEPLOYMENT_TAG: self.deployment, INSTANCE_TAG: request.instance_name}
        template = self._template(request, tags)
        template_id = self.extra.get("TemplateID")
        if template_id not in (None, ""):
            vm_id = self._rpc("one.template.instantiate", int(template_id), request.instance_name, False, template)
        else:
            vm_id = self._rpc("one.vm.allocate", template, False)
        log.info("booted %s as OpenNebula VM %s at %s", request.instance_name, vm_id, self.endpoint.name)
        return self.status(str(vm_id))

    def status(self, vm_id: str) -> Node:
        try:
            body = self._rpc("one.vm.info", int(vm_id))
        except (NodeNotFound, ValueError):
            raise NodeNotFound(f"{self.endpoint.name}: VM {vm_id} does not exist", vm_id=vm_id) from None
        return self._to_node(ET.fromstring(body))

    def terminate(self, vm_id: str) -> None:
        try:
            node = self.status(vm_id)
            if node.state != NodeState.TERMINATED:
                self._rpc("one.vm.action", "terminate-hard", int(vm_id))
        except NodeNotFound:
            return
        log.info("terminated OpenNebula VM %s at %s", vm_id, self.endpoint.name)

    def list_nodes(self) -> list[Node]:
        return alive_ours(self._pool(), self.deployment)

    def limits(self) -> Limits:
        """The user's VM quota (``one.user.info``): -1 is the default quota, -2 unlimited."""
        user = ET.fromstring(self._rpc("one.user.info", -1))
        vm = user.find("VM_QUOTA/VM")

        def figure(tag: str) -> int | None:
            text = vm.findtext(tag) if vm is not None else None
            try:
                value = int(float(text)) if text else None
            except ValueError:
                return None
            return None if value is not None and value < 0 else value

        return Limits(figure("VMS"), figure("VMS_USED"), figure("CPU"), figure("CPU_USED"))

    def check(self) -> CheckResult:
        try:
            self._rpc("one.user.info", -1)
        except DriverError as e:
            return CheckResult(False, f"{type(e).__name__}: {e.message}")
        out = []
        template_id = self.extra.get("TemplateID")
        for name, img in sorted(self.endpoint.images.items()):
            reasons: list[str] = []
            if template_id not in (None, ""):
                image_ok = self._exists("one.template.info", int(template_id), reasons, f"template {template_id}")
                out.append(ImageCheck(name, str(template_id), image_ok, img.Flavor, None, "; ".join(reasons)))
                continue
            image_ok = self._image_exists(img.ImageID, reasons)
            flavor_ok = img.Cores > 0 and img.RAM > 0
            if not flavor_ok:
                reasons.append("Cores and RAM must be positive")
            out.append(ImageCheck(name, img.ImageID, image_ok, f"{img.Cores} cores/{img.RAM} MB", flavor_ok,
                                  "; ".join(reasons)))
        return CheckResult(True, "", tuple(out))

    # ------------------------------------------------------------ private

    @property
    def proxy(self) -> xmlrpc.client.ServerProxy:
        proxy = getattr(self._local, "proxy", None)
        if proxy is None:
            proxy = xmlrpc.client.ServerProxy(self.endpoint.options.URL, allow_none=False)
            self._local.proxy = proxy
        return proxy

    def _session(self) -> str:
        user, password = self.creds.require(self.endpoint.name, "username", "password")
        return f"{user}:{password}"

    def _rpc(self, method: str, *args: Any) -> Any:
        """One call; OpenNebula answers ``[ok, value or message, error code, ...]``."""
        where = f"opennebula {self.endpoint.name}: {method}"
        try:
            answer = getattr(self.proxy, method)(self._session(), *args)
        except xmlrpc.client.Fault as e:
            fault = self.creds.scrub(e.faultString)
            raise by_text(fault, TransientError)(f"{where}: {fault}") from None
        except xmlrpc.client.ProtocolError as e:
            cls = AuthError if e.errcode in (401, 403) else TransientError
            raise cls(f"{where}: HTTP {e.errcode} {e.errmsg}") from None
        except (OSError, xmlrpc.client.Error) as e:
            raise TransientError(f"{where}: {self.creds.scrub(str(e))}") from None
        if answer[0]:
            return answer[1]
        message = self.creds.scrub(str(answer[1]))
        code = int(answer[2]) if len(answer) > 2 else 0
        if any(w in message.lower() for w in QUOTA_WORDS) or " quota" in message.lower():
            cls: type[DriverError] = QuotaError    # quota failures come as AUTHORIZATION
        elif code == AUTHENTICATION or code == AUTHORIZATION:
            cls = AuthError
        elif code == NO_EXISTS:
            cls = NodeNotFound if method.startswith("one.vm.") else BadConfiguration
        elif code in (ACTION, XML_RPC_API):
            cls = by_text(message, BadConfiguration)
        else:
            cls = by_text(message, TransientError)
        raise cls(f"{where}: {message}")

    def _exists(self, method: str, arg: Any, reasons: list[str], what: str) -> bool:
        try:
            self._rpc(method, arg)
            return True
        except DriverError as e:
            reasons.append(f"{what}: {e.message}")
            return False

    def _image_exists(self, ref: str, reasons: list[str]) -> bool:
        if ref.isdigit():
            return self._exists("one.image.info", int(ref), reasons, f"image {ref}")
        try:
            pool = ET.fromstring(self._rpc("one.imagepool.info", ALL_VMS_OF_MINE, -1, -1))
        except DriverError as e:
            reasons.append(e.message)
            return False
        if any(i.findtext("NAME") == ref for i in pool.findall("IMAGE")):
            return True
        reasons.append(f"image {ref!r} not found")
        return False

    def _template(self, request: BootRequest, tags: dict[str, str]) -> str:
        image, opts = request.image, self.endpoint.options
        context = boot_context(request, opts.KeyName)
        lines = [f'NAME="{_quote(request.instance_name)}"']
        if self.extra.get("TemplateID") in (None, ""):
            if not image.ImageID:
                raise BadConfiguration(f"endpoint {self.endpoint.name}: ImageID (or Driver/TemplateID) is required")
            disk = f'IMAGE_ID="{image.ImageID}"' if image.ImageID.isdigit() else f'IMAGE="{_quote(image.ImageID)}"'
            lines += [f"CPU={image.Cores}", f"VCPU={image.Cores}", f"MEMORY={image.RAM}", f"DISK=[{disk}]"]
        for net in split_list(opts.Network):
            lines.append(f'NIC=[NETWORK_ID="{net}"]' if net.isdigit() else f'NIC=[NETWORK="{_quote(net)}"]')
        lines.append("CONTEXT=[" + ", ".join(f'{k}="{_quote(v)}"' for k, v in context.items()) + "]")
        for key, value in tags.items():
            lines.append(f'{tag_attribute(key)}="{_quote(value)}"')
        return "\n".join(lines)

    def _find(self, name: str) -> Node | None:
        return next((n for n in self.list_nodes() if n.tags.get(INSTANCE_TAG) == name), None)

    def _pool(self) -> list[Node]:
        body = self._rpc("one.vmpool.info", ALL_VMS_OF_MINE, -1, -1, ANY_STATE_BUT_DONE)
        return [self._to_node(vm) for vm in ET.fromstring(body).findall("VM")]

    def _to_node(self, vm: ET.Element) -> Node:
        state, lcm = int(vm.findtext("STATE") or -1), int(vm.findtext("LCM_STATE") or 0)
        ours = NODE_STATE_MAP.get(state, NodeState.UNKNOWN)
        if state == 3:
            ours = (NodeState.PENDING if lcm in LCM_PENDING else NodeState.STOPPING if lcm in LCM_STOPPING
                    else NodeState.ERROR if lcm in LCM_ERROR else NodeState.RUNNING)
        user_template = vm.find("USER_TEMPLATE")
        attrs = {c.tag: (c.text or "") for c in (user_template if user_template is not None else [])}
        tags = {key: attrs[attr] for key, attr in TAG_ATTRS.items() if attr in attrs}
        ips = tuple(ip for ip in (n.findtext("IP") for n in vm.findall("TEMPLATE/NIC")) if ip)
        return Node(vm.findtext("ID") or "", tags.get(INSTANCE_TAG, vm.findtext("NAME") or ""), ours, (), ips, tags)


def boot_context(request: BootRequest, key_name: str) -> dict[str, str]:
    """The CONTEXT a VM boots with: our user data for cloud-init, its hostname, an SSH key."""
    context = {"USER_DATA": base64.b64encode(request.user_data).decode(), "USERDATA_ENCODING": "base64",
               "NETWORK": "YES", "SET_HOSTNAME": request.instance_name}
    if key_name:
        context["SSH_PUBLIC_KEY"] = key_name
    return context


def _quote(value: str) -> str:
    # OpenNebula's template syntax: double-quoted values, backslash escapes.
    return value.replace("\\", "\\\\").replace('"', '\\"')


def by_text(message: str, default: _D) -> type[DriverError] | _D:
    """What OpenNebula's error text says (quota, capacity, authentication), else ``default``."""
    text = message.lower()
    if any(w in text for w in QUOTA_WORDS):
        return QuotaError
    if "no space" in text or "capacity" in text or "cannot dispatch" in text:
        return CapacityError
    if "authenticat" in text or "not authorized" in text:
        return AuthError
    return default
