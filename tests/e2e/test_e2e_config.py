"""The real agent and `suite-agent validate` on conf.d folders as operators and Kubernetes lay them out."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from agent import Agent, agent_command
from eventually import eventually


def validate(conf_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*agent_command(), "validate", "--conf-dir", str(conf_dir)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_fifo_does_not_stop_later_files_from_being_applied(agent: Agent, conf_dir: Path) -> None:
    agent.write("a.yaml", "services:\n  first: {command: [sleep, '3811']}\n")
    os.mkfifo(conf_dir / "f.yaml")
    agent.start()
    agent.wait_log(re.escape(f"{conf_dir / 'f.yaml'}:1: is a FIFO (named pipe), not a regular file"))
    agent.wait_pids("3811")
    agent.write("b.yaml", "services:\n  later: {command: [sleep, '3812']}\n")
    agent.wait_pids("3812")
    agent.write("c.yaml", "services:\n  by-signal: {command: [sleep, '3813']}\n")
    agent.signal(signal.SIGHUP)
    agent.wait_pids("3813")


def test_validate_refuses_what_cannot_be_read_and_finishes(tmp_path: Path, conf_dir: Path) -> None:
    (conf_dir / "good.yaml").write_text("services:\n  good: {command: [sleep, '1']}\n")
    os.mkfifo(conf_dir / "f.yaml")
    (conf_dir / "z.yaml").symlink_to("/dev/zero")
    (conf_dir / "d.yaml").mkdir()
    with open(conf_dir / "big.yaml", "wb") as f:
        f.truncate(50 * 1024 * 1024)
    done = validate(conf_dir)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        f"{conf_dir}/big.yaml:1: the file is 52428800 bytes, over the limit of 1048576 bytes (1 MiB) for a conf.d file",
        f"{conf_dir}/d.yaml:1: is a directory, not a file",
        f"{conf_dir}/f.yaml:1: is a FIFO (named pipe), not a regular file",
        f"{conf_dir}/z.yaml:1: points to /dev/zero, a character device, not a regular file",
    ]


def test_validate_and_the_agent_blame_the_same_file(agent: Agent, conf_dir: Path) -> None:
    # b.yaml runs first; then a.yaml, which sorts first, claims the same name: b.yaml is rejected,
    # by the running agent as by validate, and a.yaml's web takes over.
    agent.write("b.yaml", "services:\n  web: {command: [sleep, '3821']}\n  other: {command: [sleep, '3822']}\n")
    agent.start()
    agent.wait_pids("3821")
    agent.write("a.yaml", "services:\n  web: {command: [sleep, '3823']}\n")
    agent.wait_pids("3823")
    eventually(lambda: not agent.pids_of("3821"), 10, "3821 to stop")
    eventually(lambda: not agent.pids_of("3822"), 10, "3822 to stop")
    expected = f"{conf_dir}/b.yaml:2: services.web: service 'web' is already defined in {conf_dir}/a.yaml:2"
    agent.wait_log(re.escape(expected))
    done = validate(conf_dir)
    assert (done.returncode, done.stdout) == (1, expected + "\n")


def test_an_unknown_user_is_reported_at_load_and_fails_only_its_service(agent: Agent, conf_dir: Path) -> None:
    text = ("services:\n  ok: {command: [sleep, '3831']}\n"
            "  nobody-here:\n    command: [sleep, '3832']\n    user: no-such-user-3832\n")
    agent.write("a.yaml", text)
    expected = (f"{conf_dir}/a.yaml:5: services.nobody-here.user: no such user 'no-such-user-3832' on this host; "
                "the service cannot start until it exists")
    done = validate(conf_dir)
    assert (done.returncode, done.stdout) == (1, expected + "\n")
    agent.start()
    agent.wait_log(re.escape(expected))
    agent.wait_pids("3831")
    agent.wait_log(r"nobody-here: .*(no such user 'no-such-user-3832'|need the agent to run as root)")
    assert agent.pids_of("3832") == []


def configmap_update(conf_dir: Path, stamp: str, files: dict[str, str]) -> None:
    """What the kubelet's AtomicWriter does: a new timestamped folder, then `..data` swapped by rename."""
    new = conf_dir / f"..{stamp}"
    new.mkdir()
    for name, text in files.items():
        (new / name).write_text(text)
    old = os.readlink(conf_dir / "..data") if (conf_dir / "..data").is_symlink() else None
    (conf_dir / "..data_tmp").symlink_to(new.name)
    os.rename(conf_dir / "..data_tmp", conf_dir / "..data")
    for name in files:
        if not (conf_dir / name).is_symlink():
            (conf_dir / name).symlink_to(f"..data/{name}")
    if old is not None:
        shutil.rmtree(conf_dir / old)


