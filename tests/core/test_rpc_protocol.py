"""DIRAC's RPC protocol and what bad input gets: an envelope with a reason, never a 500."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import urllib.parse

import pytest

from tests.core.test_rpc_security import _raw_post
from vmdirac.core import jencode
from vmdirac.core.client import RPCClient
from vmdirac.core.exceptions import (
    BadRequest, InternalError, NotFound, RequestTooLarge, ServiceUnavailable, UnknownMethod,
    UnknownService,
)


def form(method: str, args) -> bytes:
    return urllib.parse.urlencode({"method": method, "args": jencode.dumps(args)}).encode()


def test_typed_calls_round_trip(server):
    c = server.client("Test/Echo")
    assert c.add(2, 40) == 42
    assert c.join(["a", "b"]) == "a,b"
    assert c.join(["a", "b"], "-") == "a-b"
    assert c.scale({"x": 1, "y": 2.5}, 2) == {"x": 2.0, "y": 5.0}
    assert c.asyncAdd(1, 1) == 2
    when = dt.datetime(2024, 2, 28, 12, 0, 0, tzinfo=dt.timezone.utc)
    assert c.later(when, 1) == dt.datetime(2024, 2, 29, 12, 0, 0, tzinfo=dt.timezone.utc)
    assert c.echo({"b": b"\x00\xff", "d": dt.date(2020, 1, 2), "n": None}) == {
        "b": b"\x00\xff", "d": dt.date(2020, 1, 2), "n": None}


def test_wire_format_is_dirac_jencode(server):
    status, answer = _raw_post(server, form("later", [
        {"__dCls": "dt", "obj": "2024-01-01 00:00:00"}, 2]))
    assert status == 200
    assert answer == {"OK": True, "Value": {"__dCls": "dt", "obj": "2024-01-03 00:00:00"}}


@pytest.mark.parametrize("method,args,message", [
    ("add", [1], "takes 2 argument(s), 1 given"),
    ("add", [1, 2, 3], "takes 2 argument(s), 3 given"),
    ("add", ["1", 2], "add: argument a: expected integer, got str"),
    ("add", [True, 2], "expected integer, got bool"),
    ("add", [2**63, 2], "add: argument a: 9223372036854775808 does not fit a 64-bit integer"),
    ("join", [["a", 3]], "join: argument items[1]: expected string, got int"),
    ("join", "notalist", "args must be a JSON list"),
    ("scale", [{"x": "big"}], "values['x']: expected number"),
    ("pick", ["blue"], "'blue' is not one of 'red', 'green'"),
    ("later", ["2024-01-01", 1], "expected datetime, got str"),
])
def test_wrong_arguments_are_a_clear_400(server, method, args, message):
    if isinstance(args, list):
        with pytest.raises(BadRequest) as err:
            server.client("Test/Echo").call(method, *args)
        assert message in str(err.value)
    status, answer = _raw_post(server, form(method, args))
    assert status == 400 and answer["OK"] is False and message in answer["Message"]
    assert answer["Errno"] == 22


def test_unknown_method_is_501(server):
    with pytest.raises(UnknownMethod, match="has no method nope"):
        server.client("Test/Echo").nope()
    status, _ = _raw_post(server, form("nope", []))
    assert status == 501


def test_private_attributes_are_not_methods(server):
    for name in ("initialize", "context", "methods", "__init__"):
        status, answer = _raw_post(server, form(name, []))
        assert status == 501, name


def test_unknown_service_is_404(server):
    with pytest.raises(UnknownService, match="no service Test/Nope"):
        RPCClient("Test/Nope", server.client("Test/Echo").credentials,
                  urls=[server.url("Test/Nope")]).ping()
    status, answer = _raw_post(server, form("ping", []), path="/not/a/service/path")
    assert status == 404 and answer["OK"] is False


def test_not_json_and_not_form(server):
    status, answer = _raw_post(server, b"method=add&args=[1,", )
    assert status == 400 and "args is not valid JSON" in answer["Message"]
    status, answer = _raw_post(server, b'{"method": "add"}', ctype="application/json")
    assert status == 400 and "form-encoded" in answer["Message"]
    status, answer = _raw_post(server, b"args=[]")
    assert status == 400 and "no method" in answer["Message"]
    status, answer = _raw_post(server, b"method=ping&extraCredentials=%7B", )
    assert status == 400 and "extraCredentials is not valid JSON" in answer["Message"]


def test_get_is_refused_with_an_envelope(server):
    status, answer = _raw_post(server, b"", method="GET")
    assert status == 405 and answer["OK"] is False


def test_oversized_body_is_413(start_server, db_url):
    srv = start_server(db_url, ["Configuration/Server"], MaxBodyBytes=4096)
    c = srv.client("Configuration/Server")
    with pytest.raises(RequestTooLarge, match="over the 4096-byte limit"):
        c.echo("x" * 10000)
    assert c.echo("x" * 1000) == "x" * 1000  # a new connection works after the refusal


def test_application_errors_keep_their_class(server):
    with pytest.raises(NotFound, match="no such thing: k"):
        server.client("Test/Echo").missing("k")
    status, answer = _raw_post(server, form("missing", ["k"]))
    assert status == 200 and answer["Errno"] == 2


def test_unexpected_exception_is_500_without_a_traceback(server):
    with pytest.raises(InternalError, match=r"error id [0-9a-f]{12}") as err:
        server.client("Test/Echo").boom()
    assert "secret internal detail" not in str(err.value)
    status, answer = _raw_post(server, form("boom", []))
    assert status == 500 and "Traceback" not in answer["Message"]


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_client_fails_over_to_the_next_url(server):
    dead = f"https://localhost:{_closed_port()}/Test/Echo"
    c = server.client("Test/Echo")
    c2 = RPCClient("Test/Echo", c.credentials, urls=[dead, server.url("Test/Echo"), dead])
    for _ in range(5):  # whichever URL it starts at
        assert c2.add(1, 1) == 2


def test_client_gives_up_after_bounded_rounds(server):
    dead = f"https://localhost:{_closed_port()}/Test/Echo"
    c = RPCClient("Test/Echo", server.client("Test/Echo").credentials, urls=[dead], rounds=2,
                  retry_pause=0.01, connect_timeout=1)
    with pytest.raises(ServiceUnavailable, match="no server answered"):
        c.ping()


def test_read_timeout_is_not_retried(server):
    svc = server.services[1]
    c = server.client("Test/Echo", timeout=0.5)
    with pytest.raises(ServiceUnavailable, match="no answer within"):
        c.waitForRelease()
    svc.release.set()


def test_keep_alive_connection_is_reused_and_recovers(server):
    c = server.client("Test/Echo")
    assert c.add(1, 2) == 3
    conn = c._conns.by_netloc[f"localhost:{server.port}"]
    assert c.add(2, 2) == 4
    assert c._conns.by_netloc[f"localhost:{server.port}"] is conn  # same TCP connection
    conn.sock.shutdown(socket.SHUT_RDWR)  # as if the server had closed it while idle
    assert c.add(3, 3) == 6


def test_graceful_stop_lets_calls_in_flight_finish(start_server, db_url):
    srv = start_server(db_url, ["Test/Echo"],
                       {"Systems": {"Test": {"Services": {"Echo": {"Module": "tests.echo_service:EchoService"}}}}})
    svc = srv.services[0]
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("v", srv.client("Test/Echo").waitForRelease()))
    t.start()
    assert svc.entered.wait(10)
    stopper = threading.Thread(target=srv.stop, kwargs={"grace": 20})
    stopper.start()
    stopper.join(0.3)
    assert stopper.is_alive()  # waiting for the call in flight
    svc.release.set()
    t.join(10)
    stopper.join(10)
    assert result["v"] == "released"
    with pytest.raises(ServiceUnavailable):
        srv.client("Test/Echo", rounds=1, connect_timeout=1).ping()
