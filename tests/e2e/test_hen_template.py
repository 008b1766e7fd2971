"""inventories/hen, the template of a real PIP (Xen hosts, a switch, a
management node), deployed through as it is against the lab's SSH hosts:
only the addresses differ."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import EXAMPLES, ROOT, Lab, Vnet, links_in, netns_list, new_lab
from vnetlib import paths
from vnetlib.lab import manage, sshd
from vnetlib.lab.layout import LabConfig
from vnetlib.spec import load_substrate, load_vnet

TEMPLATE = ROOT / "inventories" / "hen"
FIGURE6 = EXAMPLES / "figure6.xml"
HEN = "hen"


def _address_map(lab: LabConfig) -> dict[str, str]:
    """Template address -> the lab's, for networks and each host."""
    template = load_substrate(TEMPLATE / "substrate.xml")
    assert template.data_network and template.mgmt_network
    mapping = {template.data_network: lab.data_network,
               template.mgmt_network: lab.mgmt_network}
    for i, host in enumerate(template.hosts, start=1):
        assert host.data_address and host.mgmt_address
        mapping[host.data_address] = lab.data_address(i)
        mapping[host.mgmt_address] = lab.mgmt_address(i)
    return mapping


def _readdress(text: str, mapping: dict[str, str]) -> str:
    pattern = re.compile("|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True))
                         + r"(?![0-9])")
    return pattern.sub(lambda m: mapping[m.group(0)], text)


@pytest.fixture
def hen(vnet: Vnet) -> Iterator[tuple[Lab, Path]]:
    """A lab of four SSH hosts, and the hen template as substrate `hen` on them."""
    lab = new_lab(vnet, "--pips", "1", "--hosts", "4", "--no-players", "--connection", "ssh")
    target = paths.substrate_dir(HEN)
    try:
        assert not target.exists()
        config = LabConfig.from_dict(yaml.safe_load(
            (paths.substrate_dir(lab.substrate) / "lab.json").read_text()))
        mapping = _address_map(config)
        target.mkdir(parents=True)
        (target / "substrate.xml").write_text(
            _readdress((TEMPLATE / "substrate.xml").read_text(), mapping))
        (target / "inventory.yml").write_text(
            _readdress((TEMPLATE / "hosts.yml").read_text(), mapping))
        shutil.copytree(TEMPLATE / "group_vars", target / "group_vars")
        lab_ssh = sshd.files_of(paths.substrate_dir(lab.substrate))
        (target / "ssh").mkdir(mode=0o700)
        for name in ("id_ed25519", "known_hosts"):
            shutil.copy2(lab_ssh.directory / name, target / "ssh" / name)
        yield lab, target
    finally:
        manage.down(HEN)  # its ledger, files and any vn-hen-* namespace left over
        vnet.run("lab", "down", "--name", lab.name, check=False)
        shutil.rmtree(target, ignore_errors=True)


def test_only_addresses_differ_from_the_template(hen: tuple[Lab, Path]) -> None:
    _, target = hen
    for name in ("substrate.xml", "hosts.yml"):
        copied = (target / ("inventory.yml" if name == "hosts.yml" else name)).read_text()
        original = (TEMPLATE / name).read_text()
        strip = re.compile(r"198\.18\.[0-9]+\.[0-9]+")
        assert strip.sub("A", copied) == strip.sub("A", original), name
    assert (target / "group_vars" / "substrate.yml").read_bytes() == (
        TEMPLATE / "group_vars" / "substrate.yml").read_bytes()


def test_figure6_through_the_hen_template_over_ssh(vnet: Vnet, hen: tuple[Lab, Path]) -> None:
    lab, _ = hen
    result = vnet.json("up", str(FIGURE6), "--substrate", HEN)
    assert set(result["node_map"].values()) <= {f"hen-xen-0{i}" for i in range(1, 5)}
    assert len(set(result["node_map"].values())) > 1
    for link in load_vnet(FIGURE6).links:
        for src, dst in ((link.a, link.b), (link.b, link.a)):
            peer = dst.interface.addresses[0].split("/")[0]
            done = vnet.run("exec", result["vnet"], src.node, "--", "ping", "-c", "1", "-W", "2",
                            peer, check=False)
            assert done.returncode == 0, f"{link.id}: {src.node} cannot reach {peer}"
    # The tunnels are in the lab hosts' namespaces, where the sshd runs.
    tunnels = {i for h in range(1, 5) for i in links_in(f"vl-{lab.substrate}-h{h}")
               if i.startswith("vx")}
    assert tunnels
    vnet.run("down", result["vnet"])
    assert {n for n in netns_list() if n.startswith(f"vn-{HEN}-")} == set()
    assert not {i for h in range(1, 5) for i in links_in(f"vl-{lab.substrate}-h{h}")
                if i.startswith(("vx", "vb", "vp"))}
