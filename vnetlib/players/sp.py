"""The SP's Python client: hand requirements to a VNO and operate the VNet."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from vnetlib.players import messages as m
from vnetlib.players import timeouts
from vnetlib.players.client import PlayerClient
from vnetlib.players.pki import Credentials, Role
from vnetlib.spec import parse_vnet
from vnetlib.spec.model import VNetSpec

VNetView = m.VNetView


class ServiceProvider:
    """An SP talking to its VNO over mutual TLS (its certificate has role sp)."""

    def __init__(self, vno_url: str, credentials: Credentials,
                 timeout: float = timeouts.SP_REQUEST,
                 *, vno_name: str | None = None) -> None:
        self.client = PlayerClient(vno_url, credentials, timeout, expect_role=Role.VNO,
                                   expect_name=vno_name)
        self.credentials = credentials
        self.vno_name = vno_name

    def request_vnet(self, spec: VNetSpec | bytes) -> VNetView:
        """Interface 1: ask for a VNet; returns once it is ready (or raises RemoteError).

        A 504 `upstream-timeout` means the VNO keeps the VNet as "unknown" until
        its VNP's outcome is known: `list()` then shows it ready, or not at all."""
        model = parse_vnet(spec, source="request") if isinstance(spec, bytes) else spec
        reply = self.client.post("/v1/vnets", m.service_request_xml(model))
        return m.vnet_view_from(m.parse_reply(reply.body, "vnet-status"))

    def status(self, vnet_id: str) -> VNetView:
        reply = self.client.get(f"/v1/vnets/{vnet_id}")
        return m.vnet_view_from(m.parse_reply(reply.body, "vnet-status"))

    def list(self) -> list[VNetView]:
        return m.vnet_list_from(m.parse_reply(self.client.get("/v1/vnets").body, "vnet-list"))

    def delete(self, vnet_id: str) -> bool:
        """True once the VNet is gone; False when the VNO accepted the deletion
        and finishes it in the background (the VNet shows as "deleting")."""
        return self.client.delete(f"/v1/vnets/{vnet_id}").status == 204

    def control(self, vnet_id: str, node: str, action: str) -> str:
        """Start, stop, restart, suspend or resume one node (relayed VNO -> VNP
        -> PIP); returns what the PIP says of the node's run state."""
        act = m.Action(cast(m.ActionName, action), node)
        reply = self.client.post(f"/v1/vnets/{vnet_id}/action", m.action_xml(act))
        return m.action_result_from(m.parse_reply(reply.body, "action-result")).stdout.strip()

    def console(self, vnet_id: str, node: str, kind: str = "shell") -> m.ConsoleSession:
        """Interface 5: a console session on `node`, set up through the chain; connect
        with `vnetlib.console.client.open_console` (which calls this)."""
        req = m.ConsoleRequest(node, cast(m.ConsoleKindName, kind))
        reply = self.client.post(f"/v1/vnets/{vnet_id}/console", m.console_request_xml(req))
        return m.console_session_from(m.parse_reply(reply.body, "console-session"))

    def exec(self, vnet_id: str, node: str, argv: Sequence[str],
             timeout: float | None = None) -> tuple[int, str, str]:
        """Run `argv` in virtual node `node` (relayed VNO -> VNP -> PIP)."""
        act = m.Action("exec", node, tuple(argv), timeout)
        reply = self.client.post(f"/v1/vnets/{vnet_id}/action", m.action_xml(act))
        result = m.action_result_from(m.parse_reply(reply.body, "action-result"))
        return result.rc, result.stdout, result.stderr
