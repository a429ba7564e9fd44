"""What plugins return from on_config_load is checked like a file before it is used."""

from __future__ import annotations

from pathlib import Path

import pytest

from suite_agent.config.store import ConfigStore, Declared
from suite_agent.config.transform import PLUGIN_ORIGIN, apply_result, as_file


@pytest.fixture
def declared(conf_dir: Path) -> Declared:
    (conf_dir / "a.yaml").write_text(
        "services:\n  web: {command: [serve], environment: {TOKEN: '${secret}'}, depends_on: [db]}\n"
        "  db: {command: [db]}\nplugins: {audit_log: {path: /tmp/x}}\n")
    return ConfigStore(conf_dir).load()


def test_round_trip_changes_nothing(declared: Declared) -> None:
    assert apply_result(declared, as_file(declared)) == declared


def test_a_plugin_may_fill_in_a_secret(declared: Declared) -> None:
    config = as_file(declared)
    config["services"]["web"]["environment"]["TOKEN"] = "s3cret"
    result = apply_result(declared, config)
    assert result.services["web"].environment == {"TOKEN": "s3cret"}
    assert result.services["db"] == declared.services["db"]
    assert result.origins["web"] == declared.origins["web"]


def test_a_service_a_plugin_adds_says_where_it_comes_from(declared: Declared) -> None:
    config = as_file(declared)
    config["services"]["extra"] = {"command": ["x"]}
    assert apply_result(declared, config).origins["extra"] == PLUGIN_ORIGIN


@pytest.mark.parametrize(("mangle", "message"), [
    (lambda c: c["services"]["web"].update(restart="sometimes"), "services.web.restart"),
    (lambda c: c["services"]["web"].update(bogus=1), "services.web.bogus"),
    (lambda c: c["services"]["web"].update(depends_on={"ghost": {}}), "unknown service 'ghost'"),
    (lambda c: c["services"]["db"].update(depends_on={"web": {}}), "dependency cycle"),
])
def test_an_invalid_result_is_refused_with_the_reason(declared: Declared, mangle: object, message: str) -> None:
    config = as_file(declared)
    mangle(config)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        apply_result(declared, config)


def test_a_result_that_is_not_a_mapping_is_refused(declared: Declared) -> None:
    with pytest.raises(ValueError, match="must return a mapping, not list"):
        apply_result(declared, [])


def test_plugins_cannot_turn_plugins_off(declared: Declared) -> None:
    config = as_file(declared)
    del config["plugins"]
    assert apply_result(declared, config).plugins == declared.plugins


def test_a_plugin_named_with_no_options_gets_empty_options(conf_dir: Path) -> None:
    (conf_dir / "p.yaml").write_text("plugins:\n  audit_log:\n")
    declared = ConfigStore(conf_dir).load()
    assert declared.rejected == {} and declared.plugins == {"audit_log": {}}
