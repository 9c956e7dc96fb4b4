"""moto's EC2 server on loopback, behind a repairing proxy, for the ``ec2`` driver's tests.

moto (``ThreadedMotoServer``) emulates EC2 well enough for libcloud once two things are repaired
on the way, here in test code and not in the driver (real EC2 needs neither):

1. **XML namespace.** moto answers ``xmlns="http://ec2.amazonaws.com/doc/2016-11-15"``, without the
   trailing slash EC2 itself sends; libcloud looks elements up in
   ``http://ec2.amazonaws.com/doc/2016-11-15/`` and so finds no instance at all in moto's answers.
   The proxy adds the slash to every ``ec2.amazonaws.com/doc/<version>`` namespace.
2. **Tag numbering.** libcloud's ``ex_create_tags``/``ex_delete_tags`` number their parameters from
   0 (``ResourceId.0``, ``Tag.0.Key``), while EC2's query protocol (and moto's parser) numbers from
   1, so moto drops the first tag. The proxy renumbers those top-level lists from 1.
   (``TagSpecification.1.Tag.N`` at RunInstances, which the driver uses, is already 1-based.)

It also injects the replies moto never gives, for the error tests: ``reject_key`` answers every
request signed with that access key with EC2's ``AuthFailure`` (HTTP 401); ``fail_next`` answers
the next N calls of an action with a given EC2 error code (``InstanceLimitExceeded``,
``InsufficientInstanceCapacity``, ...), in EC2's error XML. ``received`` gives the parameters of
the requests moto was given, for what moto does not keep: it marks an instance booted with
``InstanceMarketOptions`` as ``spot`` but drops ``SpotOptions.MaxPrice`` and records no spot
instance request (moto 5.2).
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit

from tests.clouds.proxy import LoopbackProxy
from tests.waiting import free_port

NAMESPACE = re.compile(rb'xmlns="(http://ec2\.amazonaws\.com/doc/[0-9-]+)"')
ZERO_BASED = re.compile(r"^(ResourceId|Tag)\.(\d+)(\..*)?$")
KEY, SECRET = "AKIDVMDIRACTEST00001", "moto-test-secret-key-0001"


def renumber(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Top-level ``ResourceId.N`` / ``Tag.N.*`` lists that start at 0, shifted to start at 1."""
    starts = {m.group(1) for k, _ in pairs if (m := ZERO_BASED.match(k)) and m.group(2) == "0"}
    out = []
    for k, v in pairs:
        m = ZERO_BASED.match(k)
        if m and m.group(1) in starts:
            k = f"{m.group(1)}.{int(m.group(2)) + 1}{m.group(3) or ''}"
        out.append((k, v))
    return out


def error_xml(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>").encode()


class MotoEC2:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.moto_port = free_port()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.moto_port, verbose=False)
        self.moto.start()
        self.moto_url = f"http://127.0.0.1:{self.moto_port}"
        self.rejected: set[str] = set()
        self.faults: dict[str, list[tuple[int, str, str]]] = {}
        self.calls: list[str] = []                 # actions seen, in order
        self.requests: list[dict[str, str]] = []   # the parameters of each request moto was given
        self.lock = threading.Lock()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)   # one line per request otherwise
        self.proxy = LoopbackProxy(self.moto_url, self._request, self._response)
        self.url = self.proxy.url
        self.ec2 = self._boto()
        self.ami = self.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]

    def _boto(self):
        import boto3

        return boto3.client("ec2", region_name="us-east-1", endpoint_url=self.moto_url,
                            aws_access_key_id=KEY, aws_secret_access_key=SECRET)

    # ---------------------------------------------------------------- fault injection

    def reject_key(self, access_key: str) -> None:
        self.rejected.add(access_key)

    def fail_next(self, action: str, code: str, message: str, times: int = 1, status: int = 400) -> None:
        with self.lock:
            self.faults.setdefault(action, []).extend([(status, code, message)] * times)

    # ---------------------------------------------------------------- what the emulator holds

    def instances(self, deployment: str | None = None) -> list[dict]:
        filters = [{"Name": "tag:vmdirac-deployment", "Values": [deployment]}] if deployment else []
        pages = self.ec2.describe_instances(Filters=filters)["Reservations"]
        return [i for r in pages for i in r["Instances"]]

    def state(self, vm_id: str) -> str:
        return self.ec2.describe_instances(InstanceIds=[vm_id])["Reservations"][0]["Instances"][0]["State"]["Name"]

    def user_data(self, vm_id: str) -> bytes:
        import base64

        attr = self.ec2.describe_instance_attribute(InstanceId=vm_id, Attribute="userData")
        return base64.b64decode(attr["UserData"]["Value"])

    def tags(self, vm_id: str) -> dict[str, str]:
        inst = self.ec2.describe_instances(InstanceIds=[vm_id])["Reservations"][0]["Instances"][0]
        return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}

    def received(self, action: str) -> list[dict[str, str]]:
        """The parameters of every ``action`` request moto was given (after the repairs)."""
        return [r for r in self.requests if r.get("Action") == action]

    def instance(self, vm_id: str) -> dict:
        return self.ec2.describe_instances(InstanceIds=[vm_id])["Reservations"][0]["Instances"][0]

    def set_running(self, vm_id: str) -> None:
        """moto starts instances as running already; nothing to do (kept for the contract)."""

    # ---------------------------------------------------------------- the proxy's hooks

    def _request(self, method: str, path: str, headers: dict, body: bytes):
        split = urlsplit(path)
        query = parse_qsl(split.query, keep_blank_values=True)
        form = parse_qsl(body.decode(), keep_blank_values=True) if body else []
        params = dict(query + form)
        action = params.get("Action", "")
        self.calls.append(action)
        auth = headers.get("Authorization", "")
        key = re.search(r"Credential=([^/]+)/", auth)
        if (key and key.group(1) in self.rejected) or params.get("AWSAccessKeyId") in self.rejected:
            return 401, {"Content-Type": "text/xml"}, error_xml(
                "AuthFailure", "AWS was not able to validate the provided access credentials")
        with self.lock:
            queue = self.faults.get(action)
            fault = queue.pop(0) if queue else None
        if fault:
            status, code, message = fault
            return status, {"Content-Type": "text/xml"}, error_xml(code, message)
        if query:
            path = split.path + "?" + urlencode(renumber(query))
        if form:
            body = urlencode(renumber(form)).encode()
        self.requests.append(dict(renumber(query) + renumber(form)))
        return method, path, headers, body

    def _response(self, method: str, path: str, request_body: bytes, status: int, headers: dict, body: bytes) -> bytes:
        return NAMESPACE.sub(lambda m: b'xmlns="' + m.group(1) + b'/"', body)

    def stop(self) -> None:
        self.proxy.stop()
        self.moto.stop()
