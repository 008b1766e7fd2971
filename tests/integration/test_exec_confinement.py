"""Confined execs with real processes, cgroups and namespaces: limits, kills,
separation of tenants and hiding of the PIP's files (vnetlib.players.confine)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from vnetlib.players import cgroups
from vnetlib.players.confine import (
    UID_BASE,
    UID_SPAN,
    Confinement,
    ConfinementError,
    ExecResult,
    Limits,
    UidMap,
    writable_mounts,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

LIMITS = Limits(memory_bytes=64 * 2**20, pids=48, cpu_quota=0.5,
                output_bytes=2 * 2**20, timeout=10.0)
ADDRESS = "198.18.77.1"
# Shells that fork until fork fails (then die), restarted for ever.
FORK_BOMB = """
import subprocess, time
while True:
    try:
        subprocess.run(["sh", "-c", "f() { while :; do f & done; }; f"], stderr=subprocess.DEVNULL)
    except OSError:
        time.sleep(0.01)
"""


@pytest.fixture
def netns() -> Iterator[Callable[[], str]]:
    """Makes throwaway network namespaces with `lo` up and ADDRESS on it."""
    made: list[str] = []

    def make() -> str:
        name = f"vt-{secrets.token_hex(4)}"
        made.append(name)
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", f"{ADDRESS}/32", "dev", "lo"],
                       check=True)
        return name

    try:
        yield make
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def vnet_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fake $VNET_HOME outside /tmp (which every exec replaces anyway)."""
    home = Path("/var/lib") / f"vt-home-{secrets.token_hex(4)}"
    home.mkdir(mode=0o755)
    monkeypatch.setenv("VNET_HOME", str(home))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def confinement(tmp_path: Path, vnet_home: Path) -> Iterator[Confinement]:
    conf = Confinement(tmp_path / "confine", LIMITS,
                       cgroup_parent=f"vnet-exec-test-{secrets.token_hex(4)}")
    try:
        yield conf
    finally:
        for tenant in conf.tenants():
            conf.remove(tenant)
        for parent in conf.layout.parents():
            if parent.is_dir():
                parent.rmdir()


