"""Appends every agent event to a file as one JSON line, rotated by size.

Each line: `time` (ISO 8601, UTC), `type`, `service`, `source` (what asked for it, where the
event says: file, watch, signal, api, queue, start), `id` and `data` (the whole event).

Options: `path` (required; made if missing), `max_bytes` (rotate past this size, default
10 MiB), `backups` (rotated files kept: path.1 ... path.N, default 5).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from suite_agent import __version__
from suite_agent.plugins import PluginBase, PluginInfo

from ._options import integer, text


class AuditLogPlugin(PluginBase):
    def __init__(self) -> None:
        super().__init__()
        self._file: IO[str] | None = None

    def get_info(self) -> PluginInfo:
        return PluginInfo(name="audit_log", version=__version__,
                          description="Appends every event, command and config change to a JSON-lines file",
                          author="suite-agent", hooks=["event", "shutdown"])

    def validate_options(self, options: dict[str, Any]) -> None:
        path = text(options, "path")
        if not path:
            raise ValueError("path (the file to append to) is required")
        self.path = Path(path)
        self.max_bytes = integer(options, "max_bytes", 10 * 1024 * 1024, minimum=1024)
        self.backups = integer(options, "backups", 5, minimum=0)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as exc:
            raise ValueError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def on_event(self, event: dict[str, Any]) -> None:
        data = event.get("data") or {}
        record = {
            "time": datetime.fromtimestamp(event["time"], UTC).isoformat(timespec="milliseconds"),
            "type": event["type"],
            "service": event.get("service"),
            "source": data.get("source"),
            "id": event.get("id"),
            "data": data,
        }
        self._write(json.dumps(record, default=str, ensure_ascii=False) + "\n")

    def on_shutdown(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> IO[str]:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open until on_shutdown
        return self._file

    def _write(self, line: str) -> None:
        f = self._open()
        size = len(line.encode("utf-8"))
        if f.tell() and f.tell() + size > self.max_bytes:
            f = self._rotate()
        f.write(line)
        f.flush()

    def _rotate(self) -> IO[str]:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for n in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        return self._open()
