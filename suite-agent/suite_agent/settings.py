"""The agent's own settings: command-line flags, then SUITE_AGENT_* variables (names matched
without regard to case), then defaults.

Read here by hand, as client_settings.py reads the client commands': pydantic-settings imports
asyncio and ssl (for command-line apps of its own), 3.8 MB of the running agent's resident
memory and about 0.2 s of every start (0.29-0.31 s to import the CLI with its settings, 0.10 s
now), for nine flat fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

from suite_agent.client_settings import DEFAULT_URL, ENV_PREFIX, variables

CGROUPS = ("auto", "off")  # off: track service processes without cgroups


class Settings:
    """A plain class, like ClientSettings: `FIELDS` names what flags and variables may set."""

    FIELDS = ("conf_dir", "url", "token", "log_level", "cgroups", "broker", "exchange", "command_key_file",
              "kafka_config")
    __slots__ = FIELDS

    def __init__(self, conf_dir: Path | str = Path("conf.d"), url: str = DEFAULT_URL, token: str | None = None,
                 log_level: str = "INFO", cgroups: str = "auto", broker: str | None = None,
                 exchange: str = "suite_events", command_key_file: Path | str | None = None,
                 kafka_config: Path | str | None = None) -> None:
        if cgroups not in CGROUPS:
            raise ValueError(f"{ENV_PREFIX}CGROUPS: {cgroups!r} is not one of "
                             f"{', '.join(CGROUPS)}")
        self.conf_dir = Path(conf_dir)
        self.url = url
        self.token = token
        self.log_level = log_level
        self.cgroups = cast(Literal["auto", "off"], cgroups)
        # suite-agent fleet: the broker the agents use, their exchange, the fleet key that signs
        # commands, and on Kafka the security settings (a file with the keys of queue.kafka)
        self.broker = broker
        self.exchange = exchange
        self.command_key_file = Path(command_key_file) if command_key_file is not None else None
        self.kafka_config = Path(kafka_config) if kafka_config is not None else None

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
        """The flags given (None: not given), else the variables, else the defaults."""
        env = variables(environ)
        values: dict[str, Any] = {}
        for name in cls.FIELDS:
            flag = flags.get(name)
            value = flag if flag is not None else env.get(f"{ENV_PREFIX}{name.upper()}")
            if value is not None:
                values[name] = value
        return cls(**values)
