"""Interface 4: joining an inter-provider virtual link (docs/api.md, "Stitching").

The initiator proposes a VNI that is free on its side and its tunnel endpoint;
the responder accepts if the VNI is free on its side too (adding its own
endpoint), or counters with one that is; the initiator takes the counter if
it is free on its side, else proposes again. `respond` is the responder's pure
decision; `initiate` drives the exchange through a `send` function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vnetlib.players.messages import Stitch, StitchEndpoint

MAX_ROUNDS = 8


class StitchFailed(RuntimeError):
    """The two providers could not agree on a link; the message says why."""


@dataclass(frozen=True, slots=True)
class Agreement:
    ref: str
    vni: int
    local: StitchEndpoint
    remote: StitchEndpoint


def respond(proposal: Stitch, vni_free_here: bool, alternative: int,
            local: StitchEndpoint) -> Stitch:
    """The responder's answer to a proposal (pure)."""
    if proposal.encapsulation != "vxlan":
        return Stitch(proposal.ref, proposal.vni, "reject", proposal.endpoints,
                      proposal.encapsulation,
                      reason=f"encapsulation {proposal.encapsulation} is not offered: use vxlan")
    if proposal.endpoint("initiator") is None:
        return Stitch(proposal.ref, proposal.vni, "reject", proposal.endpoints,
                      reason="the proposal has no initiator endpoint")
    initiator = proposal.endpoint("initiator")
    assert initiator is not None
    if vni_free_here:
        return Stitch(proposal.ref, proposal.vni, "accept", (initiator, local), key=proposal.key)
    return Stitch(proposal.ref, alternative, "counter", (initiator, local),
                  reason=f"VNI {proposal.vni} is taken here")


def initiate(ref: str, local: StitchEndpoint, send: Callable[[Stitch], Stitch],
             claim: Callable[[int], bool], fresh: Callable[[set[int]], int],
             release: Callable[[int], None]) -> Agreement:
    """Run the exchange as initiator.

    `claim(vni)` reserves a VNI here if free; `fresh(avoid)` reserves and returns a
    free one not in `avoid`; `release(vni)` frees one; `send` delivers a proposal
    and returns the answer. The VNI of the returned agreement stays reserved.
    """
    avoid: set[int] = set()
    vni = fresh(avoid)
    for _ in range(MAX_ROUNDS):
        try:
            answer = send(Stitch(ref, vni, "propose", (local,)))
        except Exception:
            release(vni)
            raise
        remote = answer.endpoint("responder")
        if answer.state == "accept" and answer.vni == vni and remote is not None:
            return Agreement(ref, vni, local, remote)
        release(vni)
        avoid.add(vni)  # taken at the peer
        if answer.state == "counter" and claim(answer.vni):
            vni = answer.vni
            continue
        if answer.state in ("reject", "accept"):
            raise StitchFailed(f"link {ref}: the peer answered {answer.state}: "
                               f"{answer.reason or 'no reason given'}")
        avoid.add(answer.vni)
        vni = fresh(avoid)
    release(vni)
    raise StitchFailed(f"link {ref}: no VNI free on both sides after {MAX_ROUNDS} rounds")
