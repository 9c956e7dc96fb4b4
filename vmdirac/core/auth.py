"""From a verified certificate chain to a ``Caller``: time limits, Registry, group, delegation."""

from __future__ import annotations

import datetime as dt
from typing import Any

from vmdirac.core.config import Registry
from vmdirac.core.exceptions import NotAuthenticated
from vmdirac.core.export import Caller
from vmdirac.core.x509 import ChainInfo

TRUSTED_HOST = "TrustedHost"
# A per-VM credential is a proxy of the pilot identity (a host of the Registry) whose first
# proxy CN is "instance-<id>"; it keeps only these of the host's properties, and the VO of the
# group it carries. Sub-proxies keep the first proxy's CN, so a VM cannot pose as another.
INSTANCE_CN_PREFIX = "instance-"
VM_PROPERTIES = frozenset({"GenericPilot", "VmRpcOperation"})


def instance_cn(instance_id: int) -> str:
    return f"{INSTANCE_CN_PREFIX}{instance_id}"


def _instance_of(info: ChainInfo) -> int | None:
    cn = info.delegation_cn
    if info.proxy_depth and cn.startswith(INSTANCE_CN_PREFIX) and cn[len(INSTANCE_CN_PREFIX):].isdigit():
        return int(cn[len(INSTANCE_CN_PREFIX):])
    return None


def _check_times(info: ChainInfo, now: dt.datetime) -> None:
    if now < info.not_before:
        raise NotAuthenticated(f"credential {info.subject} is not valid before "
                               f"{info.not_before:%Y-%m-%d %H:%M:%S} UTC")
    if now > info.not_after:
        raise NotAuthenticated(f"credential {info.subject} expired at {info.not_after:%Y-%m-%d %H:%M:%S} UTC")


def user_caller(registry: Registry, dn: str, group: str | None, info: ChainInfo | None = None) -> Caller:
    user = registry.users_by_dn.get(dn)
    if user is None:
        return Caller(dn=dn, credential_dn=info.subject if info else dn,
                      last_cn=info.last_cn if info else "")
    group = group or registry.default_group_of(user)
    if not group:
        raise NotAuthenticated(f"{user.name} belongs to no group")
    if group not in user.groups:
        raise NotAuthenticated(f"{user.name} ({dn}) is not a member of group {group}")
    g = registry.groups[group]
    return Caller(dn=dn, username=user.name, group=group, vo=g.vo, properties=g.properties,
                  registered=True, credential_dn=info.subject if info else dn,
                  last_cn=info.last_cn if info else "")


def identify(info: ChainInfo | None, registry: Registry, extra_credentials: Any = None,
             now: dt.datetime | None = None) -> Caller:
    """The caller behind a verified chain; ``NotAuthenticated`` when it cannot be trusted now.

    ``extra_credentials`` is DIRAC's: ``"hosts"`` for a host acting as itself, or ``[DN, group]``
    when a TrustedHost (the web portal) acts for a user.
    """
    if info is None:
        raise NotAuthenticated("no client certificate: call with a certificate or proxy")
    _check_times(info, now or dt.datetime.now(dt.timezone.utc))
    host = registry.hosts_by_dn.get(info.identity)
    instance = _instance_of(info)
    if host is not None and instance is not None:
        group = registry.groups.get(info.group or "")
        if group is None:
            raise NotAuthenticated(f"instance {instance}: its credential names no known group")
        return Caller(dn=info.identity, username=host.name, group=group.name, vo=group.vo,
                      properties=host.properties & VM_PROPERTIES, is_host=True, registered=True,
                      credential_dn=info.subject, last_cn=info.last_cn, instance_id=instance)
    if host is not None:
        if isinstance(extra_credentials, list) and len(extra_credentials) == 2:
            if TRUSTED_HOST not in host.properties:
                raise NotAuthenticated(f"host {host.name} is not a TrustedHost: it cannot act for a user")
            dn, group = extra_credentials
            if not isinstance(dn, str) or not isinstance(group, str):
                raise NotAuthenticated("extraCredentials must be [DN, group]")
            return user_caller(registry, dn, group)
        return Caller(dn=info.identity, username=host.name, properties=host.properties,
                      is_host=True, registered=True, credential_dn=info.subject, last_cn=info.last_cn)
    return user_caller(registry, info.identity, info.group, info)
