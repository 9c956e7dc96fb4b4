"""dirac-accounting-report against a real server (in this process), as a user runs it."""

from __future__ import annotations

import datetime as dt
import zlib

import pytest
import yaml

from vmdirac.cli.accounting_report import main
from vmdirac.core.db import utcnow
from vmdirac.db.accounting_db import AccountingDB

DS = "Accounting/DataStore"


@pytest.fixture
def shell(start_server, db_url, pki, tmp_path, monkeypatch):
    server = start_server(db_url, ["Configuration/Server", DS], {"Systems": {"Accounting": {"Services": {
        "DataStore": {}}}}})
    cs = server.client("Configuration/Server", "alice-proxy2")
    answer = cs.getCompressedData()
    tree = yaml.safe_load(zlib.decompress(answer["data"]))
    tree["Systems"]["Accounting"]["URLs"] = {"DataStore": [server.url(DS)]}
    cs.commitNewData(yaml.safe_dump(tree), answer["version"], "DataStore URL of the test server")
    settings = tmp_path / "dirac.yaml"
    settings.write_text(yaml.safe_dump({"ConfigurationServer": [server.url("Configuration/Server")],
                                        "CACertificates": str(pki.ca_dir)}))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("VMDIRAC_CLIENT_CONFIG", str(settings))
    monkeypatch.setenv("X509_USER_PROXY", pki.path("alice-proxy"))
    return server


def test_a_report_is_a_table_of_buckets_and_groups_with_totals_and_a_png(shell, capsys, tmp_path):
    end = utcnow() - dt.timedelta(minutes=1)
    base = {"Owner": "alice", "OwnerGroup": "g", "VO": "vmdirac", "Endpoint": "E", "InstanceID": 0,
            "Status": "Done", "CPUTime": 0.0, "WallTime": 0.0, "Cores": 1, "BytesIn": 0, "BytesOut": 0,
            "StartTime": None}
    AccountingDB(shell.context.engine).add_records([
        {**base, "JobID": 1, "Site": "S1", "EndTime": end - dt.timedelta(hours=1)},
        {**base, "JobID": 2, "Site": "S1", "EndTime": end},
        {**base, "JobID": 3, "Site": "S2", "EndTime": end},
        {**base, "JobID": 4, "Site": "S2", "EndTime": end, "VO": "othervo"},   # not alice's VO
    ])
    png = tmp_path / "jobs.png"
    assert main(["jobs", "--grouping", "Site", "--days", "1", "--png", str(png)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Jobs (jobs) by Site, ")
    assert out[1].split() == ["Time", "(UTC)", "S1", "S2"]
    assert len(out) - 4 in (24, 25) and out[-1] == f"Plot written to {png}"   # hourly buckets of a day
    assert out[-2].split() == ["total", "2", "1"]
    assert png.read_bytes().startswith(b"\x89PNG")


def test_errors_are_one_line_and_exit_1(shell, capsys):
    assert main(["nope"]) == 1
    assert capsys.readouterr().err == "ERROR: unknown report 'nope'; known: jobs, cpu, wall, running_vms, " \
                                      "vm_cost, vm_jobs\n"
    assert main(["jobs", "--grouping", "Pod"]) == 1
    assert "cannot be grouped by 'Pod'" in capsys.readouterr().err
