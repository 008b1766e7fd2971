"""The VNP's management node: splits VNets across its upstream providers,
negotiates with them (quote -> allocate with expiry -> provision -> start, or
release everything), and relays stitching and operational actions.

Towards VNOs it serves `/v1/vnets`; towards another VNP it serves the very
API of a PIP (`/v1/advertisement`, `/v1/quotes`, `/v1/slivers/...`,
`/v1/stitch`), so a VNP can be an upstream of another VNP (recursion). An
"order" is what it sells either way: a VNet or a sliver, made of parts, one
per upstream provider.

Nothing is orphaned: an order is recorded before any upstream call, with the
names of its parts' slivers before they are allocated; an order whose parts
cannot all be released is kept as "releasing" (with the parts left) and
retried by the reconciler thread with backoff until every part is gone. At
startup the VNP releases the orders a crash interrupted, and deletes the
slivers its upstreams hold for it that no order of its store owns.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from vnetlib.embedding.multipip import split_across_pips
from vnetlib.embedding.result import Rejection
from vnetlib.geni.upstream import GeniUpstream, client_for
from vnetlib.migrate import between_vnp
from vnetlib.naming import short_hash
from vnetlib.players import faultpoints, timeouts
from vnetlib.players import messages as m
from vnetlib.players.aggregate import add_aggregate_routes
from vnetlib.players.client import (
    ClientError,
    PlayerClient,
    Relayed,
    RemoteError,
    TransportError,
)
from vnetlib.players.config import PlayerConfig, Upstream
from vnetlib.players.laps import Laps
from vnetlib.players.negotiation import (
    Part,
    aggregate_adverts,
    decide_quote,
    exclude,
    partition,
    pip_adverts,
    unstitchable,
    within_budget,
)
from vnetlib.players.pki import Credentials, Identity, Role
from vnetlib.players.reconcile import Backoff, Reconciler, Retries
from vnetlib.players.server import (
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    Service,
    UpstreamFailed,
    require_owner,
)
from vnetlib.players.stores import PlayerStore, Record
from vnetlib.spec import dump_vnet, parse_vnet
from vnetlib.spec.model import VNetSpec

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_R = TypeVar("_R")

RELEASING = "releasing"
# States an order leaves only while a request thread works on it: a restart
# found them unfinished. A sliver sold to another VNP rests in "allocated".
UNFINISHED = {"vnet": {"negotiating", "allocating", "allocated", "provisioning"},
              "sliver": {"negotiating", "allocating", "provisioning"}}
SLIVER_STATES = {"allocated", "provisioned", "ready", "failed"}
KEY = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")  # a VNO's idempotency key (an RDL name)
EVICT_WAIT = 60.0  # seconds an eviction waits for a VNet another request works on
EVENTS_KEPT = 20  # a VNet's last events, for its VNO
# The names this VNP gives its parts' slivers (`_sliver_name`): `<order id>.<index>`.
PART_NAME = re.compile(r"^(?P<order>[nr][0-9a-f]+)\.(?P<index>[0-9]+)$")


def _why(exc: Exception) -> str:
    """What a customer may learn of an upstream failure: its kind, not who or where
    (no provider name, URL or sliver name); the VNP's log has the details."""
    log.warning("upstream failure: %s", exc)
    if isinstance(exc, RemoteError):
        return f"{exc.status} {exc.code}"
    if isinstance(exc, TransportError):
        return "no answer in time" if "timed out" in str(exc) else "unreachable"
    return "bad answer"


class Failed(Exception):
    """A negotiation step failed; everything reserved so far has been released."""


