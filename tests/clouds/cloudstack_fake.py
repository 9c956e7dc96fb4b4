"""An Apache CloudStack API fake, written from the API reference
(https://cloudstack.apache.org/api/apidocs-4.18/) and its signing guide, covering what the
``cloudstack`` driver calls: listZones, listTemplates, listServiceOfferings,
deployVirtualMachine (async), queryAsyncJobResult, listVirtualMachines (by id, name, tags),
createTags (async), destroyVirtualMachine (async), listResourceLimits.

Every request must carry ``apiKey`` and a valid ``signature`` (HMAC-SHA1 of the sorted,
lower-cased query string with the secret key, base64): a wrong one is CloudStack's 401
"unable to verify user credentials and/or request signature". With ``max_instances`` VMs
alive, deployVirtualMachine answers 535 "Maximum number of resources of type 'user_vm' for
account ... has been exceeded" (what CloudStack 4.x answers); with ``no_capacity`` the async job
fails with 533's "Unable to create a deployment for VM" text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import uuid
from urllib.parse import quote

from tests.clouds.jsonserver import FakeServer, Reply, Request

ZONES = [{"id": "z-1", "name": "zone1", "networktype": "Advanced"}]
TEMPLATES = [{"id": "t-el9", "name": "el9-template", "ostypename": "Other Linux", "isready": True}]
OFFERINGS = [{"id": "so-1", "name": "Small Instance", "cpunumber": 1, "cpuspeed": 1000, "memory": 2048},
             {"id": "so-2", "name": "Large Instance", "cpunumber": 4, "cpuspeed": 2000, "memory": 8192}]


def signature(params: dict[str, str], secret: str) -> str:
    pairs = sorted((k.lower(), v) for k, v in params.items())
    text = "&".join(f"{quote(str(k), safe='[]')}={quote(str(v), safe='[]*')}" for k, v in pairs)
    text = text.lower().replace("+", "%20")
    return base64.b64encode(hmac.new(secret.encode(), text.encode(), hashlib.sha1).digest()).decode()


class CloudStackFake(FakeServer):
    routes = [("GET", r"/client/api", "api"), ("POST", r"/client/api", "api")]

    def __init__(self, api_key: str = "cs-api-key-1", secret_key: str = "cs-secret-key-1", max_instances: int = 100) -> None:
        self.api_key, self.secret_key, self.max_instances = api_key, secret_key, max_instances
        self.no_capacity = False
        self.vms: dict[str, dict] = {}
        self.user_data_of: dict[str, bytes] = {}
        self.jobs: dict[str, dict] = {}
        self.ips = itertools.count(10)
        super().__init__()
        self.url = f"{self.base}/client/api"

    def api(self, req: Request):
        params = dict(req.query)
        command = params.get("command", "")
        given = params.pop("signature", "")
        if params.get("apiKey") != self.api_key or not hmac.compare_digest(given, signature(params, self.secret_key)):
            raise Reply(401, {f"{command.lower()}response": {
                "errorcode": 401, "errortext": "unable to verify user credentials and/or request signature"}})
        handler = getattr(self, f"c_{command}", None)
        if handler is None:
            raise Reply(432, {"errorresponse": {"errorcode": 432, "errortext": f"The given command:{command} does not exist"}})
        return 200, {f"{command.lower()}response": handler(params)}

    def _error(self, command: str, code: int, text: str) -> Reply:
        return Reply(code, {f"{command.lower()}response": {"uuidList": [], "errorcode": code, "cserrorcode": 4350,
                                                          "errortext": text}})

    def _job(self, result: dict | None, error: tuple[int, str] | None = None) -> str:
        job = uuid.uuid4().hex
        self.jobs[job] = ({"jobstatus": 2, "jobresultcode": 530, "jobresult": {"errorcode": error[0], "errortext": error[1]}}
                          if error else {"jobstatus": 1, "jobresultcode": 0, "jobresult": result})
        return job

    def _alive(self) -> list[dict]:
        return [v for v in self.vms.values() if v["state"] not in ("Destroyed", "Expunging")]

    # ---------------------------------------------------------------- commands

    def c_listZones(self, p):
        return {"count": len(ZONES), "zone": ZONES}

    def c_listTemplates(self, p):
        return {"count": len(TEMPLATES), "template": TEMPLATES}

    def c_listServiceOfferings(self, p):
        return {"count": len(OFFERINGS), "serviceoffering": OFFERINGS}

    def c_listResourceLimits(self, p):
        return {"count": 2, "resourcelimit": [{"resourcetype": "0", "max": self.max_instances},
                                              {"resourcetype": "8", "max": 4 * self.max_instances}]}

    def c_deployVirtualMachine(self, p):
        if len(self._alive()) >= self.max_instances:
            raise self._error("deployVirtualMachine", 535, "Maximum number of resources of type 'user_vm' for account "
                              "name=vmdirac in domain id=1 has been exceeded.")
        if p.get("templateid") not in {t["id"] for t in TEMPLATES}:
            raise self._error("deployVirtualMachine", 431, f"Unable to execute API command deployvirtualmachine due to "
                              f"invalid value. Invalid parameter templateid value={p.get('templateid')}")
        if p.get("serviceofferingid") not in {o["id"] for o in OFFERINGS}:
            raise self._error("deployVirtualMachine", 431, "Invalid parameter serviceofferingid")
        vm_id = str(uuid.uuid4())
        if self.no_capacity:
            return {"id": vm_id, "jobid": self._job(None, (533, "Unable to create a deployment for VM[User|i-2-"
                                                              f"{vm_id[:4]}-VM]: Insufficient capacity"))}
        offering = next(o for o in OFFERINGS if o["id"] == p["serviceofferingid"])
        vm = {"id": vm_id, "name": p.get("name") or vm_id, "displayname": p.get("displayname", ""),
              "state": "Running" if str(p.get("startvm", "true")).lower() != "false" else "Stopped",
              "zoneid": p.get("zoneid"), "templateid": p["templateid"], "serviceofferingid": offering["id"],
              "cpunumber": offering["cpunumber"], "memory": offering["memory"], "keypair": p.get("keypair"),
              "nic": [{"id": uuid.uuid4().hex, "ipaddress": f"10.1.1.{next(self.ips)}", "isdefault": True,
                       "networkid": (p.get("networkids") or "net-default").split(",")[0]}],
              "tags": []}
        self.vms[vm_id] = vm
        self.user_data_of[vm_id] = base64.b64decode(p.get("userdata", "")) if p.get("userdata") else b""
        return {"id": vm_id, "jobid": self._job({"virtualmachine": vm})}

    def c_queryAsyncJobResult(self, p):
        job = self.jobs.get(p.get("jobid", ""))
        if job is None:
            raise self._error("queryAsyncJobResult", 431, "Unable to find job")
        return {"jobid": p["jobid"], **job}

    def c_listVirtualMachines(self, p):
        vms = list(self.vms.values())
        if "id" in p:
            vms = [v for v in vms if v["id"] == p["id"]]
        if "name" in p:
            vms = [v for v in vms if v["name"] == p["name"]]
        if "tags[0].key" in p:
            want = (p["tags[0].key"], p.get("tags[0].value"))
            vms = [v for v in vms if any((t["key"], t["value"]) == want for t in v["tags"])]
        vms = [v for v in vms if v["state"] != "Expunging"]
        return {"count": len(vms), "virtualmachine": vms} if vms else {}

    def c_createTags(self, p):
        ids = p.get("resourceids", "").split(",")
        i = 0
        while f"tags[{i}].key" in p:
            for vm_id in ids:
                if vm_id in self.vms:
                    self.vms[vm_id]["tags"].append({"key": p[f"tags[{i}].key"], "value": p[f"tags[{i}].value"],
                                                    "resourcetype": "UserVm", "resourceid": vm_id})
            i += 1
        return {"jobid": self._job({"success": True})}

    def c_destroyVirtualMachine(self, p):
        vm = self.vms.get(p.get("id", ""))
        if vm is None:
            raise self._error("destroyVirtualMachine", 431, f"Unable to find virtual machine by id {p.get('id')}")
        vm["state"] = "Destroyed"
        return {"id": vm["id"], "jobid": self._job({"virtualmachine": vm})}

    # ---------------------------------------------------------------- for the tests

    def user_data(self, vm_id: str) -> bytes:
        return self.user_data_of[vm_id]

    def tags(self, vm_id: str) -> dict[str, str]:
        return {t["key"]: t["value"] for t in self.vms[vm_id]["tags"]}
