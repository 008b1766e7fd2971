"""The PIP's management node: Interfaces 2, 3 and 4 over the PIP core.

The service is the HTTP face of `vnetlib.core.pip.PipCore`: it parses and
writes the API's documents, maps the core's errors to statuses, and keeps
information hiding (refusals never name a host). The substrate comes from the
RDL file and the Ansible inventory its configuration names. A background
reaper expires reservations and finishes operations of a crashed process;
customers' requests never expire anything.

Slivers are named by their customer (the VNP) and known inside the PIP by a
hash of (customer, name), which also names their namespaces, so two
customers never collide and names leak nothing.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, cast

from vnetlib import naming, paths
from vnetlib.core.deployer import AnsibleDeployer, Deployer
from vnetlib.core.ledger import Ledger, pick_vnis, vni_in_range
from vnetlib.core.pip import (
    Busy,
    CoreError,
    DeployFailed,
    MoveFailed,
    PipCore,
    Pricing,
    Rejected,
    spec_of,
)
from vnetlib.core.pool import PoolSettings
from vnetlib.core.records import Peer, Sliver, State, Stitch
from vnetlib.deploy.ansible import DeployError, Progress, check_installed
from vnetlib.geni.am import mount as mount_geni
from vnetlib.hosts import Hosts
from vnetlib.players import cgroups, faultpoints, timeouts
from vnetlib.players import messages as m
from vnetlib.players.advertised import Advertiser
from vnetlib.players.aggregate import add_aggregate_routes
from vnetlib.players.client import ClientError, PlayerClient
from vnetlib.players.config import Faults, PlayerConfig
from vnetlib.players.confine import Confinement, ConfinementError, Limits
from vnetlib.players.negotiation import decide_quote
from vnetlib.players.pki import Credentials, Identity, Role
from vnetlib.players.server import (
    ApiError,
    Conflict,
    Forbidden,
    Gone,
    NotFound,
    Service,
    UpstreamFailed,
)
from vnetlib.players.stitch_jobs import StillRunning, StitchJobs
from vnetlib.players.stitching import (
    Agreement,
    StitchFailed,
    carriers,
    endpoint,
    initiate,
    respond,
)
from vnetlib.spec import load_substrate
from vnetlib.spec.model import NodeKind
from vnetlib.vm import remote, serial

log = logging.getLogger(__name__)

REAP_INTERVAL = 1.0


def _failed(what: str, exc: Exception) -> str:
    """A deployment failure for the customer: logged here in full (hosts, tasks),
    told without substrate details, with a reference to the log."""
    ref = secrets.token_hex(4)
    log.error("%s failed (ref %s): %s", what, ref, exc)
    return f"{what} failed on the substrate (ref {ref} in the PIP's log)"


def _api_error(exc: CoreError, what: str) -> ApiError:
    """The core's refusal as the API answers it, without substrate details."""
    if isinstance(exc, Rejected):
        return Conflict(f"cannot allocate: {exc.public}")
    if isinstance(exc, DeployFailed):
        return UpstreamFailed(_failed(what, exc))
    if exc.kind == "not-found":
        return NotFound(str(exc))
    if exc.kind == "gone":
        return Gone(str(exc))
    return Conflict(str(exc))


def build_core(config: PlayerConfig, deployer: Deployer | None = None) -> PipCore:
    """The PIP core of a configuration: its substrate file, inventory and ledger."""
    substrate = load_substrate(Path(config.pip.substrate))
    if deployer is None:
        check_installed()  # a PIP that cannot deploy says so at start, not at Provision
    return PipCore(
        substrate, Ledger(config.store, substrate.name),
        deployer or AnsibleDeployer(Path(config.pip.inventory)),
        Pricing(config.pip.price_per_cpu, config.pip.price_per_mbps,
                config.pip.reservation_seconds),
        pool_settings=pool_settings(config))


def pool_settings(config: PlayerConfig) -> PoolSettings | None:
    """The PIP's pool of booted VMs: its [pip] pool_size, else $VNET_POOL_SIZE."""
    c = config.pip
    if c.pool_size:
        return PoolSettings.parse(c.pool_size, c.pool_vcpus, c.pool_memory_mb, c.pool_nics)
    return PoolSettings.from_env()


