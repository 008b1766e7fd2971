"""`vnet lab up --connection ssh`: deployments reach the lab's hosts through
an sshd in each host, with pinned host keys, as on real machines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import EXAMPLES, Lab, Vnet, ancestors, links_in, netns_list, new_lab
from vnetlib import hosts, paths
from vnetlib.console.endpoints import NetnsShell
from vnetlib.instantiate import find
from vnetlib.lab import remote, sshd
from vnetlib.players import cgroups
from vnetlib.players.confine import UID_BASE, Confinement, Limits
from vnetlib.spec import load_vnet

FIGURE6 = EXAMPLES / "figure6.xml"
HOSTS = ("h1", "h2", "h3")


@pytest.fixture
def ssh_lab(vnet: Vnet) -> Iterator[Lab]:
    made = new_lab(vnet, "--pips", "1", "--no-players", "--connection", "ssh")
    try:
        yield made
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)


def _files(lab: Lab) -> sshd.SshFiles:
    return sshd.files_of(paths.substrate_dir(lab.substrate))


def _objects(lab: Lab, hosts: tuple[str, ...] = HOSTS) -> set[str]:
    found = {n for n in netns_list() if n.startswith(f"vn-{lab.substrate}-")}
    for host in hosts:
        found |= {f"{host}:{i}" for i in links_in(f"vl-{lab.substrate}-{host}")
                  if i.startswith(("vb", "vx", "vp"))}
    return found


def _pings(vnet: Vnet, vnet_id: str) -> None:
    for link in load_vnet(FIGURE6).links:
        for src, dst in ((link.a, link.b), (link.b, link.a)):
            peer = dst.interface.addresses[0].split("/")[0]
            done = vnet.run("exec", vnet_id, src.node, "--", "ping", "-c", "1", "-W", "2", peer,
                            check=False)
            assert done.returncode == 0, f"{link.id}: {src.node} cannot reach {peer}"


def test_figure6_over_ssh_pings_and_removal_leaves_nothing(vnet: Vnet, ssh_lab: Lab) -> None:
    files = _files(ssh_lab)
    inventory = yaml.safe_load(paths.substrate_dir(ssh_lab.substrate).joinpath(
        "inventory.yml").read_text())
    hosts = inventory["all"]["children"]["substrate"]["hosts"]
    for name, hv in hosts.items():
        assert hv["ansible_connection"] == "ansible.builtin.ssh"
        assert hv["ansible_host"] == hv["vnet_mgmt_address"]
        assert "StrictHostKeyChecking=yes" in hv["ansible_ssh_common_args"]
        assert hv["ansible_ssh_host_key_checking"] is True
        assert sshd.running(files, name) is not None
    for secret in (files.client_key, files.known_hosts, *(files.host_key(h) for h in HOSTS)):
        assert secret.stat().st_mode & 0o077 == 0, secret
    before = {h: _logins(files, h) for h in HOSTS}

    result = vnet.json("up", str(FIGURE6), "--substrate", ssh_lab.substrate)
    used = set(result["node_map"].values())
    assert len(used) > 1
    # The deployment really came through each used host's sshd: it forked a
    # connection process there (ControlPersist keeps it for a minute).
    for host in used:
        assert _logins(files, host) > before[host], f"no SSH connection to {host}"
        socket = files.control_dir / remote.control_name(hosts[host]["ansible_host"], 22, "root")
        assert socket.is_socket(), f"no ControlMaster socket {socket} for {host}"
    _pings(vnet, result["vnet"])
    # A command on a node's host, over SSH as Ansible reaches it (what exec
    # and consoles on real hosts need): it runs in that host, in the node.
    inventory_path = paths.substrate_dir(ssh_lab.substrate) / "inventory.yml"
    r1_host = result["node_map"]["r1"]
    argv = remote.command(inventory_path, r1_host, ["ip", "-o", "-4", "addr", "show", "mgmt0"])
    assert argv[0] == "ssh"
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    assert f" {hosts[r1_host]['vnet_mgmt_address']}/" in out
    r1_netns = f"vn-{ssh_lab.substrate}-{result['vnet']}-r1"
    argv = remote.command(inventory_path, r1_host, ["ip", "netns", "exec", r1_netns,
                                                     "ping", "-c", "1", "-W", "2", "198.19.0.1"])
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 0

    _exec_and_console_go_through_sshd(vnet, ssh_lab, result["vnet"], r1_host, r1_netns)

    vnet.json("down", result["vnet"])
    assert _objects(ssh_lab) == set()
    listeners = [sshd.running(files, h) for h in HOSTS]
    vnet.run("lab", "down", "--name", ssh_lab.name)
    assert {n for n in netns_list() if ssh_lab.substrate in n} == set()
    for pid in listeners:
        assert pid is not None and _gone(pid), f"sshd {pid} still runs after lab down"


def _in_netns(netns: str, comm: str) -> list[int]:
    """Processes named `comm` in namespace `netns`."""
    inode = os.stat(f"/run/netns/{netns}").st_ino
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if ((entry / "comm").read_text().strip() == comm
                    and os.stat(entry / "ns/net").st_ino == inode):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _wait_for(netns: str, comm: str, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while not (found := _in_netns(netns, comm)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _exec_and_console_go_through_sshd(vnet: Vnet, lab: Lab, vnet_id: str, host: str,
                                      netns: str) -> None:
    """`vnet exec`, a confined exec and a console shell of a node on an SSH
    host run below that host's sshd, never below the process that asked."""
    listener = sshd.running(_files(lab), host)
    assert listener is not None
    proc = subprocess.Popen([sys.executable, "-m", "vnetlib.cli.main", "exec", vnet_id, "r1",
                             "--", "sleep", "30"], env=vnet.env, stdin=subprocess.DEVNULL)
    try:
        sleepers = _wait_for(netns, "sleep")
        assert sleepers, "vnet exec never started its command in the node"
        chain = ancestors(sleepers[0])
        assert listener in chain, f"exec not below {host}'s sshd {listener}: {chain}"
        assert proc.pid not in chain
    finally:
        proc.kill()
        proc.wait()
        for pid in _in_netns(netns, "sleep"):
            os.kill(pid, signal.SIGKILL)

    inventory = paths.substrate_dir(lab.substrate) / "inventory.yml"
    parent = f"vnet-exec/test-{lab.name}"
    confinement = Confinement(paths.vnet_home() / "confine" / lab.name, Limits(timeout=20),
                              cgroup_parent=parent, hosts=hosts.Hosts(inventory))
    _, sliver = find(vnet_id)
    tenant = sliver.id
    try:
        done = confinement.run(tenant, netns, ["sh", "-c", "id -u; ip -o link | wc -l"],
                               host=host)
        assert done.exit_code == 0, done
        uid, links = done.stdout.split()
        assert int(uid) >= UID_BASE and int(links) > 1
        # The tenant's cgroups were made on the host, below the absolute parent.
        layout = cgroups.detect("/" + parent)
        assert tenant in cgroups.tenants(layout)
        assert confinement.tenants() == [tenant]

        async def session() -> bytes:
            shell = NetnsShell(confinement, lab.substrate)
            reader, writer = await shell.open(sliver, "r1")
            try:
                shells = await asyncio.to_thread(_wait_for, netns, "sh")
                assert shells, "no console shell in the node"
                assert all(listener in ancestors(p) for p in shells)
                assert os.getpid() not in ancestors(shells[0])
                writer.write(b"echo $((6 * 7))x; exit\n")
                await writer.drain()
                seen = b""
                deadline = time.monotonic() + 20
                while b"42x" not in seen and time.monotonic() < deadline:
                    seen += await asyncio.wait_for(reader.read(), 20)
                return seen
            finally:
                writer.close()
                await writer.wait_closed()
                assert shell.spares() == 0
                shell.close()

        assert b"42x" in asyncio.run(session())
        assert _in_netns(netns, "sh") == []
    finally:
        confinement.remove(tenant)
        confinement.close()
    layout = cgroups.detect("/" + parent)
    assert tenant not in cgroups.tenants(layout)
    cgroups.prune(layout)
    for made in layout.parents():  # "/vnet-exec" itself, unless someone else's is in it
        with contextlib.suppress(OSError):
            made.parent.rmdir()


