"""The PIP's management node: Interfaces 2, 3 and 4 on one lab substrate.

Slivers are the PIP's unit of sale (GENI AM v3 terms): Allocate reserves
capacity until an expiry, Provision deploys the part with the collection's
playbook (rolled back on failure), PerformOperationalAction `start` joins the
boundary links with their peers (Interface 4) and `exec` runs a command in a
node, Delete removes everything. A sliver is named by its customer (the VNP)
and known inside the PIP by a hash of (customer, name), which also names its
namespaces, so two customers never collide and names leak nothing.
"""

from __future__ import annotations

import logging
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vnetlib import naming
from vnetlib.deploy.ansible import DEPLOY_PLAYBOOK, DeployError, run_playbook
from vnetlib.lab import manage
from vnetlib.placement import EmbeddingRejected, embed_on_substrate, residual_substrate
from vnetlib.plan.build import PlanError, build_plan, crossing_links
from vnetlib.players import messages as m
from vnetlib.players.aggregate import add_aggregate_routes
from vnetlib.players.client import ClientError, PlayerClient
from vnetlib.players.config import PlayerConfig
from vnetlib.players.negotiation import advertise, decide_quote, price_of
from vnetlib.players.pki import Credentials, Identity
from vnetlib.players.server import (
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    Service,
    Unavailable,
    UpstreamFailed,
)
from vnetlib.players.stitching import StitchFailed, initiate, respond
from vnetlib.players.stores import PlayerStore, Record
from vnetlib.spec import dump_vnet, parse_vnet
from vnetlib.spec.model import Substrate, VNetSpec

log = logging.getLogger(__name__)

EXEC_TIMEOUT = 10.0
EXEC_TIMEOUT_MAX = 60.0
EXEC_OUTPUT_MAX = 64 << 10
STITCH_TIMEOUT = 120.0
Deploy = Callable[[dict[str, Any], str], None]
"""Apply a plan (``DeploymentPlan.to_dict()``) with state present or absent."""


def ansible_deployer(lab: str) -> Deploy:
    def deploy(plan: dict[str, Any], state: str) -> None:
        run_playbook(DEPLOY_PLAYBOOK, manage.inventory_path(lab),
                     {"vnet_plan": plan, "vnet_state": state}, limit=sorted(plan["hosts"]))
    return deploy


@dataclass(slots=True)
class Faults:
    """Fault injection for tests ([faults] in the configuration)."""

    fail_at: str = ""
    stall_at: str = ""
    stall_seconds: float = 30.0

    def check(self, point: str, closing: threading.Event) -> None:
        if self.stall_at == point:
            closing.wait(self.stall_seconds)
            raise Unavailable(f"injected stall at {point}")
        if self.fail_at == point:
            raise Unavailable(f"injected failure at {point}")


def _public(exc: EmbeddingRejected) -> str:
    """Why a part does not fit, without host names or topology (information hiding)."""
    return f"{exc.rejection.request_id}: not enough {exc.rejection.resource} on this substrate"


def _failed(what: str, exc: Exception) -> str:
    """A deployment failure for the customer: logged here in full (hosts, tasks),
    told without substrate details, with a reference to the log."""
    ref = secrets.token_hex(4)
    log.error("%s failed (ref %s): %s", what, ref, exc)
    return f"{what} failed on the substrate (ref {ref} in the PIP's log)"


