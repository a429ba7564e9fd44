"""Takes docs/dashboard.png: a real agent on a demo conf.d, its dashboard in headless Chromium.

    python3 docs/make_screenshot.py [--out docs/dashboard.png] [--theme dark|light] [--settle 40]

Needs Debian's chromium and chromium-driver and selenium (pip install '.[test]'). The agent runs
in a temporary folder and is stopped (SIGTERM, by its pid) before the script ends.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--window-size=1920,1080", "--force-device-scale-factor=1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def demo(conf: Path, api_port: int, web_port: int) -> None:
    busy = "import time\nwhile True:\n    sum(i * i for i in range(150000)); time.sleep(0.25)"
    jobs = "i=0; while true; do i=$((i+1)); echo \"job $i done in $((i % 7 + 3))ms\"; sleep 0.7; done"
    (conf / "api.yaml").write_text(f'api:\n  listen: "127.0.0.1:{api_port}"\n')
    (conf / "services.yaml").write_text(textwrap.dedent(f"""\
        services:
          web:
            command: [{PY}, -m, http.server, "{web_port}", --bind, 127.0.0.1]
            health:
              readiness: {{http: {{url: "http://127.0.0.1:{web_port}/"}}, period: 2s}}
          api-gateway:
            command: [sleep, infinity]
            depends_on: {{web: {{condition: healthy}}}}
          worker:
            command: [{PY}, -c, {json.dumps(busy)}]
            replicas: 2
          queue-consumer:
            command: [sh, -c, {json.dumps(jobs)}]
          flaky-sync:
            command: [sh, -c, "echo syncing; sleep 3; echo 'upstream refused' >&2; exit 3"]
            backoff: {{initial: 8s, max: 8s}}
            start_limit: {{burst: 50}}
          legacy-report:
            command: [/opt/legacy/report]
            start_limit: {{burst: 1}}
          db-migrate:
            command: [sh, -c, "echo migrated 12 tables"]
            restart: never
          nightly-export:
            command: [sleep, infinity]
            autostart: false
        """))
    (conf / "cache.yaml").write_text("services:\n  cache:\n    command: [redis-server, --port, '0']\n"
                                     "    restart: sometimes\n")


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--theme", choices=("dark", "light"), default="dark")
    parser.add_argument("--settle", type=float, default=40.0, help="seconds of running before the picture")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="suite-demo-") as tmp:
        conf = Path(tmp) / "conf.d"
        conf.mkdir()
        api_port, web_port = free_port(), free_port()
        demo(conf, api_port, web_port)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "suite-agent"), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])}
        with open(Path(tmp) / "agent.log", "wb") as log:
            agent = subprocess.Popen([PY, "-m", "suite_agent", "run", "--conf-dir", str(conf)], cwd=tmp, env=env,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in FLAGS:
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        try:
            url = f"http://127.0.0.1:{api_port}"
            wait_http(url + "/livez", 30)
            driver.get(url + "/")
            driver.execute_script("localStorage.setItem('suite-agent.theme', arguments[0])", args.theme)
            driver.get(url + "/")
            time.sleep(args.settle / 2)
            # An incident for the timeline: one worker replica killed, respawned at once.
            pids = json.load(urllib.request.urlopen(url + "/api/services/worker"))["pids"]
            os.kill(pids[0], signal.SIGKILL)
            urllib.request.urlopen(urllib.request.Request(url + "/api/services/nightly-export/start?wait=5s",
                                                          method="POST"))
            urllib.request.urlopen(urllib.request.Request(url + "/api/services/nightly-export/stop?wait=5s",
                                                          method="POST"))
            time.sleep(args.settle / 2)
            driver.find_element(By.CSS_SELECTOR, '[data-service="queue-consumer"] [data-action="logs"]').click()
            time.sleep(2)
            driver.execute_script("window.scrollTo(0, 0)")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
            print(f"wrote {args.out}")
        finally:
            driver.quit()
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
