"""Interface 4: joining an inter-provider virtual link (docs/api.md, "Stitching").

The initiator proposes a VNI that is free on its side, its tunnel endpoint and
its preferred carrier (encapsulation); the responder accepts if it offers that
carrier between providers and the VNI is free on its side too (adding its own
endpoint), or counters with a VNI that is, and/or with VXLAN, the common
fallback, when it does not offer the proposed carrier; the initiator takes the
counter if the VNI is free on its side and it offers the carrier, else proposes
again or fails with the reason. `respond` is the responder's pure decision;
`initiate` drives the exchange through a `send` function.

Carriers between providers (`CARRIERS`): Click (UDP between the two hosts'
Click processes) and VXLAN. Switch VLANs stay inside a PIP: two PIPs would
have to share a switch segment and one VLAN allocator, which no substrate
description declares yet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vnetlib.plan.build import CLICK_PORT, VXLAN_PORT
from vnetlib.players.messages import Stitch, StitchEndpoint, StitchRole

MAX_ROUNDS = 8
FALLBACK = "vxlan"
CARRIERS = ("click", "vxlan")
"""What a boundary segment can be deployed with (vnetlib.plan.build), in no
order of preference: each PIP's own order comes from its substrate."""
PORTS = {"click": CLICK_PORT, "vxlan": VXLAN_PORT}


class StitchFailed(RuntimeError):
    """The two providers could not agree on a link; the message says why."""


@dataclass(frozen=True, slots=True)
class Agreement:
    ref: str
    vni: int
    local: StitchEndpoint
    remote: StitchEndpoint
    encapsulation: str = FALLBACK


def carriers(encapsulations: Sequence[str]) -> tuple[str, ...]:
    """The carriers a PIP offers for links between providers: those of its
    substrate's encapsulations (its order of preference) that can cross
    providers; empty if none."""
    return tuple(e for e in dict.fromkeys(encapsulations) if e in CARRIERS)


def endpoint(role: StitchRole, address: str, carrier: str) -> StitchEndpoint:
    """A tunnel endpoint with the carrier's UDP port."""
    return StitchEndpoint(role, address, PORTS[carrier])


def _offers(names: Sequence[str]) -> str:
    return ", ".join(names) or "none"


def respond(proposal: Stitch, vni_free_here: bool, alternative: int,
            local: StitchEndpoint, offers: Sequence[str] = (FALLBACK,)) -> Stitch:
    """The responder's answer to a proposal (pure). `offers` are the
    responder's carriers between providers (:func:`carriers`)."""
    initiator = proposal.endpoint("initiator")
    if initiator is None:
        return Stitch(proposal.ref, proposal.vni, "reject", proposal.endpoints,
                      proposal.encapsulation, reason="the proposal has no initiator endpoint")
    carrier = proposal.encapsulation
    if carrier not in CARRIERS:  # a proposer that should not have sent it
        fallback = f": use {FALLBACK}" if FALLBACK in offers else ""
        return Stitch(proposal.ref, proposal.vni, "reject", proposal.endpoints, carrier,
                      reason=f"encapsulation {carrier} cannot carry links between "
                             f"providers{fallback}")
    if carrier not in offers:
        if FALLBACK not in offers or carrier == FALLBACK:
            return Stitch(proposal.ref, proposal.vni, "reject", proposal.endpoints, carrier,
                          reason=f"encapsulation {carrier} is not offered here for links "
                                 f"between providers (this provider offers "
                                 f"{_offers(offers)}; no carrier in common)")
        carrier = FALLBACK
    here = endpoint("responder", local.address, carrier)
    if carrier == proposal.encapsulation and vni_free_here:
        return Stitch(proposal.ref, proposal.vni, "accept", (initiator, here), carrier,
                      key=proposal.key)
    vni = proposal.vni if vni_free_here else alternative
    why = [] if vni_free_here else [f"VNI {proposal.vni} is taken here"]
    if carrier != proposal.encapsulation:
        why.append(f"encapsulation {proposal.encapsulation} is not offered here: use {carrier}")
    return Stitch(proposal.ref, vni, "counter", (initiator, here), carrier,
                  reason="; ".join(why))


def initiate(ref: str, local: StitchEndpoint, send: Callable[[Stitch], Stitch],
             claim: Callable[[int], bool], fresh: Callable[[set[int]], int],
             release: Callable[[int], None], offers: Sequence[str] = (FALLBACK,),
             ) -> Agreement:
    """Run the exchange as initiator, proposing the first of `offers` (this
    side's carriers, :func:`carriers`) and taking a counter's carrier if it
    is one of them.

    `claim(vni)` reserves a VNI here if free; `fresh(avoid)` reserves and returns a
    free one not in `avoid`; `release(vni)` frees one; `send` delivers a proposal
    and returns the answer. The VNI of the returned agreement stays reserved.
    """
    if not offers:
        raise StitchFailed(f"link {ref}: this provider offers no encapsulation that can "
                           f"cross providers ({', '.join(CARRIERS)})")
    carrier = offers[0]
    avoid: set[int] = set()
    vni = fresh(avoid)
    for _ in range(MAX_ROUNDS):
        here = endpoint("initiator", local.address, carrier)
        try:
            answer = send(Stitch(ref, vni, "propose", (here,), carrier))
        except Exception:
            release(vni)
            raise
        remote = answer.endpoint("responder")
        if (answer.state == "accept" and answer.vni == vni and remote is not None
                and answer.encapsulation == carrier):
            return Agreement(ref, vni, here, remote, carrier)
        release(vni)
        if answer.state in ("reject", "accept"):
            raise StitchFailed(f"link {ref}: the peer answered {answer.state}: "
                               f"{answer.reason or 'no reason given'}"
                               f" (this provider offers {_offers(offers)})")
        if answer.encapsulation not in offers:
            raise StitchFailed(f"link {ref}: the peer offers {answer.encapsulation}, this "
                               f"provider offers {_offers(offers)}: no carrier in common")
        carrier = answer.encapsulation
        if answer.vni != vni:
            avoid.add(vni)  # taken at the peer
        if claim(answer.vni):
            vni = answer.vni
            continue
        avoid.add(answer.vni)
        vni = fresh(avoid)
    release(vni)
    raise StitchFailed(f"link {ref}: no VNI free on both sides after {MAX_ROUNDS} rounds")
