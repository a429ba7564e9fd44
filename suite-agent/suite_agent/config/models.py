"""The shape of a conf.d file: pydantic models, the single source of the JSON Schemas."""

from __future__ import annotations

import shlex
import signal
import socket
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StrictFloat,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue

from .durations import Duration
from .endpoints import check_agent_id, check_exchange, check_listen, check_queue_url, check_token, needs_token

SERVICE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
SERVICE_NAME_MAX = 63
ServiceName = Annotated[str, StringConstraints(pattern=SERVICE_NAME_PATTERN, max_length=SERVICE_NAME_MAX)]


def _split_command(value: object) -> object:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split command: {exc}") from exc
    return value


def _no_nul(value: str) -> str:
    # The kernel takes arguments, paths and names as C strings: a NUL would cut them short.
    if "\x00" in value:
        raise ValueError("cannot contain a NUL character")
    return value


def _env_name(value: str) -> str:
    if not value or "=" in value or "\x00" in value:
        raise ValueError("an environment variable name cannot be empty or contain '=' or a NUL character")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]


def _stringify_env(value: object) -> object:
    # YAML turns PORT: 8000 into an int; the process environment only holds strings.
    if isinstance(value, dict):
        return {
            k: ("true" if v is True else "false" if v is False else str(v))
            if isinstance(v, (int, float, bool))
            else v
            for k, v in value.items()
        }
    return value


Environment = Annotated[
    dict[Annotated[str, AfterValidator(_env_name)], Text],
    BeforeValidator(_stringify_env),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": "^[^=\u0000]+$"},
            "additionalProperties": {"type": ["string", "number", "boolean"]},
            "description": "numbers and booleans are passed to the process as strings",
        }
    ),
]


def _empty_options(value: object) -> object:
    # `plugins: {audit_log: }` reads as None: a plugin turned on with no options.
    if isinstance(value, dict):
        return {name: {} if options is None else options for name, options in value.items()}
    return value


def _depends_list(value: object) -> object:
    if isinstance(value, list):
        if not all(isinstance(name, str) for name in value):
            raise ValueError("depends_on is a list of service names, or a mapping name -> {condition: ...}")
        return {name: {} for name in value}
    return value


class _OrListOfNames:
    """JSON Schema of depends_on: the mapping pydantic describes, or the list form `[db, cache]`."""

    def __get_pydantic_json_schema__(self, core: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        names = {"type": "string", "pattern": SERVICE_NAME_PATTERN, "maxLength": SERVICE_NAME_MAX}
        return {"anyOf": [handler(core), {"type": "array", "items": names}]}


Command = Annotated[
    tuple[Text, ...],
    BeforeValidator(_split_command),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
                {"type": "string", "minLength": 1},
            ],
            "description": "exec form (list) or a string split like a shell; no shell is run",
        }
    ),
]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StopSpec(Model):
    signal: str = Field("TERM", description="signal sent to the process group: TERM, INT, QUIT, HUP, KILL, USR1, USR2")
    timeout: Duration = Field(10.0, description="wait this long before SIGKILL")

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if not hasattr(signal.Signals, name):
            raise ValueError(f"unknown signal {value!r}")
        return name[3:]

    @property
    def signum(self) -> int:
        return int(signal.Signals["SIG" + self.signal])


class BackoffSpec(Model):
    initial: Duration = Field(0.25, description="delay before the second restart in a row")
    factor: StrictFloat = Field(2.0, ge=1.0)
    max: Duration = Field(30.0, description="cap on the delay")
    reset_after: Duration = Field(10.0, description="a run this long counts as stable and resets the backoff")


class StartLimitSpec(Model):
    burst: StrictInt = Field(5, ge=1, description="restarts allowed within interval before the service goes fatal")
    interval: Duration = 10.0


class HttpProbe(Model):
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    status: StrictInt | None = Field(None, description="expected status; default: any 200-399")


class TcpProbe(Model):
    host: str = "127.0.0.1"
    port: StrictInt = Field(ge=1, le=65535)


class ExecProbe(Model):
    command: Command


