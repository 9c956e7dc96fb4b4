"""Start services and agents: what ``vmdirac-server``, ``dirac-service`` and ``dirac-agent`` run.

The server reads its YAML files (``--config``, plus ``<root>/etc/local.yaml`` written by
``dirac-cert-init``), imports the served part into ConfigDB when the files changed, and from then
on follows the newest version in the DB, so several processes on one MySQL agree.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from vmdirac import components
from vmdirac.core.agent import Agent
from vmdirac.core.client import ClientCredentials
from vmdirac.core.config import (
    LOCAL_SECTION, ConfigStore, content_hash, dump_yaml, get_path, load_files, options, parse_yaml,
    served_part,
)
from vmdirac.core.db import make_engine
from vmdirac.core.exceptions import ConfigurationError
from vmdirac.core.export import Service
from vmdirac.core.notify import Notifier
from vmdirac.core.server import RPCServer
from vmdirac.core.tls import server_context
from vmdirac.db.config_db import ConfigDB

log = logging.getLogger(__name__)


def default_root() -> Path:
    return Path(os.environ.get("VMDIRAC_ROOT") or Path.home() / ".vmdirac").expanduser()


@dataclass(frozen=True)
class LocalOptions:
    """The ``Local`` section: this host's own settings, never served to others."""

    DatabaseURL: str = ""          # default: SQLite file <root>/db/vmdirac.sqlite
    Host: str = ""                 # address to listen on ("" = all)
    Port: int = 8443
    HostCert: str = ""             # default: <root>/etc/grid-security/hostcert.pem
    HostKey: str = ""
    CACertificates: str = ""       # default: <root>/etc/grid-security/certificates
    LogLevel: str = "INFO"
    LogFile: str = ""
    MaxWorkers: int = 32
    MaxBodyBytes: int = 16 * 1024 * 1024
    WebPort: int = -1              # vmdirac-server's web portal port (0: any free port, -1: none)
    WebSessionHours: float = 12.0  # how long a portal session lasts
    WebLoginMinutes: float = 5.0   # how long a dirac-web-login link may be used (once)


@dataclass
class Paths:
    root: Path

    @property
    def security(self) -> Path:
        return self.root / "etc" / "grid-security"

    @property
    def ca_dir(self) -> Path:
        return self.security / "certificates"

    @property
    def local_config(self) -> Path:
        return self.root / "etc" / "local.yaml"

    @property
    def db_dir(self) -> Path:
        return self.root / "db"


@dataclass
class Context:
    """What every component of one process shares."""

    config: ConfigStore
    engine: Engine
    local: LocalOptions
    paths: Paths
    host_credentials: ClientCredentials
    notifier: Notifier = field(default_factory=Notifier)
    stopping: bool = False


def read_local(files: list[Path], root: Path) -> tuple[dict, LocalOptions, Paths]:
    paths = Paths(root)
    found = [f for f in files] + ([paths.local_config] if paths.local_config.exists() else [])
    if not found:
        raise ConfigurationError("no configuration file: give --config FILE (see etc/vmdirac.yaml)")
    tree = load_files(found)
    local = options(LocalOptions, tree.get(LOCAL_SECTION), LOCAL_SECTION)
    return tree, local, paths


def make_context(tree: dict, local: LocalOptions, paths: Paths, import_files: bool = True) -> Context:
    url = os.environ.get("VMDIRAC_DB_URL") or local.DatabaseURL or f"sqlite:///{paths.db_dir / 'vmdirac.sqlite'}"
    engine = make_engine(url)
    config_db = ConfigDB(engine)
    config_db.create_tables()
    served = served_part(tree)
    if import_files:
        version = config_db.import_file(dump_yaml(served), content_hash(served), "vmdirac-server")
        if version:
            log.info("configuration files imported as version %d", version)

    def source(have: int) -> tuple[int, dict] | None:
        found = config_db.newer_than(have)
        return None if found is None else (found[0], parse_yaml(found[1], f"configuration v{found[0]}"))

    store = ConfigStore(source)
    store.current  # fail now, not at the first call, if there is no configuration
    creds = ClientCredentials(cert=local.HostCert or str(paths.security / "hostcert.pem"),
                              key=local.HostKey or str(paths.security / "hostkey.pem"),
                              ca=local.CACertificates or str(paths.ca_dir), use_host=True)
    return Context(store, engine, local, paths, creds)


