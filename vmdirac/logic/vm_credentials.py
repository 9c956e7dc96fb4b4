"""Per-VM credentials: a short-lived proxy of the server's pilot identity bound to one instance.

The pilot identity is the server's host certificate (``Local/HostCert`` and ``HostKey``, by
default under ``<root>/etc/grid-security``), a Registry host with GenericPilot (and VmRpcOperation).
A VM's credential is an RFC 3820 proxy of it whose first proxy CN is ``instance-<id>``
(``core.auth.instance_cn``) and which carries the pod's PilotGroup: the server then sees the
instance (``Caller.instance_id``), the VO of that group, and only the VM properties. Sub-proxies
the VM makes keep that first CN, so a VM cannot pose as another. Nothing long-lived or shared
is ever given to a VM: a credential lasts ``CredentialHours`` (default 24 h) and the VM renews
it with itself (``VirtualMachineManager.renewInstanceCredential``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from vmdirac.core.auth import instance_cn
from vmdirac.core.config import Snapshot
from vmdirac.core.exceptions import ConfigurationError
from vmdirac.core.x509 import Credential, chain_info, load_certificates, make_proxy, proxy_pem

VM_OPERATIONS = "Operations/Defaults/VirtualMachines"
DEFAULT_HOURS = 24.0
MAX_HOURS = 24.0 * 7


def credential_hours(snapshot: Snapshot) -> float:
    """``Operations/Defaults/VirtualMachines/CredentialHours``: lifetime of a VM's credential."""
    value = snapshot.get(f"{VM_OPERATIONS}/CredentialHours", DEFAULT_HOURS)
    try:
        hours = float(value)
    except (TypeError, ValueError):
        hours = -1.0
    if not 0 < hours <= MAX_HOURS:
        raise ConfigurationError(f"{VM_OPERATIONS}/CredentialHours: {value!r} is not a number of hours "
                                 f"between 0 and {MAX_HOURS:.0f}")
    return hours


def pilot_identity(context: Any) -> Credential:
    """The server's pilot identity: its host certificate and key (``Local``, or their defaults)."""
    local, security = context.local, Path(context.paths.security)
    return Credential.from_files(local.HostCert or security / "hostcert.pem",
                                 local.HostKey or security / "hostkey.pem")


def instance_proxy(identity: Credential, instance_id: int, pilot_group: str, hours: float,
                   bits: int = 2048) -> bytes:
    """A proxy PEM of ``identity`` for instance ``instance_id`` in ``pilot_group``."""
    if instance_id <= 0:
        raise ValueError(f"instance ids are positive, not {instance_id}")
    _proxy, key, chain = make_proxy(identity.chain, identity.key, hours, group=pilot_group,
                                    cn=instance_cn(instance_id), bits=bits)
    return proxy_pem(chain, key)


def issue_credential(context: Any, instance_id: int, pilot_group: str, hours: float = DEFAULT_HOURS) -> bytes:
    """A fresh credential (proxy PEM: certificate, key, chain) for the VM of ``instance_id``."""
    return instance_proxy(pilot_identity(context), instance_id, pilot_group, hours)


def credential_expiry(pem: bytes) -> dt.datetime:
    """When a credential PEM stops being valid (UTC)."""
    return chain_info(load_certificates(pem, "VM credential")).not_after