class PipService(Service):
    """The PIP's API. `deploy` is the side effect on the substrate (Ansible by default)."""

    def __init__(self, config: PlayerConfig, credentials: Credentials, *,
                 deploy: Deploy | None = None) -> None:
        super().__init__(config.name)
        self.config = config
        self.credentials = credentials
        self.lab = config.pip.substrate
        self.store = PlayerStore(config.store, config.name)
        self.deploy = deploy or ansible_deployer(self.lab)
        self.faults = Faults(config.faults.fail_at, config.faults.stall_at,
                             config.faults.stall_seconds)
        self.closing = threading.Event()
        self._lock = threading.RLock()
        self.add_route("GET", "/v1/version", self.version)
        add_aggregate_routes(
            self, advertisement=self.advertisement, quote=self.quote,
            list_slivers=self.list_slivers, allocate=self.allocate, describe=self.describe,
            provision=self.provision, renew=self.renew, action=self.action,
            delete=self.delete, stitch=self.stitch)

    def close(self) -> None:
        self.closing.set()
        self.store.close()

    # -- state ----------------------------------------------------------------------

    def substrate(self) -> Substrate:
        return manage.load_substrate(self.lab)

    def _expire(self) -> None:
        """Forget reservations whose time is up (nothing is deployed for them)."""
        now = time.time()
        for rec in self.store.all():
            if rec.data["status"] == "allocated" and rec.data["expires"] <= now:
                log.info("%s: reservation %s/%s expired", self.name, rec.owner, rec.name)
                self.store.remove(rec.id)

    def _residual(self) -> Substrate:
        self._expire()
        existing = [(parse_vnet(r.data["spec"].encode()), r.data["embedding"])
                    for r in self.store.all()]
        return residual_substrate(self.substrate(), existing)

    def _sliver(self, caller: Identity, name: str) -> Record:
        rec = self.store.find(caller.name, name)
        if rec is None:
            raise NotFound(f"no sliver {name}")
        if rec.data["status"] == "allocated" and rec.data["expires"] <= time.time():
            self.store.remove(rec.id)
            raise Gone(f"the reservation of sliver {name} expired")
        return rec

    def _manifest(self, rec: Record) -> m.Manifest:
        d = rec.data
        spec = parse_vnet(d["spec"].encode())
        stitched = d.get("stitches", {})
        return m.Manifest(
            id=rec.name, status=d["status"], price=d["price"],
            nodes=tuple(n.id for n in spec.nodes),
            boundary=tuple(m.BoundaryState(b.peer_ref, b.id, b.peer_ref in stitched,
                                           stitched.get(b.peer_ref, {}).get("vni"))
                           for b in spec.boundary),
            expires=d["expires"] if d["status"] == "allocated" else None)

    def _plan(self, rec: Record) -> dict[str, Any]:
        d = rec.data
        spec = parse_vnet(d["spec"].encode())
        boundary = {s["link"]: (s["remote"], s["vni"]) for s in d.get("stitches", {}).values()}
        plan = build_plan(spec, d["embedding"]["node_map"], self.substrate(), vnet_id=rec.id,
                          lab=self.lab, vnis=self.store.vnis_of(rec.id), boundary=boundary)
        return plan.to_dict()

    # -- handlers -------------------------------------------------------------------

    def version(self, caller: Identity, params: Mapping[str, str],
                body: bytes) -> tuple[int, bytes]:
        return 200, m.version_xml(self.name, "pip")

    def advertisement(self, caller: Identity, params: Mapping[str, str],
                      body: bytes) -> tuple[int, bytes]:
        ad = advertise(self.name, self._residual(), self.config.pip.price_per_cpu,
                       self.config.pip.price_per_mbps)
        return 200, m.advertisement_xml(ad)

    def _embed(self, spec: VNetSpec, sliver_id: str) -> dict[str, Any]:
        substrate = self._residual()
        return embed_on_substrate(substrate, spec, sliver_id)

    def quote(self, caller: Identity, params: Mapping[str, str],
              body: bytes) -> tuple[int, bytes]:
        req = m.quote_request_from(m.read(body, "quote-request"))
        self.faults.check("quote", self.closing)
        try:
            self._embed(req.spec, "quote")
        except EmbeddingRejected as exc:
            return 200, m.quote_xml(m.Quote("declined", reason=_public(exc)))
        price = price_of(req.spec, self.config.pip.price_per_cpu, self.config.pip.price_per_mbps)
        return 200, m.quote_xml(decide_quote(price, req.bid))

    def list_slivers(self, caller: Identity, params: Mapping[str, str],
                     body: bytes) -> tuple[int, bytes]:
        self._expire()
        return 200, m.slivers_xml([self._manifest(r) for r in self.store.all(caller.name)])

    def allocate(self, caller: Identity, params: Mapping[str, str],
                 body: bytes) -> tuple[int, bytes]:
        name = params["name"]
        req = m.allocate_from(m.read(body, "allocate"))
        self.faults.check("allocate", self.closing)
        sliver_id = f"s{naming.short_hash(caller.name, name)}"
        price = price_of(req.spec, self.config.pip.price_per_cpu, self.config.pip.price_per_mbps)
        if req.price is not None and price > req.price + 1e-9:
            raise Conflict(f"the price is {price:g}, not {req.price:g}: ask for a new quote")
        seconds = min(req.expires_in or self.config.pip.reservation_seconds,
                      self.config.pip.reservation_seconds)
        with self._lock:
            if self.store.find(caller.name, name) is not None:
                raise Conflict(f"sliver {name} exists")
            try:
                embedding = self._embed(req.spec, sliver_id)
            except EmbeddingRejected as exc:
                raise Conflict(f"cannot allocate: {_public(exc)}") from exc
            rec = Record(sliver_id, caller.name, name, time.time(), {
                "status": "allocated", "spec": dump_vnet(req.spec).decode(),
                "embedding": embedding, "price": price, "expires": time.time() + seconds,
                "peers": {}, "stitches": {}, "deployed": False})
            self.store.insert(rec)
        log.info("%s: allocated %s for %s until +%gs", self.name, name, caller, seconds)
        return 201, m.manifest_xml(self._manifest(rec))

    def describe(self, caller: Identity, params: Mapping[str, str],
                 body: bytes) -> tuple[int, bytes]:
        return 200, m.manifest_xml(self._manifest(self._sliver(caller, params["name"])))

    def renew(self, caller: Identity, params: Mapping[str, str],
              body: bytes) -> tuple[int, bytes]:
        seconds = m.renew_from(m.read(body, "renew"))
        rec = self._sliver(caller, params["name"])
        if rec.data["status"] == "allocated":
            rec.data["expires"] = time.time() + min(seconds, self.config.pip.reservation_seconds)
            self.store.save(rec.id, rec.data)
        return 200, m.manifest_xml(self._manifest(rec))

    def provision(self, caller: Identity, params: Mapping[str, str],
                  body: bytes) -> tuple[int, bytes]:
        req = m.provision_from(m.read(body, "provision"))
        rec = self._sliver(caller, params["name"])
        self.faults.check("provision", self.closing)
        if rec.data["status"] != "allocated":
            return 200, m.manifest_xml(self._manifest(rec))
        spec = parse_vnet(rec.data["spec"].encode())
        refs = {b.peer_ref for b in spec.boundary}
        peers = {p.ref: {"name": p.name, "url": p.url, "role": p.role} for p in req.peers}
        if missing := sorted(refs - set(peers)):
            raise Conflict(f"boundary links without a peer: {', '.join(missing)}")
        rec.data["peers"] = peers
        rec.data["status"] = "provisioned"
        rec.data["expires"] = None
        self.store.save(rec.id, rec.data)
        self.store.allocate_vnis(rec.id, crossing_links(spec, rec.data["embedding"]["node_map"]))
        try:
            plan = self._plan(rec)
        except PlanError as exc:
            rec.data["status"] = "failed"
            self.store.save(rec.id, rec.data)
            raise UpstreamFailed(_failed(f"planning of sliver {rec.name}", exc)) from exc
        # Recorded before deploying: whatever happens during the run (a crash, an
        # unexpected error), Delete removes what may be on the hosts.
        rec.data["deployed"] = True
        self.store.save(rec.id, rec.data)
        try:
            self.deploy(plan, "present")
        except Exception as exc:
            self._undeploy(plan)
            rec.data["status"] = "failed"
            self.store.save(rec.id, rec.data)
            raise UpstreamFailed(_failed(f"deployment of sliver {rec.name}", exc)) from exc
        if not refs:
            rec.data["status"] = "ready"
        self.store.save(rec.id, rec.data)
        return 200, m.manifest_xml(self._manifest(rec))

    def _undeploy(self, plan: dict[str, Any]) -> None:
        try:
            self.deploy(plan, "absent")
        except DeployError as exc:
            log.error("%s: removal of %s incomplete: %s", self.name, plan["vnet"], exc)

    def delete(self, caller: Identity, params: Mapping[str, str],
               body: bytes) -> tuple[int, bytes]:
        rec = self.store.find(caller.name, params["name"])
        if rec is None:
            raise NotFound(f"no sliver {params['name']}")
        if rec.data.get("deployed") or rec.data["status"] == "failed":
            plan = self._plan(rec)
            try:
                self.deploy(plan, "absent")
            except DeployError as exc:
                raise UpstreamFailed(_failed(f"removal of sliver {rec.name}", exc)) from exc
        self.store.remove(rec.id)
        log.info("%s: deleted sliver %s of %s", self.name, rec.name, caller)
        return 204, b""

    # -- operational actions ------------------------------------------------------

    def action(self, caller: Identity, params: Mapping[str, str],
               body: bytes) -> tuple[int, bytes]:
        act = m.action_from(m.read(body, "action"))
        rec = self._sliver(caller, params["name"])
        if rec.data["status"] not in ("provisioned", "ready"):
            raise Conflict(f"sliver {rec.name} is {rec.data['status']}: provision it first")
        if act.name == "exec":
            return 200, m.action_result_xml(self._exec(rec, act))
        self._start(rec)
        return 200, m.action_result_xml(m.ActionResult("start", 0))

    def _exec(self, rec: Record, act: m.Action) -> m.ActionResult:
        spec = parse_vnet(rec.data["spec"].encode())
        if act.node is None or act.node not in {n.id for n in spec.nodes}:
            raise NotFound(f"sliver {rec.name} has no node {act.node}")
        if not act.argv:
            raise Conflict("exec needs a command")
        timeout = min(act.timeout or EXEC_TIMEOUT, EXEC_TIMEOUT_MAX)
        argv = exec_argv(naming.vnode_netns(self.lab, rec.id, act.node), act.argv)
        try:
            done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"")[:EXEC_OUTPUT_MAX].decode("utf-8", "replace")
            return m.ActionResult("exec", 124, out, f"timed out after {timeout:g}s")
        return m.ActionResult("exec", done.returncode,
                              done.stdout[:EXEC_OUTPUT_MAX].decode("utf-8", "replace"),
                              done.stderr[:EXEC_OUTPUT_MAX].decode("utf-8", "replace"))

    def _endpoint(self, rec: Record, ref: str, role: m.StitchRole) -> tuple[str, m.StitchEndpoint]:
        spec = parse_vnet(rec.data["spec"].encode())
        link = next(b for b in spec.boundary if b.peer_ref == ref)
        host = rec.data["embedding"]["node_map"][link.endpoint.node]
        address = self.substrate().host(host).data_address or ""
        return link.id, m.StitchEndpoint(role, address.split("/")[0])

    def _start(self, rec: Record) -> None:
        """Stitch every boundary link this side initiates, then deploy their local
        segments in one run (the responders deployed theirs before accepting)."""
        agreed: list[tuple[str, str, int, str]] = []
        for ref, peer in sorted(rec.data["peers"].items()):
            if peer["role"] != "initiator" or ref in rec.data["stitches"]:
                continue
            link, local = self._endpoint(rec, ref, "initiator")
            client = PlayerClient(peer["url"], self.credentials, STITCH_TIMEOUT,
                                  expect_name=peer["name"])

            def send(proposal: m.Stitch, client: PlayerClient = client) -> m.Stitch:
                reply = client.post("/v1/stitch", m.stitch_xml(proposal))
                return m.stitch_from(m.parse_reply(reply.body, "stitch"))

            def claim(vni: int, link: str = link) -> bool:
                return self.store.claim_vni(rec.id, link, vni)

            def fresh(avoid: set[int], link: str = link) -> int:
                return self.store.allocate_vnis(rec.id, [link], avoid)[link]

            try:
                done = initiate(ref, local, send, claim, fresh, self.store.release_vni)
            except (ClientError, StitchFailed, ValueError) as exc:
                self._join(rec, agreed)  # keep what was agreed, so Delete removes it
                raise UpstreamFailed(f"stitching link {link} with {peer['name']}: {exc}") from exc
            agreed.append((ref, link, done.vni, done.remote.address))
        try:
            self._join(rec, agreed)
        except (DeployError, PlanError) as exc:
            raise UpstreamFailed(_failed("deployment of the stitched links", exc)) from exc

    def _join(self, rec: Record, stitches: list[tuple[str, str, int, str]]) -> None:
        """Record stitched links (ref, link, VNI, remote address), deploy their
        local segments on the hosts that hold them, then mark them joined.

        Recorded before deploying, so that Delete removes a segment whose
        deployment failed half-way; joined (and the sliver ready) only after
        the deployment succeeded, so a repeated proposal deploys again."""
        self._record_stitches(rec, stitches, joined=False)
        if not stitches:
            return
        data = rec.data
        nodes = {b.id: b.endpoint.node for b in parse_vnet(data["spec"].encode()).boundary}
        hosts = {data["embedding"]["node_map"][nodes[link]] for _, link, _, _ in stitches}
        plan = self._plan(rec)
        plan["hosts"] = {h: p for h, p in plan["hosts"].items() if h in hosts}
        self.deploy(plan, "present")
        self._record_stitches(rec, stitches, joined=True)

    def _record_stitches(
        self, rec: Record, stitches: list[tuple[str, str, int, str]], *, joined: bool
    ) -> None:
        with self._lock:
            fresh = self.store.get(rec.id)
            data = (fresh or rec).data
            for ref, link, vni, remote in stitches:
                data["stitches"][ref] = {"link": link, "vni": vni, "remote": remote,
                                         "joined": joined}
            all_joined = all(s.get("joined", True) for s in data["stitches"].values())
            if len(data["stitches"]) == len(data["peers"]) and all_joined:
                data["status"] = "ready"
            self.store.save(rec.id, data)
            rec.data.update(data)

    def stitch(self, caller: Identity, params: Mapping[str, str],
               body: bytes) -> tuple[int, bytes]:
        """Answer a proposal from the peer the VNP named for this link."""
        proposal = m.stitch_from(m.read(body, "stitch"))
        if proposal.state != "propose":
            raise Conflict(f"expected a proposal, got {proposal.state}")
        rec = next((r for r in self.store.all() if proposal.ref in r.data.get("peers", {})), None)
        if rec is None:
            raise NotFound(f"no link {proposal.ref}")
        peer = rec.data["peers"][proposal.ref]
        if peer["name"] != caller.name:
            raise Forbidden(f"{caller} is not the peer of link {proposal.ref}")
        if peer["role"] != "responder":
            raise Conflict(f"link {proposal.ref} is initiated from this side")
        link, local = self._endpoint(rec, proposal.ref, "responder")
        done = rec.data["stitches"].get(proposal.ref)
        if done is not None and done["vni"] == proposal.vni:
            if not done.get("joined", True):  # agreed before, but its deployment failed
                initiator = proposal.endpoint("initiator")
                assert initiator is not None
                try:
                    self._join(rec, [(proposal.ref, link, proposal.vni, initiator.address)])
                except (DeployError, PlanError) as exc:
                    raise UpstreamFailed(_failed(f"deployment of link {link}", exc)) from exc
            return 200, m.stitch_xml(respond(proposal, True, proposal.vni, local))
        free = self.store.claim_vni(rec.id, link, proposal.vni)
        alternative = proposal.vni
        if not free:
            alternative = self.store.allocate_vnis("counter", [link],
                                                   {proposal.vni})[link]
            self.store.release_vni(alternative)  # an offer, not a reservation
        answer = respond(proposal, free, alternative, local)
        if answer.state == "accept":
            initiator = proposal.endpoint("initiator")
            assert initiator is not None
            try:
                self._join(rec, [(proposal.ref, link, proposal.vni, initiator.address)])
            except (DeployError, PlanError) as exc:
                raise UpstreamFailed(_failed(f"deployment of link {link}", exc)) from exc
        return 200, m.stitch_xml(answer)


# The nobody user of Debian; the command keeps the node's network namespace.
UNPRIVILEGED = "65534"


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """The command line of an out-of-VNet `exec` in a virtual node.

    A netns node shares the PIP's file system and process table, so the
    customer's command runs as an unprivileged user, without capabilities and
    unable to gain any (no_new_privs: set-uid and file capabilities are
    ignored): it sees the node's network, not the PIP's files, keys or hosts.
    Unprivileged ICMP sockets are allowed in the node so that ping works.
    """
    return [
        "ip", "netns", "exec", netns, "sh", "-c",
        'sysctl -qw net.ipv4.ping_group_range="0 2147483647" && exec "$@"', "sh",
        "setpriv", f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}", "--clear-groups",
        "--no-new-privs", "--inh-caps=-all", "--", *argv,
    ]