def _logins(files: sshd.SshFiles, host: str) -> int:
    """sshd processes of `host` besides its listener: open connections."""
    return len(sshd.daemon_pids(files, host)) - 1


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_host_whose_sshd_stops_mid_deploy_fails_by_name_and_rest_rolls_back(
    vnet: Vnet, ssh_lab: Lab
) -> None:
    files = _files(ssh_lab)
    node_map = vnet.json("up", str(FIGURE6), "--substrate", ssh_lab.substrate,
                         "--check")["node_map"]
    used = sorted(set(node_map.values()))
    assert len(used) >= 2
    lost = used[-1]
    kept = tuple(h for h in HOSTS if h != lost)
    kept_nodes = {n for n, h in node_map.items() if h != lost}
    # The lost host's sshd (listener and any connection kept from the check
    # run) freezes before the deployment starts, so its part cannot finish;
    # once the other hosts' nodes exist, it is killed: a host lost mid-deploy.
    assert sshd.signal_host(files, lost, signal.SIGSTOP)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vnetlib.cli.main", "up", str(FIGURE6),
             "--substrate", ssh_lab.substrate],
            env=vnet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not _nodes_exist(ssh_lab, kept_nodes) and time.monotonic() < deadline:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.02)
            assert _nodes_exist(ssh_lab, kept_nodes), "the other hosts were never deployed"
            assert sshd.stop_host(files, lost)
            started = time.monotonic()
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert time.monotonic() - started < 60
        assert proc.returncode == 4, err
        assert lost in err
        assert "rollback incomplete on: " + lost in err
        assert _objects(ssh_lab, kept) == set()
        failed = [v for v in vnet.json("status") if v["lab"] == ssh_lab.substrate]
        assert [v["status"] for v in failed] == ["failed"]
    finally:
        sshd.signal_host(files, lost, signal.SIGCONT)
    down = vnet.run("lab", "status", "--name", ssh_lab.name, "--json", check=False)
    assert down.returncode == 1
    assert json.loads(down.stdout)["sshd"] == {f"{ssh_lab.substrate}/{h}": h != lost
                                               for h in HOSTS}
    # `vnet lab up` again starts the lost host's sshd; the removal then completes.
    config = json.loads(down.stdout)["config"]
    again = vnet.json("lab", "up", "--name", ssh_lab.name, "--pips", "1", "--no-players",
                      "--connection", "ssh", "--mgmt-offset", str(config["mgmt_offset"]))
    assert [c for c in again["created"] if "sshd" in c] == [
        f"sshd of {ssh_lab.substrate}/{lost} at {_address(files, lost)}"]
    vnet.run("down", failed[0]["vnet"])
    assert _objects(ssh_lab) == set()


