"""A generated substrate of many hosts (the advertisement benchmark)."""

from __future__ import annotations

from vnetlib.spec.model import Substrate, SubstrateHost

LOCATIONS = ("berlin", "london", "paris", "madrid")


def big_substrate(hosts: int) -> Substrate:
    """`hosts` hosts over four locations, 16 CPUs and 64 GiB each."""
    return Substrate(
        name="big",
        hosts=tuple(SubstrateHost(name=f"h{i}", cpu=16.0, memory_mb=65536,
                                  location=LOCATIONS[i % len(LOCATIONS)],
                                  data_address=f"198.18.{i // 250}.{i % 250 + 1}")
                    for i in range(hosts)),
    )
