"""The keeper's requests, one small handler per op; docs/keeper.md describes each.

A handler checks the whole request before it changes anything, so a malformed one is answered
with EINVAL and leaves the keeper as it was. No handler decides anything: each does what it is
told or says why it cannot (an errno name and a message).
"""

from __future__ import annotations

import errno
import os

from . import clone
from .children import check_instance
from .diag import say
from .pipes import STREAMS
from .protocol import VERSION, BadRequest, error_reply
from .rlimits import check as check_rlimits

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable
    from typing import Any

    from .connections import Connection
    from .server import Keeper

    Request = dict[str, Any]
    Reply = dict[str, Any]
else:
    # The C module: signal.py wraps it in enums, and enum costs the keeper half a megabyte.
    import _signal as signal

__all__ = ["MAX_REPLY_TEXT", "OPS", "dispatch"]

MAX_REPLY_TEXT = 2 * 1024 * 1024
"""Bytes of line text at most in one `logs` or `follow` reply (the oldest lines are left out)."""

DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_LOG_BACKUPS = 3
DEFAULT_BUFFER_LINES = 1000
DEFAULT_BUFFER_BYTES = 1024 * 1024
MAX_ENV_REFS = 8192
"""Environments a connection may keep by env_ref (the brain starts over well before)."""


def dispatch(keeper: Keeper, conn: Connection, message: object) -> Reply:
    if not isinstance(message, dict):
        return error_reply(None, BadRequest("a request is a JSON object"))
    request_id = message.get("id")
    op = message.get("op")
    handler = OPS.get(op) if isinstance(op, str) else None
    if handler is None:
        return error_reply(request_id, BadRequest(f"unknown op {op!r}"))
    try:
        reply = handler(keeper, conn, message)
    except (OSError, ValueError, TypeError) as exc:
        return error_reply(request_id, exc)
    except Exception as exc:
        say(f"error in {op}: {exc!r}")
        return error_reply(request_id, OSError(errno.EIO, f"keeper error in {op}: {exc!r}"))
    return {"id": request_id, "ok": True, **reply}


def hello(keeper: Keeper, conn: Connection, request: Request) -> Reply:
    conn.brain = _bool(request, "brain", False)
    return {"version": VERSION, "pid": keeper.pid, "start_time": keeper.start_time,
            "started_at": keeper.started_at, "state_dir": keeper.state_dir,
            "subreaper": keeper.subreaper, "dropped_clients": keeper.dropped_clients,
            "last_seq": keeper.pipes.seq, "terminate_pending": keeper.terminate_pending,
            "shutting_down": keeper.shutting_down, "into_cgroup": clone.available(),
            "native_spawn": clone.native(), "env_refs": True,
            "failing_logs": keeper.pipes.failing()}


