"""`vnet lab up --connection ssh --encap vlan --switch ssh`: substrate hosts
reached over SSH program the switch's VLANs themselves, as real hosts
would: vnet_vlan runs in each host's own Python (Debian's paramiko, which
`scripts/install.sh --test` installs there) and logs in to the switch's
sshd with its key, the switch's host key pinned. Figure 6 pings across
every link, its crossing links ride tagged switch ports, and the removal
leaves the hosts and the switch's ports as they were."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import EXAMPLES, Lab, Vnet, new_lab
from tests.e2e.test_encap_direct import devices, every_link_pings, ovs_ports

FIGURE6 = EXAMPLES / "figure6.xml"


@pytest.fixture(scope="module")
def vlan_lab(vnet: Vnet) -> Iterator[Lab]:
    made = new_lab(vnet, "--pips", "1", "--hosts", "2", "--no-players", "--connection", "ssh",
                   "--encap", "vlan", "--switch", "ssh")
    try:
        yield made
    finally:
        vnet.run("lab", "down", "--name", made.name, check=False)


def test_figure6_on_vlans_set_by_hosts_over_ssh(vnet: Vnet, vlan_lab: Lab) -> None:
    substrate = vlan_lab.substrate
    before, ports = devices(substrate), ovs_ports(vnet, substrate)
    made = vnet.json("up", str(FIGURE6), "--substrate", substrate)
    every_link_pings(substrate, made["vnet"])
    tagged = {p: tag for p, tag in ovs_ports(vnet, substrate).items() if p not in ports}
    assert tagged and all(tag is not None for tag in tagged.values()), tagged
    vnet.run("down", made["vnet"])
    assert devices(substrate) == before
    assert ovs_ports(vnet, substrate) == ports
