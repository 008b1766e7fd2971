"""`vnet lab up|status|down`: the whole local lab.

A lab is several PIP substrates (each a set of host namespaces behind its own
switch, with its own data and management networks), joined by an exchange, and
the management node of every player running as its own `vnet serve` process:
one per PIP, a VNP that buys from all PIPs, and a VNO that sells to the lab's
service provider. Everything the lab owns carries its name, so `down` finds it
all again, also after a crash.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vnetlib import paths
from vnetlib.lab import attach, exchange, kernel, manage, sshd, vms
from vnetlib.lab.layout import LabConfig
from vnetlib.lab.players import load_players, start_players, stop_players
from vnetlib.switch import lab as switch_lab

LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,3}$")
PIP_LOCATIONS = ("berlin", "london", "paris", "madrid", "rome", "vienna", "oslo", "lisbon")
LAB_FILE = "lab.json"


@dataclass(frozen=True, slots=True)
class LabSpec:
    """What `vnet lab up` builds."""

    name: str = "lab"
    pips: int = 2
    hosts: int = 3
    cpu: float = 4.0
    memory_mb: int = 4096
    mgmt_offset: int = 0
    players: bool = True
    attach: bool = False  # end-user attachment: RADIUS server, proxies, access switches
    switch_vlan: bool = False  # Open vSwitch per substrate switch (vnetlib.switch.lab)
    encap: str = "vxlan"  # crossing links: vxlan | click | vlan, or one per PIP: click,vlan
    connection: str = "netns"  # "ssh": an sshd in every host, Ansible's ssh connection
    players_apart: bool = False  # each player in its own namespace, on the players network
    switch: str = "ovsdb"  # how VLANs are programmed: OVSDB, or "ssh" (an sshd at the switch)

    def __post_init__(self) -> None:
        if not LAB_NAME_RE.match(self.name) or re.search(r"p[0-9]+$", self.name):
            raise ValueError(
                f"lab name {self.name!r} is invalid: use 1 to 4 lower-case letters or digits, "
                "starting with a letter and not ending in p and digits (substrate names)"
            )
        if not 1 <= self.pips <= len(PIP_LOCATIONS):
            raise ValueError(f"a lab has 1 to {len(PIP_LOCATIONS)} PIPs, not {self.pips}")
        if not 0 <= self.mgmt_offset <= 100:
            raise ValueError("the management offset is 0 to 100")
        if not set(re.split("[,+]", self.encap)) <= {"vxlan", "click", "vlan"}:
            raise ValueError(f"encapsulation {self.encap!r} is not vxlan, click or vlan "
                             "(or a list of them, one per PIP, each a+b for more than one)")
        if self.switch not in switch_lab.CONTROLS:
            raise ValueError(f"switch control {self.switch!r} is not ovsdb or ssh")
        if self.switch == "ssh" and "vlan" not in re.split("[,+]", self.encap):
            raise ValueError("--switch ssh programs the switch's VLANs: it needs --encap vlan")
        if self.players_apart and not self.players:
            raise ValueError("--players-apart needs the players")
        if self.attach and not self.players:
            raise ValueError("end-user attachment needs the players (the VNO decides)")

    def substrates(self) -> list[LabConfig]:
        """One substrate per PIP: data network 198.18.i.0/24, its own location."""
        return [
            LabConfig(
                name=f"{self.name}p{i}",
                hosts=self.hosts,
                cpu=self.cpu,
                memory_mb=self.memory_mb,
                data_network=f"198.18.{i}.0/24",
                mgmt_network=f"198.18.{128 + self.mgmt_offset + i}.0/24",
                locations=(PIP_LOCATIONS[i - 1],),
                connection=self.connection,
            )
            for i in range(1, self.pips + 1)
        ]


@dataclass(slots=True)
class LabState:
    spec: LabSpec | None
    substrates: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    players: dict[str, dict[str, Any]] = field(default_factory=dict)
    sshd: dict[str, bool] = field(default_factory=dict)  # "SUBSTRATE/HOST": its sshd runs

    @property
    def running(self) -> bool:
        if self.spec is None:
            return False
        expected = {f"vl-{s.name}-{h}" for s in self.spec.substrates() for h in s.host_names}
        players_ok = all(p["running"] for p in self.players.values())
        return expected <= set(self.namespaces) and players_ok and all(self.sshd.values())


def lab_dir(name: str) -> Path:
    return paths.lab_dir(name)


def load_spec(name: str) -> LabSpec:
    path = lab_dir(name) / LAB_FILE
    if not path.exists():
        raise manage.LabNotFound(f"lab {name!r} is not up (no {path}); run `vnet lab up`")
    return LabSpec(**json.loads(path.read_text()))


def up(spec: LabSpec, progress: Callable[[str], None] = lambda _: None) -> kernel.Changes:
    """Bring the lab up; idempotent. A lab of the same name with another shape
    must go down first. `progress` hears of each step."""
    paths.ensure_home()
    directory = lab_dir(spec.name)
    saved = directory / LAB_FILE
    if saved.exists() and LabSpec(**json.loads(saved.read_text())) != spec:
        raise ValueError(
            f"lab {spec.name!r} is up with another configuration; "
            f"run `vnet lab down --name {spec.name}` first"
        )
    directory.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(asdict(spec), indent=2) + "\n")
    changes = kernel.Changes()
    substrates = spec.substrates()
    for sub in substrates:
        progress(f"substrate {sub.name}: {sub.hosts} hosts")
        done = manage.up(sub)
        changes.created += done.created
    if spec.switch_vlan or "vlan" in re.split("[,+]", spec.encap):
        progress("Open vSwitch in each PIP's switch namespace")
        changes.created += switch_lab.up(directory, substrates, spec.switch)
    changes.created += switch_lab.set_encapsulation(directory, substrates, spec.encap)
    progress("the exchange between the PIPs")
    changes.created += exchange.up(spec.name, substrates).created
    progress("libvirtd for VM nodes")
    changes.created += vms.start(directory)
    if spec.players:
        progress("the players (PIPs, VNP, VNO)")
        changes.created += start_players(spec, directory)
    if spec.attach:
        progress("access switches for end users")
        changes.created += attach.up(directory, substrates)
    return changes


def down(name: str) -> kernel.Changes:
    """Stop the lab's players, remove its substrates, exchange and files."""
    LabSpec(name=name)  # validates the name
    changes = kernel.Changes()
    directory = lab_dir(name)
    changes.removed += attach.down(directory)
    changes.removed += stop_players(directory)
    changes.removed += switch_lab.down(directory)
    changes.removed += vms.stop(directory, _substrates_of(name))
    for sub in _substrates_of(name):
        changes.removed += manage.down(sub).removed
    changes.removed += kernel.down(name).removed
    if directory.exists():
        shutil.rmtree(directory)
        changes.removed.append(f"directory {directory}")
    return changes


