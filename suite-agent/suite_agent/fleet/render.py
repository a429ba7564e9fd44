"""What `suite-agent fleet` prints: one row per agent (and per missing agent), or JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from suite_agent.fleet.gather import Gathering, Target

HEADER = ("AGENT", "HOST", "LABELS", "RUNNING", "UNHEALTHY", "FATAL", "ERRORS")


def labels_text(labels: Any) -> str:
    if not isinstance(labels, dict) or not labels:
        return "-"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def row(agent: str, reply: Mapping[str, Any]) -> tuple[str, ...]:
    results = reply.get("results")
    services = {n: s for n, s in results.items() if isinstance(s, dict) and "state" in s} \
        if isinstance(results, dict) else {}
    if services:
        running = f"{sum(1 for s in services.values() if s.get('state') == 'running')}/{len(services)}"
        unhealthy = str(sum(1 for s in services.values() if s.get("health") == "unhealthy"))
        fatal = str(sum(1 for s in services.values() if s.get("state") == "fatal"))
    else:
        running = unhealthy = fatal = "-"
    return (agent, str(reply.get("host") or "-"), labels_text(reply.get("labels")), running, unhealthy, fatal,
            errors(reply))


def errors(reply: Mapping[str, Any]) -> str:
    """Why the reply is not ok, in a few words: the refusal, the services that did not end as
    asked, the files a reload rejected."""
    if isinstance(reply.get("error"), str):
        return str(reply["error"])
    results = reply.get("results")
    problems: list[str] = []
    if isinstance(results, dict):
        rejected = results.get("errors")
        if isinstance(rejected, dict) and rejected:  # a reload's summary
            problems.extend(f"{file}: rejected" for file in sorted(rejected))
        for name, entry in sorted(results.items()):
            if isinstance(entry, dict) and entry.get("ok") is False:
                problems.append(f"{name}: {entry.get('state', '?')}" + (f" ({entry['detail']})"
                                                                          if entry.get("detail") else ""))
        if isinstance(results.get("error"), str):
            problems.append(results["error"])
    if reply.get("pending"):
        problems.append(f"still settling: {', '.join(map(str, reply['pending']))}")
    if not problems and reply.get("ok") is not True:
        problems.append("not ok")
    return "; ".join(problems) or "-"


def table(gathering: Gathering, timeout: float) -> str:
    rows: list[tuple[str, ...]] = [HEADER]
    rows.extend(row(agent, gathering.replies[agent]) for agent in sorted(gathering.replies))
    for agent in gathering.missing():
        rows.append((agent, gathering.hosts.get(agent, "-"), labels_text(gathering.known.get(agent)),
                     "-", "-", "-", f"MISSING: no answer within {timeout:g}s"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
             for r in rows]
    return "\n".join(lines)


def target_text(target: Target) -> str:
    """`--selector role=web` / `--agent a,b` as given."""
    parts = []
    if target.agents:
        parts.append(f"--agent {','.join(target.agents)}")
    if target.selector:
        parts.append(f"--selector {labels_text(dict(target.selector))}")
    return " ".join(parts) or "the fleet"
