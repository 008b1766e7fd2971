"""The aggregate-manager API (Interfaces 2 to 4), defined once: a PIP serves
it, and so does a VNP acting as a PIP towards another VNP (recursion).
Each route maps to a GENI AM v3 call; see docs/api.md."""

from __future__ import annotations

from vnetlib.players.pki import Role
from vnetlib.players.server import Handler, Service


def add_aggregate_routes(
    service: Service,
    *,
    advertisement: Handler,
    quote: Handler,
    list_slivers: Handler,
    allocate: Handler,
    describe: Handler,
    provision: Handler,
    renew: Handler,
    action: Handler,
    delete: Handler,
    stitch: Handler,
) -> None:
    """Register the routes a VNP calls on its providers, and the stitching
    route the providers at both ends of an inter-provider link call on each
    other."""
    vnp = {Role.VNP}
    service.add_route("GET", "/v1/advertisement", advertisement, roles=vnp)
    service.add_route("POST", "/v1/quotes", quote, roles=vnp)
    service.add_route("GET", "/v1/slivers", list_slivers, roles=vnp)
    service.add_route("PUT", "/v1/slivers/{name}", allocate, roles=vnp)
    service.add_route("GET", "/v1/slivers/{name}", describe, roles=vnp)
    service.add_route("GET", "/v1/slivers/{name}/status", describe, roles=vnp)
    service.add_route("POST", "/v1/slivers/{name}/provision", provision, roles=vnp)
    service.add_route("POST", "/v1/slivers/{name}/renew", renew, roles=vnp)
    service.add_route("POST", "/v1/slivers/{name}/action", action, roles=vnp)
    service.add_route("DELETE", "/v1/slivers/{name}", delete, roles=vnp)
    service.add_route("POST", "/v1/stitch", stitch, roles={Role.PIP, Role.VNP})
