"""A running domain's VNC display: the TCP port libvirt chose for it (the
live XML's `graphics[@type='vnc']/@port`, listening on 127.0.0.1)."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET

from vnetlib.vm.serial import URI

HOST = "127.0.0.1"


class VncError(Exception):
    """The domain is not running or has no VNC display."""


def display_port(live_xml: str, domain: str) -> int:
    """The VNC port in a domain's live XML (also run by the host-side agent
    of `vnetlib.vm.remote`, where VncError is its own)."""
    graphics = ET.fromstring(live_xml).find("devices/graphics[@type='vnc']")
    if graphics is None:
        raise VncError(f"domain {domain} has no VNC display")
    port = int(graphics.get("port", "-1"))
    if port <= 0:
        raise VncError(f"domain {domain} is not running (no VNC port yet)")
    return port


def port_of(domain: str, uri: str = URI) -> int:
    done = subprocess.run(["virsh", "-c", uri, "dumpxml", domain], capture_output=True,
                          text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise VncError(f"domain {domain}: {done.stderr.strip() or 'virsh dumpxml failed'}")
    return display_port(done.stdout, domain)
