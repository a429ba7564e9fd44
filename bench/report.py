"""The side-by-side table, the suite-agent targets and the JSON file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from measure import Result

SUITE = "suite-agent"
FLOOR = "floor"
TARGET_N = (500, 1000)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    fmt: str
    target: float | None  # suite-agent at the TARGET_N must be at most this
    of_floor: bool = False  # the target is that many times the floor's figure


METRICS = (
    Metric("startup_s", "startup: all N running (s)", "{:.3f}", 1.25, of_floor=True),
    Metric("respawn_median_ms", "respawn after kill -9, median (ms)", "{:.2f}", 5.0),
    Metric("respawn_p90_ms", "respawn after kill -9, p90 (ms)", "{:.2f}", None),
    Metric("idle_cpu_pct", "idle CPU, % of one core (cpu_times)", "{:.3f}", 0.5),
    Metric("idle_cpu_pct_schedstat", "idle CPU, % of one core (schedstat)", "{:.3f}", None),
    Metric("rss_mib", "RSS of the supervisor, all its processes (MiB)", "{:.1f}", None),
    Metric("rss_main_mib", "RSS of its main process (suite-agent: brain) (MiB)", "{:.1f}", 36.0),
    Metric("rss_helpers_mib", "RSS of its other processes (suite-agent: keeper) (MiB)", "{:.1f}", 12.0),
    Metric("new_service_ms", "new service to running (ms) [1]", "{:.1f}", 50.0),
    Metric("stop_all_s", "stop all (s) [2]", "{:.3f}", 0.5),
)


def _value(res: Result | None, key: str) -> float | None:
    if res is None:
        return None
    value = getattr(res, key)
    return float(value) if value is not None else None


def _fmt(metric: Metric, value: float | None) -> str:
    return "-" if value is None else metric.fmt.format(value)


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs <= 0:
        return "-"
    return f"{ours / theirs:.3g}x"


def _verdict(metric: Metric, value: float | None, floor: float | None) -> tuple[str, str]:
    if metric.target is None:
        return "", ""
    if metric.of_floor:
        limit = None if floor is None else metric.target * floor
        label = f"<= {metric.target:g}x floor"
    else:
        limit, label = metric.target, f"<= {metric.target:g}"
    verdict = "-" if value is None or limit is None else ("PASS" if value <= limit else "FAIL")
    return label, verdict


def table(n: int, results: Sequence[Result], supervisors: Sequence[str]) -> str:
    by_name = {r.supervisor: r for r in results if r.n == n}
    names = [s for s in supervisors if s in by_name]
    peers = [s for s in names if s != SUITE] if SUITE in names else []
    header = ["metric", *names, *(f"{SUITE}/{p}" for p in peers)]
    if n in TARGET_N:
        header += ["target", "suite-agent"]
    rows = [header]
    for metric in METRICS:
        ours = _value(by_name.get(SUITE), metric.key)
        row = [metric.label, *(_fmt(metric, _value(by_name[s], metric.key)) for s in names)]
        row += [_ratio(ours, _value(by_name[p], metric.key)) for p in peers]
        if n in TARGET_N:
            row += list(_verdict(metric, ours, _value(by_name.get(FLOOR), metric.key)))
        rows.append(row)
    return _render(f"N = {n}", rows) + _footnotes([by_name[s] for s in names])


def _render(title: str, rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [title]
    for i, row in enumerate(rows):
        cells = [c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths, strict=False))]
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _footnotes(results: Sequence[Result]) -> str:
    lines = ["[1] " + "; ".join(f"{r.supervisor} {r.new_service_how}" for r in results)]
    lines.append("[2] " + "; ".join(f"{r.supervisor} {r.stop_how}" for r in results))
    for r in results:
        if r.respawn_failures:
            lines.append(f"    {r.supervisor}: {r.respawn_failures} respawn(s) not seen within the timeout")
        if r.error:
            lines.append(f"    {r.supervisor} FAILED: {r.error}")
    return "\n".join(lines) + "\n"


def write_json(path: Path, meta: dict[str, Any], results: Sequence[Result]) -> None:
    path.write_text(json.dumps({"meta": meta, "results": [r.as_json() for r in results]}, indent=2) + "\n")
