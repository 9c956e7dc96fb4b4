"""cloud-init user data: what goes in comes back out, it fits the clouds' 16 KiB, and the VM
configuration it carries is what the VM Monitor and the pilot read."""

from __future__ import annotations

import base64
import gzip
import os
import secrets
from pathlib import Path

import pytest
import yaml

from tests.contexts.context_fixtures import realistic_context, urls_for
from vmdirac.agents.vm_monitor import load_vm_config
from vmdirac.contexts import CA_PATH, CONFIG_PATH, CREDENTIAL_PATH, MANAGER, VMFile, vm_path
from vmdirac.contexts.adhoc import build_adhoc_user_data
from vmdirac.contexts.cloudinit import (
    MAX_USER_DATA, UserDataTooLarge, build_user_data, cloud_config, file_content, multipart, parse_user_data,
)
from vmdirac.core import x509 as X
from vmdirac.core.config import options
from vmdirac.core.exceptions import ConfigurationError
from vmdirac.pilot.config import PilotOptions


def install(config: dict, root: Path) -> None:
    """Write the files as the VM would, under ``root``."""
    for entry in config["write_files"]:
        target = vm_path(entry["path"], root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file_content(entry))
        target.chmod(int(entry["permissions"], 8))


def test_round_trip_carries_credential_ca_and_configuration(pki, tmp_path):
    ctx = realistic_context(pki)
    data = build_user_data(ctx)
    assert data.startswith(b"Content-Type: multipart/mixed")
    assert b"Content-Type: text/cloud-config" in data and b"Content-Type: text/x-shellscript" in data

    config, scripts = parse_user_data(data)
    files = {e["path"]: e for e in config["write_files"]}
    assert set(files) == {CREDENTIAL_PATH, CA_PATH, CONFIG_PATH}
    assert file_content(files[CREDENTIAL_PATH]) == ctx.credential_pem
    assert files[CREDENTIAL_PATH]["permissions"] == "0600"
    assert file_content(files[CA_PATH]) == ctx.ca_pem

    tree = yaml.safe_load(file_content(files[CONFIG_PATH]))
    assert tree["Instance"] == {"ID": 123456, "Name": ctx.instance_name, "Pod": "pod-gpu", "Site": "CLOUD.Example.org",
                                "Endpoint": "CLOUD.Example.org/openstack-1", "Image": "el9-worker-2024.06",
                                "VO": "vmdirac"}
    assert tree["Services"][MANAGER] == ctx.urls[MANAGER]
    assert tree["Services"]["Configuration/Server"] == ctx.urls["Configuration/Server"]

    (script,) = scripts
    assert script.startswith("#!/bin/sh")
    assert f'dirac-vm-monitor --config "$R{CONFIG_PATH}"' in script

    # What the VM reads: the monitor's options and valid pilot options.
    install(config, tmp_path)
    assert oct((tmp_path / CREDENTIAL_PATH.lstrip("/")).stat().st_mode & 0o777) == "0o600"
    vm = load_vm_config(tmp_path / CONFIG_PATH.lstrip("/"), root=str(tmp_path))
    assert (vm.instance_id, vm.instance_name, vm.pod, vm.site) == (123456, ctx.instance_name, "pod-gpu",
                                                                    "CLOUD.Example.org")
    assert vm.credential == tmp_path / "etc/vmdirac/vm-proxy.pem" and vm.ca == tmp_path / "etc/vmdirac/ca.pem"
    m = vm.monitor
    assert (m.StopPolicy, m.HaltPeriod, m.MinWorkingLoad, m.HeartBeatPeriod, m.LoadAverageTimespan, m.StartPilot) == \
        ("Elastic", 600.0, 0.01, 300.0, 60.0, True)
    pilot = options(PilotOptions, vm.pilot, "Pilot")
    assert pilot.Servers == ("https://dirac-1.example.org:9135", "https://dirac-2.example.org:9135")
    assert (pilot.Slots, pilot.Tags, pilot.RequiredTags, pilot.Platform, pilot.MaxRAM, pilot.InstanceID) == \
        (8, ("GPU", "cvmfs", "MultiProcessor"), ("GPU",), "x86_64-el9", 32000, "123456")
    assert (pilot.Site, pilot.Endpoint, pilot.Image) == ("CLOUD.Example.org", "CLOUD.Example.org/openstack-1",
                                                         "el9-worker-2024.06")


def test_a_realistic_context_fits_16_kib_uncompressed(pki):
    data = build_user_data(realistic_context(pki))
    assert len(data) <= MAX_USER_DATA, f"{len(data)} B"
    assert data[:2] != b"\x1f\x8b"          # plain text: readable in the cloud's console
    print(f"realistic user data: {len(data)} B of {MAX_USER_DATA}")


