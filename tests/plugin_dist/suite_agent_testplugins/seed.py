"""The seed's three example plugins, as the seed shows them; only the import lines differ."""
# ruff: noqa: UP006, UP035 - the seed's own spelling, and its own unannotated returns:
# mypy: allow-untyped-defs, allow-incomplete-defs

import os
from typing import Any, Dict

import requests

from suite_agent.plugins import PluginBase, PluginInfo


class MyPlugin(PluginBase):
    def get_info(self) -> PluginInfo:
        return PluginInfo(
            name="my_plugin",
            version="1.0.0",
            description="My custom plugin",
            author="Your Name",
            hooks=["service_start", "service_stop"]
        )

    def on_service_start(self, service_name: str, pid: int):
        # Your custom logic
        print(f"Service {service_name} started!")


class SlackNotifierPlugin(PluginBase):
    def __init__(self):
        super().__init__()
        self.webhook_url = os.getenv("SLACK_WEBHOOK_URL")

    def get_info(self) -> PluginInfo:
        return PluginInfo(
            name="slack_notifier",
            version="1.0.0",
            description="Sends Slack notifications for service events",
            author="Your Name",
            hooks=["service_start", "service_stop", "service_error"]
        )

    def on_service_start(self, service_name: str, pid: int):
        self._send_slack(f"✅ Service '{service_name}' started (PID: {pid})")

    def on_service_stop(self, service_name: str, pid: int):
        self._send_slack(f"⏹️ Service '{service_name}' stopped")

    def on_service_error(self, service_name: str, error: Exception):
        self._send_slack(f"❌ Service '{service_name}' error: {error}")

    def _send_slack(self, message: str):
        if self.webhook_url:
            requests.post(self.webhook_url, json={"text": message})


class CustomMetricsPlugin(PluginBase):
    def get_info(self) -> PluginInfo:
        return PluginInfo(
            name="custom_metrics",
            version="1.0.0",
            description="Adds custom business metrics",
            hooks=["metrics_collect"]
        )

    def on_metrics_collect(self, metrics: Dict[str, Any]) -> Dict[str, Any]:
        # Add custom metrics
        return {
            "requests_per_second": self._calculate_rps(),
            "error_rate": self._calculate_error_rate(),
            "custom_business_metric": 42
        }

    # The seed leaves these two helpers to the reader.
    def _calculate_rps(self) -> float:
        return 12.5

    def _calculate_error_rate(self) -> float:
        return 0.25
