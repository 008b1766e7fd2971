"""A node moved between PIPs through the chain (issue #13): `vnet migrate VNET
NODE --location L` at the VNO moves a namespace router of Figure 6 from PIP 1
(Berlin) to PIP 2 (London); every link, inter-PIP ones included, carries
traffic after; an open console session on it continues in a new shell at
PIP 2; the VNO's records name no PIP or host; a move nobody can take leaves
the VNet as it was. One lab of two PIPs, real Ansible."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import EXAMPLES, Lab, Vnet, netns_list, new_lab, ping
from tests.integration.test_console_repoint import ask, inode_in, ns_inode, read_until
from vnetlib.console.client import open_console
from vnetlib.lab.players import service_provider
from vnetlib.spec import load_vnet

TWO_PIPS = EXAMPLES / "figure6-2pip.xml"
SPEC = load_vnet(TWO_PIPS)


@pytest.fixture(scope="module")
def chain(vnet: Vnet) -> Iterator[tuple[Lab, str]]:
    made = new_lab(vnet, "--pips", "2", "--hosts", "2")
    try:
        up = vnet.json("up", str(TWO_PIPS), "--lab", made.name)
        assert up["status"] == "ready"
        yield made, up["vnet"]
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)


def _netns(lab: Lab, node: str) -> dict[str, str]:
    """PIP substrate -> the node's namespace there."""
    return {sub: ns for ns in netns_list() for sub in (f"{lab.name}p1", f"{lab.name}p2")
            if ns.startswith(f"vn-{sub}-") and ns.endswith(f"-{node}")}


def _all_links_ping(lab: Lab) -> None:
    for link in SPEC.links:
        for src, dst in ((link.a, link.b), (link.b, link.a)):
            (ns,) = _netns(lab, src.node).values()
            peer = dst.interface.addresses[0].split("/")[0]
            assert ping(ns, peer) or ping(ns, peer, wait=3), (
                f"{link.id}: {src.node} -> {dst.node}")


def _vno_text(vnet: Vnet, lab: Lab) -> str:
    """Everything the VNO keeps: its store's rows."""
    home = Path(vnet.env["VNET_HOME"]) / "labs" / lab.name
    rows: list[str] = []
    for db in home.rglob("*.db"):
        if "vno" not in str(db.relative_to(home)):
            continue
        with sqlite3.connect(db) as conn:
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"):
                rows += [json.dumps(r, default=str) for r in conn.execute(
                    f'SELECT * FROM "{table}"')]
    assert rows, f"no VNO store under {home}"
    return "\n".join(rows)


def test_a_router_moves_from_pip1_to_pip2(vnet: Vnet, chain: tuple[Lab, str]) -> None:
    lab, vnet_id = chain
    assert set(_netns(lab, "r2")) == {f"{lab.name}p1"}

    # declined: no PIP offers the location; nothing changes
    refused = vnet.run("migrate", "--lab", lab.name, vnet_id, "r2", "--location", "tokyo",
                       "--json", check=False)
    assert refused.returncode != 0
    assert "tokyo" in refused.stderr and f"{lab.name}p" not in refused.stderr
    assert set(_netns(lab, "r2")) == {f"{lab.name}p1"}

    # an open console session on r2 follows it to PIP 2 (a new shell there)
    source_ns = ns_inode(_netns(lab, "r2")[f"{lab.name}p1"])

    async def move_with_a_console() -> dict[str, object]:
        reader, writer = await open_console(service_provider(lab.name), vnet_id, "r2")
        try:
            out = await ask(reader, writer, "readlink /proc/self/ns/net", "before")
            assert inode_in(out) == source_ns
            moved: dict[str, object] = await asyncio.get_running_loop().run_in_executor(
                None, vnet.json, "migrate", "--lab", lab.name, vnet_id, "r2", "--location",
                "london")
            await read_until(reader, rb"r2 was moved.*\]", timeout=30)
            out = await ask(reader, writer, "readlink /proc/self/ns/net", "after")
            assert inode_in(out) == ns_inode(_netns(lab, "r2")[f"{lab.name}p2"])
            return moved
        finally:
            writer.close()

    moved = asyncio.run(move_with_a_console())
    assert moved["status"] == "ready"
    assert set(_netns(lab, "r2")) == {f"{lab.name}p2"}  # gone from PIP 1, made at PIP 2
    _all_links_ping(lab)

    status = vnet.json("status", vnet_id, "--lab", lab.name)
    text = json.dumps(status) + _vno_text(vnet, lab)
    players = vnet.json("lab", "status", "--name", lab.name)["players"]
    pips = [name for name, p in players.items() if p["role"] == "pip"]
    assert len(pips) == 2
    for secret in (f"{lab.name}p1", f"{lab.name}p2", *pips):
        assert secret not in text, f"the VNO knows {secret!r}"
