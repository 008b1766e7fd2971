"""GENI URNs (`urn:publicid:IDN+<authority>+<type>+<name>`) of vnet's objects.

A PIP is the aggregate `urn:publicid:IDN+vnet:<pip>+authority+am`. A slice is
what our API calls a sliver name, chosen by the customer and scoped by it
(`urn:publicid:IDN+<authority>+slice+<name>`: the authority is the caller's
and is not checked, since the TLS identity decides). A sliver is
`urn:publicid:IDN+vnet:<pip>+sliver+<sliver id>`, one of its virtual nodes
`...+sliver+<sliver id>.<node>`, one of its links `...+sliver+<sliver id>.<link>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "urn:publicid:IDN+"
_URN = re.compile(r"^urn:publicid:IDN\+([^+\s]+)\+([a-z_]+)\+([^+\s]+)$")
SLICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Urn:
    authority: str
    type: str
    name: str

    def __str__(self) -> str:
        return f"{PREFIX}{self.authority}+{self.type}+{self.name}"


def parse_urn(text: str) -> Urn:
    m = _URN.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"not a GENI URN: {text!r}")
    return Urn(m.group(1), m.group(2), m.group(3))


def authority(pip: str) -> str:
    return f"vnet:{pip}"


def aggregate_urn(pip: str) -> str:
    return str(Urn(authority(pip), "authority", "am"))


def slice_urn(name: str, auth: str = "vnet") -> str:
    return str(Urn(auth, "slice", name))


def slice_name(urn: str) -> str:
    """The sliver name a slice URN stands for; ValueError if it is not one."""
    u = parse_urn(urn)
    if u.type != "slice" or not SLICE_NAME.match(u.name):
        raise ValueError(f"not a slice URN vnet can use: {urn!r}")
    return u.name


def sliver_urn(pip: str, sliver_id: str, part: str | None = None) -> str:
    return str(Urn(authority(pip), "sliver", sliver_id if part is None
                   else f"{sliver_id}.{part}"))


def sliver_parts(pip: str, urn: str) -> tuple[str, str | None]:
    """(sliver id, node or link or None) of one of this PIP's sliver URNs."""
    u = parse_urn(urn)
    if u.type != "sliver" or u.authority != authority(pip):
        raise ValueError(f"not a sliver of {pip}: {urn!r}")
    sid, _, part = u.name.partition(".")
    return sid, part or None
