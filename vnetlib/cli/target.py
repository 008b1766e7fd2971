"""Where a VNet named on the command line lives: the local PIP store (VNets
instantiated directly with `--substrate`) or the lab's players (VNets
requested through the VNO)."""

from __future__ import annotations

from vnetlib.instantiate import LocalVNet, VNetNotFound, describe
from vnetlib.lab.players import service_provider
from vnetlib.players.sp import ServiceProvider


def local(ref: str) -> LocalVNet | None:
    try:
        return describe(ref)
    except VNetNotFound:
        return None


def remote(ref: str, lab: str) -> ServiceProvider:
    """The SP client for a VNet that is not in the local store."""
    try:
        return service_provider(lab)
    except LookupError:
        raise LookupError(f"no VNet with id or name {ref!r}") from None
