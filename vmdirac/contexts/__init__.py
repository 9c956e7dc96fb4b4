"""What a VM is told at boot (``VMContext``), and the files and start script that carry it.

Every way of contextualizing a VM (cloud-init user data, SSH for plain images, ad-hoc images)
installs the same things:

- ``/etc/vmdirac/vm-proxy.pem`` (0600): the VM's own short-lived credential;
- ``/etc/vmdirac/ca.pem``: the CA certificates the VM trusts (so it trusts our server);
- ``/etc/vmdirac/vmdirac-vm.yaml``: the VM configuration: instance, service URLs, stop policy,
  pilot options (read by ``dirac-vm-monitor``, see ``vmdirac.agents.vm_monitor``);
- a start script that starts ``dirac-vm-monitor --config /etc/vmdirac/vmdirac-vm.yaml`` in the
  background; the monitor declares the VM running and starts ``dirac-pilot`` as its child (one
  process owns the pilot, so it can count its jobs, drain it and halt the VM when it is done).

Paths are paths inside the VM. The local cloud runs a VM in a directory of this machine: it
exports ``VMDIRAC_VM_ROOT`` and every absolute VM path is read under it (``vm_path``).
"""

from __future__ import annotations

import shlex
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmdirac.core.config import dump_yaml
from vmdirac.core.exceptions import ConfigurationError
from vmdirac.vm.config import Endpoint, Pod

CONFIG_PATH = "/etc/vmdirac/vmdirac-vm.yaml"
CREDENTIAL_PATH = "/etc/vmdirac/vm-proxy.pem"
CA_PATH = "/etc/vmdirac/ca.pem"
LOG_DIR = "/var/log/vmdirac"
MONITOR_LOG = f"{LOG_DIR}/vm-monitor.log"
ROOT_ENV = "VMDIRAC_VM_ROOT"

# The services a VM calls: the monitor the VirtualMachineManager, the pilot the others.
MANAGER = "WorkloadManagement/VirtualMachineManager"
PILOT_SERVICES = ("WorkloadManagement/Matcher", "WorkloadManagement/JobStateUpdate",
                  "WorkloadManagement/SandboxStore")
CONFIGURATION = "Configuration/Server"


@dataclass(frozen=True)
class VMContext:
    """Everything one VM is told at boot. ``urls``: ``System/Service`` -> its URLs."""

    instance_id: int
    instance_name: str
    pod: str
    site: str
    endpoint: str
    image: str
    vo: str
    urls: dict[str, list[str]]
    credential_pem: bytes
    ca_pem: bytes
    stop_policy: str = "Elastic"
    halt_period: float = 600.0
    min_working_load: float = 0.01
    heartbeat_period: float = 300.0
    load_average_timespan: float = 60.0
    job_slots: int = 0                        # 0: every core of the VM
    extra_tags: tuple[str, ...] = ()          # tags the VM offers (the image's and the pod's)
    work_dir_hint: str = "/var/lib/vmdirac"   # where the monitor and pilot keep their files
    python: str = ""                          # local cloud: the interpreter to run the monitor with
    required_tags: tuple[str, ...] = ()
    platform: str = ""
    max_ram: int = 0                          # MB; 0: the VM's MemTotal
    machine_features: str = "/etc/machinefeatures"   # HEPiX machine features ($MACHINEFEATURES wins)
    pilot_options: dict[str, Any] = field(default_factory=dict)    # extra PilotOptions (MatchWait, ...)
    monitor_options: dict[str, Any] = field(default_factory=dict)  # extra MonitorOptions (Tick, ...)

    def check(self) -> None:
        problems = []
        if self.stop_policy not in ("Elastic", "Never"):
            problems.append(f"stop policy {self.stop_policy!r} (Elastic or Never)")
        if not self.urls.get(MANAGER):
            problems.append(f"no URL for {MANAGER}")
        if not self.credential_pem or b"PRIVATE KEY" not in self.credential_pem:
            problems.append("the credential PEM holds no private key")
        if b"BEGIN CERTIFICATE" not in self.ca_pem:
            problems.append("no CA certificate")
        if problems:
            raise ConfigurationError(f"VM context of instance {self.instance_id}: " + "; ".join(problems))


@dataclass(frozen=True)
class VMFile:
    path: str        # absolute, inside the VM
    content: bytes
    mode: int = 0o644


def vm_path(path: str | Path, root: str | Path | None) -> Path:
    """A VM path on this machine: under ``root`` (the local cloud's VM root) when one is given."""
    path = Path(path)
    if not root or not path.is_absolute():
        return path
    return Path(root) / path.relative_to("/")


def server_bases(urls: dict[str, list[str]]) -> list[str]:
    """``https://host:port`` bases serving every service the pilot calls as ``<base>/<System>/<Service>``
    (the embedded server's layout), or ``[]`` when the services are spread otherwise."""
    bases: list[str] | None = None
    for service in PILOT_SERVICES:
        found = []
        for url in urls.get(service, []):
            parts = urllib.parse.urlsplit(url)
            if parts.path.strip("/") != service:
                return []
            found.append(f"{parts.scheme}://{parts.netloc}")
        if not found or (bases is not None and sorted(found) != sorted(bases)):
            return []
        bases = found
    return bases or []


