"""Drives a real `suite-agent run` from outside, as an operator would: files, signals, psutil."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil

from suite_agent.keeper.client import KEEPER_MAIN

from eventually import eventually

TOKEN_VAR = "SUITE_TEST_TOKEN"


def agent_command() -> list[str]:
    script = shutil.which("suite-agent")
    return [script] if script else [sys.executable, "-m", "suite_agent"]


def processes_with_token(token: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(TOKEN_VAR) == token:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def is_keeper(proc: psutil.Process) -> bool:
    try:
        cmdline = proc.cmdline()
        return "suite_agent.keeper" in cmdline or KEEPER_MAIN in cmdline
    except psutil.Error:
        return False


def kill_leftovers(token: str) -> list[str]:
    if not token:
        return []
    procs = processes_with_token(token)
    described = []
    for proc in procs:
        try:
            described.append(f"{proc.pid} {' '.join(proc.cmdline())}")
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(procs, timeout=5)
    return described


class Agent:
    def __init__(self, conf_dir: Path, tmp_path: Path) -> None:
        self.conf_dir = conf_dir
        self.log_path = tmp_path / "agent.log"
        self.token = uuid.uuid4().hex
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, *extra: str, ready: bool = True) -> Agent:
        env = {**os.environ, TOKEN_VAR: self.token}
        with open(self.log_path, "ab") as log:  # the agent keeps its own copy
            self.proc = subprocess.Popen(
                [*agent_command(), "run", "--conf-dir", str(self.conf_dir), *extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )
        if ready:
            self.wait_log(r"configuration loaded \([^)]*\bstart\b")
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def shutdown(self) -> list[str]:
        """Stop the agent if still running; return (and kill) whatever it left behind."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop()
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        leftovers = [p for p in processes_with_token(self.token)]
        if leftovers:
            with contextlib.suppress(psutil.Error):
                psutil.wait_procs(leftovers, timeout=2)
        return kill_leftovers(self.token)

    # -- observing ------------------------------------------------------------------------
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> list[str]:
        regex = re.compile(pattern)

        def found() -> list[str]:
            lines = [line for line in self.log().splitlines() if regex.search(line)]
            return lines if len(lines) >= count else []

        try:
            lines: list[str] = eventually(found, timeout, f"log line /{pattern}/ x{count}")
            return lines
        except AssertionError:
            raise AssertionError(f"no /{pattern}/ x{count} in agent log:\n{self.log()[-4000:]}") from None

    def children(self) -> list[psutil.Process]:
        """The agent's children, its services (the keeper's children) in place of the keeper."""
        assert self.proc is not None
        try:
            direct: list[psutil.Process] = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        children: list[psutil.Process] = []
        for child in direct:
            if is_keeper(child):
                with contextlib.suppress(psutil.Error):
                    children.extend(child.children())
            else:
                children.append(child)
        return children

    def pids_of(self, marker: str) -> list[int]:
        """Pids of the agent's children whose command line contains `marker`."""
        pids = []
        for child in self.children():
            try:
                if marker in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        return sorted(pids)

    def wait_pids(self, marker: str, count: int = 1, timeout: float = 10.0) -> list[int]:
        def found() -> list[int]:
            pids = self.pids_of(marker)
            return pids if len(pids) == count else []

        return eventually(found, timeout, f"{count} process(es) of {marker!r}")

    def write(self, name: str, text: str) -> Path:
        """Write a conf.d file the way Ansible and Terraform do: temp file, then rename."""
        path = self.conf_dir / name
        tmp = self.conf_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.rename(tmp, path)
        return path
