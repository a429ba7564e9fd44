"""The web dashboard of a real agent, in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium): what an operator sees and clicks."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent import Agent
from api_helpers import Api, start_with_api
from brokers import require
from eventually import eventually

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
HOW = "install it with `apt-get install -y chromium chromium-driver` and `pip install selenium`"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1600,1000")
TOKEN = "dash-s3cret"
CHATTY = "[sh, -c, 'i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done']"

try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.chrome.webdriver import WebDriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webelement import WebElement
except ImportError:  # pragma: no cover - reported by the fixture
    webdriver = None  # type: ignore[assignment]


def _missing() -> str | None:
    if webdriver is None:
        return "selenium is not installed"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) and os.access(path, os.X_OK)) and shutil.which(Path(path).name) is None:
            return f"{path} is missing"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    missing = _missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}: {HOW}")
        pytest.skip(f"{missing}: {HOW}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: WebDriver) -> Iterator[WebDriver]:
    """The browser on a fresh tab state: logs read and dropped, storage cleared after the test."""
    logs(browser, "browser")
    logs(browser, "performance")
    yield browser
    with contextlib.suppress(WebDriverException):
        browser.get("about:blank")
        browser.execute_script("try { sessionStorage.clear(); localStorage.clear(); } catch (e) {}")


# -- reading the page ----------------------------------------------------------------------

def rows(driver: WebDriver) -> dict[str, str]:
    found: dict[str, str] = driver.execute_script(
        "const o = {}; document.querySelectorAll('[data-service]').forEach("
        "r => { o[r.dataset.service] = r.textContent; }); return o;")
    return found


def row(driver: WebDriver, name: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'[data-service="{name}"]')


def wait_row(driver: WebDriver, name: str, *needles: str, timeout: float = 10) -> str:
    def shown() -> str | None:
        text = rows(driver).get(name)
        return text if text is not None and all(n in text for n in needles) else None

    text: str = eventually(shown, timeout, f"row {name} showing {needles}")
    return text


def wait_text(driver: WebDriver, css: str, needle: str, timeout: float = 10) -> str:
    def shown() -> str | None:
        text = driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : ''",
                                     css)
        return text if needle in text else None

    text: str = eventually(shown, timeout, f"{css} showing {needle!r}")
    return text


def logs(driver: WebDriver, kind: str) -> list[dict[str, Any]]:
    """The browser's log entries of this kind since the last call (it hands each out once)."""
    entries: list[dict[str, Any]] = driver.get_log(kind)  # type: ignore[no-untyped-call]
    return entries


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    return [e for e in logs(driver, "browser") if e["level"] == "SEVERE"]


