"""One small class per supervisor behind a common interface.

The benchmark only ever calls: write_config(n), start(), root_pid(), child_pids(),
add_service(i), stop(), exited() and, whatever happened, shutdown().
Service i runs `sleep <1000000000 + i>` (see procfs) and is named s0000i.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path

from procfs import (
    children_of,
    helper_pids,
    is_gone,
    kill_pid_and_group,
    remember_supervisor,
    service_arg,
    service_name,
)


class SupervisorDied(RuntimeError):
    pass


def write_atomically(path: Path, text: str) -> None:
    """Write under a hidden temporary name in the same folder, then rename into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.rename(tmp, path)


class Supervisor(ABC):
    name: str = "?"
    add_label: str = ""
    stop_label: str = "(SIGTERM)"
    can_add: bool = True  # False: it has no way to declare a service while it runs

    def __init__(self, workdir: Path, sleep_bin: str) -> None:
        self.workdir = workdir
        self.sleep_bin = sleep_bin
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = workdir / f"{self.name}.out"

    # -- the interface -------------------------------------------------------------------
    @abstractmethod
    def write_config(self, n: int) -> None: ...

    @abstractmethod
    def start(self) -> None:
        """Launch the supervisor and return at once."""

    @abstractmethod
    def add_service(self, index: int) -> None:
        """Declare service `index` the supervisor's usual way; returns once that is done."""

    def version(self) -> str:
        return "?"

    def root_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def child_pids(self) -> list[int]:
        root = self.root_pid()
        return children_of(root) if root is not None else []

    def stop(self) -> None:
        """Ask the supervisor to stop everything (SIGTERM unless a peer documents otherwise)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)

    def exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise SupervisorDied(f"{self.name} exited with {self.proc.returncode}: {self.output_tail()}")

    def shutdown(self, grace: float = 10.0) -> None:
        """Stop it whatever state it is in: the documented way first, then SIGKILL."""
        try:
            if not self.exited():
                try:
                    self.stop()
                except Exception as exc:
                    print(f"  [{self.name}] stop failed during cleanup: {exc}")
                deadline = time.monotonic() + grace
                while not self.exited() and time.monotonic() < deadline:
                    time.sleep(0.05)
        finally:
            self.force_kill()

    def force_kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def output_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    # -- helpers -------------------------------------------------------------------------
    def _launch(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.output, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env if env is not None else dict(os.environ),
                start_new_session=True,  # Ctrl-C on the bench does not reach it; killpg can
            )
        remember_supervisor(proc.pid)
        return proc

    def _run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> None:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=self.workdir,
            env=env if env is not None else dict(os.environ),
            timeout=timeout,
            start_new_session=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])}... exited {done.returncode}: {done.stderr.decode()[-500:]}")


class SuiteAgent(Supervisor):
    name = "suite-agent"
    add_label = "(new file in conf.d, hot reload)"

    def __init__(
        self, workdir: Path, sleep_bin: str, command: list[str], pythonpath: str | None, version: str
    ) -> None:
        super().__init__(workdir, sleep_bin)
        self.command = command
        self.pythonpath = pythonpath
        self._version = version
        self.conf_dir = workdir / "conf.d"

    def version(self) -> str:
        return self._version

    def write_config(self, n: int) -> None:
        self.conf_dir.mkdir()
        lines = [
            f"agent: {{log_dir: {json.dumps(str(self.workdir / 'logs'))}}}",
            "services:",
            *(self._service_line(i) for i in range(n)),
        ]
        (self.conf_dir / "services.yaml").write_text("\n".join(lines) + "\n")

    def _service_line(self, index: int) -> str:
        return f"  {service_name(index)}: {{command: [{json.dumps(self.sleep_bin)}, \"{service_arg(index)}\"]}}"

    def start(self) -> None:
        env = dict(os.environ)
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.pythonpath, env.get("PYTHONPATH")]))
        self.proc = self._launch([*self.command, "run", "--conf-dir", str(self.conf_dir)], env)

    def add_service(self, index: int) -> None:
        text = "services:\n" + self._service_line(index) + "\n"
        write_atomically(self.conf_dir / f"new-{service_name(index)}.yaml", text)

    def force_kill(self) -> None:
        # The keeper (the services' parent) runs in a session of its own: the group kill
        # below does not reach it.
        for pid in helper_pids(self.root_pid()):
            kill_pid_and_group(pid)
        super().force_kill()


class Floor(Supervisor):
    """bench/floor.py: a posix_spawn + wait() loop, the cost of supervision without a supervisor."""

    name = "floor"
    add_label = "(none: it reads no configuration)"
    can_add = False

    def __init__(self, workdir: Path, sleep_bin: str) -> None:
        super().__init__(workdir, sleep_bin)
        self.n = 0

    def version(self) -> str:
        return "bench/floor.py"

    def write_config(self, n: int) -> None:
        self.n = n

    def start(self) -> None:
        script = Path(__file__).resolve().parent / "floor.py"
        self.proc = self._launch([sys.executable, str(script), str(self.n), self.sleep_bin, str(self.workdir / "logs")])

    def add_service(self, index: int) -> None:
        raise NotImplementedError


class Supervisord(Supervisor):
    name = "supervisord"
    add_label = "(via supervisorctl update)"

    def __init__(self, workdir: Path, sleep_bin: str, venv_bin: Path, version: str) -> None:
        super().__init__(workdir, sleep_bin)
        self.bin = venv_bin
        self._version = version
        self.conf = workdir / "supervisord.conf"
        self.programs = workdir / "programs"

    def version(self) -> str:
        return self._version

    def write_config(self, n: int) -> None:
        self.programs.mkdir()
        (self.workdir / "logs").mkdir()
        w = self.workdir
        self.conf.write_text(
            f"[unix_http_server]\nfile={w}/supervisor.sock\n\n"
            f"[supervisord]\nlogfile={w}/supervisord.log\npidfile={w}/supervisord.pid\n"
            f"childlogdir={w}/logs\nminfds={max(1024, 4 * n + 256)}\nnodaemon=true\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl=unix://{w}/supervisor.sock\n\n"
            f"[include]\nfiles = {self.programs}/*.conf\n"
        )
        (self.programs / "base.conf").write_text("".join(self._program(i) for i in range(n)))

    def _program(self, index: int) -> str:
        return (
            f"[program:{service_name(index)}]\ncommand={self.sleep_bin} {service_arg(index)}\n"
            "autorestart=true\n\n"
        )

    def start(self) -> None:
        self.proc = self._launch([str(self.bin / "supervisord"), "-n", "-c", str(self.conf)])

    def add_service(self, index: int) -> None:
        write_atomically(self.programs / f"{service_name(index)}.conf", self._program(index))
        self._run([str(self.bin / "supervisorctl"), "-c", str(self.conf), "update"])


class Circus(Supervisor):
    name = "circus"
    add_label = "(via circusctl add --start)"

    def __init__(self, workdir: Path, sleep_bin: str, venv_bin: Path, version: str) -> None:
        super().__init__(workdir, sleep_bin)
        self.bin = venv_bin
        self._version = version
        self.conf = workdir / "circus.ini"
        self.endpoint = f"ipc://{workdir}/ctl.sock"

    def version(self) -> str:
        return self._version

    def write_config(self, n: int) -> None:
        logs = self.workdir / "logs"
        logs.mkdir()
        w = self.workdir
        head = (
            f"[circus]\nendpoint = {self.endpoint}\npubsub_endpoint = ipc://{w}/pub.sock\n"
            "statsd = false\n\n"  # (setting stats_endpoint would switch circusd-stats on)
        )
        self.conf.write_text(head + "".join(self._watcher(i, logs) for i in range(n)))

    def _watcher(self, index: int, logs: Path) -> str:
        name = service_name(index)
        return (
            f"[watcher:{name}]\ncmd = {self.sleep_bin} {service_arg(index)}\nnumprocesses = 1\n"
            "copy_env = true\n"
            f"stdout_stream.class = FileStream\nstdout_stream.filename = {logs}/{name}.out\n"
            f"stderr_stream.class = FileStream\nstderr_stream.filename = {logs}/{name}.err\n\n"
        )

    def start(self) -> None:
        log = self.workdir / "circusd.log"
        self.proc = self._launch([str(self.bin / "circusd"), "--log-output", str(log), str(self.conf)])

    def add_service(self, index: int) -> None:
        cmd = f"{self.sleep_bin} {service_arg(index)}"
        ctl = str(self.bin / "circusctl")
        self._run([ctl, "--endpoint", self.endpoint, "add", "--start", service_name(index), cmd])


class Pm2(Supervisor):
    name = "pm2"
    add_label = "(via pm2 start)"
    stop_label = "(pm2 kill)"

    def __init__(self, workdir: Path, sleep_bin: str, pm2_bin: Path, version: str) -> None:
        super().__init__(workdir, sleep_bin)
        self.pm2 = pm2_bin
        self._version = version
        self.home = workdir / "pm2"
        self.ecosystem = workdir / "ecosystem.json"
        self._god: int | None = None
        self.env = dict(os.environ, PM2_HOME=str(self.home))

    def version(self) -> str:
        return self._version

    def write_config(self, n: int) -> None:
        self.home.mkdir()
        self.ecosystem.write_text(json.dumps({"apps": [self._app(i) for i in range(n)]}))

    def _app(self, index: int) -> dict[str, object]:
        return {
            "name": service_name(index),
            "script": self.sleep_bin,
            "args": [service_arg(index)],
            "interpreter": "none",
            "exec_mode": "fork",
            "autorestart": True,
        }

    def start(self) -> None:
        # `pm2 start` spawns the God daemon, hands it the apps and exits.
        self.proc = self._launch([str(self.pm2), "start", str(self.ecosystem)], self.env)

    def root_pid(self) -> int | None:
        if self._god is None:
            try:
                self._god = int((self.home / "pm2.pid").read_text().strip())
            except (FileNotFoundError, ValueError):
                return None
            remember_supervisor(self._god)
        return self._god

    def check_alive(self) -> None:
        god = self.root_pid()
        if god is not None and is_gone(god):
            raise SupervisorDied(f"pm2 God daemon {god} is gone: {self.output_tail()}")
        if god is None and self.proc is not None and self.proc.poll() not in (None, 0):
            raise SupervisorDied(f"pm2 start exited {self.proc.returncode}: {self.output_tail()}")

    def add_service(self, index: int) -> None:
        app = self.workdir / f"{service_name(index)}.json"
        app.write_text(json.dumps({"apps": [self._app(index)]}))
        self._run([str(self.pm2), "start", str(app)], self.env)

    def stop(self) -> None:
        self._run([str(self.pm2), "kill"], self.env, timeout=60)

    def exited(self) -> bool:
        god = self.root_pid()
        return god is None or is_gone(god)

    def force_kill(self) -> None:
        god = self.root_pid()
        if god is not None and not is_gone(god):
            with contextlib.suppress(ProcessLookupError):
                os.kill(god, signal.SIGKILL)
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)