def _load_class(spec: str) -> type:
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigurationError(f"cannot load {spec}: {e}") from e


def component_class(kind: str, full_name: str, tree: dict) -> type:
    system, _, name = full_name.partition("/")
    section = get_path(tree, f"Systems/{system}/{kind}/{name}") or {}
    known = components.SERVICES if kind == "Services" else components.AGENTS
    spec = section.get("Module") if isinstance(section, dict) else None
    spec = spec or known.get(full_name)
    if not spec:
        hint = f"; known: {', '.join(sorted(known))}" if known else ""
        raise ConfigurationError(f"unknown {kind[:-1].lower()} {full_name}{hint}")
    return _load_class(spec)


def configured(kind: str, tree: dict) -> list[str]:
    """``System/Name`` of every enabled service or agent in the tree."""
    out = []
    for system, sys_section in (tree.get("Systems") or {}).items():
        for name, section in ((sys_section or {}).get(kind) or {}).items():
            if isinstance(section, dict) and str(section.get("Enabled", True)).lower() in ("false", "no", "0"):
                continue
            out.append(f"{system}/{name}")
    return out


def make_services(context: Context, names: list[str]) -> list[Service]:
    tree = context.config.current.tree
    services = []
    for full in names:
        service = component_class("Services", full, tree)(context)
        service.initialize()
        services.append(service)
    return services


def make_agents(context: Context, names: list[str]) -> list[Agent]:
    tree = context.config.current.tree
    return [component_class("Agents", full, tree)(context) for full in names]


async def run_components(context: Context, services: list[Service], agents: list[Agent],
                         port: int | None = None, ready: Any = None, web_port: int | None = None) -> None:
    """Serve ``services`` and run ``agents`` until SIGTERM or SIGINT, then stop gracefully.
    With ``web_port`` (0: any free port; None or negative: none) the web portal too."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = None
    if services:
        local = context.local
        ctx = server_context(local.HostCert or context.paths.security / "hostcert.pem",
                             local.HostKey or context.paths.security / "hostkey.pem",
                             local.CACertificates or context.paths.ca_dir)
        server = RPCServer(services, context.config, ctx, local.MaxWorkers, local.MaxBodyBytes)
        bound = server.listen(local.Port if port is None else port, local.Host)
        names = ", ".join(s.full_name for s in services)
        log.info("listening on https://%s:%d with %s", local.Host or "0.0.0.0", bound, names)
        print(f"vmdirac: serving {names} on https://{local.Host or 'localhost'}:{bound}", flush=True)

        async def refresh_config() -> None:
            while True:
                await asyncio.sleep(context.config.min_interval)
                try:
                    await loop.run_in_executor(server.executor, context.config.refresh)
                except Exception:
                    log.exception("configuration refresh failed; keeping version %d",
                                  context.config.current.version)
        refresher = asyncio.ensure_future(refresh_config())
    portal = None
    if web_port is not None and web_port >= 0:
        from vmdirac.web.app import Portal  # imported here: a service-only process never loads it

        portal = Portal(context)
        bound_web = portal.listen(web_port, context.local.Host)
        log.info("web portal listening on https://%s:%d/", context.local.Host or "0.0.0.0", bound_web)
        print(f"vmdirac: portal on https://{context.local.Host or 'localhost'}:{bound_web}/", flush=True)
    threads = []
    for agent in agents:
        t = threading.Thread(target=agent.run, name=agent.full_name(), daemon=True)
        t.start()
        threads.append(t)
    if agents:
        print(f"vmdirac: running agents {', '.join(a.full_name() for a in agents)}", flush=True)
    if ready is not None:
        ready(server)
    await stop.wait()
    log.info("stopping")
    context.stopping = True
    context.notifier.wake_all()
    for agent in agents:
        agent.stop()
    if portal is not None:
        await portal.stop()
    if server is not None:
        refresher.cancel()
        await server.stop()
    for t in threads:
        await loop.run_in_executor(None, t.join)
    context.engine.dispose()
    log.info("stopped")
