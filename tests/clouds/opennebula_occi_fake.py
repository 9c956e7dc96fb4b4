"""An OpenNebula OCCI server fake (OpenNebula 2.x-3.x: OGF OCCI draft 0.8 with OpenNebula's XML),
written from OpenNebula's OCCI specification (the archived "OCCI Specification" pages of releases
2.2, 3.2 and 3.4) and from what libcloud's OpenNebula driver sends and parses
(``libcloud/compute/drivers/opennebula.py`` and its test fixtures). It covers what the
``opennebula`` driver with ``Driver: {API: occi}`` calls, for libcloud's API versions 2.0 to 3.8:

- ``GET /compute`` (a COMPUTE_COLLECTION of hrefs), ``POST /compute`` (a COMPUTE with NAME,
  INSTANCE_TYPE, DISK/STORAGE@href, NIC/NETWORK@href, CONTEXT; answers 201 and the new COMPUTE),
  ``GET /compute/<id>``, ``DELETE /compute/<id>`` (204);
- ``GET /storage``, ``/storage/<id>``, ``GET /network``, ``/network/<id>``;
- ``GET /instance_type`` from 3.2 on (3.2/3.6 list the types in full; 3.8 lists hrefs and names
  and answers ``GET /instance_type/<name>``); before 3.2 there is none (404) and the client knows
  small/medium/large itself.

Authentication is HTTP Basic with the user name and the SHA1 hex digest of the password (what
OpenNebula stores and libcloud sends; ``plain_auth=True``: the password itself, libcloud 3.8's
``plain_auth``). Errors are the OCCI server's: OpenNebula's error code as an HTTP status with
OpenNebula's text, ``text/plain``: 401 not authenticated, 403 not authorized (the VMS quota
among them: "limit of N reached for VMS quota"), 404 no such object, 500 an action refused, 400 a
document it cannot read or a bad instance type. ``fail_next`` injects any other status (a 503).

A new COMPUTE is PENDING and ACTIVE from the next look on; DELETE makes it DONE: still readable by
id, no longer in the collection, and a second DELETE is refused (500, wrong state). A COMPUTE
sent without a NAME is named ``one-<id>``, as OpenNebula names it.
"""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET

from tests.clouds.jsonserver import FakeServer, Reply

IMAGES = {7: ("el9-one", "OS", 10240), 8: ("scratch", "DATABLOCK", 2048)}
NETWORKS = {0: ("private", "192.168.150.0", 254), 1: ("public", "10.10.0.0", 254)}
# name: CPU, MEMORY (MB); "medium" is not libcloud's fixed 2.0-3.0 medium (4 CPU), so a test tells them apart
INSTANCE_TYPES = {"small": (1, 1024), "medium": (2, 4096), "large": (8, 8192)}
TEXT = {"Content-Type": "text/plain"}
XML = {"Content-Type": "application/xml"}