def requested_urls(driver: WebDriver) -> list[str]:
    urls = []
    for entry in logs(driver, "performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def load_mark(driver: WebDriver) -> float:
    mark: float = driver.execute_script("return window.dashboardStats && window.dashboardStats.loadMark")
    return mark


def open_dashboard(driver: WebDriver, api: Api, *names: str) -> None:
    driver.get(api.url + "/")
    for name in names:
        wait_row(driver, name)
    eventually(lambda: driver.find_element(By.ID, "conn").text == "live", 10, "the event stream to be live")


# -- an agent without a token --------------------------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Agent, Api]]:
    tmp = tmp_path_factory.mktemp("dashboard")
    conf = tmp / "conf.d"
    conf.mkdir()
    agent = Agent(conf, tmp)
    try:
        api = start_with_api(agent, f"""\
            web: {{command: [sleep, "3801"]}}
            chatty: {{command: {CHATTY}}}
            idle: {{command: [sleep, "3802"], autostart: false}}
            """)
        agent.wait_pids("3801")
        yield agent, api
    finally:
        assert agent.shutdown() == []


def test_the_page_loads_with_no_console_error_and_nothing_from_another_host(
        page: WebDriver, live: tuple[Agent, Api]) -> None:
    agent, api = live
    open_dashboard(page, api, "web", "chatty", "idle")
    wait_row(page, "web", "running", str(agent.pids_of("3801")[0]))
    wait_row(page, "idle", "stopped")
    assert page.find_elements(By.CSS_SELECTOR, 'input[name="token"]')[0].is_displayed() is False
    for name in ("web", "chatty", "idle"):
        buttons = row(page, name).find_elements(By.CSS_SELECTOR, "button[data-action]")
        assert [b.get_attribute("data-action") for b in buttons] == ["start", "stop", "restart", "logs"]
    assert console_errors(page) == []
    urls = requested_urls(page)
    assert f"{api.url}/dashboard/app.js" in urls and any(u.startswith(f"{api.url}/api/events?") for u in urls)
    assert [u for u in urls if not (u.startswith(api.url + "/") or u.startswith("data:"))] == []
    served = api.get("/")
    assert "default-src 'none'" in served.headers["content-security-policy"]
    assert served.headers["x-frame-options"] == "DENY"


def test_sort_and_filter_by_name_and_state(page: WebDriver, live: tuple[Agent, Api]) -> None:
    _, api = live
    open_dashboard(page, api, "web", "chatty", "idle")

    def shown() -> list[str]:
        names: list[str] = page.execute_script(
            "return [...document.querySelectorAll('[data-service]')].filter(r => !r.hidden)"
            ".map(r => r.dataset.service)")
        return names

    assert shown() == ["chatty", "idle", "web"]
    page.find_element(By.CSS_SELECTOR, 'th[data-sort="name"]').click()
    eventually(lambda: shown() == ["web", "idle", "chatty"], 5, "descending names")
    page.find_element(By.CSS_SELECTOR, 'th[data-sort="state"]').click()
    eventually(lambda: shown()[-1] == "idle", 5, "running before stopped")
    page.find_element(By.ID, "filter").send_keys("at")
    eventually(lambda: shown() == ["chatty"], 5, "filtered by name")
    page.find_element(By.ID, "filter").clear()
    page.execute_script("const s = document.getElementById('state-filter'); s.value = 'stopped';"
                        "s.dispatchEvent(new Event('change'))")
    eventually(lambda: shown() == ["idle"], 5, "filtered by state")
    assert "1 of 3 shown" in page.find_element(By.ID, "counts").text


def test_a_kill_9_shows_up_live_without_a_reload(page: WebDriver, live: tuple[Agent, Api]) -> None:
    agent, api = live
    open_dashboard(page, api, "web")
    (old,) = agent.wait_pids("3801")
    wait_row(page, "web", str(old))
    mark = load_mark(page)
    os.kill(old, signal.SIGKILL)
    (new,) = eventually(lambda: [p for p in agent.pids_of("3801") if p != old], 10, "web respawned")
    # the row's text runs its cells together, so the PIDs cell is read on its own
    pids_cell = "const c = document.querySelector('[data-service=\"web\"] td.pids'); return c ? c.textContent : ''"
    eventually(lambda: page.execute_script(pids_cell).split() == [str(new)], 5,
               "the PIDs cell showing the new pid only")
    text = wait_row(page, "web", "running", timeout=5)
    assert "SIGKILL" in text  # the last exit
    assert load_mark(page) == mark  # the same page: no reload
    wait_text(page, "#timeline", "SIGKILL")
    assert console_errors(page) == []


def _confirm_dialog(driver: WebDriver) -> WebElement:
    dialog = driver.find_element(By.ID, "confirm")
    eventually(lambda: dialog.get_attribute("open") is not None, 5, "the confirmation dialog")
    return dialog


def test_each_button_works_and_stop_asks_first(page: WebDriver, live: tuple[Agent, Api]) -> None:
    agent, api = live
    open_dashboard(page, api, "web", "idle")
    (old,) = agent.wait_pids("3801")

    row(page, "web").find_element(By.CSS_SELECTOR, '[data-action="stop"]').click()
    dialog = _confirm_dialog(page)
    assert "Stop web?" in dialog.text
    dialog.find_element(By.CSS_SELECTOR, 'button[value="cancel"]').click()
    eventually(lambda: dialog.get_attribute("open") is None, 5, "the dialog to close")
    # Cancelled: a later action's answer shows first, and web kept its pid all along.
    row(page, "idle").find_element(By.CSS_SELECTOR, '[data-action="start"]').click()
    wait_text(page, "#answers", "start idle: ok, now running")
    assert agent.pids_of("3801") == [old] and "stop web" not in page.find_element(By.ID, "answers").text
    wait_row(page, "idle", "running", str(agent.wait_pids("3802")[0]))

    row(page, "web").find_element(By.CSS_SELECTOR, '[data-action="stop"]').click()
    _confirm_dialog(page).find_element(By.CSS_SELECTOR, 'button[value="confirm"]').click()
    wait_text(page, "#answers", "stop web: ok, now stopped")
    wait_row(page, "web", "stopped")
    assert agent.pids_of("3801") == []

    row(page, "web").find_element(By.CSS_SELECTOR, '[data-action="start"]').click()
    wait_text(page, "#answers", "start web: ok, now running")
    (started,) = agent.wait_pids("3801")
    wait_row(page, "web", "running", str(started))

    row(page, "web").find_element(By.CSS_SELECTOR, '[data-action="restart"]').click()
    wait_text(page, "#answers", "restart web: ok, now running")
    (restarted,) = eventually(lambda: [p for p in agent.pids_of("3801") if p != started], 10, "a new pid")
    wait_row(page, "web", "running", str(restarted))
    wait_text(page, "#timeline", "restart web from api")
    assert api.post("/api/services/idle/stop").status == 200
    assert console_errors(page) == []


def test_the_logs_panel_follows_a_service_and_pauses(page: WebDriver, live: tuple[Agent, Api]) -> None:
    _, api = live
    open_dashboard(page, api, "chatty")
    row(page, "chatty").find_element(By.CSS_SELECTOR, '[data-action="logs"]').click()
    wait_text(page, "#logs-name", "chatty")
    wait_text(page, "#logs-body", "line ")

    def shown_lines() -> list[str]:
        lines: list[str] = page.execute_script(
            "return [...document.querySelectorAll('#logs-body > span')].map(s => s.textContent.trim())")
        return lines

    newest = api.get("/api/services/chatty/logs?lines=1").json["lines"][-1]["text"]
    eventually(lambda: newest in shown_lines(), 10, f"{newest!r} followed live")

    page.find_element(By.ID, "logs-pause").click()
    wait_text(page, "#logs-pause", "Resume")
    paused_at = api.get("/api/services/chatty/logs?lines=1").json["last_seq"]
    count = len(shown_lines())
    # The service wrote several lines since: none of them reached the paused panel.
    def last_seq() -> int:
        seq: int = api.get("/api/services/chatty/logs?lines=1").json["last_seq"]
        return seq

    seq = eventually(lambda: (s := last_seq()) >= paused_at + 5 and s, 10, "more output")
    assert len(shown_lines()) <= count + 1  # at most the answer of the poll that was open
    page.find_element(By.ID, "logs-pause").click()
    later = api.get(f"/api/services/chatty/logs?lines=1&after={seq - 1}").json["lines"][-1]["text"]
    eventually(lambda: later in shown_lines(), 10, "the missed lines after resuming")
    assert console_errors(page) == []


def test_rejected_files_show_as_a_banner_and_the_config_in_force_is_viewable(
        page: WebDriver, live: tuple[Agent, Api]) -> None:
    agent, api = live
    open_dashboard(page, api, "web")
    assert not page.find_element(By.ID, "rejected").is_displayed()
    agent.write("broken.yaml", "services:\n  bad: {command: [sleep, '1'], restart: sometimes}\n")
    try:
        banner = wait_text(page, "#rejected", "broken.yaml:2", timeout=15)
        assert "rejected" in banner and "restart" in banner
        wait_text(page, "#timeline", "config error")
        page.find_element(By.ID, "show-config").click()
        body = wait_text(page, "#config-body", '"web"')
        assert '"command"' in body and "3801" in body and '"bad"' not in body
        page.find_element(By.CSS_SELECTOR, '#config button[value="close"]').click()
    finally:
        (agent.conf_dir / "broken.yaml").unlink()
    eventually(lambda: not page.find_element(By.ID, "rejected").is_displayed(), 15, "the banner to go")
    assert api.get("/api/config").json["rejected"] == {}


# -- a cross-site page ---------------------------------------------------------------------

class EvilSite:
    """Another origin's page, as a browser would show it."""

    def __init__(self, target: str) -> None:
        html = f"""<!doctype html><title>evil</title>
<form id=f method=post action="{target}/api/services/web/stop"></form>
<script>
fetch("{target}/api/services/web/stop", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
  body: "{{}}"}}).then(() => {{ document.title = "sent"; }}, () => {{ document.title = "failed"; }});
</script>""".encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(html)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_a_page_of_another_site_cannot_trigger_an_action(page: WebDriver, live: tuple[Agent, Api]) -> None:
    agent, api = live
    (pid,) = agent.wait_pids("3801")
    evil = EvilSite(api.url)
    try:
        page.get(evil.url)
        eventually(lambda: page.title in ("sent", "failed"), 10, "the fetch to be answered")
        page.execute_script("document.getElementById('f').submit()")
        text = eventually(lambda: "refused" in (t := page.find_element(By.TAG_NAME, "body").text) and t, 10,
                          "the form post's answer")
        assert "another origin" in text or "cross-site" in text or "same-site" in text
    finally:
        evil.close()
    assert api.get("/api/services/web").json["pids"] == [pid] and agent.pids_of("3801") == [pid]


def test_the_guard_seen_from_plain_http(live: tuple[Agent, Api]) -> None:
    agent, api = live
    (pid,) = agent.wait_pids("3801")
    origin = api.post("/api/services/web/stop", headers={"Origin": "http://evil.example"})
    site = api.post("/api/services/web/stop", headers={"Sec-Fetch-Site": "cross-site"})
    rebound = api.get("/api/services", headers={"Host": "evil.example:80", "Sec-Fetch-Site": "same-origin"})
    assert (origin.status, site.status, rebound.status) == (403, 403, 403)
    assert "loopback" in rebound.json["error"]
    own = api.post("/api/services/idle/stop", headers={"Origin": api.url, "Sec-Fetch-Site": "same-origin"})
    assert own.status == 200
    assert agent.pids_of("3801") == [pid]


# -- with a token --------------------------------------------------------------------------

def test_a_scheduled_service_shows_its_last_exit_and_next_run(page: WebDriver, agent: Agent) -> None:
    # autostart: it runs once at start, exits 3, and waits for its next run in an hour
    api = start_with_api(agent, "nightly: {command: [sh, -c, 'exit 3'], restart: never, every: 1h}\n")
    open_dashboard(page, api, "nightly")
    wait_row(page, "nightly", "exited", "next run", "code 3")


def timeline_ids(driver: WebDriver) -> list[str]:
    ids: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#timeline li')].map(li => li.dataset.id)")
    return ids


def test_the_timeline_shows_what_came_before_the_page_and_resumes_after_a_cut(
        page: WebDriver, agent: Agent) -> None:
    api = start_with_api(agent, 'early: {command: [sleep, "3831"]}\n')
    (first,) = agent.wait_pids("3831")
    os.kill(first, signal.SIGKILL)
    eventually(lambda: [p for p in agent.pids_of("3831") if p != first], 10, "early respawned")
    open_dashboard(page, api, "early")
    wait_text(page, "#timeline", f"pid {first} ended (SIGKILL)")  # it happened before the page opened
    # A change to the api section restarts the server: the stream is cut, and the page opens a
    # new one after the last event it showed. What happens meanwhile is shown once.
    agent.write("api.yaml", f'api:\n  listen: "127.0.0.1:{api.port}"\n'
                            f'  webhooks: [{{url: "http://127.0.0.1:9/hook"}}]\n')
    agent.wait_log(r"api: stopped listening")
    (second,) = agent.wait_pids("3831")
    os.kill(second, signal.SIGKILL)
    wait_text(page, "#timeline", f"pid {second} ended (SIGKILL)", timeout=20)
    eventually(lambda: page.find_element(By.ID, "conn").text == "live", 20, "the stream to be live again")
    ids = timeline_ids(page)
    assert len(ids) == len(set(ids)) and all(ids)
    assert any("/api/events?" in u and "after=" in u for u in requested_urls(page))
    # While the server was down, the page's requests were refused: the browser logs each; the
    # page itself raised nothing.
    assert [e for e in console_errors(page) if "ERR_CONNECTION_REFUSED" not in e["message"]] == []


def test_the_fleet_panel_lists_the_agents_heard_on_the_queue(page: WebDriver, agent: Agent) -> None:
    url = require("redis")
    agent_id = f"dash-{uuid.uuid4().hex[:8]}"
    agent.write("queue.yaml", f"queue: {{url: '{url}', exchange: dash_{agent_id}, agent_id: {agent_id}, "
                              f"labels: {{role: web}}, heartbeat: 1s}}\n")
    api = start_with_api(agent, 'web: {command: [sleep, "3821"]}\n')
    open_dashboard(page, api, "web")

    def listed() -> str | None:
        found = page.find_elements(By.CSS_SELECTOR, f'#fleet tr[data-agent="{agent_id}"]')
        return found[0].text if found and page.find_element(By.ID, "fleet").is_displayed() else None

    text: str = eventually(listed, 20, "this agent in the fleet panel")
    assert "role=web" in text and "1/1" in text
    assert console_errors(page) == []


def test_with_a_token_nothing_shows_until_a_valid_one_is_given(page: WebDriver, agent: Agent) -> None:
    api = start_with_api(agent, 'hidden-service-name: {command: [sleep, "3811"]}\n', token=TOKEN)
    agent.wait_pids("3811")
    page.get(api.url + "/")
    field = eventually(lambda: (f := page.find_element(By.CSS_SELECTOR, 'input[name="token"]')).is_displayed() and f,
                       10, "the token field")
    assert rows(page) == {} and "hidden-service-name" not in page.page_source
    assert [u for u in requested_urls(page) if "/api/" in u] == []  # not even asked

    field.send_keys("wrong-token", Keys.ENTER)
    wait_text(page, "#login-error", "Token refused")
    assert rows(page) == {} and "hidden-service-name" not in page.page_source
    assert page.execute_script("return sessionStorage.length") == 0

    field = page.find_element(By.CSS_SELECTOR, 'input[name="token"]')
    field.send_keys(TOKEN, Keys.ENTER)
    wait_row(page, "hidden-service-name", "running")
    eventually(lambda: page.find_element(By.ID, "conn").text == "live", 10, "the stream, opened with a ticket")
    urls = [u for u in requested_urls(page) if "/api/events" in u]
    assert urls and all("ticket=" in u and TOKEN not in u for u in urls)

    mark = load_mark(page)
    page.refresh()  # kept for the browser session
    wait_row(page, "hidden-service-name", "running")
    assert load_mark(page) != mark
    (pid,) = agent.pids_of("3811")
    os.kill(pid, signal.SIGKILL)
    new = eventually(lambda: [p for p in agent.pids_of("3811") if p != pid], 10, "respawned")[0]
    wait_row(page, "hidden-service-name", str(new))

    page.find_element(By.ID, "signout").click()
    eventually(lambda: rows(page) == {}, 5, "the table to empty")
    assert page.find_element(By.CSS_SELECTOR, 'input[name="token"]').is_displayed()


def test_a_ticket_opens_one_stream_once(agent: Agent) -> None:
    api = start_with_api(agent, 'web: {command: [sleep, "3812"]}\n', token=TOKEN)
    assert api.post("/api/tickets", token=None).status == 401
    ticket = api.post("/api/tickets").json
    assert ticket["expires_in"] == 30.0
    assert api.get(f"/api/services?ticket={ticket['ticket']}", token=None).status == 401  # the stream only
    conn = http.client.HTTPConnection(api.host, api.port, timeout=10)
    try:
        conn.request("GET", f"/api/events?status=1&ticket={ticket['ticket']}")
        response = conn.getresponse()
        assert response.status == 200
        head = b""
        while b"event: services" not in head:
            head += response.read1(4096)
        assert b'"web"' in head
    finally:
        conn.close()
    again = api.get(f"/api/events?ticket={ticket['ticket']}", token=None)
    assert again.status == 401 and "ticket" in again.json["error"]


# -- 500 services --------------------------------------------------------------------------

def test_500_services_render_and_take_events(page: WebDriver, agent: Agent) -> None:
    # 500 running services; three more, stopped, are started one by one to time the events.
    many = "".join(f"s{i:03d}: {{command: [sleep, '38{i:03d}'], autostart: {'true' if i < 500 else 'false'}}}\n"
                   for i in range(503))
    # Added by a reload once the API is up: the agent's start is not what is measured here.
    api = start_with_api(agent, "s000: {command: [sleep, '38000']}\n")
    agent.write("services.yaml", "services:\n" + textwrap.indent(many, "  "))

    def running() -> int:
        return sum(s["state"] == "running" for s in api.get("/api/services").json["services"].values())

    eventually(lambda: running() == 500, 120, "the 500 autostart services")
    page.get(api.url + "/")
    eventually(lambda: len(rows(page)) == 503, 30, "503 rows")
    eventually(lambda: page.find_element(By.ID, "conn").text == "live", 10, "the stream")
    first_render = page.execute_script("return window.dashboardStats.firstRender")

    timings = []
    # Sparklines of all 500 need two samples (the sampler's period is 5 s).
    eventually(lambda: page.execute_script(
        "return document.querySelectorAll('svg.spark.rss polyline[points*=\",\"]').length") >= 400, 30, "sparklines")
    for i in (500, 501, 502):
        name = f"s{i:03d}"
        before = page.execute_script("return window.dashboardStats.applied.length")
        assert api.post(f"/api/services/{name}/start").status == 200
        (pid,) = agent.wait_pids(f"38{i:03d}")
        wait_row(page, name, "running", str(pid))
        took = page.execute_script("return window.dashboardStats.applied.slice(arguments[0])", before)
        timings.extend(took)
    assert len(rows(page)) == 503 and console_errors(page) == []
    worst = max(timings)
    print(f"\n500 services: first render {first_render:.0f} ms after navigation; applying one "
          f"service_status event: median {sorted(timings)[len(timings) // 2]:.2f} ms, worst {worst:.2f} ms "
          f"({len(timings)} events)", file=sys.stderr)
