"""The warm controller: runs forked from it behave as ansible-playbook runs
(results, failures, timeouts), and nothing outlives them."""

from __future__ import annotations

import contextlib
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
    Path(marker).write_text("#!/bin/sh\nsleep 30\n")  # sh stays, `marker` in its argv
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


def _run_in_parent(tmp: Path, marker: str) -> subprocess.Popen[str]:
    """A process that owns a warm controller and runs a playbook whose task
    sleeps (`marker` in its command line), printing its server's pid and
    directory first."""
    inv = _inventory(tmp)
    book = _playbook(tmp, "hang", [{"ansible.builtin.command": f"sh {marker}"}])
    code = (
        "import sys; from pathlib import Path; from vnetlib.deploy import ansible, warm; "
        f"c = warm.controller({ansible.playbook_binary()!r}); "
        "print(c.process.pid, c.directory, flush=True); "
        f"ansible.run_playbook({str(book)!r}, Path({str(inv)!r}), {{}})"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def _wait_for(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_nothing_of_a_run_survives_its_owner_killed(tmp_path: Path) -> None:
    """SIGKILL to the process owning the controller mid-run: the server, the
    run's ansible-playbook, its workers (sessions of their own) and the
    module's processes all end."""
    marker = f"{tmp_path}/sleeper"
    Path(marker).write_text("#!/bin/sh\nsleep 30\n")  # sh stays, `marker` in its argv
    parent = _run_in_parent(tmp_path, marker)
    server = 0
    under: list[int] = []
    try:
        assert parent.stdout is not None
        pid_text, directory = parent.stdout.readline().split()
        server = int(pid_text)
        assert _wait_for(lambda: _processes_with(marker), 30), "the task never started"
        under = [p for p in warm.descendants([server]) if p != server]
        # The run's child, at least one worker, the module, the sleeper.
        assert len(under) >= 3, under
    finally:
        parent.kill()
        parent.wait()
    try:
        assert _wait_for(lambda: not [p for p in [*under, server] if _alive(p)], 15), [
            (p, _cmdline(p)) for p in [*under, server] if _alive(p)]
        assert _processes_with(marker) == []
        assert _processes_with(directory) == []
        assert not Path(directory).exists()
    finally:
        for pid in [*under, server]:
            if _alive(pid):
                os.kill(pid, 9)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_orphans_of_a_hung_run_are_swept(tmp_path: Path) -> None:
    """A run's child killed alone (as a hang's killpg does, but leaving its
    workers in their sessions): the server adopts what it left and kills it."""
    marker = f"{tmp_path}/sleeper"
    Path(marker).write_text("#!/bin/sh\nsleep 30\n")  # sh stays, `marker` in its argv
    parent = _run_in_parent(tmp_path, marker)
    server = 0
    try:
        assert parent.stdout is not None
        server = int(parent.stdout.readline().split()[0])
        assert _wait_for(lambda: _processes_with(marker), 30), "the task never started"
        table = warm._parents()
        runs = [p for p, pp in table.items() if pp == server]
        assert len(runs) == 1, runs
        left = [p for p in warm.descendants(runs, table) if p != runs[0]]
        os.kill(runs[0], 9)
        assert _wait_for(lambda: not [p for p in left if _alive(p)], 10), [
            (p, _cmdline(p)) for p in left if _alive(p)]
        assert _alive(server)
    finally:
        parent.kill()
        parent.wait()
        if server and _wait_for(lambda: not _alive(server), 10) is False:
            os.kill(server, 9)


def test_a_daemon_a_task_started_outlives_the_run_and_the_server(tmp_path: Path) -> None:
    """A task's daemon (a session of its own, as vnet_click starts Click) is
    not a run's leftover: neither the sweep after the run nor the server's
    end kills it."""
    marker = f"{tmp_path}/daemon"
    Path(marker).write_text("#!/bin/sh\nsleep 60\n")
    inv = _inventory(tmp_path)
    book = _playbook(tmp_path, "daemon", [{"ansible.builtin.command": f"setsid -f sh {marker}"}])
    code = (
        "import sys, time; from pathlib import Path; from vnetlib.deploy import ansible, warm; "
        f"c = warm.controller({ansible.playbook_binary()!r}); "
        f"ansible.run_playbook({str(book)!r}, Path({str(inv)!r}), {{}}); "
        "print(c.process.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    server = 0
    try:
        assert parent.stdout is not None
        server = int(parent.stdout.readline())
        assert _wait_for(lambda: _processes_with(marker), 10), "the daemon never started"
        time.sleep(2 * warm._REAP_INTERVAL + 0.5)  # the run's end was reaped and swept
        assert [p for p in _processes_with(marker) if _alive(p)]
        parent.kill()
        parent.wait()
        assert _wait_for(lambda: not _alive(server), 15)
        assert [p for p in _processes_with(marker) if _alive(p)]
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in _processes_with(marker):
            for each in warm.descendants([pid]):
                with contextlib.suppress(OSError):
                    os.kill(each, 9)
        if server and _alive(server):
            os.kill(server, 9)