class VnpService(Service):
    def __init__(self, config: PlayerConfig, credentials: Credentials) -> None:
        super().__init__(config.name)
        self.config = config
        self.credentials = credentials
        self.store = PlayerStore(config.store, config.name)
        self.upstreams = {u.name: u for u in config.vnp.upstreams}
        self.url = ""  # this node's own URL, set once it listens (peers relay through it)
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._busy: set[str] = set()  # orders a request thread works on right now
        self._retries = Retries(Backoff(config.vnp.retry_seconds, config.vnp.retry_max_seconds))
        self._unreconciled = set(self.upstreams)  # upstreams not yet swept since startup
        vno = {Role.VNO}
        self.add_route("GET", "/v1/version", self.version)
        # Interface 1: VNOs
        self.add_route("POST", "/v1/vnets", self.create_vnet, roles=vno)
        self.add_route("PUT", "/v1/vnets/{id}", self.put_vnet, roles=vno)
        self.add_route("GET", "/v1/vnets", self.list_vnets, roles=vno)
        self.add_route("GET", "/v1/vnets/{id}", self.get_vnet, roles=vno)
        self.add_route("DELETE", "/v1/vnets/{id}", self.delete_vnet, roles=vno)
        self.add_route("POST", "/v1/vnets/{id}/action", self.vnet_action, roles=vno)
        self.add_route("POST", "/v1/vnets/{id}/move", self.move_vnet_node, roles=vno)
        # A PIP that needs a host back asks the owner of the sliver (issue #13)
        self.add_route("POST", "/v1/evictions", self.evict, roles={Role.PIP})
        # Interfaces 2-4 as a PIP towards another VNP
        add_aggregate_routes(
            self, advertisement=self.advertisement, quote=self.quote,
            list_slivers=self.list_slivers, allocate=self.allocate, describe=self.describe,
            provision=self.provision, renew=self.renew, action=self.sliver_action,
            delete=self.delete_sliver, stitch=self.stitch)
        self._recover()
        self.reconciler = Reconciler(self.name, self.reconcile,
                                     most=config.vnp.retry_max_seconds)
        self.reconciler.start()  # once assigned: its rounds use it

    def close(self) -> None:
        self.closing.set()
        self.reconciler.stop()
        self.store.close()

    def _fault(self, point: str) -> None:
        faultpoints.check(self.config.faults, point, self.closing, self.name)

    def _claim(self, order_id: str) -> bool:
        """Take an order for one thread (a request or the reconciler); False if taken."""
        with self._lock:
            if order_id in self._busy:
                return False
            self._busy.add(order_id)
            return True

    def _unclaim(self, order_id: str) -> None:
        with self._lock:
            self._busy.discard(order_id)

    @property
    def callback(self) -> str | None:
        """The URL a provider may ask this VNP to take a node away at (`<evict>`)."""
        return self.url or None

    def _client(self, upstream: Upstream,
                timeout: float | None = None) -> PlayerClient | GeniUpstream:
        return client_for(upstream.url, self.credentials, timeout or self.config.vnp.timeout,
                          expect_name=upstream.name)

    # -- negotiation ----------------------------------------------------------------

    def _adverts(self) -> list[m.Advertisement]:
        """Every upstream's advertisement, asked for in parallel (resource discovery)."""

        def ask(up: Upstream) -> m.Advertisement | None:
            try:
                reply = self._client(up).get("/v1/advertisement")
                ad = m.advertisement_from(m.parse_reply(reply.body, "advertisement"))
                return replace(ad, provider=up.name)
            except (ClientError, ValueError) as exc:
                log.warning("%s: no advertisement from %s: %s", self.name, up.name, exc)
                return None

        return [ad for ad in _in_parallel(ask, self.upstreams.values()) if ad is not None]

    def _quote(self, part: Part) -> m.Quote:
        req = m.QuoteRequest(part.spec, part.expected_price)
        reply = self._client(self.upstreams[part.provider]).post(
            "/v1/quotes", m.quote_request_xml(req))
        return m.quote_from(m.parse_reply(reply.body, "quote"))

    def negotiate(self, spec: VNetSpec, order_id: str) -> tuple[list[Part], list[m.Quote]]:
        """Split and quote until every part has an acceptable offer; reserves nothing.

        A provider that declines, fails or times out is left out and the VNet is
        split again among the others.
        """
        ads = self._adverts()
        left_out: set[str] = set()
        reasons: list[str] = []
        while True:
            candidates = exclude(ads, left_out)
            prices = {(a.provider, s.location): s.price_per_cpu for a in candidates
                      for s in a.sites}
            split = split_across_pips(spec, pip_adverts(candidates, spec))
            if isinstance(split, Rejection):
                # The engine's reason names sites, i.e. providers: logged, not told.
                log.info("%s: no split for %s: %s", self.name, order_id, split)
                raise Failed("no provider can take the VNet: " + "; ".join(
                    [*reasons, f"not enough {split.resource} where the VNet needs it"]))
            parts = partition(spec, split, order_id, prices)
            if (why := unstitchable(parts, {a.provider: a for a in candidates})) is not None:
                raise Failed(f"the VNet's parts cannot be stitched: {why}")
            quotes: list[m.Quote] = []
            for part in parts:
                try:
                    quote = self._quote(part)
                except (ClientError, ValueError) as exc:
                    quote = m.Quote("declined", reason=f"no quote: {_why(exc)}")
                if quote.status == "declined":
                    left_out.add(part.provider)
                    reasons.append(f"a provider declined: {quote.reason}")
                    break
                quotes.append(quote)
            else:
                ok, total = within_budget(quotes, spec.constraints.max_price)
                if not ok:
                    raise Failed(f"the offers total {total:g}, above the maximum price "
                                 f"{spec.constraints.max_price:g}")
                return parts, quotes

    def _sliver_name(self, order_id: str, part: Part) -> str:
        return f"{order_id}.{part.index}"

    def plan_parts(self, order_id: str, parts: list[Part],
                   quotes: list[m.Quote]) -> list[dict[str, Any]]:
        """The parts as the order records them, each with its sliver's name, before
        any is allocated (so a release knows every sliver that may exist)."""
        stored = []
        for part, quote in zip(parts, quotes, strict=True):
            name = self._sliver_name(order_id, part)
            stored.append({
                "index": part.index, "provider": part.provider, "sliver": name,
                "spec": dump_vnet(part.spec).decode(), "price": quote.price,
                "nodes": [n.id for n in part.spec.nodes],
                "links": [{"ref": k.ref, "link": k.link, "role": k.role,
                           "peer_part": k.peer_part, "upper_ref": k.upper_ref}
                          for k in part.links]})
        return stored

    def allocate_parts(self, parts: list[dict[str, Any]]) -> None:
        """Allocate every planned part; Failed at the first failure (the caller
        then releases the order, so nothing leaks)."""
        for entry in parts:
            req = m.Allocate(parse_vnet(entry["spec"].encode()), entry["price"],
                             self.config.vnp.reservation_seconds, self.callback)
            try:
                self._client(self.upstreams[entry["provider"]]).put(
                    f"/v1/slivers/{entry['sliver']}", m.allocate_xml(req))
            except ClientError as exc:
                raise Failed(f"allocation failed at a provider: {_why(exc)}") from exc

    def release(self, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Delete every part's sliver (also ones whose allocation never answered),
        in parallel; returns the parts whose deletion failed (404 and 410 count
        as deleted)."""

        def delete(entry: dict[str, Any]) -> dict[str, Any] | None:
            up = self.upstreams.get(entry["provider"])
            if up is None:
                log.error("%s: cannot release %s: provider %s is no longer configured",
                          self.name, entry["sliver"], entry["provider"])
                return entry
            try:
                self._client(up, timeouts.VNP_DEPLOY_CALL).delete(
                    f"/v1/slivers/{entry['sliver']}")
            except RemoteError as exc:
                if exc.status in (404, 410):
                    return None
                log.error("%s: release of %s failed: %s", self.name, entry["sliver"], exc)
                return entry
            except ClientError as exc:
                log.error("%s: release of %s failed: %s", self.name, entry["sliver"], exc)
                return entry
            return None

        return [e for e in _in_parallel(delete, parts) if e is not None]

    def release_order(self, rec: Record) -> bool:
        """Release an order the caller has claimed: recorded as releasing first
        (a crash in the middle resumes), forgotten once every part is gone,
        else kept with the parts left for the reconciler. True if forgotten."""
        rec.data["status"] = RELEASING
        self.store.save(rec.id, rec.data)
        self._fault("vnp-before-release")
        # a move left recorded may have made a part at a provider new to the order
        known = {p["sliver"] for p in rec.data["parts"]}
        moving = [e for e in rec.data.get("move", {}).get("new", []) if e["sliver"] not in known]
        left = self.release(rec.data["parts"] + moving)
        rec.data.pop("move", None)
        if not left:
            self.store.remove(rec.id)
            self._retries.done(rec.id)
            return True
        rec.data["parts"] = left
        self.store.save(rec.id, rec.data)
        delay = self._retries.failed(rec.id)
        log.warning("%s: %d part(s) of order %s not released; retrying in %gs",
                    self.name, len(left), rec.id, delay)
        self.reconciler.wake()
        return False

    def provision_parts(self, parts: list[dict[str, Any]],
                        upper: Mapping[str, Mapping[str, str]]) -> None:
        """Provision every part, in parallel, telling each the peer of each of its
        boundary links; raises the first failure once all have answered."""

        def provision(entry: dict[str, Any]) -> None:
            peers = []
            for k in entry["links"]:
                if k["peer_part"] is not None:
                    other = self.upstreams[parts[k["peer_part"]]["provider"]]
                    peers.append(m.Peer(k["ref"], other.name, other.url, k["role"]))
                else:  # relayed to our customer's peer through this node
                    role = upper[k["upper_ref"]]["role"]
                    peers.append(m.Peer(k["ref"], self.name, self.url, role))  # type: ignore[arg-type]
            self._client(self.upstreams[entry["provider"]], timeouts.VNP_DEPLOY_CALL).post(
                f"/v1/slivers/{entry['sliver']}/provision", m.provision_xml(m.Provision(
                    tuple(peers), self.callback)))

        _in_parallel(provision, parts)

    def start_parts(self, parts: list[dict[str, Any]]) -> None:
        """Start every part at once (each stitches its links with its peers, one
        exchange per pair of providers); the first failure is raised once all
        have answered."""

        def start(entry: dict[str, Any]) -> None:
            self._client(self.upstreams[entry["provider"]], timeouts.VNP_DEPLOY_CALL).post(
                f"/v1/slivers/{entry['sliver']}/action", m.action_xml(m.Action("start")))

        _in_parallel(start, parts)

    def _node_action(self, parts: list[dict[str, Any]], act: m.Action) -> bytes:
        """Relay an action on one node (exec, start, stop, ...) to the provider
        that holds it; its refusals reach the customer as they are."""
        entry = next((p for p in parts if act.node in p["nodes"]), None)
        if entry is None:
            raise NotFound(f"no node {act.node}")
        budget = timeouts.VNP_EXEC_CALL if act.name == "exec" else timeouts.VNP_DEPLOY_CALL
        try:
            reply = self._client(self.upstreams[entry["provider"]], budget).post(
                f"/v1/slivers/{entry['sliver']}/action", m.action_xml(act))
        except RemoteError as exc:
            if exc.status < 500:
                raise Relayed(exc) from exc
            raise UpstreamFailed(f"{act.name} failed at the provider: {_why(exc)}") from exc
        except ClientError as exc:
            raise UpstreamFailed(f"{act.name} failed at the provider: {_why(exc)}") from exc
        return reply.body

    # -- Interface 1: VNets for VNOs ---------------------------------------------------

    def version(self, caller: Identity, params: Mapping[str, str],
                body: bytes) -> tuple[int, bytes]:
        return 200, m.version_xml(self.name, "vnp")

    def _view(self, rec: Record) -> m.VNetView:
        d = rec.data
        nodes = tuple(n.id for n in parse_vnet(d["spec"].encode()).nodes)
        providers: tuple[tuple[str, str], ...] = ()
        if self.config.vnp.disclose_pips:
            providers = tuple((n, p["provider"]) for p in d["parts"] for n in p["nodes"])
        return m.VNetView(rec.id, rec.name, d["status"], nodes, d.get("price"), providers,
                          tuple(d.get("timings", {}).items()),
                          tuple(sorted(d.get("node_states", {}).items())),
                          tuple(m.Event(e["at"], "node-moved", e.get("node"))
                                for e in d.get("events", [])))

    def create_vnet(self, caller: Identity, params: Mapping[str, str],
                    body: bytes) -> tuple[int, bytes]:
        """POST /v1/vnets: a new order each time (kept for older VNOs; a retry
        after a timeout makes a second VNet, which PUT with a key avoids)."""
        spec = m.vnet_of(m.read(body, "vnet"), "vnet request")
        order_id = f"n{secrets.token_hex(5)}"
        rec = Record(order_id, caller.name, order_id, time.time(), {
            "kind": "vnet", "status": "negotiating", "spec": dump_vnet(spec).decode(),
            "parts": [], "price": None})
        self._claim(order_id)
        try:
            self.store.insert(rec)
        except BaseException:
            self._unclaim(order_id)
            raise
        return self._instantiate(rec, spec)

    def put_vnet(self, caller: Identity, params: Mapping[str, str],
                 body: bytes) -> tuple[int, bytes]:
        """PUT /v1/vnets/{key}: the VNet under the VNO's idempotency key; a repeated
        request with the same key gets the same order, never a second one."""
        key = params["id"]
        if not KEY.match(key):
            raise BadRequest(f"key {key!r}: lower case letters, digits, '_' and '-', "
                             "starting with a letter, at most 32 characters")
        spec = m.vnet_of(m.read(body, "vnet"), "vnet request")
        text = dump_vnet(spec).decode()
        order_id = f"n{short_hash(caller.name, key, length=10)}"
        with self._lock:
            existing = self.store.find(caller.name, key)
            if existing is None:
                rec = Record(order_id, caller.name, key, time.time(), {
                    "kind": "vnet", "key": key, "status": "negotiating", "spec": text,
                    "parts": [], "price": None})
                self.store.insert(rec)
                self._busy.add(order_id)
        if existing is None:
            return self._instantiate(rec, spec)
        if existing.data["kind"] != "vnet" or existing.data["spec"] != text:
            raise Conflict(f"key {key} was used for another VNet: choose a new key")
        status = existing.data["status"]
        if status == RELEASING:
            raise Conflict(f"the order under key {key} failed and its parts are being "
                           "released; request again with a new key")
        return (200 if status == "ready" else 202), m.vnet_view_xml(self._view(existing))

    def _instantiate(self, rec: Record, spec: VNetSpec) -> tuple[int, bytes]:
        """Negotiate, allocate, provision and start a VNet order the caller has
        claimed and recorded; on any failure the order is released (and kept as
        releasing while parts remain)."""
        phase = Laps()
        timings = phase.timings

        def status(value: str) -> None:
            rec.data["status"] = value
            self.store.save(rec.id, rec.data)

        try:
            parts, quotes = self.negotiate(spec, rec.id)
            phase("negotiate")
            rec.data["parts"] = self.plan_parts(rec.id, parts, quotes)
            rec.data["price"] = round(sum(q.price or 0.0 for q in quotes), 6)
            status("allocating")
            self.allocate_parts(rec.data["parts"])
            status("allocated")
            phase("allocate")
            self._fault("vnp-after-allocate")
            status("provisioning")
            try:
                self.provision_parts(rec.data["parts"], {})
                phase("provision")
                self._fault("vnp-after-provision")
                self.start_parts(rec.data["parts"])
                phase("stitch")
            except ClientError as exc:
                raise Failed(f"instantiation failed at a provider: {_why(exc)}") from exc
            rec.data["timings"] = timings
            status("ready")
        except Failed as exc:
            self.release_order(rec)
            raise Conflict(f"VNet {spec.name} cannot be provided: {exc}") from exc
        except BaseException:
            self.release_order(rec)  # an unexpected error must not leak slivers
            raise
        finally:
            self._unclaim(rec.id)
        return 201, m.vnet_view_xml(self._view(rec))

    def _order(self, caller: Identity, ref: str, kind: str) -> Record:
        """The caller's order by id, or by the key (name) it chose."""
        rec = self.store.get(ref)
        if rec is None or rec.owner != caller.name:
            rec = self.store.find(caller.name, ref) or rec
        if rec is None or rec.data["kind"] != kind:
            raise NotFound(f"no VNet {ref}")
        require_owner(caller, rec.owner, f"VNet {ref}")
        return rec

    def list_vnets(self, caller: Identity, params: Mapping[str, str],
                   body: bytes) -> tuple[int, bytes]:
        views = [self._view(r) for r in self.store.all(caller.name) if r.data["kind"] == "vnet"]
        return 200, m.vnet_list_xml(views)

    def get_vnet(self, caller: Identity, params: Mapping[str, str],
                 body: bytes) -> tuple[int, bytes]:
        return 200, m.vnet_view_xml(self._view(self._order(caller, params["id"], "vnet")))

    def delete_vnet(self, caller: Identity, params: Mapping[str, str],
                    body: bytes) -> tuple[int, bytes]:
        return self._delete(self._order(caller, params["id"], "vnet"))

    def _delete(self, rec: Record) -> tuple[int, bytes]:
        """204 once every part is gone; 202 when parts are left to the reconciler
        (the order then stays, releasing, until they are); 409 while a request
        still works on the order."""
        if rec.data["status"] == RELEASING:
            self.reconciler.wake()
            return 202, b""
        if not self._claim(rec.id):
            raise Conflict(f"{rec.name} is being worked on; retry the deletion later")
        try:
            fresh = self.store.get(rec.id)
            if fresh is None:
                return 204, b""
            return (204, b"") if self.release_order(fresh) else (202, b"")
        finally:
            self._unclaim(rec.id)

    def vnet_action(self, caller: Identity, params: Mapping[str, str],
                    body: bytes) -> tuple[int, bytes]:
        act = m.action_from(m.read(body, "action"))
        rec = self._order(caller, params["id"], "vnet")
        if act.node is None:
            raise Conflict(f"{act.name} acts on a node of the VNet: name one")
        if rec.data["status"] != "ready":
            raise Conflict(f"VNet {params['id']} is {rec.data['status']}, not ready")
        reply = self._node_action(rec.data["parts"], act)
        if act.name != "exec":
            self._note_state(rec.id, reply)
        return 200, reply

    def move_vnet_node(self, caller: Identity, params: Mapping[str, str],
                       body: bytes) -> tuple[int, bytes]:
        """Move one node of a VNet to a location (`vnetlib.migrate.between_vnp`):
        within its provider if it can, else to another provider. The answer is
        the VNet's view, as before the move but for the move's timing."""
        req = m.move_from(m.read(body, "move"))
        rec = self._order(caller, params["id"], "vnet")
        if rec.data["status"] != "ready":
            raise Conflict(f"VNet {params['id']} is {rec.data['status']}, not ready")
        if not any(req.node in p["nodes"] for p in rec.data["parts"]):
            raise NotFound(f"VNet {params['id']} has no node {req.node}")
        if not self._claim(rec.id):
            raise Conflict(f"VNet {params['id']} is being worked on; retry later")
        try:
            fresh = self.store.get(rec.id)
            if fresh is None:
                raise NotFound(f"no VNet {params['id']}")
            try:
                done = between_vnp.move_node(self, fresh, req.node, req.location, self._fault)
            except between_vnp.MoveDeclined as exc:
                raise Conflict(f"cannot move: {exc}") from exc
            except (between_vnp.MoveUndone, between_vnp.MoveStuck) as exc:
                raise UpstreamFailed(str(exc)) from exc
            except RemoteError as exc:
                if exc.status == 409:
                    raise Conflict(f"cannot move node {req.node}: no room where it is "
                                   "asked to go") from exc
                raise UpstreamFailed(f"the move failed at a provider: {_why(exc)}") from exc
            except ClientError as exc:
                raise UpstreamFailed(f"the move failed at a provider: {_why(exc)}") from exc
            except BaseException:
                self.reconciler.wake()  # a move left recorded is undone there
                raise
            self._moved(fresh, done)
            self.store.save(fresh.id, fresh.data)
            log.info("%s: moved %s of %s (%s) in %.2fs %s", self.name, req.node, fresh.id,
                     "between providers" if done.between else "within its provider",
                     done.seconds, dict(done.timings))
        finally:
            self._unclaim(rec.id)
        return 200, m.vnet_view_xml(self._view(fresh))

    def evict(self, caller: Identity, params: Mapping[str, str],
              body: bytes) -> tuple[int, bytes]:
        """POST /v1/evictions: the provider of a part asks this VNP to take a
        node of that part elsewhere (it needs the host back). Only the part's
        provider may ask (the caller's certificate names it); the node goes
        to another provider at its location (`between_vnp.evict_node`) and
        the VNO learns it as an event of its VNet, never who asked or where
        it went. 409 when no other provider can take it (the node stays)."""
        req = m.evict_from(m.read(body, "evict"))
        rec = self._order_of_part(caller, req.sliver)
        if rec.data["kind"] != "vnet":
            raise Conflict(f"sliver {req.sliver} is part of a sliver this VNP resold: its "
                           "nodes are not moved between providers")
        wait_until = time.time() + min(EVICT_WAIT, max(0.0, (req.deadline or 0) - time.time()))
        while not self._claim(rec.id):
            if time.time() >= wait_until:
                raise Conflict(f"the VNet of sliver {req.sliver} is being worked on; "
                               "ask again later")
            time.sleep(0.2)
        try:
            fresh = self.store.get(rec.id)
            entry = None if fresh is None else next(
                (p for p in fresh.data["parts"] if p["sliver"] == req.sliver
                 and p["provider"] == caller.name), None)
            if fresh is None or entry is None:
                raise NotFound(f"no sliver {req.sliver} of yours")
            if req.node not in entry["nodes"]:
                raise NotFound(f"sliver {req.sliver} has no node {req.node}")
            if fresh.data["status"] != "ready":
                raise Conflict(f"the VNet of sliver {req.sliver} is {fresh.data['status']}")
            log.info("%s: %s asks for node %s of %s to leave (%s)", self.name, caller.name,
                     req.node, req.sliver, req.reason)
            try:
                done = between_vnp.evict_node(self, fresh, req.node, caller.name, self._fault,
                                              scope=req.scope)
            except between_vnp.MoveDeclined as exc:
                raise Conflict(f"cannot take node {req.node} away: {exc}; it stays where "
                               "it is") from exc
            except (between_vnp.MoveUndone, between_vnp.MoveStuck) as exc:
                raise UpstreamFailed(str(exc)) from exc
            except ClientError as exc:
                raise UpstreamFailed(f"the move failed at a provider: {_why(exc)}") from exc
            except BaseException:
                self.reconciler.wake()  # a move left recorded is undone there
                raise
            self._moved(fresh, done)
            events = fresh.data.setdefault("events", [])
            events.append({"at": time.time(), "kind": "node-moved", "node": req.node})
            del events[:-EVENTS_KEPT]
            self.store.save(fresh.id, fresh.data)
        finally:
            self._unclaim(rec.id)
        return 200, m.eviction_xml(m.Eviction(req.sliver, req.node, round(done.seconds, 4)))

    def _order_of_part(self, caller: Identity, sliver: str) -> Record:
        """The order one of whose parts is `sliver` at the caller; 404 for a
        sliver of another provider, as for one that does not exist."""
        for rec in self.store.all():
            if any(p["sliver"] == sliver and p["provider"] == caller.name
                   for p in rec.data.get("parts", [])):
                return rec
        raise NotFound(f"no sliver {sliver} of yours")

    def _moved(self, rec: Record, done: between_vnp.NodeMoved) -> None:
        """The move's timings in the order (`move`, `move-<phase>`), replacing a
        previous move's."""
        timings = rec.data.setdefault("timings", {})
        timings["move"] = round(done.seconds, 4)
        for phase in list(timings):
            if phase.startswith("move-"):
                del timings[phase]
        timings.update({f"move-{k}": v for k, v in done.timings.items()})

    def _note_state(self, order_id: str, reply: bytes) -> None:
        """Remember a node's run state as its provider reported it ("node: state")."""
        node, _, state = m.action_result_from(
            m.parse_reply(reply, "action-result")).stdout.strip().partition(": ")
        with self._lock:
            rec = self.store.get(order_id)
            if rec is None or state not in ("running", "stopped", "paused"):
                return
            states = rec.data.setdefault("node_states", {})
            if state == "running":
                states.pop(node, None)
            else:
                states[node] = state
            self.store.save(rec.id, rec.data)

    # -- Interfaces 2-4: acting as a PIP for another VNP -------------------------------

    def advertisement(self, caller: Identity, params: Mapping[str, str],
                      body: bytes) -> tuple[int, bytes]:
        ad = aggregate_adverts(self.name, self._adverts(), self.config.vnp.price_per_cpu)
        return 200, m.advertisement_xml(ad)

    def quote(self, caller: Identity, params: Mapping[str, str],
              body: bytes) -> tuple[int, bytes]:
        req = m.quote_request_from(m.read(body, "quote-request"))
        try:
            _, quotes = self.negotiate(req.spec, f"q{secrets.token_hex(4)}")
        except Failed as exc:
            return 200, m.quote_xml(m.Quote("declined", reason=str(exc)))
        total = sum(q.price or 0.0 for q in quotes)
        total += self.config.vnp.price_per_cpu * sum(n.cpu for n in req.spec.nodes)
        return 200, m.quote_xml(decide_quote(round(total, 6), req.bid))

    def _sliver(self, caller: Identity, name: str) -> Record:
        """The caller's sliver order; 410 once its reservation expired (the
        reconciler releases it), 404 once it is being released."""
        rec = self.store.find(caller.name, name)
        if rec is None or rec.data["kind"] != "sliver" or rec.data["status"] == RELEASING:
            raise NotFound(f"no sliver {name}")
        if rec.data["status"] == "allocated" and rec.data["expires"] <= time.time():
            self.reconciler.wake()
            raise Gone(f"the reservation of sliver {name} expired")
        return rec

    def _manifest(self, rec: Record) -> m.Manifest:
        d = rec.data
        spec = parse_vnet(d["spec"].encode())
        status = d["status"] if d["status"] in SLIVER_STATES else "allocated"
        return m.Manifest(rec.name, status, d.get("price") or 0.0,  # type: ignore[arg-type]
                          tuple(n.id for n in spec.nodes),
                          tuple(m.BoundaryState(b.peer_ref, b.id, status == "ready")
                                for b in spec.boundary),
                          d.get("expires") if status == "allocated" else None)

    def list_slivers(self, caller: Identity, params: Mapping[str, str],
                     body: bytes) -> tuple[int, bytes]:
        now = time.time()
        return 200, m.slivers_xml([
            self._manifest(r) for r in self.store.all(caller.name)
            if r.data["kind"] == "sliver" and r.data["status"] in SLIVER_STATES
            and not (r.data["status"] == "allocated" and r.data["expires"] <= now)])

    def expire(self) -> float:
        """Release the parts of reservations our customers let expire (run by the
        reconciler, never inside a request); returns the seconds until the next
        expiry."""
        now = time.time()
        soonest = float("inf")
        for rec in self.store.all():
            d = rec.data
            if d["kind"] != "sliver" or d["status"] != "allocated":
                continue
            if d["expires"] > now:
                soonest = min(soonest, d["expires"] - now)
            elif self._claim(rec.id):
                try:
                    fresh = self.store.get(rec.id)
                    if fresh is not None and fresh.data["status"] == "allocated":
                        log.info("%s: reservation %s/%s expired", self.name, rec.owner,
                                 rec.name)
                        self.release_order(fresh)
                finally:
                    self._unclaim(rec.id)
        return soonest

    def allocate(self, caller: Identity, params: Mapping[str, str],
                 body: bytes) -> tuple[int, bytes]:
        req = m.allocate_from(m.read(body, "allocate"))
        name = params["name"]
        order_id = f"r{short_hash(caller.name, name)}"
        rec = Record(order_id, caller.name, name, time.time(), {
            "kind": "sliver", "status": "negotiating", "spec": dump_vnet(req.spec).decode(),
            "parts": [], "price": req.price, "peers": {},
            "expires": time.time() + min(req.expires_in or self.config.vnp.reservation_seconds,
                                         self.config.vnp.reservation_seconds)})
        with self._lock:
            if self.store.find(caller.name, name) is not None or order_id in self._busy:
                raise Conflict(f"sliver {name} exists")
            self.store.insert(rec)
            self._busy.add(order_id)
        try:
            parts, quotes = self.negotiate(req.spec, order_id)
            total = sum(q.price or 0.0 for q in quotes)
            if req.price is not None and total > req.price + 1e-9:
                raise Failed(f"the upstream offers total {total:g}, above {req.price:g}")
            rec.data["parts"] = self.plan_parts(order_id, parts, quotes)
            rec.data["status"] = "allocating"
            self.store.save(rec.id, rec.data)
            self.allocate_parts(rec.data["parts"])
            rec.data["status"] = "allocated"
            self.store.save(rec.id, rec.data)
        except Failed as exc:
            self.release_order(rec)
            raise Conflict(f"cannot allocate: {exc}") from exc
        except BaseException:
            self.release_order(rec)
            raise
        finally:
            self._unclaim(order_id)
        self.reconciler.wake()  # its expiry may come before the reconciler's next round
        return 201, m.manifest_xml(self._manifest(rec))

    def describe(self, caller: Identity, params: Mapping[str, str],
                 body: bytes) -> tuple[int, bytes]:
        return 200, m.manifest_xml(self._manifest(self._sliver(caller, params["name"])))

    def renew(self, caller: Identity, params: Mapping[str, str],
              body: bytes) -> tuple[int, bytes]:
        # Capped like a PIP caps it, so this VNP never believes in a reservation
        # that has already expired upstream.
        seconds = min(m.renew_from(m.read(body, "renew")), self.config.vnp.reservation_seconds)
        rec = self._sliver(caller, params["name"])
        for entry in rec.data["parts"]:
            try:
                self._client(self.upstreams[entry["provider"]]).post(
                    f"/v1/slivers/{entry['sliver']}/renew", m.renew_xml(seconds))
            except ClientError as exc:
                raise UpstreamFailed(f"renewal failed at a provider: {_why(exc)}") from exc
        rec.data["expires"] = time.time() + seconds
        self.store.save(rec.id, rec.data)
        return 200, m.manifest_xml(self._manifest(rec))

    def provision(self, caller: Identity, params: Mapping[str, str],
                  body: bytes) -> tuple[int, bytes]:
        req = m.provision_from(m.read(body, "provision"))
        rec = self._sliver(caller, params["name"])
        if rec.data["status"] != "allocated":
            return 200, m.manifest_xml(self._manifest(rec))
        if not self._claim(rec.id):
            raise Conflict(f"sliver {rec.name} is being worked on; retry later")
        try:
            rec = self._sliver(caller, params["name"])
            if rec.data["status"] == "allocated":
                rec.data["peers"] = {p.ref: {"name": p.name, "url": p.url, "role": p.role}
                                     for p in req.peers}
                rec.data["status"] = "provisioning"  # no longer expires
                self.store.save(rec.id, rec.data)
                done = False
                try:
                    self.provision_parts(rec.data["parts"], rec.data["peers"])
                    done = True
                except ClientError as exc:
                    raise UpstreamFailed(
                        f"provisioning failed at a provider: {_why(exc)}") from exc
                finally:  # on failure as before: allocated, for the customer to delete
                    rec.data["status"] = "provisioned" if done else "allocated"
                    self.store.save(rec.id, rec.data)
        finally:
            self._unclaim(rec.id)
        return 200, m.manifest_xml(self._manifest(rec))

    def sliver_action(self, caller: Identity, params: Mapping[str, str],
                      body: bytes) -> tuple[int, bytes]:
        act = m.action_from(m.read(body, "action"))
        rec = self._sliver(caller, params["name"])
        if act.node is not None:
            return 200, self._node_action(rec.data["parts"], act)
        if act.name != "start":
            raise Conflict(f"{act.name} acts on a node: name one")
        try:
            self.start_parts(rec.data["parts"])
        except ClientError as exc:
            raise UpstreamFailed(f"start failed at a provider: {_why(exc)}") from exc
        rec.data["status"] = "ready"
        self.store.save(rec.id, rec.data)
        return 200, m.action_result_xml(m.ActionResult("start", 0))

    def delete_sliver(self, caller: Identity, params: Mapping[str, str],
                      body: bytes) -> tuple[int, bytes]:
        rec = self.store.find(caller.name, params["name"])
        if rec is None or rec.data["kind"] != "sliver":
            raise NotFound(f"no sliver {params['name']}")
        return self._delete(rec)

    def stitch(self, caller: Identity, params: Mapping[str, str],
               body: bytes) -> tuple[int, bytes]:
        """Relay a stitching message between an upstream part and our customer's peer,
        translating the link ref; endpoints pass through (the data plane is direct).
        A `<stitches>` batch is relayed link by link and answered as a batch."""
        proposals, batch = m.read_stitches(body)
        if batch:
            return 200, m.stitches_xml([self._relay(caller, p) for p in proposals])
        return 200, m.stitch_xml(self._relay(caller, proposals[0]))

    def _relay(self, caller: Identity, proposal: m.Stitch) -> m.Stitch:
        for rec in self.store.all():
            peers = rec.data.get("peers", {})
            for entry in rec.data["parts"]:
                for k in entry["links"]:
                    if k["peer_part"] is not None or k["upper_ref"] not in peers:
                        continue
                    upper = peers[k["upper_ref"]]
                    if proposal.ref == k["ref"] and caller.name == entry["provider"]:
                        target = Upstream(upper["name"], upper["url"])
                        ref_out, ref_back = k["upper_ref"], k["ref"]
                    elif proposal.ref == k["upper_ref"] and caller.name == upper["name"]:
                        target = self.upstreams[entry["provider"]]
                        ref_out, ref_back = k["ref"], k["upper_ref"]
                    elif proposal.ref in (k["ref"], k["upper_ref"]):
                        raise Forbidden(f"{caller} is not the peer of link {proposal.ref}")
                    else:
                        continue
                    try:
                        reply = self._client(target, timeouts.VNP_DEPLOY_CALL).post(
                            "/v1/stitch", m.stitch_xml(replace(proposal, ref=ref_out)))
                        answer = m.stitch_from(m.parse_reply(reply.body, "stitch"))
                    except (ClientError, ValueError) as exc:
                        raise UpstreamFailed(f"relaying link {proposal.ref}: {_why(exc)}") from exc
                    return replace(answer, ref=ref_back)
        raise NotFound(f"no link {proposal.ref}")

    # -- reconciliation --------------------------------------------------------------

    def _recover(self) -> None:
        """At startup: an order a crash left unfinished has no thread working on it
        any more, so it is released (its VNO learns so: GET answers releasing and
        a PUT with its key 409, until it is gone; then the key is free again)."""
        for rec in self.store.all():
            d = rec.data
            if d["status"] in UNFINISHED.get(d["kind"], set()):
                log.warning("%s: order %s was %s when this VNP stopped: releasing it",
                            self.name, rec.id, d["status"])
                d["status"] = RELEASING
                self.store.save(rec.id, d)

    def reconcile(self) -> float:
        """One round of the reconciler: expire reservations, retry the releases
        that are due, and (until each upstream answered once since startup)
        delete the slivers upstreams hold for this VNP that no order owns.
        Returns the seconds until the next round is needed."""
        wait = min(self.expire(), self.config.vnp.retry_max_seconds)
        for rec in self.store.all():
            if self.reconciler.stopping.is_set():
                return wait
            if rec.data["status"] != RELEASING or not self._retries.due(rec.id):
                continue
            if not self._claim(rec.id):
                continue
            try:
                fresh = self.store.get(rec.id)
                if (fresh is not None and fresh.data["status"] == RELEASING
                        and self.release_order(fresh)):
                    log.info("%s: order %s released", self.name, rec.id)
            finally:
                self._unclaim(rec.id)
        for rec in self.store.all():
            if ("move" in rec.data and rec.data["status"] == "ready"
                    and not self.reconciler.stopping.is_set()):
                self._recover_move(rec)
        if self._unreconciled:
            self._sweep_upstreams()
            if self._unreconciled:
                wait = min(wait, self.config.vnp.retry_seconds)
        return self._retries.next_in(wait)

    def _recover_move(self, rec: Record) -> None:
        """Undo a move a failure left recorded in an order (none runs on it)."""
        if not self._retries.due(rec.id) or not self._claim(rec.id):
            return
        try:
            fresh = self.store.get(rec.id)
            if fresh is not None and "move" in fresh.data:
                between_vnp.recover(self, fresh)
                self._retries.done(rec.id)
        except Exception as exc:  # retried with backoff
            delay = self._retries.failed(rec.id)
            log.error("%s: undoing the move in %s failed (%s); retrying in %gs", self.name,
                      rec.id, exc, delay)
        finally:
            self._unclaim(rec.id)

    def _sweep_upstreams(self) -> None:
        """Delete every sliver an upstream lists for this VNP whose order is not in
        the store (a crash between the upstream's answer and our record of it, or
        an order forgotten by an older version). The listing is read before the
        store: an order is recorded before its slivers are allocated, so a sliver
        listed for a live order always finds its order."""
        for name in sorted(self._unreconciled):
            up = self.upstreams[name]
            try:
                reply = self._client(up).get("/v1/slivers")
                listed = m.slivers_from(m.parse_reply(reply.body, "slivers"))
            except (ClientError, ValueError) as exc:
                log.warning("%s: cannot list the slivers at %s: %s", self.name, name, exc)
                continue
            owned = {r.id for r in self.store.all()}
            orphans = [s.id for s in listed
                       if (part := PART_NAME.match(s.id)) and part["order"] not in owned]
            left = self.release([{"provider": name, "sliver": o} for o in orphans])
            for o in orphans:
                log.warning("%s: sliver %s at %s belongs to no order: %s", self.name, o, name,
                            "deletion failed" if any(e["sliver"] == o for e in left)
                            else "deleted")
            if not left:
                self._unreconciled.discard(name)


def _in_parallel(work: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
    """`work` on every item at once (one thread each: the items are providers,
    a handful); results in order; the first exception is raised after all ended."""
    todo = list(items)
    if len(todo) <= 1:
        return [work(item) for item in todo]
    with ThreadPoolExecutor(max_workers=len(todo)) as pool:
        futures = [pool.submit(work, item) for item in todo]
        errors = [f.exception() for f in futures]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first
        return [f.result() for f in futures]
