"""What a client (CLI, pilot, another host) needs: where the Configuration server is, which CA to
trust, which credential to present; and the configuration tree fetched from that server and
cached on disk, refreshed only when the server has a newer version.

The client settings file is ``$VMDIRAC_CLIENT_CONFIG`` or ``~/.vmdirac/dirac.yaml``
(``dirac-cert-init`` writes one for the local user).
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from vmdirac.core.client import ClientCredentials, RPCClient, default_proxy_path
from vmdirac.core.config import ConfigStore, Snapshot, load_files, options, parse_yaml
from vmdirac.core.exceptions import ConfigurationError, SecurityError, ServiceUnavailable
from vmdirac.core.x509 import write_private

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientSettings:
    ConfigurationServer: tuple[str, ...] = ()
    CACertificates: str = ""
    UserCert: str = ""
    UserKey: str = ""
    CacheDir: str = ""


def settings_path() -> Path:
    return Path(os.environ.get("VMDIRAC_CLIENT_CONFIG") or Path.home() / ".vmdirac" / "dirac.yaml").expanduser()


def load_settings(path: Path | None = None) -> ClientSettings:
    path = path or settings_path()
    if not path.exists():
        raise ConfigurationError(f"no client configuration at {path}: run dirac-cert-init, or set "
                                 "VMDIRAC_CLIENT_CONFIG")
    settings = options(ClientSettings, load_files([path]), str(path))
    if not settings.ConfigurationServer:
        raise ConfigurationError(f"{path}: ConfigurationServer is not set")
    if not settings.CACertificates:
        raise ConfigurationError(f"{path}: CACertificates is not set")
    return settings


def user_cert_paths(settings: ClientSettings) -> tuple[Path, Path]:
    globus = Path.home() / ".globus"
    return (Path(settings.UserCert or globus / "usercert.pem").expanduser(),
            Path(settings.UserKey or globus / "userkey.pem").expanduser())


def proxy_credentials(settings: ClientSettings, proxy: str | Path | None = None) -> ClientCredentials:
    path = Path(proxy) if proxy else default_proxy_path()
    if not path.exists():
        raise SecurityError(f"no proxy at {path}: run dirac-proxy-init")
    return ClientCredentials(cert=str(path), key=None, ca=settings.CACertificates)


def remote_store(settings: ClientSettings, credentials: ClientCredentials,
                 cache_dir: Path | None = None) -> ConfigStore:
    """A ConfigStore fed by the Configuration server, through a cache file."""
    cache_dir = cache_dir or Path(settings.CacheDir or Path.home() / ".vmdirac" / "cache").expanduser()
    cache = cache_dir / "configuration.yaml"
    server = RPCClient("Configuration/Server", credentials, urls=list(settings.ConfigurationServer),
                       connect_timeout=5, timeout=30, rounds=2)

    def read_cache() -> tuple[int, dict] | None:
        try:
            data = yaml.safe_load(cache.read_text())
            return int(data["version"]), parse_yaml(data["tree"], str(cache))
        except (OSError, KeyError, TypeError, ValueError, ConfigurationError, yaml.YAMLError):
            return None

    def source(have: int) -> tuple[int, dict] | None:
        cached = read_cache() if have == 0 else None
        known = max(have, cached[0] if cached else 0)
        try:
            answer = server.getCompressedDataIfNewer(known)
        except ServiceUnavailable:
            if cached:
                log.warning("configuration server unreachable; using the cached version %d", cached[0])
                return cached
            raise
        if answer is None:
            return cached
        text = zlib.decompress(answer["data"]).decode()
        write_private(cache, yaml.safe_dump({"version": answer["version"], "tree": text}).encode())
        return answer["version"], parse_yaml(text, "configuration from the server")

    return ConfigStore(source, min_interval=300)


@dataclass
class ClientSession:
    """Settings, credentials and configuration of one command; makes RPC clients."""

    settings: ClientSettings
    credentials: ClientCredentials
    config: ConfigStore

    @classmethod
    def open(cls, proxy: str | Path | None = None) -> ClientSession:
        settings = load_settings()
        creds = proxy_credentials(settings, proxy)
        return cls(settings, creds, remote_store(settings, creds))

    def client(self, service: str, **kwargs) -> RPCClient:
        return RPCClient(service, self.credentials, config=self.config, **kwargs)

    @property
    def snapshot(self) -> Snapshot:
        return self.config.current
