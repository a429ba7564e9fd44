"""The agent's own settings: command-line flags, then SUITE_AGENT_* variables, then defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SUITE_AGENT_", extra="ignore")

    conf_dir: Path = Path("conf.d")
    url: str = "http://127.0.0.1:8080"
    token: str | None = None
    log_level: str = "INFO"
    cgroups: Literal["auto", "off"] = "auto"  # off: track service processes without cgroups
    # suite-agent fleet: the broker the agents use, their exchange, the fleet key that signs commands,
    # and on Kafka the security settings (a file with the keys of queue.kafka)
    broker: str | None = None
    exchange: str = "suite_events"
    command_key_file: Path | None = None
    kafka_config: Path | None = None
