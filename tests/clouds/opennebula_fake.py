"""An OpenNebula XML-RPC fake, written from the XML-RPC API reference of OpenNebula 6
(https://docs.opennebula.io/6.8/integration_and_development/system_interfaces/api.html), covering
what the ``opennebula`` driver calls: one.vm.allocate, one.template.instantiate, one.vm.info,
one.vm.action (terminate-hard), one.vmpool.info, one.user.info, one.image.info,
one.imagepool.info, one.template.info. Answers are OpenNebula's ``[ok, value|message, code]``
arrays with its XML documents; a wrong session is AUTHENTICATION (0x100), a VM over the user's
VMS quota is refused with AUTHORIZATION (0x200) and OpenNebula's quota text, a missing object is
NO_EXISTS (0x400). A new VM is PENDING, and ACTIVE/RUNNING from the next look on.
"""

from __future__ import annotations

import base64
import re
import threading
from socketserver import ThreadingMixIn
from xml.sax.saxutils import escape
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

AUTHENTICATION, AUTHORIZATION, NO_EXISTS, ACTION = 0x100, 0x200, 0x400, 0x800
IMAGES = {7: "el9-one"}
TEMPLATES = {3: 'NAME="el9-small"\nCPU=1\nVCPU=1\nMEMORY=2048\nDISK=[IMAGE_ID="7"]'}


