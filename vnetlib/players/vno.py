"""The VNO's management node: takes SPs' requirements (Interface 1), adds its own
constraints, and has its VNP provide the VNet; relays SPs' operational actions.

An SP sees only its own VNets (404 for any other) and never a provider's or a
substrate host's name: the VNO passes on only what the VNP disclosed.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Mapping

from vnetlib.players import messages as m
from vnetlib.players.client import ClientError, PlayerClient, RemoteError
from vnetlib.players.config import PlayerConfig
from vnetlib.players.pki import Credentials, Identity, Role
from vnetlib.players.server import ApiError, NotFound, Service, UpstreamFailed, require_owner
from vnetlib.players.stores import PlayerStore, Record
from vnetlib.spec import dump_vnet
from vnetlib.spec.model import VNetSpec


class Relayed(ApiError):
    """An error the VNP answered, passed on with its status and code."""

    def __init__(self, exc: RemoteError) -> None:
        super().__init__(exc.message)
        self.status = exc.status  # type: ignore[misc]
        self.code = exc.code  # type: ignore[misc]


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
        sp = {Role.SP}
        self.add_route("GET", "/v1/version", self.version)
        self.add_route("POST", "/v1/vnets", self.create, roles=sp)
        self.add_route("GET", "/v1/vnets", self.list, roles=sp)
        self.add_route("GET", "/v1/vnets/{id}", self.get, roles=sp)
        self.add_route("DELETE", "/v1/vnets/{id}", self.delete, roles=sp)
        self.add_route("POST", "/v1/vnets/{id}/action", self.action, roles=sp)

    def close(self) -> None:
        self.store.close()

    def _call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        try:
            return self.vnp.request(method, path, body).body
        except RemoteError as exc:
            if exc.status < 500:
                raise Relayed(exc) from exc
            raise UpstreamFailed(f"the VNP failed: {exc.message}") from exc
        except ClientError as exc:
            raise UpstreamFailed(f"the VNP cannot be reached: {exc}") from exc

    def _view(self, rec: Record) -> m.VNetView:
        d = rec.data
        return m.VNetView(rec.id, d["name"], d["status"], tuple(d["nodes"]), d.get("price"),
                          tuple((n, p) for n, p in d.get("providers", [])),
                          tuple((k, v) for k, v in d.get("timings", [])))

    def _own(self, caller: Identity, vnet_id: str) -> Record:
        rec = self.store.get(vnet_id)
        if rec is None:
            raise NotFound(f"no VNet {vnet_id}")
        require_owner(caller, rec.owner, f"VNet {vnet_id}")
        return rec

    def version(self, caller: Identity, params: Mapping[str, str],
                body: bytes) -> tuple[int, bytes]:
        return 200, m.version_xml(self.name, "vno")

    def create(self, caller: Identity, params: Mapping[str, str],
               body: bytes) -> tuple[int, bytes]:
        spec = m.vnet_of(m.read(body, "service-request"), "service request")
        spec = with_constraints(spec, self.config.vno.max_price)
        reply = self._call("POST", "/v1/vnets", dump_vnet(spec))
        got = m.vnet_view_from(m.parse_reply(reply, "vnet-status"))
        vnet_id = f"v{secrets.token_hex(5)}"
        rec = Record(vnet_id, caller.name, vnet_id, time.time(), {
            "vnp_id": got.id, "name": spec.name, "status": got.status, "nodes": list(got.nodes),
            "price": got.price, "providers": [list(p) for p in got.providers],
            "timings": [list(t) for t in got.timings]})
        self.store.insert(rec)
        return 201, m.vnet_view_xml(self._view(rec))

    def list(self, caller: Identity, params: Mapping[str, str],
             body: bytes) -> tuple[int, bytes]:
        return 200, m.vnet_list_xml([self._view(r) for r in self.store.all(caller.name)])

    def get(self, caller: Identity, params: Mapping[str, str],
            body: bytes) -> tuple[int, bytes]:
        rec = self._own(caller, params["id"])
        got = m.vnet_view_from(m.parse_reply(
            self._call("GET", f"/v1/vnets/{rec.data['vnp_id']}"), "vnet-status"))
        if got.status != rec.data["status"]:
            rec.data["status"] = got.status
            self.store.save(rec.id, rec.data)
        return 200, m.vnet_view_xml(self._view(rec))

    def delete(self, caller: Identity, params: Mapping[str, str],
               body: bytes) -> tuple[int, bytes]:
        rec = self._own(caller, params["id"])
        try:
            self._call("DELETE", f"/v1/vnets/{rec.data['vnp_id']}")
        except Relayed as exc:
            if exc.status != 404:
                raise
        self.store.remove(rec.id)
        return 204, b""

    def action(self, caller: Identity, params: Mapping[str, str],
               body: bytes) -> tuple[int, bytes]:
        act = m.action_from(m.read(body, "action"))
        rec = self._own(caller, params["id"])
        return 200, self._call("POST", f"/v1/vnets/{rec.data['vnp_id']}/action",
                               m.action_xml(act))
