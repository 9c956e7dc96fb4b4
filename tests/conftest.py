"""Shared fixtures: test certificates, both DB backends, real HTTPS servers on loopback."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy

from tests.pki import REGISTRY, make_pki
from tests.servers import ThreadServer

os.environ.pop("VMDIRAC_DB_URL", None)  # tests choose their database themselves
MYSQL_URL = os.environ.get("VMDIRAC_MYSQL_URL", "")


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def mysql_server_url():
    if not MYSQL_URL:
        pytest.skip("VMDIRAC_MYSQL_URL is not set (.ci/run sets it): MySQL tests skipped")
    engine = sqlalchemy.create_engine(MYSQL_URL)
    try:
        with engine.connect():
            pass
    except Exception as e:  # CI must fail, not skip, when the server it was promised is missing
        pytest.fail(f"VMDIRAC_MYSQL_URL is set but MySQL is unreachable: {e}", pytrace=False)
    finally:
        engine.dispose()
    return MYSQL_URL


def _mysql_database(server_url: str):
    """A fresh database on the MySQL server for one test; dropped afterwards."""
    name = f"vmdirac_t_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(server_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    url = sqlalchemy.engine.make_url(server_url).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        admin.dispose()


@pytest.fixture(params=["sqlite", "mysql"])
def db_url(request, tmp_path):
    """The URL of an empty database, once on SQLite and once on MySQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'vmdirac.sqlite'}"
    else:
        yield from _mysql_database(request.getfixturevalue("mysql_server_url"))


@pytest.fixture
def mysql_url(mysql_server_url):
    yield from _mysql_database(mysql_server_url)


def base_tree(extra: dict | None = None) -> dict:
    from vmdirac.core.config import deep_merge

    tree = {
        "Registry": REGISTRY,
        "Systems": {"Configuration": {"Services": {"Server": {}}}},
    }
    return deep_merge(tree, extra or {})


@pytest.fixture
def start_server(pki, tmp_path):
    """Start a real HTTPS server in a thread: ``start_server(db_url, services=[...], tree=...)``."""
    running: list[ThreadServer] = []

    def start(db_url: str, services: list[str] | None = None, tree: dict | None = None,
              **local) -> ThreadServer:
        server = ThreadServer(pki, tmp_path / f"root{len(running)}", db_url,
                              services or ["Configuration/Server"], base_tree(tree), local)
        server.start()
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def server(start_server, db_url):
    """A server with the Configuration service and the test service, on each backend."""
    return start_server(db_url, ["Configuration/Server", "Test/Echo"],
                        {"Systems": {"Test": {"Services": {"Echo": {"Module": "tests.echo_service:EchoService"}}}}})


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


ROOT = Path(__file__).resolve().parent.parent


def command(name: str) -> str:
    """The path of one of our console scripts, installed beside this Python."""
    path = Path(sys.executable).with_name(name)
    assert path.exists(), f"{name} is not installed beside {sys.executable}: pip install -e ."
    return str(path)
