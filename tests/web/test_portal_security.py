"""The portal's safety, against a real server over HTTPS with real certificates: who may log in,
how, for how long; CSRF on every state change; a user sees and acts on their own jobs only."""

from __future__ import annotations

import datetime as dt
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy

from tests.services.wms_fixtures import jdl
from tests.waiting import wait_for
from tests.web.portal_fixtures import PortalServer, multipart
from vmdirac.core.db import make_engine
from vmdirac.db.web_db import WebDB, digest, web_login_tokens, web_sessions


@pytest.fixture(scope="module")
def portal(pki, tmp_path_factory):
    root = tmp_path_factory.mktemp("portal")
    server = PortalServer(pki, root / "root", f"sqlite:///{root / 'vmdirac.sqlite'}")
    yield server
    server.stop()


def logged_in(portal, proxy: str = "alice-proxy"):
    browser = portal.browser()
    landing = browser.follow(portal.login_link(proxy))
    assert landing.status == 200, landing.text
    return browser


def test_a_login_link_makes_a_session_whose_cookie_scripts_and_other_sites_cannot_use(portal):
    browser = portal.browser()
    landing = browser.follow(portal.login_link())
    assert landing.status == 200
    cookie = landing.headers.get("Set-Cookie")
    assert cookie.startswith("vmdirac_session=")
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "secure", "expires", "path"} <= flags
    assert "samesite=strict" in cookie.lower()
    assert "you are alice in group dirac_user" in landing.text.lower()
    assert browser.get("/api/jobs").status == 200


def test_a_used_login_link_is_refused(portal):
    link = portal.login_link()
    first, second = portal.browser(), portal.browser()
    assert first.follow(link).status == 200
    replay = second.follow(link)
    assert replay.status == 403
    assert "already used or has expired" in replay.text
    assert "vmdirac_session" not in second.cookies
    assert second.get("/api/jobs").status == 401
    assert portal.browser().get("/login?token=made-up").status == 403


def test_without_a_session_or_certificate_nothing_is_shown(portal):
    anonymous = portal.browser()
    answer = anonymous.get("/api/jobs")
    assert answer.status == 401 and answer.json()["OK"] is False
    page = anonymous.get("/jobs")
    assert page.status == 401 and "dirac-web-login" in page.text
    forged_cookie = portal.browser()
    forged_cookie.cookies["vmdirac_session"] = "x" * 43
    assert forged_cookie.get("/api/jobs").status == 401


def test_state_changes_without_the_sessions_csrf_token_are_refused(portal):
    job = portal.client("WorkloadManagement/JobManager", "alice-proxy").submitJob(jdl())
    browser = logged_in(portal)
    token = browser.csrf()
    missing = browser.post_json("/api/jobs/action", {"action": "kill", "ids": [job]})
    assert missing.status == 403 and "CSRF token is missing" in missing.json()["Message"]
    wrong = browser.post_json("/api/jobs/action", {"action": "kill", "ids": [job]}, csrf="0" * 64)
    assert wrong.status == 403 and "CSRF token is wrong" in wrong.json()["Message"]
    other = logged_in(portal)   # a token of another session of the same user is no good either
    assert browser.post_json("/api/jobs/action", {"action": "kill", "ids": [job]}, csrf=other.csrf()).status == 403
    monitoring = portal.client("WorkloadManagement/JobMonitoring", "alice-proxy")
    assert monitoring.getJobsStatus([job])[str(job)]["Status"] == "Waiting"
    done = browser.post_json("/api/jobs/action", {"action": "kill", "ids": [job]}, csrf=token)
    assert done.status == 200, done.text
    assert done.json()["Value"]["results"] == [{"id": job, "ok": True, "message": "done"}]
    assert monitoring.getJobsStatus([job])[str(job)]["Status"] == "Killed"
    # The logout form is a state change too.
    assert browser.request("POST", "/logout", b"", {"Content-Type": "application/x-www-form-urlencoded"}).status == 403


