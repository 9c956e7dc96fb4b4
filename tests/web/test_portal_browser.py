"""The portal in a real browser (Debian's headless Chromium driven by Playwright), against a
server running the local cloud: log in with a dirac-web-login link, submit a job with a sandbox
from the Launch Pad, watch it go Done on a VM, read its Logging info, kill another job, look at
the VMs (history and plot), upload a PKCS#12, show an accounting plot. A screenshot of each page
goes to build/screenshots/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

from tests.conftest import ROOT
from tests.vm.test_vm_end_to_end import cloud_tree
from tests.waiting import wait_for
from tests.web.portal_fixtures import PortalServer
from vmdirac.core import x509 as X
from vmdirac.core.config import deep_merge

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "build" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium: apt-get install chromium (Debian's) to run the browser tests",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
pytestmark = pytest.mark.slow


def full_tree(port: int) -> dict:
    base = f"https://localhost:{port}"
    return deep_merge(cloud_tree(port), {"Systems": {
        "Accounting": {"Services": {"DataStore": {}}, "URLs": {"DataStore": [f"{base}/Accounting/DataStore"]}},
        "Framework": {"Services": {"ProxyManager": {}}, "URLs": {"ProxyManager": [f"{base}/Framework/ProxyManager"]}},
    }})


@pytest.fixture(scope="module")
def portal(pki, tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    server = PortalServer(pki, root / "root", f"sqlite:///{root / 'vmdirac.sqlite'}", tree=full_tree, args=())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser, portal):
    # Our CA is not the system's: the test trusts the server the way a user who imported it would.
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(20000)
    page = context.new_page()
    yield page
    context.close()


def shot(page, name: str) -> Path:
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def cell(page, job_id: int, column: str) -> str:
    return page.locator(f'#jobs-table tbody tr[data-job="{job_id}"] td[data-col="{column}"]').inner_text()


jobs: dict[str, int] = {}


def test_login_with_a_link(page, portal, browser):
    anonymous = browser.new_context(ignore_https_errors=True)
    login_page = anonymous.new_page()
    login_page.goto(portal.web_url + "jobs")
    sync_api.expect(login_page.locator("h1")).to_have_text("Log in to vmdirac")
    shot(login_page, "01-login")
    anonymous.close()

    page.goto(portal.login_link("alice-proxy"))
    page.wait_for_url(re.compile(r"/jobs$"))
    sync_api.expect(page.locator("#nav-user")).to_have_text("alice")
    assert page.locator("#group-select").input_value() == "dirac_user"


def test_launch_pad_submits_a_job_with_its_sandbox(page, portal, tmp_path):
    script = tmp_path / "hello.sh"
    script.write_text("echo hello from the sandbox\ncat data.txt\n")
    (tmp_path / "data.txt").write_text("sandbox data 42\n")
    page.goto(portal.web_url + "launchpad")
    page.fill("#lp-Executable", "/bin/sh")
    page.fill("#lp-Arguments", "hello.sh")
    page.fill("#lp-JobName", "from-the-launch-pad")
    page.set_input_files("#lp-sandbox", [str(script), str(tmp_path / "data.txt")])
    page.click("#lp-submit")
    link = page.locator("#lp-submitted a.job-link")
    sync_api.expect(link).to_have_count(1)
    jobs["done"] = int(link.get_attribute("data-job"))
    shot(page, "02-launchpad")
    # A job no VM offers the tag for: it waits until it is killed below.
    page.fill("#lp-JobName", "to-be-killed")
    page.fill("#lp-Arguments", "-c 'sleep 300'")
    page.fill("#lp-Tags", "never-offered")
    page.set_input_files("#lp-sandbox", [])
    page.click("#lp-submit")
    sync_api.expect(page.locator(f"#lp-submitted a.job-link:not([data-job='{jobs['done']}'])")).to_have_count(1)
    jobs["kill"] = int(page.locator("#lp-submitted a.job-link").get_attribute("data-job"))
    sandbox = portal.client("WorkloadManagement/SandboxStore", "alice-proxy").getSandboxesForJob(jobs["done"])
    assert sandbox.get("Input"), sandbox


def test_the_job_goes_done_in_the_job_monitor(page, portal):
    page.goto(portal.web_url + "jobs")
    row = page.locator(f'#jobs-table tbody tr[data-job="{jobs["done"]}"]')
    sync_api.expect(row).to_have_count(1)
    assert cell(page, jobs["done"], "JobName") == "from-the-launch-pad"

    def done() -> bool:
        page.click("#refresh")
        page.wait_for_load_state("networkidle")
        return cell(page, jobs["done"], "Status") == "Done"

    wait_for(done, 240, f"job {jobs['done']} Done in the Job Monitor", portal_log(portal), interval=1.0)
    assert cell(page, jobs["kill"], "Status") == "Waiting"
    shot(page, "03-job-monitor")


def test_logging_info_of_the_job(page):
    button = page.locator(f'button.logging[data-job="{jobs["done"]}"]')
    sync_api.expect(button).to_be_in_viewport()          # not scrolled away behind the last columns
    button.click()
    table = page.locator("#dialog #logging-table")
    sync_api.expect(table).to_be_visible()
    text = table.inner_text()
    for expected in ("Job accepted", "Pilot Agent Submission", "Assigned", "Application", "Execution Complete"):
        assert expected in text
    shot(page, "04-logging-info")
    page.click("#dialog-close")
    sync_api.expect(page.locator("#dialog")).not_to_be_visible()


def test_kill_another_job_with_confirmation(page, portal):
    confirmations: list[str] = []

    def accept(dialog) -> None:
        confirmations.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.check("#pick-all")                                # selects the page; then only the one to kill
    assert page.locator("#jobs-table tbody input.pick:checked").count() == 2
    page.uncheck("#pick-all")
    page.check(f'#jobs-table tbody tr[data-job="{jobs["kill"]}"] input.pick')
    page.click("#act-kill")
    result = page.locator(f'#action-results li[data-job="{jobs["kill"]}"]')
    sync_api.expect(result).to_have_text(f"kill job {jobs['kill']}: done")
    assert confirmations and str(jobs["kill"]) in confirmations[0]
    page.remove_listener("dialog", accept)
    sync_api.expect(page.locator(f'#jobs-table tbody tr[data-job="{jobs["kill"]}"] td[data-col="Status"]')
                    ).to_have_text("Killed")
    sync_api.expect(page.locator("#sel-status option[value='Killed']")).to_have_count(1)
    status = portal.client("WorkloadManagement/JobMonitoring", "alice-proxy").getJobsStatus([jobs["kill"]])
    assert status[str(jobs["kill"])]["Status"] == "Killed"
    shot(page, "05-job-killed")


def test_virtual_machines_with_history_and_plot(page, portal):
    page.goto(portal.web_url + "vms")
    rows = page.locator("#vm-table tbody tr")
    sync_api.expect(rows.first).to_be_visible()
    assert page.locator("#vm-stop").count() == 0          # alice@dirac_user is no Operator
    sync_api.expect(page.locator("#pods-table tbody tr td[data-col='Pod']")).to_have_text("cloud1")
    page.locator("button.history").first.click()
    sync_api.expect(page.locator("#vm-history tbody tr").first).to_be_visible()
    assert "Running" in page.locator("#vm-history").inner_text()
    page.wait_for_function("() => { const i = document.getElementById('vm-plot'); "
                           "return i.complete && i.naturalWidth > 100; }")
    shot(page, "06-virtual-machines")


def test_upload_a_pkcs12_proxy(page, portal, pki, tmp_path):
    cert = X.load_certificates(Path(pki.path("alicecert.pem")).read_bytes())[0]
    key = X.load_key(Path(pki.path("alicekey.pem")).read_bytes())
    p12 = tmp_path / "alice.p12"
    p12.write_bytes(pkcs12.serialize_key_and_certificates(b"alice", key, cert, None,
                                                          BestAvailableEncryption(b"p12 secret")))
    page.goto(portal.web_url + "proxy")
    page.set_input_files("#p12", str(p12))
    page.fill("#p12-password", "wrong")
    page.click("#p12-upload")
    sync_api.expect(page.locator("#proxy-error")).to_be_visible()
    page.set_input_files("#p12", str(p12))
    page.fill("#p12-password", "p12 secret")
    page.click("#p12-upload")
    uploaded = page.locator("#proxy-uploaded")
    sync_api.expect(uploaded).to_contain_text("/O=vmdirac/OU=users/CN=alice")
    assert page.locator("#p12-password").input_value() == ""
    sync_api.expect(page.locator("#proxies-table tbody tr")).to_have_count(1)
    shot(page, "07-proxy-upload")
    assert "p12 secret" not in "".join(portal.output)     # never logged


def test_accounting_plot(page, portal):
    page.goto(portal.web_url + "accounting")
    sync_api.expect(page.locator("#acc-report option").first).to_be_attached()
    page.select_option("#acc-report", "jobs")
    page.click("#acc-show")
    page.wait_for_function("() => { const i = document.getElementById('acc-plot'); "
                           "return !i.hidden && i.complete && i.naturalWidth > 100; }")
    sync_api.expect(page.locator("#acc-table tbody tr").first).to_be_attached()
    shot(page, "08-accounting")


def portal_log(portal):
    return lambda: "".join(portal.output[-60:])