def test_a_heavy_context_is_gzipped_and_still_reads_back(pki):
    # A 4096-bit, three-level proxy chain and a bundle of CAs: over 16 KiB as text.
    ca, ca_key = X.make_ca("/O=vmdirac/CN=big CA")
    user, user_key = X.make_certificate(ca, ca_key, "/O=vmdirac/OU=users/CN=carol")
    _p, k1, chain = X.make_proxy([user], user_key, 12, group="dirac_pilot", bits=4096)
    _p, k2, chain = X.make_proxy(chain, k1, 6, bits=4096)
    _p, k3, chain = X.make_proxy(chain, k2, 3, bits=4096)
    bundle = b"".join(X.cert_pem(X.make_ca(f"/O=vmdirac/CN=CA {n}")[0]) for n in range(6))
    ctx = realistic_context(pki, credential_pem=X.proxy_pem(chain, k3), ca_pem=bundle)
    plain = multipart([(cloud_config([VMFile("/x", ctx.credential_pem), VMFile("/y", ctx.ca_pem)]), "cloud-config",
                        "c")])
    assert len(plain) > MAX_USER_DATA

    data = build_user_data(ctx)
    assert data[:2] == b"\x1f\x8b" and len(data) <= MAX_USER_DATA
    config, scripts = parse_user_data(data)
    files = {e["path"]: file_content(e) for e in config["write_files"]}
    assert files[CREDENTIAL_PATH] == ctx.credential_pem and files[CA_PATH] == bundle
    assert len(scripts) == 1


def test_user_data_too_large_even_gzipped_is_a_clear_error(pki):
    noise = base64.encodebytes(secrets.token_bytes(20000))      # incompressible
    ctx = realistic_context(pki, ca_pem=b"-----BEGIN CERTIFICATE-----\n" + noise + b"-----END CERTIFICATE-----\n")
    with pytest.raises(UserDataTooLarge) as err:
        build_user_data(ctx)
    assert "16384" in str(err.value) and CA_PATH in str(err.value) and "gzipped" in str(err.value)


def test_parse_reads_what_cloud_init_accepts():
    config_text = "#cloud-config\nwrite_files:\n- path: /a\n  content: hello\n"
    assert parse_user_data(config_text.encode()) == ({"write_files": [{"path": "/a", "content": "hello"}]}, [])
    assert parse_user_data(b"#!/bin/sh\necho hi\n") == ({}, ["#!/bin/sh\necho hi\n"])
    assert parse_user_data(gzip.compress(b"#!/bin/sh\necho hi\n")) == ({}, ["#!/bin/sh\necho hi\n"])
    two = multipart([(config_text, "cloud-config", "a"), ("#cloud-config\nwrite_files:\n- path: /b\n", "cloud-config",
                                                          "b"), ("#!/bin/sh\ntrue\n", "x-shellscript", "s")])
    config, scripts = parse_user_data(two)
    assert [e["path"] for e in config["write_files"]] == ["/a", "/b"] and scripts == ["#!/bin/sh\ntrue\n"]
    packed = base64.b64encode(gzip.compress(b"\x00binary\xff")).decode()
    assert file_content({"content": packed, "encoding": "gz+b64"}) == b"\x00binary\xff"
    assert file_content({"content": base64.b64encode(b"x\ty ").decode(), "encoding": "b64"}) == b"x\ty "


def test_binary_and_odd_files_travel_base64():
    text = cloud_config([VMFile("/bin.dat", b"\x00\x01\xff", 0o600), VMFile("/trailing", b"a  \nb\n")])
    config, _ = parse_user_data(text.encode())
    assert [file_content(e) for e in config["write_files"]] == [b"\x00\x01\xff", b"a  \nb\n"]
    assert [e.get("encoding") for e in config["write_files"]] == ["b64", "b64"]


def test_adhoc_user_data_starts_only_the_monitor(pki, tmp_path):
    config, (script,) = parse_user_data(build_adhoc_user_data(realistic_context(pki)))
    install(config, tmp_path)
    vm = load_vm_config(tmp_path / CONFIG_PATH.lstrip("/"), root=str(tmp_path))
    assert vm.monitor.StartPilot is False and vm.pilot == {}
    assert "dirac-vm-monitor --config" in script


