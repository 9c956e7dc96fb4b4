"""What the cloud drivers share: credentials by reference, errors mapped to our typed ones,
libcloud's node states mapped to ours, and a base class for the libcloud-backed drivers.

Credentials are never inline in the configuration: ``CredentialsFile`` names a YAML mapping,
``CredentialsEnv`` a prefix of environment variables (``CredentialsEnv: CERN_OS`` reads
``CERN_OS_USERNAME``, ``CERN_OS_PASSWORD``, ...). Keys are lower-cased (``access_key``,
``secret_key``, ``username``, ``password``, ``application_credential_id``, ...). The values
appear in no log line, repr or exception message: every message that leaves a driver goes
through ``Credentials.scrub``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import ParseResult, urlparse

import yaml

from vmdirac.drivers.base import (
    DEPLOYMENT_TAG, INSTANCE_TAG, AuthError, BadConfiguration, BootRequest, CapacityError, CheckResult, Driver,
    DriverError, ImageCheck, Node, NodeNotFound, NodeState, QuotaError, TransientError,
)
from vmdirac.vm.config import Endpoint

log = logging.getLogger(__name__)
T = TypeVar("T")


class Credentials(Mapping[str, str]):
    """Secrets of one endpoint, read from a file or the environment; repr shows keys only."""

    def __init__(self, values: Mapping[str, Any], source: str) -> None:
        self._values = {str(k).lower(): str(v) for k, v in values.items() if v is not None}
        self.source = source

    @classmethod
    def load(cls, endpoint: Endpoint) -> "Credentials":
        opts = endpoint.options
        if opts.CredentialsFile:
            path = Path(os.path.expanduser(opts.CredentialsFile))
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError) as e:
                # The file's contents are secrets: name the file and the error class, not the text.
                raise BadConfiguration(f"endpoint {endpoint.name}: cannot read CredentialsFile {path}: "
                                       f"{type(e).__name__}") from None
            if not isinstance(data, dict):
                raise BadConfiguration(f"endpoint {endpoint.name}: CredentialsFile {path} is not a mapping")
            return cls(data, str(path))
        if opts.CredentialsEnv:
            prefix = opts.CredentialsEnv.rstrip("_") + "_"
            return cls({k[len(prefix):]: v for k, v in os.environ.items() if k.startswith(prefix)},
                       f"${prefix}*")
        return cls({}, "none")

    def require(self, endpoint: str, *keys: str) -> tuple[str, ...]:
        missing = [k for k in keys if not self._values.get(k)]
        if missing:
            raise BadConfiguration(f"endpoint {endpoint}: credentials ({self.source}) lack {', '.join(missing)}")
        return tuple(self._values[k] for k in keys)

    def scrub(self, text: str) -> str:
        """``text`` with every secret value replaced (longest first, so no part of one survives)."""
        for value in sorted(self._values.values(), key=len, reverse=True):
            if len(value) >= 4:
                text = text.replace(value, "***")
        return text

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Credentials({self.source}: {', '.join(sorted(self._values))})"


# libcloud's vocabulary (libcloud.compute.types.NodeState values) -> ours.
LIBCLOUD_STATE_MAP = {
    "running": NodeState.RUNNING,
    "pending": NodeState.PENDING,
    "starting": NodeState.PENDING,
    "rebooting": NodeState.RUNNING,
    "reconfiguring": NodeState.RUNNING,
    "migrating": NodeState.RUNNING,
    "stopping": NodeState.STOPPING,
    "stopped": NodeState.STOPPED,
    "suspended": NodeState.STOPPED,
    "paused": NodeState.STOPPED,
    "terminated": NodeState.TERMINATED,
    "error": NodeState.ERROR,
    "unknown": NodeState.UNKNOWN,
}

QUOTA_WORDS = ("quota", "limit exceeded", "limitexceeded", "exceeds", "maximum number of", "overlimit")
CAPACITY_WORDS = ("no valid host", "insufficient", "capacity")
AUTH_WORDS = ("not authorized", "unauthorized", "authentication", "authfailure", "invalid credentials")


def classify_http(code: int | None, message: str) -> type[DriverError] | None:
    """The usual meaning of an HTTP status from a cloud API (None: look elsewhere)."""
    text = message.lower()
    if code == 401:
        return AuthError
    if code == 413 or (code == 403 and any(w in text for w in QUOTA_WORDS)):
        return QuotaError           # nova: 413 OverLimit, 403 "Quota exceeded for instances"
    if code == 403:
        return AuthError
    if code == 404:
        return NodeNotFound
    if code in (408, 409, 429) or (code is not None and code >= 500):
        return TransientError
    if code == 400:
        return BadConfiguration
    return None


def classify_text(message: str) -> type[DriverError] | None:
    text = message.lower()
    if any(w in text for w in QUOTA_WORDS):
        return QuotaError
    if any(w in text for w in CAPACITY_WORDS):
        return CapacityError
    if any(w in text for w in AUTH_WORDS):
        return AuthError
    return None


def map_error(e: BaseException, what: str, creds: Credentials,
              specific: Callable[[BaseException, str], type[DriverError] | None] = lambda e, m: None) -> DriverError:
    """One of our typed errors for any exception libcloud (or an API client) raised.
    ``specific`` (the driver's own codes) is asked first; the message is scrubbed of secrets."""
    from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
    from libcloud.common.types import InvalidCredsError, MalformedResponseError, ProviderError

    if isinstance(e, DriverError):
        return e
    message = creds.scrub(str(getattr(e, "value", None) or e) or type(e).__name__)
    cls = specific(e, message)
    if cls is None:
        if isinstance(e, InvalidCredsError):
            cls = AuthError
        elif isinstance(e, RateLimitReachedError):
            cls = TransientError
        elif isinstance(e, (BaseHTTPError, ProviderError)):
            code = getattr(e, "code", None) or getattr(e, "http_code", None)
            cls = classify_http(int(code) if code else None, message) or classify_text(message) or TransientError
        elif isinstance(e, MalformedResponseError):
            cls = TransientError
        elif isinstance(e, (socket.timeout, TimeoutError, ConnectionError, OSError)):
            cls = TransientError        # requests' errors are OSErrors too
        else:
            cls = classify_text(message) or DriverError
    return cls(f"{what}: {message}")


class LibcloudDriver(Driver):
    """Shared behaviour of the libcloud-backed drivers.

    libcloud driver objects are not thread-safe: ``conn`` is one per thread (``_connect`` makes
    it). Subclasses implement ``_connect``, ``_create``, ``_find`` (our VM by instance name),
    ``_get`` (by id, None when gone), ``_ours`` (every VM with our deployment tag), ``_destroy``,
    and for ``check``: ``_lookup_image`` and ``_lookup_flavor``."""

    type_name = "cloud"

    def __init__(self, endpoint: Endpoint, deployment: str, state_dir: Path) -> None:
        super().__init__(endpoint, deployment, Path(state_dir))
        self.creds = Credentials.load(endpoint)
        self.extra: dict[str, Any] = dict(endpoint.options.Driver or {})
        self._local = threading.local()

    @property
    def conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.call("connect", self._connect)
            self._local.conn = conn
        return conn

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` with every error turned into a typed, secret-free one."""
        try:
            return fn(*args, **kwargs)
        except DriverError:
            raise
        except Exception as e:  # libcloud raises bare Exception too (CloudStack async jobs)
            err = map_error(e, f"{self.type_name} {self.endpoint.name}: {what}", self.creds, self._classify)
            log.debug("%s", err)
            raise err from None   # no chained traceback: it may quote a request with secrets

    def _classify(self, e: BaseException, message: str) -> type[DriverError] | None:
        return None

    # ------------------------------------------------------------ the standard API

    def boot(self, request: BootRequest) -> Node:
        found = self.call("find", self._find, request.instance_name)
        if found is not None and found.state not in (NodeState.TERMINATED,):
            log.info("boot of %s: already VM %s at %s", request.instance_name, found.vm_id, self.endpoint.name)
            return found
        tags = {**request.tags, DEPLOYMENT_TAG: self.deployment, INSTANCE_TAG: request.instance_name}
        node = self.call("boot", self._create, request, tags)
        log.info("booted %s as %s VM %s at %s", request.instance_name, self.type_name, node.vm_id, self.endpoint.name)
        return node

    def status(self, vm_id: str) -> Node:
        node = self.call("status", self._get, vm_id)
        if node is None:
            raise NodeNotFound(f"{self.endpoint.name}: VM {vm_id} does not exist", vm_id=vm_id)
        return node

    def terminate(self, vm_id: str) -> None:
        try:
            self.call("terminate", self._destroy, vm_id)
        except NodeNotFound:
            return
        log.info("terminated %s VM %s at %s", self.type_name, vm_id, self.endpoint.name)

    def list_nodes(self) -> list[Node]:
        return alive_ours(self.call("list", self._ours), self.deployment)

    def check(self) -> CheckResult:
        try:
            self.call("authenticate", self._authenticate)
        except DriverError as e:
            return CheckResult(False, f"{type(e).__name__}: {e.message}")
        checks = []
        for name, img in sorted(self.endpoint.images.items()):
            reasons, image_ok, flavor_ok = [], False, False
            try:
                image_ok = bool(self.call("image", self._lookup_image, img.ImageID))
            except DriverError as e:
                reasons.append(e.message)
            if not image_ok and not reasons:
                reasons.append(f"image {img.ImageID!r} not found")
            try:
                flavor_ok = bool(self.call("flavor", self._lookup_flavor, img.Flavor))
            except DriverError as e:
                reasons.append(e.message)
            if not flavor_ok and len(reasons) < 2:
                reasons.append(f"flavor {img.Flavor!r} not found")
            checks.append(ImageCheck(name, img.ImageID, image_ok, img.Flavor, flavor_ok, "; ".join(reasons)))
        return CheckResult(True, "", tuple(checks))

    # ------------------------------------------------------------ for subclasses

    def _authenticate(self) -> None:
        self._ours()

    def _connect(self) -> Any:
        raise NotImplementedError

    def _create(self, request: BootRequest, tags: dict[str, str]) -> Node:
        raise NotImplementedError

    def _find(self, name: str) -> Node | None:
        return next((n for n in self._ours() if n.tags.get(INSTANCE_TAG) == name
                     and n.tags.get(DEPLOYMENT_TAG) == self.deployment), None)

    def _get(self, vm_id: str) -> Node | None:
        raise NotImplementedError

    def _ours(self) -> list[Node]:
        raise NotImplementedError

    def _destroy(self, vm_id: str) -> None:
        raise NotImplementedError

    def _lookup_image(self, image_id: str) -> Any:
        raise NotImplementedError

    def _lookup_flavor(self, flavor: str) -> Any:
        raise NotImplementedError


def libcloud_node(node: Any, tags: Mapping[str, str], state_map: Mapping[Any, NodeState] = LIBCLOUD_STATE_MAP) -> Node:
    """Our ``Node`` for a libcloud ``Node`` and the tags/metadata its provider keeps."""
    state = state_map.get(str(node.state).lower(), NodeState.UNKNOWN)
    return Node(vm_id=str(node.id), name=str(node.name or ""), state=state,
                public_ips=tuple(ip for ip in (node.public_ips or []) if ip),
                private_ips=tuple(ip for ip in (node.private_ips or []) if ip),
                tags={str(k): str(v) for k, v in (tags or {}).items()})


def alive_ours(nodes: list[Node], deployment: str) -> list[Node]:
    """The VMs of ``nodes`` tagged with ``deployment`` that neither are gone nor unknown."""
    return [n for n in nodes if n.tags.get(DEPLOYMENT_TAG) == deployment
            and n.state not in (NodeState.TERMINATED, NodeState.UNKNOWN)]


def http_url(endpoint: str, url: str, form: str) -> tuple[ParseResult, bool, int]:
    """``url`` parsed, whether it is https, and its port (the scheme's by default);
    BadConfiguration ``endpoint <endpoint>: <form>`` unless it is http(s)://host..."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise BadConfiguration(f"endpoint {endpoint}: {form}")
    secure = parsed.scheme == "https"
    return parsed, secure, parsed.port or (443 if secure else 80)


def or_none(lookup: Callable[[str], T], ref: str) -> T | None:
    """``lookup(ref)``, or None where it says BadConfiguration (no such image or flavor)."""
    try:
        return lookup(ref)
    except BadConfiguration:
        return None


class Ref:
    """What libcloud needs of an object it only refers to by id (a subnet, a network)."""

    def __init__(self, id: str) -> None:
        self.id = id


def split_list(value: Any) -> list[str]:
    """A configuration value that is one string, a comma-separated string, or a list."""
    if not value:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]
