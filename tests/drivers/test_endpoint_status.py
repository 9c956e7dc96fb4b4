"""dirac-vm-endpoint-status: the CLI asks VirtualMachineManager.checkEndpoints (Operator only),
which runs each endpoint driver's ``check`` in the server; here on the local cloud."""

from __future__ import annotations

from tests.cli.test_vm_commands import Shell, shell  # noqa: F401  (fixture)


def test_endpoint_status_prints_auth_image_and_flavor_per_endpoint(shell: Shell):  # noqa: F811
    lines = shell.ok("dirac-vm-endpoint-status")
    assert lines[0][:3] == ["Endpoint", "Type", "Auth"]
    [row] = [line for line in lines[1:] if line[0] == "Site1/cloud1"]
    assert row[1:4] == ["local", "ok", "el9"]
    assert shell.ok("dirac-vm-endpoint-status", "Site1/cloud1")[1][0] == "Site1/cloud1"


def test_endpoint_status_refuses_unknown_endpoints_and_non_operators(shell: Shell):  # noqa: F811
    unknown = shell.run("dirac-vm-endpoint-status", "Site1/nowhere")
    assert unknown.returncode == 1 and "no endpoint Site1/nowhere" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    user = shell.run("dirac-vm-endpoint-status", proxy="alice-proxy")
    assert user.returncode == 1 and user.stderr.strip(), user.stdout