def test_a_configmap_update_is_applied(agent: Agent, conf_dir: Path) -> None:
    configmap_update(conf_dir, "2024_01_01_00_00_00.000000001", {
        "app.yaml": "services:\n  app: {command: [sleep, '3841']}\n",
        "db.yaml": "services:\n  db: {command: [sleep, '3842']}\n",
    })
    agent.start()
    (app,) = agent.wait_pids("3841")
    (db,) = agent.wait_pids("3842")
    # Once a file written now is applied, the watch is armed (its catch-up reload is done).
    agent.write("sentinel.yaml", "services:\n  sentinel: {command: [sleep, '3849']}\n")
    agent.wait_pids("3849")
    # Only `..data` changes in the folder: the top-level links stay as they are.
    links = {name: os.readlink(conf_dir / name) for name in ("app.yaml", "db.yaml")}
    configmap_update(conf_dir, "2024_01_01_00_05_00.000000002", {
        "app.yaml": "services:\n  app: {command: [sleep, '3843']}\n",
        "db.yaml": "services:\n  db: {command: [sleep, '3842']}\n",
    })
    assert {name: os.readlink(conf_dir / name) for name in links} == links
    agent.wait_pids("3843")
    eventually(lambda: not agent.pids_of("3841"), 10, "3841 to stop")
    assert agent.pids_of("3842") == [db]  # unchanged: not restarted
    assert app not in agent.pids_of("3843")
    assert " ERROR " not in agent.log()  # hidden entries are never read as files of their own


def test_conf_d_removed_and_made_again_keeps_its_services_and_is_watched_again(
        agent: Agent, conf_dir: Path, tmp_path: Path) -> None:
    agent.write("a.yaml", "services:\n  app: {command: [sleep, '3861']}\n")
    agent.start()
    (app,) = agent.wait_pids("3861")
    agent.write("sentinel.yaml", "services:\n  sentinel: {command: [sleep, '3862']}\n")
    agent.wait_pids("3862")  # the watch is armed
    copy = tmp_path / "conf.new"
    shutil.copytree(conf_dir, copy)
    shutil.rmtree(conf_dir)  # as `rm -rf conf.d; cp -r new conf.d` does, in two steps
    agent.wait_log(r"cannot read the configuration folder: No such file or directory; "
                   r"the configuration in force stays")
    agent.wait_log(r"cannot watch .*conf\.d .*retrying every 1s")
    os.rename(copy, conf_dir)
    agent.wait_log(r"watching .*conf\.d again")
    agent.write("b.yaml", "services:\n  added: {command: [sleep, '3863']}\n")
    agent.wait_pids("3863")  # seen in the new folder
    assert agent.pids_of("3861") == [app] and len(agent.pids_of("3862")) == 1  # nothing stopped
    assert agent.log().count("cannot watch") == 1  # said once, not every second


DEEP = {
    "flow sequences": "services: " + "[" * 50_000 + "]" * 50_000 + "\n",
    "flow mappings": "a: " + "{a: " * 50_000 + "}" * 50_000 + "\n",
    "block sequences on one line": "- " * 200_000 + "x\n",
    "complex keys": "? " * 200_000 + "x\n",
}


def test_a_file_nested_tens_of_thousands_deep_is_refused_not_a_crash(tmp_path: Path) -> None:
    # libyaml composes by recursion on the C stack: these small files used to kill the process.
    conf = tmp_path / "conf.d"
    conf.mkdir()
    for i, text in enumerate(DEEP.values()):
        (conf / f"deep{i}.yaml").write_text(text)
    done = validate(conf)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [f"{conf}/deep{i}.yaml:1: YAML: nested too deeply" for i in range(len(DEEP))]


def test_the_agent_keeps_running_when_such_a_file_arrives(agent: Agent) -> None:
    agent.write("a.yaml", "services:\n  app: {command: [sleep, '3871']}\n")
    agent.start()
    (app,) = agent.wait_pids("3871")
    agent.write("deep.yaml", DEEP["flow sequences"])
    agent.wait_log(r"deep\.yaml:1: YAML: nested too deeply")
    agent.write("b.yaml", "services:\n  more: {command: [sleep, '3872']}\n")
    agent.wait_pids("3872")  # still supervising
    assert agent.pids_of("3871") == [app]
