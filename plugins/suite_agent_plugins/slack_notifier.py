"""Posts service start, stop and error messages to a Slack incoming webhook.

Options: `webhook_url` (else the agent's `SLACK_WEBHOOK_URL` environment variable), `notify`
(any of start, stop, error; default all three), `timeout` (seconds per post, default 3),
`prefix` (put before every message, e.g. the host name).
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from suite_agent import __version__
from suite_agent.plugins import PluginBase, PluginInfo

from ._options import names, number, text

EVENTS = ("start", "stop", "error")


class SlackNotifierPlugin(PluginBase):
    def get_info(self) -> PluginInfo:
        return PluginInfo(name="slack_notifier", version=__version__,
                          description="Sends Slack notifications for service events",
                          author="suite-agent", hooks=["service_start", "service_stop", "service_error"])

    def validate_options(self, options: dict[str, Any]) -> None:
        url = text(options, "webhook_url") or os.environ.get("SLACK_WEBHOOK_URL")
        if not url:
            raise ValueError("webhook_url is required (or SLACK_WEBHOOK_URL in the agent's environment)")
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise ValueError(f"webhook_url must be an http(s) URL, not {url!r}")
        self.webhook_url = url
        self.notify = names(options, "notify", EVENTS)
        self.timeout = number(options, "timeout", 3.0, minimum=0.1)
        self.prefix = text(options, "prefix", "") or ""

    def on_service_start(self, service_name: str, pid: int) -> None:
        if "start" in self.notify:
            self._send_slack(f"✅ Service '{service_name}' started (PID: {pid})")

    def on_service_stop(self, service_name: str, pid: int) -> None:
        if "stop" in self.notify:
            self._send_slack(f"⏹️ Service '{service_name}' stopped")

    def on_service_error(self, service_name: str, error: Exception) -> None:
        if "error" in self.notify:
            self._send_slack(f"❌ Service '{service_name}' error: {error}")

    def _send_slack(self, message: str) -> None:
        body = json.dumps({"text": self.prefix + message}).encode()
        request = urllib.request.Request(self.webhook_url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        # A refused post raises HTTPError: the agent logs it and reports a plugin_error.
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            response.read()