class Probe(Model):
    http: HttpProbe | None = None
    tcp: TcpProbe | None = None
    exec: ExecProbe | None = None
    initial_delay: Duration = 0.0
    period: Duration = 10.0
    timeout: Duration = 1.0
    success_threshold: StrictInt = Field(1, ge=1)
    failure_threshold: StrictInt = Field(3, ge=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> Probe:
        kinds = [k for k in ("http", "tcp", "exec") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a probe needs exactly one of http, tcp, exec")
        return self


class HealthSpec(Model):
    startup: Probe | None = None
    liveness: Probe | None = None
    readiness: Probe | None = None


class Dependency(Model):
    condition: Literal["started", "healthy", "completed_successfully"] = "started"
    restart: bool = Field(False, description="restart this service when the dependency restarts")


class ServiceSpec(Model):
    command: Command
    directory: Text | None = None
    environment: Environment = Field(default_factory=dict)
    user: Text | StrictInt | None = Field(None, description="run as this user (the agent must run as root)")
    group: Text | StrictInt | None = Field(None, description="run with this group (the agent must run as root)")
    autostart: bool = True
    restart: Literal["always", "on-failure", "never"] = "on-failure"
    success_codes: tuple[StrictInt, ...] = Field((0,), description="exit codes that count as success")
    replicas: StrictInt = Field(1, ge=0, le=1000)
    depends_on: Annotated[dict[ServiceName, Dependency], BeforeValidator(_depends_list), _OrListOfNames()] = Field(
        default_factory=dict
    )
    stop: StopSpec = StopSpec()
    backoff: BackoffSpec = BackoffSpec()
    start_limit: StartLimitSpec = StartLimitSpec()
    health: HealthSpec = HealthSpec()
    ready_after: Duration = Field(0.0, description="with no readiness probe: ready after running this long")

    @field_validator("command")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("command cannot be empty")
        return value


class Webhook(Model):
    url: str
    events: list[str] = Field(default_factory=list, description="event types to send; empty: all")
    secret: str | None = None


class ApiSection(Model):
    listen: str = "127.0.0.1:8080"
    token: str | None = None
    token_file: str | None = None
    webhooks: list[Webhook] = Field(default_factory=list)

    _listen = field_validator("listen")(check_listen)
    _token = field_validator("token")(check_token)

    @model_validator(mode="after")
    def _refuse_what_cannot_serve(self) -> ApiSection:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        if self.token is None and self.token_file is None and needs_token(self.listen):
            raise ValueError(
                f"listen {self.listen!r} is not a loopback address: set token or token_file, "
                "or listen on 127.0.0.1"
            )
        return self


LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_PATTERN, max_length=63)]
LabelValue = Annotated[str, StringConstraints(max_length=253), AfterValidator(_no_nul)]


class QueueSection(Model):
    url: str
    exchange: str = "suite_events"
    agent_id: str = Field(default_factory=socket.gethostname)
    content_type: Literal["json", "cloudevents"] = Field(
        "json", description="events' content type: application/json (any kombu consumer decodes it) "
                            "or application/cloudevents+json; the body is the same CloudEvents JSON")

    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, description="this agent's labels; a command's selector picks agents by them")
    heartbeat: Duration = Field(10.0, description="how often suite.agent_heartbeat is published (0: never)")
    command_key_file: str | None = Field(
        None, description="a file holding the fleet key: only commands signed with it are carried out "
                          "(relative to the conf.d folder's parent)")
    command_max_age: Duration = Field(
        60.0, description="a signed command older (or further in the future) than this is refused")

    _url = field_validator("url")(check_queue_url)
    _exchange = field_validator("exchange")(check_exchange)
    _agent_id = field_validator("agent_id")(check_agent_id)

    @field_validator("heartbeat")
    @classmethod
    def _heartbeat(cls, value: float) -> float:
        if 0 < value < 0.1:
            raise ValueError("use 0 (no heartbeat) or at least 100ms")
        return value


class AgentSection(Model):
    log_dir: str = Field("logs", description="service logs; relative paths are relative to the conf.d folder's parent")
    state_dir: str = Field(".suite-agent", description="where the keeper (the parent of every service) and the "
                           "agent keep their state: socket, locks, journal, saved intents; relative paths are "
                           "relative to the conf.d folder's parent. Read when the agent starts")
    log_max_bytes: StrictInt = Field(10 * 1024 * 1024, ge=1024)
    log_backups: StrictInt = Field(3, ge=0)
    log_buffer_lines: StrictInt = Field(1000, ge=0, description="recent lines kept in memory per service and stream")
    log_buffer_bytes: StrictInt = Field(1024 * 1024, ge=0, description="bytes of recent lines kept in memory per "
                                        "service and stream; a line is kept cut to 64 KiB (the log files keep "
                                        "everything)")


class ConfigFile(Model):
    """One file of conf.d/."""

    services: dict[ServiceName, ServiceSpec] = Field(default_factory=dict)
    api: ApiSection | None = None
    queue: QueueSection | None = None
    plugins: Annotated[dict[str, dict[str, Any]], BeforeValidator(_empty_options)] | None = None
    agent: AgentSection | None = None


SINGLETON_SECTIONS = ("api", "queue", "plugins", "agent")
