"""The seed's custom-metrics example: a template to copy when writing a plugin.

Its `on_metrics_collect` values show up in /metrics as `suite_agent_plugin_example_<name>`
gauges (the plugin's name in conf.d, then the key) and in the JSON metrics. Option:
`business_metric` (the number reported as custom_business_metric, default 42).
"""

from __future__ import annotations

from typing import Any

from suite_agent.plugins import PluginBase, PluginInfo


class CustomMetricsPlugin(PluginBase):
    def __init__(self) -> None:
        super().__init__()
        # Hooks run one at a time on the plugin's own worker thread: these need no lock
        # unless threads of your own touch them too.
        self._starts = 0
        self._errors = 0

    def get_info(self) -> PluginInfo:
        return PluginInfo(
            name="custom_metrics",
            version="1.0.0",
            description="Adds custom business metrics",
            hooks=["metrics_collect", "service_start", "service_error"],
        )

    def validate_options(self, options: dict[str, Any]) -> None:
        value = options.get("business_metric", 42)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"business_metric must be a number, not {value!r}")

    def on_service_start(self, service_name: str, pid: int) -> None:
        self._starts += 1

    def on_service_error(self, service_name: str, error: Exception) -> None:
        self._errors += 1

    def on_metrics_collect(self, metrics: dict[str, Any]) -> dict[str, Any]:
        # Add custom metrics
        return {
            "requests_per_second": self._calculate_rps(),
            "error_rate": self._calculate_error_rate(),
            "custom_business_metric": self.options.get("business_metric", 42),
        }

    def _calculate_rps(self) -> float:
        # A stub: read your own services' counters here (an HTTP stats page, a file, ...).
        return 0.0

    def _calculate_error_rate(self) -> float:
        """Service errors per process start since the plugin was loaded."""
        return self._errors / self._starts if self._starts else 0.0
