"""The pilot's options, as one frozen typed object, and where its services and credential are.

``dirac-pilot`` fills ``PilotOptions`` from an options file (YAML, the same names) and its
command line; contextualization writes such a file into every VM. ``Connection`` turns the
options into the credential to present and the URLs of each service: either base URLs
(``https://host:port``, each service at ``<base>/<System>/<Service>``, as the embedded server
serves them) or a client settings file (``clientconfig``), whose Configuration server gives the
URLs, falling back to the Configuration server's own host and port.
"""

from __future__ import annotations

import urllib.parse
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from vmdirac.core.client import ClientCredentials, RPCClient, default_proxy_path
from vmdirac.core.clientconfig import load_settings, remote_store
from vmdirac.core.config import ConfigStore, options
from vmdirac.core.exceptions import ConfigurationError, SecurityError
from vmdirac.pilot import resources

DAY = 86400.0


@dataclass(frozen=True)
class PilotOptions:
    """Everything a pilot is told. Zero or empty means "from the machine" or "none"."""

    # Where the services are: base URLs, or a client settings file.
    Servers: tuple[str, ...] = ()
    ClientConfig: str = ""
    # The credential: a proxy file (a user's or a VM's), or a host certificate and key.
    Proxy: str = ""
    Cert: str = ""
    Key: str = ""
    CACertificates: str = ""
    # What the pilot offers the Matcher (DIRAC's resource description).
    Site: str = ""
    Endpoint: str = ""
    Image: str = ""
    Platform: str = ""                   # default: resources.platform_name()
    Tags: tuple[str, ...] = ()
    RequiredTags: tuple[str, ...] = ()
    Slots: int = 0                       # cores offered; 0: every core this process may use
    MaxRAM: int = 0                      # MB; 0: the machine's MemTotal
    TimeLimit: float = 0.0               # seconds this pilot may live; 0: no limit
    InstanceID: str = ""
    PilotReference: str = ""             # default: "pilot-<uuid>"
    # How it behaves.
    WorkDir: str = ""                    # default: ./pilot-<reference>
    MaxEmptyMatches: int = 0             # consecutive empty answers before draining; 0: never
    MatchWait: float = 10.0              # long poll: seconds the Matcher may hold a request; 0: plain polling
    PollingInterval: float = 0.5         # seconds between requests while a slot is free (+-25 % jitter)
    HeartbeatPeriod: float = 60.0        # seconds between heartbeats of a running job
    WatchdogPeriod: float = 5.0          # seconds between CPU/wall checks of a payload
    MaxWallClockTime: float = 3 * DAY    # per job (DIRAC's Watchdog default); also capped by TimeLimit
    KillGrace: float = 5.0               # seconds between SIGTERM and SIGKILL
    StopFile: str = ""                   # when this file exists the pilot drains
    KeepWorkDirs: bool = False           # keep each job's directory (debugging)

    def resolved(self) -> PilotOptions:
        """The options with machine defaults filled in, checked."""
        opts = self
        if not opts.PilotReference:
            opts = replace(opts, PilotReference=f"pilot-{uuid.uuid4().hex[:12]}")
        if not opts.Slots:
            opts = replace(opts, Slots=resources.cores())
        if not opts.MaxRAM:
            opts = replace(opts, MaxRAM=resources.total_ram_mb())
        if not opts.Platform:
            opts = replace(opts, Platform=resources.platform_name())
        if not opts.WorkDir:
            opts = replace(opts, WorkDir=str(Path.cwd() / opts.PilotReference))
        problems = [f"{name} must be positive" for name in ("PollingInterval", "HeartbeatPeriod", "WatchdogPeriod")
                    if getattr(opts, name) <= 0]
        problems += [f"{name} must not be negative" for name in ("Slots", "MaxRAM", "TimeLimit", "MaxEmptyMatches",
                                                                 "MaxWallClockTime", "KillGrace")
                     if getattr(opts, name) < 0]
        if not 0 <= opts.MatchWait <= 30:
            problems.append("MatchWait must be between 0 and 30 seconds (the Matcher's limit)")
        if not opts.Servers and not opts.ClientConfig:
            problems.append("give the server (Servers, --url) or a client settings file (ClientConfig)")
        if bool(opts.Cert) != bool(opts.Key):
            problems.append("a certificate needs its key (Cert and Key)")
        if opts.Proxy and opts.Cert:
            problems.append("give a proxy or a certificate and key, not both")
        for base in opts.Servers:
            parts = urllib.parse.urlsplit(base)
            if parts.scheme != "https" or not parts.hostname:
                problems.append(f"server URL {base!r}: expected https://host:port")
        if problems:
            raise ConfigurationError("pilot options: " + "; ".join(problems))
        return opts


def load_options(path: str | Path | None, overrides: dict) -> PilotOptions:
    """Options from a YAML file (top level, or under ``Pilot:``) updated by ``overrides``."""
    section: dict = {}
    if path:
        from vmdirac.core.config import load_files

        tree = load_files([path])
        section = tree.get("Pilot", tree) if isinstance(tree.get("Pilot"), dict) else tree
    section = {**section, **{k: v for k, v in overrides.items() if v is not None}}
    return options(PilotOptions, section, str(path or "pilot options"))


class Connection:
    """The pilot's credential and the URLs of the services it calls."""

    def __init__(self, opts: PilotOptions, cache_dir: Path | None = None) -> None:
        self.opts = opts
        self._store: ConfigStore | None = None
        self._config_bases: list[str] = []
        settings = load_settings(Path(opts.ClientConfig).expanduser()) if opts.ClientConfig else None
        ca = opts.CACertificates or (settings.CACertificates if settings else "")
        if not ca:
            raise ConfigurationError("pilot options: CACertificates is not set (nor in the client settings)")
        for path in (opts.Proxy, opts.Cert, opts.Key):
            if path and not Path(path).expanduser().is_file():
                raise SecurityError(f"pilot credential {path}: no such file")
        if opts.Cert:
            # A certificate and key are a host's: DIRAC's host clients say so ("hosts").
            self.credentials = ClientCredentials(opts.Cert, opts.Key, ca, use_host=True)
        elif opts.Proxy:
            self.credentials = ClientCredentials(opts.Proxy, None, ca)
        elif settings is not None:
            self.credentials = ClientCredentials(str(default_proxy_path()), None, ca)
        else:
            raise ConfigurationError("pilot options: give a credential (Proxy, or Cert and Key)")
        if settings is not None and not opts.Servers:
            self._store = remote_store(settings, self.credentials, cache_dir)
            self._config_bases = [_base(u) for u in settings.ConfigurationServer]

    def urls(self, service: str) -> list[str]:
        if self.opts.Servers:
            return [f"{b.rstrip('/')}/{service}" for b in self.opts.Servers]
        assert self._store is not None
        try:
            return self._store.current.service_urls(service)
        except ConfigurationError:
            # The embedded server serves every service on the Configuration server's port.
            return [f"{b}/{service}" for b in self._config_bases]

    def client(self, service: str, **kwargs) -> RPCClient:
        return RPCClient(service, self.credentials, urls=self.urls(service), **kwargs)


def _base(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", ""))
