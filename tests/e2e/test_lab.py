"""`vnet lab up|status|down` on real namespaces."""

from __future__ import annotations

import secrets
import subprocess

from tests.e2e.conftest import Lab, Vnet, netns_list, ping


def test_lab_up_builds_a_reachable_substrate(vnet: Vnet, lab: Lab) -> None:
    status = vnet.json("lab", "status", "--name", lab.name)
    assert status["running"]
    assert status["substrates"] == [lab.substrate]
    hosts = [f"vl-{lab.substrate}-h{i}" for i in (1, 2, 3)]
    assert set(hosts) | {f"vl-{lab.substrate}-switch"} <= netns_list()
    # data network through the lab switch, host to host
    assert ping(hosts[0], "198.18.1.12")
    assert ping(hosts[2], "198.18.1.11")
    # management network from the root namespace
    offset = status["config"]["mgmt_offset"]
    done = subprocess.run(
        ["ping", "-c", "1", "-W", "2", f"198.18.{129 + offset}.13"], capture_output=True
    )
    assert done.returncode == 0


def test_lab_up_twice_changes_nothing(vnet: Vnet, lab: Lab) -> None:
    config = vnet.json("lab", "status", "--name", lab.name)["config"]
    again = vnet.json(
        "lab",
        "up",
        "--name",
        lab.name,
        "--pips",
        "1",
        "--no-players",
        "--mgmt-offset",
        str(config["mgmt_offset"]),
    )
    assert again["changed"] is False
    assert again["created"] == []


def test_lab_down_cleans_up_after_a_crashed_up(vnet: Vnet) -> None:
    name = "c" + secrets.token_hex(1) + "x"
    sub = f"{name}p2"
    # A crash half-way, before any file was written: the second PIP's switch
    # and one host exist with a half-made veth, a management bridge, the
    # exchange, and a virtual node of a VNet that never reached the store.
    made = [f"vl-{sub}-switch", f"vl-{sub}-h1", f"vn-{sub}-x-1-r1", f"vl-{name}-ix"]
    for ns in made:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    veth = ["eth0", "type", "veth", "peer", "name", "h1", "netns"]
    subprocess.run(["ip", "-n", f"vl-{sub}-h1", "link", "add", *veth, f"vl-{sub}-switch"],
                   check=True)
    subprocess.run(["ip", "link", "add", f"vl{sub}-mgmt", "type", "bridge"], check=True)
    try:
        down = vnet.json("lab", "down", "--name", name)
        assert down["changed"]
        assert not {n for n in netns_list() if name in n}
        assert not {n for n in links_in_root() if n.startswith(f"vl{name}")}
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", f"vl{sub}-mgmt"], capture_output=True)


def test_lab_down_twice_is_harmless(vnet: Vnet) -> None:
    name = "d" + secrets.token_hex(1) + "x"
    vnet.run("lab", "up", "--name", name, "--hosts", "2", "--no-players", "--mgmt-offset", "97")
    assert vnet.json("lab", "down", "--name", name)["changed"]
    assert vnet.json("lab", "down", "--name", name)["changed"] is False
    assert not {n for n in netns_list() if name in n}
    assert vnet.run("lab", "status", "--name", name, check=False).returncode == 1


def links_in_root() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()}