def spawn(keeper: Keeper, conn: Connection, request: Request) -> Reply:
    # The environment first: one sent with its ref is kept even when the rest is refused.
    env = _spawn_env(conn, request)
    instance = check_instance(request.get("instance"))
    argv = _argv(request.get("argv"))
    cwd = _optional_str(request, "cwd")
    if cwd is not None and not os.path.isabs(cwd):
        raise BadRequest(f"cwd must be an absolute path, not {cwd!r}")
    user = _account(request, "user")
    group = _account(request, "group")
    files = {name: _log(request, name) for name in STREAMS}
    max_lines, max_text = _buffer(request)
    rlimits = check_rlimits(request.get("rlimits"))
    joins = _optional_str(request, "cgroup")
    if joins is not None and not os.path.isabs(joins):
        raise BadRequest(f"cgroup must be an absolute path, not {joins!r}")
    into = _optional_str(request, "into")
    mark = _optional_str(request, "mark")
    if into is not None and (not os.path.isabs(into) or joins is not None or (
            (user is not None or group is not None) and not clone.native())):
        raise BadRequest(f"into must be an absolute path, without cgroup (and without user or "
                         f"group unless the keeper's hello says native_spawn), not {into!r}")
    if keeper.shutting_down or keeper.stopping:
        raise OSError(errno.ESHUTDOWN, "the keeper is shutting down")
    # The child's stdin is the cgroup's cgroup.procs, opened here: writing "0" to it moves the
    # child in before it execs the service (Linux 5.16+ checks the opener's rights, not the
    # child's, so a child already switched to another user can still do it).
    procs = None if joins is None else os.open(os.path.join(joins, "cgroup.procs"),
                                                 os.O_WRONLY | os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        child = keeper.children.spawn(instance, argv, cwd, env, user, group, out_w, err_w, procs,
                                      rlimits, into, mark)
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
        if procs is not None:
            os.close(procs)
    keeper.childless = False
    keeper.watch_exit(child)
    unwatched = {"stdout": out_r, "stderr": err_r}
    try:
        for name in STREAMS:
            stream = keeper.pipes.stream(instance, name, *files[name], max_lines, max_text)
            pipe = keeper.pipes.attach(stream, unwatched[name])
            del unwatched[name]
            try:
                keeper.add_pipe(pipe)
            except BaseException:
                keeper.pipes.close(pipe)
                raise
    except BaseException:
        # A child whose output nobody would read must not run on: the brain is told the spawn
        # failed, and sees its exit as for any other.
        for fd in unwatched.values():
            os.close(fd)
        keeper.children.signal(instance, signal.SIGKILL)
        raise
    keeper.journal_spawn(child)
    return {"pid": child.pid, "pgid": child.pgid, "start_time": child.start_time,
            "spawned_at": child.spawned_at}


def signal_(keeper: Keeper, conn: Connection, request: Request) -> Reply:
    instance = check_instance(request.get("instance"))
    signum = _signal(request.get("signal"))
    pid = _optional_int(request, "pid")
    keeper.reap()  # what has ended but waits to be reaped is not a group member to signal
    return {"delivered": keeper.children.signal(instance, signum, pid)}


def inventory(keeper: Keeper, conn: Connection, request: Request) -> Reply:
    keeper.reap()  # exits the kernel has and the loop has not taken in yet count
    children = keeper.children
    return {
        "instances": [{**c.record(), "alive": c.alive, "status": c.status,
                       "group_alive": c.alive or children.group_alive(c)}
                      for c in children.by_instance.values()],
        "exits": [e.as_dict() for e in children.exits.values()],
        "last_seq": keeper.pipes.seq,
        "terminate_pending": keeper.terminate_pending,
        "shutting_down": keeper.shutting_down,
    }


def ack(keeper: Keeper, conn: Connection, request: Request) -> Reply:
    ids = request.get("exits")
    if not isinstance(ids, list) or not all(type(i) is int for i in ids):
        raise BadRequest("exits must be a list of exit ids")
    return {"acked": keeper.children.ack(ids)}


def logs(keeper: Keeper, conn: Connection, request: Request) -> Reply:
    instances = _instances(request)
    streams = _streams(request)
    count = _int(request, "lines", 100)
    since = _int(request, "since", 0)
    found, missed = keeper.pipes.recent(
        keeper.pipes.instances() if instances is None else instances, streams, count, since)
    return _lines_reply(keeper, found, missed)


def follow(keeper: Keeper, conn: Connection, request: Request) -> Reply:
    instances = _instances(request)
    since = _optional_int(request, "since")
    conn.follow_all = instances is None
    conn.follow = set(instances or ())
    if since is None:
        return {"lines": [], "last_seq": keeper.pipes.seq, "missed": False}
    found, missed = keeper.pipes.recent(
        keeper.pipes.instances() if instances is None else instances, STREAMS, 1 << 30, since)
    return _lines_reply(keeper, found, missed)


def unfollow(keeper: Keeper, conn: Connection, request: Request) -> Reply:
    conn.follow_all = False
    conn.follow = set()
    return {}


def forget(keeper: Keeper, conn: Connection, request: Request) -> Reply:
    instance = check_instance(request.get("instance"))
    known = instance in keeper.children.by_instance
    if known:
        keeper.children.forget(instance)  # EBUSY while its process runs
    elif instance not in keeper.pipes.instances():
        raise ProcessLookupError(errno.ESRCH, f"no instance {instance}")
    keeper.pipes.forget(instance)
    keeper.journal_forget(instance)
    return {}


def reopen(keeper: Keeper, conn: Connection, request: Request) -> Reply:
    paths, failed = keeper.pipes.reopen()
    return {"files": len(paths), "paths": paths,
            "failed": [{"path": path, "error": problem} for path, problem in failed]}


def shutdown(keeper: Keeper, conn: Connection, request: Request) -> Reply:
    keeper.shutting_down = True
    return {"children": len(keeper.children.by_pid)}


OPS: dict[str, Callable[[Keeper, Connection, Request], Reply]] = {
    "hello": hello,
    "spawn": spawn,
    "signal": signal_,
    "inventory": inventory,
    "ack": ack,
    "logs": logs,
    "follow": follow,
    "unfollow": unfollow,
    "forget": forget,
    "reopen": reopen,
    "shutdown": shutdown,
}


# -- checking requests -----------------------------------------------------------------------
def _lines_reply(keeper: Keeper, found: list[tuple[int, float, str, str, str]],
                 missed: bool) -> Reply:
    total = 0
    first = len(found)
    while first > 0 and total + len(found[first - 1][4]) <= MAX_REPLY_TEXT:
        first -= 1
        total += len(found[first][4])
    return {"lines": [list(line) for line in found[first:]], "last_seq": keeper.pipes.seq,
            "missed": missed, "truncated": first > 0}


def _bool(request: Request, key: str, default: bool) -> bool:
    value = request.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false, not {value!r}")
    return value


def _int(request: Request, key: str, default: int, minimum: int = 0) -> int:
    value = request.get(key, default)
    if type(value) is not int or value < minimum:
        raise BadRequest(f"{key} must be an integer >= {minimum}, not {value!r}")
    return value


def _optional_int(request: Request, key: str) -> int | None:
    value = request.get(key)
    return None if value is None else _int(request, key, 0)


def _optional_str(request: Request, key: str) -> str | None:
    value = request.get(key)
    if value is not None and (not isinstance(value, str) or not value or "\0" in value):
        raise BadRequest(f"{key} must be a non-empty string, not {value!r}")
    return value


def _argv(value: object) -> list[str]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(a, str) and "\0" not in a for a in value) or not value[0]):
        raise BadRequest(f"argv must be a non-empty list of strings, not {value!r}")
    return value


