"""A PIP asks its customer to take a node away (issue #13): "I need my host back".

The PIP knows only its direct customer, the VNP that owns the sliver, and the
URL that VNP registered with the sliver (`Sliver.callback`, given in
`<allocate>` and `<provision>`). It POSTs `<evict>` there (the VNP's name
for the sliver, the node, a reason word, a deadline) and talks only to a
server whose certificate names the sliver's owner as a VNP: a callback that
points anywhere else is never sent the request. The VNP moves the node to
another provider through its between-PIPs move (the source's part is
reshaped by that move, under the sliver's lock, like any reshape) and
answers once the node is gone, or refuses (no other provider can take it:
the node stays). Nothing here holds the sliver's lock while the VNP works:
the VNP's reshape of this very sliver takes it.

`drain` is `PipCore.drain` with that as its fallback: a node no other host
of the substrate can take is asked away instead of failing the drain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vnetlib.core.pip import Moved, PipCore, Rejected
from vnetlib.core.records import Sliver
from vnetlib.deploy.ansible import Progress
from vnetlib.players import messages as m
from vnetlib.players import timeouts
from vnetlib.players.client import ClientError, PlayerClient, RemoteError, UnexpectedPeer
from vnetlib.players.pki import Credentials, Role

# The VNP's move between providers, with its own calls (VNP_DEPLOY_CALL each),
# is as long as a VNO's move through it.
EVICT_CALL = timeouts.PIP_TO_VNP


class EvictionRefused(Exception):
    """The owner did not take the node (no other provider can, or it refused,
    or it cannot be asked): the node stays where it is."""


class EvictionFailed(Exception):
    """The owner did not answer, or its move failed (it undid it: the node
    stays where it is, unless the message says otherwise)."""


@dataclass(frozen=True, slots=True)
class Evicted:
    """A node its owner took away: the PIP's sliver id, the owner's name for
    it, the node, the owner, and the seconds the owner's move took."""

    sliver: str
    name: str
    node: str
    owner: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Stuck:
    """A node that stays: no host here could take it, and its owner did not."""

    sliver: str
    node: str
    why: str


@dataclass(frozen=True, slots=True)
class Drained:
    host: str
    moved: tuple[Moved, ...]
    evicted: tuple[Evicted, ...]
    stuck: tuple[Stuck, ...]


def ask_owner(s: Sliver, node: str, credentials: Credentials, *,
              reason: m.EvictReason = "maintenance", deadline: float | None = None,
              scope: m.EvictScope = "provider", timeout: float = EVICT_CALL) -> Evicted:
    """Ask the VNP that owns `s` to take `node` to another provider (with
    `scope` "host": off its host, within this PIP if it has room); returns
    once it did. EvictionRefused when it cannot be asked or says no,
    EvictionFailed when it does not answer or its move failed."""
    if node not in s.embedding.node_map:
        raise LookupError(f"sliver {s.name} has no node {node}")
    if not s.callback:
        raise EvictionRefused(f"the owner of sliver {s.name}, {s.owner}, registered no URL to "
                              f"be asked at: ask it to move node {node} out of band")
    client = PlayerClient(s.callback, credentials, timeout, expect_role=Role.VNP,
                          expect_name=s.owner)
    try:
        reply = client.post("/v1/evictions",
                            m.evict_xml(m.Evict(s.name, node, reason, deadline, scope)))
        got = m.eviction_from(m.parse_reply(reply.body, "eviction"))
    except UnexpectedPeer as exc:
        raise EvictionRefused(f"the URL registered with sliver {s.name} is not its owner "
                              f"{s.owner} ({exc}): not asked") from exc
    except RemoteError as exc:
        if exc.status < 500:
            raise EvictionRefused(f"{s.owner} did not take node {node} of sliver {s.name}: "
                                  f"{exc.message}") from exc
        raise EvictionFailed(f"{s.owner} failed to take node {node} of sliver {s.name}: "
                             f"{exc.message}") from exc
    except (ClientError, ValueError) as exc:
        raise EvictionFailed(f"{s.owner} did not answer about node {node} of sliver "
                             f"{s.name}: {exc}") from exc
    return Evicted(s.id, s.name, node, s.owner, got.seconds or 0.0)


def drain(core: PipCore, host: str, credentials: Credentials | None, *,
          progress: Progress | None = None, reason: m.EvictReason = "maintenance",
          deadline: float | None = None,
          ask: Callable[..., Evicted] = ask_owner) -> Drained:
    """Drain `host`: every node on it moves to another host here; with
    `credentials` (the PIP's own), a node no host here can take is asked away
    through its sliver's owner; without, it raises Rejected as before."""
    evicted: list[Evicted] = []
    stuck: list[Stuck] = []

    def away(s: Sliver, node: str, why: Rejected, room: bool) -> None:
        # Room here, but the node cannot move alone (it ends links to other
        # providers): its owner may re-place it here, re-stitching its links.
        scope: m.EvictScope = "host" if room else "provider"
        if progress is not None:
            progress(f"{node} of {s.name}: {why.public}; asking {s.owner} to take it "
                     + ("off the host" if room else "away"))
        try:
            evicted.append(ask(s, node, credentials, reason=reason, deadline=deadline,
                               scope=scope))
        except (EvictionRefused, EvictionFailed) as exc:
            stuck.append(Stuck(s.name, node, str(exc)))

    moved = core.drain(host, progress=progress, stuck=None if credentials is None else away)
    return Drained(host, tuple(moved), tuple(evicted), tuple(stuck))


__all__ = ["Drained", "Evicted", "EvictionFailed", "EvictionRefused", "Stuck", "ask_owner",
           "drain"]
