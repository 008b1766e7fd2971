"""The exchange that joins the PIP substrates of a multi-PIP lab.

Each PIP's switch namespace becomes its border router: the switch bridge gets
the data network's first address, and a veth into the exchange (a bridge in its
own namespace, 198.18.250.0/24) carries traffic to the other PIPs' data
networks. Hosts route the lab's data range (198.18.0.0/17) through their border
router, so a VXLAN tunnel between hosts of two PIPs crosses two border routers
and the exchange, as it would between two providers.
"""

from __future__ import annotations

import netaddr
from pyroute2 import IPRoute, netns

from vnetlib import naming
from vnetlib.lab.kernel import (
    SWITCH_BRIDGE,
    Changes,
    attach_up,
    ensure_addr,
    ensure_bridge,
    ensure_netns,
    ensure_veth,
    link_index,
    namespace,
)
from vnetlib.lab.layout import LabConfig

EXCHANGE_NETWORK = "198.18.250.0/24"
DATA_RANGE = "198.18.0.0/17"
EXCHANGE_BRIDGE = "ix0"
EXCHANGE_IF = "ext0"


def exchange_netns(lab: str) -> str:
    return f"{naming.lab_netns_prefix(lab)}ix"


def exchange_address(index: int) -> str:
    return str(netaddr.IPNetwork(EXCHANGE_NETWORK).network + index)


def ensure_route(ipr: IPRoute, dst: str, gateway: str) -> None:
    net = netaddr.IPNetwork(dst)
    routes = [
        r
        for r in ipr.get_routes(family=2)
        if r.get_attr("RTA_DST") == str(net.network) and r["dst_len"] == net.prefixlen
    ]
    if not any(r.get_attr("RTA_GATEWAY") == gateway for r in routes):
        for stale in routes:
            ipr.route("del", dst=str(net), gateway=stale.get_attr("RTA_GATEWAY"))
        ipr.route("add", dst=str(net), gateway=gateway)


def _forwarding(name: str) -> None:
    netns.pushns(name)
    try:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as knob:
            knob.write("1")
    finally:
        netns.popns()


def up(lab: str, substrates: list[LabConfig]) -> Changes:
    """Join `substrates` (already up) through the lab's exchange; idempotent."""
    changes = Changes()
    ix = exchange_netns(lab)
    ensure_netns(ix, changes)
    with namespace(ix) as ipr:
        bridge = ensure_bridge(ipr, EXCHANGE_BRIDGE, ix, changes)
    prefixlen = netaddr.IPNetwork(EXCHANGE_NETWORK).prefixlen
    for i, sub in enumerate(substrates, start=1):
        if netaddr.IPNetwork(sub.data_network) not in netaddr.IPNetwork(DATA_RANGE):
            raise ValueError(
                f"substrate {sub.name}: data network {sub.data_network} "
                f"is outside the lab's data range {DATA_RANGE}"
            )
        sw = naming.switch_netns(sub.name)
        port = f"p{sub.name}"
        ensure_veth(sw, EXCHANGE_IF, ix, port, changes)
        with namespace(ix) as ipr:
            attach_up(ipr, port, bridge)
        with namespace(sw) as ipr:
            ext = attach_up(ipr, EXCHANGE_IF, None)
            ensure_addr(ipr, ext, exchange_address(i), prefixlen)
            sw0 = link_index(ipr, SWITCH_BRIDGE)
            assert sw0 is not None
            ensure_addr(ipr, sw0, sub.data_gateway, sub.data_prefixlen)
            for j, other in enumerate(substrates, start=1):
                if j != i:
                    ensure_route(ipr, other.data_network, exchange_address(j))
        _forwarding(sw)
        for host in sub.host_names:
            with namespace(naming.host_netns(sub.name, host)) as ipr:
                ensure_route(ipr, DATA_RANGE, sub.data_gateway)
    return changes