def test_local_cloud_runs_the_monitor_with_its_interpreter(pki):
    _config, (script,) = parse_user_data(build_user_data(realistic_context(pki, python="/opt/py/bin/python3")))
    assert f'/opt/py/bin/python3 -m vmdirac.cli.vm_monitor --config "$R{CONFIG_PATH}"' in script
    assert "setsid" not in script          # the monitor must stay in the local VM's process group


def test_services_on_several_servers_go_through_the_configuration_server(pki, tmp_path):
    urls = urls_for("https://dirac-1.example.org:9135")
    urls[MANAGER] = ["https://vm.example.org:9136/" + MANAGER]
    urls["WorkloadManagement/Matcher"] = ["https://matcher.example.org:9137/WorkloadManagement/Matcher"]
    config, _ = parse_user_data(build_user_data(realistic_context(pki, urls=urls)))
    install(config, tmp_path)
    vm = load_vm_config(tmp_path / CONFIG_PATH.lstrip("/"), root=str(tmp_path))
    assert "Servers" not in vm.pilot
    assert vm.services["Configuration/Server"] == ("https://dirac-1.example.org:9135/Configuration/Server",)
    without_cs = {k: v for k, v in urls.items() if k != "Configuration/Server"}
    with pytest.raises(ConfigurationError, match="Configuration/Server"):
        build_user_data(realistic_context(pki, urls=without_cs))


def test_a_context_without_what_the_vm_needs_is_refused(pki):
    with pytest.raises(ConfigurationError, match="VirtualMachineManager"):
        build_user_data(realistic_context(pki, urls={}))
    with pytest.raises(ConfigurationError, match="private key"):
        build_user_data(realistic_context(pki, credential_pem=(Path(pki.ca_dir) / "ca.pem").read_bytes()))
    with pytest.raises(ConfigurationError, match="stop policy"):
        build_user_data(realistic_context(pki, stop_policy="Sometimes"))


def test_extra_options_reach_the_monitor_and_the_pilot(pki, tmp_path):
    ctx = realistic_context(pki, pilot_options={"MatchWait": 2, "MaxEmptyMatches": 5},
                            monitor_options={"Tick": 0.5, "HaltAction": "shutdown"})
    config, _ = parse_user_data(build_user_data(ctx))
    install(config, tmp_path)
    vm = load_vm_config(tmp_path / CONFIG_PATH.lstrip("/"), root=str(tmp_path))
    assert (vm.monitor.Tick, vm.monitor.HaltAction) == (0.5, "shutdown")
    pilot = options(PilotOptions, vm.pilot, "Pilot")
    assert (pilot.MatchWait, pilot.MaxEmptyMatches) == (2.0, 5)
    assert os.environ.get("VMDIRAC_VM_ROOT") is None     # nothing leaked into the test process


def test_the_context_of_a_pod_vm_comes_from_the_configuration(pki):
    from vmdirac.contexts import boot_user_data, make_context
    from vmdirac.vm.config import Endpoint, EndpointOptions, ImageOptions, Pod, PodOptions

    image = ImageOptions(ImageID="ami-1", Cores=4, RAM=8000, Platform="x86_64-el9", Tags=("cvmfs",), Context="adhoc")
    endpoint = Endpoint("Site1/cloud1", "Site1", EndpointOptions(Type="ec2"), {"el9": image})
    pod = Pod("pod1", PodOptions(Image="el9", Endpoints=("Site1/cloud1",), Tags=("GPU", "cvmfs"), StopPolicy="Never",
                                 HaltPeriod=120, HeartBeatPeriod=60), "vmdirac")
    ctx = make_context(42, "pod1-42", pod, endpoint, urls_for("https://dirac.example.org:9135"),
                       Path(pki.path("alice-proxy")).read_bytes(), (Path(pki.ca_dir) / "ca.pem").read_bytes())
    assert (ctx.site, ctx.endpoint, ctx.image, ctx.vo, ctx.pod) == ("Site1", "Site1/cloud1", "el9", "vmdirac", "pod1")
    assert (ctx.job_slots, ctx.max_ram, ctx.platform, ctx.extra_tags) == (4, 8000, "x86_64-el9", ("cvmfs", "GPU"))
    assert (ctx.stop_policy, ctx.halt_period, ctx.heartbeat_period) == ("Never", 120, 60)
    _config, (script,) = parse_user_data(boot_user_data(ctx, image.Context))
    assert "dirac-vm-monitor" in script and b"StartPilot: false" in boot_user_data(ctx, "adhoc").replace(b"\r", b"")
    assert boot_user_data(ctx, "ssh") == b""
    with pytest.raises(ConfigurationError, match="cloudinit, adhoc or ssh"):
        boot_user_data(ctx, "amiconfig")
