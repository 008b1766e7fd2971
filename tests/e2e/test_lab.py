"""`vnet lab up|status|down` on real namespaces."""

from __future__ import annotations

import secrets
import subprocess

from tests.e2e.conftest import Vnet, links_in, netns_list, ping


def test_lab_up_builds_a_reachable_substrate(vnet: Vnet, lab: str) -> None:
    status = vnet.json("lab", "status", "--name", lab)
    assert status["running"]
    hosts = [f"vl-{lab}-h{i}" for i in (1, 2, 3)]
    assert set(hosts) | {f"vl-{lab}-switch"} <= netns_list()
    # data network through the lab switch, host to host
    assert ping(hosts[0], "198.18.0.12")
    assert ping(hosts[2], "198.18.0.11")
    # management network from the root namespace
    mgmt = status["config"]["mgmt_network"].rsplit(".", 1)[0]
    done = subprocess.run(["ping", "-c", "1", "-W", "2", f"{mgmt}.13"], capture_output=True)
    assert done.returncode == 0


def test_lab_up_twice_changes_nothing(vnet: Vnet, lab: str) -> None:
    status = vnet.json("lab", "status", "--name", lab)
    again = vnet.json(
        "lab", "up", "--name", lab, "--mgmt-network", status["config"]["mgmt_network"]
    )
    assert again["changed"] is False
    assert again["created"] == []


def test_lab_down_cleans_up_after_a_crashed_up(vnet: Vnet) -> None:
    name = "c" + secrets.token_hex(2)
    # a crash half-way: the switch and one host exist, with a half-made veth
    subprocess.run(["ip", "netns", "add", f"vl-{name}-switch"], check=True)
    subprocess.run(["ip", "netns", "add", f"vl-{name}-h1"], check=True)
    subprocess.run(
        [
            "ip",
            "-n",
            f"vl-{name}-h1",
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "h1",
            "netns",
            f"vl-{name}-switch",
        ],
        check=True,
    )
    subprocess.run(["ip", "link", "add", f"vl{name}-mgmt", "type", "bridge"], check=True)
    try:
        down = vnet.json("lab", "down", "--name", name)
        assert down["changed"]
        assert not {n for n in netns_list() if n.startswith(f"vl-{name}-")}
        assert not {n for n in links_in_root() if n.startswith(f"vl{name}-")}
    finally:
        for ns in (f"vl-{name}-switch", f"vl-{name}-h1"):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", f"vl{name}-mgmt"], capture_output=True)


def test_lab_down_twice_is_harmless(vnet: Vnet) -> None:
    name = "d" + secrets.token_hex(2)
    vnet.run("lab", "up", "--name", name, "--hosts", "2", "--mgmt-network", "198.19.199.0/24")
    assert vnet.json("lab", "down", "--name", name)["changed"]
    assert vnet.json("lab", "down", "--name", name)["changed"] is False
    assert not {n for n in netns_list() if n.startswith(f"vl-{name}-")}
    assert vnet.run("lab", "status", "--name", name, check=False).returncode == 3


def links_in_root() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()}


__all__ = ["links_in"]
