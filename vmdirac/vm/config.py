"""Clouds, images and running pods, as the configuration tree describes them (typed).

- ``Resources/Sites/<Site>/Cloud/<Endpoint>``: one cloud endpoint: its driver ``Type`` (local,
  ec2, openstack, cloudstack, opennebula), caps and priority, driver options (URL, credentials
  by reference), and ``Images/<Image>``: the endpoint's image id, flavor, cores, RAM, tags, price.
- ``Operations/Defaults/VirtualMachines/RunningPods/<Pod>``: what to run: an image on some
  endpoints, for the jobs of a VO, with an allocation policy (Elastic or Static) and a stop
  policy (Elastic or Never), as VMDIRAC's RunningPods.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmdirac.core.config import Snapshot, options
from vmdirac.core.exceptions import ConfigurationError
from vmdirac.wms.matching import ResourceDescription

PODS_PATH = "Operations/Defaults/VirtualMachines/RunningPods"


@dataclass(frozen=True)
class ImageOptions:
    ImageID: str = ""            # the endpoint's name or id of the image (AMI, glance id, template)
    Flavor: str = ""             # instance type / flavor / service offering
    Cores: int = 1
    RAM: int = 2048              # MB
    Disk: int = 0                # GB
    Platform: str = ""
    Tags: tuple[str, ...] = ()
    CostPerHour: float = 0.0
    Context: str = "cloudinit"   # cloudinit | ssh | adhoc
    Python: str = ""             # the image's interpreter for the VM Monitor ("" = dirac-vm-monitor on PATH)
    # Context ssh: how the scheduler logs in to contextualize a plain image.
    SSHUser: str = "root"
    SSHPort: int = 22
    SSHKeyFile: str = ""
    SSHKnownHosts: str = ""      # pin host keys here; "" = not checked (a new VM's key is unknown)
    SSHRemoteRoot: str = ""      # install under this directory ({vm_id} and {state_dir} expand)


@dataclass(frozen=True)
class EndpointOptions:
    Type: str = "local"
    MaxInstances: int = 10
    Priority: int = 1            # higher first
    URL: str = ""
    Region: str = ""
    CredentialsFile: str = ""    # a YAML/INI file with the secrets; never inline
    CredentialsEnv: str = ""     # or the name of an environment variable prefix
    KeyName: str = ""
    Network: str = ""
    SecurityGroups: tuple[str, ...] = ()
    Zone: str = ""
    MaxAllowedPrice: float = 0.0   # EC2 spot: 0 = on demand
    Images: dict = field(default_factory=dict)
    Driver: dict = field(default_factory=dict)   # extra driver-specific options


@dataclass(frozen=True)
class Endpoint:
    name: str                    # "<Site>/<Endpoint>", unique
    site: str
    options: EndpointOptions
    images: dict[str, ImageOptions]

    def image(self, name: str) -> ImageOptions:
        try:
            return self.images[name]
        except KeyError:
            raise ConfigurationError(f"endpoint {self.name} has no image {name}") from None


@dataclass(frozen=True)
class PodOptions:
    Image: str = ""
    Endpoints: tuple[str, ...] = ()      # "<Site>/<Endpoint>"
    PilotGroup: str = "dirac_pilot"      # group of the VMs' credentials; its VO is the pod's VO
    Policy: str = "Elastic"              # Elastic | Static
    StaticInstances: int = 0
    CPUPerInstance: float = 0.0          # seconds of waiting job CPU per VM; 0 = one VM per need
    MaxInstances: int = 10
    MaxBootsPerCycle: int = 5
    Tags: tuple[str, ...] = ()           # what the pod's VMs offer beyond the image's tags
    RequiredTags: tuple[str, ...] = ()
    StopPolicy: str = "Elastic"          # Elastic | Never
    HaltPeriod: float = 600.0            # VMDIRAC's defaults
    MinWorkingLoad: float = 0.01
    HeartBeatPeriod: float = 300.0
    LoadAverageTimespan: float = 60.0
    MaxLifetime: float = 0.0             # seconds; 0 = unlimited
    JobSlots: int = 0                    # pilot slots; 0 = the image's cores
    PilotOptions: dict = field(default_factory=dict)    # extra options of the pilot in the VMs
    MonitorOptions: dict = field(default_factory=dict)  # extra options of the VM Monitor
    Enabled: bool = True


@dataclass(frozen=True)
class Pod:
    name: str
    options: PodOptions
    vo: str                              # the VO of its PilotGroup


def endpoints(snapshot: Snapshot) -> dict[str, Endpoint]:
    out = {}
    for site, section in (snapshot.get("Resources/Sites") or {}).items():
        for name, opts in ((section or {}).get("Cloud") or {}).items():
            where = f"Resources/Sites/{site}/Cloud/{name}"
            ep = options(EndpointOptions, opts, where)
            images = {img: options(ImageOptions, o, f"{where}/Images/{img}") for img, o in ep.Images.items()}
            out[f"{site}/{name}"] = Endpoint(f"{site}/{name}", site, ep, images)
    return out


def pods(snapshot: Snapshot) -> dict[str, Pod]:
    out = {}
    known = endpoints(snapshot)
    for name, section in (snapshot.get(PODS_PATH) or {}).items():
        opts = options(PodOptions, section, f"{PODS_PATH}/{name}")
        if opts.Policy not in ("Elastic", "Static") or opts.StopPolicy not in ("Elastic", "Never"):
            raise ConfigurationError(f"{PODS_PATH}/{name}: Policy is Elastic or Static, StopPolicy Elastic or Never")
        if opts.PilotGroup not in snapshot.registry.groups:
            raise ConfigurationError(f"{PODS_PATH}/{name}: PilotGroup {opts.PilotGroup} is not a Registry group")
        for ep in opts.Endpoints:
            if ep not in known:
                raise ConfigurationError(f"{PODS_PATH}/{name}: unknown endpoint {ep} (Resources/Sites/<Site>/Cloud/<Endpoint>)")
            known[ep].image(opts.Image)
        out[name] = Pod(name, opts, snapshot.registry.groups[opts.PilotGroup].vo)
    return out


def pod_resource(pod: Pod, endpoint: Endpoint) -> ResourceDescription:
    """What a VM of this pod on this endpoint offers to the Matcher."""
    image = endpoint.image(pod.options.Image)
    slots = pod.options.JobSlots or image.Cores
    return ResourceDescription(site=endpoint.site, endpoint=endpoint.name, image=pod.options.Image,
                               platform=image.Platform, tags=tuple(image.Tags) + tuple(pod.options.Tags),
                               required_tags=tuple(pod.options.RequiredTags), cores=slots,
                               max_ram_mb=image.RAM, vo=pod.vo)