def _spawn_env(conn: Connection, request: Request) -> dict[str, str]:
    """A spawn's environment: `env`; or, with `env_ref`, the one sent before under that name
    on this connection (`env` with it sends it, and `env_reset` forgets the others first), so
    that a respawn neither sends nor reads it again; `env_add` on top of either."""
    ref = request.get("env_ref")
    if ref is None:
        env = _env(request.get("env"))
    elif not isinstance(ref, str):
        raise BadRequest("env_ref must be a string")
    elif "env" in request:
        if _bool(request, "env_reset", False):
            conn.envs.clear()
        if ref not in conn.envs and len(conn.envs) >= MAX_ENV_REFS:
            raise BadRequest(f"more than {MAX_ENV_REFS} env_refs: send env_reset")
        env = conn.envs[ref] = _env(request["env"])
    else:
        found = conn.envs.get(ref)
        if found is None:
            raise OSError(errno.ESTALE, f"no env_ref {ref!r} on this connection: send env with it")
        env = found
    add = request.get("env_add")
    return env if add is None else {**env, **_env(add)}


def _env(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and k and "=" not in k and "\0" not in k
            and isinstance(v, str) and "\0" not in v for k, v in value.items()):
        raise BadRequest("env must be an object of NAME: value strings")
    return value


def _account(request: Request, key: str) -> str | int | None:
    value = request.get(key)
    if value is None or (isinstance(value, str) and value) or (type(value) is int and value >= 0):
        return value
    raise BadRequest(f"{key} must be a name or a number, not {value!r}")


def _log(request: Request, key: str) -> tuple[str | None, int, int]:
    spec = request.get(key)
    if spec is None:
        return None, 0, 0
    if not isinstance(spec, dict):
        raise BadRequest(f"{key} must be an object with path, max_bytes and backups, or null")
    path = _optional_str(spec, "path")
    if path is not None and not os.path.isabs(path):
        raise BadRequest(f"{key}.path must be an absolute path, not {path!r}")
    return (path, _int(spec, "max_bytes", DEFAULT_LOG_MAX_BYTES),
            _int(spec, "backups", DEFAULT_LOG_BACKUPS))


def _buffer(request: Request) -> tuple[int, int]:
    spec = request.get("buffer") or {}
    if not isinstance(spec, dict):
        raise BadRequest("buffer must be an object with lines and bytes")
    return _int(spec, "lines", DEFAULT_BUFFER_LINES), _int(spec, "bytes", DEFAULT_BUFFER_BYTES)


def _signal(value: object) -> int:
    if type(value) is int:
        if value == 0 or value in signal.valid_signals():
            return value
    elif isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        number = getattr(signal, name, None)
        if type(number) is int and not name.startswith("SIG_"):  # SIG_IGN and the like are no signals
            return number
    raise BadRequest(f"no such signal: {value!r}")


def _instances(request: Request) -> list[str] | None:
    """`instances` (a list) or `instance` (one); None when neither is given: every instance."""
    if "instance" in request:
        return [check_instance(request["instance"])]
    value = request.get("instances")
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequest("instances must be a list of instance ids")
    return [check_instance(i) for i in value]


def _streams(request: Request) -> tuple[str, ...]:
    value = request.get("stream")
    if value is None:
        return STREAMS
    if value not in STREAMS:
        raise BadRequest(f"stream must be stdout or stderr, not {value!r}")
    return (value,)
