"""One substrate host's Click configuration, from its share of a plan (pure).

Each virtual link segment that crosses hosts (a ``LinkTask`` with a tunnel)
becomes, on its host:

* a veth pair made by the module: ``device`` (the tunnel's name) joins the
  link's bridge, as a VXLAN device does today; Click reads and writes the other
  end, ``click_device``, with packet sockets (``FromDevice``/``ToDevice``).
  Click's own TUN/TAP elements (``KernelTap``) are not used: they have no
  hot-swap state, so a new configuration could not open the same device while
  the old one still holds it, and every swap would tear the links down.
* Ethernet frames carried in UDP with a VXLAN-format header whose 24-bit id is
  the link's tunnel id (``vni``): outer IP and UDP headers are built by Click
  (``UDPIPEncap``) and sent and received by Click on a raw socket
  (``RawSocket(UDP)``, IP_HDRINCL), not by a kernel tunnel device.
* a demultiplexer on (outer source address, tunnel id): a frame reaches only
  the segment whose peer host and id it carries, so VNets with the same
  addresses stay apart and their broadcasts and ARP stay inside their link.
* optionally a shaper (``BandwidthRatedUnqueue``, the link's bandwidth, on the
  Ethernet frames leaving towards the peer) and a delay (``SetTimestamp`` +
  ``DelayUnqueue``, the link's one-way latency).

Elements are named after the segment's device, so a configuration with one
more link keeps every other element's name and a hot swap hands over queued
packets (``Queue`` state).
"""

from __future__ import annotations

from collections.abc import Mapping

from vnetlib.click._render import (
    CLICK_PORT,
    OVERHEAD,
    ClickConfigError,
    ClickLink,
    check,
    click_device,
    render,
)
from vnetlib.plan.model import DeploymentPlan, HostPlan, LinkTask

__all__ = [
    "CLICK_PORT", "OVERHEAD", "ClickConfigError", "ClickLink", "check", "click_device",
    "click_link", "host_links", "plan_configs", "render",
]


def click_link(task: LinkTask, latency_ms: float | None = None) -> ClickLink:
    """The Click segment of `task`; its latency is `latency_ms`, else the task's."""
    if task.tunnel is None:
        raise ClickConfigError(f"link {task.link} does not cross hosts: no Click segment")
    t = task.tunnel
    return ClickLink(
        link=task.link, vni=t.vni, bridge=task.bridge, device=t.device,
        click_device=click_device(t.device), local=t.local, remote=t.remote,
        bandwidth_mbps=task.bandwidth_mbps,
        latency_ms=latency_ms if latency_ms is not None else task.latency_ms,
    )


def host_links(host: HostPlan,
               latency_ms: Mapping[str, float] | None = None) -> tuple[ClickLink, ...]:
    """The segments of `host` that cross hosts; `latency_ms` maps link ids to
    a one-way delay other than the plan's."""
    lat = latency_ms or {}
    return tuple(click_link(t, lat.get(t.link)) for t in host.links if t.tunnel is not None)


def plan_configs(plan: DeploymentPlan, latency_ms: Mapping[str, float] | None = None,
                 port: int = CLICK_PORT) -> dict[str, str]:
    """One configuration per substrate host that carries a crossing link."""
    out = {}
    for host in plan.hosts:
        links = host_links(host, latency_ms)
        if links:
            out[host.host] = render(links, port=port)
    return out


