"""`limits` and `restart_on` of a service: resource limits set when it spawns, and the
memory threshold past which it is restarted."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StrictFloat,
    StrictInt,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue

from .durations import Duration
from .sizes import PATTERN as SIZE_PATTERN
from .sizes import Size, parse_size

UNLIMITED = "unlimited"
RLIMITS = ("nofile", "nproc", "core")
"""The limits applied with setrlimit(2) in the child before it execs (RLIMIT_NOFILE, ...)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _pair(value: object) -> object:
    # `nofile: 4096` sets the soft and the hard limit alike, as systemd's LimitNOFILE=4096 does.
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return {"soft": value, "hard": value}
    return value


def _count(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() in (UNLIMITED, "infinity"):
        return UNLIMITED
    return value


def _bytes(value: object) -> object:
    value = _count(value)
    return value if value == UNLIMITED else parse_size(value)


class _OrOne:
    """JSON Schema of an rlimit: the {soft, hard} mapping pydantic describes, or one value for both."""

    def __init__(self, *one: dict[str, Any]) -> None:
        self.one = one

    def __get_pydantic_json_schema__(self, core: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"anyOf": [*self.one, handler(core)]}


_COUNT = ({"type": "integer", "minimum": 0}, {"const": UNLIMITED})
_BYTES = ({"type": "integer", "minimum": 0}, {"type": "string", "pattern": SIZE_PATTERN}, {"const": UNLIMITED})

RlimitCount = Annotated[Annotated[StrictInt, Field(ge=0)] | Literal["unlimited"], BeforeValidator(_count)]
RlimitBytes = Annotated[int | Literal["unlimited"], BeforeValidator(_bytes), WithJsonSchema({"anyOf": list(_BYTES)})]


def _value(limit: int | str) -> float:
    return float("inf") if limit == UNLIMITED else float(limit)


class CountLimit(_Model):
    soft: RlimitCount
    hard: RlimitCount

    @model_validator(mode="after")
    def _soft_below_hard(self) -> CountLimit:
        if _value(self.soft) > _value(self.hard):
            raise ValueError("the soft limit cannot be above the hard limit")
        return self


class SizeLimit(_Model):
    soft: RlimitBytes
    hard: RlimitBytes

    @model_validator(mode="after")
    def _soft_below_hard(self) -> SizeLimit:
        if _value(self.soft) > _value(self.hard):
            raise ValueError("the soft limit cannot be above the hard limit")
        return self


class Limits(_Model):
    nofile: Annotated[CountLimit | None, BeforeValidator(_pair), _OrOne(*_COUNT)] = Field(
        None, description="open files (RLIMIT_NOFILE): a number, `unlimited`, or {soft, hard}")
    nproc: Annotated[CountLimit | None, BeforeValidator(_pair), _OrOne(*_COUNT)] = Field(
        None, description="processes of the service's user (RLIMIT_NPROC): a number, `unlimited`, or {soft, hard}")
    core: Annotated[SizeLimit | None, BeforeValidator(_pair), _OrOne(*_BYTES)] = Field(
        None, description="core dump size (RLIMIT_CORE): 0, a size like 1GiB, `unlimited`, or {soft, hard}")
    memory: Size | None = Field(
        None, description="memory.max of the process group's cgroup (v2), when the agent can make one")
    cpu: StrictFloat | StrictInt | None = Field(
        None, gt=0, le=4096, description="CPUs the process group may use (cgroup v2 cpu.max), e.g. 0.5 or 2")

    @property
    def rlimits(self) -> dict[str, tuple[int | str, int | str]]:
        """The setrlimit ones that are set: name -> (soft, hard)."""
        found: dict[str, tuple[int | str, int | str]] = {}
        for name in RLIMITS:
            limit = getattr(self, name)
            if limit is not None:
                found[name] = (limit.soft, limit.hard)
        return found

    @property
    def cgroup(self) -> bool:
        return self.memory is not None or self.cpu is not None


class RestartOn(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    memory_above: Size = Field(description="resident memory (RSS) of the process group, summed over its processes")
    for_: Duration = Field(0.0, alias="for", description="restart once it stays above that long")
