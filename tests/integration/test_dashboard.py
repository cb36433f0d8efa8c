"""`kiln serve` against a real dockerd and HAProxy. The dashboard in a real headless Chromium
(Debian's chromium and chromium-driver, driven by Selenium; no browser is downloaded): sign in,
see an environment, watch a canary deployed during the test advance live, roll back with one click
and check with curl that what serves changed. Then each API action over HTTP. One app, one server,
one browser for the module.

With KILN_SCREENSHOTS=DIR the screenshots are written there (the README's come from
`KILN_SCREENSHOTS=docs/images`); otherwise to the test's temporary directory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TEST_LABEL, App, Wrk, free_port

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def _curl(url: str) -> str:
    return subprocess.run(["curl", "-fsS", "--max-time", "5", url], capture_output=True, text=True, check=True).stdout


class Served:
    def __init__(self, app: App, url: str, token: str, shots: Path) -> None:
        self.app, self.url, self.token, self.shots = app, url, token, shots


@pytest.fixture(scope="module")
def served(engine, tmp_path_factory) -> Iterator[Served]:
    from conftest import _remove_images, _remove_labelled, make_app

    if not (CHROMIUM and DRIVER):
        pytest.fail("the dashboard test needs Debian's chromium and chromium-driver (scripts/prereqs.sh installs them)")
    app = make_app(tmp_path_factory.mktemp("dash"))
    preview = free_port()  # for the blue-green promotion in the API test (set from the start: see the report)
    app.edit_spec(lambda d: d["environments"]["production"].__setitem__("preview_port", preview))
    app.ports["preview"] = preview
    app.set_rollout(strategy="canary", steps=[{"weight": 30, "pause": "6s"}, {"weight": 60, "pause": "6s"}],
                    analysis={"max_error_rate": 50, "max_latency_ratio": 50})
    app.kiln("deploy")
    app.set_message("second")
    app.kiln("deploy")
    token = app.kiln("token", "create", "dashboard-test", "--role", "deployer", spec=False).stdout.strip()
    port = free_port()
    env = {**os.environ, "KILN_HOME": str(app.home), "KILN_EXTRA_LABELS": TEST_LABEL}
    env.pop("KILN_LEDGER_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "kiln", "serve", "-f", str(app.spec), "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    agent = subprocess.Popen([sys.executable, "-m", "kiln", "agent", "-f", str(app.spec), "-e", "production"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            _get(url + "/health")
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f"kiln serve did not start: {server.stderr.read() if server.stderr else ''}")
            time.sleep(0.2)
    shots = Path(os.environ.get("KILN_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    shots.mkdir(parents=True, exist_ok=True)
    try:
        yield Served(app, url, token, shots)
    finally:
        for proc in (agent, server):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        _remove_labelled(engine, {"kiln.test": TEST_LABEL.split("=")[1], "kiln.app": app.name})
        _remove_images(engine, app.name)


@pytest.fixture(scope="module")
def browser(served):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1400", f"--user-data-dir={tempfile.mkdtemp(prefix='kiln-chromium-')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def _wait(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_signing_in_shows_the_environment(served, browser):
    from selenium.webdriver.common.by import By

    browser.get(served.url + "/")
    assert "/login" in browser.current_url  # no cookie yet: the sign-in form
    browser.find_element(By.NAME, "token").send_keys(served.token)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    _wait("the overview", lambda: browser.find_elements(By.ID, "environments"))
    row = browser.find_element(By.CSS_SELECTOR, f'tr.env[data-env="{served.app.name}/production"]')
    assert "v2" in row.text and "2 healthy" in row.text
    cookie = browser.get_cookie("kiln_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    def agent_leads() -> bool:
        browser.refresh()
        cell = browser.find_element(By.CSS_SELECTOR, f'tr.env[data-env="{served.app.name}/production"] td:nth-child(5)')
        return cell.text not in ("none", "")

    _wait("the agent to lead", agent_leads, 30)
    browser.save_screenshot(str(served.shots / "dashboard-overview.png"))


def test_a_canary_is_seen_advancing_live_and_one_click_rolls_back(served, browser):
    from selenium.webdriver.common.by import By

    app = served.app
    page = f"{served.url}/apps/{app.name}/envs/production"
    browser.get(page)
    load = Wrk(app.url(), 45, connections=4)  # traffic, so that each release's rate moves
    app.set_message("third")
    deploying = app.popen("deploy")  # the canary: 30 % for 6 s, 60 % for 6 s, then all
    try:
        # read in one script: the live view is replaced every second, under Selenium's feet
        def phase() -> str | None:
            return browser.execute_script(
                "const r = document.getElementById('rollout');"
                "return r && r.textContent.includes('v3') ? r.dataset.phase : null;")

        def share_of_v3() -> int:
            return int(browser.execute_script(
                "const s = document.querySelector('tr.release-traffic[data-release=\"3\"] .share');"
                "return s ? s.textContent : '0';"))

        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and deploying.poll() is None:
            current = phase()  # the page refreshes its live view itself, every second
            if current and (not seen or seen[-1][0] != current):
                seen.append((current, share_of_v3()))
                if current == "shift:1":
                    time.sleep(2)  # the rates of both releases have moved by then
                    browser.save_screenshot(str(served.shots / "dashboard-canary.png"))
            time.sleep(0.2)
        assert deploying.wait(60) == 0, deploying.stderr.read() if deploying.stderr else ""
    finally:
        if deploying.poll() is None:
            deploying.kill()
    phases = [p for p, _ in seen]
    assert "shift:0" in phases and "shift:1" in phases, seen
    shares = dict(seen)
    assert 0 < shares["shift:0"] < shares["shift:1"] < 100, seen  # traffic moved as it advanced
    _wait("v3 to serve, live", lambda: browser.execute_script(
        "const s = document.getElementById('serving'); return s && s.textContent === 'v3';"), 30)
    rate = _wait("v3's request rate", lambda: browser.execute_script(
        "const r = document.querySelectorAll('tr.release-traffic[data-release=\"3\"] td');"
        "return r.length && r[2].textContent !== '-' ? r[2].textContent : null;"), 15)
    assert float(rate) > 0
    assert "message=third" in _curl(app.url())

    # one click (and its confirmation) rolls back to v2
    browser.get(page)
    browser.find_element(By.CSS_SELECTOR, 'button.rollback[data-release="2"]').click()
    browser.switch_to.alert.accept()
    said = _wait("the rollback's answer", lambda: browser.find_elements(By.ID, "said"), 120)
    assert re.search(r"v4 serving", said[0].text), said[0].text
    assert "message=second" in _curl(app.url())
    assert all("message=second" in _curl(app.url()) for _ in range(6))  # every instance
    result = load.result()
    assert result.requests > 0 and result.socket_errors == 0 and result.non_2xx == 0, result.text
    events = app.kiln("events", "-e", "production", "-n", "500", "--json").stdout
    assert "rollback to v2 by token dashboard-test (deployer): v4 serving" in events
    browser.get(page)
    time.sleep(2)
    browser.save_screenshot(str(served.shots / "dashboard.png"))


def test_each_api_action_against_the_real_engine(served):
    """Deploy of an already baked image, rollback, promotion of an image to another environment,
    promotion of a waiting blue-green release, abort of a waiting one and of a running canary:
    through the API, each checked with curl and named in the events."""
    import httpx

    app = served.app
    base = f"/api/v1/apps/{app.name}"
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {served.token}"}, timeout=300) as c:
        releases = c.get(f"{base}/envs/production/releases").json()
        third = next(r for r in releases if r["number"] == 3)  # the canary's release, "message=third"
        before = _curl(app.url())
        r = c.post(f"{base}/envs/production/deploy", json={"image": third["image"], "strategy": "rolling"})
        assert r.status_code == 200, r.text
        assert "message=third" in _curl(app.url()) and before != _curl(app.url())
        r = c.post(f"{base}/envs/production/rollback", json={"strategy": "rolling"})
        assert r.status_code == 200 and r.json()["release"]["note"].startswith("rollback to v"), r.text
        assert "message=second" in _curl(app.url())
        r = c.post(f"{base}/promote", json={"from": "production", "to": "staging"})
        assert r.status_code == 200 and r.json()["release"]["origin"].startswith("promoted from production"), r.text
        assert "message=second" in _curl(app.url("staging"))

        # blue-green, promote: manual: the CLI's deploy waits; the API promotes, then aborts the next one
        preview = app.ports["preview"]
        app.set_rollout(strategy="blue-green", promote="manual")
        app.set_message("fourth")
        app.kiln("deploy")
        assert "message=second" in _curl(app.url()) and "message=fourth" in _curl(f"http://127.0.0.1:{preview}")
        r = c.post(f"{base}/envs/production/promote")
        assert r.status_code == 200 and r.json()["state"] == "succeeded", r.text
        assert "message=fourth" in _curl(app.url())
        app.set_message("fifth")
        app.kiln("deploy")
        r = c.post(f"{base}/envs/production/rollouts/abort")
        assert r.status_code == 200 and r.json()["state"] == "aborted", r.text
        assert "message=fourth" in _curl(app.url())

        # a running canary is asked to abort; the kiln running it converges back
        app.set_rollout(strategy="canary", steps=[{"weight": 50, "pause": "60s"}])
        app.set_message("sixth")
        deploying = app.popen("deploy")
        _wait("the canary's first step", lambda: (c.get(f"{base}/envs/production/rollouts").json()[0]["phase"]
                                                   == "shift:0"), 90)
        r = c.post(f"{base}/envs/production/rollouts/abort")
        assert r.status_code == 200 and r.json()["state"] == "running", r.text
        assert deploying.wait(60) == 1
        latest = c.get(f"{base}/envs/production/rollouts").json()[0]
        assert latest["state"] == "aborted" and "aborted by token dashboard-test" in latest["reason"]
        assert all("message=fourth" in _curl(app.url()) for _ in range(4))
        events = [e["message"] for e in c.get(f"{base}/events", params={"limit": 200}).json()
                  if e["kind"] == "api.action"]
    assert [m.split(" by token ")[0].split(" ")[0] for m in events][-6:] == \
        ["deploy", "rollback", "promote", "promote", "abort", "abort"]
    assert all("by token dashboard-test (deployer)" in m for m in events)
