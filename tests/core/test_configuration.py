"""The configuration tree: typed options, the Registry, the Configuration service and its clients."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import pytest
import yaml

from vmdirac.core.clientconfig import ClientSettings, remote_store
from vmdirac.core.config import ConfigStore, Registry, dump_yaml, options, parse_yaml
from vmdirac.core.exceptions import (
    ConfigurationError, Conflict, InvalidArgument, NotAuthorized, NotFound, ServiceUnavailable,
)


@dataclass(frozen=True)
class Opts:
    PollingTime: float = 60.0
    Sites: tuple[str, ...] = ()
    Enabled: bool = True
    Name: str = "x"
    Limit: int | None = None


def test_options_are_typed_and_checked():
    o = options(Opts, {"PollingTime": "30", "Sites": "LCG.CERN.ch, LCG.IN2P3.fr", "Enabled": "no"}, "A")
    assert o == Opts(PollingTime=30.0, Sites=("LCG.CERN.ch", "LCG.IN2P3.fr"), Enabled=False)
    assert options(Opts, None, "A") == Opts()
    with pytest.raises(ConfigurationError, match="A: unknown option"):
        options(Opts, {"PolingTime": 3}, "A")
    with pytest.raises(ConfigurationError, match="A/PollingTime: 'soon' is not float"):
        options(Opts, {"PollingTime": "soon"}, "A")
    with pytest.raises(ConfigurationError, match="is not a boolean"):
        options(Opts, {"Enabled": "maybe"}, "A")
    assert options(Opts, {"Limit": None}, "A").Limit is None


def test_yaml_errors_name_the_line():
    with pytest.raises(ConfigurationError, match="cs.yaml line 2: not valid YAML"):
        parse_yaml("a: 1\nb: : c\nd: 2\n", "cs.yaml")
    with pytest.raises(ConfigurationError, match="top level must be a mapping"):
        parse_yaml("- 1\n", "cs.yaml")


def test_registry_checks_its_references():
    with pytest.raises(ConfigurationError, match="unknown group nope"):
        Registry.from_tree({"Registry": {"Users": {"a": {"DN": "/CN=a", "Groups": ["nope"]}}}})
    with pytest.raises(ConfigurationError, match="Registry/Users/a: no DN"):
        Registry.from_tree({"Registry": {"Users": {"a": {}}}})
    reg = Registry.from_tree({"Registry": {"DefaultGroup": "u", "Groups": {"u": {}, "v": {}},
                                           "Users": {"a": {"DN": "/CN=a", "Groups": "v, u"}}}})
    assert reg.default_group_of(reg.users["a"]) == "u"
    assert reg.users_by_dn["/CN=a"].groups == ("v", "u")


def test_store_refreshes_only_when_the_source_has_newer():
    calls = []
    versions = {"n": 1}

    def source(have):
        calls.append(have)
        return (versions["n"], {"v": versions["n"]}) if have < versions["n"] else None

    store = ConfigStore(source, min_interval=0)
    assert store.current.version == 1
    assert store.refresh() is False
    versions["n"] = 2
    seen = []
    store.on_change(lambda snap: seen.append(snap.version))
    assert store.refresh() is True and store.current.get("v") == 2 and seen == [2]
    assert calls == [0, 1, 1]


def test_service_serves_the_tree_without_local_section(server):
    c = server.client("Configuration/Server")
    answer = c.getCompressedData()
    tree = yaml.safe_load(zlib.decompress(answer["data"]))
    assert answer["version"] == c.getVersion() == 1
    assert "Local" not in tree and tree["Registry"]["Users"]["alice"]["DN"].endswith("CN=alice")
    assert c.getCompressedDataIfNewer(1) is None
    assert c.getCompressedDataIfNewer(0)["version"] == 1


def test_commit_needs_cs_administrator_and_the_newest_base(server):
    user = server.client("Configuration/Server", "bob-proxy")
    admin = server.client("Configuration/Server", "alice-proxy2")  # alice in dirac_admin
    tree = yaml.safe_load(zlib.decompress(admin.getCompressedData()["data"]))
    tree["Operations"] = {"Defaults": {"MaxParametricJobs": 50}}
    text = dump_yaml(tree)
    with pytest.raises(NotAuthorized, match="CSAdministrator"):
        user.commitNewData(text, 1, "nope")
    assert admin.commitNewData(text, 1, "raise the cap") == 2
    with pytest.raises(Conflict, match="at version 2, not 1"):
        admin.commitNewData(text, 1, "stale")
    assert server.context.config.current.get("Operations/Defaults/MaxParametricJobs") == 50
    history = admin.getCommitHistory(10)
    assert [h["Version"] for h in history] == [2, 1]
    assert history[0]["Comment"] == "raise the cap" and history[0]["Author"].endswith("CN=alice")
    assert "MaxParametricJobs" not in admin.getVersionContents(1)
    assert admin.rollbackToVersion(1) == 3
    assert server.context.config.current.get("Operations") is None
    with pytest.raises(NotFound):
        admin.getVersionContents(99)


@pytest.mark.parametrize("text,message", [
    ("a: [1,", "not valid YAML"),
    ("- a\n", "must be a mapping"),
    ("Local: {DatabaseURL: x}\n", "may not hold a Local section"),
    ("Registry: {Users: {x: {DN: /CN=x, Groups: [ghost]}}}\n", "unknown group ghost"),
])
def test_bad_commits_are_refused_and_store_nothing(server, text, message):
    admin = server.client("Configuration/Server", "alice-proxy2")
    with pytest.raises(InvalidArgument, match=message):
        admin.commitNewData(text, 1, "bad")
    assert admin.getVersion() == 1


def test_server_imports_its_files_once(start_server, db_url):
    first = start_server(db_url)
    assert first.client("Configuration/Server").getVersion() == 1
    first.stop()
    again = start_server(db_url)  # same files: no new version
    assert again.client("Configuration/Server").getVersion() == 1
    again.stop()
    changed = start_server(db_url, tree={"Operations": {"Defaults": {"X": 1}}})
    assert changed.client("Configuration/Server").getVersion() == 2


def test_client_caches_and_refreshes_only_when_newer(server, tmp_path):
    c = server.client("Configuration/Server")
    settings = ClientSettings(ConfigurationServer=(server.url("Configuration/Server"),),
                              CACertificates=str(server.pki.ca_dir))
    store = remote_store(settings, c.credentials, cache_dir=tmp_path)
    assert store.current.version == 1
    cache = tmp_path / "configuration.yaml"
    mtime = cache.stat().st_mtime_ns
    assert store.refresh(force=True) is False and cache.stat().st_mtime_ns == mtime
    admin = server.client("Configuration/Server", "alice-proxy2")
    tree = yaml.safe_load(zlib.decompress(admin.getCompressedData()["data"]))
    tree["Operations"] = {"Defaults": {"Y": 2}}
    admin.commitNewData(dump_yaml(tree), 1, "")
    assert store.refresh(force=True) is True and store.current.get("Operations/Defaults/Y") == 2
    # A new process with the server down starts from the cache.
    server.stop()
    offline = remote_store(settings, c.credentials, cache_dir=tmp_path)
    assert offline.current.version == 2
    with pytest.raises(ServiceUnavailable):
        remote_store(settings, c.credentials, cache_dir=tmp_path / "empty").current
