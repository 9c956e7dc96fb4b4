"""A keystone v3 + nova v2.1 fake, written from the public API references
(https://docs.openstack.org/api-ref/identity/v3/, https://docs.openstack.org/api-ref/compute/),
covering what the ``openstack`` driver calls and the errors it must type:

- ``POST /v3/auth/tokens``: password (user name + user domain, project name + project domain)
  and application credentials (id + secret); a wrong secret is 401 as keystone answers it. The
  token (``X-Subject-Token``) carries a catalog with one compute endpoint.
- nova: ``servers`` (create with name, imageRef, flavorRef, user_data, metadata, key_name,
  networks, config_drive; detail list; show; delete), ``flavors/detail``, ``flavors/<id>``,
  ``images/detail``, ``images/<id>``, ``limits``. A request without a valid token is 401.
  Quota: with ``max_instances`` servers alive, a create is ``403 Quota exceeded for instances``
  (nova >= 2.1's answer; ``quota_status = 413`` gives the older ``overLimit`` form). With
  ``no_valid_host`` a new server goes to ERROR with nova's "No valid host was found" fault.
  A server is BUILD when created and ACTIVE from the next read on (what a real boot looks like).
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid

from tests.clouds.jsonserver import FakeServer, Reply, Request

PROJECT_ID = "0123456789abcdef0123456789abcdef"
FLAVORS = [{"id": "1", "name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20},
           {"id": "2", "name": "m1.large", "vcpus": 4, "ram": 8192, "disk": 80}]
IMAGES = [{"id": "7d3c4d2e-3b8a-4bb1-9a4d-1f4f9a3c7e10", "name": "el9-cloud", "status": "ACTIVE"}]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class OpenStackFake(FakeServer):
    routes = [
        ("POST", r"/v3/auth/tokens", "auth_tokens"),
        ("GET", r"/compute/v2\.1/([^/]+)/servers/detail", "list_servers"),
        ("GET", r"/compute/v2\.1/([^/]+)/servers", "list_servers"),
        ("POST", r"/compute/v2\.1/([^/]+)/servers", "create_server"),
        ("GET", r"/compute/v2\.1/([^/]+)/servers/([^/]+)", "show_server"),
        ("DELETE", r"/compute/v2\.1/([^/]+)/servers/([^/]+)", "delete_server"),
        ("GET", r"/compute/v2\.1/([^/]+)/flavors/detail", "list_flavors"),
        ("GET", r"/compute/v2\.1/([^/]+)/flavors/([^/]+)", "show_flavor"),
        ("GET", r"/compute/v2\.1/([^/]+)/images/detail", "list_images"),
        ("GET", r"/compute/v2\.1/([^/]+)/images/([^/]+)", "show_image"),
        ("GET", r"/compute/v2\.1/([^/]+)/limits", "limits"),
    ]

    def __init__(self, user: str = "vmdirac", password: str = "os-test-password", project: str = "vmdirac-prj",
                 app_cred: tuple[str, str] = ("appcred-id-1", "appcred-secret-1"), max_instances: int = 100) -> None:
        self.user, self.password, self.project, self.app_cred = user, password, project, app_cred
        self.max_instances = max_instances
        self.quota_status = 403
        self.no_valid_host = False
        self.issued: set[str] = set()
        self.servers: dict[str, dict] = {}
        self.user_data_of: dict[str, bytes] = {}
        super().__init__()

    # ---------------------------------------------------------------- keystone v3

    def auth_tokens(self, req: Request):
        ident = req.json().get("auth", {}).get("identity", {})
        methods = ident.get("methods", [])
        ok = False
        if "password" in methods:
            u = ident.get("password", {}).get("user", {})
            ok = u.get("name") == self.user and u.get("password") == self.password
        elif "application_credential" in methods:
            ac = ident.get("application_credential", {})
            ok = (ac.get("id"), ac.get("secret")) == self.app_cred
        if not ok:
            raise Reply(401, {"error": {"code": 401, "title": "Unauthorized",
                                        "message": "The request you have made requires authentication."}})
        token = uuid.uuid4().hex
        self.issued.add(token)
        expires = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        catalog = [{"type": "compute", "name": "nova", "id": "c1", "endpoints": [
            {"id": "e1", "interface": "public", "region": "RegionOne", "region_id": "RegionOne",
             "url": f"{self.base}/compute/v2.1/{PROJECT_ID}"}]}]
        body = {"token": {"methods": methods, "expires_at": expires, "issued_at": _now(),
                          "user": {"id": "u1", "name": self.user, "domain": {"id": "default", "name": "Default"}},
                          "project": {"id": PROJECT_ID, "name": self.project, "domain": {"id": "default"}},
                          "roles": [{"id": "r1", "name": "member"}], "catalog": catalog}}
        return 201, body, {"X-Subject-Token": token}

    def _authorized(self, req: Request) -> None:
        if req.headers.get("x-auth-token") not in self.issued:
            raise Reply(401, {"error": {"code": 401, "title": "Unauthorized",
                                        "message": "The request you have made requires authentication."}})

    # ---------------------------------------------------------------- nova

    def _server_json(self, s: dict) -> dict:
        return {**s, "links": [{"rel": "self", "href": f"{self.base}/compute/v2.1/{PROJECT_ID}/servers/{s['id']}"}]}

    def _advance(self, s: dict) -> None:
        if s["status"] == "BUILD":
            if self.no_valid_host:
                s.update(status="ERROR", fault={"code": 500, "message": "No valid host was found. "})
            else:
                s.update(status="ACTIVE", addresses={"private": [{"version": 4, "addr": "10.0.0.%d" % (len(self.servers) + 2)}]})

    def list_servers(self, req: Request, project: str):
        self._authorized(req)
        alive = [s for s in self.servers.values() if s["status"] != "DELETED"]
        for s in alive:
            self._advance(s)
        return 200, {"servers": [self._server_json(s) for s in alive]}

    def create_server(self, req: Request, project: str):
        self._authorized(req)
        spec = req.json().get("server", {})
        alive = [s for s in self.servers.values() if s["status"] != "DELETED"]
        if len(alive) >= self.max_instances:
            message = (f"Quota exceeded for instances: Requested 1, but already used {len(alive)} of "
                       f"{self.max_instances} instances")
            if self.quota_status == 413:
                raise Reply(413, {"overLimit": {"code": 413, "message": message}}, {"Retry-After": "0"})
            raise Reply(403, {"forbidden": {"code": 403, "message": message}})
        if spec.get("flavorRef") not in {f["id"] for f in FLAVORS}:
            raise Reply(400, {"badRequest": {"code": 400, "message": f"Flavor {spec.get('flavorRef')} could not be found."}})
        if spec.get("imageRef") not in {i["id"] for i in IMAGES}:
            raise Reply(400, {"badRequest": {"code": 400, "message": f"Image {spec.get('imageRef')} could not be found."}})
        sid = str(uuid.uuid4())
        server = {"id": sid, "name": spec.get("name"), "status": "BUILD", "addresses": {}, "hostId": "h1",
                  "tenant_id": PROJECT_ID, "user_id": "u1", "metadata": dict(spec.get("metadata") or {}),
                  "created": _now(), "updated": _now(), "key_name": spec.get("key_name"),
                  "flavor": {"id": spec["flavorRef"]}, "image": {"id": spec["imageRef"]},
                  "config_drive": "True" if spec.get("config_drive") else "", "accessIPv4": "", "accessIPv6": "",
                  "networks_requested": spec.get("networks")}
        self.servers[sid] = server
        self.user_data_of[sid] = base64.b64decode(spec["user_data"]) if spec.get("user_data") else b""
        return 202, {"server": {"id": sid, "links": self._server_json(server)["links"], "adminPass": "x"}}

    def show_server(self, req: Request, project: str, sid: str):
        self._authorized(req)
        s = self.servers.get(sid)
        if s is None or s["status"] == "DELETED":
            raise Reply(404, {"itemNotFound": {"code": 404, "message": f"Instance {sid} could not be found."}})
        self._advance(s)
        return 200, {"server": self._server_json(s)}

    def delete_server(self, req: Request, project: str, sid: str):
        self._authorized(req)
        s = self.servers.get(sid)
        if s is None or s["status"] == "DELETED":
            raise Reply(404, {"itemNotFound": {"code": 404, "message": f"Instance {sid} could not be found."}})
        s["status"] = "DELETED"
        return 204, b""

    def list_flavors(self, req: Request, project: str):
        self._authorized(req)
        return 200, {"flavors": [{**f, "links": [], "swap": "", "OS-FLV-EXT-DATA:ephemeral": 0, "rxtx_factor": 1.0,
                                  "os-flavor-access:is_public": True} for f in FLAVORS]}

    def show_flavor(self, req: Request, project: str, fid: str):
        self._authorized(req)
        for f in FLAVORS:
            if f["id"] == fid:
                return 200, {"flavor": {**f, "links": [], "swap": "", "OS-FLV-EXT-DATA:ephemeral": 0,
                                        "rxtx_factor": 1.0}}
        raise Reply(404, {"itemNotFound": {"code": 404, "message": f"Flavor {fid} could not be found."}})

    def _image_json(self, i: dict) -> dict:
        return {**i, "links": [], "metadata": {}, "progress": 100, "minDisk": 0, "minRam": 0,
                "created": "2024-01-01T00:00:00Z", "updated": "2024-01-01T00:00:00Z"}

    def list_images(self, req: Request, project: str):
        self._authorized(req)
        return 200, {"images": [self._image_json(i) for i in IMAGES]}

    def show_image(self, req: Request, project: str, iid: str):
        self._authorized(req)
        for i in IMAGES:
            if i["id"] == iid:
                return 200, {"image": self._image_json(i)}
        raise Reply(404, {"itemNotFound": {"code": 404, "message": f"Image {iid} could not be found."}})

    def limits(self, req: Request, project: str):
        self._authorized(req)
        alive = [s for s in self.servers.values() if s["status"] != "DELETED"]
        return 200, {"limits": {"rate": [], "absolute": {
            "maxTotalInstances": self.max_instances, "totalInstancesUsed": len(alive),
            "maxTotalCores": 20 * self.max_instances, "totalCoresUsed": len(alive)}}}

    # ---------------------------------------------------------------- for the tests

    def user_data(self, vm_id: str) -> bytes:
        return self.user_data_of[vm_id]

    def tags(self, vm_id: str) -> dict[str, str]:
        return dict(self.servers[vm_id]["metadata"])
