"""The VNO's management node: takes SPs' requirements (Interface 1), adds its own
constraints, and has its VNP provide the VNet; relays SPs' operational actions.

An SP sees only its own VNets (404 for any other) and never a provider's or a
substrate host's name: the VNO passes on only what the VNP disclosed.

Nothing is orphaned between the VNO and the VNP: a VNet is recorded
("requesting", with a fresh idempotency key) before the VNP is called, and is
created there with `PUT /v1/vnets/{key}`, so asking again never makes a second
one. When the call times out or fails in transport the VNet is kept as
"unknown" and the reconciler thread asks the VNP about its key (ready: kept;
absent or released: forgotten; still working: asked again later). A deletion
the VNP did not confirm is kept as "deleting" and retried. At startup the VNO
resolves the VNets a crash left "requesting", and deletes the VNets the VNP
holds for it that it does not know.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Mapping

from vnetlib.aaa.api import VNetAttachments, aaa_dir, add_user_routes
from vnetlib.aaa.users import UserStore
from vnetlib.players import faultpoints, timeouts
from vnetlib.players import messages as m
from vnetlib.players.client import ClientError, PlayerClient, Relayed, RemoteError
from vnetlib.players.config import PlayerConfig
from vnetlib.players.pki import Credentials, Identity, Role
from vnetlib.players.reconcile import Backoff, Reconciler, Retries
from vnetlib.players.server import (
    ApiError,
    Conflict,
    NotFound,
    Service,
    UpstreamFailed,
    require_owner,
)
from vnetlib.players.sshkeys import KeyStore, add_key_routes
from vnetlib.players.stores import PlayerStore, Record
from vnetlib.spec import dump_vnet
from vnetlib.spec.model import VNetSpec

log = logging.getLogger(__name__)

REQUESTING, UNKNOWN, READY, DELETING = "requesting", "unknown", "ready", "deleting"
GONE_AT_VNP = {"releasing", "failed"}  # the VNP released (or releases) the order itself


class Pending(ApiError):
    """The VNP did not answer in time: the VNet is kept as unknown and resolved
    in the background (the SP sees it, and its outcome, in its list)."""

    status, code = 504, "upstream-timeout"


def with_constraints(spec: VNetSpec, max_price: float | None) -> VNetSpec:
    """The SP's VNet with the VNO's constraints added (the lower price limit wins)."""
    if max_price is None:
        return spec
    mine = spec.constraints.max_price
    limit = max_price if mine is None else min(mine, max_price)
    return dataclasses.replace(spec, constraints=dataclasses.replace(spec.constraints,
                                                                     max_price=limit))


class VnoService(Service):
    def __init__(self, config: PlayerConfig, credentials: Credentials) -> None:
        super().__init__(config.name)
        self.config = config
        self.store = PlayerStore(config.store, config.name)
        vnp = config.vno.vnp
        assert vnp is not None
        self.vnp = PlayerClient(vnp.url, credentials, config.vno.timeout,
                                expect_role=Role.VNP, expect_name=vnp.name)
        # for the reconciler's look-ups, which the VNP answers from its store
        self.vnp_short = PlayerClient(vnp.url, credentials,
                                      min(timeouts.VNP_SHORT_CALL, config.vno.timeout),
                                      expect_role=Role.VNP, expect_name=vnp.name)
        self.closing = threading.Event()
        self._lock = threading.Lock()  # status changes: request threads vs the reconciler
        self._busy: set[str] = set()  # VNets a request thread deletes right now
        self._retries = Retries(Backoff(config.vno.retry_seconds, config.vno.retry_max_seconds))
        self._swept = False  # the VNP's VNets checked against ours since startup
        sp = {Role.SP}
        self.add_route("GET", "/v1/version", self.version)
        self.add_route("POST", "/v1/vnets", self.create, roles=sp)
        self.add_route("GET", "/v1/vnets", self.list, roles=sp)
        self.add_route("GET", "/v1/vnets/{id}", self.get, roles=sp)
        self.add_route("DELETE", "/v1/vnets/{id}", self.delete, roles=sp)
        self.add_route("POST", "/v1/vnets/{id}/action", self.action, roles=sp)
        self.add_route("POST", "/v1/vnets/{id}/move", self.move, roles=sp)
        self.keys = KeyStore(config.store, config.name)  # SPs' SSH keys
        add_key_routes(self, self.keys)
        # end users of the SPs' VNets (Interface 6), for the VNO's RADIUS server
        self.users = UserStore(aaa_dir(config.pki, config.name), realm=config.name)
        add_user_routes(self, self.users, self._attachments)
        self._recover()
        self.reconciler = Reconciler(self.name, self.reconcile,
                                     most=config.vno.retry_max_seconds)
        self.reconciler.start()  # once assigned: its rounds use it

    def close(self) -> None:
        self.closing.set()
        self.reconciler.stop()
        self.keys.close()
        self.store.close()

    def _fault(self, point: str) -> None:
        faultpoints.check(self.config.faults, point, self.closing, self.name)

    def _call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        try:
            return self.vnp.request(method, path, body).body
        except RemoteError as exc:
            if exc.status < 500:
                raise Relayed(exc) from exc
            raise UpstreamFailed(f"the VNP failed: {exc.message}") from exc
        except ClientError as exc:
            raise UpstreamFailed(f"the VNP cannot be reached: {exc}") from exc

    def _view(self, rec: Record,
              node_states: tuple[tuple[str, str], ...] = ()) -> m.VNetView:
        d = rec.data
        return m.VNetView(rec.id, d["name"], d["status"], tuple(d["nodes"]), d.get("price"),
                          tuple((n, p) for n, p in d.get("providers", [])),
                          tuple((k, v) for k, v in d.get("timings", [])), node_states,
                          tuple(m.Event(at, "node-moved", node)
                                for at, _, node in d.get("events", [])))

    def _own(self, caller: Identity, vnet_id: str) -> Record:
        rec = self.store.get(vnet_id)
        if rec is None:
            raise NotFound(f"no VNet {vnet_id}")
        require_owner(caller, rec.owner, f"VNet {vnet_id}")
        return rec

    @staticmethod
    def _vnp_ref(rec: Record) -> str:
        """How the VNP knows the VNet: its key (also before the VNP answered),
        or the VNP's id for VNets made before keys."""
        return str(rec.data.get("key") or rec.data["vnp_id"])

    def _set_status(self, rec: Record, status: str, expect: set[str], *,
                    claim: bool = False) -> bool:
        """Move the record to `status` if it is still in one of `expect` (and, with
        `claim`, keep the reconciler off it until `_unclaim`)."""
        with self._lock:
            fresh = self.store.get(rec.id)
            if fresh is None or fresh.data["status"] not in expect or rec.id in self._busy:
                return False
            fresh.data["status"] = status
            self.store.save(rec.id, fresh.data)
            if claim:
                self._busy.add(rec.id)
        self.reconciler.wake()
        return True

    def _unclaim(self, vnet_id: str) -> None:
        with self._lock:
            self._busy.discard(vnet_id)

    def version(self, caller: Identity, params: Mapping[str, str],
                body: bytes) -> tuple[int, bytes]:
        return 200, m.version_xml(self.name, "vno")

    def create(self, caller: Identity, params: Mapping[str, str],
               body: bytes) -> tuple[int, bytes]:
        spec = m.vnet_of(m.read(body, "service-request"), "service request")
        spec = with_constraints(spec, self.config.vno.max_price)
        vnet_id = f"v{secrets.token_hex(5)}"
        rec = Record(vnet_id, caller.name, vnet_id, time.time(), {
            "key": f"k{secrets.token_hex(8)}", "vnp_id": None, "name": spec.name,
            "status": REQUESTING, "nodes": [], "price": None, "providers": [], "timings": [],
            "attach": [[a.node, a.pool, a.realm] for a in spec.attachments]})
        self.store.insert(rec)  # before the VNP hears of it
        kept = (f"VNet {vnet_id} is kept as unknown until the VNP's outcome is known "
                "(GET /v1/vnets shows it)")
        try:
            self._fault("vno-before-vnp")
            reply = self.vnp.request("PUT", f"/v1/vnets/{rec.data['key']}", dump_vnet(spec))
            self._fault("vno-after-vnp")
            got = m.vnet_view_from(m.parse_reply(reply.body, "vnet-status"))
            if got.status != READY:
                raise ValueError(f"the VNP answered {reply.status} {got.status}")
        except RemoteError as exc:
            if exc.status < 500:  # refused, and released by the VNP: nothing to keep
                self.store.remove(rec.id)
                raise Relayed(exc) from exc
            self._set_status(rec, UNKNOWN, {REQUESTING})
            raise UpstreamFailed(f"the VNP failed: {exc.message}; {kept}") from exc
        except (ClientError, ValueError) as exc:
            self._set_status(rec, UNKNOWN, {REQUESTING})
            raise Pending(f"no answer from the VNP in time ({exc}); {kept}") from exc
        except BaseException:
            self._set_status(rec, UNKNOWN, {REQUESTING})
            raise
        self._ready(rec, got)
        return 201, m.vnet_view_xml(self._view(rec))

    def _ready(self, rec: Record, got: m.VNetView) -> None:
        rec.data.update({
            "vnp_id": got.id, "status": READY, "nodes": list(got.nodes), "price": got.price,
            "providers": [list(p) for p in got.providers],
            "timings": [list(t) for t in got.timings]})
        with self._lock:
            self.store.save(rec.id, rec.data)

    def list(self, caller: Identity, params: Mapping[str, str],
             body: bytes) -> tuple[int, bytes]:
        return 200, m.vnet_list_xml([self._view(r) for r in self.store.all(caller.name)])

    def get(self, caller: Identity, params: Mapping[str, str],
            body: bytes) -> tuple[int, bytes]:
        rec = self._own(caller, params["id"])
        if rec.data["status"] in (REQUESTING, UNKNOWN, DELETING):
            return 200, m.vnet_view_xml(self._view(rec))
        got = m.vnet_view_from(m.parse_reply(
            self._call("GET", f"/v1/vnets/{self._vnp_ref(rec)}"), "vnet-status"))
        with self._lock:
            fresh = self.store.get(rec.id)
            events = [[e.at, e.kind, e.node] for e in got.events]
            if fresh is not None and (fresh.data["status"] == READY != got.status
                                      or events != fresh.data.get("events", [])):
                if fresh.data["status"] == READY:
                    fresh.data["status"] = got.status
                fresh.data["events"] = events  # e.g. a node its provider needed moved
                self.store.save(rec.id, fresh.data)
                rec = fresh
        return 200, m.vnet_view_xml(self._view(rec, got.node_states))

    def delete(self, caller: Identity, params: Mapping[str, str],
               body: bytes) -> tuple[int, bytes]:
        """204 once the VNP deleted the VNet; 202 when the deletion is left to the
        reconciler (the VNet shows as deleting until it is gone)."""
        rec = self._own(caller, params["id"])
        status = rec.data["status"]
        if status == REQUESTING:
            raise Conflict(f"VNet {rec.id} is being created; delete it once it is ready")
        if status in (UNKNOWN, DELETING):
            self._set_status(rec, DELETING, {UNKNOWN, DELETING})
            return 202, b""
        if not self._set_status(rec, DELETING, {status}, claim=True):
            raise Conflict(f"VNet {rec.id} changed meanwhile; retry")
        try:
            done = self._delete_at_vnp(rec)
        finally:
            self._unclaim(rec.id)
        if not done:  # the retry recorded above is due soon: the reconciler must see it
            self.reconciler.wake()
        return (204, b"") if done else (202, b"")

    def _delete_at_vnp(self, rec: Record) -> bool:
        """Delete a VNet recorded as deleting at the VNP; forgotten once the VNP
        took the deletion (204, or 202: it releases the rest itself) or does not
        know it (404); else kept for a retry. True if forgotten."""
        try:
            self.vnp.delete(f"/v1/vnets/{self._vnp_ref(rec)}")
        except RemoteError as exc:
            if exc.status != 404:
                delay = self._retries.failed(rec.id)
                log.warning("%s: deletion of %s at the VNP failed (%s); retry in %gs",
                            self.name, rec.id, exc, delay)
                return False
        except ClientError as exc:
            delay = self._retries.failed(rec.id)
            log.warning("%s: deletion of %s at the VNP failed (%s); retry in %gs",
                        self.name, rec.id, exc, delay)
            return False
        self.store.remove(rec.id)
        self.users.remove_vnet(rec.id)
        self._retries.done(rec.id)
        return True

    def action(self, caller: Identity, params: Mapping[str, str],
               body: bytes) -> tuple[int, bytes]:
        act = m.action_from(m.read(body, "action"))
        rec = self._own(caller, params["id"])
        if rec.data["status"] != READY:
            raise Conflict(f"VNet {rec.id} is {rec.data['status']}, not ready")
        return 200, self._call("POST", f"/v1/vnets/{self._vnp_ref(rec)}/action",
                               m.action_xml(act))

    def move(self, caller: Identity, params: Mapping[str, str],
             body: bytes) -> tuple[int, bytes]:
        """Ask the VNP to move a node of the VNet to a location. The VNO learns
        only the outcome: the VNet is ready again (with the move's time among
        its timings), never where the node was or went."""
        req = m.move_from(m.read(body, "move"))
        rec = self._own(caller, params["id"])
        if rec.data["status"] != READY:
            raise Conflict(f"VNet {rec.id} is {rec.data['status']}, not ready")
        got = m.vnet_view_from(m.parse_reply(self._call(
            "POST", f"/v1/vnets/{self._vnp_ref(rec)}/move", m.move_xml(req)), "vnet-status"))
        with self._lock:
            fresh = self.store.get(rec.id)
            if fresh is not None:
                timings = dict(fresh.data.get("timings", []))
                timings.update(dict(got.timings))
                fresh.data["timings"] = [list(t) for t in timings.items()]
                self.store.save(rec.id, fresh.data)
                rec = fresh
        log.info("%s: node %s of %s moved", self.name, req.node, rec.id)
        return 200, m.vnet_view_xml(self._view(rec))

    def _attachments(self, vnet_id: str) -> VNetAttachments | None:
        rec = self.store.get(vnet_id)
        if rec is None:
            return None
        d = rec.data
        return VNetAttachments(rec.owner, d["status"] == READY, d.get("vnp_id"),
                               {n: (pool, realm) for n, pool, realm in d.get("attach", [])})

    # -- reconciliation --------------------------------------------------------------

    def _recover(self) -> None:
        """At startup: a VNet left requesting had its request cut by a crash;
        whether the VNP made it is unknown until asked."""
        for rec in self.store.all():
            if rec.data["status"] == REQUESTING:
                log.warning("%s: VNet %s was being requested when this VNO stopped",
                            self.name, rec.id)
                rec.data["status"] = UNKNOWN
                self.store.save(rec.id, rec.data)

    def reconcile(self) -> float:
        """One round: resolve unknown VNets, retry deletions, and (until done
        once since startup) delete the VNP's VNets for us that we do not know.
        Returns the seconds until the next round is needed."""
        for rec in self.store.all():
            if self.reconciler.stopping.is_set():
                break
            status = rec.data["status"]
            if (status not in (UNKNOWN, DELETING) or not self._retries.due(rec.id)
                    or rec.id in self._busy):
                continue
            if status == UNKNOWN:
                self._resolve(rec)
            else:
                self._delete_at_vnp(rec)
        if not self._swept:
            self._swept = self._sweep()
        idle = self.config.vno.retry_max_seconds if self._swept else self.config.vno.retry_seconds
        return self._retries.next_in(idle)

    def _resolve(self, rec: Record) -> None:
        """Ask the VNP about an unknown VNet's key: ready -> kept; absent or
        released -> forgotten; still working -> asked again later."""
        try:
            reply = self.vnp_short.get(f"/v1/vnets/{rec.data['key']}")
            got = m.vnet_view_from(m.parse_reply(reply.body, "vnet-status"))
        except RemoteError as exc:
            if exc.status == 404:
                self._forget(rec, UNKNOWN, "the VNP never made it")
            else:
                self._retries.failed(rec.id)
            return
        except (ClientError, ValueError) as exc:
            delay = self._retries.failed(rec.id)
            log.info("%s: VNet %s still unknown (%s); asking again in %gs",
                     self.name, rec.id, exc, delay)
            return
        if got.status == READY:
            with self._lock:
                fresh = self.store.get(rec.id)
                if fresh is None or fresh.data["status"] != UNKNOWN:
                    return
            self._ready(fresh, got)
            self._retries.done(rec.id)
            log.info("%s: VNet %s resolved: ready at the VNP", self.name, rec.id)
        elif got.status in GONE_AT_VNP:
            self._forget(rec, UNKNOWN, f"the VNP {got.status} it")
        else:
            self._retries.failed(rec.id)

    def _forget(self, rec: Record, expect: str, why: str) -> None:
        with self._lock:
            fresh = self.store.get(rec.id)
            if fresh is None or fresh.data["status"] != expect:
                return
            self.store.remove(rec.id)
        self._retries.done(rec.id)
        log.info("%s: VNet %s forgotten: %s", self.name, rec.id, why)

    def _sweep(self) -> bool:
        """Delete the VNets the VNP holds for this VNO that no record knows (by id
        or key). The VNP's list is read before the store: a VNet is recorded
        before the VNP is asked for it, so a listed VNet of a live request always
        finds its record. True once the VNP answered and every deletion went."""
        try:
            reply = self.vnp_short.get("/v1/vnets")
            listed = m.vnet_list_from(m.parse_reply(reply.body, "vnet-list"))
        except (ClientError, ValueError) as exc:
            log.info("%s: cannot list the VNP's VNets yet: %s", self.name, exc)
            return False
        known: set[str] = set()
        for rec in self.store.all():
            known.update(str(v) for v in (rec.data.get("key"), rec.data.get("vnp_id")) if v)
        done = True
        for view in listed:
            if view.id in known or view.name in known:
                continue
            log.warning("%s: the VNP holds VNet %s that this VNO does not know: deleting it",
                        self.name, view.id)
            try:
                self.vnp.delete(f"/v1/vnets/{view.id}")
            except RemoteError as exc:
                if exc.status != 404:
                    done = False
            except ClientError:
                done = False
        return done