def test_a_user_sees_and_acts_on_their_own_jobs_only(portal):
    bobs = portal.client("WorkloadManagement/JobManager", "bob-proxy").submitJob(jdl(JobName="bobs"))
    alices = portal.client("WorkloadManagement/JobManager", "alice-proxy").submitJob(jdl(JobName="alices"))
    alice = logged_in(portal, "alice-proxy")
    listed = alice.get("/api/jobs?limit=500").json()["Value"]
    ids = {r[0] for r in listed["records"]}
    assert alices in ids and bobs not in ids
    assert {r[7] for r in listed["records"]} == {"alice"}            # the Owner column
    assert alice.get(f"/api/jobs?ids={bobs}").json()["Value"]["total"] == 0
    assert alice.get("/api/jobs?owner=bob").json()["Value"]["total"] == 0
    for what in ("logging", "parameters"):
        refused = alice.get(f"/api/jobs/{bobs}/{what}")
        assert refused.status == 403 and "does not exist or is not yours" in refused.json()["Message"]
    assert alice.get(f"/api/jobs/{alices}/logging").status == 200
    assert "bob" not in alice.get("/api/jobs/selectors").json()["Value"]["owner"]
    token = alice.csrf()
    for action in ("kill", "delete", "reschedule"):
        answer = alice.post_json("/api/jobs/action", {"action": action, "ids": [bobs]}, csrf=token).json()["Value"]
        assert answer["results"][0]["ok"] is False
        assert "does not exist or is not yours" in answer["results"][0]["message"]
    bob_view = portal.client("WorkloadManagement/JobMonitoring", "bob-proxy")
    assert bob_view.getJobsStatus([bobs])[str(bobs)]["Status"] == "Waiting"
    # Only a group of one's own can be chosen; an Operator group sees the VO, as on the RPC layer.
    assert alice.post_json("/api/group", {"group": "dirac_pilot"}, csrf=token).status == 403
    assert alice.post_json("/api/group", {"group": "dirac_admin"}, csrf=token).status == 200
    assert bobs in {r[0] for r in alice.get("/api/jobs?limit=500").json()["Value"]["records"]}
    bob = logged_in(portal, "bob-proxy")
    assert bob.post_json("/api/group", {"group": "dirac_admin"}, csrf=bob.csrf()).status == 403
    assert alices not in {r[0] for r in bob.get("/api/jobs?limit=500").json()["Value"]["records"]}


def test_an_expired_session_is_refused(portal):
    browser = logged_in(portal)
    assert browser.get("/api/jobs").status == 200
    db = WebDB(make_engine(portal.db_url))
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    db.expire_session(browser.cookies["vmdirac_session"], at=past)
    db.engine.dispose()
    answer = browser.get("/api/jobs")
    assert answer.status == 401 and "not logged in" in answer.json()["Message"]


def test_sessions_and_tokens_are_stored_hashed(portal):
    browser = logged_in(portal)
    session_id = browser.cookies["vmdirac_session"]
    engine = make_engine(portal.db_url)
    with engine.connect() as conn:
        stored = set(conn.execute(sqlalchemy.select(web_sessions.c.SessionHash)).scalars())
    engine.dispose()
    assert session_id not in stored and len(stored) >= 1


def test_logout_ends_the_session(portal):
    browser = logged_in(portal)
    cookie = browser.cookies["vmdirac_session"]
    token = browser.csrf()
    out = browser.request("POST", "/logout", f"_csrf={token}".encode(),
                          {"Content-Type": "application/x-www-form-urlencoded"})
    assert out.status == 303
    browser.cookies["vmdirac_session"] = cookie       # even if the browser kept it
    assert browser.get("/api/jobs").status == 401


def test_a_browser_with_alices_certificate_is_alice(portal):
    browser = portal.browser("alicecert.pem", "alicekey.pem")
    assert browser.get("/api/jobs").status == 200
    page = browser.get("/jobs")
    assert page.status == 200
    assert '<span id="nav-user">alice</span>' in page.text
    assert "vmdirac_session" in browser.cookies                # a session, hence a CSRF token
    job = portal.client("WorkloadManagement/JobManager", "alice-proxy").submitJob(jdl())
    killed = browser.post_json("/api/jobs/action", {"action": "kill", "ids": [job]}, csrf=browser.csrf())
    assert killed.json()["Value"]["results"][0]["ok"] is True
    # Another session's cookie does not turn a certificate into someone else.
    bob = logged_in(portal, "bob-proxy")
    browser.cookies["vmdirac_session"] = bob.cookies["vmdirac_session"]
    page = browser.get("/jobs")
    assert '<span id="nav-user">alice</span>' in page.text


def test_only_people_get_login_links(portal):
    host = portal.browser("hostcert.pem", "hostkey.pem")
    refused = host.request("POST", "/api/login-link", b"")
    assert refused.status == 401 and "not a person" in refused.json()["Message"]
    assert portal.browser().request("POST", "/api/login-link", b"").status == 401
    stranger = portal.browser("strangercert.pem", "strangerkey.pem")
    assert stranger.request("POST", "/api/login-link", b"").status == 401