def _substrates_of(name: str) -> list[str]:
    """The lab's substrates: from its file, and by name on disk and in the kernel."""
    pattern = re.compile(rf"^{re.escape(name)}p[0-9]+$")
    found: set[str] = set()
    with contextlib.suppress(manage.LabNotFound):
        found |= {s.name for s in load_spec(name).substrates()}
    root = paths.vnet_home() / "substrates"
    if root.exists():
        found |= {d.name for d in root.iterdir() if pattern.match(d.name)}
    for ns in kernel.all_namespaces():
        for prefix in ("vl-", "vn-"):
            if ns.startswith(prefix):
                candidate = ns[len(prefix) :].split("-", 1)[0]
                if pattern.match(candidate):
                    found.add(candidate)
    return sorted(found)


def status(name: str) -> LabState:
    try:
        spec: LabSpec | None = load_spec(name)
    except manage.LabNotFound:
        spec = None
    subs = _substrates_of(name)
    namespaces = sorted(
        {ns for s in subs for ns in kernel.lab_namespaces(s)} | set(kernel.lab_namespaces(name))
    )
    directory = lab_dir(name)
    players = {
        p.name: {
            "role": p.role,
            "url": p.url,
            "substrate": p.substrate,
            "running": p.running(directory),
        }
        for p in load_players(directory).values()
    }
    daemons = {}
    if spec is not None and spec.connection == "ssh":
        for sub in spec.substrates():
            files = sshd.files_of(paths.substrate_dir(sub.name))
            daemons.update({f"{sub.name}/{h}": sshd.running(files, h) is not None
                            for h in sub.host_names})
    if spec is not None and spec.switch == "ssh":  # the switches' SSH fronts
        for sub in spec.substrates():
            daemons[f"{sub.name}/{switch_lab.SWITCH_HOST}"] = sshd.running(
                switch_lab.ssh_files(sub.name), switch_lab.SWITCH_HOST) is not None
    return LabState(spec, subs, namespaces, players, daemons)
