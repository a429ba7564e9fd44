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
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue

from .durations import Duration
from .endpoints import (
    check_agent_id,
    check_exchange,
    check_listen,
    check_queue_url,
    check_token,
    is_kafka,
    needs_token,
)
from .limits import Limits, RestartOn
from .sizes import Size

SERVICE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
SERVICE_NAME_MAX = 63
ServiceName = Annotated[str, StringConstraints(pattern=SERVICE_NAME_PATTERN, max_length=SERVICE_NAME_MAX)]


# shlex.split splits an ASCII command with no quote or backslash at spaces, tabs and newlines,
# as str.split() does where the string holds no other whitespace, for a fraction of the time
# (a start with 1000 services splits 1000 commands).
_NOT_PLAIN = frozenset("'\"\\\x0b\x0c\x1c\x1d\x1e\x1f")


def _split_command(value: object) -> object:
    if isinstance(value, str):
        if value.isascii() and _NOT_PLAIN.isdisjoint(value):
            return value.split()
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


def _one_or_list(value: object) -> object:
    return [value] if isinstance(value, str) else value


EnvFiles = Annotated[
    tuple[Annotated[str, StringConstraints(min_length=1), AfterValidator(_no_nul)], ...],
    BeforeValidator(_one_or_list),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}},
            ],
            "description": "dotenv files (a path or a list), relative to the conf.d folder's parent; "
                           "later files override earlier ones and `environment` overrides both",
        }
    ),
]


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
    notify: bool = Field(False, description="readiness only: ready once the service sends READY=1 to the "
                         "NOTIFY_SOCKET it is given (sd_notify); STATUS= becomes its detail")
    initial_delay: Duration = 0.0
    period: Duration = 10.0
    timeout: Duration = 1.0
    success_threshold: StrictInt = Field(1, ge=1)
    failure_threshold: StrictInt = Field(3, ge=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> Probe:
        kinds = [k for k in ("http", "tcp", "exec") if getattr(self, k) is not None] + (["notify"] if self.notify
                                                                                        else [])
        if len(kinds) != 1:
            raise ValueError("a probe needs exactly one of http, tcp, exec, notify")
        return self


class HealthSpec(Model):
    startup: Probe | None = None
    liveness: Probe | None = None
    readiness: Probe | None = None
    watchdog: Duration | None = Field(None, description="restart the service when this long passes without a "
                                      "WATCHDOG=1 on its NOTIFY_SOCKET (sd_notify), as a failed liveness probe does")

    @model_validator(mode="after")
    def _notify_for_readiness(self) -> HealthSpec:
        if self.watchdog is not None and self.watchdog <= 0:
            raise ValueError("watchdog must be longer than 0s")
        for kind in ("startup", "liveness"):
            probe: Probe | None = getattr(self, kind)
            if probe is not None and probe.notify:
                raise ValueError(f"notify is a readiness probe: for {kind}, use watchdog for liveness")
        return self

    @property
    def notifies(self) -> bool:
        """The service is given a NOTIFY_SOCKET."""
        return self.watchdog is not None or (self.readiness is not None and self.readiness.notify)


class Dependency(Model):
    condition: Literal["started", "healthy", "completed_successfully"] = "started"
    restart: bool = Field(False, description="restart this service when the dependency restarts")


class RolloutSpec(Model):
    strategy: Literal["all", "rolling"] = Field("all", description="how a configuration change restarts the "
                                                "replicas: all at once, or rolling (a few at a time, each once its "
                                                "successor is ready)")
    max_unavailable: StrictInt = Field(1, ge=1, description="rolling: replicas replaced at once")
    timeout: Duration = Field(60.0, description="rolling: a new replica not ready this long after it was "
                              "started stops the rollout; the replicas not yet replaced keep running")


def _numeric_id(value: object) -> object:
    # "4242" as a template or a quoted YAML value writes it: an id, as systemd's User= reads it
    # (useradd refuses names made of digits only).
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return value


def _cron(value: str | None) -> str | None:
    if value is None:
        return None
    from .cron import valid

    if not valid(value):
        raise ValueError(f"{value!r} is not a cron expression (five fields: minute hour day month weekday)")
    return value


class ServiceSpec(Model):
    command: Command
    directory: Text | None = None
    environment: Environment = Field(default_factory=dict)
    env_file: EnvFiles = ()
    user: Annotated[Text | StrictInt | None, BeforeValidator(_numeric_id)] = Field(
        None, description="run as this user, by name or id (the agent must run as root)")
    group: Annotated[Text | StrictInt | None, BeforeValidator(_numeric_id)] = Field(
        None, description="run with this group, by name or id (the agent must run as root)")
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
    limits: Limits = Limits()
    restart_on: RestartOn | None = Field(None, description="restart a replica whose process group stays above "
                                         "memory_above (RSS) for `for`")
    rollout: RolloutSpec = RolloutSpec()
    schedule: Annotated[str, AfterValidator(_cron)] | None = Field(
        None, description="run at these times (cron, five fields, local time), e.g. '*/5 * * * *'")
    every: Duration | None = Field(None, description="run this long after the previous run began, e.g. 10m")
    concurrency: Literal["forbid", "replace", "allow"] = Field(
        "forbid", description="a scheduled run due while the previous one still runs: skip it (forbid), stop the "
                              "previous one first (replace), or run both (allow)")

    @field_validator("command")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("command cannot be empty")
        return value

    @model_validator(mode="after")
    def _scheduled_one_shot(self) -> ServiceSpec:
        if self.schedule is not None and self.every is not None:
            raise ValueError("set schedule or every, not both")
        if self.every is not None and self.every <= 0:
            raise ValueError("every must be longer than 0s")
        if self.rollout.timeout <= 0:
            raise ValueError("rollout.timeout must be longer than 0s")
        if (self.schedule is not None or self.every is not None) and self.restart == "always":
            raise ValueError("a scheduled service runs to completion: restart must be never or on-failure")
        return self

    @property
    def scheduled(self) -> bool:
        return self.schedule is not None or self.every is not None


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


# A librdkafka setting as YAML gives it (`linger.ms: 10`, `compression.type: zstd`).
KafkaSetting = StrictStr | StrictInt | StrictFloat | StrictBool
# Set by the agent itself: what its guarantees (one group per agent, commits after the answer,
# an idempotent producer) rest on.
KAFKA_RESERVED = frozenset({"bootstrap.servers", "group.id", "enable.auto.commit", "enable.auto.offset.store",
                            "enable.idempotence", "transactional.id"})


def _kafka_settings(settings: dict[str, KafkaSetting]) -> dict[str, KafkaSetting]:
    reserved = sorted(KAFKA_RESERVED & set(settings))
    if reserved:
        raise ValueError(f"{', '.join(reserved)}: set by the agent, not settable here")
    return settings


KafkaSettings = Annotated[dict[str, KafkaSetting], AfterValidator(_kafka_settings)]


class KafkaOptions(Model):
    """Options of a kafka:// queue; what is not here goes in `consumer` / `producer` as librdkafka names it."""

    security_protocol: Literal["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"] = "plaintext"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = Field(None, description="CA certificate file (PEM) to verify the brokers")
    ssl_certificate_location: str | None = Field(None, description="client certificate file (PEM), for mutual TLS")
    ssl_key_location: str | None = Field(None, description="client private key file (PEM)")
    ssl_key_password: str | None = None
    session_timeout: Duration = Field(10.0, description="consumer group session timeout (session.timeout.ms): "
                                      "how long a vanished agent holds its group; also how long a restarted "
                                      "agent may wait to rejoin")
    heartbeat_interval: Duration = Field(3.0, description="consumer group heartbeat (heartbeat.interval.ms), "
                                         "under a third of session_timeout")
    partitions: StrictInt | None = Field(None, ge=1, description="partitions of the topics the agent creates; "
                                         "default: the broker's num.partitions")
    replication_factor: StrictInt | None = Field(None, ge=1, description="replication factor of the topics the "
                                                 "agent creates; default: the broker's default.replication.factor")
    consumer: KafkaSettings = Field(default_factory=dict, description="librdkafka consumer settings, e.g. "
                                    "{fetch.wait.max.ms: 100}")
    producer: KafkaSettings = Field(default_factory=dict, description="librdkafka producer settings, e.g. "
                                    "{linger.ms: 10, compression.type: zstd}")

    @model_validator(mode="after")
    def _consistent(self) -> KafkaOptions:
        sasl = self.security_protocol.startswith("sasl_")
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise ValueError("sasl_* settings need security_protocol sasl_plaintext or sasl_ssl")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        if self.heartbeat_interval >= self.session_timeout:
            raise ValueError("heartbeat_interval must be shorter than session_timeout")
        if self.session_timeout < 1 or self.heartbeat_interval < 0.1:
            raise ValueError("session_timeout is at least 1s and heartbeat_interval at least 100ms")
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
    kafka: KafkaOptions | None = Field(None, description="with a kafka:// url: security, topics, and the "
                                       "consumer's and producer's librdkafka settings")

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

    @model_validator(mode="after")
    def _kafka_only_with_kafka(self) -> QueueSection:
        if self.kafka is not None and not is_kafka(self.url):
            raise ValueError("kafka: options are for a kafka:// url")
        return self

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
    log_max_bytes: Size = Field(10 * 1024 * 1024, ge=1024, description="a service's log file is rotated "
                                "past this size (bytes, or 10MiB, 1G...)")
    log_backups: StrictInt = Field(3, ge=0)
    log_buffer_lines: StrictInt = Field(1000, ge=0, description="recent lines kept in memory per service and stream")
    log_buffer_bytes: Size = Field(1024 * 1024, ge=0, description="bytes of recent lines kept in memory per "
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