class _Server(ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True


class _Quiet(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/RPC2",)

    def log_message(self, *args) -> None:
        pass


def parse_template(text: str) -> dict:
    """OpenNebula's template syntax, enough for ours: KEY="v" or KEY=v, and KEY=[A="x", B="y"]."""
    out: dict = {}
    pattern = re.compile(r'(\w+)\s*=\s*(\[(?:[^\]"]|"(?:[^"\\]|\\.)*")*\]|"(?:[^"\\]|\\.)*"|[^\s\n]+)', re.S)
    for key, value in pattern.findall(text):
        if value.startswith("["):
            inner = {k: _unquote(v) for k, v in re.findall(r'(\w+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\]\s]+)', value[1:-1])}
            out.setdefault(key, []).append(inner)
        else:
            out[key] = _unquote(value)
    return out


def _unquote(v: str) -> str:
    if v.startswith('"'):
        v = v[1:-1]
    return re.sub(r"\\(.)", r"\1", v)


class OpenNebulaFake:
    def __init__(self, user: str = "oneadmin", password: str = "one-test-password", max_vms: int = 100) -> None:
        self.session = f"{user}:{password}"
        self.max_vms = max_vms
        self.vms: dict[int, dict] = {}
        self.next_id = 100
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), requestHandler=_Quiet, allow_none=False, logRequests=False)
        for name in ("one.vm.allocate", "one.template.instantiate", "one.vm.info", "one.vm.action",
                     "one.vmpool.info", "one.user.info", "one.image.info", "one.imagepool.info", "one.template.info"):
            self.server.register_function(self._guarded(getattr(self, name.replace(".", "_"))), name)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/RPC2"
        threading.Thread(target=self.server.serve_forever, name="opennebula-fake", daemon=True).start()

    def _guarded(self, fn):
        def call(session, *args):
            if session != self.session:
                return [False, f"[{fn.__name__.replace('_', '.')}] User couldn't be authenticated, aborting call.",
                        AUTHENTICATION]
            with self.lock:
                return fn(*args)
        return call

    def _alive(self) -> list[dict]:
        return [v for v in self.vms.values() if v["state"] != 6]

    def _new_vm(self, template: dict, name: str | None = None) -> list:
        if len(self._alive()) >= self.max_vms:
            return [False, f"[one.vm.allocate] User [2] : user [2] limit of {self.max_vms} reached for VMS quota "
                           "in user.", AUTHORIZATION]
        vm_id = self.next_id
        self.next_id += 1
        self.vms[vm_id] = {"id": vm_id, "name": name or template.get("NAME", f"one-{vm_id}"), "template": template,
                           "state": 1, "lcm": 0, "ip": f"192.168.150.{vm_id % 250}"}
        return [True, vm_id, 0]

    def one_vm_allocate(self, template: str, hold: bool):
        return self._new_vm(parse_template(template))

    def one_template_instantiate(self, template_id: int, name: str, hold: bool, extra: str):
        if template_id not in TEMPLATES:
            return [False, f"[one.template.instantiate] Error getting template [{template_id}].", NO_EXISTS]
        merged = {**parse_template(TEMPLATES[template_id]), **parse_template(extra)}
        return self._new_vm(merged, name)

    def _xml(self, vm: dict) -> str:
        shown = dict(vm)
        if vm["state"] == 1:          # the scheduler places it: running from the next look on
            vm["state"], vm["lcm"] = 3, 3
        vm = shown
        t = vm["template"]
        context = (t.get("CONTEXT") or [{}])[0]
        user_attrs = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in t.items()
                             if isinstance(v, str) and k.startswith("VMDIRAC_"))
        ctx = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in context.items())
        return (f"<VM><ID>{vm['id']}</ID><UID>2</UID><NAME>{escape(vm['name'])}</NAME><STATE>{vm['state']}</STATE>"
                f"<LCM_STATE>{vm['lcm']}</LCM_STATE><TEMPLATE><CONTEXT>{ctx}</CONTEXT>"
                f"<NIC><IP>{vm['ip']}</IP></NIC></TEMPLATE><USER_TEMPLATE>{user_attrs}</USER_TEMPLATE></VM>")

    def one_vm_info(self, vm_id: int, decrypt: bool = False):
        vm = self.vms.get(vm_id)
        if vm is None:
            return [False, f"[one.vm.info] Error getting virtual machine [{vm_id}].", NO_EXISTS]
        return [True, self._xml(vm), 0]

    def one_vm_action(self, action: str, vm_id: int):
        vm = self.vms.get(vm_id)
        if vm is None:
            return [False, f"[one.vm.action] Error getting virtual machine [{vm_id}].", NO_EXISTS]
        if action not in ("terminate", "terminate-hard"):
            return [False, f"[one.vm.action] Wrong action {action}", ACTION]
        vm["state"], vm["lcm"] = 6, 0
        return [True, vm_id, 0]

    def one_vmpool_info(self, who: int, start: int, end: int, state: int = -1):
        vms = [v for v in self.vms.values() if state == -2 or v["state"] != 6]
        return [True, "<VM_POOL>" + "".join(self._xml(v) for v in vms) + "</VM_POOL>", 0]

    def one_user_info(self, user_id: int):
        return [True, f"<USER><ID>2</ID><NAME>oneadmin</NAME><VM_QUOTA><VM><VMS>{self.max_vms}</VMS>"
                      f"<VMS_USED>{len(self._alive())}</VMS_USED><CPU>-2</CPU><CPU_USED>{len(self._alive())}</CPU_USED>"
                      "</VM></VM_QUOTA></USER>", 0]

    def one_image_info(self, image_id: int, decrypt: bool = False):
        if image_id not in IMAGES:
            return [False, f"[one.image.info] Error getting image [{image_id}].", NO_EXISTS]
        return [True, f"<IMAGE><ID>{image_id}</ID><NAME>{IMAGES[image_id]}</NAME></IMAGE>", 0]

    def one_imagepool_info(self, who: int, start: int, end: int):
        return [True, "<IMAGE_POOL>" + "".join(f"<IMAGE><ID>{i}</ID><NAME>{n}</NAME></IMAGE>"
                                                for i, n in IMAGES.items()) + "</IMAGE_POOL>", 0]

    def one_template_info(self, template_id: int, extended: bool = False, decrypt: bool = False):
        if template_id not in TEMPLATES:
            return [False, f"[one.template.info] Error getting template [{template_id}].", NO_EXISTS]
        return [True, f"<VMTEMPLATE><ID>{template_id}</ID></VMTEMPLATE>", 0]

    # ---------------------------------------------------------------- for the tests

    def user_data(self, vm_id: str) -> bytes:
        context = self.vms[int(vm_id)]["template"]["CONTEXT"][0]
        assert context["USERDATA_ENCODING"] == "base64"
        return base64.b64decode(context["USER_DATA"])

    def tags(self, vm_id: str) -> dict[str, str]:
        t = self.vms[int(vm_id)]["template"]
        return {"vmdirac-deployment": t.get("VMDIRAC_DEPLOYMENT"), "vmdirac-instance": t.get("VMDIRAC_INSTANCE")}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
