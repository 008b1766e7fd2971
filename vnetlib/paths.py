"""Where vnet keeps its state on the control machine."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = Path("/var/lib/vnet")


def vnet_home() -> Path:
    """The state directory: $VNET_HOME, else /var/lib/vnet."""
    return Path(os.environ.get("VNET_HOME", DEFAULT_HOME))


def ensure_home() -> Path:
    """Create the state directory, readable by root only: it holds the lab's
    keys, the players' stores and the substrates' host names, none of which a
    customer's command in a virtual node may read."""
    home = vnet_home()
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    return home


def lab_dir(lab: str) -> Path:
    """A lab's files: configuration, PKI, player configurations, logs, pids."""
    return vnet_home() / "labs" / lab


def substrate_dir(name: str) -> Path:
    """A PIP substrate's files: configuration, description, Ansible inventory."""
    return vnet_home() / "substrates" / name


def state_db() -> Path:
    return vnet_home() / "state.db"
