"""Manifest and advertisement RSpecs (GENI RSpec v3) of a PIP.

A manifest describes one sliver as its customer may know it: the request's
nodes and links, each with a `sliver_id` URN and `component_manager_id` (the
PIP), the run state of each node, the sliver's status, price and expiry,
and the stitching state of its boundary links. Like our own API it never
names a substrate host (information hiding): no `component_id` on nodes.

An advertisement is the PIP's `<advertisement>` in RSpec form: one node per
location (`component_id` `...+node+<location>`, an aggregate, not a host)
with the node kinds offered as `sliver_type`s and the free capacity and
prices in `<vnet:site>`; the encapsulations in `<vnet:provider>`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from vnetlib.core.pip import spec_of
from vnetlib.core.records import Sliver, State
from vnetlib.geni import urns
from vnetlib.geni.rspec import (
    document,
    g,
    interfaces_of,
    root_element,
    sub,
    v,
    write_link,
    write_node,
    write_vnet_extension,
)
from vnetlib.geni.schema import validate
from vnetlib.players.messages import Advertisement
from vnetlib.spec.model import VNetSpec
from vnetlib.spec.serialize import number


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def manifest_rspec(pip: str, sliver_id: str, name: str, spec: VNetSpec, *, status: str,
                   price: float, expires: float | None = None,
                   node_states: Mapping[str, str] | None = None,
                   stitches: Mapping[str, tuple[bool, int | None]] | None = None) -> bytes:
    """The manifest of sliver `sliver_id` (named `name` by its customer) at PIP
    `pip`; `node_states` maps nodes to a run state other than running,
    `stitches` boundary refs to (stitched, VNI)."""
    root = root_element("manifest")
    cm = urns.aggregate_urn(pip)
    sub(root, v("sliver"), name=name, status=status, price=number(price),
        expires=None if expires is None else iso(expires))
    write_vnet_extension(root, spec)
    states = node_states or {}
    ifaces = interfaces_of(spec)
    for node in spec.nodes:
        el = write_node(root, node, ifaces[node.id], component_manager_id=cm,
                        sliver_id=urns.sliver_urn(pip, sliver_id, node.id))
        for i in el.findall(g("interface")):
            i.set("sliver_id", urns.sliver_urn(pip, sliver_id, i.get("client_id", "")
                                               .replace(":", ".")))
        ext = el.find(v("node"))
        assert ext is not None
        ext.set("state", states.get(node.id, "running"))
    for link in spec.links:
        write_link(root, link.id, (link.a, link.b), link.bandwidth_mbps, link.latency_ms,
                   sliver_id=urns.sliver_urn(pip, sliver_id, link.id))
    for b in spec.boundary:
        el = write_link(root, b.id, (b.endpoint,), b.bandwidth_mbps, b.latency_ms, b.peer_ref,
                        sliver_id=urns.sliver_urn(pip, sliver_id, b.id))
        stitched, vni = (stitches or {}).get(b.peer_ref, (False, None))
        peer = el.find(f"{v('link')}/{v('peer')}")
        assert peer is not None
        peer.set("stitched", "true" if stitched else "false")
        if vni is not None:
            peer.set("vni", str(vni))
    validate(root, "manifest")
    return document(root)


def sliver_manifest(pip: str, s: Sliver) -> bytes:
    """The manifest of a sliver of the PIP (or substrate) `pip`, as its ledger has it."""
    return manifest_rspec(
        pip, s.id, s.name, spec_of(s.spec_xml), status=s.state.value, price=s.price,
        expires=s.expires if s.state is State.ALLOCATED else None,
        node_states={n: st for n, st in s.node_states.items() if st != "running"},
        stitches={st.ref: (st.joined, st.vni) for st in s.stitches})


def advertisement_rspec(ad: Advertisement) -> bytes:
    root = root_element("advertisement")
    provider = sub(root, v("provider"), name=ad.provider)
    for encap in ad.encapsulations:
        sub(provider, v("encapsulation")).text = encap
    cm = urns.aggregate_urn(ad.provider)
    for site in ad.sites:
        node = sub(root, g("node"),
                   component_id=str(urns.Urn(urns.authority(ad.provider), "node",
                                             site.location)),
                   component_manager_id=cm, component_name=site.location, exclusive="false")
        for kind in site.kinds:
            sub(node, g("sliver_type"), name=kind)
        sub(node, g("available"), now="true" if site.cpu > 0 else "false")
        sub(node, v("site"), location=site.location, cpu=number(site.cpu),
            memory=number(site.memory_mb), price_per_cpu=number(site.price_per_cpu),
            price_per_mbps=number(site.price_per_mbps))
    validate(root, "advertisement")
    return document(root)