def tagged(tag: str) -> list[int]:
    """Pids of the `sleep` processes whose command line holds `tag`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if ((entry / "comm").read_text() == "sleep\n"
                    and tag.encode() in (entry / "cmdline").read_bytes()):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_for(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def sleep_tag() -> str:
    """A unique `sleep` argument, to find the processes of one test."""
    return f"{4000 + secrets.randbelow(999)}.{secrets.randbelow(10**6):06d}"


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_command_runs_unprivileged_in_the_node_and_ping_works(
        confinement: Confinement, netns: Callable[[], str]) -> None:
    ns = netns()
    result = confinement.run("vnet-a", ns, ["sh", "-c", f"""
        id -u; id -G; grep -e '^CapEff' -e '^NoNewPrivs' /proc/self/status
        ip -o -4 addr show dev lo
        ping -c 1 -W 2 {ADDRESS} >/dev/null && echo ping-ok
        echo to-stderr >&2; exit 3"""])
    lines = result.stdout.splitlines()
    uid = confinement.uids.get("vnet-a")
    assert UID_BASE <= uid < UID_BASE + UID_SPAN
    assert lines[0] == lines[1] == str(uid)
    assert "CapEff:\t0000000000000000" in lines and "NoNewPrivs:\t1" in lines
    assert ADDRESS in result.stdout and "ping-ok" in lines
    assert (result.exit_code, result.stderr, result.killed_reason) == (3, "to-stderr\n", None)


def test_unbounded_output_is_capped_and_memory_stays_bounded(
        confinement: Confinement, netns: Callable[[], str]) -> None:
    ns = netns()
    base, peak, done = rss_kib(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        started = time.monotonic()
        result = confinement.run("vnet-a", ns, ["sh", "-c", "yes >&2 & yes"])
        elapsed = time.monotonic() - started
    finally:
        done.set()
        sampler.join()
    assert result.truncated and result.killed_reason == "output limit"
    assert len(result.stdout) + len(result.stderr) == LIMITS.output_bytes
    assert set(result.stdout) <= {"y", "\n"}
    assert elapsed < 5
    assert (peak[0] - base) < 10 * 1024, f"RSS grew by {peak[0] - base} KiB"


def test_long_stream_until_timeout_keeps_memory_bounded(
        confinement: Confinement, netns: Callable[[], str]) -> None:
    """Output below the cap for seconds: read as it comes, kept, then cut at
    the deadline with every process of the exec."""
    ns = netns()
    base = rss_kib()
    result = confinement.run("vnet-a", ns, ["sh", "-c", "while :; do echo tick; sleep 0.01; done"],
                             timeout=2.0)
    assert result.timed_out and result.exit_code == 124 and result.killed_reason == "timeout"
    assert 20 < result.stdout.count("tick\n") < 400 and not result.truncated
    assert rss_kib() - base < 10 * 1024


def test_fork_bomb_hits_the_pids_limit_and_dies_at_timeout(
        confinement: Confinement, netns: Callable[[], str]) -> None:
    ns = netns()
    tenant_pids = confinement.layout.limits["pids"][0] / "vnet-a"
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if (tenant_pids / "pids.current").exists():
                seen.append(int((tenant_pids / "pids.current").read_text()))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = confinement.run("vnet-a", ns, ["python3", "-c", FORK_BOMB], timeout=2.0)
    finally:
        done.set()
        watcher.join()
    assert result.timed_out and result.killed_reason == "timeout"
    assert max(seen) == LIMITS.pids
    assert sorted(seen)[len(seen) // 2] >= LIMITS.pids - 4, "the bomb was not at the limit"
    assert cgroups.pids(confinement.layout.tracker / "vnet-a") == []
    assert subprocess.run(["true"], check=False).returncode == 0


def test_memory_hog_is_killed_at_the_memory_limit(
        confinement: Confinement, netns: Callable[[], str]) -> None:
    ns = netns()
    hog = "b = []\nwhile True: b.append(bytearray(2**20))"
    result = confinement.run("vnet-a", ns, ["python3", "-c", hog])
    assert result.killed_reason == "memory limit"
    assert result.exit_code == 137 and not result.timed_out


def test_cpu_is_throttled_at_the_quota(confinement: Confinement,
                                       netns: Callable[[], str]) -> None:
    ns = netns()
    spin = ("import os, time\nend = time.monotonic() + 1.5\n"
            "while time.monotonic() < end: pass\nt = os.times()\nprint(t.user + t.system)")
    result = confinement.run("vnet-a", ns, ["python3", "-c", spin])
    used = float(result.stdout)
    assert 0.05 < used < 1.0, f"{used:.2f} s of CPU in 1.5 s at {LIMITS.cpu_quota} cores"


@pytest.mark.parametrize("script", [
    "sleep {tag} & echo started",
    "setsid sh -c 'sleep {tag} & exit 0' & echo started",
    "sh -c 'sh -c \"setsid sleep {tag} </dev/null >/dev/null 2>&1 &\" &' ; echo started",
])
def test_background_processes_die_with_their_exec(
        confinement: Confinement, netns: Callable[[], str], script: str) -> None:
    ns, tag = netns(), sleep_tag()
    started = time.monotonic()
    result = confinement.run("vnet-a", ns, ["sh", "-c", script.format(tag=tag)])
    assert result.stdout == "started\n" and result.exit_code == 0
    assert time.monotonic() - started < 3
    assert tagged(tag) == []


def test_background_process_dies_at_timeout(confinement: Confinement,
                                            netns: Callable[[], str]) -> None:
    ns, tag = netns(), sleep_tag()
    result = confinement.run("vnet-a", ns, ["sh", "-c", f"setsid sleep {tag} & sleep 60"],
                             timeout=1.0)
    assert result.timed_out and result.killed_reason == "timeout"
    assert tagged(tag) == []


def test_kill_and_remove_end_every_process_and_leave_nothing(
        confinement: Confinement, netns: Callable[[], str]) -> None:
    ns, tag = netns(), sleep_tag()
    with ThreadPoolExecutor(2) as pool:
        running: list[Future[ExecResult]] = [
            pool.submit(confinement.run, "vnet-a", ns,
                        ["sh", "-c", f"setsid sleep {tag} & sleep {tag}"], timeout=30.0)
            for _ in range(2)]
        wait_for(lambda: len(tagged(tag)) == 4)
        assert confinement.kill("vnet-a") >= 4 + 2
        results = [f.result(timeout=10) for f in running]
    assert all(r.killed_reason == "killed" and not r.timed_out for r in results)
    assert tagged(tag) == []

    with ThreadPoolExecutor(1) as pool:
        later = pool.submit(confinement.run, "vnet-a", ns, ["sleep", tag], timeout=30.0)
        wait_for(lambda: len(tagged(tag)) == 1)
        confinement.remove("vnet-a")
        assert later.result(timeout=10).killed_reason == "killed"
    assert tagged(tag) == []
    assert confinement.tenants() == []
    for parent in confinement.layout.parents():
        assert not (parent / "vnet-a").exists()
    confinement.remove("vnet-a")


def test_without_cgroup2_the_v1_freezer_kills_everything(
        confinement: Confinement, netns: Callable[[], str]) -> None:
    """The layout of a host without any cgroup2: freeze, SIGKILL, thaw."""
    own = cgroups.own_paths(Path("/proc/self/cgroup").read_text())["freezer"]
    freezer = Path("/sys/fs/cgroup/freezer") / own.strip("/") / f"vt-{secrets.token_hex(4)}"
    confinement.layout = replace(confinement.layout, killer=None, v2_root=None, freezer=freezer)
    ns, tag = netns(), sleep_tag()
    result = confinement.run("vnet-a", ns, ["sh", "-c", f"setsid sleep {tag} & sleep 60"],
                             timeout=1.0)
    assert result.timed_out and tagged(tag) == []
    with ThreadPoolExecutor(1) as pool:
        later = pool.submit(confinement.run, "vnet-a", ns,
                            ["sh", "-c", f"setsid sleep {tag} & sleep {tag}"], timeout=30.0)
        wait_for(lambda: len(tagged(tag)) == 2)
        confinement.remove("vnet-a")
        assert later.result(timeout=10).killed_reason == "killed"
    assert tagged(tag) == [] and not (freezer / "vnet-a").exists()


def test_tenants_are_separated_and_the_pips_files_hidden(
        confinement: Confinement, netns: Callable[[], str], vnet_home: Path) -> None:
    (vnet_home / "root-only").write_text("root secret\n")
    (vnet_home / "root-only").chmod(0o600)
    (vnet_home / "world-readable").write_text("provider secret\n")
    (vnet_home / "world-readable").chmod(0o644)
    control = Path("/var/lib") / f"vt-open-{secrets.token_hex(4)}"
    control.mkdir(mode=0o755)
    try:
        (control / "f").write_text("public\n")
        (control / "f").chmod(0o644)
        ns_a, ns_b, tag = netns(), netns(), sleep_tag()
        with ThreadPoolExecutor(1) as pool:
            b = pool.submit(confinement.run, "vnet-b", ns_b,
                            ["sh", "-c", f"echo b-secret > /tmp/b; chmod 644 /tmp/b; sleep {tag}"],
                            timeout=30.0)
            wait_for(lambda: len(tagged(tag)) == 1)
            (b_pid,) = tagged(tag)
            a = confinement.run("vnet-a", ns_a, ["sh", "-c", f"""
                kill -0 {b_pid} 2>/dev/null && echo signal-b
                ls /proc | grep -qx {b_pid} && echo see-b
                [ "$(ps -eo comm= | grep -cx sleep)" = 0 ] || echo see-b-cmd
                cat /tmp/b 2>/dev/null && echo read-b
                ls /proc | grep -c '^[0-9]'
                cat {vnet_home}/root-only {vnet_home}/world-readable 2>/dev/null
                ls {vnet_home} 2>/dev/null && echo list-home
                echo x > /var/lib/x 2>/dev/null && echo write-host
                cat {control}/f"""])
            confinement.remove("vnet-b")
            assert b.result(timeout=10).killed_reason == "killed"
        assert confinement.uids.get("vnet-a") != confinement.uids.get("vnet-b")
        lines = a.stdout.splitlines()
        assert lines[-1] == "public"
        assert int(lines[0]) <= 5, a.stdout
        assert lines[1:] == ["public"], a.stdout
        assert "secret" not in a.stdout
    finally:
        shutil.rmtree(control)


def test_uids_are_stable_and_collisions_are_probed(tmp_path: Path) -> None:
    uids = UidMap(tmp_path)
    first = uids.get("vnet-1")
    assert uids.get("vnet-1") == first == UidMap(tmp_path).get("vnet-1")
    table = {f"squatter-{i}": UID_BASE + (first - UID_BASE + i) % UID_SPAN for i in range(3)}
    uids.forget("vnet-1")
    uids.file.write_text(__import__("json").dumps(table))
    assert uids.get("vnet-1") == UID_BASE + (first - UID_BASE + 3) % UID_SPAN
    assert sorted(uids.tenants()) == sorted([*table, "vnet-1"])


def test_bad_tenant_and_missing_namespace_are_refused(confinement: Confinement) -> None:
    with pytest.raises(ConfinementError):
        confinement.run("../etc", "vt-none", ["true"])
    with pytest.raises(ConfinementError, match="no network namespace"):
        confinement.run("vnet-a", f"vt-missing-{secrets.token_hex(4)}", ["true"])


def test_only_writable_real_file_systems_are_made_read_only() -> None:
    table = "\n".join([
        "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw",
        "23 22 0:5 / /proc rw - proc proc rw",
        "24 22 0:6 / /dev/shm rw - tmpfs tmpfs rw",
        "25 22 0:7 / /mnt/my\\040disk rw,nosuid - xfs /dev/vdb rw",
        "26 22 0:8 / /opt ro - ext4 /dev/vdc ro",
        "27 22 0:9 / /run/netns/x rw - nsfs nsfs rw",
    ])
    assert writable_mounts(table) == ["/", "/mnt/my disk"]


def test_cgroup_mounts_and_own_paths_are_read_for_v1_v2_and_hybrid() -> None:
    table = "\n".join([
        "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate",
        "31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
        "32 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
        "33 25 0:29 / /proc rw - proc proc rw",
    ])
    assert cgroups.mounts(table) == [
        cgroups.Mount(Path("/sys/fs/cgroup"), 2, frozenset()),
        cgroups.Mount(Path("/sys/fs/cgroup/memory"), 1, frozenset({"memory"})),
        cgroups.Mount(Path("/sys/fs/cgroup/cpu,cpuacct"), 1, frozenset({"cpu", "cpuacct"})),
    ]
    own = cgroups.own_paths("4:memory:/svc\n1:cpu,cpuacct:/a\n0::/system.slice/vnet.service\n")
    assert own == {"memory": "/svc", "cpu": "/a", "cpuacct": "/a",
                   "": "/system.slice/vnet.service"}


class ThisHost:
    """A substrate host that is this machine, reached without SSH: the agent
    (what runs on a host over SSH) runs here as it would there."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def remote(self, host: str) -> bool:
        return host == "far"

    def argv(self, host: str, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        self.calls.append(list(argv))
        return list(argv)


def test_a_node_on_another_host_is_confined_by_the_agent_there(
        tmp_path: Path, vnet_home: Path, netns: Callable[[], str]) -> None:
    ns = netns()
    host = ThisHost()
    parent = f"vnet-exec-test-{secrets.token_hex(4)}"
    conf = Confinement(tmp_path / "confine", LIMITS, cgroup_parent=parent, hosts=host)
    layout = cgroups.detect("/" + parent)  # the host's: below each hierarchy's root
    tag = sleep_tag()
    try:
        done = conf.run("ta", ns, ["sh", "-c", "id -u; cat /proc/self/cgroup"], host="far")
        assert done.exit_code == 0, done
        assert int(done.stdout.split()[0]) >= UID_BASE
        assert host.calls and host.calls[0][:2] == ["python3", "-c"]
        assert cgroups.tenants(layout) == ["ta"]
        limit = layout.limits["pids"][0] / "ta" / "pids.max"
        assert limit.read_text().strip() == str(LIMITS.pids)
        # A timeout kills the exec on the host, through the agent.
        slow = conf.run("ta", ns, ["sh", "-c", f"sleep {tag} & sleep {tag}"], host="far",
                        timeout=1.0)
        assert slow.timed_out and slow.killed_reason == "timeout"
        assert tagged(tag) == []
        with pytest.raises(ConfinementError,
                           match=r"no network namespace vt-missing on this host \(host far\)"):
            conf.run("ta", "vt-missing", ["true"], host="far")
        # A node on a netns host of the same PIP stays here, below the local parent.
        assert conf.run("tb", ns, ["true"], host="near").exit_code == 0
        here, there = conf.layout.limits["memory"][0], layout.limits["memory"][0]
        if here != there:  # (they are one when this process sits at the root)
            assert (here / "tb").is_dir() and not (there / "tb").exists()
        assert conf.tenants() == ["ta", "tb"]
    finally:
        for tenant in conf.tenants():
            conf.remove(tenant)
        cgroups.prune(layout)
        cgroups.prune(conf.layout)
    assert cgroups.tenants(layout) == [] and conf.host_map.tenants() == []
