"""suite-agent against supervisord, circus and PM2, same workload, same run.

    python bench/run.py [--n 100 500] [--peers supervisord circus pm2] [--quick]

See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import configparser
import functools
import os
import platform
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from installers import BENCH_DIR, ensure_pm2, ensure_python_peer
from measure import Result, Settings, new_result, run_one
from peers import Circus, Floor, Pm2, SuiteAgent, Supervisor, Supervisord
from plots import draw
from procfs import (
    HAS_CHILDREN_FILE,
    RUN_TAG_VAR,
    is_gone,
    kill_launched_supervisors,
    kill_pid_and_group,
    tagged_strays,
    untagged_lookalikes,
)
from report import SUITE, table, write_json

REPO = BENCH_DIR.parent
ALL_PEERS = ("floor", "supervisord", "circus", "pm2")

Factory = Callable[[Path], Supervisor]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[100, 500, 1000],
                   help="service counts (default: 100 500 1000)")
    p.add_argument("--peers", nargs="*", choices=ALL_PEERS, default=list(ALL_PEERS), help="peers to compare with")
    p.add_argument("--quick", action="store_true", help="5 respawn samples, 2 s idle window")
    p.add_argument("--no-suite-agent", action="store_true", help="run the peers only")
    p.add_argument("--respawn-samples", type=int, help="kill -9 samples per run (default 30, quick 5)")
    p.add_argument("--idle-window", type=float, help="seconds of idle CPU measurement (default 5, quick 2)")
    p.add_argument("--source", type=Path, default=REPO,
                   help="the checkout whose suite-agent/ is measured (default this one): before/after comparisons")
    p.add_argument("--peers-max-n", type=int, default=1000, help="above this N only suite-agent runs (default 1000)")
    p.add_argument("--plots", type=Path, help="folder for the PNGs (default bench/results/<time>/)")
    p.add_argument(
        "--agent-cmd",
        help="how to start suite-agent, before 'run --conf-dir DIR' "
        "(default: this Python with -m suite_agent and PYTHONPATH=<repo>/suite-agent)",
    )
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    samples = args.respawn_samples or (5 if args.quick else 30)
    window = args.idle_window or (2.0 if args.quick else 5.0)
    return Settings(respawn_samples=samples, idle_window=window, settle_after_start=1.0 if args.quick else 2.0,
                    new_service_samples=3 if args.quick else 7)


def raise_nofile_limit() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            print(f"cannot raise RLIMIT_NOFILE to {hard}: {exc}")
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def suite_agent_version() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg.get("metadata", "version", fallback="?") + " (source tree)"


def suite_agent_factory(args: argparse.Namespace, sleep_bin: str) -> Factory:
    if args.agent_cmd:
        command, pythonpath = args.agent_cmd.split(), None
    else:
        command, pythonpath = [sys.executable, "-m", "suite_agent"], str(args.source / "suite-agent")
    if not (REPO / "suite-agent" / "suite_agent" / "cli.py").exists():
        print("note: suite-agent/suite_agent/cli.py does not exist yet; the suite-agent runs will likely fail")
    version = suite_agent_version()

    return functools.partial(SuiteAgent, sleep_bin=sleep_bin, command=command, pythonpath=pythonpath, version=version)


def peer_factories(peers: list[str], sleep_bin: str) -> dict[str, Factory]:
    factories: dict[str, Factory] = {}
    for peer in peers:
        if peer == "floor":
            factories[peer] = functools.partial(Floor, sleep_bin=sleep_bin)
            continue
        if peer == "pm2":
            node = ensure_pm2()
            if node is not None:
                factories[peer] = functools.partial(Pm2, sleep_bin=sleep_bin, pm2_bin=node.pm2, version=node.version)
            continue
        try:
            py = ensure_python_peer(peer)
        except Exception as exc:
            print(f"{peer} skipped: could not install it: {exc}")
            continue
        cls: type[Supervisord | Circus] = Supervisord if peer == "supervisord" else Circus
        factories[peer] = functools.partial(cls, sleep_bin=sleep_bin, venv_bin=py.bin_dir, version=py.version)
    return factories


def reap_strays(run_tag: str) -> list[int]:
    """Kill every sleep of ours still alive; returns those that survived."""
    for proc in tagged_strays(run_tag):
        kill_pid_and_group(proc.pid)
    deadline = time.monotonic() + 5
    left = [p.pid for p in tagged_strays(run_tag)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if not is_gone(pid)]
    return left


def run_all(args: argparse.Namespace, factories: dict[str, Factory], s: Settings, results: list[Result]) -> None:
    run_tag = os.environ[RUN_TAG_VAR]
    for n in args.n:
        for name, factory in factories.items():
            if name != SUITE and n > args.peers_max_n:
                continue
            print(f"\n== {name}, N = {n}", flush=True)
            with tempfile.TemporaryDirectory(prefix=f"bench-{name}-{n}-", ignore_cleanup_errors=True) as tmp:
                sup = factory(Path(tmp))
                results.append(res := new_result(sup, n))
                run_one(sup, res, s, functools.partial(progress, f"[{name} N={n}]"))
            left = reap_strays(run_tag)
            if left:
                print(f"  WARNING: could not kill {left}")
            time.sleep(1.0)  # let the machine calm down before the next supervisor


def progress(prefix: str, message: str) -> None:
    print(f"  {prefix} {message}", flush=True)


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def meta(args: argparse.Namespace, s: Settings, nofile: tuple[int, int], started: float) -> dict[str, Any]:
    return {
        "started": datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "argv": sys.argv[1:],
        "n": args.n,
        "peers": args.peers,
        "settings": s.__dict__,
        "rlimit_nofile": list(nofile),
        "child_listing": "/proc/PID/task/*/children" if HAS_CHILDREN_FILE else "psutil",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = settings_from(args)
    nofile = raise_nofile_limit()
    started = time.time()
    run_tag = os.environ[RUN_TAG_VAR] = uuid.uuid4().hex
    signal.signal(signal.SIGTERM, on_sigterm)
    # An installed package runs from compiled bytecode; with this set every start compiles anew.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sleep_bin = shutil.which("sleep") or "/bin/sleep"

    factories: dict[str, Factory] = {}
    if not args.no_suite_agent:
        factories[SUITE] = suite_agent_factory(args, sleep_bin)
    factories.update(peer_factories(args.peers, sleep_bin))

    results: list[Result] = []
    interrupted = False
    try:
        run_all(args, factories, s, results)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: cleaning up", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        kill_launched_supervisors()
        left = reap_strays(run_tag)
        lookalikes = [p.pid for p in untagged_lookalikes(started) if not is_gone(p.pid)]
        print(f"\ncleanup: {len(left)} of our sleeps left" + (f" {left}" if left else ""))
        if lookalikes:
            print(f"note: other 'sleep 100000...' processes started during the run, not ours: {lookalikes}")
        stamp = f"{datetime.fromtimestamp(started):%Y%m%d-%H%M%S}"
        (BENCH_DIR / "results").mkdir(exist_ok=True)
        out = BENCH_DIR / "results" / f"{stamp}.json"
        info = meta(args, s, nofile, started) | {"interrupted": interrupted, "strays_left": left}
        write_json(out, info, results)

    order = list(factories)
    print()
    for n in args.n:
        if any(r.n == n for r in results):
            print(table(n, results, order))
    print(f"raw results: {out}")
    note = f"{socket.gethostname()}, {os.cpu_count()} CPUs, {datetime.fromtimestamp(started):%Y-%m-%d}"
    for path in draw(results, order, args.plots or BENCH_DIR / "results" / stamp, note):
        print(f"plot: {path}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