def _nodes_exist(lab: Lab, nodes: set[str]) -> bool:
    present = {n.rsplit("-", 1)[1] for n in netns_list() if n.startswith(f"vn-{lab.substrate}-")}
    return nodes <= present


def _address(files: sshd.SshFiles, host: str) -> str:
    return files.config(host).read_text().split()[1].rsplit(":", 1)[0]


def test_a_host_key_other_than_the_pinned_one_is_refused(vnet: Vnet, ssh_lab: Lab) -> None:
    files = _files(ssh_lab)
    node_map = vnet.json("up", str(FIGURE6), "--substrate", ssh_lab.substrate,
                         "--check")["node_map"]
    victim = sorted(set(node_map.values()))[0]
    # The victim's sshd now presents another key (a new one, as an impostor would).
    sshd.stop_host(files, victim)
    files.host_key(victim).unlink()
    files.host_key(victim).with_suffix(".pub").unlink()
    pinned = files.known_hosts.read_text()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(files.host_key(victim))], check=True)
    os.chmod(files.host_key(victim), 0o600)
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/vl-{ssh_lab.substrate}-{victim}", "--", sshd.SSHD,
         "-D", "-e", "-f", str(files.config(victim))], start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    files.pidfile(victim).write_text(f"{proc.pid}\n")
    try:
        time.sleep(0.3)
        assert files.known_hosts.read_text() == pinned
        done = vnet.run("up", str(FIGURE6), "--substrate", ssh_lab.substrate, check=False)
        assert done.returncode == 4, done.stderr
        assert victim in done.stderr
        assert "Host key verification failed" in done.stderr
    finally:
        sshd.stop_host(files, victim)
        proc.wait(timeout=10)
