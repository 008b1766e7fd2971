"""The warm controller: runs forked from it behave as ansible-playbook runs
(results, failures, timeouts), and nothing outlives them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vnetlib.deploy import ansible, warm

# The controller's parent: a lookup runs in a worker, the worker's parent is
# the controller (ansible-playbook), whose parent is what we look for.
PPID_OF_CONTROLLER = (
    "awk '/^PPid/{print $2}' /proc/$(awk '/^PPid/{print $2}' /proc/$PPID/status)/status"
)


def _inventory(tmp: Path) -> Path:
    inv = tmp / "inventory.yml"
    inv.write_text(
        "all:\n  hosts:\n    here:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n"
    )
    return inv


def _playbook(tmp: Path, name: str, tasks: list[dict[str, Any]]) -> Path:
    path = tmp / f"{name}.yml"
    path.write_text(json.dumps([{"hosts": "all", "gather_facts": False, "tasks": tasks}]))
    return path


@pytest.fixture
def fresh_controller() -> Iterator[None]:
    """Each test starts its own server and stops it, whatever happens."""
    warm_ = warm._current
    warm._current = None
    try:
        yield
    finally:
        if warm._current is not None:
            warm._current.stop()
        warm._current = warm_


def _controller_parent(tmp: Path, inv: Path) -> int:
    out = tmp / "ppid"
    content = f"{{{{ lookup('pipe', {PPID_OF_CONTROLLER!r}) }}}}"
    copy = {"dest": str(out), "content": content}
    book = _playbook(tmp, "ppid", [{"ansible.builtin.copy": copy}])
    ansible.run_playbook(str(book), inv, {})
    return int(out.read_text().strip())


def test_runs_fork_from_the_warm_server(tmp_path: Path, fresh_controller: None) -> None:
    inv = _inventory(tmp_path)
    first = _controller_parent(tmp_path, inv)
    server = warm._current
    assert server is not None and server.alive()
    assert first == server.process.pid
    start = time.perf_counter()
    assert _controller_parent(tmp_path, inv) == server.process.pid
    warm_run = time.perf_counter() - start
    start = time.perf_counter()
    ansible.run_playbook(str(tmp_path / "ppid.yml"), inv, {}, warm_controller=False)
    cold_run = time.perf_counter() - start
    assert int((tmp_path / "ppid").read_text()) != server.process.pid
    assert warm_run < cold_run, (warm_run, cold_run)


def test_failures_name_host_and_task(tmp_path: Path, fresh_controller: None) -> None:
    inv = _inventory(tmp_path)
    book = _playbook(tmp_path, "fail", [{"name": "Refuse", "ansible.builtin.fail": {"msg": "no"}}])
    with pytest.raises(ansible.DeployError) as caught:
        ansible.run_playbook(str(book), inv, {})
    failures = [(f.host, f.task, f.message) for f in caught.value.failures]
    assert failures == [("here", "Refuse", "no")]
    assert warm._current is not None and warm._current.alive()


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                found.append(int(pid))
        except (OSError, ValueError):
            pass
    return found


def test_timeout_kills_the_whole_run(tmp_path: Path, fresh_controller: None) -> None:
    inv = _inventory(tmp_path)
    marker = f"{tmp_path}/sleeper"
    Path(marker).write_text("#!/bin/sh\nexec sleep 30\n")
    Path(marker).chmod(0o700)
    book = _playbook(tmp_path, "slow", [{"ansible.builtin.command": f"sh {marker}"}])
    start = time.perf_counter()
    with pytest.raises(ansible.DeployError) as caught:
        ansible.run_playbook(str(book), inv, {}, timeout=3)
    assert caught.value.status == "timeout"
    assert time.perf_counter() - start < 15
    deadline = time.monotonic() + 5
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(marker) == []


def test_other_ansible_configuration_runs_cold(tmp_path: Path) -> None:
    real = ansible.playbook_binary()
    server = warm.start(real)
    try:
        env = dict(os.environ, PATH=f"{server.bindir}:{os.environ['PATH']}")
        first = subprocess.run(["ansible-playbook", "--version"], env=env, capture_output=True,
                               text=True, timeout=60)
        other = subprocess.run(["ansible-playbook", "--version"], capture_output=True, text=True,
                               env=dict(env, ANSIBLE_FORKS="3"), timeout=60)
        assert first.returncode == other.returncode == 0
        assert first.stdout.splitlines()[0] == other.stdout.splitlines()[0]
    finally:
        server.stop()
    assert not server.alive()
    assert not server.directory.exists()


def test_server_ends_with_its_parent(tmp_path: Path) -> None:
    code = (
        "import sys, time; from vnetlib.deploy import warm; "
        f"c = warm.start({ansible.playbook_binary()!r}); "
        "print(c.process.pid, c.directory, flush=True); "
        "time.sleep(30)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid_text, directory = parent.stdout.readline().split()
        pid = int(pid_text)
        assert Path(f"/proc/{pid}").exists()
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        stat = ""
    assert stat == "" or stat.rsplit(")", 1)[1].split()[0] == "Z"
    assert not Path(directory).exists()
