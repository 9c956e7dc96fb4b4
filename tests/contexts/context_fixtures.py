"""VM contexts for tests: realistic ones (a proxy chain, redundant servers) and local ones."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vmdirac.contexts import MANAGER, PILOT_SERVICES, VMContext

SERVICES = ("Configuration/Server", *PILOT_SERVICES, MANAGER)


def urls_for(*bases: str) -> dict[str, list[str]]:
    return {service: [f"{base}/{service}" for base in bases] for service in SERVICES}


def realistic_context(pki, **changes: Any) -> VMContext:
    """What a production VM gets: a two-level proxy, two servers for every service, tags."""
    values: dict[str, Any] = dict(
        instance_id=123456, instance_name="vm-CLOUD.Example.org-pod-gpu-000123456", pod="pod-gpu",
        site="CLOUD.Example.org", endpoint="CLOUD.Example.org/openstack-1", image="el9-worker-2024.06",
        vo="vmdirac", urls=urls_for("https://dirac-1.example.org:9135", "https://dirac-2.example.org:9135"),
        credential_pem=Path(pki.path("alice-proxy2")).read_bytes(),
        ca_pem=(Path(pki.ca_dir) / "ca.pem").read_bytes(),
        stop_policy="Elastic", halt_period=600.0, min_working_load=0.01, heartbeat_period=300.0,
        load_average_timespan=60.0, job_slots=8, extra_tags=("GPU", "cvmfs", "MultiProcessor"),
        required_tags=("GPU",), platform="x86_64-el9", max_ram=32000,
    )
    values.update(changes)
    return VMContext(**values)


def local_context(pki, server_port: int, credential: str = "alice-proxy", **changes: Any) -> VMContext:
    """A context for a VM of the local cloud talking to a test server on loopback."""
    values: dict[str, Any] = dict(
        instance_id=7, instance_name="vm-local-7", pod="local-pod", site="LCG.Test.ch", endpoint="LCG.Test.ch/local",
        image="local-image", vo="vmdirac", urls=urls_for(f"https://localhost:{server_port}"),
        credential_pem=Path(pki.path(credential)).read_bytes(),
        ca_pem=(Path(pki.ca_dir) / "ca.pem").read_bytes(), python=sys.executable,
    )
    values.update(changes)
    return VMContext(**values)
