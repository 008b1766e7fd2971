"""Pure decisions of the negotiation (Interface 2): prices, quotes, advertisements,
and the VNP's partition of a VNet into partial descriptions with boundary links.

No I/O here: the PIP and VNP services call these and do the talking.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from vnetlib.embedding.multipip import PipAdvert, PipSplit
from vnetlib.naming import short_hash
from vnetlib.players.messages import Advertisement, Quote, Site, StitchRole
from vnetlib.players.stitching import CARRIERS, carriers
from vnetlib.spec.model import (
    BoundaryLink,
    Constraints,
    LinkEndpoint,
    ServiceRequirements,
    Substrate,
    VirtualLink,
    VNetSpec,
)

EPSILON = 1e-9
DEFAULT_LOCATION = "default"


# -- the PIP's side ----------------------------------------------------------------------


def price_of(spec: VNetSpec, price_per_cpu: float, price_per_mbps: float) -> float:
    """CPU of every node at the CPU price, plus the bandwidth of every link (inner
    and boundary) at the bandwidth price."""
    cpu = sum(n.cpu for n in spec.nodes)
    mbps = sum(k.bandwidth_mbps for k in spec.links) + sum(b.bandwidth_mbps
                                                          for b in spec.boundary)
    return round(cpu * price_per_cpu + mbps * price_per_mbps, 6)


def decide_quote(price: float, bid: float | None) -> Quote:
    """Offer at our price when it is within the bid, counter with it otherwise."""
    if bid is None or price <= bid + EPSILON:
        return Quote("offer", price)
    return Quote("counter", price, f"the price is {price:g}, above the bid of {bid:g}")


def advertise(provider: str, residual: Substrate, price_per_cpu: float,
              price_per_mbps: float) -> Advertisement:
    """Aggregate capacity per location: sums only, no host names, no links."""
    cpu: dict[str, float] = defaultdict(float)
    memory: dict[str, float] = defaultdict(float)
    kinds: dict[str, set[str]] = defaultdict(set)
    for host in residual.hosts:
        where = host.location or DEFAULT_LOCATION
        cpu[where] += host.cpu
        memory[where] += host.memory_mb
        kinds[where].update(k.value for k in host.node_kinds)
    sites = tuple(Site(loc, cpu[loc], memory[loc], price_per_cpu, price_per_mbps,
                       tuple(sorted(kinds[loc]))) for loc in sorted(cpu))
    return Advertisement(provider, sites, residual.encapsulations)


# -- the VNP's side ----------------------------------------------------------------------


def pip_adverts(ads: Iterable[Advertisement], spec: VNetSpec) -> list[PipAdvert]:
    """The split engine's view of advertisements: sites that offer every node kind
    the VNet needs (an empty site offers nothing)."""
    needed = {n.kind.value for n in spec.nodes}
    out = []
    for ad in ads:
        for site in ad.sites:
            if site.cpu <= 0 or not needed <= set(site.kinds):
                continue
            out.append(PipAdvert(ad.provider, site.location, site.cpu,
                                 site.memory_mb if site.memory_mb > 0 else math.inf,
                                 site.price_per_cpu))
    return out


def aggregate_adverts(provider: str, ads: Iterable[Advertisement],
                      margin_per_cpu: float = 0.0) -> Advertisement:
    """A VNP acting as a PIP advertises its upstreams' sites merged by location:
    capacities add up, the price is the dearest upstream's plus the margin (so a
    quote never surprises the customer), upstream names are not disclosed."""
    merged: dict[str, Site] = {}
    encaps: set[str] = set()
    for ad in ads:
        encaps.update(ad.encapsulations)
        for s in ad.sites:
            old = merged.get(s.location)
            if old is None:
                merged[s.location] = replace(s, price_per_cpu=s.price_per_cpu + margin_per_cpu)
                continue
            merged[s.location] = Site(
                s.location, old.cpu + s.cpu, old.memory_mb + s.memory_mb,
                max(old.price_per_cpu, s.price_per_cpu + margin_per_cpu),
                max(old.price_per_mbps, s.price_per_mbps),
                tuple(sorted(set(old.kinds) | set(s.kinds))))
    return Advertisement(provider, tuple(merged[k] for k in sorted(merged)),
                         tuple(sorted(encaps)) or ("vxlan",))


@dataclass(frozen=True, slots=True)
class PartLink:
    """A boundary link of one part: who is at the other end, and who initiates."""

    ref: str
    link: str
    role: StitchRole
    peer_part: int | None  # index of the other part; None: relayed to our own customer
    upper_ref: str | None = None  # the customer's ref, when relayed


@dataclass(frozen=True, slots=True)
class Part:
    """What one upstream provider gets: a partial description and its links out."""

    index: int
    provider: str
    spec: VNetSpec
    links: tuple[PartLink, ...]
    expected_price: float


def stitch_ref(order_id: str, link: str) -> str:
    """An opaque id of an inter-provider link, the same at both ends."""
    return f"x{short_hash(order_id, link, length=16)}"


def partition(spec: VNetSpec, split: PipSplit, order_id: str,
              prices: Mapping[tuple[str, str], float],
              upper_roles: Mapping[str, StitchRole] | None = None) -> list[Part]:
    """Cut `spec` into one partial description per provider of `split`.

    Each node keeps its id and gets the location the split chose; a link with
    both ends at one provider stays a link; a link across providers becomes a
    boundary link on each side, with one opaque ref; end `a` initiates the
    stitching. The VNet's own boundary links (when this VNP acts as a PIP) go to
    the part that holds their endpoint, with a fresh ref and the role the
    customer gave (`upper_roles`, by the customer's ref). Service description,
    price limits and other providers' parts are not passed on.
    """
    where: dict[str, tuple[str, str]] = {str(k): v for k, v in split.assignment.items()}
    providers = sorted({site[0] for site in where.values()})
    index = {p: i for i, p in enumerate(providers)}
    boundary: dict[str, list[BoundaryLink]] = defaultdict(list)
    part_links: dict[str, list[PartLink]] = defaultdict(list)
    inner: dict[str, list[VirtualLink]] = defaultdict(list)
    for link in spec.links:
        pa, pb = where[link.a.node][0], where[link.b.node][0]
        if pa == pb:
            inner[pa].append(link)
            continue
        ref = stitch_ref(order_id, link.id)
        sides: tuple[tuple[str, str, LinkEndpoint, StitchRole], ...] = (
            (pa, pb, link.a, "initiator"), (pb, pa, link.b, "responder"))
        for p, other, end, side in sides:
            boundary[p].append(BoundaryLink(link.id, end, ref, link.bandwidth_mbps,
                                            link.latency_ms))
            part_links[p].append(PartLink(ref, link.id, side, index[other]))
    for b in spec.boundary:
        p = where[b.endpoint.node][0]
        ref = stitch_ref(order_id, b.id)
        boundary[p].append(replace(b, peer_ref=ref))
        role: StitchRole = (upper_roles or {}).get(b.peer_ref, "initiator")
        part_links[p].append(PartLink(ref, b.id, role, None, b.peer_ref))
    parts = []
    for p in providers:
        nodes = tuple(replace(n, location=where[n.id][1]) for n in spec.nodes
                      if where[n.id][0] == p)
        partial = VNetSpec(
            name=spec.name, nodes=nodes, links=tuple(inner[p]), constraints=Constraints(),
            service=ServiceRequirements(console_access=spec.service.console_access),
            boundary=tuple(boundary[p]),
            attachments=tuple(a for a in spec.attachments if where[a.node][0] == p))
        expected = sum(n.cpu * prices.get((p, where[n.id][1]), 0.0) for n in nodes)
        parts.append(Part(index[p], p, partial, tuple(part_links[p]), round(expected, 6)))
    return parts


def within_budget(quotes: Sequence[Quote], max_price: float | None) -> tuple[bool, float]:
    """Accept offers and counter-offers as long as their sum fits the budget."""
    total = round(sum(q.price or 0.0 for q in quotes), 6)
    return (max_price is None or total <= max_price + EPSILON), total


def exclude(ads: Iterable[Advertisement], providers: Iterable[Hashable]) -> list[Advertisement]:
    gone = set(providers)
    return [ad for ad in ads if ad.provider not in gone]


# -- encapsulations between providers -------------------------------------------------


def unstitchable(parts: Sequence[Part], ads: Mapping[str, Advertisement]) -> str | None:
    """Why the split's inter-provider links could not be stitched (two parts
    whose providers share no carrier between providers:
    `vnetlib.players.stitching.CARRIERS`), or None."""
    for part in parts:
        for link in part.links:
            if link.peer_part is None or link.peer_part <= part.index:
                continue
            peer = next(p for p in parts if p.index == link.peer_part)
            here, there = ads.get(part.provider), ads.get(peer.provider)
            if here is None or there is None:
                continue
            if not set(carriers(here.encapsulations)) & set(carriers(there.encapsulations)):
                return (f"link {link.link}: no common encapsulation between providers: ours "
                        f"{', '.join(here.encapsulations) or 'none'}, the peer's "
                        f"{', '.join(there.encapsulations) or 'none'} (between providers "
                        f"only {', '.join(CARRIERS)} can be stitched)")
    return None
