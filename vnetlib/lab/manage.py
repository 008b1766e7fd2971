"""`vnet lab up|status|down`: the lab's kernel objects plus the files that
describe it (configuration, substrate description, Ansible inventory)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from vnetlib import paths
from vnetlib.instantiate import INVENTORY_FILE, MANAGER_FILE, SUBSTRATE_FILE, forget_substrate
from vnetlib.instantiate import local_vnets as _local_vnets
from vnetlib.lab import kernel, sshd
from vnetlib.lab.layout import LabConfig, inventory_of, substrate_of
from vnetlib.spec import dump_substrate
from vnetlib.spec.model import Substrate

CONFIG_FILE = "lab.json"
__all__ = ["INVENTORY_FILE", "MANAGER_FILE", "SUBSTRATE_FILE"]


class LabNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class LabStatus:
    name: str
    config: LabConfig | None
    namespaces: tuple[str, ...]
    root_links: tuple[str, ...]
    vnets: tuple[str, ...]

    @property
    def running(self) -> bool:
        """All expected substrate namespaces exist."""
        if self.config is None:
            return False
        expected = {f"vl-{self.name}-{h}" for h in (*self.config.host_names, "switch")}
        return expected <= set(self.namespaces)


def inventory_path(lab: str) -> Path:
    return paths.substrate_dir(lab) / INVENTORY_FILE


def load_config(lab: str) -> LabConfig:
    path = paths.substrate_dir(lab) / CONFIG_FILE
    if not path.exists():
        raise LabNotFound(f"lab {lab!r} is not up (no {path}); run `vnet lab up --name {lab}`")
    return LabConfig.from_dict(json.loads(path.read_text()))


def set_manager(substrate: str, manager: str) -> None:
    """Record that a PIP management node owns `substrate`."""
    (paths.substrate_dir(substrate) / MANAGER_FILE).write_text(manager + "\n")


def load_substrate(lab: str) -> Substrate:
    return substrate_of(load_config(lab))


def up(config: LabConfig) -> kernel.Changes:
    """Bring the lab up; a lab of the same name with another shape must go down first."""
    paths.ensure_home()
    directory = paths.substrate_dir(config.name)
    existing = directory / CONFIG_FILE
    if existing.exists() and LabConfig.from_dict(json.loads(existing.read_text())) != config:
        raise ValueError(
            f"lab {config.name!r} is up with another configuration; "
            f"run `vnet lab down --name {config.name}` first"
        )
    directory.mkdir(parents=True, exist_ok=True)
    existing.write_text(json.dumps(asdict(config), indent=2) + "\n")
    changes = kernel.up(config)
    remote = None
    if config.connection == "ssh":
        files = sshd.files_of(directory)
        changes.created += sshd.start(config, files)

        def remote(address: str) -> dict[str, object]:
            return sshd.host_vars(files, address)

    (directory / SUBSTRATE_FILE).write_bytes(dump_substrate(substrate_of(config)))
    inventory = inventory_of(config, remote)
    (directory / INVENTORY_FILE).write_text(yaml.safe_dump(inventory, sort_keys=False))
    return changes


def down(lab: str) -> kernel.Changes:
    """Remove the lab, every VNet deployed on it, and its files; the hosts'
    sshd (if any) are stopped by pid first."""
    stopped = sshd.stop(sshd.files_of(paths.substrate_dir(lab)))
    changes = kernel.down(lab)
    changes.removed[:0] = stopped
    forget_substrate(lab)
    directory = paths.substrate_dir(lab)
    if directory.exists():
        shutil.rmtree(directory)
        changes.removed.append(f"directory {directory}")
    return changes


def status(lab: str) -> LabStatus:
    try:
        config: LabConfig | None = load_config(lab)
    except LabNotFound:
        config = None
    state = kernel.state(lab)
    vnets = tuple(v.id for v in _local_vnets() if v.lab == lab)
    return LabStatus(lab, config, state.namespaces, state.root_links, vnets)
