"""The VNP moves one node of a VNet order (issue #13, item 2).

First within the provider that holds it (`POST /v1/slivers/{s}/move` with the
location: the PIP picks the host). When that provider has no such location
(or no room there), between providers:

1. the order's parts are partitioned again with the node at the target
   provider (`between.replan`): links the move does not touch keep their
   refs, the node's links get theirs, the parts' peers follow;
2. the move is recorded in the order (old and new parts) before any call;
3. the target takes the node: a provider that holds no part yet is quoted
   and allocated a new part (a decline ends the move: nothing was touched)
   and provisions it; one that holds a part reshapes it (the node and its
   links added, `POST /v1/slivers/{s}/reshape`);
4. every other changed part is reshaped: the source gives the node up (a
   partial delete of one node of its sliver; a part left empty is deleted
   once the switch is done), a third provider's boundary link now names the
   target as its peer;
5. every part is started: the changed boundary links are stitched (one
   exchange per pair of providers, as at instantiation); the node is
   reachable again;
6. the order keeps the new parts: consoles and actions on the node go to its
   new provider from now on (`broker.part_of` reads the parts).

Any failure in 3-5 undoes what was done, in reverse: a new part is deleted,
every reshaped part is reshaped back to its old description and peers (a
PIP whose own reshape failed has already put its old one back; reshaping to
the same description changes nothing), and the old parts are started again,
so the node is where it was and stitched as before. The VNO learns only
that its VNet is ready again (and the move's time as a timing); neither it
nor the PIPs learn anything of each other beyond the stitching peers they
already had.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vnetlib.console import repoint
from vnetlib.migrate import between
from vnetlib.players import messages as m
from vnetlib.players import timeouts
from vnetlib.players.client import ClientError, PlayerClient, RemoteError
from vnetlib.players.laps import Laps
from vnetlib.players.negotiation import Part
from vnetlib.spec import dump_vnet, parse_vnet
from vnetlib.spec.model import VNetSpec

if TYPE_CHECKING:
    from vnetlib.players.stores import Record
    from vnetlib.players.vnp import VnpService

log = logging.getLogger(__name__)


class MoveDeclined(Exception):
    """No provider can take the node where it is asked to go; nothing changed."""


class MoveUndone(Exception):
    """The move failed part-way and was undone: the node is where it was."""


class MoveStuck(Exception):
    """The move failed and could not be undone in full (the order keeps the
    move recorded; the VNP's log says which parts)."""


@dataclass(frozen=True, slots=True)
class NodeMoved:
    """How a move went: `between` providers or `within` one, and the seconds."""

    node: str
    between: bool
    seconds: float
    timings: Mapping[str, float]


def _stored(entry: Mapping[str, Any]) -> VNetSpec:
    return parse_vnet(str(entry["spec"]).encode())


def _peers(svc: VnpService, parts: list[dict[str, Any]],
           entry: Mapping[str, Any]) -> tuple[m.Peer, ...]:
    """The peers of a part's boundary links (as `provision_parts` names them)."""
    out = []
    for k in entry["links"]:
        other = svc.upstreams[parts[k["peer_part"]]["provider"]]
        out.append(m.Peer(k["ref"], other.name, other.url, k["role"]))
    return tuple(out)


def _entries(order_id: str, parts: list[Part], old: list[dict[str, Any]],
             next_index: int, prices: Mapping[str, float]) -> list[dict[str, Any]]:
    """The order's stored parts after the move: a provider that had a part
    keeps its sliver's name, a new one gets the next free index."""
    names = {e["provider"]: e["sliver"] for e in old}
    out = []
    for part in parts:
        sliver = names.get(part.provider)
        if sliver is None:
            sliver = f"{order_id}.{next_index}"
            next_index += 1
        out.append({
            "index": part.index, "provider": part.provider, "sliver": sliver,
            "spec": dump_vnet(part.spec).decode(),
            "price": prices.get(part.provider, part.expected_price),
            "nodes": [n.id for n in part.spec.nodes],
            "links": [{"ref": k.ref, "link": k.link, "role": k.role,
                       "peer_part": k.peer_part, "upper_ref": k.upper_ref}
                      for k in part.links]})
    return out


def _target(svc: VnpService, spec: VNetSpec, node: str, source: str,
            location: str | None, away: str | None = None) -> tuple[str, str]:
    """The provider and location where the node goes: its own provider if
    that one advertises the location (a move it could not do alone: the
    node ends links to other providers), else the cheapest other provider
    that advertises it (any location, if none was asked for) with the
    node's kind and CPU left; never `away` (the provider that asked the
    node to leave)."""
    vnode = spec.node(node)
    options = []
    for ad in svc._adverts():
        if (ad.provider == source and location is None) or ad.provider == away:
            continue
        for site in ad.sites:
            if location is not None and site.location != location:
                continue
            if vnode.kind.value in site.kinds and site.cpu + 1e-9 >= vnode.cpu:
                options.append((ad.provider != source, site.price_per_cpu, ad.provider,
                                site.location))
    if not options:
        where = f"at {location}" if location else "elsewhere"
        other = " other" if away else ""
        raise MoveDeclined(f"no{other} provider can take node {node} {where}")
    _, _, provider, where = min(options)
    return provider, where


def evict_node(svc: VnpService, rec: Record, node: str, away: str,
               fault: Callable[[str], None], *, scope: str = "provider") -> NodeMoved:
    """Take `node` of the VNet order `rec` (claimed by the caller) away from
    the host it has at provider `away`, which asked for it (it needs the
    host back): to another provider at the node's location when the VNet
    asked for one (the VNO's requirement holds), anywhere else when it did
    not. With `scope` "host" (the provider has room elsewhere but cannot
    move the node alone: it ends links to other providers) the node is first
    re-placed at that provider (its part reshaped, its links stitched
    again), where it has room. MoveDeclined when nobody can take it: nothing
    was touched."""
    spec = parse_vnet(str(rec.data["spec"]).encode())
    entry = next((p for p in rec.data["parts"] if node in p["nodes"]), None)
    if entry is None or entry["provider"] != away:
        raise KeyError(node)
    here = next(n for n in _stored(entry).nodes if n.id == node).location or None
    required = here if spec.node(node).location else None
    if scope == "host":
        vnode = spec.node(node)
        sites = [site for ad in svc._adverts() if ad.provider == away for site in ad.sites
                 if vnode.kind.value in site.kinds and site.cpu + 1e-9 >= vnode.cpu
                 and required in (None, site.location)]
        if sites:
            where = min(sites, key=lambda t: (t.location != here, t.location)).location
            return move_node(svc, rec, node, where, fault, try_within=False)
    return move_node(svc, rec, node, required, fault, away=away)


def move_node(svc: VnpService, rec: Record, node: str, location: str | None,
              fault: Callable[[str], None], *, away: str | None = None,
              try_within: bool = True) -> NodeMoved:
    """Move `node` of the VNet order `rec` (claimed by the caller) to
    `location`; with `away`, to a provider other than that one; without
    `try_within`, no move by its provider alone is tried first (its part is
    reshaped when the target is that provider)."""
    started = time.perf_counter()
    parts: list[dict[str, Any]] = rec.data["parts"]
    entry = next((p for p in parts if node in p["nodes"]), None)
    if entry is None:
        raise KeyError(node)
    specs = {p["sliver"]: _stored(p) for p in parts}
    here = next(n for n in specs[entry["sliver"]].nodes if n.id == node).location
    up = svc.upstreams[entry["provider"]]
    within = svc._client(up, timeouts.VNP_DEPLOY_CALL)
    if try_within and away is None and (location is None or location == here or any(
            site.location == location for ad in svc._adverts()
            if ad.provider == entry["provider"] for site in ad.sites)):
        try:
            within.post(f"/v1/slivers/{entry['sliver']}/move", m.move_xml(m.Move(node, location)))
            return NodeMoved(node, False, time.perf_counter() - started, {})
        except RemoteError as exc:
            if exc.status != 409 or location == here:
                raise
            log.info("%s: %s cannot move %s within: %s", svc.name, up.name, node, exc.message)
    spec = parse_vnet(str(rec.data["spec"]).encode())
    provider, where = _target(svc, spec, node, entry["provider"], location, away)
    assignment = between.assignment_of(parts, specs)
    assignment[node] = between.Site(provider, where)
    prices = {(s.provider, s.location): 0.0 for s in assignment.values()}
    moves = int(rec.data.get("moves", 0)) + 1
    new_parts = between.fresh_refs(between.replan(spec, rec.id, assignment, prices),
                                   between.moved_links(spec, node), f"{rec.id}/m{moves}")
    rec.data["moves"] = moves
    next_index = max([int(rec.data.get("next_part", 0))]
                     + [int(p["sliver"].rsplit(".", 1)[1]) + 1 for p in parts])
    fresh = _entries(rec.id, new_parts, parts, next_index,
                     {p["provider"]: p["price"] for p in parts})
    rec.data["next_part"] = next_index + 1
    rec.data["move"] = {"node": node, "old": parts, "new": fresh}
    svc.store.save(rec.id, rec.data)
    # Console sessions on the node (their hop here) wait for it, then ask its
    # provider of then for a new session (vnetlib.console.repoint).
    repoint.hold_order(svc.name, rec.id, node)
    elsewhere = provider != entry["provider"]
    phase = Laps()
    timings = phase.timings

    old_by = {p["provider"]: p for p in parts}
    done: list[tuple[str, dict[str, Any]]] = []  # ("new"|"reshaped", entry), in order
    try:
        order = sorted(fresh, key=lambda e: e["provider"] != provider)  # the target first
        for e in order:
            old = old_by.get(e["provider"])
            peers = _peers(svc, fresh, e)
            if old is None:
                done.append(("new", e))
                _new_part(svc, e, peers)
            elif old["spec"] != e["spec"] or _peers(svc, parts, old) != peers:
                done.append(("reshaped", old))
                svc._client(svc.upstreams[e["provider"]], timeouts.VNP_DEPLOY_CALL).post(
                    f"/v1/slivers/{e['sliver']}/reshape",
                    m.reshape_xml(m.Reshape(_stored(e), peers)))
            if e["provider"] == provider:
                phase("target")
                fault("vnp-move-after-target")
        phase("reshape")
        svc.start_parts(fresh)
        phase("stitch")
    except BaseException as exc:
        if not isinstance(exc, ClientError | ValueError | MoveDeclined):
            # left recorded for the reconciler (`recover`); sessions may carry on
            repoint.moved_order(svc.name, rec.id, node, reconnect=False)
            raise
        log.warning("%s: move of %s in %s failed: %s; undoing it", svc.name, node, rec.id, exc)
        back = between.fresh_refs(
            between.replan(spec, rec.id, between.assignment_of(parts, specs), prices),
            between.moved_links(spec, node), f"{rec.id}/m{moves}u")
        try:
            _undo(svc, rec, _entries(rec.id, back, parts, next_index,
                                     {p["provider"]: p["price"] for p in parts}), done)
        finally:  # the node was made again at its source if the source gave it up
            repoint.moved_order(svc.name, rec.id, node, reconnect=elsewhere and any(
                kind == "reshaped" and e["provider"] == entry["provider"] for kind, e in done))
        if isinstance(exc, MoveDeclined):
            raise
        raise MoveUndone(f"the move of node {node} failed ({_kind(exc)}); "
                         "it is where it was") from exc
    _greet(svc, fresh, spec, node)
    phase("greet")
    gone = [p for p in parts if p["provider"] not in {e["provider"] for e in fresh}]
    left = svc.release(gone)
    # A part not released yet stays in the order (released with it), holding nothing.
    rec.data["parts"] = fresh + [{**p, "nodes": [], "links": []} for p in left]
    rec.data.pop("move", None)
    svc.store.save(rec.id, rec.data)
    phase("release")
    followed = repoint.moved_order(svc.name, rec.id, node, reconnect=elsewhere)
    phase("consoles")
    log.info("%s: %d console session(s) on %s followed it", svc.name, followed, node)
    if left:
        log.error("%s: the emptied part(s) %s of %s were not released", svc.name,
                  [p["sliver"] for p in left], rec.id)
    return NodeMoved(node, True, time.perf_counter() - started, timings)


def _greet(svc: VnpService, parts: list[dict[str, Any]], spec: VNetSpec, node: str) -> None:
    """A namespace node made again elsewhere pings each neighbour once (an
    exec at its new provider), so their ARP caches learn its interfaces' new
    MACs now rather than in up to a minute. Best effort: logged, not raised."""
    if spec.node(node).kind.is_vm:
        return
    ends = [k.b if k.a.node == node else k.a for k in spec.links
            if node in (k.a.node, k.b.node)]
    addresses = sorted({a.split("/")[0] for e in ends for a in e.interface.addresses
                        if ":" not in a})
    if not addresses:
        return
    script = "for a in " + " ".join(addresses) + "; do ping -c 1 -W 1 $a & done; wait"
    try:
        svc._node_action(parts, m.Action("exec", node, ("sh", "-c", script), 5.0))
    except Exception as exc:  # the move is done; a late ARP entry heals by itself
        log.warning("%s: %s could not greet its neighbours: %s", svc.name, node, exc)


def _kind(exc: Exception) -> str:
    if isinstance(exc, RemoteError):
        return f"{exc.status} {exc.code}"
    return "no answer" if isinstance(exc, ClientError) else "bad answer"


def _new_part(svc: VnpService, e: dict[str, Any], peers: tuple[m.Peer, ...]) -> None:
    """Quote, allocate and provision a part at a provider new to the order."""
    client = svc._client(svc.upstreams[e["provider"]], timeouts.VNP_DEPLOY_CALL)
    spec = _stored(e)
    quote = m.quote_from(m.parse_reply(client.post(
        "/v1/quotes", m.quote_request_xml(m.QuoteRequest(spec, None))).body, "quote"))
    if quote.status == "declined":
        raise MoveDeclined(f"the target declined: {quote.reason}")
    e["price"] = quote.price
    client.put(f"/v1/slivers/{e['sliver']}", m.allocate_xml(
        m.Allocate(spec, quote.price, svc.config.vnp.reservation_seconds, svc.callback)))
    client.post(f"/v1/slivers/{e['sliver']}/provision",
                m.provision_xml(m.Provision(peers, svc.callback)))


def _undo(svc: VnpService, rec: Record, back: list[dict[str, Any]],
          done: list[tuple[str, dict[str, Any]]]) -> None:
    """Put the node back: a new part is deleted, every old part is reshaped
    to `back` (the old parts, the node's links with fresh refs, so both ends
    of each are stitched again whatever side had dropped its stitching; a
    part that did not change finds nothing to do), then all are started."""
    failed = [p["sliver"] for kind, e in done if kind == "new" for p in svc.release([e])]
    for e in back:
        try:
            svc._client(svc.upstreams[e["provider"]], timeouts.VNP_DEPLOY_CALL).post(
                f"/v1/slivers/{e['sliver']}/reshape",
                m.reshape_xml(m.Reshape(_stored(e), _peers(svc, back, e))))
        except ClientError as exc:
            log.error("%s: reshaping %s back failed: %s", svc.name, e["sliver"], exc)
            failed.append(e["sliver"])
    try:
        svc.start_parts(back)
    except ClientError as exc:
        log.error("%s: stitching %s again after an undone move failed: %s", svc.name,
                  rec.id, exc)
        failed.append("stitching")
    rec.data["parts"] = back
    if failed:
        rec.data["move"]["stuck"] = failed
        svc.store.save(rec.id, rec.data)
        raise MoveStuck(f"the move failed and could not be undone at {len(failed)} "
                        "place(s)")
    rec.data.pop("move", None)
    svc.store.save(rec.id, rec.data)


def recover(svc: VnpService, rec: Record) -> None:
    """Undo a move an order still records (a VNP that stopped, or an
    unexpected error, in the middle; the order is claimed by the caller):
    parts new to the order are deleted, the old ones reshaped back and
    started (MoveStuck if some place did not answer: tried again later)."""
    move = rec.data["move"]
    old: list[dict[str, Any]] = move["old"]
    spec = parse_vnet(str(rec.data["spec"]).encode())
    specs = {p["sliver"]: _stored(p) for p in old}
    assignment = between.assignment_of(old, specs)
    prices = {(s.provider, s.location): 0.0 for s in assignment.values()}
    moves = int(rec.data.get("moves", 1)) + 1
    rec.data["moves"] = moves
    back = between.fresh_refs(between.replan(spec, rec.id, assignment, prices),
                              between.moved_links(spec, move["node"]), f"{rec.id}/m{moves}")
    had = {p["provider"] for p in old}
    done = [("new", e) for e in move["new"] if e["provider"] not in had]
    log.warning("%s: order %s records an unfinished move of %s: undoing it", svc.name, rec.id,
                move["node"])
    _undo(svc, rec, _entries(rec.id, back, old, 0, {p["provider"]: p["price"] for p in old}),
          done)


def ask_vno(client: PlayerClient, vnet_id: str, node: str,
            location: str | None) -> m.VNetView:
    """The SP's request (`vnet migrate VNET NODE --location L`): its VNO
    moves the node through its VNP; the answer is the VNet's view."""
    reply = client.post(f"/v1/vnets/{vnet_id}/move", m.move_xml(m.Move(node, location)))
    return m.vnet_view_from(m.parse_reply(reply.body, "vnet-status"))


__all__ = ["MoveDeclined", "MoveStuck", "MoveUndone", "NodeMoved", "ask_vno", "evict_node",
           "move_node", "recover"]