def test_the_launch_pad_submits_as_the_user_with_a_sandbox_the_user_owns(portal):
    alice = logged_in(portal)
    body, ctype = multipart({"Executable": "/bin/sh", "Arguments": "run.sh", "JobName": "via-portal"},
                            {"sandbox": ("../../run.sh", b"echo hi\n")})
    forged = alice.request("POST", "/api/submit", body, {"Content-Type": ctype})
    assert forged.status == 403
    answer = alice.request("POST", "/api/submit", body, {"Content-Type": ctype, "X-CSRF-Token": alice.csrf()})
    assert answer.status == 200, answer.text
    value = answer.json()["Value"]
    assert value["sandbox_files"] == ["run.sh"]                  # the directory part is dropped
    job = value["ids"][0]
    attrs = portal.client("WorkloadManagement/JobMonitoring", "alice-proxy").getJobAttributes(job)
    assert attrs["Owner"] == "alice" and attrs["JobName"] == "via-portal"
    sandboxes = portal.client("WorkloadManagement/SandboxStore", "alice-proxy").getSandboxesForJob(job)
    assert len(sandboxes["Input"]) == 1
    missing, ctype = multipart({"JDL": '[Executable = "/bin/sh"; InputSandbox = {"absent.sh"};]'}, {})
    refused = alice.request("POST", "/api/submit", missing, {"Content-Type": ctype, "X-CSRF-Token": alice.csrf()})
    assert refused.status == 400 and "absent.sh" in refused.json()["Message"]


def test_stopping_vms_is_refused_by_the_service_to_non_operators(portal):
    alice = logged_in(portal)
    assert 'id="vm-stop"' not in alice.get("/vms").text
    refused = alice.post_json("/api/vms/stop", {"ids": [1], "force": True}, csrf=alice.csrf())
    assert refused.status == 403 and "may not call" in refused.json()["Message"]


def test_login_tokens_never_reach_the_log(portal):
    link = portal.login_link()
    token = link.split("token=", 1)[1]
    browser = portal.browser()
    # A request Tornado itself refuses (bad UTF-8 after the token): its warning names the path only.
    assert browser.get(f"/login?token={token}%ff").status == 400
    assert browser.follow(link).status == 200
    # A link whose group the user has left since it was made: refused in a page, logged in one
    # line without the token (not Tornado's "Uncaught exception" with the request's URI).
    db = WebDB(make_engine(portal.db_url))
    stale = "s" * 43
    db.add_login_token(stale, "/O=vmdirac/OU=users/CN=alice", "dirac_pilot", dt.timedelta(minutes=5))
    db.engine.dispose()
    before = len(portal.output)
    refused = browser.get(f"/login?token={stale}")
    assert refused.status == 403 and "not a member of group dirac_pilot" in refused.text
    assert refused.headers["Content-Type"].startswith("text/html")
    assert "vmdirac_session" in browser.cookies        # the earlier session is untouched
    wait_for(lambda: any("portal GET /login 403" in line for line in list(portal.output)[before:]), 10,
             "the refusal in the log")
    output = "".join(portal.output)
    assert "portal GET /login 200" in output
    assert token[:16] not in output and stale[:16] not in output
    assert "Traceback" not in "".join(list(portal.output)[before:])


def test_refusals_are_one_line_in_the_log_and_the_answer(portal):
    alice = logged_in(portal)
    before = len(portal.output)
    answer = alice.get("/api/jobs?sort=Nonsense")
    assert answer.status == 400 and "\n" not in answer.json()["Message"]
    assert "Traceback" not in "".join(list(portal.output)[before:])


def test_big_bodies_are_refused_before_anyone_reads_them(portal):
    alice = logged_in(portal)
    big = b'{"action": "kill", "ids": [' + b"1," * (700 * 1024) + b'1]}'
    for browser, headers in ((portal.browser(), {}), (alice, {"X-CSRF-Token": alice.csrf()})):
        try:
            status = browser.request("POST", "/api/jobs/action", big,
                                     {"Content-Type": "application/json", **headers}).status
        except (ConnectionError, ssl.SSLError):
            status = None                      # the server closed before taking the whole body
        assert status in (None, 400, 413)


def test_pages_and_answers_carry_the_protective_headers(portal):
    alice = logged_in(portal)
    for path in ("/jobs", "/api/jobs", "/api/nothing-here"):
        headers = alice.get(path).headers
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cross-Origin-Resource-Policy"] == "same-origin"
        assert headers["Cache-Control"] == "no-store"


