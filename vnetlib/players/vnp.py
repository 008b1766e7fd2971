"""The VNP's management node: splits VNets across its upstream providers,
negotiates with them (quote -> allocate with expiry -> provision -> start, or
release everything), and relays stitching and operational actions.

Towards VNOs it serves `/v1/vnets`; towards another VNP it serves the very
API of a PIP (`/v1/advertisement`, `/v1/quotes`, `/v1/slivers/...`,
`/v1/stitch`), so a VNP can be an upstream of another VNP (recursion). An
"order" is what it sells either way: a VNet or a sliver, made of parts, one
per upstream provider.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from vnetlib.embedding.multipip import split_across_pips
from vnetlib.embedding.result import Rejection
from vnetlib.naming import short_hash
from vnetlib.players import messages as m
from vnetlib.players.aggregate import add_aggregate_routes
from vnetlib.players.client import ClientError, PlayerClient, RemoteError, TransportError
from vnetlib.players.config import PlayerConfig, Upstream
from vnetlib.players.negotiation import (
    Part,
    aggregate_adverts,
    decide_quote,
    exclude,
    partition,
    pip_adverts,
    within_budget,
)
from vnetlib.players.pki import Credentials, Identity, Role
from vnetlib.players.server import (
    Conflict,
    Forbidden,
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

DEPLOY_TIMEOUT = 300.0


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
        self._lock = threading.Lock()
        vno = {Role.VNO}
        self.add_route("GET", "/v1/version", self.version)
        # Interface 1: VNOs
        self.add_route("POST", "/v1/vnets", self.create_vnet, roles=vno)
        self.add_route("GET", "/v1/vnets", self.list_vnets, roles=vno)
        self.add_route("GET", "/v1/vnets/{id}", self.get_vnet, roles=vno)
        self.add_route("DELETE", "/v1/vnets/{id}", self.delete_vnet, roles=vno)
        self.add_route("POST", "/v1/vnets/{id}/action", self.vnet_action, roles=vno)
        # Interfaces 2-4 as a PIP towards another VNP
        add_aggregate_routes(
            self, advertisement=self.advertisement, quote=self.quote,
            list_slivers=self.list_slivers, allocate=self.allocate, describe=self.describe,
            provision=self.provision, renew=self.renew, action=self.sliver_action,
            delete=self.delete_sliver, stitch=self.stitch)

    def close(self) -> None:
        self.store.close()

    def _client(self, upstream: Upstream, timeout: float | None = None) -> PlayerClient:
        return PlayerClient(upstream.url, self.credentials, timeout or self.config.vnp.timeout,
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

    def allocate_parts(self, order_id: str, parts: list[Part],
                       quotes: list[m.Quote]) -> list[dict[str, Any]]:
        """Allocate every part; on any failure release all of them (nothing leaks)."""
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
        for part, quote, entry in zip(parts, quotes, stored, strict=True):
            req = m.Allocate(part.spec, quote.price, self.config.vnp.reservation_seconds)
            try:
                self._client(self.upstreams[part.provider]).put(
                    f"/v1/slivers/{entry['sliver']}", m.allocate_xml(req))
            except ClientError as exc:
                self.release(stored)
                raise Failed(f"allocation failed at a provider: {_why(exc)}") from exc
        return stored

    def release(self, parts: list[dict[str, Any]]) -> list[str]:
        """Delete every part's sliver (also ones whose allocation never answered);
        returns the errors of the deletions that failed."""
        errors = []
        for entry in parts:
            up = self.upstreams[entry["provider"]]
            try:
                self._client(up, DEPLOY_TIMEOUT).delete(f"/v1/slivers/{entry['sliver']}")
            except RemoteError as exc:
                if exc.status not in (404, 410):
                    errors.append(f"{up.name}: {exc}")
            except ClientError as exc:
                errors.append(f"{up.name}: {exc}")
        for e in errors:
            log.error("%s: release failed: %s", self.name, e)
        return errors

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
            self._client(self.upstreams[entry["provider"]], DEPLOY_TIMEOUT).post(
                f"/v1/slivers/{entry['sliver']}/provision", m.provision_xml(m.Provision(
                    tuple(peers))))

        _in_parallel(provision, parts)

    def start_parts(self, parts: list[dict[str, Any]]) -> None:
        for entry in parts:
            self._client(self.upstreams[entry["provider"]], DEPLOY_TIMEOUT).post(
                f"/v1/slivers/{entry['sliver']}/action", m.action_xml(m.Action("start")))

    def _exec(self, parts: list[dict[str, Any]], act: m.Action) -> bytes:
        entry = next((p for p in parts if act.node in p["nodes"]), None)
        if entry is None:
            raise NotFound(f"no node {act.node}")
        try:
            reply = self._client(self.upstreams[entry["provider"]], 90.0).post(
                f"/v1/slivers/{entry['sliver']}/action", m.action_xml(act))
        except ClientError as exc:
            raise UpstreamFailed(f"exec failed at the provider: {_why(exc)}") from exc
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
                          tuple(d.get("timings", {}).items()))

    def create_vnet(self, caller: Identity, params: Mapping[str, str],
                    body: bytes) -> tuple[int, bytes]:
        spec = m.vnet_of(m.read(body, "vnet"), "vnet request")
        order_id = f"n{secrets.token_hex(5)}"
        rec = Record(order_id, caller.name, order_id, time.time(), {
            "kind": "vnet", "status": "negotiating", "spec": dump_vnet(spec).decode(),
            "parts": [], "price": None})
        self.store.insert(rec)
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def phase(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = round(now - clock, 4)
            clock = now

        try:
            parts, quotes = self.negotiate(spec, order_id)
            phase("negotiate")
            rec.data["parts"] = self.allocate_parts(order_id, parts, quotes)
            rec.data["price"] = round(sum(q.price or 0.0 for q in quotes), 6)
            rec.data["status"] = "allocated"
            self.store.save(rec.id, rec.data)
            phase("allocate")
            try:
                self.provision_parts(rec.data["parts"], {})
                phase("provision")
                self.start_parts(rec.data["parts"])
                phase("stitch")
            except ClientError as exc:
                self.release(rec.data["parts"])
                raise Failed(f"instantiation failed at a provider: {_why(exc)}") from exc
        except Failed as exc:
            self.store.remove(rec.id)
            raise Conflict(f"VNet {spec.name} cannot be provided: {exc}") from exc
        except BaseException:
            self.release(rec.data["parts"])  # an unexpected error must not leak slivers
            self.store.remove(rec.id)
            raise
        rec.data["status"] = "ready"
        rec.data["timings"] = timings
        self.store.save(rec.id, rec.data)
        return 201, m.vnet_view_xml(self._view(rec))

    def _order(self, caller: Identity, order_id: str, kind: str) -> Record:
        rec = self.store.get(order_id)
        if rec is None or rec.data["kind"] != kind:
            raise NotFound(f"no VNet {order_id}")
        require_owner(caller, rec.owner, f"VNet {order_id}")
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
        errors = self.release(rec.data["parts"])
        if errors:
            rec.data["status"] = "failed"
            self.store.save(rec.id, rec.data)
            raise UpstreamFailed(f"could not delete {len(errors)} of its parts; retry the deletion")
        self.store.remove(rec.id)
        return 204, b""

    def vnet_action(self, caller: Identity, params: Mapping[str, str],
                    body: bytes) -> tuple[int, bytes]:
        act = m.action_from(m.read(body, "action"))
        rec = self._order(caller, params["id"], "vnet")
        if act.name != "exec":
            raise Conflict("only exec is offered on VNets")
        return 200, self._exec(rec.data["parts"], act)

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
        self._expire()
        rec = self.store.find(caller.name, name)
        if rec is None or rec.data["kind"] != "sliver":
            raise NotFound(f"no sliver {name}")
        return rec

    def _manifest(self, rec: Record) -> m.Manifest:
        d = rec.data
        spec = parse_vnet(d["spec"].encode())
        return m.Manifest(rec.name, d["status"], d.get("price") or 0.0,
                          tuple(n.id for n in spec.nodes),
                          tuple(m.BoundaryState(b.peer_ref, b.id, d["status"] == "ready")
                                for b in spec.boundary),
                          d.get("expires") if d["status"] == "allocated" else None)

    def list_slivers(self, caller: Identity, params: Mapping[str, str],
                     body: bytes) -> tuple[int, bytes]:
        self._expire()
        return 200, m.slivers_xml([self._manifest(r) for r in self.store.all(caller.name)
                                   if r.data["kind"] == "sliver"])

    def _expire(self) -> None:
        """Release the parts of reservations our customers let expire."""
        now = time.time()
        for rec in self.store.all():
            d = rec.data
            if d["kind"] == "sliver" and d["status"] == "allocated" and d["expires"] <= now:
                log.info("%s: reservation %s/%s expired", self.name, rec.owner, rec.name)
                if not self.release(d["parts"]):
                    self.store.remove(rec.id)

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
            if self.store.find(caller.name, name) is not None:
                raise Conflict(f"sliver {name} exists")
            self.store.insert(rec)
        try:
            parts, quotes = self.negotiate(req.spec, order_id)
            total = sum(q.price or 0.0 for q in quotes)
            if req.price is not None and total > req.price + 1e-9:
                raise Failed(f"the upstream offers total {total:g}, above {req.price:g}")
            rec.data["parts"] = self.allocate_parts(order_id, parts, quotes)
        except Failed as exc:
            self.store.remove(rec.id)
            raise Conflict(f"cannot allocate: {exc}") from exc
        except BaseException:
            self.store.remove(rec.id)
            raise
        rec.data["status"] = "allocated"
        self.store.save(rec.id, rec.data)
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
        if rec.data["status"] == "allocated":
            rec.data["peers"] = {p.ref: {"name": p.name, "url": p.url, "role": p.role}
                                 for p in req.peers}
            self.store.save(rec.id, rec.data)
            try:
                self.provision_parts(rec.data["parts"], rec.data["peers"])
            except ClientError as exc:
                raise UpstreamFailed(f"provisioning failed at a provider: {_why(exc)}") from exc
            rec.data["status"] = "provisioned"
            self.store.save(rec.id, rec.data)
        return 200, m.manifest_xml(self._manifest(rec))

    def sliver_action(self, caller: Identity, params: Mapping[str, str],
                      body: bytes) -> tuple[int, bytes]:
        act = m.action_from(m.read(body, "action"))
        rec = self._sliver(caller, params["name"])
        if act.name == "exec":
            return 200, self._exec(rec.data["parts"], act)
        try:
            self.start_parts(rec.data["parts"])
        except ClientError as exc:
            raise UpstreamFailed(f"start failed at a provider: {_why(exc)}") from exc
        rec.data["status"] = "ready"
        self.store.save(rec.id, rec.data)
        return 200, m.action_result_xml(m.ActionResult("start", 0))

    def delete_sliver(self, caller: Identity, params: Mapping[str, str],
                      body: bytes) -> tuple[int, bytes]:
        return self._delete(self._sliver(caller, params["name"]))

    def stitch(self, caller: Identity, params: Mapping[str, str],
               body: bytes) -> tuple[int, bytes]:
        """Relay a stitching message between an upstream part and our customer's peer,
        translating the link ref; endpoints pass through (the data plane is direct)."""
        proposal = m.stitch_from(m.read(body, "stitch"))
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
                        reply = self._client(target, DEPLOY_TIMEOUT).post(
                            "/v1/stitch", m.stitch_xml(replace(proposal, ref=ref_out)))
                        answer = m.stitch_from(m.parse_reply(reply.body, "stitch"))
                    except (ClientError, ValueError) as exc:
                        raise UpstreamFailed(f"relaying link {proposal.ref}: {_why(exc)}") from exc
                    return 200, m.stitch_xml(replace(answer, ref=ref_back))
        raise NotFound(f"no link {proposal.ref}")


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