def pilot_section(ctx: VMContext) -> dict[str, Any]:
    """The pilot's options (``PilotOptions`` names); paths and the stop file are the monitor's."""
    section: dict[str, Any] = {"Site": ctx.site, "Endpoint": ctx.endpoint, "Image": ctx.image,
                               "InstanceID": str(ctx.instance_id)}
    bases = server_bases(ctx.urls)
    if bases:
        section["Servers"] = bases
    elif not ctx.urls.get(CONFIGURATION):
        raise ConfigurationError(f"VM context of instance {ctx.instance_id}: the pilot's services are not all on "
                                 f"one server and there is no {CONFIGURATION} URL to find them")
    for name, value in (("Slots", ctx.job_slots), ("Tags", list(ctx.extra_tags)),
                        ("RequiredTags", list(ctx.required_tags)), ("Platform", ctx.platform),
                        ("MaxRAM", ctx.max_ram)):
        if value:
            section[name] = value
    section.update(ctx.pilot_options)
    return section


def vm_config(ctx: VMContext, start_pilot: bool = True) -> dict[str, Any]:
    """The VM configuration file's tree (read by ``vmdirac.agents.vm_monitor.load_vm_config``)."""
    monitor: dict[str, Any] = {
        "StopPolicy": ctx.stop_policy, "HaltPeriod": ctx.halt_period, "MinWorkingLoad": ctx.min_working_load,
        "HeartBeatPeriod": ctx.heartbeat_period, "LoadAverageTimespan": ctx.load_average_timespan,
        "WorkDir": ctx.work_dir_hint, "MachineFeatures": ctx.machine_features, "StartPilot": start_pilot,
    }
    monitor.update(ctx.monitor_options)
    tree: dict[str, Any] = {
        "Instance": {"ID": ctx.instance_id, "Name": ctx.instance_name, "Pod": ctx.pod, "Site": ctx.site,
                     "Endpoint": ctx.endpoint, "Image": ctx.image, "VO": ctx.vo},
        "Services": {name: list(urls) for name, urls in sorted(ctx.urls.items())},
        "Credential": CREDENTIAL_PATH,
        "CACertificates": CA_PATH,
        "Monitor": monitor,
    }
    if start_pilot:
        tree["Pilot"] = pilot_section(ctx)
    return tree


def vm_files(ctx: VMContext, start_pilot: bool = True) -> list[VMFile]:
    ctx.check()
    header = "# vmdirac VM configuration, written at contextualization; read by dirac-vm-monitor\n"
    return [
        VMFile(CREDENTIAL_PATH, ctx.credential_pem, 0o600),
        VMFile(CA_PATH, ctx.ca_pem, 0o644),
        VMFile(CONFIG_PATH, (header + dump_yaml(vm_config(ctx, start_pilot))).encode(), 0o644),
    ]


def monitor_command(ctx: VMContext) -> str:
    """How the start script runs the monitor: the local cloud's interpreter, or the installed command."""
    if ctx.python:
        return f"{shlex.quote(ctx.python)} -m vmdirac.cli.vm_monitor"
    return "dirac-vm-monitor"


def start_script(ctx: VMContext) -> str:
    """The shell script run once at boot: starts the monitor in the background and returns.

    No ``setsid``: on the local cloud the monitor must stay in the VM's process group.
    """
    return f"""#!/bin/sh
# vmdirac: start the VM Monitor of instance {ctx.instance_id} ({ctx.instance_name}); it declares the
# VM running, starts the pilot, heartbeats, and halts the VM when the stop policy says so.
R="${{{ROOT_ENV}:-}}"
mkdir -p "$R{LOG_DIR}" "$R{ctx.work_dir_hint}"
nohup {monitor_command(ctx)} --config "$R{CONFIG_PATH}" >>"$R{MONITOR_LOG}" 2>&1 </dev/null &
echo "vmdirac: VM Monitor started (pid $!), log $R{MONITOR_LOG}"
"""


def make_context(instance_id: int, instance_name: str, pod: Pod, endpoint: Endpoint, urls: dict[str, list[str]],
                 credential_pem: bytes, ca_pem: bytes, python: str = "", **extra: Any) -> VMContext:
    """The context of one VM of ``pod`` on ``endpoint``, from their configuration (what the
    scheduler calls). ``python``: the local cloud's interpreter (``sys.executable``)."""
    opts, image = pod.options, endpoint.image(pod.options.Image)
    tags = tuple(dict.fromkeys((*image.Tags, *opts.Tags)))
    return VMContext(
        instance_id=instance_id, instance_name=instance_name, pod=pod.name, site=endpoint.site,
        endpoint=endpoint.name, image=opts.Image, vo=pod.vo, urls=urls, credential_pem=credential_pem,
        ca_pem=ca_pem, stop_policy=opts.StopPolicy, halt_period=opts.HaltPeriod,
        min_working_load=opts.MinWorkingLoad, heartbeat_period=opts.HeartBeatPeriod,
        load_average_timespan=opts.LoadAverageTimespan, job_slots=opts.JobSlots or image.Cores,
        extra_tags=tags, required_tags=tuple(opts.RequiredTags), platform=image.Platform, max_ram=image.RAM,
        python=python, **extra)


def boot_user_data(ctx: VMContext, context: str = "cloudinit") -> bytes:
    """The user data to boot with, by the image's ``Context``: ``cloudinit`` (credential,
    configuration, monitor and pilot), ``adhoc`` (the monitor only), ``ssh`` (none: the files
    come later over SSH, see ``contexts.ssh``)."""
    if context == "cloudinit":
        from vmdirac.contexts.cloudinit import build_user_data

        return build_user_data(ctx)
    if context == "adhoc":
        from vmdirac.contexts.adhoc import build_adhoc_user_data

        return build_adhoc_user_data(ctx)
    if context == "ssh":
        ctx.check()
        return b""
    raise ConfigurationError(f"image Context {context!r}: cloudinit, adhoc or ssh")