def test_a_new_login_ends_the_previous_session_of_that_browser(portal):
    browser = logged_in(portal)
    old = browser.cookies["vmdirac_session"]
    assert browser.follow(portal.login_link()).status == 200
    assert browser.cookies["vmdirac_session"] != old
    stale = portal.browser()
    stale.cookies["vmdirac_session"] = old
    assert stale.get("/api/jobs").status == 401


def test_logout_removes_the_cookie_with_the_attributes_it_was_set_with(portal):
    browser = logged_in(portal)
    out = browser.request("POST", "/logout", f"_csrf={browser.csrf()}".encode(),
                          {"Content-Type": "application/x-www-form-urlencoded"})
    assert out.status == 303 and out.headers["Location"] == "/jobs"
    cookie = out.headers["Set-Cookie"].lower()
    assert cookie.startswith('vmdirac_session=""') or cookie.startswith("vmdirac_session=;")
    assert "secure" in cookie and "path=/" in cookie and "samesite=strict" in cookie
    assert "vmdirac_session" not in browser.cookies


def test_an_expired_login_link_is_refused(portal):
    link = portal.login_link()
    token = link.split("token=", 1)[1]
    engine = make_engine(portal.db_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.update(web_login_tokens).where(web_login_tokens.c.TokenHash == digest(token))
                     .values(Expires=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)))
    engine.dispose()
    browser = portal.browser()
    answer = browser.follow(link)
    assert answer.status == 403 and "already used or has expired" in answer.text
    assert "vmdirac_session" not in browser.cookies


def test_the_jdl_cannot_name_another_owner(portal):
    alice = logged_in(portal)
    body, ctype = multipart({"JDL": '[Executable = "/bin/true"; Owner = "bob"; OwnerGroup = "dirac_admin"; '
                                    'OwnerDN = "/O=vmdirac/OU=users/CN=bob";]'}, {})
    answer = alice.request("POST", "/api/submit", body, {"Content-Type": ctype, "X-CSRF-Token": alice.csrf()})
    if answer.status == 200:
        job = answer.json()["Value"]["ids"][0]
        attrs = portal.client("WorkloadManagement/JobMonitoring", "alice-proxy").getJobAttributes(job)
        assert (attrs["Owner"], attrs["OwnerGroup"]) == ("alice", "dirac_user")
    else:
        assert answer.status == 400, answer.text


def _claim_in_parallel(db_url: str, token: str, claimants: int) -> list:
    # Separate engines: as many portal processes over one database.
    dbs = [WebDB(make_engine(db_url)) for _ in range(claimants)]
    barrier = threading.Barrier(claimants)

    def claim(db: WebDB):
        barrier.wait()
        return db.claim_login_token(token)

    try:
        with ThreadPoolExecutor(claimants) as pool:
            return list(pool.map(claim, dbs))
    finally:
        for db in dbs:
            db.engine.dispose()


def test_a_login_token_is_claimed_once_by_many_portals_at_once(db_url):
    db = WebDB(make_engine(db_url))
    db.create_tables()
    token = "t" * 43
    db.add_login_token(token, "/O=vmdirac/OU=users/CN=alice", "dirac_user", dt.timedelta(minutes=5))
    with db.engine.connect() as conn:
        stored = set(conn.execute(sqlalchemy.select(web_login_tokens.c.TokenHash)).scalars())
    db.engine.dispose()
    assert stored == {digest(token)}
    claims = _claim_in_parallel(db_url, token, 6)
    assert claims.count(None) == 5
    assert ("/O=vmdirac/OU=users/CN=alice", "dirac_user") in claims


def test_every_state_change_needs_the_token(portal):
    alice = logged_in(portal)
    body, ctype = multipart({"password": "x"}, {"p12": ("a.p12", b"0")})
    for path, data, content_type in (("/api/group", b'{"group": "dirac_admin"}', "application/json"),
                                     ("/api/vms/stop", b'{"ids": [1]}', "application/json"),
                                     ("/api/proxy/upload", body, ctype),
                                     ("/api/jobs/action", b'{"action": "delete", "ids": [1]}', "text/plain")):
        refused = alice.request("POST", path, data, {"Content-Type": content_type})
        assert refused.status == 403 and "CSRF" in refused.json()["Message"], path
    # A certificate alone (what a browser sends with a cross-site form) is no session: refused.
    certified = portal.browser("alicecert.pem", "alicekey.pem")
    forged = certified.post_json("/api/jobs/action", {"action": "kill", "ids": [1]}, csrf=alice.csrf())
    assert forged.status == 403
    assert "vmdirac_session" not in certified.cookies
