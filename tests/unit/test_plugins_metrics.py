"""What on_metrics_collect may return, what becomes of it in /metrics, and the agent's own plugin
options: pure functions, no processes."""

from __future__ import annotations

import pytest

from suite_agent.parts.plugins.metrics import PluginResultError, Value, collect, lint
from suite_agent.parts.plugins.options import (
    OptionError,
    PluginSettings,
    parse_size,
    split_options,
)


def test_the_seeds_flat_form_becomes_gauges() -> None:
    got = collect("custom_metrics", {"requests_per_second": 12.5, "error_rate": 0.25, "up": True,
                                     "custom_business_metric": 42})
    assert got.samples == (
        Value("suite_agent_plugin_custom_metrics_requests_per_second", (), 12.5, "gauge"),
        Value("suite_agent_plugin_custom_metrics_error_rate", (), 0.25, "gauge"),
        Value("suite_agent_plugin_custom_metrics_up", (), 1.0, "gauge"),
        Value("suite_agent_plugin_custom_metrics_custom_business_metric", (), 42.0, "gauge"),
    )
    assert got.problems == {}


def test_labelled_values_make_one_metric_and_total_makes_a_counter() -> None:
    got = collect("crash_tracker", {"crashes_total": [({"service": "web"}, 4), [{"service": "db"}, 1]],
                                    "queueDepth": [({"queueName": "mail"}, 3)]})
    assert got.samples == (
        Value("suite_agent_plugin_crash_tracker_crashes_total", (("service", "web"),), 4.0, "counter"),
        Value("suite_agent_plugin_crash_tracker_crashes_total", (("service", "db"),), 1.0, "counter"),
        Value("suite_agent_plugin_crash_tracker_queue_depth", (("queue_name", "mail"),), 3.0, "gauge"),
    )


@pytest.mark.parametrize(("plugin", "key", "why"), [
    ("p", "queue_gauge", "metric name should not include type 'gauge'"),
    ("p", "requests_count", 'non-histogram and non-summary metrics should not have "_count" suffix'),
    ("p", "latency_sum", 'non-histogram and non-summary metrics should not have "_sum" suffix'),
    ("p", "latency_bucket", 'non-histogram metrics should not have "_bucket" suffix'),
    ("p", "latency_ms", "metric names should not contain abbreviated units"),
    ("p", "uptime_minutes", 'use base unit "seconds" instead of "minutes"'),
    ("p", "heap_kilobytes", 'use base unit "bytes" instead of "kilobytes"'),
])
def test_names_promtool_refuses_are_left_out_with_its_reason(plugin: str, key: str, why: str) -> None:
    got = collect(plugin, {key: 1, "fine_seconds": 2})
    assert [s.name for s in got.samples] == [f"suite_agent_plugin_{plugin}_fine_seconds"]
    assert why in got.problems[key]


def test_a_plugin_whose_name_holds_a_metric_type_exports_nothing() -> None:
    """The README's old example, `crash_counter`, with one gauge per service."""
    got = collect("crash_counter", {"crashes_web": 4, "crashes_db": 1})
    assert got.samples == ()
    assert got.problems["crashes_web"] == ("becomes suite_agent_plugin_crash_counter_crashes_web, and metric "
                                           "name should not include type 'counter'")


@pytest.mark.parametrize(("value", "why"), [
    ("blue", "is str, not a number or a list of (labels, number) pairs"),
    ([("web", 1)], "not a (labels, number) pair"),
    ([({"service": "web"}, "x")], "not a (labels, number) pair"),
    ([({"le": "1"}, 1)], 'non-histogram metrics should not have "le" label'),
    ([({"quantile": "1"}, 1)], 'non-summary metrics should not have "quantile" label'),
    ([({"1st": "x"}, 1)], "label '1st' is not a Prometheus label name"),
    ([({"service": "web"}, 1), ({"service": "web"}, 2)], "has the same labels twice"),
])
def test_values_that_are_not_numbers_or_labelled_numbers_are_left_out(value: object, why: str) -> None:
    got = collect("p", {"key": value, "ok": 1})
    assert [s.name for s in got.samples] == ["suite_agent_plugin_p_ok"]
    assert why in got.problems["key"]


def test_a_name_the_agent_exports_itself_is_left_out() -> None:
    got = collect("hook", {"calls_total": 1}, taken=frozenset({"suite_agent_plugin_hook_calls_total"}))
    assert got.samples == () and "the agent exports itself" in got.problems["calls_total"]


def test_a_result_that_is_no_dict_is_an_error() -> None:
    with pytest.raises(PluginResultError, match="on_metrics_collect returned list, not a dict"):
        collect("p", [1, 2])


def test_the_agents_own_plugin_metrics_pass_promtools_rules() -> None:
    for name, kind, labels in [
        ("suite_agent_plugins_loaded", "gauge", []),
        ("suite_agent_plugin_hook_calls_total", "counter", ["hook", "plugin"]),
        ("suite_agent_plugin_errors_total", "counter", ["hook", "plugin"]),
        ("suite_agent_plugin_dropped_calls_total", "counter", ["plugin"]),
        ("suite_agent_plugin_lost_calls_total", "counter", ["plugin"]),
        ("suite_agent_plugin_stuck_threads", "gauge", ["plugin"]),
        ("suite_agent_plugin_process_restarts_total", "counter", ["plugin"]),
        ("suite_agent_plugin_process_resident_memory_bytes", "gauge", ["plugin"]),
    ]:
        assert lint(name, kind, labels) == [], name


@pytest.mark.parametrize(("text", "size"), [
    (1048576000, 1048576000), ("512M", 512 * 2**20), ("1.5G", 3 * 2**29), ("64MiB", 64 * 2**20),
    ("2gb", 2 * 2**30), ("none", None), (None, None),
])
def test_sizes(text: object, size: int | None) -> None:
    assert parse_size(text) == size


def test_the_agents_options_are_taken_out_and_checked() -> None:
    settings, mine = split_options({"_timeout": "250ms", "_max_memory": "64M", "colour": "red"})
    assert settings == PluginSettings(timeout=0.25, max_memory=64 * 2**20) and mine == {"colour": "red"}
    assert split_options({})[0] == PluginSettings(timeout=5.0, max_memory=2**30)
    assert split_options({"_max_memory": "none"})[0].max_memory is None
    with pytest.raises(OptionError, match=r"_max_memory must be at least 32M"):
        split_options({"_max_memory": "1M"})
    with pytest.raises(OptionError, match=r"_max_memory: 'lots' is not a size"):
        split_options({"_max_memory": "lots"})