def _xml(element: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(element)


def _sub(parent: ET.Element, tag: str, text: object = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = str(text)
    return el


class OpenNebulaOCCIFake(FakeServer):
    routes = [
        ("GET", r"/compute", "list_computes"),
        ("POST", r"/compute", "create_compute"),
        ("GET", r"/compute/(\d+)", "show_compute"),
        ("DELETE", r"/compute/(\d+)", "delete_compute"),
        ("GET", r"/storage", "list_storage"),
        ("GET", r"/storage/(\d+)", "show_storage"),
        ("GET", r"/network", "list_networks"),
        ("GET", r"/network/(\d+)", "show_network"),
        ("GET", r"/instance_type", "list_instance_types"),
        ("GET", r"/instance_type/(\w+)", "show_instance_type"),
    ]

    def __init__(self, api_version: str = "3.8", user: str = "oneadmin", password: str = "occi-test-password",
                 plain_auth: bool = False, prefix: str = "", max_vms: int = 100) -> None:
        self.api_version = tuple(int(x) for x in api_version.split("."))
        self.user, self.password = user, password
        self.plain_auth = plain_auth
        self.prefix = prefix.rstrip("/")
        self.routes = [(m, self.prefix + p, h) for m, p, h in type(self).routes]
        self.max_vms = max_vms
        self.vms: dict[int, dict] = {}
        self.next_id = 200
        self.faults: list[tuple[str, int, str]] = []
        self.authorizations: list[str] = []      # every Authorization header seen, for the tests
        super().__init__()
        self.url = self.base + self.prefix

    # ---------------------------------------------------------------- HTTP Basic, faults

    def dispatch(self, compiled: list, req) -> tuple[int, object, dict]:
        header = req.headers.get("authorization", "")
        with self.lock:
            self.authorizations.append(header)
            fault = next((f for f in self.faults if f[0] == req.method), None)
            if fault:
                self.faults.remove(fault)
        secret = self.password if self.plain_auth else hashlib.sha1(self.password.encode()).hexdigest()
        expected = "Basic " + base64.b64encode(f"{self.user}:{secret}".encode()).decode()
        if header != expected:
            return 401, b"User couldn't be authenticated, aborting call.", dict(TEXT)
        if fault:
            return fault[1], fault[2].encode(), dict(TEXT)
        return super().dispatch(compiled, req)

    def fail_next(self, method: str, status: int, text: str) -> None:
        with self.lock:
            self.faults.append((method, status, text))

    def _href(self, kind: str, ident: object) -> str:
        return f"{self.url}/{kind}/{ident}"

    # ---------------------------------------------------------------- compute

    def _alive(self) -> list[dict]:
        return [v for v in self.vms.values() if v["state"] != "DONE"]

    def _compute(self, vm: dict) -> ET.Element:
        el = ET.Element("COMPUTE", href=self._href("compute", vm["id"]))
        _sub(el, "ID", vm["id"])
        _sub(el, "USER", href=f"{self.url}/user/2", name=self.user)
        _sub(el, "NAME", vm["name"])
        _sub(el, "INSTANCE_TYPE", vm["type"])
        _sub(el, "STATE", vm["state"])
        disk = _sub(el, "DISK", id="0")
        _sub(disk, "STORAGE", href=self._href("storage", vm["image"]), name=IMAGES[vm["image"]][0])
        _sub(disk, "TYPE", "DISK")
        _sub(disk, "TARGET", "hda")
        for i, net in enumerate(vm["networks"]):
            nic = _sub(el, "NIC")
            _sub(nic, "NETWORK", href=self._href("network", net), name=NETWORKS[net][0])
            _sub(nic, "IP", f"{NETWORKS[net][1].rsplit('.', 1)[0]}.{vm['id'] % 250 + i}")
            _sub(nic, "MAC", f"02:00:c0:a8:{net:02x}:{vm['id'] % 250:02x}")
        context = _sub(el, "CONTEXT")
        for key, value in vm["context"].items():
            _sub(context, key, value)
        if vm["state"] == "PENDING":      # the scheduler places it: ACTIVE from the next look on
            vm["state"] = "ACTIVE"
        return el

    def list_computes(self, req):
        out = ET.Element("COMPUTE_COLLECTION")
        for vm in self._alive():
            _sub(out, "COMPUTE", href=self._href("compute", vm["id"]), name=vm["name"])
        return 200, _xml(out), dict(XML)

    def create_compute(self, req):
        try:
            doc = ET.fromstring(req.body)
        except ET.ParseError as e:
            raise Reply(400, f"Error parsing the COMPUTE representation: {e}".encode(), TEXT) from None
        if doc.tag != "COMPUTE":
            raise Reply(400, b"Error parsing the COMPUTE representation: no COMPUTE element", TEXT)
        itype = (doc.findtext("INSTANCE_TYPE") or "").strip()
        if itype not in INSTANCE_TYPES:
            raise Reply(400, f"Bad instance type {itype!r}".encode(), TEXT)
        disks = [d.find("STORAGE") for d in doc.findall("DISK")]
        images = [int(s.get("href", "").rpartition("/storage/")[2] or -1) for s in disks if s is not None]
        if not images:
            raise Reply(400, b"Error parsing the COMPUTE representation: no DISK/STORAGE", TEXT)
        if images[0] not in IMAGES:
            raise Reply(404, f"[VirtualMachineAllocate] Error getting image [{images[0]}].".encode(), TEXT)
        networks = []
        for nic in doc.findall("NIC"):
            net = int((nic.find("NETWORK").get("href") or "").rpartition("/network/")[2] or -1)
            if net not in NETWORKS:
                raise Reply(404, f"[VirtualMachineAllocate] Error getting virtual network [{net}].".encode(), TEXT)
            networks.append(net)
        context_el = doc.find("CONTEXT")
        context = {c.tag: c.text or "" for c in (context_el if context_el is not None else [])}
        if len(self._alive()) >= self.max_vms:
            raise Reply(403, f"[VirtualMachineAllocate] User [2] : user [2] limit of {self.max_vms} reached for "
                             "VMS quota in user.".encode(), TEXT)
        vm_id, self.next_id = self.next_id, self.next_id + 1
        vm = {"id": vm_id, "name": (doc.findtext("NAME") or "").strip() or f"one-{vm_id}", "type": itype,
              "image": images[0], "networks": networks, "context": context, "state": "PENDING"}
        self.vms[vm_id] = vm
        return 201, _xml(self._compute(vm)), dict(XML)

    def show_compute(self, req, vm_id):
        vm = self.vms.get(int(vm_id))
        if vm is None:
            raise Reply(404, f"Error getting virtual machine [{vm_id}].".encode(), TEXT)
        return 200, _xml(self._compute(vm)), dict(XML)

    def delete_compute(self, req, vm_id):
        vm = self.vms.get(int(vm_id))
        if vm is None:
            raise Reply(404, f"Error getting virtual machine [{vm_id}].".encode(), TEXT)
        if vm["state"] == "DONE":
            raise Reply(500, f"[VirtualMachineAction] Wrong state to perform action on VM [{vm_id}].".encode(), TEXT)
        vm["state"] = "DONE"
        return 204, b"", {}

    # ---------------------------------------------------------------- storage, networks, types

    def list_storage(self, req):
        out = ET.Element("STORAGE_COLLECTION")
        for image_id, (name, _, _) in IMAGES.items():
            _sub(out, "STORAGE", href=self._href("storage", image_id), name=name)
        return 200, _xml(out), dict(XML)

    def show_storage(self, req, image_id):
        if int(image_id) not in IMAGES:
            raise Reply(404, f"Error getting image [{image_id}].".encode(), TEXT)
        name, kind, size = IMAGES[int(image_id)]
        el = ET.Element("STORAGE", href=self._href("storage", image_id))
        for tag, value in (("ID", image_id), ("NAME", name), ("TYPE", kind), ("DESCRIPTION", f"{name} image"),
                           ("SIZE", size)):
            _sub(el, tag, value)
        return 200, _xml(el), dict(XML)

    def list_networks(self, req):
        out = ET.Element("NETWORK_COLLECTION")
        for net_id, (name, _, _) in NETWORKS.items():
            _sub(out, "NETWORK", href=self._href("network", net_id), name=name)
        return 200, _xml(out), dict(XML)

    def show_network(self, req, net_id):
        if int(net_id) not in NETWORKS:
            raise Reply(404, f"Error getting virtual network [{net_id}].".encode(), TEXT)
        name, address, size = NETWORKS[int(net_id)]
        el = ET.Element("NETWORK", href=self._href("network", net_id))
        for tag, value in (("ID", net_id), ("NAME", name), ("ADDRESS", address), ("SIZE", size)):
            _sub(el, tag, value)
        if self.api_version >= (3, 0):
            _sub(el, "PUBLIC", "NO")
        return 200, _xml(el), dict(XML)

    def _instance_type(self, name: str) -> ET.Element:
        cpu, memory = INSTANCE_TYPES[name]
        el = ET.Element("INSTANCE_TYPE", href=self._href("instance_type", name), name=name)
        for tag, value in (("NAME", name), ("CPU", cpu), ("VCPU", cpu), ("MEMORY", memory)):
            _sub(el, tag, value)
        return el

    def list_instance_types(self, req):
        if self.api_version < (3, 2):
            raise Reply(404, b"Not found", TEXT)
        out = ET.Element("INSTANCE_TYPE_COLLECTION")
        for name in INSTANCE_TYPES:
            if self.api_version >= (3, 8):    # hrefs and names; each type is read by itself
                _sub(out, "INSTANCE_TYPE", href=self._href("instance_type", name), name=name)
            else:
                out.append(self._instance_type(name))
        return 200, _xml(out), dict(XML)

    def show_instance_type(self, req, name):
        if self.api_version < (3, 2) or name not in INSTANCE_TYPES:
            raise Reply(404, f"Instance type {name} not found".encode(), TEXT)
        return 200, _xml(self._instance_type(name)), dict(XML)

    # ---------------------------------------------------------------- for the tests

    def context(self, vm_id: str) -> dict[str, str]:
        return dict(self.vms[int(vm_id)]["context"])

    def user_data(self, vm_id: str) -> bytes:
        context = self.context(vm_id)
        assert context["USERDATA_ENCODING"] == "base64"
        return base64.b64decode(context["USER_DATA"])

    def tags(self, vm_id: str) -> dict[str, str | None]:
        context = self.context(vm_id)
        return {"vmdirac-deployment": context.get("VMDIRAC_DEPLOYMENT"),
                "vmdirac-instance": context.get("VMDIRAC_INSTANCE")}
