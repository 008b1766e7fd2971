"""A running domain's VNC display: the TCP port libvirt chose for it (the
live XML's `graphics[@type='vnc']/@port`, listening on 127.0.0.1)."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET

from vnetlib.vm.serial import URI

HOST = "127.0.0.1"


class VncError(Exception):
    """The domain is not running or has no VNC display."""


def port_of(domain: str, uri: str = URI) -> int:
    done = subprocess.run(["virsh", "-c", uri, "dumpxml", domain], capture_output=True,
                          text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise VncError(f"domain {domain}: {done.stderr.strip() or 'virsh dumpxml failed'}")
    graphics = ET.fromstring(done.stdout).find("devices/graphics[@type='vnc']")
    if graphics is None:
        raise VncError(f"domain {domain} has no VNC display")
    port = int(graphics.get("port", "-1"))
    if port <= 0:
        raise VncError(f"domain {domain} is not running (no VNC port yet)")
    return port
