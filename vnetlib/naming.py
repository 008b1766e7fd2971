"""Names of the kernel objects vnet creates, derived from stable identifiers.

Linux limits interface names to 15 bytes and every name must be unique within
its namespace, so objects that live in a substrate host's namespace get a short
hash of what they belong to; namespaces (files under /run/netns) carry readable
names. Every name starts with a prefix that ties it to its lab, so a lab can be
torn down completely by prefix even after a crash lost the state store.
"""

from __future__ import annotations

import hashlib
import re

LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,5}$")
IFNAME_MAX = 15


def check_lab_name(name: str) -> str:
    if not LAB_NAME_RE.match(name):
        raise ValueError(
            f"lab name {name!r} is invalid: use 1 to 6 lower-case letters or digits, "
            "starting with a letter"
        )
    return name


def short_hash(*parts: str, length: int = 8) -> str:
    return hashlib.blake2s("\x1f".join(parts).encode(), digest_size=8).hexdigest()[:length]


def lab_netns_prefix(lab: str) -> str:
    """Prefix of every substrate namespace (hosts, switch) of a lab."""
    return f"vl-{lab}-"


def host_netns(lab: str, host: str) -> str:
    return f"{lab_netns_prefix(lab)}{host}"


def access_netns(lab: str) -> str:
    """The PIP's access switch (end-user attachment). `+` is in no host name,
    so a host called `access` keeps its own namespace."""
    return f"{lab_netns_prefix(lab)}+access"


def device_netns(lab: str, device: str) -> str:
    """A lab end-user device plugged into the access switch of `lab`."""
    return f"{lab_netns_prefix(lab)}+dev-{device}"


def switch_netns(lab: str) -> str:
    return f"{lab_netns_prefix(lab)}switch"


def root_link_prefix(lab: str) -> str:
    """Prefix of the lab's interfaces in the root namespace (management network)."""
    return f"vl{lab}-"


def mgmt_bridge(lab: str) -> str:
    return f"{root_link_prefix(lab)}mgmt"


def mgmt_port(lab: str, index: int) -> str:
    return f"{root_link_prefix(lab)}m{index}"


def vnode_netns_prefix(lab: str) -> str:
    """Prefix of the namespaces of every virtual node deployed on a lab."""
    return f"vn-{lab}-"


def vnode_netns(lab: str, vnet_id: str, node: str) -> str:
    return f"{vnode_netns_prefix(lab)}{vnet_id}-{node}"


def link_bridge(vnet_id: str, link: str) -> str:
    return f"vb{short_hash(vnet_id, link)}"


def link_tunnel(vnet_id: str, link: str) -> str:
    return f"vx{short_hash(vnet_id, link)}"


def link_port(vnet_id: str, link: str, node: str) -> str:
    return f"vp{short_hash(vnet_id, link, node)}"


def vm_tap(vnet_id: str, link: str, node: str) -> str:
    """The tap of a VM node's end of a link (on the substrate host)."""
    return f"vt{short_hash(vnet_id, link, node)}"