@dataclass(slots=True)
class FaultyDeployer:
    """A deployer with the PIP's fault points once a plan was applied and before
    the core records the result: `pip-during-deploy` after "present",
    `pip-during-remove` after "absent" (crash tests kill the PIP there)."""

    inner: Deployer
    faults: Faults
    closing: threading.Event
    who: str

    def apply(self, plan: Mapping[str, Any], state: str, *, check: bool = False,
              progress: Progress | None = None) -> None:
        self.inner.apply(plan, state, check=check, progress=progress)
        if not check:
            point = "pip-during-deploy" if state == "present" else "pip-during-remove"
            faultpoints.check(self.faults, point, self.closing, self.who)


class PipService(Service):
    """The PIP's API; `deployer` is the side effect on the substrate (Ansible by default)."""

    def __init__(self, config: PlayerConfig, credentials: Credentials, *,
                 deployer: Deployer | None = None, reaper: bool = True) -> None:
        super().__init__(config.name)
        self.config = config
        self.credentials = credentials
        self.core = build_core(config, deployer)
        self.advertiser = Advertiser(self.name)  # kept by deltas, not recomputed per request
        self.confinement = Confinement(
            paths.vnet_home() / "confine" / config.name,
            Limits(output_bytes=EXEC_OUTPUT_MAX, timeout=timeouts.EXEC_MAX),
            cgroup_parent=cgroups.service_parent(config.name),
            hosts=Hosts(Path(config.pip.inventory)))
        self.stitch_jobs = StitchJobs(config.name)
        self.core.on_removed = self._removed
        self.closing = threading.Event()
        if config.faults != Faults():
            self.core.deployer = FaultyDeployer(self.core.deployer, config.faults,
                                                self.closing, self.name)
        self._reaper: threading.Thread | None = None
        self.add_route("GET", "/v1/version", self.version)
        add_aggregate_routes(
            self, advertisement=self.advertisement, quote=self.quote,
            list_slivers=self.list_slivers, allocate=self.allocate, describe=self.describe,
            provision=self.provision, renew=self.renew, action=self.action,
            delete=self.delete, stitch=self.stitch)
        # Moves (issue #13): the VNP moves its own nodes, within this PIP or away.
        self.add_route("POST", "/v1/slivers/{name}/move", self.move, roles={Role.VNP})
        self.add_route("POST", "/v1/slivers/{name}/reshape", self.reshape, roles={Role.VNP})
        self.geni = mount_geni(self, sp_access=config.pip.geni_sp_access)
        if reaper:
            self.reap()  # a restart first finishes what a crash left
            self._forget_tenants()
            self._reaper = threading.Thread(target=self._reap_loop, daemon=True,
                                            name=f"reaper-{config.name}")
            self._reaper.start()

    def close(self) -> None:
        self.closing.set()
        if self._reaper is not None:
            self._reaper.join(timeouts.SLIVER_WAIT)
        self.stitch_jobs.close(timeouts.SLIVER_WAIT)
        self.confinement.close()
        self.core.ledger.close()

    def _removed(self, s: Sliver) -> None:
        self.stitch_jobs.forget(s.id)
        self.confinement.remove(s.id)

    def _forget_tenants(self) -> None:
        """Remove the confined processes of VNets this PIP no longer has."""
        live = {s.id for s in self.core.ledger.slivers()}
        for tenant in self.confinement.tenants():
            if tenant not in live:
                try:
                    self.confinement.remove(tenant)
                except (OSError, RuntimeError) as exc:
                    log.warning("%s: leftover confinement of %s not removed: %s",
                                self.name, tenant, exc)

    def reap(self) -> list[str]:
        try:
            done = self.core.reap()
        except Exception:
            log.exception("%s: reaper round failed", self.name)
            return []
        for line in done:
            log.info("%s: reaper: %s", self.name, line)
        return done

    def _reap_loop(self) -> None:
        while not self.closing.wait(REAP_INTERVAL):
            self.reap()

    # -- documents ------------------------------------------------------------------

    def _manifest(self, s: Sliver) -> m.Manifest:
        spec = spec_of(s.spec_xml)
        status = cast(m.SliverStatus, s.state.value)
        return m.Manifest(
            id=s.name, status=status, price=s.price,
            nodes=tuple(n.id for n in spec.nodes),
            boundary=tuple(m.BoundaryState(b.peer_ref, b.id, st is not None and st.joined,
                                           None if st is None else st.vni)
                           for b in spec.boundary for st in [s.stitch(b.peer_ref)]),
            expires=s.expires if s.state is State.ALLOCATED else None)

    def _sliver(self, caller: Identity, name: str) -> Sliver:
        try:
            return self.core.sliver(caller.name, name)
        except CoreError as exc:
            raise _api_error(exc, name) from exc

    # -- handlers -------------------------------------------------------------------

    def version(self, caller: Identity, params: Mapping[str, str],
                body: bytes) -> tuple[int, bytes]:
        return 200, m.version_xml(self.name, "pip")

    def advertisement(self, caller: Identity, params: Mapping[str, str],
                      body: bytes) -> tuple[int, bytes]:
        return 200, self.advertiser.document(self.core)

    def quote(self, caller: Identity, params: Mapping[str, str],
              body: bytes) -> tuple[int, bytes]:
        req = m.quote_request_from(m.read(body, "quote-request"))
        faultpoints.check(self.config.faults, "quote", self.closing, self.name)
        try:
            self.core.check_fits(req.spec)
        except Rejected as exc:
            return 200, m.quote_xml(m.Quote("declined", reason=exc.public))
        return 200, m.quote_xml(decide_quote(self.core.price(req.spec), req.bid))

    def list_slivers(self, caller: Identity, params: Mapping[str, str],
                     body: bytes) -> tuple[int, bytes]:
        return 200, m.slivers_xml([self._manifest(s) for s in self.core.slivers(caller.name)])

    def allocate(self, caller: Identity, params: Mapping[str, str],
                 body: bytes) -> tuple[int, bytes]:
        name = params["name"]
        req = m.allocate_from(m.read(body, "allocate"))
        faultpoints.check(self.config.faults, "allocate", self.closing, self.name)
        try:
            s = self.core.allocate(caller.name, name, req.spec, expires_in=req.expires_in,
                                   price_limit=req.price, callback=req.callback or "")
        except CoreError as exc:
            raise _api_error(exc, name) from exc
        log.info("%s: allocated %s for %s until %s", self.name, name, caller, s.expires)
        return 201, m.manifest_xml(self._manifest(s))

    def describe(self, caller: Identity, params: Mapping[str, str],
                 body: bytes) -> tuple[int, bytes]:
        return 200, m.manifest_xml(self._manifest(self._sliver(caller, params["name"])))

    def renew(self, caller: Identity, params: Mapping[str, str],
              body: bytes) -> tuple[int, bytes]:
        seconds = m.renew_from(m.read(body, "renew"))
        try:
            s = self.core.renew(caller.name, params["name"], seconds)
        except CoreError as exc:
            raise _api_error(exc, params["name"]) from exc
        return 200, m.manifest_xml(self._manifest(s))

    def provision(self, caller: Identity, params: Mapping[str, str],
                  body: bytes) -> tuple[int, bytes]:
        req = m.provision_from(m.read(body, "provision"))
        self._sliver(caller, params["name"])
        faultpoints.check(self.config.faults, "provision", self.closing, self.name)
        peers = [Peer(p.ref, p.name, p.url, p.role) for p in req.peers]
        try:
            s = self.core.provision(caller.name, params["name"], peers,
                                    callback=req.callback)
        except CoreError as exc:
            raise _api_error(exc, f"deployment of sliver {params['name']}") from exc
        return 200, m.manifest_xml(self._manifest(s))

    def delete(self, caller: Identity, params: Mapping[str, str],
               body: bytes) -> tuple[int, bytes]:
        try:
            self.core.delete(caller.name, params["name"])
        except CoreError as exc:
            raise _api_error(exc, f"removal of sliver {params['name']}") from exc
        log.info("%s: deleted sliver %s of %s", self.name, params["name"], caller)
        return 204, b""

    # -- moves (issue #13) --------------------------------------------------------

    def move(self, caller: Identity, params: Mapping[str, str],
             body: bytes) -> tuple[int, bytes]:
        """Move one node of the caller's sliver to another host here (at a
        location, if given): 409 `cannot-move` when no host here can take it
        (the VNP then looks at other providers). The answer names no host."""
        req = m.move_from(m.read(body, "move"))
        name = params["name"]
        try:
            done = self.core.move_to(caller.name, name, req.node, req.location)
        except MoveFailed as exc:
            raise UpstreamFailed(_failed(f"move of node {req.node}", exc)) from exc
        except CoreError as exc:
            raise _api_error(exc, f"move of node {req.node}") from exc
        log.info("%s: moved %s of %s for %s", self.name, req.node, name, caller)
        return 200, m.manifest_xml(self._manifest(done.sliver))

    def reshape(self, caller: Identity, params: Mapping[str, str],
                body: bytes) -> tuple[int, bytes]:
        """A deployed sliver's new partial description (a node of the caller's
        VNet moved to or away from this PIP); its changed boundary links are
        stitched by the next `start`."""
        req = m.reshape_from(m.read(body, "reshape"))
        name = params["name"]
        had = {n.id for n in spec_of(self._sliver(caller, name).spec_xml).nodes}
        wants = {n.id for n in req.spec.nodes}
        if had - wants:  # a source giving a node up fails here (tests)
            faultpoints.check(self.config.faults, "reshape-before", self.closing, self.name)
        peers = [Peer(p.ref, p.name, p.url, p.role) for p in req.peers]
        try:
            s = self.core.reshape(caller.name, name, req.spec, peers)
        except CoreError as exc:
            raise _api_error(exc, f"reshape of sliver {name}") from exc
        if wants - had:  # a target that took a node declines after all (tests)
            faultpoints.check(self.config.faults, "reshape-after", self.closing, self.name)
        log.info("%s: reshaped %s for %s", self.name, name, caller)
        return 200, m.manifest_xml(self._manifest(s))

    # -- operational actions ------------------------------------------------------

    def action(self, caller: Identity, params: Mapping[str, str],
               body: bytes) -> tuple[int, bytes]:
        act = m.action_from(m.read(body, "action"))
        s = self._sliver(caller, params["name"])
        if s.state not in (State.PROVISIONED, State.READY):
            raise Conflict(f"sliver {s.name} is {s.state.value}: provision it first")
        if act.name == "exec":
            return 200, m.action_result_xml(self._exec(s, act))
        if act.node is not None:
            return 200, m.action_result_xml(self._control(caller, s, act.node, act.name))
        if act.name != "start":
            raise Conflict(f"{act.name} acts on a node: name one")
        self._start(s)
        return 200, m.action_result_xml(m.ActionResult("start", 0))

    def _control(self, caller: Identity, s: Sliver, node: str, action: str) -> m.ActionResult:
        try:
            done = self.core.control(caller.name, s.name, node, action)
        except Busy as exc:
            raise Conflict(str(exc)) from exc
        except CoreError as exc:
            raise _api_error(exc, f"{action} of node {node}") from exc
        except DeployError as exc:
            raise UpstreamFailed(_failed(f"{action} of node {node}", exc)) from exc
        return m.ActionResult(action, 0, f"{node}: {done.node_state(node)}\n")

    def _exec(self, s: Sliver, act: m.Action) -> m.ActionResult:
        spec = spec_of(s.spec_xml)
        if act.node is None or act.node not in {n.id for n in spec.nodes}:
            raise NotFound(f"sliver {s.name} has no node {act.node}")
        if not act.argv:
            raise Conflict("exec needs a command")
        timeout = min(act.timeout or timeouts.EXEC_DEFAULT, timeouts.EXEC_MAX)
        netns = naming.vnode_netns(self.core.name, s.id, act.node)
        if next(n for n in spec.nodes if n.id == act.node).kind is not NodeKind.NETNS:
            # The VM is the customer's own machine: nothing to confine it from.
            try:  # on the VM's host, over SSH, when the inventory reaches it so
                rc, out = remote.run(self.confinement.hosts, s.embedding.node_map.get(act.node),
                                     s.domain(act.node), act.argv, timeout, EXEC_OUTPUT_MAX)
            except serial.SerialBusy as exc:
                raise Conflict(f"console in use: node {act.node}'s serial line is held") from exc
            except remote.HostUnreachable as exc:
                log.warning("exec on node %s of %s: %s", act.node, s.name, exc)
                raise Conflict(f"exec refused: node {act.node}'s host does not answer") from exc
            except serial.SerialError as exc:
                raise Conflict(f"exec refused: node {act.node} does not answer on its "
                               f"serial console (is it running?)") from exc
            return m.ActionResult("exec", rc, out, "")
        try:
            r = self.confinement.run(s.id, netns, act.argv, timeout=timeout,
                                     host=s.embedding.node_map.get(act.node))
        except ConfinementError as exc:
            raise Conflict(f"exec refused: {exc}") from exc
        why = f"\n[{r.killed_reason}]" if r.killed_reason else ""
        return m.ActionResult("exec", r.exit_code, r.stdout, r.stderr + why)

    def _endpoint(self, s: Sliver, ref: str, role: m.StitchRole) -> tuple[str, m.StitchEndpoint]:
        link = next(b for b in spec_of(s.spec_xml).boundary if b.peer_ref == ref)
        host = s.embedding.node_map[link.endpoint.node]
        address = self.core.substrate.host(host).data_address or ""
        return link.id, m.StitchEndpoint(role, address.split("/")[0])

    def _join(self, s: Sliver, stitches: Sequence[Stitch], what: str) -> Sliver:
        try:
            return self.core.join(s, stitches)
        except Busy as exc:
            raise Conflict(str(exc)) from exc
        except CoreError as exc:
            raise _api_error(exc, what) from exc
        except DeployError as exc:
            raise UpstreamFailed(_failed(what, exc)) from exc

    def _start(self, s: Sliver) -> None:
        """Stitch every boundary link this side initiates and deploy their local
        segments in one run, while the responders deploy theirs.

        One exchange per peer provider (`_stitch_pair`), the peers in parallel;
        then this side's run, and meanwhile one confirmation per peer provider
        (`_confirm`) that returns once the peer's run ended. Any failure, here
        or at a peer, fails the start (the VNP then deletes every part)."""
        faultpoints.check(self.config.faults, "pip-before-stitch", self.closing, self.name)
        pairs: dict[tuple[str, str], list[Peer]] = {}
        for peer in sorted(s.peers, key=lambda p: p.ref):
            done_before = s.stitch(peer.ref)
            if peer.role != "initiator" or (done_before is not None and done_before.joined):
                continue
            pairs.setdefault((peer.name, peer.url), []).append(peer)
        with ThreadPoolExecutor(max_workers=max(1, min(len(pairs), 16))) as pool:
            paired = list(pool.map(lambda peers: self._stitch_pair(s, peers), pairs.values()))
            confirmed = [pool.submit(self._confirm, p) for p in paired if p.confirm]
            here: ApiError | None = None
            try:
                self._join(s, [st for p in paired for st in p.agreed],
                           "deployment of the stitched links")
            except ApiError as exc:
                here = exc
            there = [f.result() for f in confirmed]
        failure = next((e for e in [*(p.failure for p in paired), here, *there]
                        if e is not None), None)
        if failure is not None:
            raise failure

    def _stitch_pair(self, s: Sliver, peers: list[Peer]) -> _Paired:
        """Stitch the links of `s` with one peer provider: one `<stitches>`
        exchange proposing a VNI for each, which the peer answers once it
        claimed them and started deploying its ends; a link whose proposal is
        not accepted as it is goes through the per-link exchange (`initiate`),
        which the peer answers after deploying. Returns the agreed links, the
        accepted proposals to confirm and the failure, if any, that stopped it."""
        name, url = peers[0].name, peers[0].url
        client = PlayerClient(url, self.credentials, timeouts.STITCH_CALL, expect_name=name)
        ledger = self.core.ledger
        ends = {p.ref: self._endpoint(s, p.ref, "initiator") for p in peers}
        proposed: dict[str, int] = {}
        agreed: list[Stitch] = []
        confirm: list[m.Stitch] = []
        offers = carriers(self.core.substrate.encapsulations)
        if not offers:
            return _Paired(name, client, (), (), UpstreamFailed(
                f"stitching with {name}: this provider offers no encapsulation that can "
                f"cross providers ({', '.join(self.core.substrate.encapsulations)})"))
        encap = offers[0]
        try:
            by_link = ledger.allocate_vnis(s.id, [ends[p.ref][0] for p in peers], set())
            proposed = {p.ref: by_link[ends[p.ref][0]] for p in peers}
            proposals = {p.ref: m.Stitch(p.ref, proposed[p.ref], "propose",
                                         (endpoint("initiator", ends[p.ref][1].address, encap),),
                                         encap) for p in peers}
            reply = client.post("/v1/stitch", m.stitches_xml(list(proposals.values())))
            answers = {a.ref: a for a in m.stitches_reply(reply.body)}
        except (ClientError, ValueError) as exc:
            for vni in proposed.values():
                ledger.release_vni(s.id, vni)
            return _Paired(name, client, (), (), UpstreamFailed(f"stitching with {name}: {exc}"))
        for p in peers:
            link, local = ends[p.ref]
            answer = answers.get(p.ref)
            remote = None if answer is None else answer.endpoint("responder")
            if (answer is not None and answer.state == "accept" and answer.encapsulation == encap
                    and answer.vni == proposed[p.ref] and remote is not None):
                agreed.append(Stitch(p.ref, link, answer.vni, remote.address,
                                     encapsulation=encap))
                confirm.append(proposals[p.ref])
                continue
            ledger.release_vni(s.id, proposed[p.ref])
            try:
                done = self._initiate(s, p, link, local, client, offers)
            except (ClientError, StitchFailed, ValueError) as exc:
                return _Paired(name, client, tuple(agreed), tuple(confirm), UpstreamFailed(
                    f"stitching link {link} with {name}: {exc}"))
            agreed.append(Stitch(p.ref, link, done.vni, done.remote.address,
                                 encapsulation=done.encapsulation))
        return _Paired(name, client, tuple(agreed), tuple(confirm), None)

    @staticmethod
    def _confirm(paired: _Paired) -> UpstreamFailed | None:
        """Repeat the proposals a peer accepted in a batch: its answer comes once
        its deployment of them ended, or is that deployment's failure."""
        try:
            reply = paired.client.post("/v1/stitch", m.stitches_xml(list(paired.confirm)))
            answers = {a.ref: a for a in m.stitches_reply(reply.body)}
        except (ClientError, ValueError) as exc:
            return UpstreamFailed(f"stitching with {paired.peer}: {exc}")
        for proposal in paired.confirm:
            answer = answers.get(proposal.ref)
            if answer is None or answer.state != "accept" or answer.vni != proposal.vni:
                got = "nothing" if answer is None else f"{answer.state} {answer.reason or ''}"
                return UpstreamFailed(f"stitching with {paired.peer}: link {proposal.ref} "
                                      f"not confirmed ({got.strip()})")
        return None

    def _initiate(self, s: Sliver, peer: Peer, link: str, local: m.StitchEndpoint,
                  client: PlayerClient, offers: Sequence[str]) -> Agreement:
        """The per-link exchange (counters of VNI or carrier, rejections) for one link."""

        def send(proposal: m.Stitch) -> m.Stitch:
            reply = client.post("/v1/stitch", m.stitch_xml(proposal))
            return m.stitch_from(m.parse_reply(reply.body, "stitch"))

        def claim(vni: int) -> bool:
            return self.core.ledger.claim_vni(s.id, link, vni)

        def fresh(avoid: set[int]) -> int:
            return self.core.ledger.allocate_vnis(s.id, [link], avoid)[link]

        def release(vni: int) -> None:
            self.core.ledger.release_vni(s.id, vni)

        return initiate(peer.ref, local, send, claim, fresh, release, offers)

    def stitch(self, caller: Identity, params: Mapping[str, str],
               body: bytes) -> tuple[int, bytes]:
        """Answer a proposal, or a `<stitches>` batch of them (every link with
        one peer provider), from the peer the VNP named for each link: only the
        slivers that name the caller as that link's peer are considered.

        A single proposal is answered once its link is deployed here. A batch's
        newly accepted links are deployed in one background run per sliver,
        started before the answers go back (`StitchJobs`); a repeated proposal
        (the initiator's confirmation, or a retry) is answered once its link's
        deployment here ended, with that deployment's failure if it failed."""
        proposals, batch = m.read_stitches(body)
        if not batch:
            answer, join, _ = self._answer(caller, proposals[0])
            if join is not None:
                self._join(join[0], [join[1]], f"deployment of link {join[1].link}")
            return 200, m.stitch_xml(answer)
        answers = []
        joins: dict[tuple[str, bool], tuple[Sliver, list[Stitch]]] = {}
        for proposal in proposals:
            answer, join, repeated = self._answer(caller, proposal)
            answers.append(answer)
            if join is not None and join[0].stitch(join[1].ref) != replace(join[1], joined=True):
                joins.setdefault((join[0].id, repeated), (join[0], []))[1].append(join[1])
        for (_, repeated), (s, stitches) in sorted(joins.items(), key=lambda kv: not kv[0][1]):
            what = "deployment of links " + ", ".join(st.link for st in stitches)
            if repeated:
                self._join(s, stitches, what)
            else:
                self.stitch_jobs.start([(s.id, st.ref) for st in stitches],
                                       partial(self._join, s, stitches, what))
        return 200, m.stitches_xml(answers)

    def _settle(self, s: Sliver, ref: str) -> Sliver:
        """The sliver once a background deployment of link `ref` ended; its
        failure, if it failed, raised as the peer's answer."""
        try:
            had, error = self.stitch_jobs.settle((s.id, ref), timeouts.STITCH_CALL - 10)
        except StillRunning as exc:
            raise Conflict(f"{exc}; confirm again later") from exc
        if isinstance(error, ApiError):
            raise type(error)(error.message)
        if error is not None:
            raise UpstreamFailed(_failed(f"deployment of link {ref}", cast(Exception, error)))
        return self.core.sliver(s.owner, s.name) if had else s

    def _answer(self, caller: Identity, proposal: m.Stitch
                ) -> tuple[m.Stitch, tuple[Sliver, Stitch] | None, bool]:
        """The answer to one proposal, the link to deploy before (or, for a
        batch, while) sending it, and whether it repeats an accepted proposal."""
        if proposal.state != "propose":
            raise Conflict(f"expected a proposal, got {proposal.state}")
        try:
            s = self._settle(self.core.stitched_sliver(caller.name, proposal.ref), proposal.ref)
        except CoreError as exc:
            raise _api_error(exc, proposal.ref) from exc
        peer = s.peer(proposal.ref)
        assert peer is not None
        if peer.role != "responder":
            raise Forbidden(f"link {proposal.ref} is initiated from this side")
        if s.state not in (State.PROVISIONED, State.READY):
            raise Conflict(f"link {proposal.ref} is not provisioned")
        initiator = proposal.endpoint("initiator")
        if initiator is None:
            raise Conflict("a proposal needs the initiator's endpoint")
        link, local = self._endpoint(s, proposal.ref, "responder")
        offers = carriers(self.core.substrate.encapsulations)
        carrier = proposal.encapsulation if proposal.encapsulation in offers else ""
        done = s.stitch(proposal.ref)
        if done is not None and done.vni == proposal.vni and carrier:  # a repeated proposal
            return (respond(proposal, True, proposal.vni, local, offers),
                    (s, replace(done, address=initiator.address, encapsulation=carrier)), True)
        if not carrier:  # not a carrier here: nothing is claimed for a counter or a refusal
            return respond(proposal, True, proposal.vni, local, offers), None, False
        free = vni_in_range(proposal.vni) and self.core.ledger.claim_vni(s.id, link,
                                                                         proposal.vni)
        alternative = proposal.vni
        if not free:
            used = self.core.ledger.used_vnis() | {proposal.vni}
            alternative = pick_vnis(used, [link], self.core.name)[link]  # offered, not taken
        answer = respond(proposal, free, alternative, local, offers)
        if answer.state == "accept":
            return answer, (s, Stitch(proposal.ref, link, proposal.vni, initiator.address,
                                      encapsulation=carrier)), False
        return answer, None, False


@dataclass(frozen=True, slots=True)
class _Paired:
    """One peer provider's stitching as the initiator saw it: the links agreed,
    the batch's accepted proposals to confirm, and the failure that stopped it."""

    peer: str
    client: PlayerClient
    agreed: tuple[Stitch, ...]
    confirm: tuple[m.Stitch, ...]
    failure: UpstreamFailed | None


EXEC_OUTPUT_MAX = 64 << 10
